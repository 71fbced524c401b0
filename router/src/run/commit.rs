//! When the router may commit a request's offset: only once every record
//! it produced for that request (routed record, receipt) is in Kafka.
//!
//! librdkafka's auto-commit would commit a stored offset while the record
//! behind it still waits in the producer's queue: a crash then loses the
//! request, with no receipt. Flushing the producer before each commit
//! would stall the loop for a round trip every time, and under a slow
//! broker never finish with records always in flight. Instead every
//! record (routed, receipt, takeover notice, held) carries a sequence number, delivery reports strike them off,
//! and the loop commits a *snapshot* of the stored offsets once every
//! record produced before the snapshot was taken is delivered (or failed,
//! which is counted and logged where it happens). Commits lag by at most
//! one interval plus the producer's round trip, and never stall the loop.
//!
//! A revoke cannot wait: it flushes, then commits what is stored
//! (`RouterContext::rebalance`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientContext, Offset};

use crate::metrics::{Metrics, bump};

/// How often stored offsets are committed (librdkafka's auto-commit
/// default, which the router used before).
pub(super) const INTERVAL: Duration = Duration::from_secs(5);

/// What a produced record was: the low two bits of its delivery opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Routed = 0,
    Takeover = 1,
    Receipt = 2,
    /// A held request, or its deletion, on `mqtt.held`.
    Held = 3,
}

/// A delivery opaque: the record's kind and its sequence number.
pub(super) fn opaque(kind: Kind, seq: u64) -> usize {
    usize::try_from(seq << 2).unwrap_or(usize::MAX & !3) | kind as usize
}

/// The kind and sequence number of a delivery opaque.
pub(super) fn parse(opaque: usize) -> (Kind, u64) {
    let kind = match opaque & 3 {
        0 => Kind::Routed,
        1 => Kind::Takeover,
        2 => Kind::Receipt,
        _ => Kind::Held,
    };
    (kind, (opaque >> 2) as u64)
}

/// The records handed to the producer and not yet reported, shared by
/// the loop (which numbers them) and the producer's delivery callback
/// (which strikes them off; it runs on the loop's thread, inside a poll
/// or a flush, so the lock is never contended).
#[derive(Debug, Default)]
pub(super) struct InFlight {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    outstanding: BTreeSet<u64>,
}

impl InFlight {
    /// Numbers a record about to be handed to the producer.
    pub(super) fn begin(&self) -> u64 {
        let mut state = self.lock();
        let seq = state.next;
        state.next += 1;
        state.outstanding.insert(seq);
        seq
    }

    /// The record is reported (delivered or failed), or was refused.
    pub(super) fn end(&self, seq: u64) {
        self.lock().outstanding.remove(&seq);
    }

    /// The number the next record gets.
    fn next(&self) -> u64 {
        self.lock().next
    }

