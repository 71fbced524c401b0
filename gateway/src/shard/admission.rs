//! The CONNECT policy: whether a car's CONNECT is accepted, decided from
//! who the car is, what it asks and the shard's state ([`admit`], a pure
//! function), and what an accepted session takes on the shard (its client
//! id claimed across shards, an older connection taken over, a session id
//! and its registry record: [`Connection::accept`]).

use std::time::Instant;

use bytes::BytesMut;
use codec::ConnectReturnCode;
use codec::packet::Connect;
use contract::SessionRecord;

use super::connection::{Connection, Peer};
use crate::metrics::Limit;
use crate::registry::Holder;
use crate::session::CloseReason;

/// What the shard is like when a CONNECT arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gate {
    /// Kafka has taken no data for a while, or the shard is stopping: a
    /// session accepted now could not publish.
    pub(super) unavailable: bool,
    pub(super) max_client_id_length: usize,
}

/// What a CONNECT gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    Accept,
    /// Refused with this CONNACK code; `limit` is the limit that refused
    /// it, for the metric.
    Refuse {
        code: ConnectReturnCode,
        limit: Option<Limit>,
    },
    /// The client id is not the one the car's proven identity binds.
    Deny,
}

/// Decides a CONNECT with client id `client_id` from `peer`.
pub(super) fn admit(peer: &Peer, client_id: &str, gate: Gate) -> Admission {
    if gate.unavailable {
        return Admission::Refuse {
            code: ConnectReturnCode::ServerUnavailable,
            limit: None,
        };
    }
    if client_id.len() > gate.max_client_id_length {
        return Admission::Refuse {
            code: ConnectReturnCode::IdentifierRejected,
            limit: Some(Limit::ClientIdLength),
        };
    }
    // A proven identity binds the client id: no one takes over another
    // car's session, reads its commands or writes under its key.
    match &peer.identity {
        Some(identity) if **identity != *client_id => Admission::Deny,
        _ => Admission::Accept,
    }
}

impl Connection {
    /// Applies the CONNECT policy to `connect`: the CONNACK goes to
    /// `output`; `Some` to close.
    pub(super) fn on_connect(
        &mut self,
        connect: &Connect,
        now: Instant,
        output: &mut BytesMut,
    ) -> Option<CloseReason> {
        let shard = &self.shard;
        let gate = Gate {
            unavailable: shard.flow.kafka_unavailable() || shard.stopping.get(),
            max_client_id_length: shard.limits.max_client_id_length,
        };
        match admit(&self.peer, &connect.client_id, gate) {
            Admission::Accept => {}
            Admission::Refuse { code, limit } => {
                if let Some(limit) = limit {
                    shard.metrics.limited.bump(limit);
                }
                return Some(self.session.refuse(code, output));
            }
            Admission::Deny => return Some(self.session.deny(output)),
        }
        self.session.accept(connect, now, output);
        self.take_client_id();
        None
    }

    /// An accepted session's client id, claimed: the newer connection
    /// wins. An older one on another shard is ordered closed by the
    /// registry; one here is closed now. With the downlink on, the session
    /// gets its id and its first registry record.
    fn take_client_id(&self) {
        let shard = &self.shard;
        // The session's own copy of the id: compact, shared by refcount.
        let client_id = self.session.client_id().cloned().unwrap_or_default();
        let me = Holder {
            shard: shard.id,
            connection: self.control.id,
        };
        if let Some(old) = shard.registry.claim(client_id.clone(), me)
            && old.shard == shard.id
        {
            shard.table.fire(old.connection, CloseReason::TakenOver);
        }
        if let Some(downlink) = &shard.downlink {
            let session_id = downlink.clock.borrow_mut().issue();
            self.control.set_session(session_id);
            shard.table.hold(client_id.clone(), self.control.id);
            self.write_session_record(&client_id, |session_id, slot| {
                SessionRecord::live(session_id, slot, Vec::new())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(identity: Option<&str>) -> Peer {
        Peer {
            addr: ([127, 0, 0, 1], 1883).into(),
            identity: identity.map(Into::into),
        }
    }

    const OPEN: Gate = Gate {
        unavailable: false,
        max_client_id_length: 8,
    };

    #[test]
    fn a_car_without_identity_is_accepted_under_the_limits() {
        assert_eq!(admit(&peer(None), "VIN0001", OPEN), Admission::Accept);
        assert_eq!(admit(&peer(None), "VIN00001", OPEN), Admission::Accept);
    }

    #[test]
    fn a_client_id_over_the_limit_is_rejected_and_names_the_limit() {
        assert_eq!(
            admit(&peer(None), "VIN000001", OPEN),
            Admission::Refuse {
                code: ConnectReturnCode::IdentifierRejected,
                limit: Some(Limit::ClientIdLength),
            }
        );
    }

    #[test]
    fn an_identity_binds_the_client_id() {
        assert_eq!(
            admit(&peer(Some("VIN0001")), "VIN0001", OPEN),
            Admission::Accept
        );
        assert_eq!(
            admit(&peer(Some("VIN0001")), "VIN0002", OPEN),
            Admission::Deny
        );
    }

    #[test]
    fn an_unavailable_shard_refuses_before_anything_else() {
        let closed = Gate {
            unavailable: true,
            ..OPEN
        };
        for client_id in ["VIN0002", "VIN000000001"] {
            assert_eq!(
                admit(&peer(Some("VIN0001")), client_id, closed),
                Admission::Refuse {
                    code: ConnectReturnCode::ServerUnavailable,
                    limit: None,
                }
            );
        }
    }
}
