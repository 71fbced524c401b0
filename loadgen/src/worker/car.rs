//! One simulated car, a task of its worker: its socket (from a source
//! address of its own), CONNECT, SUBSCRIBE, a PUBLISH per interval, and
//! the downlink messages it reads, counted into the worker's [`Stats`].

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::packet::encode_publish;
use codec::{Connect, Decoder, Packet, QoS, Role, Subscribe};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use socket2::{Domain, Protocol, Socket, Type};

use super::{LINGER_US, Plan, Stats, bump, failed};
use crate::payload;

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
pub(super) fn source_of(plan: &Plan, car: u64) -> Option<SocketAddr> {
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

pub(super) async fn car(plan: Rc<Plan>, stats: Rc<Stats>, index: u64) {
    let car = plan.first_car + index;
    let target = plan
        .targets
        .get((car % plan.targets.len().max(1) as u64) as usize)
        .copied();
    let source = source_of(&plan, car);
    let Some(target) = target else {
        failed(&stats, |by| &mut by.socket);
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
                failed(&stats, |by| &mut by.tls);
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
            failed(&stats, |by| &mut by.tls);
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
                failed(&stats, |by| &mut by.socket);
                return;
            }
        };
        let ended = match &tls {
            None => session(stream, &plan, &stats, car, &client_id, began, &mut seq).await,
            Some((tls, connector)) => {
                let Ok(name) = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                else {
                    failed(&stats, |by| &mut by.tls);
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
                        failed(&stats, |by| &mut by.tls);
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
    let keep_alive = plan
        .keep_alive_secs
        .unwrap_or_else(|| u16::try_from((interval.as_secs() * 3).max(60)).unwrap_or(u16::MAX));
    let mut input = BytesMut::new();
    let connected = async {
        Some(
            mqtt_connect(&mut stream, client_id, keep_alive, &mut input)
                .await
                .is_some(),
        )
    };
    let timeout = async {
        sleep(Duration::from_secs(10)).await;
        None
    };
    match future::or(connected, timeout).await {
        Some(true) => {}
        Some(false) => {
            failed(stats, |by| &mut by.refused);
            return Ended::Refused;
        }
        None => {
            failed(stats, |by| &mut by.no_connack);
            return Ended::Refused;
        }
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
    // A car with nothing to publish within its keep-alive sends PINGREQ,
    // as real clients do. The first at a point spread by car within one
    // keep-alive: a fleet's cars did not all connect in the same second.
    let ping_every = Duration::from_secs(u64::from(keep_alive.max(1)));
    let mut ping_at = Instant::now()
        + Duration::from_millis(
            car.wrapping_mul(0x85EB_CA6B)
                % u64::try_from(ping_every.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
        );
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
        if now >= ping_at && now < next {
            if writer.write_all(&codec::packet::PINGREQ).await.is_err()
                || writer.flush().await.is_err()
            {
                failed = true;
                break;
            }
            ping_at = now + ping_every;
            continue;
        }
        if now < next {
            // Wake at least every second: the run may end (or be stopped)
            // long before a slow car's next publish.
            let wake = next.min(ping_at);
            sleep(
                wake.saturating_duration_since(now)
                    .min(end_at - now)
                    .min(Duration::from_secs(1)),
            )
            .await;
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
        ping_at = Instant::now() + ping_every;
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
                        && publish.topic() != payload::HELD_TOPIC
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
