//! One car's connection, from accept to close: the one place where bytes
//! meet sockets. The task reads into its buffer, decodes in a loop, feeds
//! the [`Session`], applies the CONNECT and PUBLISH policy (takeover,
//! Kafka's availability, topic mapping), hands records to the shard's
//! producer and writes what the session asks.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use codec::{ConnectReturnCode, Publish};
use contract::{End, Outcome, SessionRecord};
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::timer::sleep;
use rustls::HandshakeKind;

use super::lot::{self, Parked};
use super::readiness::{self, CarSocket};
use super::signal::{Signal, Wake};
use super::{Door, POLL_INTERVAL, Shard};
use crate::kafka::SendError;
use crate::mapping::Unmapped;
use crate::metrics::bump;
use crate::registry::Holder;
use crate::session::{CloseReason, Session, Step};
use crate::tls;

/// Bytes asked for when the car has been quiet: the buffer is held while
/// the read waits, and most connections wait most of the time. A small
/// packet arrives whole in the next read, once its fixed header says how
/// many bytes it needs.
const READ_IDLE: usize = 32;
/// Bytes asked for while reads come back full (a busy car).
const READ_BUSY: usize = 4096;
/// Most bytes read at once for a large partial packet.
const READ_MAX: usize = 64 * 1024;
/// A car that does not take what we send within this time is dropped.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is at the other end, as far as the listener knows before the first
/// MQTT byte: carried to the CONNECT decision and into the close log.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The car's address (the PROXY header's source where a proxy sent one).
    pub(crate) addr: std::net::SocketAddr,
    /// The car's proven identity (from its client certificate or a trusted
    /// proxy); when present, the CONNECT's client id must match it.
    pub(crate) identity: Option<Box<str>>,
}

/// A connection's byte stream: the plain socket, or TLS or a PROXY
/// header's rest over it.
pub(super) trait CarStream: AsyncRead + AsyncWrite + Unpin + Sized {
    /// Whether a quiet connection over this stream is parked (see
    /// [`super::lot`]): only the plain socket, which holds no state of its
    /// own.
    const PARKS: bool = false;

    /// The plain socket, to park (`Err`: this stream is not one).
    fn into_socket(self) -> Result<CarSocket, Self> {
        Err(self)
    }
}

impl CarStream for CarSocket {
    const PARKS: bool = true;

