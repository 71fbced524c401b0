//! The router's counters and their Prometheus rendering.
//!
//! Accounting: every request read from `cs.downlink` ends as exactly one of
//! routed (then acknowledged or failed by Kafka), dropped with a reason, or
//! held (until released, and then routed, or dropped), so
//! `received + adopted = sent + dropped + held + waiting` where `waiting`
//! is what sits in a partition's buffer while its table is rebuilt and
//! `adopted` what a takeover found held by a predecessor.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ops::exposition::{Counters, Exposition};
use ops::latency::Latency;

ops::label_set! {
    /// Why a request was not routed.
    pub enum Dropped: "reason" {
        Offline = "offline",
        NoFilter = "no_filter",
        Invalid = "invalid",
        NoSlot = "no_slot",
        Expired = "expired",
        HoldFull = "hold_full",
    }
}

ops::label_set! {
    /// The bound a request asking to be held was refused on.
    pub enum HoldRefused: "bound" {
        CarCount = "car_count",
        CarBytes = "car_bytes",
        RouterBytes = "router_bytes",
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Turns of the routing loop: stops moving when the loop is stuck (the
    /// systemd watchdog is fed only while it moves).
    pub heartbeat: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: Counters<Dropped>,
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
    /// Requests held now, and their bytes (held.rs counts them).
    pub held: AtomicI64,
    pub held_bytes: AtomicI64,
    /// `--hold-bytes`, for alerts on how full it is.
    pub held_bytes_limit: AtomicI64,
    /// Requests that were held (new), released to their car, taken over
    /// from `mqtt.held`, refused by a bound.
    pub held_total: AtomicU64,
    pub held_released: AtomicU64,
    pub held_adopted: AtomicU64,
    pub hold_refused: Counters<HoldRefused>,
    /// Requests that asked to be held without an expiry (decided at once).
    pub hold_without_expiry: AtomicU64,
    /// Held records or their deletions Kafka did not take.
    pub held_records_failed: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn count_receipt(&self, outcome: contract::Outcome) {
        if let Some(counter) = self.receipts.get(outcome.index()) {
            bump(counter);
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let gauge = |c: &AtomicI64| c.load(Ordering::Relaxed);
        let mut page = Exposition::new();
        page.counter(
            "carbridge_router_heartbeats_total",
            "Turns of the routing loop: a count that stops moving is a stuck router \
             (the systemd watchdog is no longer fed).",
            load(&self.heartbeat),
        );
        page.counter(
            "carbridge_router_requests_received_total",
            "Downlink requests read from cs.downlink.",
            load(&self.received),
        );
        page.counter(
            "carbridge_router_routed_total",
            "Requests produced to a gateway shard's slot.",
            load(&self.sent),
        );
        page.counter(
            "carbridge_router_routed_acked_total",
            "Routed records acknowledged by Kafka.",
            load(&self.acked),
        );
        page.counter(
            "carbridge_router_routed_failed_total",
            "Routed records Kafka did not take.",
            load(&self.failed),
        );
        page.counters(
            "carbridge_router_requests_dropped_total",
            "Requests not routed, by reason.",
            |reason| self.dropped.get(reason),
        );
        page.counter(
            "carbridge_router_registry_applied_total",
            "Session-registry records applied to the tables.",
            load(&self.registry_applied),
        );
        page.counter(
            "carbridge_router_registry_invalid_total",
            "Session-registry records that could not be read (skipped).",
            load(&self.registry_invalid),
        );
        page.counter(
            "carbridge_router_takeover_notices_total",
            "Takeover notices sent to gateway shards.",
            load(&self.takeover_notices),
        );
        page.gauge(
            "carbridge_router_live_sessions",
            "Clients with a live session in this instance's tables.",
            gauge(&self.live_sessions),
        );
        page.gauge(
            "carbridge_router_partitions_assigned",
            "cs.downlink partitions this instance routes.",
            gauge(&self.partitions),
        );
        page.counter(
            "carbridge_router_rebalances_total",
            "Consumer-group assignments received.",
            load(&self.rebalances),
        );
        page.counter(
            "carbridge_router_table_rebuilds_total",
            "Partition tables rebuilt from mqtt.sessions.",
            load(&self.rebuilds),
        );
        page.gauge(
            "carbridge_router_orphaned_partitions",
            "cs.downlink partitions of no other live instance with requests waiting and no offset committed for longer than --orphan-after-ms.",
            gauge(&self.orphaned),
        );
        page.counter(
            "carbridge_router_orphan_rejoins_total",
            "Times this instance rejoined the group to have orphaned partitions reassigned.",
            load(&self.orphan_rejoins),
        );
        page.counter(
            "carbridge_router_partitions_anchored_total",
            "cs.downlink partitions given their first committed offset (the end) when first assigned.",
            load(&self.anchored),
        );
        page.samples(
            "carbridge_router_receipts_total",
            "counter",
            "Receipts the router produced, by outcome (requests it dropped that asked for one).",
            "outcome",
            contract::Outcome::ALL
                .iter()
                .zip(&self.receipts)
                .map(|(outcome, count)| (outcome.label(), load(count))),
        );
        page.counter(
            "carbridge_router_receipts_failed_total",
            "Receipts Kafka did not take.",
            load(&self.receipts_failed),
        );
        page.gauge(
            "carbridge_router_held_requests",
            "Requests held now for cars that cannot take them.",
            gauge(&self.held),
        );
        page.gauge(
            "carbridge_router_held_bytes",
            "Bytes held now, as the --hold-bytes bound counts them.",
            gauge(&self.held_bytes),
        );
        page.gauge(
            "carbridge_router_held_bytes_limit",
            "The bound on held bytes (--hold-bytes).",
            gauge(&self.held_bytes_limit),
        );
        page.counter(
            "carbridge_router_held_total",
            "Requests this router started holding.",
            load(&self.held_total),
        );
        page.counter(
            "carbridge_router_held_released_total",
            "Held requests routed to their car once it could take them.",
            load(&self.held_released),
        );
        page.counter(
            "carbridge_router_held_adopted_total",
            "Held requests taken over from mqtt.held when a partition was assigned.",
            load(&self.held_adopted),
        );
        page.counters(
            "carbridge_router_hold_refused_total",
            "Requests that asked to be held and were refused by a bound (answered hold_full).",
            |bound| self.hold_refused.get(bound),
        );
        page.counter(
            "carbridge_router_hold_without_expiry_total",
            "Requests that asked to be held but had no expiry: decided at once.",
            load(&self.hold_without_expiry),
        );
        page.counter(
            "carbridge_router_held_records_failed_total",
            "Held records or deletions of them that Kafka did not take.",
            load(&self.held_records_failed),
        );
        page.histogram(
            "carbridge_router_request_age_at_read_seconds",
            "Time from a request's Kafka timestamp to the router reading it (the broker's first hop).",
            [&self.age_at_read].into_iter(),
        );
        page.histogram(
            "carbridge_router_request_age_at_routing_seconds",
            "Time from a request's Kafka timestamp to its routed record handed to the producer.",
            [&self.age_at_routing].into_iter(),
        );
        page.finish()
    }
}
