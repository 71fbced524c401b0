//! The orphan watch: partitions of `cs.downlink` that no live instance
//! routes.
//!
//! The group coordinator should never leave a partition unassigned while a
//! member is alive, but tansu 0.6.0 does: when it expires a crashed member
//! while answering a survivor's heartbeat, it keeps the group's generation
//! and its old assignment, and hands the survivor back only its own
//! partitions (docs/router.md, "A crashed router on tansu"). Requests for
//! the dead member's cars then wait in Kafka with nothing to show for it.
//!
//! The watch sees this from outside the protocol, the way an operator
//! would: a partition that is not this instance's, whose high watermark
//! has moved past the point where its committed offset stopped, and whose
//! committed offset has not moved for `after`, is orphaned. A live owner
//! commits every few seconds while requests flow, so only a partition
//! nobody reads (or whose owner is stuck) stays still that long. The
//! gauge `carbridge_router_orphaned_partitions` counts them; with
//! `rejoin` the instance leaves and rejoins the group, which makes any
//! coordinator (tansu's included) start a new generation and assign every
//! partition again. Rejoins back off (`after`, doubling to 10 minutes) so
//! a table that takes longer than `after` to rebuild cannot start a loop.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::metrics::Metrics;

/// Bound on each offset or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between rejoins.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What the routing loop and the watch share.
#[derive(Debug, Default)]
pub struct Shared {
    /// The partitions this instance owns (it judges only the others).
    owned: Mutex<BTreeSet<i32>>,
    /// Set by the watch; the routing loop rejoins the group and clears it.
    rejoin: AtomicBool,
}

impl Shared {
    pub fn set_owned(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        owned.clear();
        owned.extend(partitions);
    }

    fn owned(&self) -> BTreeSet<i32> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the watch asked for a rejoin (and clears the request).
    pub fn take_rejoin(&self) -> bool {
        self.rejoin.swap(false, Ordering::Relaxed)
    }
}

/// Per-partition observations: the pure part of the watch.
#[derive(Debug, Default)]
pub struct Stalls {
    seen: HashMap<i32, Seen>,
}

#[derive(Debug)]
struct Seen {
    /// The committed offset (None: never committed) and the high watermark
    /// when that offset was first seen.
    committed: Option<i64>,
    high_then: i64,
    /// When the high watermark was first seen beyond `high_then`.
    waiting_since: Option<Instant>,
}

impl Stalls {
    /// Records one partition's state at `now`.
    pub fn observe(
        &mut self,
        now: Instant,
        partition: i32,
        committed: Option<i64>,
        high: i64,
        owned: bool,
    ) {
        let fresh = Seen {
            committed,
            high_then: high,
            waiting_since: None,
        };
        match self.seen.entry(partition) {
            Entry::Vacant(entry) => {
                entry.insert(fresh);
            }
            Entry::Occupied(mut entry) => {
                let seen = entry.get_mut();
                if owned || seen.committed != committed {
                    *seen = fresh;
                } else if high > seen.high_then.max(committed.unwrap_or(0)) {
                    seen.waiting_since.get_or_insert(now);
                }
            }
        }
    }

    /// The partitions that have had requests waiting for at least `after`
    /// with their committed offset standing still.
    pub fn orphans(&self, now: Instant, after: Duration) -> Vec<i32> {
        let mut orphans: Vec<i32> = self
            .seen
            .iter()
            .filter(|(_, seen)| {
                seen.waiting_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= after)
            })
            .map(|(partition, _)| *partition)
            .collect();
        orphans.sort_unstable();
        orphans
    }

    /// Forgets everything: after a rejoin every partition is judged anew.
    pub fn reset(&mut self) {
        self.seen.clear();
    }
}

/// The watch thread's state.
pub(crate) struct Watch {
    /// Not subscribed: it only reads the group's committed offsets.
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
    after: Duration,
    rejoin: bool,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    stalls: Stalls,
    backoff: Duration,
    quiet_until: Option<Instant>,
}