    fn into_socket(self) -> Result<CarSocket, Self> {
        Ok(self)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> CarStream for futures_rustls::server::TlsStream<S> {}

impl<S: AsyncRead + AsyncWrite + Unpin> CarStream for crate::proxy::Prefixed<S> {}

/// A connection on a listener that expects a PROXY header: the source
/// checked against the trusted networks, the header read (bounded by the
/// connect timeout), then TLS or MQTT over what follows it.
pub(super) async fn proxied(
    stream: CarSocket,
    shard: Rc<Shard>,
    door: Rc<Door>,
    peer: Peer,
    signal: Rc<Signal>,
) {
    let Some((stream, peer)) = proxy_header(stream, &shard, &door, peer).await else {
        shard.table.close(signal.id, None);
        return;
    };
    if door.tls.is_some() {
        tls(stream, shard, door, peer, signal).await;
    } else {
        connection(stream, shard, peer, signal).await;
    }
}

/// Reads and checks the PROXY header; `None` when the connection closes.
async fn proxy_header(
    mut stream: CarSocket,
    shard: &Shard,
    door: &Door,
    mut peer: Peer,
) -> Option<(crate::proxy::Prefixed<CarSocket>, Peer)> {
    let proxy = door.listener.proxy.as_ref()?;
    if !crate::proxy::trusted(&proxy.trusted_networks, peer.addr.ip()) {
        shard.metrics.proxy_header("untrusted_source");
        tracing::info!(shard = shard.id, peer = %peer.addr,
            "closed: PROXY header from a network not in trusted_networks");
        return None;
    }
    let header = async { Some(crate::proxy::read_header(&mut stream).await) };
    let timeout = async {
        sleep(shard.timing.connect_timeout).await;
        None
    };
    let (proxied, rest) = match future::or(header, timeout).await {
        Some(Ok(read)) => read,
        Some(Err(error)) => {
            shard.metrics.proxy_header("malformed");
            tracing::info!(shard = shard.id, peer = %peer.addr, ?error,
                "closed: no valid PROXY header");
            return None;
        }
        None => {
            shard.metrics.proxy_header("timeout");
            return None;
        }
    };
    match proxied.source {
        Some(source) => {
            shard.metrics.proxy_header("proxied");
            peer.addr = source;
        }
        // The proxy's own connection (a health check): its address stays.
        None => shard.metrics.proxy_header("local"),
    }
    if proxy.identity_from_proxy {
        let Some(cn) = proxied.verified_cn else {
            shard.metrics.proxy_header("no_identity");
            tracing::info!(shard = shard.id, peer = %peer.addr,
                "closed: the PROXY header names no verified client certificate");
            return None;
        };
        peer.identity = Some(door.listener.bound_client_id(&cn).into());
    }
    Some((crate::proxy::Prefixed::new(rest, stream), peer))
}

/// A connection on a TLS listener: the handshake on this shard, bounded by
/// the connect timeout, the car's identity from its verified certificate,
/// then the car's connection over TLS.
pub(super) async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shard: Rc<Shard>,
    door: Rc<Door>,
    peer: Peer,
    signal: Rc<Signal>,
) {
    match handshake(stream, &shard, &door, peer).await {
        Some((stream, peer)) => connection(stream, shard, peer, signal).await,
        None => shard.table.close(signal.id, None),
    }
}

/// The TLS handshake and the identity check; `None` when the connection
/// closes.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shard: &Shard,
    door: &Door,
    mut peer: Peer,
) -> Option<(futures_rustls::server::TlsStream<S>, Peer)> {
    let terminator = door.tls.as_ref()?;
    let loaded = terminator.current();
    let acceptor = futures_rustls::TlsAcceptor::from(loaded.config.clone());
    let handshake = async { Some(acceptor.accept(stream).await) };
    let timeout = async {
        sleep(shard.timing.connect_timeout).await;
        None
    };
    let stream = match future::or(handshake, timeout).await {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => {
            let label = tls::failure_label(&error);
            shard.metrics.handshake(label);
            tracing::debug!(shard = shard.id, peer = %peer.addr, %error, reason = label,
                "TLS handshake failed");
            return None;
        }
        None => {
            shard.metrics.handshake("timeout");
            tracing::debug!(shard = shard.id, peer = %peer.addr, "TLS handshake timed out");
            return None;
        }
    };
    let session = stream.get_ref().1;
    if let Some(leaf) = session.peer_certificates().and_then(|chain| chain.first()) {
        match loaded.admit(leaf, terminator.identity_source()) {
            Ok(identity) => peer.identity = Some(door.listener.bound_client_id(&identity).into()),
            Err(refused) => {
                shard.metrics.handshake(refused);
                tracing::info!(shard = shard.id, peer = %peer.addr, reason = refused,
                    source = ?terminator.identity_source(),
                    "closed: the certificate is revoked or names no identity");
                return None;
            }
        }
    }
    drop(loaded);
    shard.metrics.handshake(match session.handshake_kind() {
        Some(HandshakeKind::Resumed) => "resumed",
        _ => "full",
    });
    Some((stream, peer))
}

