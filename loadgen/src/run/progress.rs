//! Once a second: the workers' ticks merged into the run's totals, one
//! timeline entry for the report, and a progress line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::downlink;
use super::fleet::Fleet;
use super::summary::ms;
use super::uplink::Uplink;
use super::{Options, Times};
use crate::payload;
use crate::report::{ConnectFailures, Tick};
use crate::stats::histogram;
use crate::worker::WorkerTick;

/// The whole run's figures from the workers' ticks.
#[derive(Debug)]
pub(super) struct Totals {
    pub(super) connects: u64,
    pub(super) connect_failures: u64,
    pub(super) failed_by: ConnectFailures,
    /// The first and the latest CONNACK of any worker, µs since the epoch.
    pub(super) first_connack_us: Option<u64>,
    pub(super) last_connack_us: u64,
    pub(super) connect_latency: Histogram<u64>,
    pub(super) uplink_sent: u64,
    /// Sent by the ticks of the measured window.
    pub(super) uplink_sent_window: u64,
    pub(super) downlink_received: u64,
    pub(super) downlink_duplicates: u64,
    pub(super) downlink_out_of_order: u64,
    /// Downlink latency of the ticks of the measured window.
    pub(super) downlink_latency: Histogram<u64>,
    /// Car connections closed by the server (or failed) while publishing.
    pub(super) dropped: u64,
    /// Messages to cars from other services.
    pub(super) other_downlink: u64,
}

impl Totals {
    pub(super) fn new() -> Self {
        Self {
            connects: 0,
            connect_failures: 0,
            failed_by: ConnectFailures::default(),
            first_connack_us: None,
            last_connack_us: 0,
            connect_latency: histogram(),
            uplink_sent: 0,
            uplink_sent_window: 0,
            downlink_received: 0,
            downlink_duplicates: 0,
            downlink_out_of_order: 0,
            downlink_latency: histogram(),
            dropped: 0,
            other_downlink: 0,
        }
    }

    /// Adds one worker's tick; `in_window`: it reports a second of the
    /// measured window.
    fn add(&mut self, tick: &WorkerTick, in_window: bool) {
        self.connects += tick.connects;
        self.connect_failures += tick.connect_failures;
        self.failed_by.add(&tick.failed_by);
        if tick.first_connack_us > 0 {
            let first = self.first_connack_us.get_or_insert(tick.first_connack_us);
            *first = (*first).min(tick.first_connack_us);
            self.last_connack_us = self.last_connack_us.max(tick.last_connack_us);
        }
        tick.connect_latency.add_to(&mut self.connect_latency);
        self.uplink_sent += tick.uplink_sent;
        if in_window {
            self.uplink_sent_window += tick.uplink_sent;
            tick.downlink_latency.add_to(&mut self.downlink_latency);
        }
        self.downlink_received += tick.downlink_received;
        self.downlink_duplicates += tick.downlink_duplicates;
        self.downlink_out_of_order += tick.downlink_out_of_order;
        self.dropped += tick.dropped_connections;
        self.other_downlink += tick.other_downlink;
    }

    /// Seconds from the first CONNACK to the last (at least 1 ms).
    pub(super) fn connect_span_secs(&self) -> f64 {
        self.first_connack_us
            .map_or(0.0, |first| {
                (self.last_connack_us.saturating_sub(first)) as f64 / 1e6
            })
            .max(1e-3)
    }
}

/// The workers' figures of one second, all workers together.
#[derive(Debug)]
struct Second {
    uplink_sent: u64,
    downlink_received: u64,
    downlink_latency: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            uplink_sent: 0,
            downlink_received: 0,
            downlink_latency: histogram(),
        }
    }

    fn add(&mut self, tick: &WorkerTick) {
        self.uplink_sent += tick.uplink_sent;
        tick.downlink_latency.add_to(&mut self.downlink_latency);
        self.downlink_received += tick.downlink_received;
    }
}

/// What [`follow`] saw: the run's totals and one entry per second.
#[derive(Debug)]
pub(super) struct Progress {
    pub(super) totals: Totals,
    pub(super) timeline: Vec<Tick>,
}

/// Follows the run second by second until every worker is done: merges
/// the workers' ticks, records the timeline, prints progress, and tells
/// the workers to stop on `stop`.
pub(super) fn follow(
    options: &Options,
    times: &Times,
    fleet: &mut Fleet,
    uplink: &Mutex<Uplink>,
    downlink: &downlink::Sender,
    stop: &AtomicBool,
) -> Progress {
    let mut totals = Totals::new();
    let mut timeline = Vec::new();
    let mut downlink_sent_before = 0u64;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    loop {
        if stop.load(Ordering::Relaxed) {
            fleet.stop();
        }
        let mut second = Second::new();
        while let Some((index, tick)) = fleet.next_tick(next_tick) {
            // A tick reports the second before it: the window's ticks arrive
            // from just after its start to just after its end.
            let in_window = (times.measure_from_us + 500_000..times.end_us + 500_000)
                .contains(&payload::now_us());
            totals.add(&tick, in_window);
            second.add(&tick);
            fleet.record(index, tick);
        }
        next_tick += Duration::from_secs(1);
        fleet.notice_exits();
        let now = payload::now_us();
        let arrived = uplink
            .lock()
            .map(|mut u| u.take_second())
            .unwrap_or_default();
        let downlink_sent = downlink.sent();
        let tick = Tick {
            t: now.saturating_sub(times.started_us) as f64 / 1e6,
            warmup: now < times.measure_from_us,
            connected: fleet.connected(),
            uplink_sent: second.uplink_sent,
            uplink_received: arrived.received,
            uplink_p50_ms: arrived.p50_ms,
            uplink_p99_ms: arrived.p99_ms,
            downlink_sent: downlink_sent - downlink_sent_before,
            downlink_received: second.downlink_received,
            downlink_p99_ms: ms(second.downlink_latency.value_at_quantile(0.99)),
        };
        downlink_sent_before = downlink_sent;
        if !options.quiet {
            eprintln!(
                "{}",
                line(
                    &tick,
                    phase(times, now),
                    options.cars,
                    totals.connect_failures
                )
            );
        }
        timeline.push(tick);
        if fleet.all_done() {
            break;
        }
    }
    Progress { totals, timeline }
}

