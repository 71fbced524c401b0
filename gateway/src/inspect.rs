//! What `GET /cars/<client id>` on the admin endpoint answers: one car as
//! this gateway holds it ([`CarView`]), or that it is not here
//! ([`NotHere`]), with the close of its previous connection here when it is
//! still remembered ([`Closes`]).
//!
//! The question's way: the admin thread asks the registry (which shard
//! holds the client id); the registry sends that shard an order and kicks
//! its poller; the shard answers a parked connection from its control
//! block at once, and asks a connection with a task to answer on its next
//! turn (`shard::inspect`). The admin thread waits 2 s at most.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use codec::ByteString;
use serde::Serialize;

use crate::session::CloseReason;

/// Closes remembered per shard: a car that connects again finds its
/// previous close here for about as long as it takes the gateway's other
/// cars to close 4,096 times per shard. An entry costs about 200 bytes
/// (the client id, shared with nothing once its connection is gone, the
/// map's and the queue's entries): under 1 MiB per shard.
pub(crate) const CLOSES_PER_SHARD: usize = 4096;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// `at` on the wall clock, given that `now` is `now_ms`.
pub(crate) fn wall_ms(at: Instant, now: Instant, now_ms: u64) -> u64 {
    let ago = now.saturating_duration_since(at);
    now_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
}

/// When a session was accepted, from its id: `(microseconds since the
/// epoch << 12) | slot` (docs/contracts.md, "Session ids").
pub(crate) fn session_started_ms(session: u64) -> u64 {
    (session >> 12) / 1000
}

/// A connection's close, as remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub(crate) reason: CloseReason,
    pub(crate) at_ms: u64,
    pub(crate) session: Option<u64>,
    pub(crate) shard: usize,
}

/// A close as the answer shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PreviousClose {
    /// The bounded label the close is counted by
    /// (`carbridge_gateway_connections_closed_total{reason}`).
    pub(crate) reason: &'static str,
    /// What the label leaves out: the protocol error of a `malformed`,
    /// the feature of an `unsupported`, the CONNACK of a `refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    pub(crate) at_ms: u64,
    pub(crate) session: Option<u64>,
    pub(crate) shard: usize,
}

impl From<Close> for PreviousClose {
    fn from(close: Close) -> Self {
        let detail = match close.reason {
            CloseReason::Malformed(error) => Some(error.to_string()),
            CloseReason::Unsupported(what) => Some(what.label().to_owned()),
            CloseReason::Refused(code) => Some(format!("{code:?}")),
            _ => None,
        };
        Self {
            reason: close.reason.label(),
            detail,
            at_ms: close.at_ms,
            session: close.session,
            shard: close.shard,
        }
    }
}

/// The most recent closes by client id, at most `max` of them (the
/// oldest forgotten first). A car that closes again replaces its entry.
#[derive(Debug)]
pub(crate) struct Closes {
    max: usize,
    next: u64,
    last: HashMap<ByteString, (u64, Close)>,
    /// `(sequence, client id)` in the order of the closes; an entry whose
    /// client closed again since is stale and goes without forgetting it.
    order: VecDeque<(u64, ByteString)>,
}

impl Closes {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            next: 0,
            last: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn remember(&mut self, client_id: &ByteString, close: Close) {
        let sequence = self.next;
        self.next += 1;
        self.last.insert(client_id.clone(), (sequence, close));
        self.order.push_back((sequence, client_id.clone()));
        while self.order.len() > self.max {
            let Some((sequence, client_id)) = self.order.pop_front() else {
                break;
            };
            if self
                .last
                .get(&client_id)
                .is_some_and(|(last, _)| *last == sequence)
            {
                self.last.remove(&client_id);
            }
        }
    }

