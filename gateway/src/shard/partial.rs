//! Bytes held in incomplete packets: a car that begins a large packet
//! and stalls holds what it sent, and no more (the task's reads grow with
//! what arrives, see [`super::task`]), for at most `mqtt.packet_timeout_secs`;
//! and the shard's connections together hold at most
//! `limits.max_partial_bytes_per_shard`, beyond which those holding the
//! most are closed. Only connections in the middle of a packet have an
//! entry: nothing for the others.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::metrics::ShardMetrics;

/// The shard's account of bytes held in incomplete packets.
#[derive(Debug)]
pub(super) struct Partials {
    held: RefCell<HashMap<u64, usize>>,
    total: Cell<usize>,
    budget: usize,
    /// `partial_bytes` shows the total.
    metrics: Arc<ShardMetrics>,
}

impl Partials {
    pub(super) fn new(budget: usize, metrics: Arc<ShardMetrics>) -> Self {
        Self {
            held: RefCell::default(),
            total: Cell::new(0),
            budget,
            metrics,
        }
    }

    /// Connection `id` holds `bytes` of an incomplete packet now (0: none).
    /// Returns the connections to close to bring the shard back within its
    /// budget, those holding the most first (possibly `id` itself).
    pub(super) fn hold(&self, id: u64, bytes: usize) -> Vec<u64> {
        let mut held = self.held.borrow_mut();
        let before = if bytes == 0 {
            held.remove(&id)
        } else {
            held.insert(id, bytes)
        };
        let total = self.total.get() - before.unwrap_or(0) + bytes;
        self.total.set(total);
        self.metrics
            .partial_bytes
            .store(i64::try_from(total).unwrap_or(i64::MAX), Ordering::Relaxed);
        if total <= self.budget {
            return Vec::new();
        }
        let mut largest: Vec<(usize, u64)> = held.iter().map(|(&id, &bytes)| (bytes, id)).collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        let mut over = total - self.budget;
        let mut close = Vec::new();
        for (bytes, id) in largest {
            if over == 0 {
                break;
            }
            over = over.saturating_sub(bytes);
            close.push(id);
        }
        close
    }

    /// Bytes held now, all connections.
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total.get()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Partials;

    #[test]
    fn within_the_budget_nothing_is_closed_and_the_account_follows() {
        let partials = Partials::new(1000, Arc::default());
        assert!(partials.hold(1, 400).is_empty());
        assert!(partials.hold(2, 500).is_empty());
        assert!(partials.hold(1, 450).is_empty());
        assert_eq!(partials.total(), 950);
        assert!(partials.hold(2, 0).is_empty());
        assert_eq!(partials.total(), 450);
        assert!(partials.hold(1, 0).is_empty());
        assert_eq!(partials.total(), 0);
    }

    #[test]
    fn beyond_the_budget_the_largest_holders_are_closed_first() {
        let partials = Partials::new(1000, Arc::default());
        assert!(partials.hold(1, 300).is_empty());
        assert!(partials.hold(2, 600).is_empty());
        assert!(partials.hold(3, 50).is_empty());
        // 1,250 held: closing the largest (600) is enough.
        assert_eq!(partials.hold(4, 300), [2]);
        // Until it closes, it still counts: 1,550, over by 550.
        assert_eq!(partials.hold(3, 350), [2]);
        assert!(partials.hold(2, 0).is_empty());
        // 950 held; 100 more is over by 50: the largest holder goes, not
        // the one that tipped it.
        assert_eq!(partials.hold(5, 100), [3]);
    }
}
