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

use bytes::BytesMut;
use codec::ConnectReturnCode;
use contract::{End, Outcome, SessionRecord};
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use rustls::HandshakeKind;

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

/// A connection on a listener that expects a PROXY header: the source
/// checked against the trusted networks, the header read (bounded by the
/// connect timeout), then TLS or MQTT over what follows it.
pub(super) async fn proxied(stream: TcpStream, shard: Rc<Shard>, door: Rc<Door>, mut peer: Peer) {
    let Some(proxy) = &door.listener.proxy else {
        return;
    };
    if !crate::proxy::trusted(&proxy.trusted_networks, peer.addr.ip()) {
        shard.metrics.proxy_header("untrusted_source");
        tracing::info!(shard = shard.id, peer = %peer.addr,
            "closed: PROXY header from a network not in trusted_networks");
        return;
    }
    let mut stream = stream;
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
            return;
        }
        None => {
            shard.metrics.proxy_header("timeout");
            return;
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
            return;
        };
        peer.identity = Some(door.listener.bound_client_id(&cn).into());
    }
    let stream = crate::proxy::Prefixed::new(rest, stream);
    if door.tls.is_some() {
        tls(stream, shard, door, peer).await;
    } else {
        connection(stream, shard, peer).await;
    }
}

/// A connection on a TLS listener: the handshake on this shard, bounded by
/// the connect timeout, the car's identity from its verified certificate,
/// then the car's connection over TLS.
pub(super) async fn tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shard: Rc<Shard>,
    door: Rc<Door>,
    mut peer: Peer,
) {
    let Some(terminator) = &door.tls else {
        return;
    };
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
            return;
        }
        None => {
            shard.metrics.handshake("timeout");
            tracing::debug!(shard = shard.id, peer = %peer.addr, "TLS handshake timed out");
            return;
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
                return;
            }
        }
    }
    drop(loaded);
    shard.metrics.handshake(match session.handshake_kind() {
        Some(HandshakeKind::Resumed) => "resumed",
        _ => "full",
    });
    connection(stream, shard, peer).await;
}

