//! A car's TLS connection over rustls' unbuffered API: the shard owns the
//! buffers, so a quiet TLS car holds none.
//!
//! rustls' buffered connection keeps a 4 KiB receive buffer for as long as
//! the connection lives, and can only live inside a task. Here the
//! ciphertext a car sends is read into one buffer per shard ([`SCRATCH`]),
//! decrypted from there, and only what is left of a record cut by the read
//! (a partial record) is copied into the connection's own buffer. Between
//! records a [`TlsCar`] holds its rustls session (keys, the key schedule,
//! the car's certificate) and nothing else, so that a quiet TLS car can be
//! parked without a task as a plain one is ([`TlsSession`] in its control
//! block; see [`super::parked`]).
//!
//! [`TlsCar`] is a byte stream like the plain socket: reads give the car's
//! plaintext, writes are encrypted into a buffer that is held only until
//! the socket takes it. Reads are cancel-safe: what was read from the
//! socket stays in the connection until it is delivered.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};

/// The largest TLS record on the wire: 16 KiB of plaintext, 256 bytes of
/// expansion, the 5-byte header.
const MAX_RECORD: usize = 16 * 1024 + 256 + 5;
/// Bytes read at once while the handshake needs more.
const HANDSHAKE_READ: usize = 4096;
/// What a record adds to its plaintext, at most, in the suites rustls
/// offers (TLS 1.2's GCM: header 5, explicit nonce 8, tag 16), with room.
const RECORD_OVERHEAD: usize = 64;

thread_local! {
    /// The shard's receive buffer: every TLS car's ciphertext is read here
    /// first and decrypted from here. A shard is one thread, and a read
    /// and its decryption happen in one poll, never across an await.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_RECORD]);
}

/// A TLS car's rustls session; and while it is parked, who the car is
/// (its address and the identity its certificate proved: the connection's
/// peer, kept here while it has no task).
pub(super) struct TlsSession {
    pub(super) tls: UnbufferedServerConnection,
    pub(super) addr: std::net::SocketAddr,
    pub(super) identity: Option<Box<str>>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("addr", &self.addr)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A TLS connection over byte stream `S` (the plain socket, or what
/// follows a PROXY header).
pub(super) struct TlsCar<S> {
    io: S,
    session: Box<TlsSession>,
    /// A record the last read cut (or, during the handshake, what the
    /// handshake has not taken yet): empty, without a buffer, between
    /// records.
    incoming: BytesMut,
    /// Plaintext decrypted and not read yet (a record larger than the
    /// reader's buffer).
    plain: BytesMut,
    /// Ciphertext to write, from `sent` on; no buffer once written.
    outgoing: Vec<u8>,
    sent: usize,
    /// The car sent close_notify, or its end of the socket closed.
    read_closed: bool,
    /// close_notify queued (the write side is done).
    write_closed: bool,
}

impl<S> std::fmt::Debug for TlsCar<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCar")
            .field("incoming", &self.incoming.len())
            .field("plain", &self.plain.len())
            .field("outgoing", &(self.outgoing.len() - self.sent))
            .finish_non_exhaustive()
    }
}

/// How far [`process`] got.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The handshake needs more bytes.
    Read,
    /// Every whole record is processed (the handshake is done).
    Traffic,
    /// Both sides have sent close_notify.
    Closed,
}

