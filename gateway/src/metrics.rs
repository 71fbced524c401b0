//! Per-shard counters and their Prometheus rendering.
//!
//! Each shard writes only its own [`ShardMetrics`] (single-writer relaxed
//! atomics: no contention between cores); the admin endpoint reads all of
//! them and sums. Labels come from bounded sets only: close reasons and
//! failure reasons, never client ids, topics or addresses.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Close reasons, in label order (see `session::CloseReason::label`).
pub const CLOSE_REASONS: [&str; 11] = [
    "disconnect",
    "peer_closed",
    "connect_timeout",
    "keep_alive_timeout",
    "malformed",
    "unsupported",
    "refused",
    "unmapped_topic",
    "taken_over",
    "shutdown",
    "io_error",
];

/// Why an accepted PUBLISH did not reach Kafka.
pub const FAILURE_REASONS: [&str; 4] = ["kafka_error", "timed_out", "too_large", "shutdown"];

/// Why a routed downlink message was not delivered to a car.
/// `closed`: queued for a connection that closed before it was written.
pub const DROP_REASONS: [&str; 5] = ["not_held", "no_filter", "slow_car", "closed", "invalid"];

#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicI64,
    pub closed: [AtomicU64; CLOSE_REASONS.len()],
    /// PUBLISH packets accepted from cars and handed to the producer.
    pub publish_received: AtomicU64,
    pub publish_acked: AtomicU64,
    pub publish_failed: [AtomicU64; FAILURE_REASONS.len()],
    pub in_flight_bytes: AtomicI64,
    /// Times the shard stopped reading because Kafka could not keep up.
    pub read_pauses: AtomicU64,
    /// Routed downlink messages read from this shard's slot.
    pub downlink_received: AtomicU64,
    /// ... written to the car's connection as a PUBLISH.
    pub downlink_delivered: AtomicU64,
    /// ... not delivered, by reason.
    pub downlink_dropped: [AtomicU64; DROP_REASONS.len()],
    /// Takeover notices that closed a connection here.
    pub takeover_notices: AtomicU64,
    /// "gone" reports written for sessions this shard does not hold.
    pub gone_reports: AtomicU64,
    /// Session-registry records handed to Kafka, acknowledged, failed.
    pub registry_sent: AtomicU64,
    pub registry_acked: AtomicU64,
    pub registry_failed: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ShardMetrics {
    pub fn close(&self, label: &str) {
        if let Some(counter) = CLOSE_REASONS
            .iter()
            .position(|r| *r == label)
            .and_then(|i| self.closed.get(i))
        {
            bump(counter);
        }
    }

    pub fn fail(&self, reason: &str) {
        if let Some(counter) = FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.publish_failed.get(i))
        {
            bump(counter);
        }
    }

    pub fn drop_downlink(&self, reason: &str) {
        if let Some(counter) = DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.downlink_dropped.get(i))
        {
            bump(counter);
        }
    }

    pub fn downlink_dropped_total(&self) -> u64 {
        self.downlink_dropped
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn failed_total(&self) -> u64 {
        self.publish_failed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The uplink accounting of all shards: `received = acked + failed +
/// in flight` at any moment, and in flight is 0 after a clean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub received: u64,
    pub acked: u64,
    pub failed: u64,
    pub in_flight_bytes: i64,
}

pub fn totals(shards: &[std::sync::Arc<ShardMetrics>]) -> Totals {
    shards.iter().fold(Totals::default(), |t, s| Totals {
        received: t.received + s.publish_received.load(Ordering::Relaxed),
        acked: t.acked + s.publish_acked.load(Ordering::Relaxed),
        failed: t.failed + s.failed_total(),
        in_flight_bytes: t.in_flight_bytes + s.in_flight_bytes.load(Ordering::Relaxed),
    })
}

/// Prometheus text exposition of all shards, summed.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>]) -> String {
    let sum = |f: &dyn Fn(&ShardMetrics) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let gauge = |f: &dyn Fn(&ShardMetrics) -> i64| shards.iter().map(|s| f(s)).sum::<i64>();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, i128)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "carbridge_gateway_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        vec![(
            String::new(),
            sum(&|s| load(&s.connections_accepted)).into(),
        )],
    );
    metric(
        "carbridge_gateway_connections_open",
        "gauge",
        "TCP connections open now.",
        vec![(
            String::new(),
            gauge(&|s| s.connections_open.load(Ordering::Relaxed)).into(),
        )],
    );
    metric(
        "carbridge_gateway_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
        CLOSE_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = sum(&|s| s.closed.get(i).map_or(0, load));
                (format!("{{reason=\"{r}\"}}"), n.into())
            })
            .collect(),
    );
    metric(
        "carbridge_gateway_publish_received_total",
        "counter",
        "PUBLISH packets accepted from cars and handed to Kafka.",
        vec![(String::new(), sum(&|s| load(&s.publish_received)).into())],
    );
    metric(
        "carbridge_gateway_publish_acked_total",
        "counter",
        "PUBLISH packets acknowledged by Kafka.",
        vec![(String::new(), sum(&|s| load(&s.publish_acked)).into())],
    );
    metric(
        "carbridge_gateway_publish_failed_total",
        "counter",
        "PUBLISH packets that did not reach Kafka, by reason.",
        FAILURE_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = sum(&|s| s.publish_failed.get(i).map_or(0, load));
                (format!("{{reason=\"{r}\"}}"), n.into())
            })
            .collect(),
    );
    metric(
        "carbridge_gateway_kafka_in_flight_bytes",
        "gauge",
        "Uplink bytes handed to Kafka and not yet acknowledged.",
        vec![(
            String::new(),
            gauge(&|s| s.in_flight_bytes.load(Ordering::Relaxed)).into(),
        )],
    );
    metric(
        "carbridge_gateway_read_pauses_total",
        "counter",
        "Times a shard stopped reading its sockets because Kafka was behind.",
        vec![(String::new(), sum(&|s| load(&s.read_pauses)).into())],
    );
    metric(
        "carbridge_gateway_downlink_received_total",
        "counter",
        "Routed downlink messages read from the shards' slots.",
        vec![(String::new(), sum(&|s| load(&s.downlink_received)).into())],
    );
    metric(
        "carbridge_gateway_downlink_delivered_total",
        "counter",
        "Downlink messages written to a car's connection.",
        vec![(String::new(), sum(&|s| load(&s.downlink_delivered)).into())],
    );
    metric(
        "carbridge_gateway_downlink_dropped_total",
        "counter",
        "Downlink messages not delivered, by reason.",
        DROP_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = sum(&|s| s.downlink_dropped.get(i).map_or(0, load));
                (format!("{{reason=\"{r}\"}}"), n.into())
            })
            .collect(),
    );
    metric(
        "carbridge_gateway_takeover_notices_total",
        "counter",
        "Connections closed because the router reported a newer session elsewhere.",
        vec![(String::new(), sum(&|s| load(&s.takeover_notices)).into())],
    );
    metric(
        "carbridge_gateway_gone_reports_total",
        "counter",
        "Sessions reported gone: routed messages for sessions no shard here holds.",
        vec![(String::new(), sum(&|s| load(&s.gone_reports)).into())],
    );
    for (name, help, counter) in [
        (
            "carbridge_gateway_registry_sent_total",
            "Session-registry records handed to Kafka.",
            (|s: &ShardMetrics| s.registry_sent.load(Ordering::Relaxed))
                as fn(&ShardMetrics) -> u64,
        ),
        (
            "carbridge_gateway_registry_acked_total",
            "Session-registry records acknowledged by Kafka.",
            |s| s.registry_acked.load(Ordering::Relaxed),
        ),
        (
            "carbridge_gateway_registry_failed_total",
            "Session-registry records Kafka did not take.",
            |s| s.registry_failed.load(Ordering::Relaxed),
        ),
    ] {
        metric(
            name,
            "counter",
            help,
            vec![(String::new(), sum(&counter).into())],
        );
    }
    out
}
