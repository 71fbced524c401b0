//! Which connection holds each client id in this gateway process, across
//! shards: the newer connection wins (session takeover).
//!
//! Touched on CONNECT and on close only, never per packet, so one mutex is
//! enough. A takeover of a connection on another shard is an order sent
//! through that shard's channel, with a kick that wakes its poller, which
//! applies it on its own thread. An inspection (`GET /cars/<client id>`,
//! from the admin thread) goes the same way to the shard holding the car;
//! the registry also remembers the most recent closes, for the inspection
//! of a car that is gone ([`crate::inspect`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use codec::ByteString;
use crossbeam_channel::{Receiver, Sender};
use ops::admin::Respond;

use crate::inspect::{CLOSES_PER_SHARD, Close, Closes, NotHere, json};
use crate::kick::Kick;

/// A connection: its shard and its id within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) shard: usize,
    pub(crate) connection: u64,
}

/// What another thread asks of a shard.
#[derive(Debug)]
pub(crate) enum Order {
    /// Close this connection: a newer one took its client id.
    TakeOver(u64),
    /// Answer what this connection of `client_id` is.
    Inspect {
        connection: u64,
        client_id: String,
        respond: Respond,
    },
}

/// A shard as the registry reaches it: its orders, and its poller's kick.
type Shard = (Sender<Order>, Arc<Kick>);

#[derive(Debug)]
struct Held {
    holders: HashMap<ByteString, Holder>,
    closes: Closes,
}

#[derive(Debug)]
pub(crate) struct Registry {
    held: Mutex<Held>,
    orders: Vec<Shard>,
}

impl Registry {
    /// A registry for shards woken by `kicks` (one each), and each shard's
    /// order receiver.
    pub(crate) fn new(kicks: Vec<Arc<Kick>>) -> (Self, Vec<Receiver<Order>>) {
        let (orders, inboxes): (Vec<Shard>, Vec<_>) = kicks
            .into_iter()
            .map(|kick| {
                let (order, inbox) = crossbeam_channel::unbounded();
                ((order, kick), inbox)
            })
            .unzip();
        let registry = Self {
            held: Mutex::new(Held {
                holders: HashMap::new(),
                closes: Closes::new(CLOSES_PER_SHARD.saturating_mul(orders.len())),
            }),
            orders,
        };
        (registry, inboxes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `holder` for `client_id` and returns the connection it
    /// replaces, if any. A replaced connection on another shard is ordered
    /// to close; one on the caller's shard is the caller's to close.
    pub(crate) fn claim(&self, client_id: ByteString, holder: Holder) -> Option<Holder> {
        let previous = self.lock().holders.insert(client_id, holder);
        if let Some(old) = previous.filter(|old| old.shard != holder.shard) {
            self.order(old.shard, Order::TakeOver(old.connection));
        }
        previous
    }

    /// Sends `order` to `shard` and wakes its poller; the order back if
    /// the shard is gone.
    fn order(&self, shard: usize, order: Order) -> Option<Order> {
        let Some((orders, kick)) = self.orders.get(shard) else {
            return Some(order);
        };
        let sent = orders.send(order).map_err(|unsent| unsent.0);
        kick.kick();
        sent.err()
    }

    /// Connection `holder` of `client_id` closed: its close is remembered,
    /// and the client id forgotten if `holder` still holds it.
    pub(crate) fn release(&self, client_id: &ByteString, holder: Holder, close: Close) {
        let mut held = self.lock();
        if held.holders.get(client_id) == Some(&holder) {
            held.holders.remove(client_id);
        }
        held.closes.remember(client_id, close);
    }

    /// The last close remembered of `client_id`.
    pub(crate) fn previous_close(&self, client_id: &str) -> Option<Close> {
        self.lock().closes.get(client_id)
    }

    /// Answers what `client_id` is here through `respond`: the shard
    /// holding it is asked; a car not held is answered at once.
    pub(crate) fn inspect(&self, client_id: &str, respond: Respond) {
        let (holder, previous) = {
            let held = self.lock();
            (
                held.holders.get(client_id).copied(),
                held.closes.get(client_id),
            )
        };
        let Some(holder) = holder else {
            return respond.not_found(json(&NotHere::new(client_id, previous)));
        };
        let order = Order::Inspect {
            connection: holder.connection,
            client_id: client_id.to_owned(),
            respond,
        };
        // A shard gone (stopping): the question is dropped, and the admin
        // thread says so (503).
        drop(self.order(holder.shard, order));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_holder_wins_and_other_shards_get_an_order() {
        let kicks: Vec<Arc<Kick>> = vec![Arc::default(), Arc::default()];
        let (registry, inboxes) = Registry::new(kicks.clone());
        let id = ByteString::from("VIN1");
        let first = Holder {
            shard: 0,
            connection: 7,
        };
        let same_shard = Holder {
            shard: 0,
            connection: 8,
        };
        let other_shard = Holder {
            shard: 1,
            connection: 3,
        };
        let close = Close {
            reason: crate::session::CloseReason::PeerClosed,
            at_ms: 1,
            session: None,
            shard: 0,
        };
        assert_eq!(registry.claim(id.clone(), first), None);
        // Same shard: returned to the caller, no order sent.
        assert_eq!(registry.claim(id.clone(), same_shard), Some(first));
        assert!(inboxes[0].try_recv().is_err());
        assert!(!kicks[0].take());
        // Other shard: shard 0 is told to close connection 8, and its
        // poller is woken to do it (an idle one sleeps up to 250 ms).
        assert_eq!(registry.claim(id.clone(), other_shard), Some(same_shard));
        assert!(matches!(inboxes[0].try_recv(), Ok(Order::TakeOver(8))));
        assert!(kicks[0].take());
        assert!(!kicks[1].take());
        // A late release by a replaced holder does not erase the newer one.
        registry.release(&id, same_shard, close);
        assert_eq!(registry.claim(id.clone(), other_shard), Some(other_shard));
        registry.release(&id, other_shard, close);
        assert_eq!(registry.previous_close("VIN1"), Some(close));
        assert_eq!(registry.claim(id, first), None);
    }
}
