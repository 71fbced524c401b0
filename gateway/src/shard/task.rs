//! A connection's task: the one place where a car's bytes meet its
//! stream. It reads into its buffer (sized to what the car sends), has
//! [`Connection::handle`] decode and handle the packets, writes the replies
//! and the downlink messages queued for the car, and waits on the socket
//! and the connection's control block, until the connection closes or,
//! quiet on a plain socket, is parked without a task ([`super::parked`]).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use contract::Outcome;
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::timer::sleep;

use super::Shard;
use super::connection::{Connection, Peer};
use super::control::{Control, Wake};
use super::dispatch::Handled;
use super::input::{READ_IDLE, fit, read_size, read_some};
use super::parked::Handover;
use super::socket::CarSocket;
use super::tls_car::{TlsCar, TlsSession};
use crate::metrics::{Dropped, Limit};
use crate::rate::Held;
use crate::session::CloseReason;

/// A connection's byte stream: the plain socket, or TLS or a PROXY
/// header's rest over it.
pub(super) trait CarStream: AsyncRead + AsyncWrite + Unpin + Sized {
    /// Whether a quiet connection over this stream can be parked now (see
    /// [`super::parked`]): the plain socket, which holds no state of its
    /// own, and TLS over it between records.
    fn parks(&self) -> bool {
        false
    }

    /// The plain socket and, over TLS, the session, to park (`Err`: this
    /// stream does not park now).
    fn into_parked(self) -> Result<(CarSocket, Option<Box<TlsSession>>), Self> {
        Err(self)
    }
}

impl CarStream for CarSocket {
    fn parks(&self) -> bool {
        true
    }

    fn into_parked(self) -> Result<(CarSocket, Option<Box<TlsSession>>), Self> {
        Ok((self, None))
    }
}

/// TLS parks between records, over a stream that parks (not after a
/// PROXY header, whose rest is the stream's).
impl<S: CarStream> CarStream for TlsCar<S> {
    fn parks(&self) -> bool {
        self.is_quiet() && self.io().parks()
    }