fn invalid(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Processes the whole records in `incoming`: their plaintext onto
/// `plain`, what rustls has to send (handshake messages, alerts, a key
/// update) onto `outgoing`. Returns how many bytes of `incoming` are done
/// with (to drop from its front) and how far it got; `read_closed` is set
/// when the car's close_notify is among them.
fn process(
    tls: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    plain: &mut BytesMut,
    outgoing: &mut Vec<u8>,
    read_closed: &mut bool,
) -> (usize, Result<Next, rustls::Error>) {
    let mut done = 0;
    loop {
        let UnbufferedStatus { discard, state } =
            tls.process_tls_records(incoming.get_mut(done..).unwrap_or_default());
        let next = match state {
            Err(error) => Some(Err(error)),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut failed = None;
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => plain.extend_from_slice(record.payload),
                        Err(error) => {
                            failed = Some(Err(error));
                            break;
                        }
                    }
                }
                failed
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                encode(&mut data, outgoing).err().map(Err)
            }
            // What was encoded is in `outgoing`, which is written, in
            // order, before anything encrypted after it.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                None
            }
            Ok(ConnectionState::BlockedHandshake) => Some(Ok(Next::Read)),
            Ok(ConnectionState::WriteTraffic(_)) => Some(Ok(Next::Traffic)),
            Ok(ConnectionState::PeerClosed) => {
                *read_closed = true;
                None
            }
            Ok(ConnectionState::Closed) => {
                *read_closed = true;
                Some(Ok(Next::Closed))
            }
            // Early data is not enabled (`max_early_data_size` is 0).
            Ok(_) => Some(Err(rustls::Error::General(
                "unexpected TLS connection state".into(),
            ))),
        };
        done += discard;
        if let Some(next) = next {
            return (done, next);
        }
    }
}

/// Appends a handshake message (or an alert) rustls made to `outgoing`.
fn encode(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let at = outgoing.len();
    let required = match data.encode(&mut []) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        _ => 0,
    };
    outgoing.resize(at + required, 0);
    match data.encode(outgoing.get_mut(at..).unwrap_or_default()) {
        Ok(written) => {
            outgoing.truncate(at + written);
            Ok(())
        }
        Err(error) => {
            outgoing.truncate(at);
            Err(rustls::Error::General(error.to_string()))
        }
    }
}

/// Encrypts with `write` into the end of `outgoing` (sized by what
/// rustls says it needs), once the session may send application data.
fn encrypt(
    tls: &mut UnbufferedServerConnection,
    outgoing: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(
        &mut WriteTraffic<'_, ServerConnectionData>,
        &mut [u8],
    ) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let not_now = || io::Error::new(io::ErrorKind::NotConnected, "the TLS session may not send");
    loop {
        match tls.process_tls_records(&mut []).state.map_err(invalid)? {
            // Anything rustls has to send first (a key update) goes first.
            ConnectionState::EncodeTlsData(mut data) => {
                encode(&mut data, outgoing).map_err(invalid)?
            }
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            ConnectionState::WriteTraffic(mut traffic) => {
                let at = outgoing.len();
                let mut room = guess;
                loop {
                    outgoing.resize(at + room, 0);
                    match write(&mut traffic, outgoing.get_mut(at..).unwrap_or_default()) {
                        Ok(written) => {
                            outgoing.truncate(at + written);
                            return Ok(());
                        }
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) if required_size > room => room = required_size,
                        Err(error) => {
                            outgoing.truncate(at);
                            return Err(io::Error::other(error));
                        }
                    }
                }
            }
            // Plaintext is always taken as it is decrypted ([`process`]).
            _ => return Err(not_now()),
        }
    }
}

/// The TLS handshake over `io` with `config`: the car's certificate is
/// verified by the configuration's verifier; the caller bounds the time.
/// A failure is an `io::Error` wrapping the `rustls::Error`, after the
/// alert rustls made of it was sent (best effort).
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: Arc<ServerConfig>,
    addr: std::net::SocketAddr,
) -> io::Result<TlsCar<S>> {
    let tls = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let session = TlsSession {
        tls,
        addr,
        identity: None,
    };
    let mut car = TlsCar::from_parts(io, Box::new(session));
    loop {
        let (done, next) = process(
            &mut car.session.tls,
            &mut car.incoming,
            &mut car.plain,
            &mut car.outgoing,
            &mut car.read_closed,
        );
        car.incoming.advance(done);
        if !car.outgoing.is_empty() {
            let pending = std::mem::take(&mut car.outgoing);
            car.io.write_all(&pending).await?;
            car.io.flush().await?;
        }
        match next {
            Err(error) => {
                // The alert rustls queued for it, if the car still listens.
                let mut ignored = false;
                let (_, _) = process(
                    &mut car.session.tls,
                    &mut [],
                    &mut BytesMut::new(),
                    &mut car.outgoing,
                    &mut ignored,
                );
                if !car.outgoing.is_empty() {
                    let _ = futures_lite::future::poll_once(car.io.write_all(&car.outgoing)).await;
                }
                return Err(invalid(error));
            }
            Ok(Next::Traffic) if !car.session.tls.is_handshaking() => break,
            Ok(Next::Closed) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
            Ok(_) => {
                let at = car.incoming.len();
                car.incoming.resize(at + HANDSHAKE_READ, 0);
                let read = car
                    .io
                    .read(car.incoming.get_mut(at..).unwrap_or_default())
                    .await;
                car.incoming.truncate(at + *read.as_ref().unwrap_or(&0));
                if read? == 0 || car.read_closed {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ));
                }
            }
        }
    }
    car.fit();
    Ok(car)
}

