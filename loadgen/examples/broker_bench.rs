//! A broker, measured alone, at the bridge's rates: `--producers` threads
//! (one librdkafka producer each, as each gateway shard has one) produce
//! `--size`-byte records at `--rate` records a second in total (0: as fast
//! as the broker takes them) for `--secs`; one consumer reads them all
//! back. For every record it takes the time from `send` to its delivery
//! report (produce→ack) and from `send` to the consumer's `poll`
//! (produce→fetch). Nothing of the bridge runs.
//!
//! ```sh
//! cargo run --release -p loadgen --example broker_bench -- \
//!     --kafka-bootstrap 127.0.0.1:29092 --create --producers 40 --rate 70000
//! ```
//!
//! `scripts/broker-bench.sh` runs it against tansu and librdkafka's mock
//! cluster at the goals' rates, one after the other, and tabulates both.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use loadgen::payload::now_us;
use loadgen::stats::histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:29092")]
    kafka_bootstrap: String,
    #[arg(long, default_value = "broker-bench")]
    topic: String,
    /// Create the topic with --partitions partitions if it is missing.
    #[arg(long)]
    create: bool,
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Producer clients, one thread each.
    #[arg(long, default_value_t = 40)]
    producers: u32,
    /// Records per second, all producers together; 0: as fast as possible.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Record size in bytes (an uplink record is about 100).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// The producers' linger.ms (the gateway's default is 5).
    #[arg(long, default_value = "5")]
    linger_ms: String,
    /// The consumer's fetch.wait.max.ms (the router's and gateway's is 20).
    #[arg(long, default_value = "20")]
    fetch_wait_ms: String,
    /// Any librdkafka property for every client, KEY=VALUE (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// Names the broker in the output.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Write the totals as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Produce→ack latencies of one producer, from its delivery reports.
