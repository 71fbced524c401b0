//! How the shard learns that its sockets are ready: one epoll set per
//! shard, edge-triggered, that every car's socket and every listener joins
//! once, for its whole life, and the shard's readiness task ([`tend`]),
//! which takes its events and wakes the connections they name (or has the
//! lot serve the parked ones).
//!
//! Why not glommio's own sockets: a glommio `TcpStream` keeps an io_uring
//! poll request (a `Source`, about 500 bytes of heap) armed for each
//! connection that waits to read, which is every quiet car, all the time.
//! Here a quiet car costs the kernel one epoll entry and this process
//! nothing.
//!
//! The epoll set itself is watched through glommio, so the shard still
//! sleeps in one place (io_uring) and stays one thread. glommio has no
//! public "wait until this descriptor is readable"; [`Readiness::readable`]
//! rests on what glommio 0.9.0 does inside (which is why the workspace
//! pins that exact version, and the tests below check the wait alone):
//! `TcpStream::from(socket2::Socket)` arms io_uring's POLL_ADD on the
//! descriptor at once, and `poll_read` does not call `recv` while that poll
//! is pending. When the poll completes (the epoll set has events), the
//! read's `recv` on the epoll descriptor fails with `ENOTSOCK`: that
//! failure is the wake-up. Were a later glommio to `recv` first, the read
//! would fail at once and the shard would spin; the test
//! `the_wait_stays_pending_until_an_event` fails then.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, future};
use glommio::timer::sleep;
use rustix::event::epoll;
use rustix::io::Errno;

use super::{Shard, parked};

/// Tokens at or above this name listeners (`LISTENER + index`); below it,
/// connection ids.
pub(super) const LISTENER: u64 = 1 << 63;
/// Events taken from the kernel per `epoll_wait`.
pub(super) const BATCH: usize = 256;