/// One car's connection, from accept to close, over any byte stream (a
/// TCP socket, or TLS over one).
///
/// A plain function returning an `async move` block rather than an `async
/// fn`: an `async fn` keeps its arguments twice in its state (as captured
/// and as locals), which is 128 bytes more in every connection's task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's state is 128 bytes larger per connection"
)]
pub(super) fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    shard: Rc<Shard>,
    peer: Peer,
) -> impl Future<Output = ()> {
    async move {
        let (id, signal) = shard.table.open();
        if shard.stopping.get() {
            // Accepted just as the shutdown began: close it with the others.
            signal.fire(CloseReason::Shutdown);
        }
        bump(&shard.metrics.connections_accepted);
        shard
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);

        let mut session = Session::new(shard.timing, Instant::now());
        let reason = drive(&mut stream, &shard, &signal, id, &mut session, &peer).await;
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

enum Event {
    Read(io::Result<usize>),
    Deadline,
    Output,
    Signal(CloseReason),
}

/// Runs one connection's protocol over its byte stream.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    shard: &Shard,
    signal: &Rc<Signal>,
    id: u64,
    session: &mut Session,
    peer: &Peer,
) -> CloseReason {
    let mut input = BytesMut::new();
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
                Some(reason) => return session.close(reason),
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
        signal.deadline.set(session.deadline());
        let event = {
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
            Event::Read(Ok(0)) => return session.close(CloseReason::PeerClosed),
            // A full first read of READ_IDLE bytes is the normal start of
            // any packet larger than that: not yet a sign of a busy car.
            Event::Read(Ok(read)) => busy = read == want && want > READ_IDLE,
            Event::Read(Err(_)) => return session.close(CloseReason::Io),
            Event::Deadline => match session.on_deadline(now) {
                Some(reason) => return reason,
                None => continue,
            },
            Event::Output => {
                if write_downlink(stream, shard, signal).await.is_err() {
                    return session.close(CloseReason::Io);
                }
                continue;
            }
            Event::Signal(reason) => return session.close(reason),
        }

        // Replies are rare (CONNACK, PINGRESP, SUBACK): a buffer only for
        // this turn, not held in the task while the car is quiet.
        let mut output = BytesMut::new();
        // Boxed: its state (over 300 bytes) would otherwise be part of
        // every connection's task for all the time the car is quiet.
        let closed = Box::pin(handle_input(
            shard,
            signal,
            id,
            session,
            peer,
            &mut input,
            &mut output,
            now,
        ))
        .await;
        if !output.is_empty() && write(stream, &output).await.is_err() {
            return session.close(CloseReason::Io);
        }
        drop(output);
        if let Some(reason) = closed {
            return reason;
        }
        if write_downlink(stream, shard, signal).await.is_err() {
            return session.close(CloseReason::Io);
        }
        if input.is_empty() {
            // Hold no buffer while the car is quiet.
            input = BytesMut::new();
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

/// Writes `bytes` and flushes them: TLS holds what it encrypted until a
/// flush (on plain TCP the flush does nothing).
async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
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

/// Decodes and handles every whole packet in `input`; `Some` to close.
#[allow(
    clippy::too_many_arguments,
    reason = "one connection's parts, borrowed"
)]
async fn handle_input(
    shard: &Shard,
    signal: &Rc<Signal>,
    id: u64,
    session: &mut Session,
    peer: &Peer,
    input: &mut BytesMut,
    output: &mut BytesMut,
    now: Instant,
) -> Option<CloseReason> {
    loop {
        // Told to close (takeover, shutdown): what is not decoded yet was
        // never read, and is neither produced nor counted.
        if let Some(reason) = signal.reason.get() {
            return Some(session.close(reason));
        }
        let packet = match shard.decoder.decode(input) {
            Ok(Some(packet)) => packet,
            Ok(None) => return None,
            Err(error) => return Some(session.on_decode_error(error, output)),
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
            Step::Close(reason) => return Some(reason),
            Step::Connect(connect) => {
                if shard.flow.kafka_unavailable() || shard.stopping.get() {
                    return Some(session.refuse(ConnectReturnCode::ServerUnavailable, output));
                }
                if connect.client_id.len() > shard.limits.max_client_id_length {
                    shard.metrics.limit("client_id_length", 1);
                    return Some(session.refuse(ConnectReturnCode::IdentifierRejected, output));
                }
                // A proven identity binds the client id: no one takes over
                // another car's session, reads its commands or writes
                // under its key.
                if let Some(identity) = &peer.identity
                    && *connect.client_id != **identity
                {
                    return Some(session.deny(output));
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
                let client_id = session.client_id().cloned().unwrap_or_default();
                bump(&shard.metrics.publish_received);
                loop {
                    let mapped = shard
                        .mapper
                        .borrow_mut()
                        .map_for(publish.topic(), Some(&client_id))
                        .map(|kafka_topic| {
                            shard.producer.send(
                                kafka_topic,
                                client_id.as_bytes(),
                                publish.payload(),
                                publish.topic_bytes(),
                            )
                        });
                    let sent = match mapped {
                        Ok(sent) => sent,
                        Err(unmapped) => {
                            // Refused, not lost: the car's PUBLISH never entered the pipeline.
                            shard
                                .metrics
                                .publish_received
                                .fetch_sub(1, Ordering::Relaxed);
                            return Some(session.close(match unmapped {
                                Unmapped::NotOwnTopic => CloseReason::ForbiddenTopic,
                                Unmapped::NoRule | Unmapped::InvalidKafkaTopic => {
                                    CloseReason::UnmappedTopic
                                }
                            }));
                        }
                    };
                    match sent {
                        Ok(()) => {
                            shard.handed_over();
                            break;
                        }
                        Err(SendError::Failed) => break,
                        Err(SendError::QueueFull) if signal.reason.get().is_some() => {
                            // Told to close while waiting for queue space:
                            // this one record was read and is not handed over.
                            shard.metrics.fail("shutdown");
                            return signal.reason.get().map(|reason| session.close(reason));
                        }
                        Err(SendError::QueueFull) => {
                            // librdkafka's own queue is full: this shard waits
                            // for deliveries, then offers the record again.
                            shard.flow.pause(shard.id, &shard.metrics);
                            shard.producer.poll();
                            sleep(POLL_INTERVAL).await;
                        }
                    }
                }
            }
        }
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