/// One car's connection, from its first MQTT byte to its close, over any
/// byte stream (a TCP socket, or TLS over one). The connection's entry in
/// the shard's table (`signal`) was made when it was accepted.
pub(super) fn connection<S: CarStream>(
    stream: S,
    shard: Rc<Shard>,
    peer: Peer,
    signal: Rc<Signal>,
) -> impl Future<Output = ()> {
    if shard.stopping.get() {
        // Accepted just as the shutdown began: close it with the others.
        signal.fire(CloseReason::Shutdown);
    }
    bump(&shard.metrics.connections_accepted);
    shard
        .metrics
        .connections_open
        .fetch_add(1, Ordering::Relaxed);
    let session = Session::new(shard.timing, Instant::now());
    live(stream, session, peer, signal, shard, Resume::default())
}

/// Where a parked connection's new task starts: what the lot read and
/// handled for it and could not finish without waiting.
#[derive(Debug, Default)]
pub(super) struct Resume {
    /// Bytes read and not handled yet (a partial packet, or the packets
    /// after a PUBLISH that waits for room).
    input: BytesMut,
    /// Replies not written yet.
    output: BytesMut,
    /// A PUBLISH that found librdkafka's queue full.
    blocked: Option<Publish>,
    /// The session closed (written what `output` holds first).
    close: Option<CloseReason>,
}

/// A parked connection's new task: on from where it was parked.
pub(super) fn resume(
    signal: Rc<Signal>,
    parked: Parked,
    start: Resume,
    shard: Rc<Shard>,
) -> impl Future<Output = ()> {
    let socket = CarSocket::new(parked.socket, signal.clone());
    let peer = Peer {
        addr: parked.addr,
        identity: None,
    };
    live(socket, parked.session, peer, signal, shard, start)
}