    pub(crate) fn get(&self, client_id: &str) -> Option<Close> {
        self.last.get(client_id).map(|(_, close)| *close)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

/// A direction's PUBLISH packets and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Queued {
    pub(crate) messages: u32,
    pub(crate) bytes: usize,
}

/// One car connected to this gateway, as `GET /cars/<client id>` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct CarView {
    pub(crate) client_id: String,
    pub(crate) connected: bool,
    pub(crate) shard: usize,
    /// The shard's `mqtt.downlink` partition (none with the downlink off).
    pub(crate) slot: Option<u32>,
    /// The session id (none with the downlink off).
    pub(crate) session: Option<u64>,
    /// The car's address: a PROXY header's source where a proxy sent one.
    pub(crate) address: SocketAddr,
    /// The identity its certificate (or a trusted proxy) proved.
    pub(crate) tls_identity: Option<String>,
    pub(crate) keep_alive_secs: Option<u64>,
    /// From the session id (none with the downlink off).
    pub(crate) connected_at_ms: Option<u64>,
    /// The keep-alive deadline less 1.5 × the keep-alive: the last packet,
    /// or the end of a read pause of the gateway's since.
    pub(crate) last_packet_at_ms: Option<u64>,
    /// PUBLISH packets handed to Kafka, and their payloads' bytes.
    pub(crate) uplink_messages: u32,
    pub(crate) uplink_bytes: u32,
    /// PUBLISH packets written to the car, and their bytes (the whole
    /// packets: payload, topic and header).
    pub(crate) downlink_messages: u32,
    pub(crate) downlink_bytes: u32,
    /// Downlink messages queued at the gateway, not yet written.
    pub(crate) downlink_queued: Queued,
    /// Counters stop at 4294967295 (32 bits each, per connection).
    pub(crate) counters_saturate_at: u32,
    /// Parked: quiet, held without a task (docs/gateway.md).
    pub(crate) parked: bool,
    pub(crate) filters: Vec<String>,
    pub(crate) previous_close: Option<PreviousClose>,
}

/// The answer for a car this gateway does not hold.
#[derive(Debug, Serialize)]
pub(crate) struct NotHere<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) connected: bool,
    pub(crate) previous_close: Option<PreviousClose>,
}

impl<'a> NotHere<'a> {
    pub(crate) fn new(client_id: &'a str, previous: Option<Close>) -> Self {
        Self {
            client_id,
            connected: false,
            previous_close: previous.map(PreviousClose::from),
        }
    }
}

/// `value` as one line of JSON (the types here always serialize).
pub(crate) fn json(value: &impl Serialize) -> String {
    let mut line =
        serde_json::to_string(value).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"));
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn close(at_ms: u64) -> Close {
        Close {
            reason: CloseReason::KeepAliveTimeout,
            at_ms,
            session: Some(at_ms << 12),
            shard: 0,
        }
    }

    #[test]
    fn the_latest_closes_are_remembered_and_the_oldest_forgotten() {
        let mut closes = Closes::new(3);
        for (n, id) in ["A", "B", "C"].into_iter().enumerate() {
            closes.remember(&ByteString::from(id), close(n as u64));
        }
        // A closes again: its entry is replaced, not added.
        closes.remember(&ByteString::from("A"), close(10));
        assert_eq!(closes.get("A").map(|c| c.at_ms), Some(10));
        assert_eq!(closes.len(), 3);
        // One more: B, the oldest still remembered, goes.
        closes.remember(&ByteString::from("D"), close(11));
        assert_eq!(closes.get("B"), None);
        assert_eq!(closes.get("C").map(|c| c.at_ms), Some(2));
        assert!(closes.len() <= 3);
        // A flapping car pushes the others out, never beyond the bound.
        for at in 20..40 {
            closes.remember(&ByteString::from("A"), close(at));
        }
        assert_eq!(closes.len(), 1);
        assert_eq!(closes.get("A").map(|c| c.at_ms), Some(39));
    }

    #[test]
    fn a_close_shows_its_label_and_what_the_label_leaves_out() {
        let shown = PreviousClose::from(Close {
            reason: CloseReason::Unsupported(crate::session::Unsupported::Will),
            at_ms: 5,
            session: None,
            shard: 1,
        });
        assert_eq!(shown.reason, "unsupported");
        assert_eq!(shown.detail.as_deref(), Some("will"));
        assert_eq!(
            json(&NotHere::new("VIN1", Some(close(7)))),
            "{\"client_id\":\"VIN1\",\"connected\":false,\"previous_close\":\
             {\"reason\":\"keep_alive_timeout\",\"at_ms\":7,\"session\":28672,\"shard\":0}}\n"
        );
    }

    #[test]
    fn times_come_from_the_session_id_and_the_wall_clock() {
        // 2026-01-01T00:00:00.123456Z in microseconds, slot 3.
        let session = (1_767_225_600_123_456u64 << 12) | 3;
        assert_eq!(session_started_ms(session), 1_767_225_600_123);
        let now = Instant::now();
        let before = now.checked_sub(Duration::from_millis(1500));
        assert_eq!(before.map(|at| wall_ms(at, now, 10_000)), Some(8_500));
        assert_eq!(wall_ms(now + Duration::from_secs(1), now, 10_000), 10_000);
    }
}
