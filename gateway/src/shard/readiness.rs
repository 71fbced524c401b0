//! The shard's sockets and how it learns they are ready: one epoll set per
//! shard, edge-triggered, that every car's socket and every listener joins
//! once, for its whole life.
//!
//! Why not glommio's own sockets: a glommio `TcpStream` keeps an io_uring
//! poll request (a `Source`, about 500 bytes of heap) armed for each
//! connection that waits to read, which is every quiet car, all the time.
//! Here a quiet car costs the kernel one epoll entry and this process
//! nothing; the shard's one readiness task ([`super::lot`]) collects the
//! ready sockets and wakes the task that waits on each, or resumes a parked
//! connection.
//!
//! The epoll set itself is watched through glommio, so the shard still
//! sleeps in one place (io_uring) and stays one thread: glommio has no
//! public "wait until this descriptor is readable", but a glommio
//! `TcpStream` made over a descriptor arms io_uring's POLL_ADD on it at
//! once, and its first read after that poll completes fails (`ENOTSOCK`,
//! an epoll descriptor is no socket). That failure is the wake-up.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, future};
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::signal::Signal;

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
    pub(super) fn register(&self, socket: impl AsFd, token: u64) -> io::Result<()> {
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
    pub(super) fn register_listener(&self, listener: &TcpListener) -> io::Result<usize> {
        let index = {
            let mut listeners = self.listeners.borrow_mut();
            listeners.push((false, None));
            listeners.len() - 1
        };
        self.register(listener, LISTENER + index as u64)?;
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

/// Binds a listening socket that other shards (and processes) may bind
/// too (SO_REUSEPORT), non-blocking, with a backlog of 1024.
pub(super) fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let domain = if address.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts one connection, non-blocking (`Ok(None)`: none waiting).
pub(super) fn accept(listener: &TcpListener) -> io::Result<Option<std::net::TcpStream>> {
    use rustix::net::SocketFlags;
    match rustix::net::accept_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC) {
        Ok(fd) => Ok(Some(std::net::TcpStream::from(fd))),
        Err(Errno::AGAIN) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Reads what `socket` has now (`Ok(None)`: nothing yet).
pub(super) fn try_read(socket: &std::net::TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::recv(socket, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((read, _)) => return Ok(Some(read)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Writes what `socket` takes of `buf` now (`Ok(None)`: no room yet).
fn try_send(socket: &std::net::TcpStream, buf: &[u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::send(socket, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
            Ok(written) => return Ok(Some(written)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Writes as much of `bytes` as `socket` takes now, removing it; whether
/// all of it went (no room, or an error, leaves the rest for the task's
/// write to wait for room or meet the error again).
pub(super) fn try_write(socket: &std::net::TcpStream, bytes: &mut bytes::BytesMut) -> bool {
    while !bytes.is_empty() {
        match try_send(socket, bytes) {
            Ok(Some(written)) => bytes::Buf::advance(bytes, written.min(bytes.len())),
            Ok(None) | Err(_) => return false,
        }
    }
    true
}

/// A car's plain TCP socket, read and written without blocking; when it
/// would block, the connection's task waits on its [`Signal`], which the
/// shard's readiness task wakes when the socket's next event comes.
#[derive(Debug)]
pub(super) struct CarSocket {
    socket: std::net::TcpStream,
    signal: Rc<Signal>,
}

impl CarSocket {
    pub(super) fn new(socket: std::net::TcpStream, signal: Rc<Signal>) -> Self {
        Self { socket, signal }
    }

    /// The socket, for parking.
    pub(super) fn into_inner(self) -> std::net::TcpStream {
        self.socket
    }

    /// A non-blocking read's or write's answer as a poll: when the socket
    /// would block, the task waits for the next event on it (or anything
    /// else its signal is woken for).
    fn poll(&self, cx: &Context<'_>, done: io::Result<Option<usize>>) -> Poll<io::Result<usize>> {
        match done {
            Ok(Some(bytes)) => Poll::Ready(Ok(bytes)),
            Ok(None) => {
                self.signal.listen(cx.waker());
                Poll::Pending
            }
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl AsyncRead for CarSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.poll(cx, try_read(&self.socket, buf))
    }
}

impl AsyncWrite for CarSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll(cx, try_send(&self.socket, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(std::net::Shutdown::Write))
    }
}
