//! Requests held for cars that cannot take them now (no live session, or
//! no matching filter), per partition: kept in Kafka order per car until
//! the car can take them or they expire. Pure logic, no Kafka: the loop
//! decides when to hold, release and expire (run/hold.rs), and writes each
//! change to `mqtt.held` so a successor can take the partition over.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Bookkeeping a held request costs beside its bytes (map entries, the
/// expiry index, the struct): counted against the bounds so that many
/// tiny requests cannot hide behind their payload size.
pub const OVERHEAD: usize = 100;

/// One held request: what is needed to route it later and to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its offset in `cs.downlink` (the partition is the table's).
    pub offset: i64,
    pub topic: String,
    pub payload: Vec<u8>,
    /// The correlation id, if a receipt was asked.
    pub receipt: Option<Vec<u8>>,
    /// The effective expiry, milliseconds since the epoch.
    pub expires_ms: i64,
    /// The request's Kafka timestamp, kept on the routed record's age.
    pub timestamp_ms: Option<i64>,
}

impl Request {
    /// What it counts against the bounds.
    pub fn size(&self, client: &str) -> usize {
        self.payload.len()
            + self.topic.len()
            + self.receipt.as_ref().map_or(0, Vec::len)
            + client.len()
            + OVERHEAD
    }
}

/// Limits on what is held: per car (count and bytes) and per router
/// (bytes, across its partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub per_car: usize,
    pub per_car_bytes: usize,
    pub total_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            per_car: 64,
            per_car_bytes: 32 * 1024,
            total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The bound a request was refused on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    CarCount,
    CarBytes,
    RouterBytes,
}

impl Full {
    pub fn label(self) -> &'static str {
        match self {
            Self::CarCount => "car_count",
            Self::CarBytes => "car_bytes",
            Self::RouterBytes => "router_bytes",
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    requests: BTreeMap<i64, Request>,
    bytes: usize,
}

/// One partition's held requests.
#[derive(Debug, Default)]
pub struct Held {
    cars: HashMap<String, Queue>,
    /// (expiry, offset), soonest first.
    expiry: BTreeSet<(i64, i64)>,
    /// offset → client: dedupe and removal by offset.
    owners: HashMap<i64, String>,
    /// Offsets taken over from a predecessor in this assignment, held or
    /// released since: a request read again from `cs.downlink` (its
    /// offset was not committed yet) is not decided twice.
    adopted: HashSet<i64>,
    /// Offsets this router released or answered whose deletion it has
    /// written but not read back yet: their held record, read back
    /// meanwhile, is not taken again.
    done: HashSet<i64>,
    bytes: usize,
}

impl Held {
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Bytes counted against the bounds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn contains(&self, offset: i64) -> bool {
        self.owners.contains_key(&offset)
    }

    /// Whether the request at `offset` is held, or was taken over and
    /// released: decided already.
    pub fn decided(&self, offset: i64) -> bool {
        self.contains(offset) || self.adopted.contains(&offset)
    }

    /// Takes over a request read from `mqtt.held`, unless it is held
    /// already (this router's own record, read back) or this router has
    /// finished with it. Returns the bytes added.
    pub fn adopt(&mut self, client: &str, request: Request) -> usize {
        if self.done.contains(&request.offset) {
            return 0;
        }
        let offset = request.offset;
        let size = self.insert(client, request);
        if size > 0 {
            self.adopted.insert(offset);
        }
        size
    }

    /// This router finished with the request at `offset` and wrote its
    /// deletion.
    pub fn finish(&mut self, offset: i64) {
        self.done.insert(offset);
    }

    /// The deletion of the request at `offset` was read back: its held
    /// record cannot come again.
    pub fn deleted(&mut self, offset: i64) {
        self.done.remove(&offset);
    }

    pub fn holds_for(&self, client: &str) -> bool {
        self.cars.contains_key(client)
    }

    /// Whether `request` for `client` fits the bounds, given `router_bytes`
    /// held across the router's partitions.
    pub fn admits(
        &self,
        client: &str,
        request: &Request,
        bounds: &Bounds,
        router_bytes: usize,
    ) -> Result<(), Full> {
        let size = request.size(client);
        let (count, bytes) = self
            .cars
            .get(client)
            .map_or((0, 0), |queue| (queue.requests.len(), queue.bytes));
        if count >= bounds.per_car {
            return Err(Full::CarCount);
        }
        if bytes + size > bounds.per_car_bytes {
            return Err(Full::CarBytes);
        }
        if router_bytes + size > bounds.total_bytes {
            return Err(Full::RouterBytes);
        }
        Ok(())
    }

    /// Holds `request` (bounds are the caller's: a takeover adopts what
    /// its predecessor promised, whatever the bounds). Returns the bytes
    /// added, 0 if its offset was held already.
    pub fn insert(&mut self, client: &str, request: Request) -> usize {
        if self.owners.contains_key(&request.offset) {
            return 0;
        }
        let size = request.size(client);
        self.expiry.insert((request.expires_ms, request.offset));
        self.owners.insert(request.offset, client.to_owned());
        let queue = self.cars.entry(client.to_owned()).or_default();
        queue.bytes += size;
        queue.requests.insert(request.offset, request);
        self.bytes += size;
        size
    }

