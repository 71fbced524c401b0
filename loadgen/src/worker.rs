//! One worker process: a share of the fleet on one glommio executor.
//!
//! Each car is a task: it connects (from its source address), sends
//! CONNECT, waits for the CONNACK, subscribes if asked, then publishes one
//! message per interval until the run ends, and reads what the server sends
//! it (downlink messages: latency, duplicates, order). Every second the
//! worker prints one JSON line ([`WorkerTick`]) on stdout for the parent.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::packet::encode_publish;
use codec::{Connect, Decoder, Packet, QoS, Role, Subscribe};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::payload::{self, Arrivals};
use crate::stats::{Buckets, histogram};

/// How long cars stay connected after the last publish, for downlink
/// messages in flight.
const LINGER_US: u64 = 3_000_000;

/// What one worker simulates (the parent's options, cut to its share).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub first_car: u64,
    pub cars: u64,
    pub targets: Vec<SocketAddr>,
    /// Source addresses to bind, one per `cars_per_source` cars (at most
    /// [`SOURCE_PORTS`]), each car to its own port; empty: let the kernel
    /// choose.
    pub sources: Vec<IpAddr>,
    pub cars_per_source: u64,
    /// This worker's share of the connect rate, cars per second.
    pub connect_rate: f64,
    pub publish_interval_ms: u64,
    pub payload_size: usize,
    /// Uplink topic; `{car}` and `{shard}` are replaced.
    pub topic: String,
    /// Subscribers of the peer mode: `{shard}` = car % shards.
    pub shards: u64,
    /// Filter to subscribe to after connecting; `{car}` is replaced.
    pub subscribe: Option<String>,
    /// Run start (µs since the epoch) and end of publishing.
    pub start_us: u64,
    pub end_us: u64,
    /// TLS with a client certificate per car; `None`: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsPlan>,
    /// A car the server closes before the run ends connects again (to
    /// the next target) and goes on publishing.
    #[serde(default)]
    pub reconnect: bool,
    /// Each car leaves about this often (seconds, spread by car), stays
    /// away 1–3 s and comes back; `None`: cars stay.
    #[serde(default)]
    pub churn_period_secs: Option<f64>,
}

/// The cars' TLS: a test PKI directory (see [`crate::tls`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsPlan {
    /// `ca.crt` (trusted for the server) and `cars/<client id>.{crt,key}`.
    pub dir: std::path::PathBuf,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// Each car connects once before its measured connection, which then
    /// resumes the TLS session (a ticket) instead of a full handshake.
    pub resume: bool,
}

/// One second of a worker, sent to the parent as a JSON line. Counters are
/// deltas since the previous tick.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerTick {
    pub connected_now: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub connect_latency: Buckets,
    /// When the first and the latest CONNACK of this worker arrived (µs
    /// since the epoch; 0 before any).
    pub first_connack_us: u64,
    pub last_connack_us: u64,
    pub uplink_sent: u64,
    pub downlink_received: u64,
    pub downlink_duplicates: u64,
    pub downlink_out_of_order: u64,
    pub downlink_latency: Buckets,
    /// Closes the server initiated (or I/O errors) while publishing.
    pub dropped_connections: u64,
    /// Messages to cars loadgen did not send (another service's, such as
    /// the water-warning service's DL/WARN).
    pub other_downlink: u64,
    /// Set on the last line.
    pub done: bool,
}

