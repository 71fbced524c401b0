//! The join's state for one partition: client id → its newest session, and
//! the routing decision for one downlink request. Pure logic, no Kafka.
//!
//! Ordering rule (docs/architecture.md, invariants): the session with the
//! larger id is the newer one, whatever order the records arrive in. A
//! record of an older session never changes what a newer one registered;
//! it only tells the router that an older connection may still be open
//! somewhere, which then gets a takeover notice.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use contract::SessionRecord;

/// Separates the filters in a [`Key`]: MQTT forbids U+0000 in topic
/// filters (MQTT-4.7.3-2).
const SEPARATOR: u8 = 0;

/// A client id and its live session's filters in one allocation: the
/// id's length (2 bytes, MQTT strings are shorter than 64 KiB), the id,
/// then each filter after a NUL. A lookup and the filter match that
/// follows touch one heap block, and a client costs one allocation.
/// Hashed and compared by the client id alone.
#[derive(Debug)]
struct Key(Box<[u8]>);

impl Key {
    /// `None` for an id too long to be an MQTT client id.
    fn new(client: &str, filters: &[String]) -> Option<Self> {
        let length = u16::try_from(client.len()).ok()?;
        let mut bytes = Vec::with_capacity(
            2 + client.len() + filters.iter().map(|f| f.len() + 1).sum::<usize>(),
        );
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(client.as_bytes());
        for filter in filters {
            bytes.push(SEPARATOR);
            bytes.extend_from_slice(filter.as_bytes());
        }
        Some(Self(bytes.into_boxed_slice()))
    }

    fn split(&self) -> (&[u8], &[u8]) {
        let length = match self.0.get(..2) {
            Some(&[lo, hi]) => usize::from(u16::from_le_bytes([lo, hi])),
            _ => 0,
        };
        self.0.get(2..).map_or((&[][..], &[][..]), |rest| {
            rest.split_at(length.min(rest.len()))
        })
    }

    fn client(&self) -> &[u8] {
        self.split().0
    }

    fn filters(&self) -> impl Iterator<Item = &str> {
        let filters = self.split().1;
        filters
            .get(1..)
            .unwrap_or_default()
            .split(|&b| b == SEPARATOR)
            .filter(move |_| !filters.is_empty())
            .filter_map(|filter| std::str::from_utf8(filter).ok())
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.client().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.client() == other.client()
    }
}

impl Eq for Key {}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.client()
    }
}

/// What the table knows of one client's newest session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    session: u64,
    slot: u32,
    /// False once the session ended: the entry stays (small) so that a
    /// late record of an older session cannot resurrect the client.
    live: bool,
}

/// A connection that must close: a newer session of its client exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    pub slot: u32,
    pub session: u64,
}

/// Where a downlink request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub slot: u32,
    pub session: u64,
}

/// Why a downlink request is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No live session for the client.
    Offline,
    /// A live session, but none of its filters matches the topic.
    NoFilter,
}

impl Miss {
    /// How the request is counted.
    pub const fn dropped(self) -> crate::metrics::Dropped {
        match self {
            Self::Offline => crate::metrics::Dropped::Offline,
            Self::NoFilter => crate::metrics::Dropped::NoFilter,
        }
    }

    /// The receipt the request gets.
    pub const fn outcome(self) -> contract::Outcome {
        match self {
            Self::Offline => contract::Outcome::Offline,
            Self::NoFilter => contract::Outcome::NoFilter,
        }
    }
}

#[derive(Debug, Default)]
pub struct Table {
    clients: HashMap<Key, Entry>,
    live: usize,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Clients with a live session.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Applies one registry record of `client`; returns the connection that
    /// must be closed, if the record reveals one.
    pub fn apply(&mut self, client: &str, record: &SessionRecord) -> Option<Takeover> {
        let live = record.ended.is_none();
        let (replace, notice) = match self.clients.get(client.as_bytes()) {
            None => (true, None),
            // A newer session: the older one, if still open, must close.
            Some(current) if record.session > current.session => (
                true,
                current.live.then_some(Takeover {
                    slot: current.slot,
                    session: current.session,
                }),
            ),
            // The same session: filters changed, or it ended. An ended
            // session stays ended.
            Some(current) if record.session == current.session => (current.live, None),
            // An older session still talking (a late record): if it is
            // live, its connection must close; the table does not change.
            Some(_) => (
                false,
                live.then_some(Takeover {
                    slot: record.slot,
                    session: record.session,
                }),
            ),
        };
        if replace {
            // Remove first: `insert` would keep the old key, and its filters.
            let was_live = self
                .clients
                .remove(client.as_bytes())
                .is_some_and(|e| e.live);
            let filters: &[String] = if live { &record.filters } else { &[] };
            let Some(key) = Key::new(client, filters) else {
                // Longer than any MQTT client id: no car can have it.
                return None;
            };
            let entry = Entry {
                session: record.session,
                slot: record.slot,
                live,
            };
            self.clients.insert(key, entry);
            match (was_live, live) {
                (false, true) => self.live += 1,
                (true, false) => self.live -= 1,
                _ => {}
            }
        }
        notice
    }

