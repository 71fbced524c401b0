//! The shard's side of `GET /cars/<client id>` ([`crate::inspect`]): an
//! inspection order from the admin thread, answered from the
//! connection's state.
//!
//! A parked connection's whole state is in its control block, so the
//! poller answers at once. A connection with a task holds its session and
//! its peer in the task: the poller files the question and wakes the task
//! ([`Control::want_inspection`]), which answers on its next turn
//! ([`Connection::answer_inspections`]); a task busy elsewhere (waiting for
//! room in Kafka's queue, for its uplink limit, or for the car to take a
//! write) answers when that ends, or the admin thread's 2 s bound says 504.
//! A connection that closes first answers that it is gone
//! ([`Connection::closed`] calls [`Shard::gone`]).

use std::net::SocketAddr;
use std::time::Instant;

use ops::admin::Respond;

use super::Shard;
use super::connection::Connection;
use super::control::{Control, Woke};
use super::parked::ParkedPeer;
use crate::inspect::{self, CarView, NotHere, PreviousClose, Queued, json};
use crate::session::Session;

/// Who the car is, wherever it is kept.
struct Who<'a> {
    address: SocketAddr,
    identity: Option<&'a str>,
    parked: bool,
}

impl Shard {
    /// Answers an inspection of connection `id` (of `client_id`), or has
    /// its task answer it.
    pub(super) fn inspect(&self, id: u64, client_id: String, respond: Respond) {
        let Some(control) = self.table.control(id) else {
            return self.gone(&client_id, respond);
        };
        let answered = control.parked_with(|parked| {
            let (address, identity) = match &parked.peer {
                ParkedPeer::Plain(address) => (*address, None),
                ParkedPeer::Tls(tls) => (tls.addr, tls.identity.as_deref()),
            };
            let who = Who {
                address,
                identity,
                parked: true,
            };
            self.view(&control, &parked.session, &who)
        });
        match answered {
            Some(view) => respond.found(json(&view)),
            None => {
                self.inspections.borrow_mut().push((id, respond));
                // Not parked: it has a task to wake.
                if control.want_inspection() == Woke::Parked {
                    self.table.lot.serve_later(id);
                }
            }
        }
    }

    /// Answers that `client_id` is not connected here, with its last close.
    pub(super) fn gone(&self, client_id: &str, respond: Respond) {
        let previous = self.registry.previous_close(client_id);
        respond.not_found(json(&NotHere::new(client_id, previous)));
    }

    /// The questions waiting for connection `id`'s answer.
    pub(super) fn take_inspections(&self, id: u64) -> Vec<Respond> {
        let mut inspections = self.inspections.borrow_mut();
        if inspections.is_empty() {
            return Vec::new();
        }
        let (theirs, others) = std::mem::take(&mut *inspections)
            .into_iter()
            .partition(|(asked, _)| *asked == id);
        *inspections = others;
        theirs.into_iter().map(|(_, respond)| respond).collect()
    }

    fn view(&self, control: &Control, session: &Session, who: &Who<'_>) -> CarView {
        let (now, now_ms) = (Instant::now(), inspect::now_ms());
        let client_id = session
            .client_id()
            .map(ToString::to_string)
            .unwrap_or_default();
        let (uplink, downlink) = (control.uplink.get(), control.downlink.get());
        let session_id = control.session();
        CarView {
            previous_close: self
                .registry
                .previous_close(&client_id)
                .map(PreviousClose::from),
            client_id,
            connected: true,
            shard: self.id,
            slot: self.downlink.as_ref().map(super::delivery::Downlink::slot),
            session: session_id,
            address: who.address,
            tls_identity: who.identity.map(ToOwned::to_owned),
            keep_alive_secs: session.keep_alive().map(|keep_alive| keep_alive.as_secs()),
            connected_at_ms: session_id.map(inspect::session_started_ms),
            last_packet_at_ms: session
                .last_packet()
                .map(|at| inspect::wall_ms(at, now, now_ms)),
            uplink_messages: uplink.messages,
            uplink_bytes: uplink.bytes,
            downlink_messages: downlink.messages,
            downlink_bytes: downlink.bytes,
            downlink_queued: Queued {
                messages: control.queued.get(),
                bytes: control.outbox.borrow().len(),
            },
            counters_saturate_at: u32::MAX,
            parked: who.parked,
            filters: session.filters().iter().map(ToString::to_string).collect(),
        }
    }
}

impl Connection {
    /// Answers the inspections waiting for this connection (its task was
    /// woken for them).
    pub(super) fn answer_inspections(&self) {
        let waiting = self.shard.take_inspections(self.control.id);
        if waiting.is_empty() {
            return;
        }
        let who = Who {
            address: self.peer.addr,
            identity: self.peer.identity.as_deref(),
            parked: false,
        };
        let answer = json(&self.shard.view(&self.control, &self.session, &who));
        for respond in waiting {
            respond.found(answer.clone());
        }
    }
}
