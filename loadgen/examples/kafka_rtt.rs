//! The broker's own share of end-to-end latency: one producer sends
//! timestamped records at a fixed rate, one consumer reads them back, and
//! the time from `send` to `poll` is recorded. Nothing of the bridge runs.
//!
//! ```sh
//! cargo run --release -p loadgen --example kafka_rtt -- \
//!     --kafka-bootstrap 127.0.0.1:29092 --topic cs.downlink --rate 10000
//! ```
//!
//! Every hop of the downlink (loadgen → `cs.downlink` → router →
//! `mqtt.downlink` → gateway) pays this once.
//!
//! `scripts/stack.sh` runs it as a probe beside the fleet (`--create` a
//! topic of its own, `--json` for the report): the broker's latency under
//! the same load at the same time, to tell the broker's share of the
//! fleet's latency from the bridge's.

use std::time::{Duration, Instant};

use loadgen::payload::now_us;

use anyhow::Context;
use clap::Parser;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:29092")]
    kafka_bootstrap: String,
    #[arg(long, default_value = "cs.downlink")]
    topic: String,
    /// Records per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// The producer's linger.ms.
    #[arg(long, default_value = "1")]
    linger_ms: String,
    /// The consumer's fetch.wait.max.ms.
    #[arg(long, default_value = "20")]
    fetch_wait_ms: String,
    /// Create the topic (one partition) if it does not exist.
    #[arg(long)]
    create: bool,
    /// Wait this many seconds before sending (a probe started with the
    /// fleet skips its warm-up).
    #[arg(long, default_value_t = 0)]
    delay_secs: u64,
    /// Write the totals as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Print only the totals.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut common = ClientConfig::new();
    common.set("bootstrap.servers", &args.kafka_bootstrap);
    if args.create {
        loadgen::probe::create_topic(&common, &args.topic, 1)?;
    }
    let consumer: BaseConsumer = common
        .clone()
        .set("group.id", "kafka-rtt")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", &args.fetch_wait_ms)
        .create()?;
    let partitions = ops::kafka::partition_count(&consumer, &args.topic, Duration::from_secs(10))?;
    let assignment =
        ops::kafka::at_end(&consumer, &args.topic, partitions, Duration::from_secs(10))?;
    consumer.assign(&assignment)?;
    let producer: BaseProducer = common.clone().set("linger.ms", &args.linger_ms).create()?;
    std::thread::sleep(Duration::from_secs(args.delay_secs));

    let start = Instant::now();
    let run_us = now_us();
    let mut total = loadgen::stats::histogram();
    let mut second = loadgen::stats::histogram();
    let interval = Duration::from_secs(1).as_nanos() / u128::from(args.rate.max(1));
    let mut sent: u64 = 0;
    let mut received: u64 = 0;
    let mut next_report = 1;
    let end = Duration::from_secs(args.secs);
    while start.elapsed() < end + Duration::from_secs(2)
        && (received < sent || start.elapsed() < end)
    {
        let due = u64::try_from(start.elapsed().as_nanos() / interval.max(1)).unwrap_or(u64::MAX);
        while sent < due && start.elapsed() < end {
            let body = now_us().to_le_bytes();
            let key = sent.to_le_bytes();
            if producer
                .send(BaseRecord::to(&args.topic).key(&key[..]).payload(&body[..]))
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        while let Some(message) = consumer.poll(Duration::from_micros(200)) {
            let message = message.context("consuming")?;
            let Some(bytes) = message.payload().and_then(|p| <[u8; 8]>::try_from(p).ok()) else {
                continue;
            };
            let sent_us = u64::from_le_bytes(bytes);
            if sent_us < run_us {
                continue; // an earlier run's record
            }
            let latency = now_us().saturating_sub(sent_us);
            total.saturating_record(latency);
            second.saturating_record(latency);
            received += 1;
        }
        if start.elapsed() >= Duration::from_secs(next_report) && !args.quiet {
            println!(
                "{next_report:>3}s sent {sent:>8} received {received:>8}  p50 {:>7.2} ms p99 {:>7.2} ms max {:>7.2} ms",
                second.value_at_quantile(0.5) as f64 / 1e3,
                second.value_at_quantile(0.99) as f64 / 1e3,
                second.max() as f64 / 1e3
            );
            second.reset();
            next_report += 1;
        }
    }
    producer.flush(Duration::from_secs(5))?;
    if let Some(path) = &args.json {
        let ms = |q: f64| total.value_at_quantile(q) as f64 / 1e3;
        let summary = serde_json::json!({
            "sent": sent,
            "received": received,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "max_ms": total.max() as f64 / 1e3,
        });
        std::fs::write(path, summary.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "total: sent {sent} received {received}  p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms",
        total.value_at_quantile(0.5) as f64 / 1e3,
        total.value_at_quantile(0.9) as f64 / 1e3,
        total.value_at_quantile(0.99) as f64 / 1e3,
        total.max() as f64 / 1e3
    );
    Ok(())
}
