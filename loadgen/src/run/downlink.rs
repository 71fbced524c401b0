//! The downlink: messages to the cars at `--downlink-rate` during the
//! measured window, round robin over the fleet, through Kafka (gateway
//! mode) or one MQTT publisher on the server (peer mode). The cars count
//! and time what arrives; this side counts what it sent.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use codec::{Connect, QoS};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::pace::RoundRobin;
use super::{Options, Times, kafka};
use crate::payload;

/// The downlink sender's thread (if the run sends any) and its count.
pub(super) struct Sender {
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    sent: Arc<AtomicU64>,
}

impl Sender {
    /// Starts sending, if asked to: it waits for the measured window on its
    /// own thread.
    pub(super) fn start(
        options: &Options,
        times: &Times,
        stop: &Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let sent = Arc::new(AtomicU64::new(0));
        let (cars, rate, from_us, until_us) = (
            options.cars,
            options.downlink_rate,
            times.measure_from_us,
            times.end_us,
        );
        let thread = match (
            &options.kafka_bootstrap,
            // Raw mode has no cars to receive downlink messages.
            options.downlink_rate > 0.0 && !options.peer && !options.raw_kafka,
        ) {
            (Some(bootstrap), true) => {
                let (bootstrap, topic) = (bootstrap.clone(), options.downlink_topic.clone());
                let (sent, stop) = (sent.clone(), stop.clone());
                let asks = Asks {
                    receipts: options.receipts_topic.is_some(),
                    hold_secs: options.hold_secs,
                };
                Some(std::thread::spawn(move || {
                    send_downlink(
                        &bootstrap, &topic, cars, rate, from_us, until_us, asks, &sent, &stop,
                    )
                }))
            }
            _ if options.peer && options.downlink_rate > 0.0 => {
                let target = *options.targets.first().context("no target")?;
                let (sent, stop) = (sent.clone(), stop.clone());
                Some(std::thread::spawn(move || {
                    send_downlink_mqtt(target, cars, rate, from_us, until_us, &sent, &stop)
                }))
            }
            _ => None,
        };
        Ok(Self { thread, sent })
    }

    /// Messages sent so far.
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for the sender to finish; the messages it sent.
    pub(super) fn join(self) -> u64 {
        if let Some(thread) = self.thread {
            match thread.join() {
                Ok(Err(error)) => eprintln!("downlink sender: {error:#}"),
                Err(_) => eprintln!("downlink sender panicked"),
                Ok(Ok(())) => {}
            }
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// What each downlink request asks of the bridge.
#[derive(Debug, Clone, Copy)]
struct Asks {
    /// A receipt (`--receipts`).
    receipts: bool,
    /// `--hold SECS`: an expiry SECS ahead, and holding for every other
    /// request sent (even counts: a fleet larger than the requests sent
    /// gets each car one, so the class cannot follow a car's numbering).
    hold_secs: Option<u64>,
}

/// Sends downlink messages through Kafka at `rate` per second from
/// `from_us` to `until_us`, round-robin over the cars, counting them in
/// `sent`.
#[allow(clippy::too_many_arguments)]
fn send_downlink(
    bootstrap: &str,
    topic: &str,
    cars: u64,
    rate: f64,
    from_us: u64,
    until_us: u64,
    asks: Asks,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let producer: BaseProducer = kafka::config(bootstrap)
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random")
        .create()
        .context("creating the downlink producer")?;
    std::thread::sleep(Duration::from_micros(
        from_us.saturating_sub(payload::now_us()),
    ));
    let mut pace = RoundRobin::new(cars, rate);
    while !stop.load(Ordering::Relaxed) && payload::now_us() < until_us {
        if let Some(wait) = pace.wait() {
            producer.poll(wait.min(Duration::from_millis(5)));
            continue;
        }
        let (car, seq) = pace.next();
        let client = payload::client_id(car);
        let now = payload::now_us();
        let body = payload::encode(car, seq, now, payload::MIN_PAYLOAD);
        let held = asks.hold_secs.is_some() && sent.load(Ordering::Relaxed).is_multiple_of(2);
        let mut headers = OwnedHeaders::new().insert(Header {
            key: contract::HEADER_TOPIC,
            value: Some(if held {
                payload::HELD_TOPIC
            } else {
                payload::DOWNLINK_TOPIC
            }),
        });
        let id = asks.receipts.then(|| {
            let id = super::receipts::id(now, sent.load(Ordering::Relaxed));
            match asks.hold_secs {
                Some(_) => super::receipts::with_class(id, held),
                None => id,
            }
        });
        if let Some(id) = &id {
            headers = headers.insert(Header {
                key: contract::HEADER_RECEIPT,
                value: Some(id),
            });
        }
        let expires = asks
            .hold_secs
            .map(|secs| (now / 1000 + secs * 1000).to_string());
        if let Some(expires) = &expires {
            headers = headers.insert(Header {
                key: contract::HEADER_EXPIRES,
                value: Some(expires),
            });
        }
        if held {
            headers = headers.insert(Header {
                key: contract::HEADER_HOLD,
                value: Some("1"),
            });
        }
        let record = BaseRecord::to(topic)
            .key(&client)
            .payload(&body)
            .headers(headers);
        if producer.send(record).is_err() {
            producer.poll(Duration::from_millis(10));
            continue;
        }
        pace.mark_sent();
        sent.fetch_add(1, Ordering::Relaxed);
        ops::kafka::serve_events(&producer, usize::MAX);
    }
    let _ = producer.flush(Duration::from_secs(10));
    Ok(())
}

/// Peer mode's downlink: one MQTT connection publishes to
/// `DL/LOAD/{client id}` (each car subscribed to its own) at `rate` per
/// second from `from_us` to `until_us`, round-robin over the cars.
fn send_downlink_mqtt(
    target: SocketAddr,
    cars: u64,
    rate: f64,
    from_us: u64,
    until_us: u64,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .with_context(|| format!("connecting the downlink publisher to {target}"))?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    Connect::new("loadgen-downlink", 600).encode(&mut out)?;
    stream.write_all(&out)?;
    // The server's CONNACK and PINGRESPs are not read: QoS 0 only, and a
    // keep-alive of 10 minutes outlasts any run this publishes in.
    std::thread::sleep(Duration::from_micros(
        from_us.saturating_sub(payload::now_us()),
    ));
    let mut pace = RoundRobin::new(cars, rate);
    while !stop.load(Ordering::Relaxed) && payload::now_us() < until_us {
        out.clear();
        // Everything due now goes out in one write.
        while pace.wait().is_none() {
            let (car, seq) = pace.next();
            let topic = format!("{}/{}", payload::DOWNLINK_TOPIC, payload::client_id(car));
            let body = payload::encode(car, seq, payload::now_us(), payload::MIN_PAYLOAD);
            codec::packet::encode_publish(
                &mut out,
                topic.as_bytes(),
                &body,
                QoS::AtMostOnce,
                None,
                false,
                false,
            )?;
            pace.mark_sent();
        }
        if out.is_empty() {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        stream.write_all(&out)?;
        sent.store(pace.count, Ordering::Relaxed);
    }
    let _ = stream.write_all(&codec::packet::DISCONNECT);
    Ok(())
}