#[derive(Debug)]
struct Stats {
    connected_now: Cell<u64>,
    connects: Cell<u64>,
    connect_failures: Cell<u64>,
    connect_latency: RefCell<Histogram<u64>>,
    first_connack_us: Cell<u64>,
    last_connack_us: Cell<u64>,
    uplink_sent: Cell<u64>,
    downlink: RefCell<Arrivals>,
    downlink_reported: Cell<(u64, u64, u64)>,
    downlink_latency: RefCell<Histogram<u64>>,
    dropped_connections: Cell<u64>,
    other_downlink: Cell<u64>,
    stop: Arc<AtomicBool>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

impl Stats {
    fn tick(&self, done: bool) -> WorkerTick {
        let arrivals = self.downlink.borrow();
        let (unique, duplicates, out_of_order) = self.downlink_reported.replace((
            arrivals.unique,
            arrivals.duplicates,
            arrivals.out_of_order,
        ));
        let tick = WorkerTick {
            connected_now: self.connected_now.get(),
            connects: self.connects.replace(0),
            connect_failures: self.connect_failures.replace(0),
            connect_latency: Buckets::of(&self.connect_latency.borrow()),
            first_connack_us: self.first_connack_us.get(),
            last_connack_us: self.last_connack_us.get(),
            uplink_sent: self.uplink_sent.replace(0),
            downlink_received: arrivals.unique - unique,
            downlink_duplicates: arrivals.duplicates - duplicates,
            downlink_out_of_order: arrivals.out_of_order - out_of_order,
            downlink_latency: Buckets::of(&self.downlink_latency.borrow()),
            dropped_connections: self.dropped_connections.replace(0),
            other_downlink: self.other_downlink.replace(0),
            done,
        };
        self.connect_latency.borrow_mut().reset();
        self.downlink_latency.borrow_mut().reset();
        tick
    }
}

/// Runs the plan on this thread; returns when the run ended (or SIGTERM).
pub fn run(plan: Plan, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("loadgen-worker")
        // The kernel looks up cancelled requests among all pending polls in
        // a hash table sized by the ring: glommio's default of 128 entries
        // gives 8 buckets for the worker's thousands of cars (see the
        // gateway's RING_DEPTH).
        .ring_depth(4096)
        .make()
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?;
    executor.run(async move {
        let stats = Rc::new(Stats {
            connected_now: Cell::new(0),
            connects: Cell::new(0),
            connect_failures: Cell::new(0),
            connect_latency: RefCell::new(histogram()),
            first_connack_us: Cell::new(0),
            last_connack_us: Cell::new(0),
            uplink_sent: Cell::new(0),
            downlink: RefCell::new(Arrivals::default()),
            downlink_reported: Cell::new((0, 0, 0)),
            downlink_latency: RefCell::new(histogram()),
            dropped_connections: Cell::new(0),
            other_downlink: Cell::new(0),
            stop,
        });
        let plan = Rc::new(plan);
        let ticker = glommio::spawn_local(report_every_second(stats.clone(), plan.end_us));
        let start =
            Instant::now() + Duration::from_micros(plan.start_us.saturating_sub(payload::now_us()));
        let mut cars = Vec::new();
        for i in 0..plan.cars {
            if stats.stop.load(Ordering::Relaxed) || payload::now_us() >= plan.end_us {
                break;
            }
            // Paced: car i starts at start + i / rate.
            let due = start + Duration::from_secs_f64(i as f64 / plan.connect_rate.max(0.001));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                sleep(wait).await;
            }
            cars.push(glommio::spawn_local(car(plan.clone(), stats.clone(), i)));
        }
        for car in cars {
            car.await;
        }
        ticker.await;
    });
    Ok(())
}