/// One shard's epoll set, and the tasks waiting on its listeners.
pub(super) struct Readiness {
    epoll: OwnedFd,
    /// Per listener: whether it had an event nobody waited for, and the
    /// waiting acceptor.
    listeners: RefCell<Vec<(bool, Option<Waker>)>>,
    events: RefCell<Vec<epoll::Event>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("epoll", &self.epoll)
            .field("listeners", &self.listeners.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    pub(super) fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            listeners: RefCell::default(),
            events: RefCell::new(Vec::with_capacity(BATCH)),
        })
    }

    /// Adds a socket to the set under `token`, edge-triggered: an event
    /// each time bytes (or room, or the peer's close) arrive, none while
    /// nothing changes. Closing the socket removes it.
    pub(super) fn watch(&self, socket: impl AsFd, token: u64) -> io::Result<()> {
        use epoll::EventFlags as E;
        epoll::add(
            &self.epoll,
            socket,
            epoll::EventData::new_u64(token),
            E::IN | E::OUT | E::RDHUP | E::ET,
        )?;
        Ok(())
    }

    /// Adds a listener; its acceptor waits with [`Readiness::acceptable`].
    pub(super) fn watch_listener(&self, listener: &TcpListener) -> io::Result<usize> {
        let index = {
            let mut listeners = self.listeners.borrow_mut();
            listeners.push((false, None));
            listeners.len() - 1
        };
        self.watch(listener, LISTENER + index as u64)?;
        Ok(index)
    }

    /// Completes when listener `index` has had an event since the last
    /// time (the acceptor then accepts until `EAGAIN`).
    pub(super) fn acceptable(&self, index: usize) -> impl Future<Output = ()> + '_ {
        future::poll_fn(move |cx| {
            let mut listeners = self.listeners.borrow_mut();
            let Some((ready, waker)) = listeners.get_mut(index) else {
                return Poll::Ready(());
            };
            if std::mem::take(ready) {
                Poll::Ready(())
            } else {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Takes the ready tokens without waiting and hands each connection's
    /// to `connection`; listeners' acceptors are woken here.
    pub(super) fn dispatch(&self, mut connection: impl FnMut(u64)) -> io::Result<usize> {
        let mut events = self.events.borrow_mut();
        events.clear();
        epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut *events),
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        )?;
        for event in events.iter() {
            let token = event.data.u64();
            if token >= LISTENER {
                let index = usize::try_from(token - LISTENER).unwrap_or(usize::MAX);
                if let Some((ready, waker)) = self.listeners.borrow_mut().get_mut(index) {
                    *ready = true;
                    if let Some(waker) = waker.take() {
                        waker.wake();
                    }
                }
            } else {
                connection(token);
            }
        }
        Ok(events.len())
    }

    /// Completes when the epoll set has events to take (see the module's
    /// note on how glommio is made to watch it).
    pub(super) async fn readable(&self) -> io::Result<()> {
        let watcher = std::net::TcpStream::from(self.epoll.try_clone()?);
        let mut watcher = glommio::net::TcpStream::from(socket2::Socket::from(watcher));
        match watcher.read(&mut [0u8; 1]).await {
            Err(error) if error.raw_os_error() == Some(Errno::NOTSOCK.raw_os_error()) => Ok(()),
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    }
}

/// The shortest gathering window: a few milliseconds on an uplink whose
/// goal is 50 ms at p99.
const GATHER_MIN: Duration = Duration::from_millis(5);
/// A tick that finds fewer events than this widens the window (up to its
/// bound): its wake-up served too few cars to be worth its cost.
const FEW: usize = 8;
/// A tick that finds more than this narrows it again (down to
/// [`GATHER_MIN`]): the cars come fast enough to fill a shorter one.
const MANY: usize = 64;

/// How long a car's bytes may wait in the kernel for the shard to gather
/// more, while they come faster than one per window. A parked car's
/// downlink message or close order waits as long meanwhile, and the
/// poller serves Kafka's acknowledgements on the same ticks.
///
/// A gathering begins when two wake-ups for events come closer than the
/// bound. The window starts at [`GATHER_MIN`] and doubles, up to its bound
/// (`shard.gather_max_ms`), while ticks find fewer than [`FEW`] events;
/// it halves while they find more than [`MANY`]. At a fleet's rate (a
/// shard's cars publishing a few hundred times a second in all) a shard
/// with a bound above 5 ms thus wakes far less often than once per 5 ms;
/// at 20,000 messages a second it stays at 5 ms.
#[derive(Debug)]
pub(super) struct Gather {
    window: Cell<Duration>,
    /// `shard.gather_max_ms`.
    max: Duration,
}

impl Gather {
    pub(super) fn new(max: Duration) -> Self {
        Self {
            window: Cell::new(GATHER_MIN),
            max: max.max(GATHER_MIN),
        }
    }

    /// The window now.
    pub(super) fn window(&self) -> Duration {
        self.window.get()
    }

    /// Adapts the window to a tick that found `taken` events.
    fn found(&self, taken: usize) {
        let window = self.window.get();
        if taken < FEW {
            self.window.set((window * 2).min(self.max));
        } else if taken > MANY {
            self.window.set((window / 2).max(GATHER_MIN));
        }
    }

    /// Back to the shortest window (the events stopped coming).
    fn reset(&self) {
        self.window.set(GATHER_MIN);
    }
}

/// The shard's readiness task: takes the epoll set's events, wakes the
/// connections they name and has the lot serve the parked ones, until the
/// shard has stopped.
///
/// Events that come faster than one per window ([`Gather`]) are gathered:
/// the task then looks at the epoll set once per tick of the shard's clock
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
        for id in shard.table.lot.take() {
            parked::serve(&shard, id);
        }
        if shard.finished() {
            return;
        }
        if taken == BATCH {
            // A full batch may have left more: look again first (other
            // tasks run in between when this one has had its share).
            glommio::yield_if_needed().await;
            continue;
        }
        if gathering {
            shard.gather.found(taken);
        }
        // Events that come closer than the bound begin a gathering.
        gathering = taken > 0 && (gathering || since < shard.gather.max) && !shard.stopping.get();
        if gathering {
            // On the shard's clock, so that the poller's acknowledgements
            // are served in the same wake-up.
            shard.tick(shard.gather.window()).await;
            continue;
        }
        shard.gather.reset();
        let readable = async {
            if let Err(error) = shard.readiness.readable().await {
                tracing::error!(shard = shard.id, %error, "watching the epoll set failed");
                sleep(Duration::from_millis(10)).await;
            }
        };
        let woken = future::or(readable, shard.table.lot.asked());
        if shard.stopping.get() {
            // Until the last connection is gone, which no event announces.
            future::or(woken, sleep(Duration::from_millis(5))).await;
        } else {
            woken.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// The window doubles to its bound while ticks find few events, halves
    /// while they find many, and starts again at 5 ms.
    #[test]
    fn the_gathering_window_follows_the_traffic() {
        let ms = std::time::Duration::from_millis;
        let gather = super::Gather::new(ms(20));
        assert_eq!(gather.window(), ms(5));
        gather.found(3);
        assert_eq!(gather.window(), ms(10));
        gather.found(7);
        gather.found(1);
        assert_eq!(gather.window(), ms(20), "held at the bound");
        gather.found(30);
        assert_eq!(gather.window(), ms(20), "neither few nor many");
        gather.found(65);
        assert_eq!(gather.window(), ms(10));
        gather.found(500);
        gather.found(500);
        assert_eq!(gather.window(), ms(5), "not below 5 ms");
        gather.found(1);
        gather.reset();
        assert_eq!(gather.window(), ms(5));
        let fixed = super::Gather::new(ms(5));
        fixed.found(1);
        assert_eq!(fixed.window(), ms(5));
    }

    use std::cell::Cell;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::pin::pin;
    use std::time::Duration;

    use futures_lite::future;
    use glommio::timer::sleep;

    use super::Readiness;

    /// Runs `test` on a glommio executor of its own, as a shard runs.
    fn on_executor<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(test)
            .unwrap()
            .join()
            .unwrap();
    }

    /// Whether `wait` completes within `bound`.
    async fn within(wait: impl Future<Output = ()>, bound: Duration) -> bool {
        future::or(
            async {
                wait.await;
                true
            },
            async {
                sleep(bound).await;
                false
            },
        )
        .await
    }

    /// What the shard's sleep rests on (see the module's note): the wait
    /// on the epoll set stays pending while the set has no events, without
    /// being polled again and again (a wait that returned at once would
    /// spin the shard), and completes when a watched socket gets bytes.
    /// An upgrade of glommio that changes how its stream reads fails here.
    #[test]
    fn the_wait_stays_pending_until_an_event() {
        on_executor(|| async {
            let readiness = Readiness::new().unwrap();
            let (car, gateway) = UnixStream::pair().unwrap();
            gateway.set_nonblocking(true).unwrap();
            readiness.watch(&gateway, 7).unwrap();
            // Joining the set reports the socket writable once: taken, as
            // the readiness task takes events before it waits.
            readiness.dispatch(|_| {}).unwrap();

            let polls = Cell::new(0u32);
            let mut wait = pin!(readiness.readable());
            let counted = future::poll_fn(|cx| {
                polls.set(polls.get() + 1);
                wait.as_mut().poll(cx).map(|done| done.unwrap())
            });
            let mut counted = pin!(counted);
            assert!(
                !within(counted.as_mut(), Duration::from_millis(200)).await,
                "the wait completed with no event: the shard would spin"
            );
            assert!(polls.get() <= 2, "polled {} times while idle", polls.get());

            (&car).write_all(b"x").unwrap();
            assert!(
                within(counted.as_mut(), Duration::from_secs(5)).await,
                "the wait missed the event"
            );
            let mut woken = Vec::new();
            readiness.dispatch(|id| woken.push(id)).unwrap();
            assert_eq!(woken, [7]);

            // Taken: the next wait is pending again until the next event.
            assert!(!within(readiness.readable_or_panic(), Duration::from_millis(100)).await);
            (&car).write_all(b"y").unwrap();
            assert!(within(readiness.readable_or_panic(), Duration::from_secs(5)).await);
        });
    }

    impl Readiness {
        async fn readable_or_panic(&self) {
            self.readable().await.unwrap();
        }
    }
}
