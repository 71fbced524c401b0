//! The shard's open connections, which of them holds each client id, and
//! their deadlines. Every wake-up of a connection by another of the
//! shard's tasks goes through here, so that a parked connection (no task
//! to wake) is handed to the shard's lot instead.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use codec::ByteString;

use super::control::{Control, Woke};
use super::parked::Lot;
use crate::session::CloseReason;

/// Deadlines are looked at in slots of this length: a connection's
/// deadline is seen at most this late (the sweeper runs once per slot).
const SLOT: Duration = super::SWEEP_INTERVAL;
#[allow(clippy::cast_possible_truncation)] // 250 ms in nanoseconds
const SLOT_NANOS: u64 = SLOT.as_nanos() as u64;
/// Entries of closed (or refiled) connections the deadline heap may hold
/// beyond one per open connection before it is rebuilt from the open ones.
const STALE_ALLOWED: usize = 1024;

#[derive(Debug)]
pub(super) struct ConnectionTable {
    /// Every open connection, for shutdown, deadlines and delivery.
    connections: RefCell<HashMap<u64, Rc<Control>>>,
    /// Which connection holds each client id on this shard.
    clients: RefCell<HashMap<ByteString, u64>>,
    next: Cell<u64>,
    /// Connections by the slot their deadline falls in, the earliest
    /// first: `(slot, id)`. A connection is filed once, and again only
    /// when its deadline comes due or moves earlier; every packet moves a
    /// car's keep-alive deadline later, which its entry does not follow
    /// (see [`ConnectionTable::check_deadlines`]). So a sweep touches the
    /// connections whose filed slot has ended, not every connection: with
    /// 10,000 idle cars, a sweep over all of them four times a second was
    /// most of an idle shard's CPU. An entry is 16 bytes. A closed
    /// connection's entry stays until its slot ends, or until such entries
    /// outnumber the open connections (a churn of reconnects), when the
    /// heap is rebuilt from the open ones.
    deadlines: RefCell<BinaryHeap<Reverse<(u32, u64)>>>,
    /// Where slot 0 ends: the shard's start.
    origin: Instant,
    /// Parked connections woken, for the readiness task to serve.
    pub(super) lot: Lot,
}

impl ConnectionTable {
    /// An empty table whose deadline slots start at `origin`.
    pub(super) fn new(origin: Instant) -> Self {
        Self {
            connections: RefCell::default(),
            clients: RefCell::default(),
            next: Cell::default(),
            deadlines: RefCell::default(),
            origin,
            lot: Lot::default(),
        }
    }

    /// The slot `at` falls in: slot `k` is the time after the end of slot
    /// `k - 1` up to `origin + k × SLOT`. Slot 0 is never a filed one, so
    /// it can mean "not filed".
    fn slot_of(&self, at: Instant) -> u32 {
        let slot = self.nanos_since_origin(at).div_ceil(SLOT_NANOS).max(1);
        u32::try_from(slot).unwrap_or(u32::MAX)
    }

    /// How many slots have ended at `now`.
    fn slots_ended(&self, now: Instant) -> u32 {
        u32::try_from(self.nanos_since_origin(now) / SLOT_NANOS).unwrap_or(u32::MAX)
    }