/// A parked connection's socket had an event (or its signal a wake-up).
/// What a quiet car mostly sends (a PUBLISH, a PINGREQ, a SUBSCRIBE) is
/// handled here, without a task: read, handled, the short reply written,
/// and the connection parked again. Anything more goes on in a new task:
/// a close order, a deadline or downlink output; a partial packet or a
/// full read; a reply the socket does not take at once; a full producer
/// queue; a close.
pub(super) fn on_parked(shard: &Rc<Shard>, signal: Rc<Signal>, mut parked: Parked) {
    // Told to close (a drain, a shutdown, a takeover): what the car sent
    // before is read and handled first, as its task would have read it
    // already; a drain loses nothing the car had sent when it was told.
    let closing = signal.reason.get().is_some();
    let quick =
        (closing || !signal.pending()) && !shard.flow.is_paused() && shard.producer.has_room();
    if !quick {
        lot::wake(shard, signal, parked, Resume::default());
        return;
    }
    let mut input = BytesMut::zeroed(READ_BUSY);
    let read = match readiness::try_read(&parked.socket, &mut input) {
        Ok(None) if signal.pending() => {
            return lot::wake(shard, signal, parked, Resume::default());
        }
        // The event was not for reading (room to write, say).
        Ok(None) => return signal.park(parked),
        Ok(Some(read)) if read > 0 => read,
        // The end or an error: the task reads again, and meets it.
        _ => return lot::wake(shard, signal, parked, Resume::default()),
    };
    input.truncate(read);
    let mut start = Resume {
        input,
        ..Resume::default()
    };
    if read == READ_BUSY {
        // A busy car (there may be more): its task reads on.
        return lot::wake(shard, signal, parked, start);
    }
    let now = Instant::now();
    let peer = Peer {
        addr: parked.addr,
        identity: None,
    };
    let handled = handle_input(
        shard,
        &signal,
        &mut parked.session,
        &peer,
        &mut start.input,
        &mut start.output,
        now,
        Heed::Later,
    );
    match handled {
        Handled::Done
            if start.input.is_empty()
                && !signal.pending()
                && readiness::try_write(&parked.socket, &mut start.output) =>
        {
            shard.table.set_deadline(&signal, parked.session.deadline());
            signal.park(parked);
        }
        Handled::Done => lot::wake(shard, signal, parked, start),
        Handled::Close(reason) => {
            start.close = Some(reason);
            lot::wake(shard, signal, parked, start);
        }
        Handled::Full(publish) => {
            start.blocked = Some(publish);
            lot::wake(shard, signal, parked, start);
        }
    }
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
    mut session: Session,
    peer: Peer,
    signal: Rc<Signal>,
    shard: Rc<Shard>,
    start: Resume,
) -> impl Future<Output = ()> {
    async move {
        let mut start = Some(start);
        let reason = loop {
            let from = start.take().unwrap_or_default();
            match drive(&mut stream, &shard, &signal, &mut session, &peer, from).await {
                Driven::Closed(reason) => break reason,
                Driven::Quiet => match stream.into_socket() {
                    Ok(socket) => {
                        shard
                            .metrics
                            .connections_parked
                            .fetch_add(1, Ordering::Relaxed);
                        signal.park(Parked {
                            socket: socket.into_inner(),
                            session,
                            addr: peer.addr,
                        });
                        return;
                    }
                    Err(back) => stream = back,
                },
            }
        };
        let id = signal.id;
        let _ = stream.close().await;

        shard.metrics.close(reason.label());
        shard
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        shard.table.close(id, session.client_id());
        let (_, unsent) = signal.take_output();
        for _ in 0..unsent {
            shard.metrics.drop_downlink("closed");
        }
        shard.settle(shard.take_owed(&signal), Outcome::Closed);
        if let Some(client_id) = session.client_id() {
            shard.registry.release(
                client_id,
                Holder {
                    shard: shard.id,
                    connection: id,
                },
            );
            if let (Some(downlink), Some(session_id)) = (&shard.downlink, signal.session.get()) {
                let record = SessionRecord::ended(session_id, downlink.slot(), End::Closed);
                shard.register(client_id, &record);
            }
        }
        let client = session
            .client_id()
            .map(|c| c.to_string())
            .unwrap_or_default();
        match reason {
            CloseReason::Malformed(error) => {
                tracing::info!(shard = shard.id, client, peer = %peer.addr, %error,
                    "closed: malformed packet");
            }
            reason if reason.is_car_fault() => {
                tracing::info!(shard = shard.id, client, peer = %peer.addr,
                    reason = reason.label(), "closed");
            }
            reason => tracing::debug!(shard = shard.id, client, reason = reason.label(), "closed"),
        }
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
    Signal(CloseReason),
}

/// Runs one connection's protocol over its byte stream, until it closes
/// or (a [`CarStream::PARKS`] stream) has nothing to do and nothing to
/// read: then it is parked.
async fn drive<S: CarStream>(
    stream: &mut S,
    shard: &Shard,
    signal: &Rc<Signal>,
    session: &mut Session,
    peer: &Peer,
    start: Resume,
) -> Driven {
    use Driven::Closed;
    let Resume {
        mut input,
        output,
        blocked,
        close,
    } = start;
    if !output.is_empty() && write(stream, &output).await.is_err() {
        return Closed(session.close(CloseReason::Io));
    }
    drop(output);
    if let Some(reason) = close {
        return Closed(reason);
    }
    if let Some(publish) = blocked
        && let Some(reason) = Box::pin(retry(shard, signal, session, publish)).await
    {
        return Closed(reason);
    }
    // What the lot read and left: whole packets are handled before any
    // more is read.
    if !input.is_empty()
        && let Some(reason) = Box::pin(process(
            stream,
            shard,
            signal,
            session,
            peer,
            &mut input,
            Instant::now(),
        ))
        .await
    {
        return Closed(reason);
    }
    let mut busy = false;
    loop {
        if !shard.producer.has_room() {
            shard.flow.pause(shard.id, &shard.metrics);
            match future::or(
                async {
                    shard.flow.resumed().await;
                    None
                },
                async { Some(signal.closed().await) },
            )
            .await
            {
                Some(reason) => return Closed(session.close(reason)),
                None => session.resume(Instant::now()),
            }
        }

        // The rest of a frame plus a little more: a read that fills that
        // too shows the car sending faster than one packet per read, so
        // reads grow to READ_BUSY until one comes back short. A car that
        // publishes now and then thus never holds more than READ_IDLE
        // bytes while it is quiet, nor takes READ_BUSY bytes even briefly
        // (short-lived 4 KiB buffers cost 34 bytes per connection in heap
        // fragmentation in the `idle_memory` test).
        let want = match shard.decoder.frame_length(&input) {
            Ok(Some(frame)) if frame > input.len() => {
                let more = if busy { READ_BUSY } else { READ_IDLE };
                (frame - input.len() + more).min(READ_MAX)
            }
            _ if busy => READ_BUSY,
            _ => READ_IDLE,
        };
        shard.table.set_deadline(signal, session.deadline());
        // Nothing half read and nothing to do: one read without waiting,
        // and if the socket has nothing either, the connection waits
        // parked, without this task. (Bytes that came while the task was
        // busy may have had their edge-triggered event already: this read
        // takes them, as no other event would come for them. A parked car
        // keeps its address, not a proven identity: plain TCP has none.)
        let parkable = S::PARKS && input.is_empty() && peer.identity.is_none() && !signal.pending();
        let event = if parkable {
            match future::poll_once(read_some(stream, &mut input, want)).await {
                Some(read) => Event::Read(read),
                None => return Driven::Quiet,
            }
        } else {
            let read = async { Event::Read(read_some(stream, &mut input, want).await) };
            let woken = async {
                match signal.wait().await {
                    Wake::Close(reason) => Event::Signal(reason),
                    Wake::Deadline => Event::Deadline,
                    Wake::Output => Event::Output,
                }
            };
            // The signal first: `or` polls in order, and under steady load
            // the read is always ready, which would starve a stop order.
            future::or(pin!(woken), pin!(read)).await
        };
        let now = Instant::now();
        match event {
            Event::Read(Ok(0)) => return Closed(session.close(CloseReason::PeerClosed)),
            // A full first read of READ_IDLE bytes is the normal start of
            // any packet larger than that: not yet a sign of a busy car.
            Event::Read(Ok(read)) => busy = read == want && want > READ_IDLE,
            Event::Read(Err(_)) => return Closed(session.close(CloseReason::Io)),
            Event::Deadline => match session.on_deadline(now) {
                Some(reason) => return Closed(reason),
                None => continue,
            },
            Event::Output => {
                if write_downlink(stream, shard, signal).await.is_err() {
                    return Closed(session.close(CloseReason::Io));
                }
                continue;
            }
            Event::Signal(reason) => return Closed(session.close(reason)),
        }

        // Boxed: its state (over 300 bytes) would otherwise be part of
        // every connection's task for all the time the car is quiet.
        if let Some(reason) = Box::pin(process(
            stream, shard, signal, session, peer, &mut input, now,
        ))
        .await
        {
            return Closed(reason);
        }
        if input.is_empty() {
            // Hold no buffer while the car is quiet.
            input = BytesMut::new();
        }
    }
}

/// Handles every whole packet in `input` and writes the replies and any
/// downlink messages queued meanwhile; `Some` to close.
async fn process<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shard: &Shard,
    signal: &Rc<Signal>,
    session: &mut Session,
    peer: &Peer,
    input: &mut BytesMut,
    now: Instant,
) -> Option<CloseReason> {
    // Replies are rare (CONNACK, PINGRESP, SUBACK): a buffer only for
    // this turn, not held in the task while the car is quiet.
    let mut output = BytesMut::new();
    let closed = loop {
        match handle_input(
            shard,
            signal,
            session,
            peer,
            input,
            &mut output,
            now,
            Heed::Now,
        ) {
            Handled::Done => break None,
            Handled::Close(reason) => break Some(reason),
            Handled::Full(publish) => {
                if let Some(reason) = retry(shard, signal, session, publish).await {
                    break Some(reason);
                }
            }
        }
    };
    if !output.is_empty() && write(stream, &output).await.is_err() {
        return Some(session.close(CloseReason::Io));
    }
    drop(output);
    if closed.is_some() {
        return closed;
    }
    if write_downlink(stream, shard, signal).await.is_err() {
        return Some(session.close(CloseReason::Io));
    }
    None
}

