//! Per-shard counters and their Prometheus rendering.
//!
//! Each shard writes only its own [`ShardMetrics`] (single-writer relaxed
//! atomics: no contention between cores); the admin endpoint reads all of
//! them and sums. Labels come from bounded sets only: close reasons and
//! failure reasons, never client ids, topics or addresses.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Close reasons, in label order (see `session::CloseReason::label`).
pub const CLOSE_REASONS: [&str; 14] = [
    "disconnect",
    "peer_closed",
    "connect_timeout",
    "keep_alive_timeout",
    "malformed",
    "unsupported",
    "refused",
    "not_authorized",
    "unmapped_topic",
    "forbidden_topic",
    "taken_over",
    "shutdown",
    "drained",
    "io_error",
];

/// Overload limits (`[limits]`), in label order.
pub const LIMITS: [&str; 5] = [
    "connections_per_shard",
    "accept_rate",
    "client_id_length",
    "filters_per_session",
    "filter_length",
];

/// Why an accepted PUBLISH did not reach Kafka.
pub const FAILURE_REASONS: [&str; 4] = ["kafka_error", "timed_out", "too_large", "shutdown"];

/// Why a routed downlink message was not delivered to a car.
/// `closed`: queued for a connection that closed before it was written.
/// `expired`: read after the expiry the request or the router gave it.
pub const DROP_REASONS: [&str; 6] = [
    "not_held",
    "no_filter",
    "slow_car",
    "closed",
    "invalid",
    "expired",
];

/// Upper bounds (ms) of the buckets of the Kafka acknowledgement latency
/// histogram; one more bucket counts the rest (+Inf).
pub const ACK_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
];