    /// Where a request for `client` on MQTT topic `topic` goes.
    pub fn route(&self, client: &str, topic: &str) -> Result<Route, Miss> {
        let (key, entry) = self
            .clients
            .get_key_value(client.as_bytes())
            .ok_or(Miss::Offline)?;
        if !entry.live {
            return Err(Miss::Offline);
        }
        if key
            .filters()
            .any(|filter| codec::topic::matches(filter, topic))
        {
            Ok(Route {
                slot: entry.slot,
                session: entry.session,
            })
        } else {
            Err(Miss::NoFilter)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::End;

    fn live(session: u64, slot: u32, filters: &[&str]) -> SessionRecord {
        SessionRecord::live(session, slot, filters.iter().map(|f| (*f).to_owned()))
    }

    #[test]
    fn routes_by_filter_and_drops_what_does_not_match() {
        let mut table = Table::new();
        assert_eq!(table.route("A", "DL/WARN"), Err(Miss::Offline));
        table.apply("A", &live(10, 3, &[]));
        assert_eq!(table.route("A", "DL/WARN"), Err(Miss::NoFilter));
        table.apply("A", &live(10, 3, &["DL/WARN"]));
        let route = Route {
            slot: 3,
            session: 10,
        };
        assert_eq!(table.route("A", "DL/WARN"), Ok(route));
        assert_eq!(table.route("A", "DL/INFO"), Err(Miss::NoFilter));
        table.apply("A", &live(10, 3, &["DL/#"]));
        assert_eq!(table.route("A", "DL/INFO"), Ok(route));
        assert_eq!(table.route("B", "DL/INFO"), Err(Miss::Offline));
        assert_eq!(table.live(), 1);
        table.apply("A", &SessionRecord::ended(10, 3, End::Closed));
        assert_eq!(table.route("A", "DL/INFO"), Err(Miss::Offline));
        assert_eq!(table.live(), 0);
    }

    #[test]
    fn a_late_end_of_an_old_session_does_not_erase_the_new_one() {
        let mut table = Table::new();
        table.apply("A", &live(10, 0, &["DL/#"]));
        // The car reconnects to another gateway (slot 5) before the old
        // connection's end record is written: the old one must close.
        assert_eq!(
            table.apply("A", &live(20, 5, &[])),
            Some(Takeover {
                slot: 0,
                session: 10
            })
        );
        table.apply("A", &live(20, 5, &["DL/#"]));
        assert_eq!(
            table.apply("A", &SessionRecord::ended(10, 0, End::Closed)),
            None
        );
        assert_eq!(
            table.route("A", "DL/X"),
            Ok(Route {
                slot: 5,
                session: 20
            })
        );
        // A "gone" report for the old session changes nothing either.
        table.apply("A", &SessionRecord::ended(10, 0, End::Gone));
        assert_eq!(table.route("A", "DL/X").map(|r| r.slot), Ok(5));
        assert_eq!(table.live(), 1);
    }

    #[test]
    fn records_arriving_out_of_session_order_keep_the_newest() {
        let mut table = Table::new();
        // The newer session's record lands first; the older one's connect
        // record comes late: it is refused and its connection told to close.
        table.apply("A", &live(20, 5, &["DL/#"]));
        assert_eq!(
            table.apply("A", &live(10, 0, &["DL/#"])),
            Some(Takeover {
                slot: 0,
                session: 10
            })
        );
        assert_eq!(table.route("A", "DL/X").map(|r| r.session), Ok(20));
        // Ended newest, then a late older connect: stays offline.
        table.apply("A", &SessionRecord::ended(20, 5, End::Closed));
        table.apply("A", &live(15, 1, &["DL/#"]));
        assert_eq!(table.route("A", "DL/X"), Err(Miss::Offline));
        // A record of an ended session does not revive it.
        table.apply("A", &live(20, 5, &["DL/#"]));
        assert_eq!(table.route("A", "DL/X"), Err(Miss::Offline));
        assert_eq!(table.live(), 0);
        // A genuinely newer session does.
        table.apply("A", &live(30, 2, &["DL/#"]));
        assert_eq!(table.route("A", "DL/X").map(|r| r.slot), Ok(2));
        assert_eq!(table.live(), 1);
    }

    #[test]
    fn a_gone_report_removes_the_stale_registration() {
        let mut table = Table::new();
        table.apply("A", &live(10, 4, &["DL/#"]));
        table.apply("A", &SessionRecord::ended(10, 4, End::Gone));
        assert_eq!(table.route("A", "DL/X"), Err(Miss::Offline));
    }
}
