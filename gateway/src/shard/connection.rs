//! One car's connection as the shard knows it: the context every part of
//! its handling works on ([`Connection`]), from the accept to the close
//! bookkeeping. Who does what with it:
//!
//! - [`super::preamble`]: the PROXY header and the TLS handshake, before
//!   the first MQTT byte, end in its [`Peer`];
//! - [`super::task`]: its task, which reads, writes and waits;
//! - [`super::parked`]: the lot, which serves it without a task while the
//!   car is quiet;
//! - [`super::dispatch`]: its packets, fed to its [`Session`], with the
//!   CONNECT decision of [`super::admission`] and the PUBLISH hand-over of
//!   [`super::uplink`].

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use codec::ByteString;
use contract::{End, Outcome, SessionRecord};

use super::Shard;
use super::control::Control;
use super::delivery::OwedReceipt;
use super::parked::{Parked, ParkedPeer};
use super::tls_car::TlsSession;
use crate::inspect::Close;
use crate::metrics::{Dropped, bump};
use crate::registry::Holder;
use crate::session::{CloseReason, Session};

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

/// One connection's context: its shard, its control block (its entry in
/// the shard's table, made when it was accepted), its MQTT session and
/// who it is. The task holds it while it runs; a parked connection keeps
/// the session and the address in its control block and nothing else.
pub(super) struct Connection {
    pub(super) shard: Rc<Shard>,
    pub(super) control: Rc<Control>,
    pub(super) session: Session,
    pub(super) peer: Peer,
}

impl Connection {
    /// A connection just accepted (its preamble done), counted open.
    pub(super) fn open(shard: Rc<Shard>, peer: Peer, control: Rc<Control>) -> Self {
        if shard.stopping.get() {
            // Accepted just as the shutdown began: close it with the
            // others. Not parked: no lot to tell.
            let _ = control.fire(CloseReason::Shutdown);
        }
        bump(&shard.metrics.connections_accepted);
        shard
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        let session = Session::new(shard.timing, Instant::now());
        Self {
            shard,
            control,
            session,
            peer,
        }
    }

    /// A parked connection taken out of its control block, to serve, with
    /// its socket and (over TLS) its TLS session.
    pub(super) fn unparked(
        shard: Rc<Shard>,
        control: Rc<Control>,
        parked: Parked,
    ) -> (Self, std::net::TcpStream, Option<Box<TlsSession>>) {
        let Parked {
            socket,
            session,
            peer,
        } = parked;
        let (peer, tls) = match peer {
            ParkedPeer::Plain(addr) => (
                Peer {
                    addr,
                    identity: None,
                },
                None,
            ),
            ParkedPeer::Tls(mut tls) => (
                Peer {
                    addr: tls.addr,
                    identity: tls.identity.take(),
                },
                Some(tls),
            ),
        };
        let connection = Self {
            shard,
            control,
            session,
            peer,
        };
        (connection, socket, tls)
    }

    /// The shard's timeouts for its sessions.
    pub(super) fn session_timing(&self) -> &'static crate::session::Timing {
        self.shard.timing
    }

    /// Whether the connection may wait parked, without a task: nothing half
    /// read in `input` and nothing to handle (its stream decides whether
    /// it parks at all: [`super::task::CarStream::parks`]). The one rule
    /// for both the task and the lot.
    pub(super) fn may_park(&self, input: &BytesMut) -> bool {
        input.is_empty() && !self.control.pending()
    }

    /// Parks the connection: its session and address (and over TLS its
    /// TLS session and proven identity) go into its control block, and its
    /// socket's next event goes to the lot. A plain connection has no
    /// proven identity (a trusted proxy's comes with a PROXY header, and
    /// such connections do not park).
    pub(super) fn park(self, socket: std::net::TcpStream, tls: Option<Box<TlsSession>>) {
        let Self {
            control,
            session,
            peer,
            ..
        } = self;
        let peer = match tls {
            Some(mut tls) => {
                tls.addr = peer.addr;
                tls.identity = peer.identity;
                ParkedPeer::Tls(tls)
            }
            None => ParkedPeer::Plain(peer.addr),
        };
        control.park(Parked {
            socket,
            session,
            peer,
        });
    }

    /// Writes this connection's session-registry record, made by `record`
    /// from its session id and its shard's slot (when the downlink is on
    /// and the session was accepted).
    pub(super) fn write_session_record(
        &self,
        client_id: &ByteString,
        record: impl FnOnce(u64, u32) -> SessionRecord,
    ) {
        if let (Some(downlink), Some(session_id)) = (&self.shard.downlink, self.control.session()) {
            downlink.write_session_record(
                &self.shard,
                client_id,
                &record(session_id, downlink.slot()),
            );
        }
    }

    /// The receipts owed for the downlink messages queued to this
    /// connection so far (take them together with its output).
    pub(super) fn take_owed(&self) -> Vec<OwedReceipt> {
        self.shard
            .downlink
            .as_ref()
            .map(|downlink| downlink.take_owed(self.control.id))
            .unwrap_or_default()
    }

    /// Answers receipts taken with [`Connection::take_owed`].
    pub(super) fn settle(&self, owed: Vec<OwedReceipt>, outcome: Outcome) {
        if let Some(downlink) = &self.shard.downlink {
            downlink.settle(&self.shard, owed, outcome);
        }
    }

    /// The bookkeeping of a connection whose stream is closed: counted,
    /// removed from the table and the registry, its unwritten downlink
    /// messages answered, its session's end recorded, the close logged.
    pub(super) fn closed(self, reason: CloseReason) {
        let shard = &self.shard;
        let id = self.control.id;
        shard.metrics.closed.bump(reason.kind());
        shard
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        shard.table.close(id, self.session.client_id());
        // Nothing to close here: this connection no longer holds any.
        let _ = shard.partials.hold(id, 0);
        let (_, unsent) = self.control.take_output();
        for _ in 0..unsent {
            shard.metrics.downlink_dropped.bump(Dropped::Closed);
        }
        self.settle(self.take_owed(), Outcome::Closed);
        if let Some(client_id) = self.session.client_id() {
            let close = Close {
                reason,
                at_ms: crate::inspect::now_ms(),
                session: self.control.session(),
                shard: shard.id,
            };
            let holder = Holder {
                shard: shard.id,
                connection: id,
            };
            shard.registry.release(client_id, holder, close);
            // Asked about while closing: it is gone, and this was why.
            for respond in shard.take_inspections(id) {
                shard.gone(client_id, respond);
            }
            self.write_session_record(client_id, |session_id, slot| {
                SessionRecord::ended(session_id, slot, End::Closed)
            });
        }
        let client = self
            .session
            .client_id()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let peer = self.peer.addr;
        match reason {
            CloseReason::Malformed(error) => {
                tracing::info!(shard = shard.id, client, %peer, %error, "closed: malformed packet");
            }
            reason if reason.is_car_fault() => {
                tracing::info!(shard = shard.id, client, %peer, reason = reason.label(), "closed");
            }
            reason => tracing::debug!(shard = shard.id, client, reason = reason.label(), "closed"),
        }
    }
}
