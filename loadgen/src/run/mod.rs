//! The parent process: splits the fleet over worker processes, receives
//! what arrives (from Kafka, or from MQTT subscribers in peer mode), sends
//! downlink messages, shows progress every second and builds the report.
//!
//! [`run`] is the sequence of phases; each job has its module:
//!
//! - `uplink`: what arrived, and the threads that receive it: the Kafka
//!   consumer (`kafka`) or, in peer mode, MQTT subscribers on the server
//!   (`peer`);
//! - `fleet`: the worker processes (or `--raw-kafka`'s producer, in
//!   `kafka`), their ticks, and stopping them;
//! - `downlink`: the messages to the cars, through Kafka or (peer mode)
//!   one MQTT publisher, paced round robin by `pace`;
//! - `progress`: once a second, the workers' ticks merged into the run's
//!   totals, a timeline entry and a progress line;
//! - `summary`: the report from the totals, and its human summary.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use anyhow::bail;

use crate::payload;
use crate::report::Report;

mod downlink;
mod fleet;
mod kafka;
mod pace;
mod peer;
mod progress;
mod receipts;
mod summary;
mod uplink;

pub use fleet::{default_cars_per_worker, files_per_car};
pub use summary::summary;

/// What the user asked for (see `loadgen --help`).
#[derive(Debug, Clone)]
pub struct Options {
    pub cars: u64,
    pub targets: Vec<SocketAddr>,
    pub connect_rate: f64,
    pub publish_interval_ms: u64,
    pub keep_alive_secs: Option<u16>,
    pub payload_size: usize,
    pub topic: String,
    pub subscribe: Option<String>,
    pub warmup_secs: u64,
    pub duration_secs: u64,
    /// Gateway mode: where the uplink arrives and downlink is sent.
    pub kafka_bootstrap: Option<String>,
    pub kafka_topic: String,
    pub downlink_topic: String,
    pub downlink_rate: f64,
    /// Every downlink request asks for a receipt, read back from this
    /// topic; `None`: no receipts.
    pub receipts_topic: Option<String>,
    /// Peer mode: measure through MQTT subscribers on the target.
    pub peer: bool,
    /// Baseline: produce the fleet's records straight to Kafka, no MQTT.
    pub raw_kafka: bool,
    /// After the run, read the uplink topic again from the start.
    pub recount: bool,
    pub peer_subscribers: u64,
    pub sources: Vec<IpAddr>,
    pub cars_per_source: u64,
    pub cars_per_worker: u64,
    /// The command line, for the report.
    pub described: Vec<(String, String)>,
    pub quiet: bool,
    /// TLS for the cars; `None`: plain TCP.
    pub tls: Option<crate::worker::TlsPlan>,
    /// Cars closed by the server reconnect (to the next target).
    pub reconnect: bool,
    /// Cars leaving (and coming back) per second, fleet-wide.
    pub churn: f64,
    /// `--hold SECS`: requests expire after SECS, every other one asks to
    /// be held.
    pub hold_secs: Option<u64>,
    /// The link profile between each car and its target
    /// (`testkit::link::Link::profile`); `None`: straight.
    pub link: Option<String>,
}

impl Options {
    /// The uplink's shards: one per peer subscriber, each car publishing
    /// on its own (`{shard}` in the topic); one through Kafka.
    fn shards(&self) -> u64 {
        if self.peer {
            self.peer_subscribers.max(1)
        } else {
            1
        }
    }

    /// The uplink rate the fleet is asked for, messages per second.
    fn uplink_rate(&self) -> f64 {
        self.cars as f64 * 1000.0 / self.publish_interval_ms.max(1) as f64
    }
}

/// The run's schedule, µs since the epoch.
#[derive(Debug, Clone, Copy)]
struct Times {
    /// When loadgen started: records sent before are an earlier run's.
    started_us: u64,
    /// When the first car is due: workers need a moment to start.
    start_us: u64,
    /// The measured window: after the warm-up until publishing ends.
    measure_from_us: u64,
    end_us: u64,
}

impl Times {
    fn from_now(options: &Options) -> Self {
        let started_us = payload::now_us();
        let start_us = started_us + 500_000;
        let measure_from_us = start_us + options.warmup_secs * 1_000_000;
        Self {
            started_us,
            start_us,
            measure_from_us,
            end_us: measure_from_us + options.duration_secs * 1_000_000,
        }
    }
}

/// Runs the whole load test and returns its report.
pub fn run(options: &Options, stop: Arc<AtomicBool>) -> anyhow::Result<Report> {
    if options.targets.is_empty() {
        bail!("no --target");
    }
    if !options.peer && options.kafka_bootstrap.is_none() {
        bail!("--kafka-bootstrap is needed to measure through Kafka (or use --peer)");
    }
    let times = Times::from_now(options);
    let uplink = Arc::new(Mutex::new(uplink::Uplink::new(&times)));
    let receivers = uplink::Receivers::start(options, &uplink)?;
    let mut fleet = fleet::Fleet::start(options, &times, &stop)?;
    let receipts = match (&options.receipts_topic, &options.kafka_bootstrap) {
        (Some(topic), Some(bootstrap)) if !options.peer => {
            Some(receipts::Reader::start(bootstrap, topic)?)
        }
        _ => None,
    };
    let downlink = downlink::Sender::start(options, &times, &stop)?;
    let progress = progress::follow(options, &times, &mut fleet, &uplink, &downlink, &stop);
    fleet.wait();
    let downlink_sent = downlink.join();
    // Receipts trail their requests by two Kafka hops and the car.
    let receipts = receipts.map(|reader| {
        reader.finish(
            downlink_sent,
            std::time::Duration::from_secs(15 + options.hold_secs.unwrap_or(0)),
        )
    });
    uplink::drain(&uplink, progress.totals.uplink_sent);
    let in_topic = receivers.stop(options.recount, times.started_us);
    let uplink = uplink
        .lock()
        .map_err(|_| anyhow::anyhow!("uplink state poisoned"))?;
    if progress.totals.dropped > 0 && !options.quiet {
        eprintln!(
            "{} car connections were closed by the server or failed while publishing",
            progress.totals.dropped
        );
    }
    let mut report = summary::report(options, &times, progress, &uplink, downlink_sent, in_topic);
    report.receipts = receipts;
    Ok(report)
}