/// Offers a PUBLISH that found librdkafka's queue full again, each time
/// the shard has served delivery reports, until it is taken; `Some` to
/// close.
async fn retry(
    shard: &Shard,
    signal: &Signal,
    session: &mut Session,
    publish: Publish,
) -> Option<CloseReason> {
    loop {
        shard.flow.pause(shard.id, &shard.metrics);
        shard.producer.poll();
        sleep(POLL_INTERVAL).await;
        match offer(
            shard,
            signal,
            session,
            publish.topic_bytes(),
            publish.payload(),
        ) {
            Offered::Done => return None,
            Offered::Close(reason) => return Some(reason),
            Offered::Full => {}
        }
    }
}

/// Writes the downlink messages queued for this connection, if any.
async fn write_downlink<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shard: &Shard,
    signal: &Signal,
) -> io::Result<()> {
    let queued_since = signal.queued_since.get();
    let (bytes, count) = signal.take_output();
    if count == 0 {
        return Ok(());
    }
    let owed = shard.take_owed(signal);
    match write(stream, &bytes).await {
        Ok(()) => {
            shard.settle(owed, Outcome::Written);
            shard
                .metrics
                .downlink_delivered
                .fetch_add(count, Ordering::Relaxed);
            // Each message counts the oldest one's wait: an upper bound.
            let waited = super::signal::micros().wrapping_sub(queued_since);
            shard
                .metrics
                .downlink_write
                .record_n(u64::from(waited), count);
            Ok(())
        }
        Err(error) => {
            for _ in 0..count {
                shard.metrics.drop_downlink("closed");
            }
            shard.settle(owed, Outcome::Closed);
            Err(error)
        }
    }
}

