//! Per-shard counters and their Prometheus rendering.
//!
//! Each shard writes only its own [`ShardMetrics`] (single-writer relaxed
//! atomics: no contention between cores); the admin endpoint reads all of
//! them and sums. Labels come from bounded sets only: close reasons and
//! failure reasons, never client ids, topics or addresses.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ops::exposition::{Counters, Exposition};
use ops::latency::Latency;

use crate::proxy::ProxyResult;
use crate::session::CloseKind;
use crate::tls::Handshake;

ops::label_set! {
    /// Overload limits (`[limits]`).
    pub enum Limit: "limit" {
        ConnectionsPerShard = "connections_per_shard",
        AcceptRate = "accept_rate",
        ClientIdLength = "client_id_length",
        FiltersPerSession = "filters_per_session",
        FilterLength = "filter_length",
        PartialBytes = "partial_bytes",
        CarMessages = "car_messages",
        CarBytes = "car_bytes",
    }
}

ops::label_set! {
    /// Why an accepted PUBLISH did not reach Kafka.
    pub enum Failure: "reason" {
        KafkaError = "kafka_error",
        TimedOut = "timed_out",
        TooLarge = "too_large",
        Shutdown = "shutdown",
    }
}

ops::label_set! {
    /// Why a routed downlink message was not delivered to a car.
    pub enum Dropped: "reason" {
        NotHeld = "not_held",
        NoFilter = "no_filter",
        SlowCar = "slow_car",
        /// Queued for a connection that closed before it was written.
        Closed = "closed",
        Invalid = "invalid",
        /// Read after the expiry the request or the router gave it.
        Expired = "expired",
    }
}

