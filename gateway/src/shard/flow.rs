//! Flow control: while the shard's unacknowledged bytes are at
//! `kafka.max_in_flight_bytes` (or librdkafka's queue is full), connections
//! stop reading, so TCP pushes back on the cars; their keep-alive restarts
//! when reading resumes, and new CONNECTs are refused with 0x03 once the
//! stall has lasted [`UNAVAILABLE_AFTER`].

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;

use super::log_due;
use crate::metrics::{ShardMetrics, bump};

/// A shard stalled this long by Kafka counts as "Kafka cannot take data":
/// new CONNECTs are refused with 0x03 (server unavailable). Shorter stalls
/// are ordinary backpressure.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(1);

/// Whether the shard's connections may read, and who waits until they may.
#[derive(Debug, Default)]
pub(super) struct FlowControl {
    paused: Cell<bool>,
    paused_since: Cell<Option<Instant>>,
    logged_at: Cell<Option<Instant>>,
    unlogged: Cell<u64>,
    waiting: RefCell<Vec<Waker>>,
}

impl FlowControl {
    pub(super) fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Stops reading on every connection of shard `shard` until
    /// [`FlowControl::resume`].
    pub(super) fn pause(&self, shard: usize, metrics: &ShardMetrics) {
        if self.paused.replace(true) {
            return;
        }
        let now = Instant::now();
        self.paused_since.set(Some(now));
        bump(&metrics.read_pauses);
        // Under heavy load pauses come and go many times a second: warn
        // once per interval, with the count, not once per pause.
        self.unlogged.set(self.unlogged.get() + 1);
        if log_due(&self.logged_at, now) {
            tracing::warn!(
                shard,
                pauses = self.unlogged.replace(0),
                "Kafka is behind: reads paused until it catches up \
                 (pauses since the last warning)"
            );
        }
    }

    /// Reopens reading and wakes every connection that waited; whether the
    /// shard was paused. The pause's length goes to `metrics`.
    pub(super) fn resume(&self, metrics: &ShardMetrics) -> bool {
        if !self.paused.replace(false) {
            return false;
        }
        if let Some(since) = self.paused_since.take() {
            let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
            metrics.read_paused_us.fetch_add(us, Ordering::Relaxed);
        }
        for waker in self.waiting.borrow_mut().drain(..) {
            waker.wake();
        }
        true
    }

    /// Resolves once reading is open again.
    pub(super) fn resumed(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(|cx| {
            if self.paused.get() {
                self.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }

    /// Whether Kafka has been unable to take data for a while.
    pub(super) fn kafka_unavailable(&self) -> bool {
        self.paused_since
            .get()
            .is_some_and(|since| since.elapsed() >= UNAVAILABLE_AFTER)
    }
}

/// The shard's accept rate limit: a token bucket of one second's worth.
#[derive(Debug)]
pub(super) struct AcceptRate {
    per_second: f64,
    tokens: Cell<f64>,
    at: Cell<Instant>,
}

impl AcceptRate {
    pub(super) fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: Cell::new(per_second),
            at: Cell::new(Instant::now()),
        }
    }

    /// Takes a token for one accept; without one, how long until the next.
    pub(super) fn take(&self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at.get()).as_secs_f64();
        self.at.set(now);
        let tokens = (self.tokens.get() + elapsed * self.per_second).min(self.per_second);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            Ok(())
        } else {
            self.tokens.set(tokens);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_counted_with_its_length() {
        let metrics = ShardMetrics::default();
        let flow = FlowControl::default();
        flow.pause(0, &metrics);
        assert!(flow.is_paused());
        // A millisecond passes (spun, not slept: the pause must outlast it).
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1) {}
        assert!(flow.resume(&metrics));
        assert!(!flow.resume(&metrics), "resumed twice");
        assert_eq!(metrics.read_pauses.load(Ordering::Relaxed), 1);
        assert!(metrics.read_paused_us.load(Ordering::Relaxed) >= 1000);
    }

    #[test]
    fn the_bucket_holds_one_second_and_refills_at_the_rate() {
        let rate = AcceptRate::new(100);
        let t0 = rate.at.get();
        for _ in 0..100 {
            rate.take(t0).unwrap();
        }
        let wait = rate.take(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(10) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // 50 ms later: five more.
        let later = t0 + Duration::from_millis(50);
        for _ in 0..5 {
            rate.take(later).unwrap();
        }
        assert!(rate.take(later).is_err());
        // Never more than a second's worth, however long it was quiet.
        let much_later = t0 + Duration::from_secs(60);
        let taken = (0..1000)
            .take_while(|_| rate.take(much_later).is_ok())
            .count();
        assert_eq!(taken, 100);
    }
}