    fn nanos_since_origin(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sets connection `control`'s session deadline, and files the
    /// connection to be looked at when the deadline's slot ends, unless it
    /// is filed for that slot or an earlier one already. Called on every
    /// packet: a deadline that moves later, the usual case, costs a
    /// comparison.
    pub(super) fn set_deadline(&self, control: &Control, deadline: Option<Instant>) {
        let before = control.deadline.replace(deadline);
        let Some(at) = deadline else {
            return;
        };
        let filed = control.filed.get();
        if filed != 0 && before.is_some_and(|before| at >= before) {
            // Filed under the earlier deadline's slot or before.
            return;
        }
        let slot = self.slot_of(at);
        if filed == 0 || slot < filed {
            control.filed.set(slot);
            self.deadlines
                .borrow_mut()
                .push(Reverse((slot, control.id)));
        }
    }

    /// Enters a new connection: its id and its control.
    pub(super) fn open(&self) -> (u64, Rc<Control>) {
        let id = self.next.get();
        self.next.set(id + 1);
        let control = Rc::new(Control::new(id));
        self.connections.borrow_mut().insert(id, control.clone());
        (id, control)
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

    pub(super) fn control(&self, id: u64) -> Option<Rc<Control>> {
        self.connections.borrow().get(&id).cloned()
    }

    /// Wakes connection `id`'s task (or has the lot serve it, parked):
    /// its socket had an event.
    pub(super) fn wake(&self, id: u64) {
        if let Some(control) = self.connections.borrow().get(&id) {
            self.woke(control, control.wake());
        }
    }

    /// Wakes `control`'s connection: downlink output was queued for it.
    pub(super) fn notify(&self, control: &Control) {
        self.woke(control, control.wake());
    }

    /// Tells `control`'s connection to close.
    pub(super) fn fire_at(&self, control: &Control, reason: CloseReason) {
        self.woke(control, control.fire(reason));
    }

    /// A parked connection woken has no task: the lot serves it.
    fn woke(&self, control: &Control, woke: Woke) {
        if woke == Woke::Parked {
            self.lot.serve_later(control.id);
        }
    }

    /// The control of the connection holding `client` on this shard.
    pub(super) fn holder(&self, client: &str) -> Option<Rc<Control>> {
        let id = *self.clients.borrow().get(client)?;
        self.control(id)
    }

    /// Tells connection `id`, if still open, to close.
    pub(super) fn fire(&self, id: u64, reason: CloseReason) {
        if let Some(control) = self.connections.borrow().get(&id) {
            self.fire_at(control, reason);
        }
    }

    pub(super) fn fire_all(&self, reason: CloseReason) {
        for control in self.connections.borrow().values() {
            self.fire_at(control, reason);
        }
    }

    /// Wakes the connections whose session deadline has passed: those
    /// filed under a slot that has ended. One whose deadline has moved
    /// since it was filed is filed again, under its deadline's slot now.
    /// One that is woken is filed no more: its task sets its deadline
    /// again once it has handled this one.
    pub(super) fn check_deadlines(&self, now: Instant) {
        let ended = self.slots_ended(now);
        let connections = self.connections.borrow();
        let mut deadlines = self.deadlines.borrow_mut();
        while let Some(&Reverse((slot, id))) = deadlines.peek() {
            if slot > ended {
                break;
            }
            deadlines.pop();
            let Some(control) = connections.get(&id) else {
                continue;
            };
            if control.filed.get() != slot {
                // Filed again under an earlier slot: that entry counts.
                continue;
            }
            control.filed.set(0);
            match control.deadline.get() {
                Some(at) if at <= now => self.woke(control, control.deadline_passed()),
                Some(at) => {
                    let slot = self.slot_of(at);
                    control.filed.set(slot);
                    deadlines.push(Reverse((slot, id)));
                }
                None => {}
            }
        }
        if deadlines.len() > 2 * connections.len() + STALE_ALLOWED {
            // Each open connection's one valid entry is the slot it is
            // filed under: keep those, drop the rest. Linear, and only
            // after as many closes as there are open connections.
            *deadlines = connections
                .values()
                .filter(|control| control.filed.get() != 0)
                .map(|control| Reverse((control.filed.get(), control.id)))
                .collect();
        }
    }

    /// Connections filed to have their deadline looked at (closed ones
    /// included until their slot ends).
    #[cfg(test)]
    fn filed(&self) -> usize {
        self.deadlines.borrow().len()
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{ConnectionTable, SLOT};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// An empty table and the origin of its slots.
    fn table() -> (Instant, ConnectionTable) {
        let origin = Instant::now();
        (origin, ConnectionTable::new(origin))
    }

    #[test]
    fn a_deadline_is_seen_once_its_slot_has_ended() {
        let (origin, table) = table();
        let (_, car) = table.open();
        table.set_deadline(&car, Some(origin + secs(10.1)));
        table.check_deadlines(origin + secs(10.0));
        assert!(!car.pending());
        table.check_deadlines(origin + secs(10.1));
        assert!(!car.pending(), "its slot has not ended");
        table.check_deadlines(origin + secs(10.1) + SLOT);
        assert!(car.pending());
        assert_eq!(table.filed(), 0);
    }

    #[test]
    fn a_deadline_moved_later_costs_nothing_until_the_old_one_comes() {
        let (origin, table) = table();
        let (_, car) = table.open();
        table.set_deadline(&car, Some(origin + secs(90.0)));
        // Each packet moves the keep-alive deadline: no new entry.
        for packet in 1..100 {
            table.set_deadline(&car, Some(origin + secs(90.0 + f64::from(packet))));
        }
        assert_eq!(table.filed(), 1);
        // At the old deadline the car is not due, and is filed again.
        table.check_deadlines(origin + secs(91.0));
        assert!(!car.pending());
        assert_eq!(table.filed(), 1);
        table.check_deadlines(origin + secs(189.0) + SLOT);
        assert!(car.pending());
    }

    #[test]
    fn a_deadline_moved_earlier_is_seen_at_the_earlier_time() {
        let (origin, table) = table();
        let (_, car) = table.open();
        // The CONNECT's timeout, then a short keep-alive's deadline.
        table.set_deadline(&car, Some(origin + secs(10.0)));
        table.set_deadline(&car, Some(origin + secs(1.5)));
        table.check_deadlines(origin + secs(2.0));
        assert!(car.pending());
        // The entry of 10 s is stale and goes quietly.
        table.check_deadlines(origin + secs(11.0));
        assert_eq!(table.filed(), 0);
    }

    #[test]
    fn closed_and_deadline_free_connections_are_dropped_when_their_slot_ends() {
        let (origin, table) = table();
        let (gone, closing) = table.open();
        let (_, deciding) = table.open();
        table.set_deadline(&closing, Some(origin + secs(1.0)));
        table.set_deadline(&deciding, Some(origin + secs(1.0)));
        table.close(gone, None);
        table.set_deadline(&deciding, None);
        table.check_deadlines(origin + secs(2.0));
        assert!(!deciding.pending());
        assert_eq!(table.filed(), 0);
        // Set again, it is filed again.
        table.set_deadline(&deciding, Some(origin + secs(3.0)));
        assert_eq!(table.filed(), 1);
    }

    #[test]
    fn a_churn_of_reconnects_does_not_grow_the_heap_without_bound() {
        let (origin, table) = table();
        let (_, stays) = table.open();
        table.set_deadline(&stays, Some(origin + secs(900.0)));
        // Cars that connect and go, each leaving a 15-minute deadline.
        for _ in 0..10_000 {
            let (id, car) = table.open();
            table.set_deadline(&car, Some(origin + secs(900.0)));
            table.close(id, None);
        }
        table.check_deadlines(origin + secs(1.0));
        assert!(
            table.filed() <= 2 + super::STALE_ALLOWED,
            "{}",
            table.filed()
        );
        // The car that stayed is still looked at when its deadline comes.
        table.check_deadlines(origin + secs(900.0) + SLOT);
        assert!(stays.pending());
        assert_eq!(table.filed(), 0);
    }
}