#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicI64,
    /// Open connections parked without a task (quiet plain-TCP cars).
    pub connections_parked: AtomicI64,
    pub closed: Counters<CloseKind>,
    /// PUBLISH packets accepted from cars and handed to the producer.
    pub publish_received: AtomicU64,
    pub publish_acked: AtomicU64,
    pub publish_failed: Counters<Failure>,
    pub in_flight_bytes: AtomicI64,
    /// Bytes held in incomplete packets (a packet begun, not yet whole).
    pub partial_bytes: AtomicI64,
    /// PUBLISH handed to the producer → acknowledged by Kafka.
    pub ack_latency: Latency,
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
    pub downlink_dropped: Counters<Dropped>,
    /// A routed message's age (from its Kafka timestamp, set when the
    /// router produced it) when the shard reads it: the broker's hop.
    pub downlink_age_at_read: Latency,
    /// From the shard reading a message to its bytes written to the car's
    /// socket: the gateway's own share.
    pub downlink_write: Latency,
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
    /// Times a limit was hit: a socket closed, an accept delayed, a
    /// CONNECT or a filter refused.
    pub limited: Counters<Limit>,
    /// SUBSCRIBE filters outside `[authorization] subscribe` (0x80).
    pub subscribe_denied: AtomicU64,
    /// PROXY headers by outcome.
    pub proxy_headers: Counters<ProxyResult>,
    /// Turns of the shard's poller: a shard whose count stops is stuck
    /// (the systemd watchdog is not fed then).
    pub heartbeat: AtomicU64,
    /// TLS handshakes by outcome.
    pub tls_handshakes: Counters<Handshake>,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ShardMetrics {
    pub fn count_receipt(&self, outcome: contract::Outcome) {
        if let Some(counter) = self.receipts.get(outcome.index()) {
            bump(counter);
        }
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
        failed: t.failed + s.publish_failed.total(),
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

/// Prometheus text exposition of all shards, summed, with each shard's
/// heartbeat.
pub fn render(shards: &[std::sync::Arc<ShardMetrics>]) -> String {
    page(shards).finish()
}

/// The page [`render`] writes, for more to be appended (the TLS reloads
/// and certificate expiries: `tls::Reloader::render`).
pub fn page(shards: &[std::sync::Arc<ShardMetrics>]) -> Exposition {
    let sum = |f: &dyn Fn(&ShardMetrics) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let gauge = |f: &dyn Fn(&ShardMetrics) -> &AtomicI64| {
        shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum::<i64>()
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut page = Exposition::new();
    page.counter(
        "carbridge_gateway_connections_accepted_total",
        "TCP connections accepted.",
        sum(&|s| load(&s.connections_accepted)),
    );
    page.gauge(
        "carbridge_gateway_connections_open",
        "TCP connections open now.",
        gauge(&|s| &s.connections_open),
    );
    page.gauge(
        "carbridge_gateway_connections_parked",
        "Open connections parked without a task: quiet cars, plain or TLS between records, resumed by their next byte, deadline or downlink message.",
        gauge(&|s| &s.connections_parked),
    );
    page.counters(
        "carbridge_gateway_connections_closed_total",
        "Connections closed, by reason.",
        |reason| sum(&|s| s.closed.get(reason)),
    );
    page.counter(
        "carbridge_gateway_publish_received_total",
        "PUBLISH packets accepted from cars and handed to Kafka.",
        sum(&|s| load(&s.publish_received)),
    );
    page.counter(
        "carbridge_gateway_publish_acked_total",
        "PUBLISH packets acknowledged by Kafka.",
        sum(&|s| load(&s.publish_acked)),
    );
    page.counters(
        "carbridge_gateway_publish_failed_total",
        "PUBLISH packets that did not reach Kafka, by reason.",
        |reason| sum(&|s| s.publish_failed.get(reason)),
    );
    page.gauge(
        "carbridge_gateway_kafka_in_flight_bytes",
        "Uplink bytes handed to Kafka and not yet acknowledged.",
        gauge(&|s| &s.in_flight_bytes),
    );
    page.gauge(
        "carbridge_gateway_partial_bytes",
        "Bytes held in incomplete packets (begun, not yet whole), all shards; each shard's \
         budget is limits.max_partial_bytes_per_shard.",
        gauge(&|s| &s.partial_bytes),
    );
    page.counter(
        "carbridge_gateway_read_pauses_total",
        "Times a shard stopped reading its sockets because Kafka was behind.",
        sum(&|s| load(&s.read_pauses)),
    );
    page.counter(
        "carbridge_gateway_downlink_received_total",
        "Routed downlink messages read from the shards' slots.",
        sum(&|s| load(&s.downlink_received)),
    );
    page.counter(
        "carbridge_gateway_downlink_delivered_total",
        "Downlink messages written to a car's connection.",
        sum(&|s| load(&s.downlink_delivered)),
    );
    page.counters(
        "carbridge_gateway_downlink_dropped_total",
        "Downlink messages not delivered, by reason.",
        |reason| sum(&|s| s.downlink_dropped.get(reason)),
    );
    page.samples(
        "carbridge_gateway_receipts_total",
        "counter",
        "Receipts written for routed messages that asked for one, by outcome.",
        "outcome",
        contract::Outcome::ALL.iter().map(|outcome| {
            let n = sum(&|s| s.receipts.get(outcome.index()).map_or(0, load));
            (outcome.label(), n)
        }),
    );
    page.counter(
        "carbridge_gateway_receipts_failed_total",
        "Receipts Kafka did not take.",
        sum(&|s| load(&s.receipts_failed)),
    );
    page.counter(
        "carbridge_gateway_takeover_notices_total",
        "Connections closed because the router reported a newer session elsewhere.",
        sum(&|s| load(&s.takeover_notices)),
    );
    page.counter(
        "carbridge_gateway_gone_reports_total",
        "Sessions reported gone: routed messages for sessions no shard here holds.",
        sum(&|s| load(&s.gone_reports)),
    );
    page.counter(
        "carbridge_gateway_registry_sent_total",
        "Session-registry records handed to Kafka.",
        sum(&|s| load(&s.registry_sent)),
    );
    page.counter(
        "carbridge_gateway_registry_acked_total",
        "Session-registry records acknowledged by Kafka.",
        sum(&|s| load(&s.registry_acked)),
    );
    page.counter(
        "carbridge_gateway_registry_failed_total",
        "Session-registry records Kafka did not take.",
        sum(&|s| load(&s.registry_failed)),
    );
    page.counters(
        "carbridge_gateway_limited_total",
        "Times an overload limit was hit: connections_per_shard (socket closed on accept), \
         accept_rate (accepting paused), client_id_length (CONNACK 0x02), \
         filters_per_session and filter_length (0x80 in the SUBACK).",
        |limit| sum(&|s| s.limited.get(limit)),
    );
    page.counter(
        "carbridge_gateway_subscribe_denied_total",
        "SUBSCRIBE filters outside [authorization] subscribe (0x80 in the SUBACK).",
        sum(&|s| load(&s.subscribe_denied)),
    );
    page.counters(
        "carbridge_gateway_proxy_headers_total",
        "PROXY protocol headers on listeners that expect them, by result: proxied and \
         local went on; the others closed the connection.",
        |result| sum(&|s| s.proxy_headers.get(result)),
    );
    page.counters(
        "carbridge_gateway_tls_handshakes_total",
        "TLS handshakes on TLS listeners, by result: full and resumed succeeded; \
         the others closed the connection before MQTT.",
        |result| sum(&|s| s.tls_handshakes.get(result)),
    );
    page.samples(
        "carbridge_gateway_shard_heartbeats_total",
        "counter",
        "Turns of each shard's poller: a shard whose count stops moving is stuck \
         (its connections are not served; the systemd watchdog is no longer fed).",
        "shard",
        shards
            .iter()
            .enumerate()
            .map(|(shard, s)| (shard, load(&s.heartbeat))),
    );
    page.histogram(
        "carbridge_gateway_kafka_ack_seconds",
        "Time from a PUBLISH handed to the producer to Kafka's acknowledgement.",
        shards.iter().map(|s| &s.ack_latency),
    );
    page.counter(
        "carbridge_gateway_read_paused_seconds_total",
        "Time the shards' reading was paused because Kafka was behind: librdkafka's queue \
         or the in-flight bytes full (summed over shards; a pause counts when it ends).",
        sum(&|s| load(&s.read_paused_us)) as f64 / 1e6,
    );
    page.histogram(
        "carbridge_gateway_downlink_age_at_read_seconds",
        "Time from a routed message's Kafka timestamp (the router's produce) to a shard reading it.",
        shards.iter().map(|s| &s.downlink_age_at_read),
    );
    page.histogram(
        "carbridge_gateway_downlink_write_seconds",
        "Time from a shard reading a routed message to its bytes written to the car's socket \
         (each message counts the oldest queued with it: an upper bound).",
        shards.iter().map(|s| &s.downlink_write),
    );
    page
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
        shards[0].ack_latency.record(800); // 0.8 ms: le 0.001
        shards[0].ack_latency.record(1_000); // exactly 1 ms: le 0.001
        shards[1].ack_latency.record(15_000); // le 0.02
        shards[1].ack_latency.record(60_000_000); // a minute: +Inf only
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
