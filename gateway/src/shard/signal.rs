//! Wake-up primitives: what a connection waits on beside its socket
//! ([`Signal`]), what wakes the shard's poller from another thread
//! ([`Kick`]), and the rate limit for repeated warnings.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::ByteString;
use futures_lite::future;

use super::lot::Parked;
use crate::session::CloseReason;

/// At most one warning of a kind ("reads paused", downlink consumer
/// errors) per shard per interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a warning last logged at `at` may be logged again at `now`;
/// if so, `now` becomes its last time.
pub(super) fn log_due(at: &Cell<Option<Instant>>, now: Instant) -> bool {
    let due = at
        .get()
        .is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL);
    if due {
        at.set(Some(now));
    }
    due
}

/// What a connection waits on: its socket (woken by the shard's readiness
/// task), a close order (takeover, shutdown), its session deadline coming
/// due, or downlink messages to write. Shared between the connection task
/// and the shard's poller, sweeper and readiness task.
#[derive(Debug, Default)]
pub(super) struct Signal {
    /// The connection's id in the shard's table.
    pub(super) id: u64,
    /// The connection while it is parked (no task: see [`super::lot`]):
    /// a wake-up then asks the shard to serve it. Kept here, in the
    /// allocation every connection has anyway, rather than in a map.
    parked: RefCell<Option<Parked>>,
    pub(super) reason: Cell<Option<CloseReason>>,
    pub(super) deadline: Cell<Option<Instant>>,
    /// The deadline slot this connection is filed under in the table, 0
    /// when none ([`super::table::ConnectionTable::set_deadline`]).
    pub(super) filed: Cell<u32>,
    due: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// The session id, once the CONNECT is accepted.
    pub(super) session: Cell<Option<u64>>,
    /// The session's topic filters, shared for downlink matching.
    pub(super) filters: RefCell<Option<Rc<[ByteString]>>>,
    /// Encoded downlink PUBLISH packets not yet written, and their count.
    pub(super) outbox: RefCell<BytesMut>,
    pub(super) queued: Cell<u32>,
    /// When the oldest of them was queued ([`micros`]).
    pub(super) queued_since: Cell<u32>,
}

/// Microseconds since the first call, wrapping every 71 minutes: 4 bytes
/// per connection for the downlink's queue time (take differences with
/// `wrapping_sub`).
pub(super) fn micros() -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    // Truncation is the wrap.
    #[allow(clippy::cast_possible_truncation)]
    let now = epoch.elapsed().as_micros() as u32;
    now
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Wake {
    Close(CloseReason),
    Deadline,
    Output,
}

impl Signal {
    pub(super) fn new(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    pub(super) fn fire(&self, reason: CloseReason) {
        if self.reason.get().is_none() {
            self.reason.set(Some(reason));
            self.wake();
        }
    }

    pub(super) fn wake(&self) {
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        } else if self.is_parked() {
            super::lot::unpark_later(self.id);
        }
    }

    /// The connection's task ends and its wake-ups go to the shard's lot.
    pub(super) fn park(&self, parked: Parked) {
        self.waker.borrow_mut().take();
        *self.parked.borrow_mut() = Some(parked);
    }

    /// The parked connection, to serve (it is no longer parked).
    pub(super) fn unpark(&self) -> Option<Parked> {
        self.parked.borrow_mut().take()
    }

    pub(super) fn is_parked(&self) -> bool {
        self.parked.borrow().is_some()
    }

    /// The task to wake on the connection's next event.
    pub(super) fn listen(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|stored| stored.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// Whether something waits to be handled (a close order, a deadline
    /// due, downlink output): a connection with any of these is not parked.
    pub(super) fn pending(&self) -> bool {
        self.reason.get().is_some() || self.due.get() || self.queued.get() > 0
    }

    /// Called by the sweeper: the session deadline has passed.
    pub(super) fn deadline_passed(&self) {
        if !self.due.replace(true) {
            self.wake();
        }
    }

    pub(super) fn wait(&self) -> impl Future<Output = Wake> + '_ {
        future::poll_fn(|cx| {
            if let Some(reason) = self.reason.get() {
                Poll::Ready(Wake::Close(reason))
            } else if self.due.replace(false) {
                Poll::Ready(Wake::Deadline)
            } else if self.queued.get() > 0 {
                Poll::Ready(Wake::Output)
            } else {
                self.listen(cx.waker());
                Poll::Pending
            }
        })
    }

    /// Resolves on a close order only; deadlines and downlink output wait
    /// until reading resumes.
    pub(super) fn closed(&self) -> impl Future<Output = CloseReason> + '_ {
        future::poll_fn(|cx| match self.reason.get() {
            Some(reason) => Poll::Ready(reason),
            None => {
                self.listen(cx.waker());
                Poll::Pending
            }
        })
    }

    /// Takes the queued downlink bytes and their message count.
    pub(super) fn take_output(&self) -> (BytesMut, u64) {
        (self.outbox.take(), u64::from(self.queued.replace(0)))
    }
}

/// Wakes the shard's poller from its idle sleep, from the shard's own
/// thread or another one (librdkafka's, when a routed message arrives;
/// the gateway's, on a stop, a drain or a takeover order; glommio wakers
/// may be woken from any thread).
#[derive(Debug, Default)]
pub(crate) struct Kick {
    kicked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Kick {
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        let waker = self.waker.lock().ok().and_then(|mut waker| waker.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether it was kicked since the last look (and forget it).
    #[cfg(test)]
    pub(crate) fn take(&self) -> bool {
        self.kicked.swap(false, Ordering::Acquire)
    }

    /// Drops the stored waker here, on the shard's thread, rather than
    /// wherever the last owner of this `Kick` ends up.
    pub(super) fn forget(&self) {
        drop(self.waker.lock().ok().and_then(|mut waker| waker.take()));
    }

    /// Completes once kicked (at once if kicked since the last time).
    pub(super) async fn kicked(&self) {
        future::poll_fn(|cx| {
            if self.kicked.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            if let Ok(mut waker) = self.waker.lock() {
                *waker = Some(cx.waker().clone());
            }
            // A kick between the check and storing the waker found no
            // waker to wake: look again.
            if self.kicked.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}