/// Writes `bytes` and flushes them (TLS holds what it encrypted until a
/// flush; on plain TCP the flush does nothing), within [`WRITE_TIMEOUT`].
async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    // `or` polls the write first: the timer is made only when the write
    // has to wait for room.
    let timeout = async {
        sleep(WRITE_TIMEOUT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the car took nothing for the write timeout",
        ))
    };
    future::or(written, timeout).await
}

/// Reads up to `want` bytes onto the end of `input`.
///
/// Cancel-safe: the read races the connection's signal and is dropped when
/// the signal wins (a downlink message to write, a deadline). `input` then
/// keeps exactly what it had; glommio's read only takes bytes from the
/// socket when it completes.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    /// Cuts the zero-filled room for the read back to what was read, also
    /// when the read future is dropped before it completes.
    struct Room<'a> {
        input: &'a mut BytesMut,
        keep: usize,
    }
    impl Drop for Room<'_> {
        fn drop(&mut self) {
            self.input.truncate(self.keep);
        }
    }
    let start = input.len();
    input.resize(start + want, 0);
    let mut room = Room { input, keep: start };
    let result = match room.input.get_mut(start..) {
        Some(tail) => stream.read(tail).await,
        None => Ok(0),
    };
    room.keep = start + *result.as_ref().unwrap_or(&0);
    result
}

/// What [`handle_input`] left to do.
pub(super) enum Handled {
    /// Every whole packet handled (a partial one stays in the input).
    Done,
    Close(CloseReason),
    /// librdkafka's queue is full: this PUBLISH waits for room (the
    /// packets after it stay in the input).
    Full(Publish),
}

/// What became of a PUBLISH offered to the producer.
enum Offered {
    /// Handed over (or failed and counted).
    Done,
    Close(CloseReason),
    Full,
}