struct Acks {
    start: Instant,
    latency: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// Microseconds after `start` of the latest acknowledgement.
    last_ack_us: AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    /// Microseconds after `start` at `send`.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_us: usize) {
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                self.last_ack_us.fetch_max(now, Ordering::Relaxed);
                let sent = u64::try_from(sent_us).unwrap_or(0);
                if let Ok(mut latency) = self.latency.lock() {
                    latency.saturating_record(now.saturating_sub(sent).max(1));
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Produced {
    sent: u64,
    queue_full: u64,
}

/// Drives every producer from one thread (as a gateway process's poller
/// would, and so that the client's own threads do not crowd the broker
/// off this machine's cores): each producer sends its share, `rate`
/// records a second (0: as fast as it can), until `secs` have passed;
/// then all flush.
fn produce(producers: &[BaseProducer<Acks>], args: &Args, rate: f64, start: Instant) -> Produced {
    let end = Duration::from_secs(args.secs);
    let mut payload = vec![0u8; args.size.max(8)];
    let mut sent = vec![0u64; producers.len()];
    let mut produced = Produced {
        sent: 0,
        queue_full: 0,
    };
    while start.elapsed() < end {
        let due = if rate > 0.0 {
            (start.elapsed().as_secs_f64() * rate) as u64
        } else {
            u64::MAX
        };
        for ((producer, sent), index) in producers.iter().zip(sent.iter_mut()).zip(0u32..) {
            let mut burst = 0;
            while *sent < due && burst < 1_000 {
                let key = format!("car-{index}-{}", *sent % 1000);
                if let Some(head) = payload.get_mut(..8) {
                    head.copy_from_slice(&now_us().to_le_bytes());
                }
                let sent_us = usize::try_from(start.elapsed().as_micros()).unwrap_or(usize::MAX);
                match producer.send(
                    BaseRecord::with_opaque_to(&args.topic, sent_us)
                        .key(key.as_bytes())
                        .payload(&payload[..]),
                ) {
                    Ok(()) => *sent += 1,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        produced.queue_full += 1;
                        break;
                    }
                    Err((error, _)) => {
                        eprintln!("producer {index}: {error}");
                        break;
                    }
                }
                burst += 1;
            }
            ops::kafka::serve_events(producer, usize::MAX);
        }
        if rate > 0.0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for producer in producers {
        let _ = producer.flush(Duration::from_secs(30));
    }
    produced.sent = sent.iter().sum();
    produced
}

/// Reads everything produced after `run_us` until `done` and nothing is
/// missing, or `deadline`; returns produce→fetch latencies.
fn consume(
    consumer: &BaseConsumer,
    run_us: u64,
    expected: &AtomicU64,
    done: &AtomicBool,
    deadline: Instant,
    mut latency: Histogram<u64>,
) -> (Histogram<u64>, u64) {
    let mut read = 0u64;
    while Instant::now() < deadline
        && !(done.load(Ordering::Relaxed) && read >= expected.load(Ordering::Relaxed))
    {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(10)) else {
            continue;
        };
        let Some(sent_us) = message
            .payload()
            .and_then(|p| p.get(..8))
            .and_then(|head| <[u8; 8]>::try_from(head).ok())
            .map(u64::from_le_bytes)
        else {
            continue;
        };
        if sent_us < run_us {
            continue; // an earlier run's record
        }
        latency.saturating_record(now_us().saturating_sub(sent_us).max(1));
        read += 1;
    }
    (latency, read)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut common = ClientConfig::new();
    common.set("bootstrap.servers", &args.kafka_bootstrap);
    for property in &args.properties {
        let (key, value) = property
            .split_once('=')
            .with_context(|| format!("-X {property}: expected KEY=VALUE"))?;
        common.set(key, value);
    }
    if args.create {
        loadgen::probe::create_topic(&common, &args.topic, args.partitions)?;
    }
    let consumer: BaseConsumer = common
        .clone()
        .set("group.id", "broker-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", &args.fetch_wait_ms)
        .create()?;
    let partitions = ops::kafka::partition_count(&consumer, &args.topic, Duration::from_secs(10))?;
    anyhow::ensure!(
        partitions > 0,
        "topic {} does not exist: pass --create",
        args.topic
    );
    let assignment =
        ops::kafka::at_end(&consumer, &args.topic, partitions, Duration::from_secs(10))?;
    consumer.assign(&assignment)?;

    let start = Instant::now();
    let run_us = now_us();
    let per_producer = args.rate as f64 / f64::from(args.producers.max(1));
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let producer: BaseProducer<Acks> = common
            .clone()
            .set("linger.ms", &args.linger_ms)
            // Flat out, the queue is what is in flight: keep it to what a
            // gateway shard holds, not librdkafka's 100,000.
            .set("queue.buffering.max.messages", "10000")
            .create_with_context(Acks {
                start,
                latency: Mutex::new(histogram()),
                acked: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                last_ack_us: AtomicU64::new(0),
            })?;
        producers.push(producer);
    }
    let expected = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let deadline = start + Duration::from_secs(args.secs + 30);
    let fetch_latency = histogram();
    let mut ack = histogram();
    let (produced, fetched) = std::thread::scope(|scope| {
        let reader =
            scope.spawn(|| consume(&consumer, run_us, &expected, &done, deadline, fetch_latency));
        let produced = produce(&producers, &args, per_producer, start);
        let acked: u64 = producers
            .iter()
            .map(|p| p.context().acked.load(Ordering::Relaxed))
            .sum();
        expected.store(acked, Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
        (produced, reader.join().ok())
    });
    let (fetch, read) = fetched.context("the consumer thread panicked")?;

    let (sent, queue_full) = (produced.sent, produced.queue_full);
    let mut acked = 0;
    let mut failed = 0;
    let mut last_ack_us = 0;
    for producer in &producers {
        let context = producer.context();
        if let Ok(latency) = context.latency.lock() {
            ack.add(&*latency).context("merging histograms")?;
        }
        acked += context.acked.load(Ordering::Relaxed);
        failed += context.failed.load(Ordering::Relaxed);
        last_ack_us = last_ack_us.max(context.last_ack_us.load(Ordering::Relaxed));
    }
    let acked_per_sec = acked as f64 / (last_ack_us.max(1) as f64 / 1e6);
    let summary = serde_json::json!({
        "broker": args.label,
        "producers": args.producers,
        "rate": args.rate,
        "secs": args.secs,
        "size": args.size,
        "sent": sent,
        "acked": acked,
        "failed": failed,
        "read": read,
        "queue_full": queue_full,
        "acked_per_sec": acked_per_sec.round(),
        "ack_p50_ms": ms(&ack, 0.5),
        "ack_p99_ms": ms(&ack, 0.99),
        "ack_p999_ms": ms(&ack, 0.999),
        "ack_max_ms": ack.max() as f64 / 1e3,
        "fetch_p50_ms": ms(&fetch, 0.5),
        "fetch_p99_ms": ms(&fetch, 0.99),
        "fetch_p999_ms": ms(&fetch, 0.999),
        "fetch_max_ms": fetch.max() as f64 / 1e3,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, summary.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "{} rate {} x{}: sent {sent} acked {acked} failed {failed} read {read} ({:.0}/s acked)  \
         ack p50 {:.1} p99 {:.1} max {:.1} ms  fetch p50 {:.1} p99 {:.1} max {:.1} ms",
        args.label,
        args.rate,
        args.producers,
        acked_per_sec,
        ms(&ack, 0.5),
        ms(&ack, 0.99),
        ack.max() as f64 / 1e3,
        ms(&fetch, 0.5),
        ms(&fetch, 0.99),
        fetch.max() as f64 / 1e3,
    );
    Ok(())
}