impl Watch {
    pub(crate) fn new(
        consumer: BaseConsumer,
        topic: String,
        partitions: i32,
        after: Duration,
        rejoin: bool,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            consumer,
            topic,
            partitions,
            after,
            rejoin,
            shared,
            metrics,
            stalls: Stalls::default(),
            backoff: after,
            quiet_until: None,
        }
    }

    /// Checks every `after / 4` (at least every 5 s) until `stop`.
    pub(crate) fn run(mut self, stop: &AtomicBool) {
        let every = (self.after / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                self.check();
                next = Instant::now() + every;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check(&mut self) {
        let Some(committed) = self.committed() else {
            return;
        };
        let owned = self.shared.owned();
        let now = Instant::now();
        for partition in 0..self.partitions {
            let high = match self
                .consumer
                .fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT)
            {
                Ok((_, high)) => high,
                Err(error) => {
                    tracing::debug!(partition, %error, "orphan watch: no watermark");
                    continue;
                }
            };
            let committed = committed.get(&partition).copied().flatten();
            self.stalls
                .observe(now, partition, committed, high, owned.contains(&partition));
        }
        let orphans = self.stalls.orphans(now, self.after);
        self.metrics.orphaned.store(
            i64::try_from(orphans.len()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        if orphans.is_empty() {
            self.backoff = self.after;
            return;
        }
        if !self.rejoin {
            tracing::warn!(
                ?orphans,
                after_ms = self.after.as_millis(),
                "partitions have requests waiting and no router committing; \
                 not rejoining (--no-orphan-rejoin): check the group's members"
            );
            return;
        }
        if self.quiet_until.is_some_and(|until| now < until) {
            return;
        }
        tracing::warn!(
            ?orphans,
            after_ms = self.after.as_millis(),
            next_rejoin_not_before_s = self.backoff.as_secs(),
            "partitions have requests waiting and no router committing: rejoining the \
             consumer group so that they are assigned again (see docs/router.md)"
        );
        self.shared.rejoin.store(true, Ordering::Relaxed);
        self.quiet_until = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.stalls.reset();
    }

    /// The group's committed offset of every partition (None: none yet),
    /// or None when the broker did not answer.
    fn committed(&self) -> Option<HashMap<i32, Option<i64>>> {
        let mut wanted = TopicPartitionList::new();
        for partition in 0..self.partitions {
            wanted.add_partition(&self.topic, partition);
        }
        match self.consumer.committed_offsets(wanted, REQUEST_TIMEOUT) {
            Ok(list) => Some(
                list.elements()
                    .iter()
                    .map(|element| {
                        let offset = match element.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        };
                        (element.partition(), offset)
                    })
                    .collect(),
            ),
            Err(error) => {
                tracing::debug!(%error, "orphan watch: no committed offsets");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const AFTER: Duration = Duration::from_secs(10);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_partition_nobody_commits_while_requests_arrive_is_orphaned() {
        let start = Instant::now();
        let mut stalls = Stalls::default();
        stalls.observe(start, 2, Some(5), 5, false);
        stalls.observe(at(start, 1), 2, Some(5), 9, false);
        assert!(stalls.orphans(at(start, 10), AFTER).is_empty());
        stalls.observe(at(start, 11), 2, Some(5), 12, false);
        assert_eq!(stalls.orphans(at(start, 11), AFTER), vec![2]);
    }

    #[test]
    fn a_moving_committed_offset_is_an_owner_at_work() {
        let start = Instant::now();
        let mut stalls = Stalls::default();
        stalls.observe(start, 0, Some(5), 5, false);
        for s in 1..30 {
            // Requests keep coming; the owner commits every 5 s.
            let committed = 5 + (s / 5) * 5;
            stalls.observe(at(start, s), 0, Some(committed as i64), 5 + s as i64, false);
        }
        assert!(stalls.orphans(at(start, 30), AFTER).is_empty());
    }

    #[test]
    fn an_idle_partition_is_not_orphaned() {
        let start = Instant::now();
        let mut stalls = Stalls::default();
        for s in 0..60 {
            stalls.observe(at(start, s), 1, Some(7), 7, false);
        }
        assert!(stalls.orphans(at(start, 60), AFTER).is_empty());
    }

    #[test]
    fn a_never_committed_partition_with_new_requests_is_orphaned() {
        let start = Instant::now();
        let mut stalls = Stalls::default();
        // Old requests from before any router: not evidence of anything.
        stalls.observe(start, 3, None, 100, false);
        stalls.observe(at(start, 5), 3, None, 100, false);
        assert!(stalls.orphans(at(start, 20), AFTER).is_empty());
        stalls.observe(at(start, 6), 3, None, 101, false);
        assert_eq!(stalls.orphans(at(start, 16), AFTER), vec![3]);
    }

    #[test]
    fn own_partitions_are_never_orphaned_and_reset_forgets() {
        let start = Instant::now();
        let mut stalls = Stalls::default();
        stalls.observe(start, 0, Some(1), 1, true);
        stalls.observe(at(start, 1), 0, Some(1), 50, true);
        stalls.observe(start, 1, Some(1), 1, false);
        stalls.observe(at(start, 1), 1, Some(1), 50, false);
        assert_eq!(stalls.orphans(at(start, 20), AFTER), vec![1]);
        stalls.reset();
        assert!(stalls.orphans(at(start, 20), AFTER).is_empty());
    }
}