    fn into_parked(self) -> Result<(CarSocket, Option<Box<TlsSession>>), Self> {
        if !self.parks() {
            return Err(self);
        }
        let (io, session) = self.into_parts()?;
        match io.into_parked() {
            Ok((socket, _)) => Ok((socket, Some(session))),
            Err(io) => Err(TlsCar::from_parts(io, session)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> CarStream for crate::proxy::Prefixed<S> {}

/// One car's connection, from its first MQTT byte to its close, over any
/// byte stream (a TCP socket, or TLS over one). Its entry in the shard's
/// table (`control`) was made when it was accepted.
pub(super) fn start<S: CarStream>(
    stream: S,
    shard: Rc<Shard>,
    peer: Peer,
    control: Rc<Control>,
) -> impl Future<Output = ()> {
    live(
        stream,
        Connection::open(shard, peer, control),
        Handover::default(),
    )
}

/// A parked connection's new task, on from where the lot left it.
pub(super) fn respawn(connection: Connection, socket: std::net::TcpStream, handover: Handover) {
    let socket = CarSocket::new(socket, connection.control.clone());
    glommio::spawn_local(live(socket, connection, handover)).detach();
}

/// A parked TLS connection's new task, on from where the lot left it:
/// what the lot sealed and the socket did not take goes first.
pub(super) fn respawn_tls(connection: Connection, stream: TlsCar<CarSocket>, handover: Handover) {
    glommio::spawn_local(async move {
        let mut stream = stream;
        // A failed write shows again, as the task's next read or write.
        let _ = stream.flush().await;
        live(stream, connection, handover).await;
    })
    .detach();
}

/// Drives the connection until it closes (and cleans up after it) or is
/// parked.
///
/// A plain function returning an `async move` block rather than an `async
/// fn`: an `async fn` keeps its arguments twice in its state (as captured
/// and as locals), which is 128 bytes more in every connection's task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's state is 128 bytes larger per connection"
)]
fn live<S: CarStream>(
    mut stream: S,
    mut connection: Connection,
    handover: Handover,
) -> impl Future<Output = ()> {
    async move {
        let mut handover = Some(handover);
        let reason = loop {
            let from = handover.take().unwrap_or_default();
            match drive(&mut stream, &mut connection, from).await {
                Driven::Closed(reason) => break reason,
                Driven::Quiet => match stream.into_parked() {
                    Ok((socket, tls)) => {
                        connection
                            .shard
                            .metrics
                            .connections_parked
                            .fetch_add(1, Ordering::Relaxed);
                        connection.park(socket.into_inner(), tls);
                        return;
                    }
                    Err(back) => stream = back,
                },
            }
        };
        let _ = stream.close().await;
        connection.closed(reason);
    }
}

/// How [`drive`] ended.
enum Driven {
    Closed(CloseReason),
    /// Nothing half read, nothing to write, nothing to read: park.
    Quiet,
}

enum Event {
    Read(io::Result<usize>),
    Deadline,
    Output,
    Inspect,
    Close(CloseReason),
}

/// Runs one connection's protocol over its byte stream, from what the lot
/// handed over, until it closes or (a stream that [`CarStream::parks`]) has
/// nothing to do and nothing to read: then it is parked.
async fn drive<S: CarStream>(
    stream: &mut S,
    connection: &mut Connection,
    handover: Handover,
) -> Driven {
    use Driven::Closed;
    let Handover {
        mut input,
        output,
        blocked,
        close,
    } = handover;
    if !output.is_empty()
        && let Err(failed) = write(stream, &output, connection.session_timing().write_timeout).await
    {
        return Closed(connection.session.close(failed));
    }
    drop(output);
    if let Some(reason) = close {
        return Closed(reason);
    }
    if let Some(publish) = blocked
        && let Some(reason) = Box::pin(connection.retry(publish)).await
    {
        return Closed(reason);
    }
    // What the lot read and left: whole packets are handled before any
    // more is read.
    if !input.is_empty()
        && let Some(reason) = Box::pin(process(
            Some(&mut *stream),
            connection,
            &mut input,
            Instant::now(),
            None,
        ))
        .await
    {
        return Closed(reason);
    }
    // The lot reads into a buffer of READ_BUSY bytes: a stalled packet's
    // first bytes are not to keep all of it while the car waits.
    fit(&mut input, false);
    let shard = connection.shard.clone();
    let control = connection.control.clone();
    let packet_timeout = connection.session_timing().packet_timeout;
    let mut busy = false;
    // Since when the packet at the head of `input` has been arriving, and
    // the bytes of it held (in the shard's account): see [`super::partial`].
    let mut partial_since: Option<Instant> = None;
    let mut held = 0;
    let mut progressed = false;
    loop {
        if input.len() != held {
            held = input.len();
            for id in shard.partials.hold(control.id, held) {
                shard.metrics.limited.bump(Limit::PartialBytes);
                shard.table.fire(id, CloseReason::PartialBudget);
            }
        }
        partial_since = match partial_since {
            _ if held == 0 => None,
            Some(since) if !progressed => Some(since),
            _ => Some(Instant::now()),
        };
        progressed = false;
        if !shard.producer.has_room() {
            shard.flow.pause(shard.id, &shard.metrics);
            match future::or(
                async {
                    shard.flow.resumed().await;
                    None
                },
                async { Some(control.closed().await) },
            )
            .await
            {
                Some(reason) => return Closed(connection.session.close(reason)),
                None => connection.session.excuse_pause(Instant::now()),
            }
        }

        let want = read_size(&shard, &input, busy);
        let deadline = connection.session.deadline();
        let packet_due = partial_since.map(|since| since + packet_timeout);
        shard.table.set_deadline(
            &control,
            match (deadline, packet_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        );
        // Nothing half read and nothing to do: one read without waiting,
        // and if the socket has nothing either, the connection waits
        // parked, without this task. (Bytes that came while the task was
        // busy may have had their edge-triggered event already: this read
        // takes them, as no other event would come for them.)
        let event = if stream.parks() && connection.may_park(&input) {
            match future::poll_once(read_some(stream, &mut input, want)).await {
                Some(read) => Event::Read(read),
                None => return Driven::Quiet,
            }
        } else {
            let read = async { Event::Read(read_some(stream, &mut input, want).await) };
            let woken = async {
                match control.wait().await {
                    Wake::Close(reason) => Event::Close(reason),
                    Wake::Deadline => Event::Deadline,
                    Wake::Output => Event::Output,
                    Wake::Inspect => Event::Inspect,
                }
            };
            // The control block first: `or` polls in order, and under
            // steady load the read is always ready, which would starve a
            // close order.
            future::or(pin!(woken), pin!(read)).await
        };
        let now = Instant::now();
        match event {
            Event::Read(Ok(0)) => return Closed(connection.session.close(CloseReason::PeerClosed)),
            // A full first read of READ_IDLE bytes is the normal start of
            // any packet larger than that: not yet a sign of a busy car.
            Event::Read(Ok(read)) => busy = read == want && want > READ_IDLE,
            Event::Read(Err(_)) => return Closed(connection.session.close(CloseReason::Io)),
            Event::Deadline if packet_due.is_some_and(|due| due <= now) => {
                return Closed(connection.session.close(CloseReason::PacketTimeout));
            }
            Event::Deadline => match connection.session.on_deadline(now) {
                Some(reason) => return Closed(reason),
                None => continue,
            },
            Event::Output => {
                if let Err(failed) = write_downlink(stream, connection).await {
                    return Closed(connection.session.close(failed));
                }
                continue;
            }
            Event::Inspect => {
                connection.answer_inspections();
                continue;
            }
            Event::Close(CloseReason::Drained) => {
                return Closed(Box::pin(linger(stream, connection, input)).await);
            }
            Event::Close(reason) => return Closed(connection.session.close(reason)),
        }

        // Boxed: its state (over 300 bytes) would otherwise be part of
        // every connection's task for all the time the car is quiet.
        let before = input.len();
        if let Some(reason) = Box::pin(process(
            Some(&mut *stream),
            connection,
            &mut input,
            now,
            None,
        ))
        .await
        {
            return Closed(reason);
        }
        progressed = input.len() < before;
        fit(&mut input, busy);
    }
}

/// Handles every whole packet in `input` and writes the replies and any
/// downlink messages queued meanwhile; `Some` to close.
///
/// `stream` is `None` once the write side is closed (a drain's
/// [`linger`]): replies are dropped then, and downlink messages stay
/// queued (answered `closed` when the connection ends).
/// `bound` is the linger's end then: a PUBLISH that the car's uplink limit
/// would let through only after it stays unread, and the connection
/// closes (`Drained`).
async fn process<S: AsyncWrite + Unpin>(
    mut stream: Option<&mut S>,
    connection: &mut Connection,
    input: &mut BytesMut,
    mut now: Instant,
    bound: Option<Instant>,
) -> Option<CloseReason> {
    // Replies are rare (CONNACK, PINGRESP, SUBACK): a buffer only for
    // this turn, not held in the task while the car is quiet.
    let mut output = BytesMut::new();
    let closed = loop {
        match connection.handle(input, &mut output, now) {
            Handled::Done => break None,
            Handled::Close(reason) => break Some(reason),
            Handled::Full(publish) => {
                if let Some(reason) = connection.retry(publish).await {
                    break Some(reason);
                }
            }
            Handled::Hold(Held { until, by }) => {
                connection.shard.metrics.limited.bump(by);
                // The replies so far go out before the car is held.
                if let Err(failed) = reply(stream.as_deref_mut(), connection, &mut output).await {
                    return Some(connection.session.close(failed));
                }
                if stream.is_some() {
                    if let Some(reason) = hold(connection, until).await {
                        break Some(reason);
                    }
                } else if bound.is_some_and(|bound| until > bound) {
                    // Lingering, and the car's limit would let this PUBLISH
                    // through only after the linger's bound: it stays
                    // unread, and the connection closes.
                    break Some(CloseReason::Drained);
                } else {
                    // Lingering after a drain's half-close: the close order
                    // is why, and what the car sent is still taken, at its
                    // pace.
                    sleep(until.saturating_duration_since(Instant::now())).await;
                }
                now = Instant::now();
            }
        }
    };
    if let Err(failed) = reply(stream.as_deref_mut(), connection, &mut output).await {
        return Some(connection.session.close(failed));
    }
    drop(output);
    if closed.is_some() {
        return closed;
    }
    if let Some(stream) = stream
        && let Err(failed) = write_downlink(stream, connection).await
    {
        return Some(connection.session.close(failed));
    }
    None
}

/// Writes the replies in `output`, if any, and empties it (they are
/// dropped where the write side is closed: `stream` is `None`).
async fn reply<S: AsyncWrite + Unpin>(
    stream: Option<&mut S>,
    connection: &Connection,
    output: &mut BytesMut,
) -> Result<(), CloseReason> {
    let written = match stream {
        Some(stream) if !output.is_empty() => {
            write(stream, output, connection.session_timing().write_timeout).await
        }
        _ => Ok(()),
    };
    output.clear();
    written
}

/// A drain's close, gentle for what the car has sent: the gateway stops
/// writing (FIN; TLS sends its close_notify first), and the car, seeing
/// its connection end, reconnects elsewhere. Until the car closes its end
/// (or `drain.linger_secs` pass), what it sent before it noticed is still
/// read, handled and produced: closed at once, with bytes unread, the
/// socket would answer them with a reset, and they would be lost.
async fn linger<S: CarStream>(
    stream: &mut S,
    connection: &mut Connection,
    mut input: BytesMut,
) -> CloseReason {
    let shard = connection.shard.clone();
    let _ = stream.close().await;
    let until = Instant::now() + shard.drain_linger;
    // The bound first in the race: a car that sends without pause always
    // has bytes to read, and would otherwise keep the connection (and the
    // drain, and a stop) past it.
    loop {
        let want = read_size(&shard, &input, true);
        let read = future::or(passed(until), async {
            Some(read_some(stream, &mut input, want).await)
        })
        .await;
        // The car's end, an error, or the bound: done.
        let Some(Ok(1..)) = read else {
            break;
        };
        // A PUBLISH the car's uplink limit lets through only after the
        // bound is left unread ([`process`] closes then). Not raced against
        // the bound: a PUBLISH taken and waiting for room in librdkafka's
        // queue is produced, not dropped uncounted.
        if let Some(reason) = Box::pin(process(
            None::<&mut S>,
            connection,
            &mut input,
            Instant::now(),
            Some(until),
        ))
        .await
        {
            // The drain is why the connection ended (a DISCONNECT now is
            // the car's answer to it), unless the car broke a rule.
            return if reason.is_car_fault() {
                reason
            } else {
                CloseReason::Drained
            };
        }
    }
    connection.session.close(CloseReason::Drained)
}

/// `None` once `until` has passed: the losing side of a race against it.
async fn passed<T>(until: Instant) -> Option<T> {
    sleep(until.saturating_duration_since(Instant::now())).await;
    None
}

/// Waits, reading nothing from the car, until its uplink limit lets the
/// PUBLISH at the head of its input through, or a close order comes
/// (`Some`). Downlink messages queued meanwhile are written after.
async fn hold(connection: &mut Connection, until: Instant) -> Option<CloseReason> {
    let wait = until.saturating_duration_since(Instant::now());
    let reason = future::or(
        async {
            sleep(wait).await;
            None
        },
        async { Some(connection.control.closed().await) },
    )
    .await?;
    Some(connection.session.close(reason))
}

/// Writes the downlink messages queued for this connection, if any, and
/// answers their receipts (`closed` when the write fails: the car never
/// read them).
async fn write_downlink<S: AsyncWrite + Unpin>(
    stream: &mut S,
    connection: &Connection,
) -> Result<(), CloseReason> {
    let control = &connection.control;
    let metrics = &connection.shard.metrics;
    let queued_since = control.queued_since.get();
    let (bytes, count) = control.take_output();
    if count == 0 {
        return Ok(());
    }
    let owed = connection.take_owed();
    match write(stream, &bytes, connection.session_timing().write_timeout).await {
        Ok(()) => {
            control.count_downlink(count, bytes.len());
            connection.settle(owed, Outcome::Written);
            metrics
                .downlink_delivered
                .fetch_add(count, Ordering::Relaxed);
            // Each message counts the oldest one's wait: an upper bound.
            let waited = super::control::micros().wrapping_sub(queued_since);
            metrics.downlink_write.record_n(u64::from(waited), count);
            Ok(())
        }
        Err(error) => {
            for _ in 0..count {
                metrics.downlink_dropped.bump(Dropped::Closed);
            }
            connection.settle(owed, Outcome::Closed);
            Err(error)
        }
    }
}

/// Writes `bytes` and flushes them (TLS holds what it encrypted until a
/// flush; on plain TCP the flush does nothing), within `timeout`: a car
/// that takes nothing for that long stopped reading
/// ([`CloseReason::WriteStall`]); any other failure is
/// [`CloseReason::Io`].
async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), CloseReason> {
    let written = async {
        let done = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        done.await.map_err(|_: io::Error| CloseReason::Io)
    };
    // `or` polls the write first: the timer is made only when the write
    // has to wait for room.
    let stalled = async {
        sleep(timeout).await;
        Err(CloseReason::WriteStall)
    };
    future::or(written, stalled).await
}
