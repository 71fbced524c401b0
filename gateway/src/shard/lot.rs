//! Parked connections: a quiet car without a task.
//!
//! A car between two publishes needs its socket, its session and who it
//! is; it needs no task (a task's future is over 800 bytes, and glommio
//! adds its header). When a plain TCP connection has nothing half read,
//! nothing to write and nothing to read, its task hands those three to the
//! shard's lot and ends. Its socket's next event (from the shard's epoll
//! set, [`super::readiness`]) is handled here without a task when that is
//! all it takes (a PUBLISH, a PINGREQ, a SUBSCRIBE, even the CONNECT: see
//! [`connection::on_parked`]); anything more, and anything else that would
//! have woken the task (a close order, its keep-alive deadline, a downlink
//! message), resumes the connection in a new task. TLS connections are not
//! parked: their session state is most of what they hold.
//!
//! This module also runs the shard's readiness task, which takes the epoll
//! set's events and wakes (or resumes) the connections they name.

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::timer::sleep;

use super::Shard;
use super::connection;
use super::signal::Signal;
use crate::session::Session;

/// A connection without a task, kept in its [`Signal`]. Only plain-TCP
/// connections park, and they have no proven identity: their peer is
/// their address.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) socket: std::net::TcpStream,
    pub(super) session: Session,
    pub(super) addr: std::net::SocketAddr,
}

/// What the shard's readiness task is asked to look at besides its epoll
/// set.
#[derive(Debug, Default)]
struct Asked {
    /// Parked connections whose signal was woken (a close order, a
    /// deadline, downlink output).
    unparked: Vec<u64>,
    /// The shard's state changed (a stop began).
    looked: bool,
    waker: Option<Waker>,
}

thread_local! {
    /// One shard per thread: glommio's executors are thread-per-core.
    static ASKED: RefCell<Asked> = RefCell::default();
}

/// Tells this thread's readiness task, changing what it is asked with `f`.
fn ask(f: impl FnOnce(&mut Asked)) {
    let waker = ASKED.with(|cell| {
        let mut asked = cell.borrow_mut();
        f(&mut asked);
        asked.waker.take()
    });
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Asks this thread's shard to serve parked connection `id`.
pub(super) fn unpark_later(id: u64) {
    ask(|asked| asked.unparked.push(id));
}

/// Asks the readiness task to look at the shard's state (a stop began).
pub(super) fn wake_tender() {
    ask(|asked| asked.looked = true);
}

/// Completes when the readiness task was asked something.
fn asked() -> impl Future<Output = ()> {
    future::poll_fn(|cx| {
        ASKED.with(|cell| {
            let mut asked = cell.borrow_mut();
            if asked.unparked.is_empty() && !std::mem::take(&mut asked.looked) {
                asked.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    })
}

/// Longest a car's bytes wait in the kernel for the shard to gather more
/// while they come faster than one per this interval: a few milliseconds
/// on an uplink whose goal is 50 ms at p99. A parked car's downlink
/// message or close order waits as long meanwhile.
const COALESCE: Duration = Duration::from_millis(5);

/// The shard's readiness task: takes the epoll set's events, wakes the
/// connections they name and resumes the parked ones, until the shard has
/// stopped.
///
/// Events that come faster than one per [`COALESCE`] are gathered: the
/// task then looks at the epoll set once per tick of the shard's clock
/// (one wake-up of the shard for many cars instead of one each; a wake-up
/// costs this KVM guest more than handling a PUBLISH), for as long as
/// every tick finds some. A tick that finds none returns it to waiting for
/// the next event, so a lone car is served at once.
pub(super) async fn tend(shard: Rc<Shard>) {
    let mut last = Instant::now();
    let mut gathering = false;
    loop {
        let now = Instant::now();
        let since = now.duration_since(last);
        last = now;
        let taken = match shard.readiness.dispatch(|id| shard.table.wake(id)) {
            Ok(taken) => taken,
            Err(error) => {
                tracing::error!(shard = shard.id, %error, "epoll_wait failed");
                sleep(Duration::from_millis(10)).await;
                0
            }
        };
        let ids = ASKED.with(|cell| std::mem::take(&mut cell.borrow_mut().unparked));
        for id in ids {
            resume(&shard, id);
        }
        if shard.finished() {
            return;
        }
        if taken == super::readiness::BATCH {
            // A full batch may have left more: look again first (other
            // tasks run in between when this one has had its share).
            glommio::yield_if_needed().await;
            continue;
        }
        gathering = taken > 0 && (gathering || since < COALESCE) && !shard.stopping.get();
        if gathering {
            // On the shard's clock, so that the poller's acknowledgements
            // are served in the same wake-up.
            shard.tick(COALESCE).await;
            continue;
        }
        let readable = async {
            if let Err(error) = shard.readiness.readable().await {
                tracing::error!(shard = shard.id, %error, "watching the epoll set failed");
                sleep(Duration::from_millis(10)).await;
            }
        };
        let woken = future::or(readable, asked());
        if shard.stopping.get() {
            // Until the last connection is gone, which no event announces.
            future::or(woken, sleep(Duration::from_millis(5))).await;
        } else {
            woken.await;
        }
    }
}

/// Serves parked connection `id`, if it is still parked: without a task
/// when that is enough ([`connection::on_parked`]).
fn resume(shard: &Rc<Shard>, id: u64) {
    let Some(signal) = shard.table.signal(id) else {
        return;
    };
    if let Some(parked) = signal.unpark() {
        connection::on_parked(shard, signal, parked);
    }
}

/// Gives a parked connection a task again, starting from `start`.
pub(super) fn wake(
    shard: &Rc<Shard>,
    signal: Rc<Signal>,
    parked: Parked,
    start: connection::Resume,
) {
    shard
        .metrics
        .connections_parked
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    glommio::spawn_local(connection::resume(signal, parked, start, shard.clone())).detach();
}

#[cfg(test)]
mod tests {
    /// A parked car is its signal (in the table) and nothing else of this
    /// process's: the parked state lives inside the signal. Growing either
    /// grows every quiet car; `tests/idle_memory.rs` measures the whole.
    #[test]
    fn a_parked_connection_stays_small() {
        assert!(
            size_of::<super::Parked>() <= 128,
            "{}",
            size_of::<super::Parked>()
        );
        assert!(
            size_of::<super::Signal>() <= 304,
            "{}",
            size_of::<super::Signal>()
        );
    }
}
