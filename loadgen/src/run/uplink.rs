//! The uplink side: what arrived of the cars' messages, and the threads
//! that receive them (the Kafka consumer, or the peer's MQTT subscribers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::summary::ms;
use super::{Options, Times, kafka, peer};
use crate::payload::{self, Arrivals};
use crate::report::TopicCount;
use crate::stats::histogram;

/// What arrived on the uplink side.
#[derive(Debug)]
pub(super) struct Uplink {
    pub(super) arrivals: Arrivals,
    /// Arrivals of messages sent in the measured window.
    pub(super) window: Histogram<u64>,
    /// The same, split at the record's Kafka timestamp (gateway mode).
    pub(super) bridge: Histogram<u64>,
    pub(super) kafka: Histogram<u64>,
    /// Arrivals since the last tick.
    tick: Histogram<u64>,
    tick_received: u64,
    /// Records sent before this (an earlier run into the same topic) are
    /// not this run's: the consumer may start before the topic's true end
    /// (tansu reports a high watermark inside the last batch).
    run_from_us: u64,
    measure_from_us: u64,
    measure_until_us: u64,
}

/// What arrived in one second: distinct messages and their latency.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Second {
    pub(super) received: u64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
}

impl Uplink {
    pub(super) fn new(times: &Times) -> Self {
        Self {
            arrivals: Arrivals::default(),
            window: histogram(),
            bridge: histogram(),
            kafka: histogram(),
            tick: histogram(),
            tick_received: 0,
            run_from_us: times.started_us,
            measure_from_us: times.measure_from_us,
            measure_until_us: times.end_us,
        }
    }

    /// A message arrived; `created_us`: its Kafka record's timestamp.
    pub(super) fn arrive(&mut self, payload: &[u8], created_us: Option<u64>) {
        let now = payload::now_us();
        let Some((car, seq, sent)) = payload::decode(payload) else {
            return;
        };
        if sent < self.run_from_us || !self.arrivals.record(car, seq) {
            return;
        }
        let took = now.saturating_sub(sent).max(1);
        self.tick_received += 1;
        let _ = self.tick.record(took);
        if (self.measure_from_us..self.measure_until_us).contains(&sent) {
            let _ = self.window.record(took);
            if let Some(created) = created_us {
                let _ = self.bridge.record(created.saturating_sub(sent).max(1));
                let _ = self.kafka.record(now.saturating_sub(created).max(1));
            }
        }
    }

    /// What arrived since the last call.
    pub(super) fn take_second(&mut self) -> Second {
        let second = Second {
            received: std::mem::take(&mut self.tick_received),
            p50_ms: ms(self.tick.value_at_quantile(0.5)),
            p99_ms: ms(self.tick.value_at_quantile(0.99)),
        };
        self.tick.reset();
        second
    }
}

/// The threads receiving the uplink, until [`Receivers::stop`].
pub(super) struct Receivers {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Gateway mode: where the live read started, for `--recount`.
    read_from: Option<kafka::ReadFrom>,
}

impl Receivers {
    /// Peer mode: one MQTT subscriber per shard, each subscribed when
    /// this returns. Gateway mode: a consumer of the uplink topic from
    /// its current end.
    pub(super) fn start(options: &Options, uplink: &Arc<Mutex<Uplink>>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Self {
            threads: Vec::new(),
            stop: stop.clone(),
            read_from: None,
        };
        if options.peer {
            receivers.threads = peer::subscribe(options, uplink, &stop)?;
        } else if let Some(bootstrap) = &options.kafka_bootstrap {
            let (thread, read_from) =
                kafka::receive(bootstrap, &options.kafka_topic, uplink, &stop)?;
            receivers.threads.push(thread);
            receivers.read_from = Some(read_from);
        }
        Ok(receivers)
    }

    /// Stops receiving; with `recount`, reads the uplink topic again from
    /// where the live read started (this run's records: sent from
    /// `run_from_us`).
    pub(super) fn stop(self, recount: bool, run_from_us: u64) -> Option<TopicCount> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        match (recount, self.read_from) {
            (true, Some(read_from)) => match read_from.recount(run_from_us) {
                Ok(count) => Some(count),
                Err(error) => {
                    eprintln!("recount: {error:#}");
                    None
                }
            },
            _ => None,
        }
    }
}

/// Lets what is still on its way arrive: until all `sent` did, or nothing
/// more came for 3 s (bounded at 15 s).
pub(super) fn drain(uplink: &Mutex<Uplink>, sent: u64) {
    let drain_until = Instant::now() + Duration::from_secs(15);
    let mut last = (0u64, Instant::now());
    loop {
        let unique = uplink.lock().map(|u| u.arrivals.unique).unwrap_or(0);
        if unique >= sent || Instant::now() > drain_until {
            break;
        }
        if unique != last.0 {
            last = (unique, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