/// When [`handle_input`] heeds a close order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heed {
    /// Before each packet: a connection told to close (takeover, shutdown,
    /// drain) while reading a stream of packets stops at once; what it has
    /// not decoded yet is neither produced nor counted.
    Now,
    /// After the bytes in hand: the lot reads a parked connection's bytes
    /// once (the car sent them before the order), at most one read's worth.
    Later,
}

/// Decodes and handles every whole packet in `input`, without waiting:
/// the connection's task and the shard's lot (for a parked connection)
/// both run it.
#[allow(
    clippy::too_many_arguments,
    reason = "one connection's parts, borrowed"
)]
pub(super) fn handle_input(
    shard: &Shard,
    signal: &Rc<Signal>,
    session: &mut Session,
    peer: &Peer,
    input: &mut BytesMut,
    output: &mut BytesMut,
    now: Instant,
    heed: Heed,
) -> Handled {
    let id = signal.id;
    loop {
        if heed == Heed::Now
            && let Some(reason) = signal.reason.get()
        {
            return Handled::Close(session.close(reason));
        }
        // A PUBLISH, nearly every packet a car sends, is decoded where it
        // lies: its topic and payload go to librdkafka (which copies them)
        // before the frame leaves the buffer.
        match shard.decoder.decode_publish_in_place(input) {
            Ok(Some((publish, frame))) => {
                let offered = match session.on_publish_in_place(&publish, now) {
                    None => {
                        bump(&shard.metrics.publish_received);
                        match offer(
                            shard,
                            signal,
                            session,
                            publish.topic_bytes(),
                            publish.payload(),
                        ) {
                            // Kept for the retry: the next read may reuse the buffer.
                            Offered::Full => Some(Handled::Full(publish.to_publish())),
                            Offered::Close(reason) => Some(Handled::Close(reason)),
                            Offered::Done => None,
                        }
                    }
                    Some(Step::Close(reason)) => Some(Handled::Close(reason)),
                    // A closed session ignores it.
                    Some(_) => None,
                };
                input.advance(frame);
                match offered {
                    Some(handled) => return handled,
                    None => continue,
                }
            }
            Ok(None) => {}
            Err(error) => return Handled::Close(session.on_decode_error(error, output)),
        }
        let packet = match shard.decoder.decode(input) {
            Ok(Some(packet)) => packet,
            Ok(None) => return Handled::Done,
            Err(error) => return Handled::Close(session.on_decode_error(error, output)),
        };
        match session.on_packet_with(packet, now, &shard.policy, output) {
            Step::Continue => {}
            Step::FiltersChanged(refused) => {
                shard
                    .metrics
                    .limit("filter_length", refused.too_long.into());
                shard
                    .metrics
                    .limit("filters_per_session", refused.too_many.into());
                shard
                    .metrics
                    .subscribe_denied
                    .fetch_add(refused.not_allowed.into(), Ordering::Relaxed);
                *signal.filters.borrow_mut() = session.shared_filters().cloned();
                if let (Some(downlink), Some(client_id), Some(session_id)) =
                    (&shard.downlink, session.client_id(), signal.session.get())
                {
                    let filters = session.filters().iter().map(ToString::to_string);
                    let record = SessionRecord::live(session_id, downlink.slot(), filters);
                    shard.register(client_id, &record);
                }
            }
            Step::Close(reason) => return Handled::Close(reason),
            Step::Connect(connect) => {
                if shard.flow.kafka_unavailable() || shard.stopping.get() {
                    return Handled::Close(
                        session.refuse(ConnectReturnCode::ServerUnavailable, output),
                    );
                }
                if connect.client_id.len() > shard.limits.max_client_id_length {
                    shard.metrics.limit("client_id_length", 1);
                    return Handled::Close(
                        session.refuse(ConnectReturnCode::IdentifierRejected, output),
                    );
                }
                // A proven identity binds the client id: no one takes over
                // another car's session, reads its commands or writes
                // under its key.
                if let Some(identity) = &peer.identity
                    && *connect.client_id != **identity
                {
                    return Handled::Close(session.deny(output));
                }
                session.accept(&connect, now, output);
                // The session's own copy of the id: compact, shared by refcount.
                let client_id = session.client_id().cloned().unwrap_or_default();
                let me = Holder {
                    shard: shard.id,
                    connection: id,
                };
                // The newer connection wins. An older one on another shard
                // is ordered closed by the registry; one here is closed now.
                if let Some(old) = shard.registry.claim(client_id.clone(), me)
                    && old.shard == shard.id
                {
                    shard.table.fire(old.connection, CloseReason::TakenOver);
                }
                if let Some(downlink) = &shard.downlink {
                    let session_id = downlink.clock.borrow_mut().issue();
                    signal.session.set(Some(session_id));
                    shard.table.hold(client_id.clone(), id);
                    let record = SessionRecord::live(session_id, downlink.slot(), Vec::new());
                    shard.register(&client_id, &record);
                }
            }
            Step::Publish(publish) => {
                bump(&shard.metrics.publish_received);
                match offer(
                    shard,
                    signal,
                    session,
                    publish.topic_bytes(),
                    publish.payload(),
                ) {
                    Offered::Done => {}
                    Offered::Close(reason) => return Handled::Close(reason),
                    Offered::Full => return Handled::Full(publish),
                }
            }
        }
    }
}

