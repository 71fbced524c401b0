//! Which connection holds each client id in this gateway process, across
//! shards: the newer connection wins (session takeover).
//!
//! Touched on CONNECT and on close only, never per packet, so one mutex is
//! enough. A takeover of a connection on another shard is an order sent
//! through that shard's channel, with a kick that wakes its poller, which
//! applies it on its own thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use codec::ByteString;
use crossbeam_channel::{Receiver, Sender};

use crate::kick::Kick;

/// A connection: its shard and its id within the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) shard: usize,
    pub(crate) connection: u64,
}

#[derive(Debug)]
pub(crate) struct Registry {
    holders: Mutex<HashMap<ByteString, Holder>>,
    orders: Vec<(Sender<u64>, Arc<Kick>)>,
}

impl Registry {
    /// A registry for shards woken by `kicks` (one each), and each shard's
    /// order receiver.
    pub(crate) fn new(kicks: Vec<Arc<Kick>>) -> (Self, Vec<Receiver<u64>>) {
        let (orders, inboxes) = kicks
            .into_iter()
            .map(|kick| {
                let (order, inbox) = crossbeam_channel::unbounded();
                ((order, kick), inbox)
            })
            .unzip();
        let registry = Self {
            holders: Mutex::new(HashMap::new()),
            orders,
        };
        (registry, inboxes)
    }

    /// Records `holder` for `client_id` and returns the connection it
    /// replaces, if any. A replaced connection on another shard is ordered
    /// to close; one on the caller's shard is the caller's to close.
    pub(crate) fn claim(&self, client_id: ByteString, holder: Holder) -> Option<Holder> {
        let previous = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(client_id, holder);
        if let Some(old) = previous.filter(|old| old.shard != holder.shard)
            && let Some((order, kick)) = self.orders.get(old.shard)
        {
            let _ = order.send(old.connection);
            kick.kick();
        }
        previous
    }

    /// Forgets `client_id` if `holder` still holds it.
    pub(crate) fn release(&self, client_id: &ByteString, holder: Holder) {
        let mut holders = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if holders.get(client_id) == Some(&holder) {
            holders.remove(client_id);
        }
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
        assert_eq!(registry.claim(id.clone(), first), None);
        // Same shard: returned to the caller, no order sent.
        assert_eq!(registry.claim(id.clone(), same_shard), Some(first));
        assert!(inboxes[0].try_recv().is_err());
        assert!(!kicks[0].take());
        // Other shard: shard 0 is told to close connection 8, and its
        // poller is woken to do it (an idle one sleeps up to 250 ms).
        assert_eq!(registry.claim(id.clone(), other_shard), Some(same_shard));
        assert_eq!(inboxes[0].try_recv(), Ok(8));
        assert!(kicks[0].take());
        assert!(!kicks[1].take());
        // A late release by a replaced holder does not erase the newer one.
        registry.release(&id, same_shard);
        assert_eq!(registry.claim(id.clone(), other_shard), Some(other_shard));
        registry.release(&id, other_shard);
        assert_eq!(registry.claim(id, first), None);
    }
}