async fn report_every_second(stats: Rc<Stats>, end_us: u64) {
    loop {
        sleep(Duration::from_secs(1)).await;
        let done = stats.stop.load(Ordering::Relaxed)
            || (payload::now_us() >= end_us && stats.connected_now.get() == 0);
        let line = serde_json::to_string(&stats.tick(done)).unwrap_or_default();
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if done {
            stats.stop.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// First local port of the explicit source ports; car `k` of a source
/// address connects from `SOURCE_PORT_BASE + k % cars_per_source`.
pub const SOURCE_PORT_BASE: u16 = 10_000;
/// Most cars per source address: the ports from the base to 59,999.
pub const SOURCE_PORTS: u64 = 50_000;

/// A socket bound to `source` (if any) with its connect to `target`
/// started (non-blocking: the first write waits for the handshake).
///
/// A source with a port is bound to exactly that port: the kernel then has
/// no free port to search for, a search that at 24,000 connections to one
/// address took 70 % of loadgen's CPU (`__inet_check_established`, found
/// with `perf`). Should that port be taken (another program listening on
/// it on all addresses), the kernel picks one after all.
pub fn start_connect(target: SocketAddr, source: Option<SocketAddr>) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(source) = source {
        // A previous run's connection from this port may still be in
        // TIME_WAIT; the address pair differs, so the port may be reused.
        socket.set_reuse_address(true)?;
        if let Err(error) = socket.bind(&source.into()) {
            if error.kind() != io::ErrorKind::AddrInUse || source.port() == 0 {
                return Err(error);
            }
            socket.bind(&SocketAddr::new(source.ip(), 0).into())?;
        }
    }
    match socket.connect(&target.into()) {
        Ok(()) => Ok(socket),
        // EINPROGRESS (115 on Linux): the handshake continues.
        Err(error)
            if error.raw_os_error() == Some(115) || error.kind() == io::ErrorKind::WouldBlock =>
        {
            Ok(socket)
        }
        Err(error) => Err(error),
    }
}

/// The address and port car `car` connects from, if the plan has sources.
fn source_of(plan: &Plan, car: u64) -> Option<SocketAddr> {
    let per_source = plan.cars_per_source.clamp(1, SOURCE_PORTS);
    let ip = plan
        .sources
        .get(((car / per_source) % plan.sources.len().max(1) as u64) as usize)
        .copied()?;
    let port = SOURCE_PORT_BASE.saturating_add(u16::try_from(car % per_source).unwrap_or(0));
    Some(SocketAddr::new(ip, port))
}

fn fill(template: &str, car: u64, shards: u64) -> String {
    template
        .replace("{car}", &payload::client_id(car))
        .replace("{shard}", &(car % shards.max(1)).to_string())
}

async fn car(plan: Rc<Plan>, stats: Rc<Stats>, index: u64) {
    let car = plan.first_car + index;
    let target = plan
        .targets
        .get((car % plan.targets.len().max(1) as u64) as usize)
        .copied();
    let source = source_of(&plan, car);
    let Some(target) = target else {
        bump(&stats.connect_failures);
        return;
    };
    let client_id = payload::client_id(car);
    let tls = match &plan.tls {
        None => None,
        Some(tls) => match crate::tls::car_config(&tls.dir, &client_id) {
            Ok(config) => Some((tls, futures_rustls::TlsConnector::from(config))),
            Err(error) => {
                if index == 0 {
                    eprintln!("loadgen worker: TLS for {client_id}: {error:#}");
                }
                bump(&stats.connect_failures);
                return;
            }
        },
    };
    if let Some((tls, connector)) = &tls
        && tls.resume
    {
        // A first session, for the ticket the measured one resumes.
        let primed = async {
            let stream = TcpStream::from(start_connect(target, source).ok()?);
            let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone()).ok()?;
            let mut stream = connector.connect(name, stream).await.ok()?;
            mqtt_connect(&mut stream, &client_id, 60, &mut BytesMut::new()).await?;
            stream.write_all(&codec::packet::DISCONNECT).await.ok()?;
            stream.close().await.ok()
        };
        let timeout = async {
            sleep(Duration::from_secs(10)).await;
            None
        };
        if future::or(primed, timeout).await.is_none() {
            bump(&stats.connect_failures);
            return;
        }
    }
    let mut seq = 0u64;
    let mut target = target;
    for attempt in 1u64.. {
        let began = Instant::now();
        let stream = match start_connect(target, source) {
            Ok(socket) => TcpStream::from(socket),
            Err(_) => {
                bump(&stats.connect_failures);
                return;
            }
        };
        let ended = match &tls {
            None => session(stream, &plan, &stats, car, &client_id, began, &mut seq).await,
            Some((tls, connector)) => {
                let Ok(name) = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                else {
                    bump(&stats.connect_failures);
                    return;
                };
                let handshake = async { connector.connect(name, stream).await.ok() };
                let timeout = async {
                    sleep(Duration::from_secs(10)).await;
                    None
                };
                match future::or(handshake, timeout).await {
                    Some(stream) => {
                        session(stream, &plan, &stats, car, &client_id, began, &mut seq).await
                    }
                    None => {
                        bump(&stats.connect_failures);
                        Ended::Refused
                    }
                }
            }
        };
        let run_on = payload::now_us() < plan.end_us && !stats.stop.load(Ordering::Relaxed);
        if ended == Ended::Left && run_on {
            // Away 1–3 s (spread by car), then back to the same target.
            let away = 1000 + car.wrapping_mul(0x9E37_79B9).wrapping_add(attempt * 7919) % 2000;
            sleep(Duration::from_millis(away)).await;
            continue;
        }
        if !(plan.reconnect && run_on && matches!(ended, Ended::Closed | Ended::Refused)) {
            return;
        }
        // Back off 0.1–1 s (spread by car), then the next target: a
        // drained gateway's cars reach the others as a trickle.
        let backoff = 100 + car.wrapping_mul(0x9E37_79B9).wrapping_add(attempt * 7919) % 900;
        sleep(Duration::from_millis(backoff)).await;
        target = plan
            .targets
            .get(((car + attempt) % plan.targets.len().max(1) as u64) as usize)
            .copied()
            .unwrap_or(target);
    }
}

/// How a car's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The run ended (or was stopped): the car disconnected.
    Done,
    /// The server closed the connection, or a write failed.
    Closed,
    /// No CONNACK (refused, timed out, or the handshake failed).
    Refused,
    /// The car left on its own (`--churn`) and comes back.
    Left,
}

