//! `carbridge-mockbroker`: librdkafka's mock cluster (an in-process
//! Kafka-protocol broker that librdkafka's own test suite uses) as a
//! process, with the bridge's topics made: a broker that keeps up for the
//! scale and latency runs of `scripts/stack.sh` (`STACK_BROKER=mock`).
//!
//! It keeps everything in memory, compacts nothing and has no
//! CreateTopics: the topics are made here, at start. Never for
//! production, and not the broker of the correctness tests (tansu is).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rdkafka::mocking::MockCluster;

/// Runs librdkafka's mock cluster with the bridge's topics until SIGTERM or
/// SIGINT, and prints its bootstrap address (also to --bootstrap-file).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Brokers in the mock cluster.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Partitions of cs.uplink, cs.downlink and mqtt.sessions.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Partitions of mqtt.downlink: gateway instances x shards.
    #[arg(long, default_value_t = 2)]
    slots: i32,
    /// More topics to make, NAME=PARTITIONS (repeatable), e.g. the
    /// stack's broker probe topic.
    #[arg(long = "topic", value_name = "NAME=PARTITIONS")]
    topics: Vec<String>,
    /// Write the bootstrap address to this file once the topics exist.
    #[arg(long)]
    bootstrap_file: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let cluster = MockCluster::new(args.brokers).context("starting librdkafka's mock cluster")?;
    let mut topics = vec![
        (contract::topics::UPLINK.to_owned(), args.partitions),
        (contract::topics::DOWNLINK.to_owned(), args.partitions),
        (contract::topics::SESSIONS.to_owned(), args.partitions),
        (contract::topics::ROUTED.to_owned(), args.slots),
        (contract::topics::RECEIPTS.to_owned(), args.partitions),
        (contract::topics::HELD.to_owned(), args.partitions),
    ];
    for topic in &args.topics {
        let (name, partitions) = topic
            .split_once('=')
            .with_context(|| format!("--topic {topic}: expected NAME=PARTITIONS"))?;
        let partitions = partitions
            .parse()
            .with_context(|| format!("--topic {topic}: partitions must be a number"))?;
        topics.push((name.to_owned(), partitions));
    }
    for (name, partitions) in &topics {
        cluster
            .create_topic(name, *partitions, 1)
            .with_context(|| format!("creating {name}"))?;
    }
    let bootstrap = cluster.bootstrap_servers();
    println!("mock cluster on {bootstrap}: {topics:?}");
    if let Some(path) = &args.bootstrap_file {
        std::fs::write(path, &bootstrap).with_context(|| format!("writing {}", path.display()))?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
