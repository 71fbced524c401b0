//! Parked connections: a quiet car without a task.
//!
//! A car between two publishes needs its socket, its session and who it
//! is; it needs no task (a task's future is over 800 bytes, and glommio
//! adds its header). When a plain TCP connection has nothing half read,
//! nothing to write and nothing to read ([`Connection::may_park`]), its
//! task hands those three to its control block and ends. Whatever wakes
//! it then (its socket's next event, a close order, its keep-alive
//! deadline, a downlink message) finds no task and asks the shard's lot
//! ([`Lot`]); the readiness task serves the lot's connections
//! ([`serve`]). What a quiet car mostly sends (a PUBLISH, a PINGREQ, a
//! SUBSCRIBE, even the CONNECT) is handled there without a task; anything
//! more goes on in a new one. A TLS connection parks too, between records
//! (nothing half received, nothing to write: [`super::tls_car`]), keeping
//! its TLS session; the lot reads its records into the shard's buffer,
//! decrypts and serves them the same way ([`serve_tls`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use codec::Publish;
use futures_lite::future;

use super::Shard;
use super::connection::Connection;
use super::dispatch::Handled;
use super::input::READ_BUSY;
use super::socket;
use super::socket::CarSocket;
use super::task;
use super::tls_car::{TlsCar, TlsSession};
use crate::session::{CloseReason, Session};

/// A connection without a task, kept in its control block.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) socket: std::net::TcpStream,
    pub(super) session: Session,
    pub(super) peer: ParkedPeer,
}

/// Who a parked connection's car is: a plain TCP connection has its
/// address only (no proven identity: a trusted proxy's comes with a PROXY
/// header, and such connections do not park); a TLS connection keeps its
/// TLS session, which holds its address and the identity its certificate
/// proved. One or the other in the same 32 bytes (`SocketAddr`'s tag
/// leaves room for the box), so that plain cars pay nothing for TLS.
#[derive(Debug)]
pub(super) enum ParkedPeer {
    Plain(std::net::SocketAddr),
    Tls(Box<TlsSession>),
}

