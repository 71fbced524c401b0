//! The load side of `scripts/gateway-bench.sh`: many MQTT connections
//! that PUBLISH as fast as the gateway takes the bytes.
//!
//! ```text
//! blast TARGET CARS SECONDS [PAYLOAD_BYTES]
//! ```
//!
//! Connects `CARS` cars to `TARGET` (CONNECT, CONNACK awaited, one at a
//! time), prints `connected`, then for `SECONDS` writes to each connection
//! in turn a batch of 32 QoS 0 PUBLISH frames (`UL/POS/<client id>`,
//! `PAYLOAD_BYTES` each, default 128), and prints how many frames it
//! wrote. The frames are encoded once: the load costs a `write` per batch,
//! so one thread keeps a shard busy. A write the gateway does not take
//! within 10 s fails the run.

// A benchmark helper: a failed setup should stop the run loudly.
#![allow(clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::packet::encode_publish;
use codec::{Connect, QoS};

/// PUBLISH frames per write.
const BATCH: usize = 32;
/// Longest wait for the gateway to take a write or answer a CONNECT.
const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [target, cars, seconds, rest @ ..] if rest.len() <= 1 => (|| {
            Some((
                target.clone(),
                cars.parse::<usize>().ok()?,
                seconds.parse::<u64>().ok()?,
                rest.first()
                    .map_or(Some(128), |p| p.parse::<usize>().ok())?,
            ))
        })(),
        _ => None,
    };
    let Some((target, cars, seconds, payload)) = parsed else {
        eprintln!("usage: blast TARGET CARS SECONDS [PAYLOAD_BYTES]");
        return ExitCode::from(2);
    };
    match blast(&target, cars, Duration::from_secs(seconds), payload) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("blast: {error}");
            ExitCode::FAILURE
        }
    }
}

fn blast(target: &str, cars: usize, duration: Duration, payload: usize) -> std::io::Result<()> {
    let body = vec![0xa5; payload];
    let mut fleet = Vec::with_capacity(cars);
    for car in 0..cars {
        let client_id = format!("BLAST{car:012}");
        let mut stream = TcpStream::connect(target)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut frames = BytesMut::new();
        Connect::new(client_id.as_str(), 600)
            .encode(&mut frames)
            .expect("encodable");
        stream.write_all(&frames)?;
        let mut connack = [0; 4];
        stream.read_exact(&mut connack)?;
        if connack != [0x20, 2, 0, 0] {
            return Err(std::io::Error::other(format!(
                "car {client_id}: CONNACK {connack:02x?}, not accepted"
            )));
        }
        frames.clear();
        let topic = format!("UL/POS/{client_id}");
        for _ in 0..BATCH {
            encode_publish(
                &mut frames,
                topic.as_bytes(),
                &body,
                QoS::AtMostOnce,
                None,
                false,
                false,
            )
            .expect("encodable");
        }
        fleet.push((stream, frames.freeze()));
    }
    println!("connected {cars}");
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed() < duration {
        for (stream, frames) in &mut fleet {
            stream.write_all(frames)?;
            written += BATCH as u64;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {written} PUBLISH in {secs:.1} s ({:.0}/s)",
        written as f64 / secs
    );
    Ok(())
}