impl<S> TlsCar<S> {
    /// The byte stream under TLS.
    pub(super) fn io(&self) -> &S {
        &self.io
    }

    /// The session, for what the handshake proved.
    pub(super) fn session(&self) -> &UnbufferedServerConnection {
        &self.session.tls
    }

    /// Holds nothing of its own: no partial record, no plaintext unread,
    /// nothing to write. Only such a connection can be parked.
    pub(super) fn is_quiet(&self) -> bool {
        self.incoming.is_empty() && self.plain.is_empty() && self.outgoing.is_empty()
    }

    /// The byte stream and the session, to park (only when quiet).
    pub(super) fn into_parts(self) -> Result<(S, Box<TlsSession>), Self> {
        if self.is_quiet() && !self.write_closed && !self.read_closed {
            Ok((self.io, self.session))
        } else {
            Err(self)
        }
    }

    /// A parked connection's stream and session, together again.
    pub(super) fn from_parts(io: S, session: Box<TlsSession>) -> Self {
        Self {
            io,
            session,
            incoming: BytesMut::new(),
            plain: BytesMut::new(),
            outgoing: Vec::new(),
            sent: 0,
            read_closed: false,
            write_closed: false,
        }
    }

    /// Gives back buffers that hold nothing, and the rest of one that
    /// holds little.
    fn fit(&mut self) {
        for buffer in [&mut self.incoming, &mut self.plain] {
            if buffer.is_empty() {
                *buffer = BytesMut::new();
            } else if buffer.capacity() > 2 * buffer.len() {
                *buffer = BytesMut::from(&buffer[..]);
            }
        }
        if self.sent == self.outgoing.len() {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsCar<S> {
    /// Writes what `outgoing` holds.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self
            .outgoing
            .get(self.sent..)
            .filter(|rest| !rest.is_empty())
        {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has and decrypts the whole records in it (the
    /// end of the car's stream sets `read_closed`).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.receive(|io, buf| Pin::new(io).poll_read(cx, buf))
    }
}

impl<S> TlsCar<S> {
    /// Reads once with `read` and decrypts the whole records that are
    /// then held: their plaintext is ready to read, a record the read cut
    /// stays held. The bytes read (0: the car's end of the stream).
    pub(super) fn receive(
        &mut self,
        read: impl FnOnce(&mut S, &mut [u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let Self {
            io,
            session,
            incoming,
            plain,
            outgoing,
            read_closed,
            ..
        } = self;
        let read = if incoming.is_empty() {
            // Nothing held: read into the shard's buffer, decrypt there,
            // and keep only a record the read cut.
            SCRATCH.with_borrow_mut(|scratch| {
                let read = ready!(read(io, scratch))?;
                let bytes = scratch.get_mut(..read).unwrap_or_default();
                let (done, next) = process(&mut session.tls, bytes, plain, outgoing, read_closed);
                next.map_err(invalid)?;
                incoming.extend_from_slice(bytes.get(done..).unwrap_or_default());
                Poll::Ready(Ok::<_, io::Error>(read))
            })
        } else {
            // The rest of a cut record (and what follows it, up to a
            // record's size) onto what is held.
            let at = incoming.len();
            let want = record_rest(incoming).max(RECORD_OVERHEAD);
            incoming.resize(at + want, 0);
            let read = read(io, incoming.get_mut(at..).unwrap_or_default());
            incoming.truncate(
                at + match &read {
                    Poll::Ready(Ok(read)) => *read,
                    _ => 0,
                },
            );
            let read = ready!(read)?;
            let (done, next) = process(&mut session.tls, incoming, plain, outgoing, read_closed);
            incoming.advance(done);
            next.map_err(invalid)?;
            Poll::Ready(Ok(read))
        };
        let read = ready!(read)?;
        if read == 0 {
            self.read_closed = true;
        }
        self.fit();
        Poll::Ready(Ok(read))
    }

    /// Whether the last [`TlsCar::receive`] may have left bytes in the
    /// socket: it filled the shard's buffer.
    pub(super) fn filled(read: usize) -> bool {
        read >= MAX_RECORD
    }

    /// The plaintext received and not read yet, taken whole.
    pub(super) fn take_plain(&mut self) -> BytesMut {
        std::mem::take(&mut self.plain)
    }

    /// Encrypts `data` to send with [`TlsCar::send`].
    pub(super) fn seal(&mut self, data: &[u8]) -> io::Result<()> {
        let records = data.len().div_ceil(16 * 1024).max(1);
        encrypt(
            &mut self.session.tls,
            &mut self.outgoing,
            data.len() + records * RECORD_OVERHEAD,
            |traffic, out| traffic.encrypt(data, out),
        )
    }

    /// Writes what is sealed with `write` (a non-blocking send: `None`
    /// when the socket takes no more now): whether all of it went.
    pub(super) fn send(
        &mut self,
        mut write: impl FnMut(&S, &[u8]) -> io::Result<Option<usize>>,
    ) -> io::Result<bool> {
        while let Some(rest) = self
            .outgoing
            .get(self.sent..)
            .filter(|rest| !rest.is_empty())
        {
            match write(&self.io, rest)? {
                Some(0) => return Err(io::ErrorKind::WriteZero.into()),
                Some(written) => self.sent += written,
                None => return Ok(false),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(true)
    }
}

/// How many bytes the record at the head of `incoming` still needs (a
/// record's worth when its header is not complete).
fn record_rest(incoming: &[u8]) -> usize {
    match incoming.get(3..5) {
        Some(&[high, low]) => {
            (5 + usize::from(u16::from_be_bytes([high, low]))).saturating_sub(incoming.len())
        }
        _ => MAX_RECORD - incoming.len().min(MAX_RECORD),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsCar<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let taken = buf.len().min(this.plain.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..taken), this.plain.get(..taken)) {
                    to.copy_from_slice(from);
                }
                this.plain.advance(taken);
                this.fit();
                return Poll::Ready(Ok(taken));
            }
            if this.read_closed || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // A reply rustls made (to a key update) goes out as it can; a
            // socket that takes nothing now is written again by the next
            // write or flush.
            if !this.outgoing.is_empty()
                && let Poll::Ready(Err(error)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(error));
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsCar<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What is encrypted already is written first: the socket's room
        // is the writer's backpressure.
        ready!(this.poll_send(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.seal(buf)?;
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends close_notify, then closes the socket's write side; reading
    /// goes on (a drain's linger reads what the car still sends).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            // A session that may not send (closed already) has nothing to
            // say: the socket is closed all the same.
            let _ = encrypt(
                &mut this.session.tls,
                &mut this.outgoing,
                RECORD_OVERHEAD,
                |traffic, out| traffic.queue_close_notify(out),
            );
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_record() {
        assert_eq!(record_rest(&[]), MAX_RECORD);
        assert_eq!(record_rest(&[23, 3, 3]), MAX_RECORD - 3);
        assert_eq!(record_rest(&[23, 3, 3, 0, 10]), 10);
        assert_eq!(record_rest(&[23, 3, 3, 0, 10, 1, 2, 3]), 7);
        assert_eq!(record_rest(&[23, 3, 3, 0, 2, 1, 2, 3, 4]), 0);
    }
}