    /// Removes the request at `offset`, with its client and size.
    pub fn remove(&mut self, offset: i64) -> Option<(String, Request, usize)> {
        let client = self.owners.remove(&offset)?;
        let queue = self.cars.get_mut(&client)?;
        let request = queue.requests.remove(&offset)?;
        let size = request.size(&client);
        queue.bytes = queue.bytes.saturating_sub(size);
        if queue.requests.is_empty() {
            self.cars.remove(&client);
        }
        self.expiry.remove(&(request.expires_ms, offset));
        self.bytes = self.bytes.saturating_sub(size);
        Some((client, request, size))
    }

    /// The offsets held for `client`, oldest first.
    pub fn offsets_for(&self, client: &str) -> Vec<i64> {
        self.cars
            .get(client)
            .map(|queue| queue.requests.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The request at `offset`.
    pub fn get(&self, offset: i64) -> Option<&Request> {
        let client = self.owners.get(&offset)?;
        self.cars.get(client)?.requests.get(&offset)
    }

    /// The requests held for `client`, oldest first (for the inspector).
    pub fn for_client(&self, client: &str) -> impl Iterator<Item = &Request> {
        self.cars
            .get(client)
            .into_iter()
            .flat_map(|queue| queue.requests.values())
    }

    /// Every client with held requests.
    pub fn clients(&self) -> Vec<String> {
        self.cars.keys().cloned().collect()
    }

    /// The offsets of the requests whose expiry is before `now_ms`.
    pub fn expired(&self, now_ms: i64) -> Vec<i64> {
        self.expiry
            .range(..(now_ms, i64::MIN))
            .map(|(_, offset)| *offset)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(offset: i64, payload: usize, expires_ms: i64) -> Request {
        Request {
            offset,
            topic: "DL/X".to_owned(),
            payload: vec![0; payload],
            receipt: Some(b"id".to_vec()),
            expires_ms,
            timestamp_ms: Some(1),
        }
    }

    #[test]
    fn requests_are_kept_per_car_in_kafka_order() {
        let mut held = Held::default();
        held.insert("A", request(30, 10, 1_000));
        held.insert("B", request(31, 10, 1_000));
        held.insert("A", request(12, 10, 2_000));
        held.insert("A", request(45, 10, 500));
        assert_eq!(held.offsets_for("A"), [12, 30, 45]);
        assert_eq!(held.offsets_for("B"), [31]);
        assert!(held.offsets_for("C").is_empty());
        assert_eq!(held.len(), 4);
        assert!(held.contains(31) && !held.contains(32));
        // The same offset twice (a re-read) is held once.
        assert_eq!(held.insert("A", request(30, 10, 1_000)), 0);
        // Adopted and released, it still counts as decided.
        held.adopt("C", request(50, 10, 1_000));
        held.remove(50);
        assert!(held.decided(50) && !held.contains(50) && !held.decided(51));
        // Its own record read back while held changes nothing...
        assert_eq!(held.adopt("A", request(12, 10, 2_000)), 0);
        // ... nor once finished, until its deletion is read back.
        held.remove(45);
        held.finish(45);
        assert_eq!(held.adopt("A", request(45, 10, 500)), 0);
        held.deleted(45);
        assert!(held.adopt("A", request(45, 10, 500)) > 0);
        assert_eq!(held.len(), 4);
        let per = request(0, 10, 0).size("A");
        assert_eq!(held.bytes(), 4 * per);
        let (client, removed, size) = held.remove(30).unwrap();
        assert_eq!((client.as_str(), removed.offset, size), ("A", 30, per));
        assert_eq!(held.offsets_for("A"), [12, 45]);
        assert!(held.remove(30).is_none());
        held.remove(31);
        assert!(!held.holds_for("B"));
        assert_eq!(held.bytes(), 2 * per);
        assert_eq!(
            held.for_client("A").map(|r| r.offset).collect::<Vec<_>>(),
            [12, 45]
        );
    }

    #[test]
    fn expiry_finds_what_passed_soonest_first() {
        let mut held = Held::default();
        held.insert("A", request(1, 1, 3_000));
        held.insert("B", request(2, 1, 1_000));
        held.insert("A", request(3, 1, 2_000));
        assert!(held.expired(1_000).is_empty());
        assert_eq!(held.expired(2_001), [2, 3]);
        held.remove(2);
        assert_eq!(held.expired(i64::MAX), [3, 1]);
    }

    #[test]
    fn bounds_refuse_by_car_count_car_bytes_and_router_bytes() {
        let bounds = Bounds {
            per_car: 2,
            per_car_bytes: 500,
            total_bytes: 1_000,
        };
        let mut held = Held::default();
        let small = request(1, 10, 0);
        assert_eq!(held.admits("A", &small, &bounds, 0), Ok(()));
        held.insert("A", small);
        held.insert("A", request(2, 10, 0));
        assert_eq!(
            held.admits("A", &request(3, 10, 0), &bounds, 0),
            Err(Full::CarCount)
        );
        // Another car is not refused for A's count...
        assert_eq!(held.admits("B", &request(3, 10, 0), &bounds, 0), Ok(()));
        // ... but for its own bytes, and for the router's.
        assert_eq!(
            held.admits("B", &request(3, 450, 0), &bounds, 0),
            Err(Full::CarBytes)
        );
        assert_eq!(
            held.admits("B", &request(3, 10, 0), &bounds, 950),
            Err(Full::RouterBytes)
        );
        // Released, the car may be held for again.
        held.remove(1);
        assert_eq!(held.admits("A", &request(3, 10, 0), &bounds, 0), Ok(()));
        assert_eq!(Full::CarBytes.label(), "car_bytes");
    }
}