    /// Whether every record numbered below `seq` is reported.
    fn settled_below(&self, seq: u64) -> bool {
        self.lock()
            .outstanding
            .first()
            .is_none_or(|first| *first >= seq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Stored offsets (the last handled request per partition) waiting for
/// the records produced before them.
#[derive(Debug)]
struct Snapshot {
    offsets: HashMap<i32, i64>,
    /// Records numbered below this were produced before the snapshot.
    seq: u64,
}

/// The loop's side: what it handled, and which snapshot waits.
#[derive(Debug)]
pub(super) struct Commits {
    handled: HashMap<i32, i64>,
    pending: Option<Snapshot>,
    last: Instant,
}

impl Commits {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            handled: HashMap::new(),
            pending: None,
            last: now,
        }
    }

    /// The request at `offset` of `partition` is decided, its records
    /// handed to the producer.
    pub(super) fn handled(&mut self, partition: i32, offset: i64) {
        let last = self.handled.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// The assignment changed: nothing handled before may be committed by
    /// this instance any more (a revoke commits what was stored itself).
    pub(super) fn forget(&mut self) {
        self.handled.clear();
        self.pending = None;
    }

    /// What to commit now, if anything: the pending snapshot once its
    /// records are all reported. Takes a new snapshot every [`INTERVAL`].
    /// Offsets are the next to read (handled + 1), as Kafka commits them.
    pub(super) fn due(
        &mut self,
        in_flight: &InFlight,
        topic: &str,
        now: Instant,
    ) -> Option<TopicPartitionList> {
        let ready = self
            .pending
            .take_if(|snapshot| in_flight.settled_below(snapshot.seq));
        if self.pending.is_none() && now.duration_since(self.last) >= INTERVAL {
            self.last = now;
            if !self.handled.is_empty() {
                self.pending = Some(Snapshot {
                    offsets: std::mem::take(&mut self.handled),
                    seq: in_flight.next(),
                });
            }
        }
        let snapshot = ready?;
        let mut list = TopicPartitionList::new();
        for (partition, offset) in snapshot.offsets {
            let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
        }
        Some(list)
    }
}

/// Counts what Kafka did with routed records, notices and receipts, and
/// strikes them off the records in flight.
pub(super) struct RoutedContext {
    pub(super) metrics: Arc<Metrics>,
    pub(super) in_flight: Arc<InFlight>,
}

impl ClientContext for RoutedContext {}

impl ProducerContext for RoutedContext {
    /// [`opaque`]: the record's kind and sequence number.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (kind, seq) = parse(opaque);
        self.in_flight.end(seq);
        match (result, kind) {
            (Ok(_), Kind::Routed) => bump(&self.metrics.acked),
            (Err((error, _)), Kind::Routed) => {
                bump(&self.metrics.failed);
                tracing::warn!(%error, "routed record lost");
            }
            (Err((error, _)), Kind::Receipt) => {
                bump(&self.metrics.receipts_failed);
                tracing::warn!(%error, "receipt lost");
            }
            (Err((error, _)), Kind::Held) => {
                bump(&self.metrics.held_records_failed);
                tracing::warn!(
                    %error,
                    "held record or its deletion lost: a successor may not see this change"
                );
            }
            (Err((error, _)), _) => tracing::warn!(%error, "takeover notice lost"),
            (Ok(_), _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(list: &TopicPartitionList) -> Vec<(i32, Offset)> {
        let mut offsets: Vec<_> = list
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        offsets.sort_by_key(|(p, _)| *p);
        offsets
    }

    #[test]
    fn an_opaque_carries_the_kind_and_the_number() {
        for kind in [Kind::Routed, Kind::Takeover, Kind::Receipt, Kind::Held] {
            for seq in [0, 1, 77, u64::from(u32::MAX) + 5] {
                assert_eq!(parse(opaque(kind, seq)), (kind, seq));
            }
        }
    }

    #[test]
    fn a_snapshot_waits_for_the_records_produced_before_it() {
        let start = Instant::now();
        let in_flight = InFlight::default();
        let mut commits = Commits::new(start);
        let routed = in_flight.begin();
        commits.handled(0, 10);
        commits.handled(1, 3);
        commits.handled(0, 11);
        // Nothing before the interval.
        assert!(commits.due(&in_flight, "t", start).is_none());
        // The snapshot is taken, but its routed record is in flight.
        let later = start + INTERVAL;
        assert!(commits.due(&in_flight, "t", later).is_none());
        // A record produced after the snapshot does not hold it back.
        let newer = in_flight.begin();
        commits.handled(0, 12);
        assert!(commits.due(&in_flight, "t", later).is_none());
        in_flight.end(routed);
        let list = commits
            .due(&in_flight, "t", later)
            .expect("the snapshot's records are all reported");
        assert_eq!(
            offsets(&list),
            [(0, Offset::Offset(12)), (1, Offset::Offset(4))]
        );
        // The next snapshot (offset 12) waits for `newer`.
        let again = later + INTERVAL;
        assert!(commits.due(&in_flight, "t", again).is_none());
        assert!(commits.due(&in_flight, "t", again).is_none());
        in_flight.end(newer);
        let list = commits.due(&in_flight, "t", again).expect("settled");
        assert_eq!(offsets(&list), [(0, Offset::Offset(13))]);
    }

    #[test]
    fn a_changed_assignment_drops_what_was_not_committed() {
        let start = Instant::now();
        let in_flight = InFlight::default();
        let mut commits = Commits::new(start);
        commits.handled(2, 40);
        let _held_back = in_flight.begin();
        assert!(commits.due(&in_flight, "t", start + INTERVAL).is_none());
        commits.forget();
        assert!(commits.due(&in_flight, "t", start + INTERVAL * 3).is_none());
        // Nothing handled: no snapshot, nothing to commit.
        assert!(commits.due(&in_flight, "t", start + INTERVAL * 5).is_none());
    }
}