/// Sends CONNECT and reads up to the CONNACK; `Some` when accepted. What
/// arrived after the CONNACK stays in `input`.
async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
    keep_alive: u16,
    input: &mut BytesMut,
) -> Option<()> {
    let decoder = Decoder::new(Role::Client, 1 << 20);
    let mut out = BytesMut::new();
    Connect::new(client_id, keep_alive).encode(&mut out).ok()?;
    stream.write_all(&out).await.ok()?;
    stream.flush().await.ok()?;
    loop {
        match decoder.decode(input) {
            Ok(Some(Packet::ConnAck(ack))) => {
                return (ack.code == codec::ConnectReturnCode::Accepted).then_some(());
            }
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => {}
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        input.extend_from_slice(chunk.get(..n)?);
    }
}

/// One car's MQTT session over its connected stream (TCP or TLS);
/// `seq` numbers its messages across reconnects.
async fn session<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    mut stream: S,
    plan: &Plan,
    stats: &Rc<Stats>,
    car: u64,
    client_id: &str,
    began: Instant,
    seq: &mut u64,
) -> Ended {
    let interval = Duration::from_millis(plan.publish_interval_ms.max(1));
    let keep_alive = u16::try_from((interval.as_secs() * 3).max(60)).unwrap_or(u16::MAX);
    let mut input = BytesMut::new();
    let connected = mqtt_connect(&mut stream, client_id, keep_alive, &mut input);
    let timeout = async {
        sleep(Duration::from_secs(10)).await;
        None
    };
    if future::or(connected, timeout).await.is_none() {
        bump(&stats.connect_failures);
        return Ended::Refused;
    }
    bump(&stats.connects);
    bump(&stats.connected_now);
    let now = payload::now_us();
    if stats.first_connack_us.get() == 0 {
        stats.first_connack_us.set(now);
    }
    stats.last_connack_us.set(now);
    let _ = stats.connect_latency.borrow_mut().record(
        u64::try_from(began.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1),
    );

    if let Some(filter) = &plan.subscribe {
        let filter = fill(filter, car, plan.shards);
        let mut out = BytesMut::new();
        if let Ok(subscribe) = Subscribe::new(
            std::num::NonZeroU16::MIN,
            [(filter.as_str(), QoS::AtMostOnce)],
        ) && subscribe.encode(&mut out).is_ok()
        {
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
        }
    }

    let (reader, mut writer) = futures_lite::io::split(stream);
    let closed = Rc::new(Cell::new(false));
    let reading = glommio::spawn_local(read_downlink(
        reader,
        input,
        stats.clone(),
        plan.first_car,
        closed.clone(),
    ));
    let topic = fill(&plan.topic, car, plan.shards);
    // Spread the cars' first publishes over one interval.
    let offset = Duration::from_micros(
        car.wrapping_mul(0x9E37_79B9)
            % u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
    );
    let mut next = Instant::now() + offset;
    // With churn: leave after 0.5–1.5 periods (spread by car and by
    // connection), to come back shortly.
    let leave_at = plan.churn_period_secs.map(|period| {
        let spread = (car.wrapping_mul(0x9E37_79B9).wrapping_add(*seq) % 1000) as f64 / 1000.0;
        Instant::now() + Duration::from_secs_f64(period * (0.5 + spread))
    });
    let mut out = BytesMut::new();
    let mut failed = false;
    let mut left = false;
    let end_at =
        Instant::now() + Duration::from_micros(plan.end_us.saturating_sub(payload::now_us()));
    loop {
        let now = Instant::now();
        if stats.stop.load(Ordering::Relaxed) || now >= end_at {
            break;
        }
        if closed.get() {
            // The server closed the connection (a drain, a takeover).
            failed = true;
            break;
        }
        if leave_at.is_some_and(|at| now >= at) {
            left = true;
            break;
        }
        if now < next {
            // Wake at least every second: the run may end (or be stopped)
            // long before a slow car's next publish.
            sleep((next - now).min(end_at - now).min(Duration::from_secs(1))).await;
            continue;
        }
        *seq += 1;
        let body = payload::encode(car, *seq, payload::now_us(), plan.payload_size);
        out.clear();
        if encode_publish(
            &mut out,
            topic.as_bytes(),
            &body,
            QoS::AtMostOnce,
            None,
            false,
            false,
        )
        .is_err()
            || writer.write_all(&out).await.is_err()
            || writer.flush().await.is_err()
        {
            // Not sent: the next connection sends this number again.
            *seq -= 1;
            failed = true;
            break;
        }
        bump(&stats.uplink_sent);
        next += interval;
    }
    if failed {
        bump(&stats.dropped_connections);
    } else if left {
        let _ = writer.write_all(&codec::packet::DISCONNECT).await;
        let _ = writer.close().await;
    } else {
        // Stay a moment after the last publish: downlink messages sent
        // just before the end are still on their way.
        let linger_until = plan.end_us + LINGER_US;
        while !stats.stop.load(Ordering::Relaxed) && payload::now_us() < linger_until {
            sleep(Duration::from_millis(100)).await;
        }
        let _ = writer.write_all(&codec::packet::DISCONNECT).await;
        let _ = writer.close().await;
    }
    // The reader ends when the server closes the connection.
    let _ = future::or(reading, async {
        sleep(Duration::from_secs(5)).await;
    })
    .await;
    stats
        .connected_now
        .set(stats.connected_now.get().saturating_sub(1));
    if failed {
        Ended::Closed
    } else if left {
        Ended::Left
    } else {
        Ended::Done
    }
}

