//! The router's counters and their Prometheus rendering.
//!
//! Accounting: every request read from `cs.downlink` ends as exactly one of
//! routed (then acknowledged or failed by Kafka) or dropped with a reason,
//! so `received = sent + dropped + waiting` where `waiting` is what sits in
//! a partition's buffer while its table is rebuilt.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ops::latency::{self, Latency};

/// Why a request was not routed.
pub const DROP_REASONS: [&str; 5] = ["offline", "no_filter", "invalid", "no_slot", "expired"];

#[derive(Debug, Default)]
pub struct Metrics {
    /// Turns of the routing loop: stops moving when the loop is stuck (the
    /// systemd watchdog is fed only while it moves).
    pub heartbeat: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: [AtomicU64; DROP_REASONS.len()],
    pub registry_applied: AtomicU64,
    pub registry_invalid: AtomicU64,
    pub takeover_notices: AtomicU64,
    pub live_sessions: AtomicI64,
    pub partitions: AtomicI64,
    pub rebalances: AtomicU64,
    pub rebuilds: AtomicU64,
    /// Partitions of `cs.downlink` the orphan watch finds stalled.
    pub orphaned: AtomicI64,
    /// Times this instance rejoined the group over orphaned partitions.
    pub orphan_rejoins: AtomicU64,
    /// Partitions given their first committed offset at assignment.
    pub anchored: AtomicU64,
    /// A request's age (from its Kafka timestamp) when the router reads
    /// it: the broker's first hop.
    pub age_at_read: Latency,
    /// ... and when its routed record is handed to the producer: the
    /// difference is the router's own share (and any wait for a rebuild).
    pub age_at_routing: Latency,
    /// Receipts handed to the producer, by outcome (`contract::Outcome::ALL`).
    pub receipts: [AtomicU64; contract::Outcome::ALL.len()],
    /// Receipts Kafka did not take.
    pub receipts_failed: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn count_drop(&self, reason: &str) {
        if let Some(counter) = DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.dropped.get(i))
        {
            bump(counter);
        }
    }

    pub fn count_receipt(&self, outcome: contract::Outcome) {
        if let Some(counter) = self.receipts.get(outcome.index()) {
            bump(counter);
        }
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.dropped.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, i128)]| {
            let _ = writeln!(
                out,
                "# HELP carbridge_router_{name} {help}\n# TYPE carbridge_router_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "carbridge_router_{name}{labels} {value}");
            }
        };
        let one = |c: &AtomicU64| [(String::new(), i128::from(c.load(Ordering::Relaxed)))];
        let gauge = |c: &AtomicI64| [(String::new(), i128::from(c.load(Ordering::Relaxed)))];
        metric(
            "requests_received_total",
            "counter",
            "Downlink requests read from cs.downlink.",
            &one(&self.received),
        );
        metric(
            "routed_total",
            "counter",
            "Requests produced to a gateway shard's slot.",
            &one(&self.sent),
        );
        metric(
            "routed_acked_total",
            "counter",
            "Routed records acknowledged by Kafka.",
            &one(&self.acked),
        );
        metric(
            "routed_failed_total",
            "counter",
            "Routed records Kafka did not take.",
            &one(&self.failed),
        );
        let dropped: Vec<_> = DROP_REASONS
            .iter()
            .zip(&self.dropped)
            .map(|(r, c)| {
                (
                    format!("{{reason=\"{r}\"}}"),
                    i128::from(c.load(Ordering::Relaxed)),
                )
            })
            .collect();
        metric(
            "requests_dropped_total",
            "counter",
            "Requests not routed, by reason.",
            &dropped,
        );
        metric(
            "registry_applied_total",
            "counter",
            "Session-registry records applied to the tables.",
            &one(&self.registry_applied),
        );
        metric(
            "registry_invalid_total",
            "counter",
            "Session-registry records that could not be read (skipped).",
            &one(&self.registry_invalid),
        );
        metric(
            "takeover_notices_total",
            "counter",
            "Takeover notices sent to gateway shards.",
            &one(&self.takeover_notices),
        );
        metric(
            "live_sessions",
            "gauge",
            "Clients with a live session in this instance's tables.",
            &gauge(&self.live_sessions),
        );
        metric(
            "partitions_assigned",
            "gauge",
            "cs.downlink partitions this instance routes.",
            &gauge(&self.partitions),
        );
        metric(
            "rebalances_total",
            "counter",
            "Consumer-group assignments received.",
            &one(&self.rebalances),
        );
        metric(
            "table_rebuilds_total",
            "counter",
            "Partition tables rebuilt from mqtt.sessions.",
            &one(&self.rebuilds),
        );
        metric(
            "orphaned_partitions",
            "gauge",
            "cs.downlink partitions of no other live instance with requests waiting and no offset committed for longer than --orphan-after-ms.",
            &gauge(&self.orphaned),
        );
        metric(
            "orphan_rejoins_total",
            "counter",
            "Times this instance rejoined the group to have orphaned partitions reassigned.",
            &one(&self.orphan_rejoins),
        );
        metric(
            "partitions_anchored_total",
            "counter",
            "cs.downlink partitions given their first committed offset (the end) when first assigned.",
            &one(&self.anchored),
        );
        let receipts: Vec<_> = contract::Outcome::ALL
            .iter()
            .zip(&self.receipts)
            .map(|(o, c)| {
                (
                    format!("{{outcome=\"{}\"}}", o.label()),
                    i128::from(c.load(Ordering::Relaxed)),
                )
            })
            .collect();
        metric(
            "receipts_total",
            "counter",
            "Receipts the router produced, by outcome (requests it dropped that asked for one).",
            &receipts,
        );
        metric(
            "receipts_failed_total",
            "counter",
            "Receipts Kafka did not take.",
            &one(&self.receipts_failed),
        );
        latency::render(
            &mut out,
            "carbridge_router_request_age_at_read_seconds",
            "Time from a request's Kafka timestamp to the router reading it (the broker's first hop).",
            [&self.age_at_read].into_iter(),
        );
        latency::render(
            &mut out,
            "carbridge_router_request_age_at_routing_seconds",
            "Time from a request's Kafka timestamp to its routed record handed to the producer.",
            [&self.age_at_routing].into_iter(),
        );
        out
    }
}
