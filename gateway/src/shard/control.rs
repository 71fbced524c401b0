//! A connection's control block: what its task (or, parked, the shard's
//! lot) waits on beside its socket. The shard's other tasks reach a
//! connection only through it: the readiness task (its socket had an
//! event), the sweeper (its deadline passed), the poller (a close order, a
//! downlink message to write).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::num::NonZeroU64;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use codec::ByteString;
use futures_lite::future;
use std::rc::Rc;

use super::parked::Parked;
use crate::session::CloseReason;

/// What a connection waits on: its socket (woken by the shard's readiness
/// task), a close order (takeover, shutdown), its session deadline coming
/// due, or downlink messages to write. Shared between the connection task
/// and the shard's poller, sweeper and readiness task.
#[derive(Debug, Default)]
pub(super) struct Control {
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
    /// An inspection (`GET /cars/<id>`) waits for the connection's task
    /// to answer it ([`super::inspect`]); a parked connection is answered
    /// by the shard at once and never has this set.
    inspect: Cell<bool>,
    waker: TaskWaker,
    /// The session id, once the CONNECT is accepted (ids are never 0:
    /// 8 bytes less than an `Option<u64>`).
    session: Cell<Option<NonZeroU64>>,
    /// What the car sent that was handed to Kafka, and what was written to
    /// it ([`Traffic`]).
    pub(super) uplink: Cell<Traffic>,
    pub(super) downlink: Cell<Traffic>,
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

/// The waker of the connection's task: a `Cell`, not a `RefCell`, which is
/// 8 bytes less in every connection (taken out to look at, put back).
#[derive(Default)]
struct TaskWaker(Cell<Option<Waker>>);

impl std::fmt::Debug for TaskWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskWaker")
    }
}

impl TaskWaker {
    fn take(&self) -> Option<Waker> {
        self.0.take()
    }

    fn set(&self, waker: Option<Waker>) {
        self.0.set(waker);
    }
}

/// A direction's PUBLISH packets and bytes over a connection's life, for
/// its inspection: 32 bits each, saturating (4 Gi messages or 4 GiB; the
/// inspection says so when one is reached). Paid for by the 16 bytes the
/// session id and the waker gave up, so a connection's control block stays
/// in its 336-byte chunk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Traffic {
    pub(super) messages: u32,
    pub(super) bytes: u32,
}

impl Traffic {
    /// `messages` more, of `bytes` in all.
    pub(super) fn add(self, messages: u64, bytes: usize) -> Self {
        let messages = u32::try_from(messages).unwrap_or(u32::MAX);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        Self {
            messages: self.messages.saturating_add(messages),
            bytes: self.bytes.saturating_add(bytes),
        }
    }
}

/// Whom a wake-up reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woke {
    /// The connection's task, or nobody needed waking.
    Task,
    /// The connection is parked: no task; the lot must serve it.
    Parked,
}

/// What woke a connection's task besides its socket.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wake {
    Close(CloseReason),
    Deadline,
    Output,
    /// An inspection waits for the task's answer.
    Inspect,
}

impl Control {
    pub(super) fn new(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Orders the connection closed (the first order's reason stands).
    #[must_use = "a parked connection has no task to wake: the lot must serve it"]
    pub(super) fn fire(&self, reason: CloseReason) -> Woke {
        if self.reason.get().is_some() {
            return Woke::Task;
        }
        self.reason.set(Some(reason));
        self.wake()
    }

    /// The session id, once the CONNECT is accepted.
    pub(super) fn session(&self) -> Option<u64> {
        self.session.get().map(NonZeroU64::get)
    }

    /// Sets the session id (0, which no session has, clears it).
    pub(super) fn set_session(&self, session: u64) {
        self.session.set(NonZeroU64::new(session));
    }

    /// Counts `messages` PUBLISH packets of `bytes` handed to Kafka.
    pub(super) fn count_uplink(&self, messages: u64, bytes: usize) {
        self.uplink.set(self.uplink.get().add(messages, bytes));
    }

    /// Counts `messages` PUBLISH packets of `bytes` written to the car.
    pub(super) fn count_downlink(&self, messages: u64, bytes: usize) {
        self.downlink.set(self.downlink.get().add(messages, bytes));
    }

    /// Asks the connection's task to answer an inspection.
    #[must_use = "a parked connection has no task to wake: the lot must serve it"]
    pub(super) fn want_inspection(&self) -> Woke {
        if self.inspect.replace(true) {
            Woke::Task
        } else {
            self.wake()
        }
    }

    /// Wakes the connection's task; a parked connection has none, and the
    /// caller has the shard's lot serve it ([`super::table::ConnectionTable`]
    /// does).
    #[must_use = "a parked connection has no task to wake: the lot must serve it"]
    pub(super) fn wake(&self) -> Woke {
        if let Some(waker) = self.waker.take() {
            waker.wake();
            Woke::Task
        } else if self.is_parked() {
            Woke::Parked
        } else {
            Woke::Task
        }
    }

    /// The connection's task ends and its wake-ups go to the shard's lot.
    pub(super) fn park(&self, parked: Parked) {
        drop(self.waker.take());
        *self.parked.borrow_mut() = Some(parked);
    }

    /// The parked connection, to serve (it is no longer parked).
    pub(super) fn unpark(&self) -> Option<Parked> {
        self.parked.borrow_mut().take()
    }

    /// `look` at the parked connection, if it is parked.
    pub(super) fn parked_with<T>(&self, look: impl FnOnce(&Parked) -> T) -> Option<T> {
        self.parked.borrow().as_ref().map(look)
    }

    pub(super) fn is_parked(&self) -> bool {
        self.parked.borrow().is_some()
    }

    /// The task to wake on the connection's next event.
    pub(super) fn listen(&self, waker: &Waker) {
        let stored = self
            .waker
            .take()
            .filter(|stored| stored.will_wake(waker))
            .unwrap_or_else(|| waker.clone());
        self.waker.set(Some(stored));
    }

    /// Whether something waits to be handled (a close order, a deadline
    /// due, downlink output, an inspection): a connection with any of
    /// these is not parked.
    pub(super) fn pending(&self) -> bool {
        self.reason.get().is_some() || self.due.get() || self.queued.get() > 0 || self.inspect.get()
    }

    /// Called by the sweeper: the session deadline has passed.
    #[must_use = "a parked connection has no task to wake: the lot must serve it"]
    pub(super) fn deadline_passed(&self) -> Woke {
        if self.due.replace(true) {
            Woke::Task
        } else {
            self.wake()
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
            } else if self.inspect.replace(false) {
                Poll::Ready(Wake::Inspect)
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