#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicI64,
    /// Open connections parked without a task (quiet plain-TCP cars).
    pub connections_parked: AtomicI64,
    pub closed: [AtomicU64; CLOSE_REASONS.len()],
    /// PUBLISH packets accepted from cars and handed to the producer.
    pub publish_received: AtomicU64,
    pub publish_acked: AtomicU64,
    pub publish_failed: [AtomicU64; FAILURE_REASONS.len()],
    pub in_flight_bytes: AtomicI64,
    /// PUBLISH handed to the producer → acknowledged by Kafka, by bucket
    /// of [`ACK_BUCKETS_MS`] (not cumulative; the last one is +Inf).
    pub ack_latency: [AtomicU64; ACK_BUCKETS_MS.len() + 1],
    pub ack_latency_sum_us: AtomicU64,
    /// Times the shard stopped reading because Kafka could not keep up.
    pub read_pauses: AtomicU64,
    /// ... and for how long in all, in microseconds (counted when a pause
    /// ends).
    pub read_paused_us: AtomicU64,
    /// Routed downlink messages read from this shard's slot.
    pub downlink_received: AtomicU64,
    /// ... written to the car's connection as a PUBLISH.
    pub downlink_delivered: AtomicU64,
    /// ... not delivered, by reason.
    pub downlink_dropped: [AtomicU64; DROP_REASONS.len()],
    /// A routed message's age (from its Kafka timestamp, set when the
    /// router produced it) when the shard reads it: the broker's hop.
    pub downlink_age_at_read: ops::latency::Latency,
    /// From the shard reading a message to its bytes written to the car's
    /// socket: the gateway's own share.
    pub downlink_write: ops::latency::Latency,
    /// Receipts handed to the producer, by outcome (`contract::Outcome::ALL`).
    pub receipts: [AtomicU64; contract::Outcome::ALL.len()],
    /// Receipts Kafka did not take.
    pub receipts_failed: AtomicU64,
    /// Takeover notices that closed a connection here.
    pub takeover_notices: AtomicU64,
    /// "gone" reports written for sessions this shard does not hold.
    pub gone_reports: AtomicU64,
    /// Session-registry records handed to Kafka, acknowledged, failed.
    pub registry_sent: AtomicU64,
    pub registry_acked: AtomicU64,
    pub registry_failed: AtomicU64,
    /// Times a limit was hit, by [`LIMITS`]: a socket closed, an accept
    /// delayed, a CONNECT or a filter refused.
    pub limited: [AtomicU64; LIMITS.len()],
    /// SUBSCRIBE filters outside `[authorization] subscribe` (0x80).
    pub subscribe_denied: AtomicU64,
    /// PROXY headers by outcome ([`crate::proxy::PROXY_RESULTS`]).
    pub proxy_headers: [AtomicU64; crate::proxy::PROXY_RESULTS.len()],
    /// Turns of the shard's poller: a shard whose count stops is stuck
    /// (the systemd watchdog is not fed then).
    pub heartbeat: AtomicU64,
    /// TLS handshakes by outcome ([`crate::tls::HANDSHAKE_RESULTS`]).
    pub tls_handshakes: [AtomicU64; crate::tls::HANDSHAKE_RESULTS.len()],
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to the counter of `label` in a labelled family (`labels[i]`
/// is `counters[i]`'s label). Labels are this crate's constants: one that
/// is not in the family is a bug, and counts nowhere rather than panic.
fn add(labels: &[&str], counters: &[AtomicU64], label: &str, n: u64) {
    if let Some(counter) = labels
        .iter()
        .position(|l| *l == label)
        .and_then(|i| counters.get(i))
    {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl ShardMetrics {
    /// Counts one acknowledgement that took `us` microseconds.
    pub fn record_ack(&self, us: u64) {
        let bucket = ACK_BUCKETS_MS
            .iter()
            .position(|&ms| us <= ms * 1000)
            .unwrap_or(ACK_BUCKETS_MS.len());
        if let Some(counter) = self.ack_latency.get(bucket) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.ack_latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn close(&self, label: &str) {
        add(&CLOSE_REASONS, &self.closed, label, 1);
    }

    pub fn fail(&self, reason: &str) {
        add(&FAILURE_REASONS, &self.publish_failed, reason, 1);
    }

    pub fn limit(&self, limit: &str, times: u64) {
        add(&LIMITS, &self.limited, limit, times);
    }

    pub fn proxy_header(&self, result: &str) {
        add(&crate::proxy::PROXY_RESULTS, &self.proxy_headers, result, 1);
    }

    pub fn handshake(&self, result: &str) {
        add(
            &crate::tls::HANDSHAKE_RESULTS,
            &self.tls_handshakes,
            result,
            1,
        );
    }

    pub fn count_receipt(&self, outcome: contract::Outcome) {
        if let Some(counter) = self.receipts.get(outcome.index()) {
            bump(counter);
        }
    }

    pub fn drop_downlink(&self, reason: &str) {
        add(&DROP_REASONS, &self.downlink_dropped, reason, 1);
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

/// Connections open now, all shards.
pub fn open_connections(shards: &[std::sync::Arc<ShardMetrics>]) -> i64 {
    shards
        .iter()
        .map(|s| s.connections_open.load(Ordering::Relaxed))
        .sum()
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
        "carbridge_gateway_connections_parked",
        "gauge",
        "Open connections parked without a task: quiet cars on plain TCP, resumed by their next byte, deadline or downlink message.",
        vec![(
            String::new(),
            gauge(&|s| s.connections_parked.load(Ordering::Relaxed)).into(),
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
        "carbridge_gateway_receipts_total",
        "counter",
        "Receipts written for routed messages that asked for one, by outcome.",
        contract::Outcome::ALL
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let n = sum(&|s| s.receipts.get(i).map_or(0, load));
                (format!("{{outcome=\"{}\"}}", o.label()), n.into())
            })
            .collect(),
    );
    metric(
        "carbridge_gateway_receipts_failed_total",
        "counter",
        "Receipts Kafka did not take.",
        vec![(String::new(), sum(&|s| load(&s.receipts_failed)).into())],
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
    metric(
        "carbridge_gateway_limited_total",
        "counter",
        "Times an overload limit was hit: connections_per_shard (socket closed on accept), \
         accept_rate (accepting paused), client_id_length (CONNACK 0x02), \
         filters_per_session and filter_length (0x80 in the SUBACK).",
        LIMITS
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let n = sum(&|s| s.limited.get(i).map_or(0, load));
                (format!("{{limit=\"{l}\"}}"), n.into())
            })
            .collect(),
    );
    metric(
        "carbridge_gateway_subscribe_denied_total",
        "counter",
        "SUBSCRIBE filters outside [authorization] subscribe (0x80 in the SUBACK).",
        vec![(String::new(), sum(&|s| load(&s.subscribe_denied)).into())],
    );
    metric(
        "carbridge_gateway_proxy_headers_total",
        "counter",
        "PROXY protocol headers on listeners that expect them, by result: proxied and \
         local went on; the others closed the connection.",
        crate::proxy::PROXY_RESULTS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = sum(&|s| s.proxy_headers.get(i).map_or(0, load));
                (format!("{{result=\"{r}\"}}"), n.into())
            })
            .collect(),
    );
    metric(
        "carbridge_gateway_tls_handshakes_total",
        "counter",
        "TLS handshakes on TLS listeners, by result: full and resumed succeeded; \
         the others closed the connection before MQTT.",
        crate::tls::HANDSHAKE_RESULTS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let n = sum(&|s| s.tls_handshakes.get(i).map_or(0, load));
                (format!("{{result=\"{r}\"}}"), n.into())
            })
            .collect(),
    );
    // Prometheus histogram: cumulative buckets, then sum and count.
    let _ = writeln!(
        out,
        "# HELP carbridge_gateway_kafka_ack_seconds Time from a PUBLISH handed to \
         the producer to Kafka's acknowledgement.\n# TYPE carbridge_gateway_kafka_ack_seconds histogram"
    );
    let mut cumulative = 0u64;
    for (i, ms) in ACK_BUCKETS_MS.iter().enumerate() {
        cumulative += sum(&|s| s.ack_latency.get(i).map_or(0, load));
        let _ = writeln!(
            out,
            "carbridge_gateway_kafka_ack_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *ms as f64 / 1000.0
        );
    }
    cumulative += sum(&|s| s.ack_latency.get(ACK_BUCKETS_MS.len()).map_or(0, load));
    let _ = writeln!(
        out,
        "carbridge_gateway_kafka_ack_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
         carbridge_gateway_kafka_ack_seconds_sum {}\n\
         carbridge_gateway_kafka_ack_seconds_count {cumulative}",
        sum(&|s| load(&s.ack_latency_sum_us)) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP carbridge_gateway_read_paused_seconds_total Time the shards' reading was paused \
         because Kafka was behind: librdkafka's queue or the in-flight bytes full (summed \
         over shards; a pause counts when it ends).\n\
         # TYPE carbridge_gateway_read_paused_seconds_total counter\n\
         carbridge_gateway_read_paused_seconds_total {}",
        sum(&|s| load(&s.read_paused_us)) as f64 / 1e6
    );
    ops::latency::render(
        &mut out,
        "carbridge_gateway_downlink_age_at_read_seconds",
        "Time from a routed message's Kafka timestamp (the router's produce) to a shard reading it.",
        shards.iter().map(|s| &s.downlink_age_at_read),
    );
    ops::latency::render(
        &mut out,
        "carbridge_gateway_downlink_write_seconds",
        "Time from a shard reading a routed message to its bytes written to the car's socket \
         (each message counts the oldest queued with it: an upper bound).",
        shards.iter().map(|s| &s.downlink_write),
    );
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn ack_latency_is_a_cumulative_prometheus_histogram() {
        let shards = [
            Arc::new(ShardMetrics::default()),
            Arc::new(ShardMetrics::default()),
        ];
        shards[0].record_ack(800); // 0.8 ms: le 0.001
        shards[0].record_ack(1_000); // exactly 1 ms: le 0.001
        shards[1].record_ack(15_000); // le 0.02
        shards[1].record_ack(60_000_000); // a minute: +Inf only
        let text = render(&shards);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            line("carbridge_gateway_kafka_ack_seconds_bucket{le=\"0.001\"}"),
            "2"
        );
        assert_eq!(
            line("carbridge_gateway_kafka_ack_seconds_bucket{le=\"0.01\"}"),
            "2"
        );
        assert_eq!(
            line("carbridge_gateway_kafka_ack_seconds_bucket{le=\"0.02\"}"),
            "3"
        );
        assert_eq!(
            line("carbridge_gateway_kafka_ack_seconds_bucket{le=\"30\"}"),
            "3"
        );
        assert_eq!(
            line("carbridge_gateway_kafka_ack_seconds_bucket{le=\"+Inf\"}"),
            "4"
        );
        assert_eq!(line("carbridge_gateway_kafka_ack_seconds_count"), "4");
        assert_eq!(line("carbridge_gateway_kafka_ack_seconds_sum"), "60.0168");
        assert!(text.contains("# TYPE carbridge_gateway_kafka_ack_seconds histogram"));
    }
}