/// What the readiness task is asked to look at besides the epoll set:
/// parked connections woken (a close order, a deadline, downlink output),
/// and the shard's state (a stop began).
#[derive(Debug, Default)]
pub(super) struct Lot {
    woken: RefCell<Vec<u64>>,
    look: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Lot {
    /// Asks the readiness task to serve parked connection `id`.
    pub(super) fn serve_later(&self, id: u64) {
        self.woken.borrow_mut().push(id);
        self.wake_tender();
    }

    /// Asks the readiness task to look at the shard's state (a stop began).
    pub(super) fn look(&self) {
        self.look.set(true);
        self.wake_tender();
    }

    fn wake_tender(&self) {
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The parked connections to serve now.
    pub(super) fn take(&self) -> Vec<u64> {
        self.woken.take()
    }

    /// Completes when the readiness task was asked something.
    pub(super) fn asked(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(|cx| {
            if self.woken.borrow().is_empty() && !self.look.replace(false) {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}

/// Where a parked connection's new task starts: what the lot read and
/// handled for it and could not finish without waiting.
#[derive(Debug, Default)]
pub(super) struct Handover {
    /// Bytes read and not handled yet (a partial packet, or the packets
    /// after a PUBLISH that waits for room).
    pub(super) input: BytesMut,
    /// Replies not written yet.
    pub(super) output: BytesMut,
    /// A PUBLISH that found librdkafka's queue full.
    pub(super) blocked: Option<Publish>,
    /// The session closed (written what `output` holds first).
    pub(super) close: Option<CloseReason>,
}

/// Serves parked connection `id`, if it is still parked: its socket had
/// an event, or its control block a wake-up. Read, handled, the short
/// reply written, and the connection parked again; or, when that is not
/// all it takes, on in a new task: a close order, a deadline or downlink
/// output; a partial packet or a full read; a reply the socket does not
/// take at once; a full producer queue; a car beyond its uplink limit; a
/// close.
pub(super) fn serve(shard: &Rc<Shard>, id: u64) {
    let Some(control) = shard.table.control(id) else {
        return;
    };
    let Some(parked) = control.unpark() else {
        return;
    };
    let (mut connection, socket, tls) = Connection::unparked(shard.clone(), control, parked);
    if let Some(tls) = tls {
        let car = TlsCar::from_parts(CarSocket::new(socket, connection.control.clone()), tls);
        return serve_tls(shard, connection, car);
    }
    // Told to close (a drain, a shutdown, a takeover): what the car sent
    // before is read and handled first, as its task would have read it
    // already; a drain loses nothing the car had sent when it was told.
    let control = &connection.control;
    let closing = control.reason.get().is_some();
    let here =
        (closing || !control.pending()) && !shard.flow.is_paused() && shard.producer.has_room();
    if !here {
        return spawn_task(connection, socket, Handover::default());
    }
    let mut input = BytesMut::zeroed(READ_BUSY);
    let read = match socket::try_read(&socket, &mut input) {
        Ok(None) if control.pending() => {
            return spawn_task(connection, socket, Handover::default());
        }
        // The event was not for reading (room to write, say).
        Ok(None) => return connection.park(socket, None),
        Ok(Some(read)) if read > 0 => read,
        // The end or an error: the task reads again, and meets it.
        _ => return spawn_task(connection, socket, Handover::default()),
    };
    input.truncate(read);
    let mut handover = Handover {
        input,
        ..Handover::default()
    };
    if read == READ_BUSY {
        // A busy car (there may be more): its task reads on.
        return spawn_task(connection, socket, handover);
    }
    match connection.handle(&mut handover.input, &mut handover.output, Instant::now()) {
        Handled::Done
            if connection.may_park(&handover.input)
                && socket::try_write(&socket, &mut handover.output) =>
        {
            shard
                .table
                .set_deadline(&connection.control, connection.session.deadline());
            connection.park(socket, None);
        }
        handled => spawn_task(connection, socket, unfinished(handled, handover)),
    }
}

/// What a task takes on from a connection the lot could not finish with:
/// `handover` with the close or the PUBLISH that waits for room.
fn unfinished(handled: Handled, mut handover: Handover) -> Handover {
    match handled {
        Handled::Close(reason) => handover.close = Some(reason),
        Handled::Full(publish) => handover.blocked = Some(publish),
        // A held PUBLISH stays in the input: the task handles it first,
        // and is held there.
        Handled::Done | Handled::Hold(_) => {}
    }
    handover
}

/// [`serve`] for a parked TLS car: its records are read into the shard's
/// buffer and decrypted, the whole packets in them handled, the reply
/// sealed and written, and the car parked again; or on in a new task, as
/// for a plain car, and also when a record arrived cut.
fn serve_tls(shard: &Rc<Shard>, mut connection: Connection, mut car: TlsCar<CarSocket>) {
    let control = &connection.control;
    let closing = control.reason.get().is_some();
    let here =
        (closing || !control.pending()) && !shard.flow.is_paused() && shard.producer.has_room();
    if !here {
        return spawn_tls_task(connection, car, Handover::default());
    }
    let read = car.receive(|socket, buf| match socket.read_now(buf) {
        Ok(Some(read)) => Poll::Ready(Ok(read)),
        Ok(None) => Poll::Pending,
        Err(error) => Poll::Ready(Err(error)),
    });
    let read = match read {
        Poll::Pending if control.pending() => {
            return spawn_tls_task(connection, car, Handover::default());
        }
        // The event was not for reading (room to write, say).
        Poll::Pending => return park_tls(connection, car),
        Poll::Ready(Ok(read)) if read > 0 => read,
        // The end or an error: the task reads again, and meets it.
        Poll::Ready(_) => return spawn_tls_task(connection, car, Handover::default()),
    };
    let mut handover = Handover {
        input: car.take_plain(),
        ..Handover::default()
    };
    if TlsCar::<CarSocket>::filled(read) || !car.is_quiet() {
        // A busy car, or a record cut by the read: its task reads on.
        return spawn_tls_task(connection, car, handover);
    }
    match connection.handle(&mut handover.input, &mut handover.output, Instant::now()) {
        Handled::Done if connection.may_park(&handover.input) => {
            if !handover.output.is_empty() {
                if car.seal(&handover.output).is_err() {
                    let close = Some(connection.session.close(CloseReason::Io));
                    let handover = Handover {
                        close,
                        ..Handover::default()
                    };
                    return spawn_tls_task(connection, car, handover);
                }
                handover.output.clear();
            }
            match car.send(|socket, bytes| socket.send_now(bytes)) {
                Ok(true) => {
                    shard
                        .table
                        .set_deadline(&connection.control, connection.session.deadline());
                    park_tls(connection, car);
                }
                // What the socket did not take, the task writes first.
                Ok(false) => spawn_tls_task(connection, car, Handover::default()),
                Err(_) => {
                    let close = Some(connection.session.close(CloseReason::Io));
                    spawn_tls_task(
                        connection,
                        car,
                        Handover {
                            close,
                            ..Handover::default()
                        },
                    );
                }
            }
        }
        handled => spawn_tls_task(connection, car, unfinished(handled, handover)),
    }
}

/// Parks a TLS car the lot served (quiet: nothing held).
fn park_tls(connection: Connection, car: TlsCar<CarSocket>) {
    match car.into_parts() {
        Ok((socket, session)) => connection.park(socket.into_inner(), Some(session)),
        Err(car) => spawn_tls_task(connection, car, Handover::default()),
    }
}

fn spawn_tls_task(connection: Connection, car: TlsCar<CarSocket>, handover: Handover) {
    count_unparked(&connection);
    task::respawn_tls(connection, car, handover);
}

/// Gives a parked connection a task again, starting from `handover`.
fn spawn_task(connection: Connection, socket: std::net::TcpStream, handover: Handover) {
    count_unparked(&connection);
    task::respawn(connection, socket, handover);
}

fn count_unparked(connection: &Connection) {
    connection
        .shard
        .metrics
        .connections_parked
        .fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    /// A parked car is its control block (in the table) and nothing else
    /// of this process's: the parked state lives inside it. Growing either
    /// grows every quiet car; `tests/idle_memory.rs` measures the whole.
    /// The control block is allocated in an `Rc` (16 bytes more), and
    /// glibc's chunks are 8 bytes over the request rounded up to 16: up to
    /// 312 bytes it takes a 336-byte chunk (the uplink allowance's 16 bytes
    /// fit there, with the keep-alive's grace kept in a `u32`).
    #[test]
    fn a_parked_connection_stays_small() {
        assert!(
            size_of::<super::Parked>() <= 136,
            "{}",
            size_of::<super::Parked>()
        );
        assert!(
            size_of::<super::super::control::Control>() <= 312,
            "{}",
            size_of::<super::super::control::Control>()
        );
    }
}