fn phase(times: &Times, now_us: u64) -> &'static str {
    if now_us < times.measure_from_us {
        "warm-up"
    } else if now_us < times.end_us {
        "measuring"
    } else {
        "draining"
    }
}

/// The progress line of one second.
fn line(tick: &Tick, phase: &str, cars: u64, connect_failures: u64) -> String {
    format!(
        "[{:6.1}s {phase:9}] cars {}/{cars} (failed {connect_failures})  uplink {}/s sent {}/s received p99 {:.1} ms  downlink {}/s p99 {:.1} ms",
        tick.t,
        tick.connected,
        tick.uplink_sent,
        tick.uplink_received,
        tick.uplink_p99_ms,
        tick.downlink_received,
        tick.downlink_p99_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Buckets;

    fn tick(sent: u64, connack: (u64, u64), latency_us: u64) -> WorkerTick {
        WorkerTick {
            connected_now: 10,
            connects: 3,
            connect_failures: 1,
            failed_by: ConnectFailures {
                refused: 1,
                ..ConnectFailures::default()
            },
            connect_latency: Buckets(vec![(2_000, 3)]),
            first_connack_us: connack.0,
            last_connack_us: connack.1,
            uplink_sent: sent,
            downlink_received: 4,
            downlink_duplicates: 1,
            downlink_out_of_order: 2,
            downlink_latency: Buckets(vec![(latency_us, 4)]),
            dropped_connections: 1,
            other_downlink: 5,
            done: false,
        }
    }

    #[test]
    fn totals_add_every_tick_and_the_window_only_its_own() {
        let mut totals = Totals::new();
        totals.add(&tick(100, (0, 0), 1_000), false);
        totals.add(&tick(50, (3_000_000, 3_500_000), 7_000), true);
        totals.add(&tick(20, (2_000_000, 4_000_000), 9_000), true);
        assert_eq!((totals.connects, totals.connect_failures), (9, 3));
        assert_eq!(totals.failed_by.refused, 3, "the causes add up too");
        assert_eq!(totals.connect_latency.len(), 9);
        assert_eq!((totals.uplink_sent, totals.uplink_sent_window), (170, 70));
        assert_eq!(totals.downlink_received, 12);
        assert_eq!(totals.downlink_duplicates, 3);
        assert_eq!(totals.downlink_out_of_order, 6);
        // Only the window's ticks count for the downlink latency.
        assert_eq!(totals.downlink_latency.len(), 8);
        assert!(totals.downlink_latency.min() >= 6_990);
        assert_eq!((totals.dropped, totals.other_downlink), (3, 15));
        // A worker without a CONNACK yet (0) does not count.
        assert_eq!(totals.first_connack_us, Some(2_000_000));
        assert_eq!(totals.last_connack_us, 4_000_000);
        assert!((totals.connect_span_secs() - 2.0).abs() < 1e-9);
        assert!((Totals::new().connect_span_secs() - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn a_second_sums_its_ticks() {
        let mut second = Second::new();
        second.add(&tick(100, (0, 0), 1_000));
        second.add(&tick(50, (0, 0), 3_000));
        assert_eq!((second.uplink_sent, second.downlink_received), (150, 8));
        assert_eq!(second.downlink_latency.len(), 8);
    }

    #[test]
    fn the_progress_line_shows_one_second() {
        let tick = Tick {
            t: 7.04,
            warmup: false,
            connected: 990,
            uplink_sent: 100,
            uplink_received: 98,
            uplink_p50_ms: 1.0,
            uplink_p99_ms: 12.345,
            downlink_sent: 10,
            downlink_received: 9,
            downlink_p99_ms: 3.0,
        };
        assert_eq!(
            line(&tick, "measuring", 1000, 2),
            "[   7.0s measuring] cars 990/1000 (failed 2)  uplink 100/s sent 98/s received p99 12.3 ms  downlink 9/s p99 3.0 ms"
        );
        let times = Times {
            started_us: 0,
            start_us: 10,
            measure_from_us: 20,
            end_us: 30,
        };
        assert_eq!(phase(&times, 19), "warm-up");
        assert_eq!(phase(&times, 20), "measuring");
        assert_eq!(phase(&times, 30), "draining");
    }
}