/// Reads what the server sends this car until the connection closes.
/// Arrivals are indexed from `first_car`, this worker's first.
async fn read_downlink<R: futures_lite::AsyncRead + Unpin>(
    reader: R,
    input: BytesMut,
    stats: Rc<Stats>,
    first_car: u64,
    closed: Rc<Cell<bool>>,
) {
    read_until_closed(reader, input, stats, first_car).await;
    closed.set(true);
}

async fn read_until_closed<R: futures_lite::AsyncRead + Unpin>(
    mut reader: R,
    mut input: BytesMut,
    stats: Rc<Stats>,
    first_car: u64,
) {
    let decoder = Decoder::new(Role::Client, 1 << 20);
    let mut chunk = vec![0u8; 4096];
    loop {
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(Packet::Publish(publish)))
                    if !publish.topic().starts_with(payload::DOWNLINK_TOPIC) =>
                {
                    bump(&stats.other_downlink);
                }
                Ok(Some(Packet::Publish(publish))) => {
                    let now = payload::now_us();
                    if let Some((car, seq, sent)) = payload::decode(publish.payload())
                        && stats
                            .downlink
                            .borrow_mut()
                            .record(car.saturating_sub(first_car), seq)
                    {
                        let _ = stats
                            .downlink_latency
                            .borrow_mut()
                            .record(now.saturating_sub(sent).max(1));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn plan(sources: usize, cars_per_source: u64) -> Plan {
        Plan {
            first_car: 0,
            cars: 0,
            targets: Vec::new(),
            sources: (0..sources)
                .map(|k| IpAddr::V4(Ipv4Addr::new(127, 9, 0, k as u8 + 1)))
                .collect(),
            cars_per_source,
            connect_rate: 1.0,
            publish_interval_ms: 1000,
            payload_size: 64,
            topic: String::new(),
            shards: 1,
            subscribe: None,
            start_us: 0,
            end_us: 0,
            tls: None,
            reconnect: false,
            churn_period_secs: None,
        }
    }

    #[test]
    fn every_car_has_its_own_source_address_and_port() {
        let plan = plan(3, 20_000);
        let addresses: HashSet<SocketAddr> = (0..60_000)
            .filter_map(|car| source_of(&plan, car))
            .collect();
        assert_eq!(addresses.len(), 60_000);
        assert!(addresses.iter().all(|a| a.port() >= SOURCE_PORT_BASE));
        assert!(
            addresses
                .iter()
                .all(|a| a.port() < SOURCE_PORT_BASE + 20_000)
        );
    }

    #[test]
    fn cars_per_source_is_capped_at_the_port_span() {
        let plan = plan(2, 1_000_000);
        let last = source_of(&plan, SOURCE_PORTS - 1).map(|a| a.port());
        assert_eq!(last, Some(59_999));
        assert_eq!(
            source_of(&plan, SOURCE_PORTS).map(|a| a.port()),
            Some(SOURCE_PORT_BASE)
        );
    }

    #[test]
    fn no_sources_leaves_the_choice_to_the_kernel() {
        assert_eq!(source_of(&plan(0, 20_000), 7), None);
    }
}
