//! The cars' sockets and the shard's listeners, as plain non-blocking
//! file descriptors: bound, accepted, read and written with one system
//! call each and never waited on here. When one would block, its task
//! waits on the connection's [`Control`], which the shard's readiness
//! task ([`super::readiness`]) wakes on the socket's next event.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use super::control::Control;

/// Connections a listener holds that the shard has not accepted yet: a
/// connect storm beyond the shard's accept rate waits here, and what does
/// not fit is dropped (the car retries its SYN after a second or more).
/// The kernel caps it at `net.core.somaxconn` (4096 by default since Linux
/// 5.4; `deploy/sysctl` sets it): see [`somaxconn`]. One listener of 4096
/// per shard took a storm of 8,000 connects with fewer overflows than the
/// four listeners of 1024 it replaces (3,498 against 3,893, median of
/// three runs, BENCHMARKS.md): SO_REUSEPORT spreads connections over four
/// queues unevenly, and one fills while another has room.
pub(crate) const BACKLOG: i32 = 4096;

/// Binds a listening socket that other shards (and processes) may bind
/// too (SO_REUSEPORT), non-blocking, with a backlog of [`BACKLOG`].
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
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The kernel's cap on a listen backlog (`net.core.somaxconn` of this
/// network namespace), if it can be read.
pub(crate) fn somaxconn() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
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
/// would block, the connection's task waits on its [`Control`], which the
/// shard's readiness task wakes when the socket's next event comes.
#[derive(Debug)]
pub(super) struct CarSocket {
    socket: std::net::TcpStream,
    control: Rc<Control>,
}

impl CarSocket {
    pub(super) fn new(socket: std::net::TcpStream, control: Rc<Control>) -> Self {
        Self { socket, control }
    }

    /// The socket, for parking.
    pub(super) fn into_inner(self) -> std::net::TcpStream {
        self.socket
    }

    /// Reads what the socket has now (`None`: nothing), waiting for
    /// nothing: for the lot, which serves a parked car without a task.
    pub(super) fn read_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        try_read(&self.socket, buf)
    }

    /// Writes what the socket takes now (`None`: no room).
    pub(super) fn send_now(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        try_send(&self.socket, buf)
    }

    /// A non-blocking read's or write's answer as a poll: when the socket
    /// would block, the task waits for the next event on it (or anything
    /// else its control is woken for).
    fn poll(&self, cx: &Context<'_>, done: io::Result<Option<usize>>) -> Poll<io::Result<usize>> {
        match done {
            Ok(Some(bytes)) => Poll::Ready(Ok(bytes)),
            Ok(None) => {
                self.control.listen(cx.waker());
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
