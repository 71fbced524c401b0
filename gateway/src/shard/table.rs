//! The shard's open connections, and which of them holds each client id.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use codec::ByteString;

use super::signal::Signal;
use crate::session::CloseReason;

#[derive(Debug, Default)]
pub(super) struct ConnectionTable {
    /// Every open connection, for shutdown, deadlines and delivery.
    connections: RefCell<HashMap<u64, Rc<Signal>>>,
    /// Which connection holds each client id on this shard.
    clients: RefCell<HashMap<ByteString, u64>>,
    next: Cell<u64>,
}

impl ConnectionTable {
    /// Enters a new connection: its id and its signal.
    pub(super) fn open(&self) -> (u64, Rc<Signal>) {
        let id = self.next.get();
        self.next.set(id + 1);
        let signal = Rc::new(Signal::new(id));
        self.connections.borrow_mut().insert(id, signal.clone());
        (id, signal)
    }

    /// Removes connection `id`, and its hold on `client_id` if it has it.
    pub(super) fn close(&self, id: u64, client_id: Option<&ByteString>) {
        self.connections.borrow_mut().remove(&id);
        if let Some(client_id) = client_id {
            let mut clients = self.clients.borrow_mut();
            if clients.get(client_id) == Some(&id) {
                clients.remove(client_id);
            }
        }
    }

    /// Records that connection `id` holds `client_id` here.
    pub(super) fn hold(&self, client_id: ByteString, id: u64) {
        self.clients.borrow_mut().insert(client_id, id);
    }

    pub(super) fn signal(&self, id: u64) -> Option<Rc<Signal>> {
        self.connections.borrow().get(&id).cloned()
    }

    /// Wakes connection `id`'s task (or resumes it, parked): its socket
    /// had an event.
    pub(super) fn wake(&self, id: u64) {
        if let Some(signal) = self.connections.borrow().get(&id) {
            signal.wake();
        }
    }

    /// The signal of the connection holding `client` on this shard.
    pub(super) fn holder(&self, client: &str) -> Option<Rc<Signal>> {
        let id = *self.clients.borrow().get(client)?;
        self.signal(id)
    }

    /// Tells connection `id`, if still open, to close.
    pub(super) fn fire(&self, id: u64, reason: CloseReason) {
        if let Some(signal) = self.connections.borrow().get(&id) {
            signal.fire(reason);
        }
    }

    pub(super) fn fire_all(&self, reason: CloseReason) {
        for signal in self.connections.borrow().values() {
            signal.fire(reason);
        }
    }

    /// Wakes the connections whose session deadline has passed.
    pub(super) fn check_deadlines(&self, now: Instant) {
        for signal in self.connections.borrow().values() {
            signal.check_deadline(now);
        }
    }

    /// The ids of the open connections, now.
    pub(super) fn ids(&self) -> Vec<u64> {
        self.connections.borrow().keys().copied().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.connections.borrow().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.connections.borrow().is_empty()
    }
}