/// Maps a PUBLISH's topic and hands the record (its topic and payload,
/// decoded in place or owned) to the shard's producer.
fn offer(
    shard: &Shard,
    signal: &Signal,
    session: &mut Session,
    topic: &[u8],
    payload: &[u8],
) -> Offered {
    let client_id = session.client_id().cloned().unwrap_or_default();
    let mapped = shard
        .mapper
        .borrow_mut()
        .map_bytes_for(topic, Some(&client_id))
        .map(|kafka_topic| {
            shard
                .producer
                .send(kafka_topic, client_id.as_bytes(), payload, topic)
        });
    let sent = match mapped {
        Ok(sent) => sent,
        Err(unmapped) => {
            // Refused, not lost: the car's PUBLISH never entered the pipeline.
            shard
                .metrics
                .publish_received
                .fetch_sub(1, Ordering::Relaxed);
            return Offered::Close(session.close(match unmapped {
                Unmapped::NotOwnTopic => CloseReason::ForbiddenTopic,
                Unmapped::NoRule | Unmapped::InvalidKafkaTopic => CloseReason::UnmappedTopic,
            }));
        }
    };
    match sent {
        Ok(()) => {
            shard.handed_over();
            Offered::Done
        }
        Err(SendError::Failed) => Offered::Done,
        Err(SendError::QueueFull) => match signal.reason.get() {
            // Told to close while waiting for queue space: this one record
            // was read and is not handed over.
            Some(reason) => {
                shard.metrics.fail("shutdown");
                Offered::Close(session.close(reason))
            }
            // librdkafka's own queue is full: the shard waits for
            // deliveries, then offers the record again.
            None => Offered::Full,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::task::Poll;

    use super::*;

    /// A socket with nothing to read yet.
    struct Quiet;

    impl AsyncRead for Quiet {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_read_dropped_for_the_signal_leaves_the_input_as_it_was() {
        let mut input = BytesMut::from(&b"\x30\x05ab"[..]);
        let mut quiet = Quiet;
        {
            let read = read_some(&mut quiet, &mut input, 4096);
            assert!(future::block_on(future::poll_once(pin!(read))).is_none());
        }
        // No zero-filled room is left behind for the decoder to choke on.
        assert_eq!(&input[..], b"\x30\x05ab");
        let mut rest: &[u8] = b"cde";
        assert_eq!(
            future::block_on(read_some(&mut rest, &mut input, 4096)).unwrap(),
            3
        );
        assert_eq!(&input[..], b"\x30\x05abcde");
    }
}
