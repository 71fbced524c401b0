//! Latency histograms for `/metrics`: fixed buckets of atomics, recorded
//! from any thread without locks, written as Prometheus histograms by
//! [`crate::exposition::Exposition::histogram`]. The buckets are fine
//! around the downlink's 20 ms goal and the uplink's 50 ms.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Upper bounds of the buckets, in microseconds; one more counts the rest.
pub const BUCKETS_US: [u64; 20] = [
    250, 500, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 100_000,
    200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000,
];

#[derive(Debug, Default)]
pub struct Latency {
    /// Not cumulative; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Latency {
    /// Counts `n` events that each took `us` microseconds.
    pub fn record_n(&self, us: u64, n: u64) {
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        if let Some(counter) = self.buckets.get(bucket) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn record(&self, us: u64) {
        self.record_n(us, 1);
    }

    /// Counts the time from a Kafka record's timestamp (milliseconds since
    /// the epoch, as every Kafka client sets it) to now. Records stamped in
    /// the future (clock skew between hosts) count as 0.
    pub fn record_since_kafka_timestamp(&self, timestamp_ms: i64) {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let then_us = u64::try_from(timestamp_ms)
            .unwrap_or(0)
            .saturating_mul(1000);
        self.record(now_us.saturating_sub(then_us));
    }
}

/// Writes the sum of `parts` as the samples of histogram `name` (in
/// seconds): cumulative buckets, then the sum and the count.
pub(crate) fn write_buckets<'a>(
    out: &mut String,
    name: &str,
    parts: impl Iterator<Item = &'a Latency> + Clone,
) {
    let load = |i: usize| -> u64 {
        parts
            .clone()
            .map(|p| p.buckets.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
            .sum()
    };
    let mut cumulative = 0u64;
    for (i, bound) in BUCKETS_US.iter().enumerate() {
        cumulative += load(i);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += load(BUCKETS_US.len());
    let sum_us: u64 = parts.map(|p| p.sum_us.load(Ordering::Relaxed)).sum();
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {}\n{name}_count {cumulative}",
        sum_us as f64 / 1e6
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn renders_cumulative_buckets_in_seconds() {
        let latency = Latency::default();
        latency.record(100);
        latency.record_n(12_000, 2);
        latency.record(60_000_000);
        let mut out = String::new();
        write_buckets(&mut out, "x_seconds", [&latency].into_iter());
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00025\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.015\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"30\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 60.0241\n"), "{out}");
    }

    #[test]
    fn a_timestamp_in_the_future_counts_as_zero() {
        let latency = Latency::default();
        latency.record_since_kafka_timestamp(i64::MAX / 2000);
        let mut out = String::new();
        write_buckets(&mut out, "y", [&latency].into_iter());
        assert!(out.contains("y_bucket{le=\"0.00025\"} 1\n"), "{out}");
    }
}
