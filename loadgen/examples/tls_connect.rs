//! TLS connect rate and idle cost, for the gateway and any MQTT server with
//! the same certificates: connects `--cars` cars over mutual TLS (each its
//! own certificate from the test PKI, CN = client id) as fast as the server
//! takes them, holds them idle (for the caller to read the server's memory),
//! closes them, and with `--resume` connects them all again, each resuming
//! its TLS session. Prints one JSON line per round.
//!
//! ```sh
//! cargo run --release -p loadgen --example tls_connect -- \
//!     --target 127.0.0.1:8883 --cars 10000 --tls-dir target/testpki --resume
//! ```
//!
//! `scripts/tls-bench.sh` runs it against the gateway and mosquitto.

// A tool: a failed setup should stop it loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use clap::Parser;
use codec::{Connect, Decoder, Packet, Role};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use hdrhistogram::Histogram;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 10_000)]
    cars: u64,
    /// The first car's number (client ids as loadgen's).
    #[arg(long, default_value_t = 0)]
    first_car: u64,
    #[arg(long, default_value = "target/testpki")]
    tls_dir: PathBuf,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds to hold the cars connected and idle after the first round.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// A second round in which every car resumes its session.
    #[arg(long)]
    resume: bool,
    /// Source address of the first round (each car from its own port);
    /// the second round uses the next address, so no connection meets
    /// one of the first round still in TIME_WAIT.
    #[arg(long, default_value = "127.0.7.1")]
    source: std::net::Ipv4Addr,
    /// Touch this file once all cars of the first round are connected,
    /// and wait for it to disappear before closing them (the caller
    /// measures the server meanwhile); without it, --hold-secs.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

struct Car {
    id: String,
    config: Arc<rustls::ClientConfig>,
}

/// Connects one car: TCP, TLS, CONNECT, CONNACK 0; the stream, or why not.
async fn connect(
    target: SocketAddr,
    source: SocketAddr,
    name: &rustls::pki_types::ServerName<'static>,
    car: &Car,
) -> anyhow::Result<(futures_rustls::client::TlsStream<TcpStream>, bool)> {
    let stream = TcpStream::from(loadgen::worker::start_connect(target, Some(source))?);
    let connector = futures_rustls::TlsConnector::from(car.config.clone());
    let mut stream = connector.connect(name.clone(), stream).await?;
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut out = BytesMut::new();
    Connect::new(car.id.as_str(), 600).encode(&mut out)?;
    stream.write_all(&out).await?;
    stream.flush().await?;
    let decoder = Decoder::new(Role::Client, 1 << 16);
    let mut input = BytesMut::new();
    let mut chunk = [0u8; 256];
    loop {
        match decoder.decode(&mut input) {
            Ok(Some(Packet::ConnAck(ack))) if ack.code == codec::ConnectReturnCode::Accepted => {
                return Ok((stream, resumed));
            }
            Ok(Some(other)) => anyhow::bail!("refused: {other:?}"),
            Err(error) => anyhow::bail!("{error}"),
            Ok(None) => {}
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before CONNACK");
        input.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

struct Round {
    connected: u64,
    resumed: u64,
    failed: u64,
    secs: f64,
    latency: Histogram<u64>,
    streams: Vec<futures_rustls::client::TlsStream<TcpStream>>,
}

async fn round(args: &Args, cars: &Rc<Vec<Car>>, source: std::net::Ipv4Addr) -> Round {
    let name =
        rustls::pki_types::ServerName::try_from(args.server_name.clone()).expect("a server name");
    let next = Rc::new(Cell::new(0usize));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (cars, next, name, target) =
                (cars.clone(), next.clone(), name.clone(), args.target);
            glommio::spawn_local(async move {
                let mut done = (Vec::new(), 0u64, 0u64, Vec::new());
                loop {
                    let i = next.get();
                    let Some(car) = cars.get(i) else {
                        return done;
                    };
                    next.set(i + 1);
                    let began = Instant::now();
                    let port = 10_000 + (i % 50_000) as u16;
                    let from = SocketAddr::from((source, port));
                    let attempt = async { Some(connect(target, from, &name, car).await) };
                    let timeout = async {
                        sleep(Duration::from_secs(20)).await;
                        None
                    };
                    match future::or(attempt, timeout).await {
                        Some(Ok((stream, resumed))) => {
                            done.0.push(stream);
                            done.1 += u64::from(resumed);
                            done.3.push(began.elapsed().as_micros() as u64);
                        }
                        Some(Err(_)) | None => done.2 += 1,
                    }
                }
            })
        })
        .collect();
    let mut result = Round {
        connected: 0,
        resumed: 0,
        failed: 0,
        secs: 0.0,
        latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
        streams: Vec::new(),
    };
    for task in tasks {
        let (streams, resumed, failed, latencies) = task.await;
        result.connected += streams.len() as u64;
        result.streams.extend(streams);
        result.resumed += resumed;
        result.failed += failed;
        for us in latencies {
            let _ = result.latency.record(us.max(1));
        }
    }
    result.secs = started.elapsed().as_secs_f64();
    result
}

fn report(kind: &str, round: &Round) {
    println!(
        "{}",
        serde_json::json!({
            "round": kind,
            "connected": round.connected,
            "resumed": round.resumed,
            "failed": round.failed,
            "secs": round.secs,
            "rate": round.connected as f64 / round.secs.max(1e-9),
            "p50_ms": round.latency.value_at_quantile(0.5) as f64 / 1e3,
            "p99_ms": round.latency.value_at_quantile(0.99) as f64 / 1e3,
        })
    );
}

async fn close_all(streams: Vec<futures_rustls::client::TlsStream<TcpStream>>) {
    for mut stream in streams {
        let _ = stream.write_all(&codec::packet::DISCONNECT).await;
        let _ = stream.close().await;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    loadgen::tls::prepare(&args.tls_dir, args.first_car, args.cars)?;
    let cars: Vec<Car> = (args.first_car..args.first_car + args.cars)
        .map(|car| {
            let id = loadgen::payload::client_id(car);
            let config = loadgen::tls::car_config(&args.tls_dir, &id)?;
            Ok(Car { id, config })
        })
        .collect::<anyhow::Result<_>>()?;
    let cars = Rc::new(cars);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .ring_depth(4096)
        .make()
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?;
    executor.run(async move {
        let first = round(&args, &cars, args.source).await;
        report("full", &first);
        match &args.ready_file {
            Some(file) => {
                std::fs::write(file, b"connected").context("writing the ready file")?;
                while file.exists() {
                    sleep(Duration::from_millis(100)).await;
                }
            }
            None => sleep(Duration::from_secs(args.hold_secs)).await,
        }
        close_all(first.streams).await;
        if args.resume {
            // The server closes its side; give it a moment.
            sleep(Duration::from_millis(500)).await;
            let next = std::net::Ipv4Addr::from(u32::from(args.source) + 1);
            let again = round(&args, &cars, next).await;
            report("resumed", &again);
            close_all(again.streams).await;
        }
        anyhow::Ok(())
    })
}
