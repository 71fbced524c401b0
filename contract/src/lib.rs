//! The Kafka data contracts between the gateway and the router
//! (docs/contracts.md is the reference; docs/architecture.md the overview).
//!
//! - [`SessionRecord`]: the value of a session-registry record
//!   (`mqtt.sessions`, key = client id), versioned JSON.
//! - [`SessionClock`]: session ids that order the sessions of one client
//!   across gateways.
//! - Header names of routed downlink records (`mqtt.downlink`) and the
//!   control record that tells a shard a newer session took over.
//!
//! Both sides use this crate, so the format has one definition.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Default topic names (all configurable).
pub mod topics {
    pub const UPLINK: &str = "cs.uplink";
    pub const DOWNLINK: &str = "cs.downlink";
    pub const SESSIONS: &str = "mqtt.sessions";
    pub const ROUTED: &str = "mqtt.downlink";
    pub const RECEIPTS: &str = "cs.downlink.receipts";
    /// Compacted: the requests routers hold for offline cars, written and
    /// read by routers only (docs/contracts.md, "Held requests").
    pub const HELD: &str = "mqtt.held";
}

/// Header carrying the MQTT topic name on uplink, downlink and routed
/// records.
pub const HEADER_TOPIC: &str = "mqtt.topic";
/// Header on a routed record: the session id (decimal ASCII) the router
/// addressed it to.
pub const HEADER_SESSION: &str = "carbridge.session";
/// Header marking a routed record as a control record rather than a message
/// for the car; its value names the order.
pub const HEADER_CONTROL: &str = "carbridge.control";
/// Control order: close the connection of the addressed session, a newer
/// session of the same client exists.
pub const CONTROL_TAKEOVER: &[u8] = b"takeover";

/// Header on a downlink request asking for a receipt: the correlation id
/// the service chose (any bytes). The receipt record carries it back.
pub const HEADER_RECEIPT: &str = "carbridge.receipt";
/// Header on a downlink request: when it expires, in milliseconds since
/// the Unix epoch (decimal ASCII). A request handled later is dropped with
/// outcome `expired`. On a routed record: the effective expiry (the
/// earlier of the request's and the router's maximum age).
pub const HEADER_EXPIRES: &str = "carbridge.expires";
/// Header on a routed record of a request that asked for a receipt: where
/// the request is in `cs.downlink`, `PARTITION:OFFSET` (decimal ASCII).
pub const HEADER_REQUEST: &str = "carbridge.request";
/// Header on a downlink request: `1` asks the router to hold it while its
/// car cannot take it (no live session, or no matching filter) until the
/// car can or the request expires; `0` asks it not to, whatever the
/// router's `--hold` rules say. Anything else makes the request `invalid`.
pub const HEADER_HOLD: &str = "carbridge.hold";

/// Reads a [`HEADER_HOLD`] value: `Some(true)` for `1`, `Some(false)` for
/// `0`, `None` for anything else.
pub fn parse_hold(bytes: &[u8]) -> Option<bool> {
    match bytes {
        b"1" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// What became of a downlink request ([`Receipt::outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Handed to the car's TCP connection (QoS 0 cannot say more).
    Written,
    /// No live session for the car.
    Offline,
    /// The car has no subscription matching the topic.
    NoFilter,
    /// The car reads too slowly: its queue at the gateway was full.
    SlowCar,
    /// Queued for a connection that closed before it was written.
    Closed,
    /// No key, no or invalid `mqtt.topic` header, or an unreadable expiry.
    Invalid,
    /// The car's session names a gateway slot that does not exist.
    NoSlot,
    /// Handled after its expiry.
    Expired,
    /// Not final: the router holds it until the car can take it or it
    /// expires (format version 2).
    Held,
    /// Holding was asked, but a bound on held requests was reached: not
    /// delivered (format version 2).
    HoldFull,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Written,
        Outcome::Offline,
        Outcome::NoFilter,
        Outcome::SlowCar,
        Outcome::Closed,
        Outcome::Invalid,
        Outcome::NoSlot,
        Outcome::Expired,
        Outcome::Held,
        Outcome::HoldFull,
    ];

    /// Its place in [`Outcome::ALL`] (for counters kept per outcome).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Offline => "offline",
            Outcome::NoFilter => "no_filter",
            Outcome::SlowCar => "slow_car",
            Outcome::Closed => "closed",
            Outcome::Invalid => "invalid",
            Outcome::NoSlot => "no_slot",
            Outcome::Expired => "expired",
            Outcome::Held => "held",
            Outcome::HoldFull => "hold_full",
        }
    }

    /// Whether a receipt with this outcome is the request's last word:
    /// every outcome but [`Outcome::Held`].
    pub fn is_final(self) -> bool {
        self != Outcome::Held
    }
}

/// Which part of the bridge decided a receipt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecidedBy {
    Router,
    Gateway,
}

/// Where a request is in `cs.downlink`: with the correlation id, what makes
/// a repeated receipt recognisable as the same request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRef {
    pub partition: i32,
    pub offset: i64,
}

impl RequestRef {
    /// The [`HEADER_REQUEST`] value.
    pub fn header(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    pub fn parse_header(bytes: &[u8]) -> Option<Self> {
        let (partition, offset) = std::str::from_utf8(bytes).ok()?.split_once(':')?;
        Some(Self {
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }
}

/// The value of a receipt record (`cs.downlink.receipts`, key = client id,
/// header [`HEADER_RECEIPT`] = the request's correlation id), version 2.
///
/// ```json
/// {"v":2,"outcome":"held","final":false,"at_ms":1796040005123,"by":"router","until_ms":1796040605000,"request":{"partition":2,"offset":1234}}
/// {"v":2,"outcome":"written","final":true,"at_ms":1796040100131,"by":"gateway","slot":3,"request":{"partition":2,"offset":1234}}
/// ```
///
/// Version 1 had no `final` (every record was final) and no `held`:
/// [`Receipt::decode`] reads both, a version 1 record as final.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub v: u32,
    pub outcome: Outcome,
    /// Whether this is the request's last record; a service waits for the
    /// first final one. Only `held` is not.
    #[serde(rename = "final", default = "final_in_v1")]
    pub is_final: bool,
    /// When it was decided, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub by: DecidedBy,
    /// The gateway slot (shard) that decided, for `by: gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// For `held`: the request's effective expiry, milliseconds since the
    /// Unix epoch (the router's `--max-age` may have shortened it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    pub request: RequestRef,
}

fn final_in_v1() -> bool {
    true
}

impl Receipt {
    pub fn new(outcome: Outcome, by: DecidedBy, slot: Option<u32>, request: RequestRef) -> Self {
        Self {
            v: RECEIPT_VERSION,
            outcome,
            is_final: outcome.is_final(),
            at_ms: u64::try_from(now_ms()).unwrap_or(0),
            by,
            slot,
            until_ms: None,
            request,
        }
    }

    /// The router's progress record: the request is held until `until_ms`.
    pub fn held(until_ms: i64, request: RequestRef) -> Self {
        Self {
            until_ms: Some(until_ms),
            ..Self::new(Outcome::Held, DecidedBy::Router, None, request)
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of enums and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads versions 1 and 2.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let receipt: Self = serde_json::from_slice(bytes)?;
        match receipt.v {
            1 if receipt.is_final && receipt.outcome.is_final() => Ok(receipt),
            RECEIPT_VERSION => Ok(receipt),
            v => Err(RecordError::Version(v)),
        }
    }
}

/// Milliseconds since the Unix epoch now: the clock of Kafka timestamps,
/// expiries and receipts.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads a [`HEADER_EXPIRES`] value; `None` if it is not a decimal number.
pub fn parse_expiry(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

/// The session-record version this crate writes. Readers accept any record
/// whose `v` they know and refuse (count, skip) the others.
pub const SESSION_VERSION: u32 = 1;

/// The receipt version this crate writes; [`Receipt::decode`] also reads 1.
pub const RECEIPT_VERSION: u32 = 2;

/// One session-registry record. Live records carry the session's filters;
/// an ended record carries none.
///
/// ```json
/// {"v":1,"session":7349921234567168003,"slot":3,"filters":["DL/#"]}
/// {"v":1,"session":7349921234567168003,"slot":3,"ended":"closed"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRecord {
    /// Format version.
    pub v: u32,
    /// Orders the sessions of one client: the larger id is the newer one.
    pub session: u64,
    /// The `mqtt.downlink` partition of the shard holding the connection.
    pub slot: u32,
    /// Topic filters in subscription order (live records only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Set on an end-of-session record: why the session ended (`closed`
    /// when its connection closed, `gone` when a shard reports a session
    /// it does not hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<End>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// The gateway closed the connection (any reason).
    Closed,
    /// A shard received a routed message for a session it does not hold
    /// (for example after the gateway crashed and restarted).
    Gone,
}

/// A record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a session record: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error(
        "record version {0} is not known (this build reads sessions {SESSION_VERSION}, receipts 1 and {RECEIPT_VERSION})"
    )]
    Version(u32),
}

impl SessionRecord {
    pub fn live(session: u64, slot: u32, filters: impl IntoIterator<Item = String>) -> Self {
        Self {
            v: SESSION_VERSION,
            session,
            slot,
            filters: filters.into_iter().collect(),
            ended: None,
        }
    }

    pub fn ended(session: u64, slot: u32, why: End) -> Self {
        Self {
            v: SESSION_VERSION,
            session,
            slot,
            filters: Vec::new(),
            ended: Some(why),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(bytes)?;
        if record.v != SESSION_VERSION {
            return Err(RecordError::Version(record.v));
        }
        Ok(record)
    }
}

/// Bits of a session id that hold the slot, below the microseconds.
const SLOT_BITS: u32 = 12;

/// Issues session ids: wall-clock microseconds since the Unix epoch, shifted
/// left by 12 bits, with the low 12 bits of the slot below. Ids from one
/// clock strictly increase; ids from different gateways order sessions by
/// connect time, correctly as long as the hosts' clocks agree better than a
/// car can reconnect (NTP keeps them within milliseconds; a car needs a TCP
/// and MQTT handshake).
#[derive(Debug)]
pub struct SessionClock {
    slot: u32,
    last: u64,
}

impl SessionClock {
    pub fn new(slot: u32) -> Self {
        Self { slot, last: 0 }
    }

    /// The next id at the current time.
    pub fn issue(&mut self) -> u64 {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> SLOT_BITS))
            .unwrap_or(0);
        self.issue_at(micros)
    }

    /// The next id at `micros` since the epoch.
    pub fn issue_at(&mut self, micros: u64) -> u64 {
        let micros = micros.max(self.last + 1);
        self.last = micros;
        (micros << SLOT_BITS) | u64::from(self.slot & ((1 << SLOT_BITS) - 1))
    }
}

/// Parses a decimal session id from a header value.
pub fn parse_session(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_read_as_documented() {
        let request = RequestRef {
            partition: 2,
            offset: 1234,
        };
        let mut receipt = Receipt::new(Outcome::NoFilter, DecidedBy::Gateway, Some(3), request);
        receipt.at_ms = 1_796_040_005_123;
        let bytes = receipt.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":2,"outcome":"no_filter","final":true,"at_ms":1796040005123,"by":"gateway","slot":3,"request":{"partition":2,"offset":1234}}"#
        );
        assert_eq!(Receipt::decode(&bytes).unwrap(), receipt);
        let mut held = Receipt::held(1_796_040_605_000, request);
        held.at_ms = 1_796_040_005_123;
        assert_eq!(
            std::str::from_utf8(&held.encode()).unwrap(),
            r#"{"v":2,"outcome":"held","final":false,"at_ms":1796040005123,"by":"router","until_ms":1796040605000,"request":{"partition":2,"offset":1234}}"#
        );
        assert_eq!(Receipt::decode(&held.encode()).unwrap(), held);
        assert_eq!(
            RequestRef::parse_header(request.header().as_bytes()),
            Some(request)
        );
        assert_eq!(RequestRef::parse_header(b"2:"), None);
        assert_eq!(parse_expiry(b"1796040005123"), Some(1_796_040_005_123));
        assert_eq!(parse_expiry(b"soon"), None);
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome.index(), i);
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{}\"", outcome.label()));
        }
    }

    #[test]
    fn version_1_receipts_are_read_as_final() {
        let v1 = br#"{"v":1,"outcome":"written","at_ms":5,"by":"gateway","slot":3,"request":{"partition":2,"offset":1234}}"#;
        let receipt = Receipt::decode(v1).unwrap();
        assert!(receipt.is_final);
        assert_eq!(receipt.outcome, Outcome::Written);
        // Version 1 knew nothing of holding or of progress records.
        assert!(
            Receipt::decode(br#"{"v":1,"outcome":"held","at_ms":5,"by":"router","request":{"partition":2,"offset":1}}"#)
                .is_err()
        );
        assert!(
            Receipt::decode(br#"{"v":1,"outcome":"offline","final":false,"at_ms":5,"by":"router","request":{"partition":2,"offset":1}}"#)
                .is_err()
        );
        assert!(matches!(
            Receipt::decode(br#"{"v":3,"outcome":"offline","final":true,"at_ms":5,"by":"router","request":{"partition":2,"offset":1}}"#),
            Err(RecordError::Version(3))
        ));
        assert_eq!(parse_hold(b"1"), Some(true));
        assert_eq!(parse_hold(b"0"), Some(false));
        assert_eq!(parse_hold(b"yes"), None);
    }

    #[test]
    fn records_round_trip_and_read_as_documented() {
        let live = SessionRecord::live(42, 3, ["DL/#".to_owned(), "DL/WARN".to_owned()]);
        let bytes = live.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"session":42,"slot":3,"filters":["DL/#","DL/WARN"]}"#
        );
        assert_eq!(SessionRecord::decode(&bytes).unwrap(), live);

        let ended = SessionRecord::ended(42, 3, End::Gone);
        let bytes = ended.encode();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"session":42,"slot":3,"ended":"gone"}"#
        );
        assert_eq!(SessionRecord::decode(&bytes).unwrap(), ended);
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        assert!(matches!(
            SessionRecord::decode(br#"{"v":2,"session":1,"slot":0}"#),
            Err(RecordError::Version(2))
        ));
        assert!(SessionRecord::decode(b"").is_err());
        assert!(SessionRecord::decode(b"\xff\x00").is_err());
        assert!(SessionRecord::decode(br#"{"v":1,"session":-1,"slot":0}"#).is_err());
    }

    #[test]
    fn session_ids_increase_and_order_by_time_then_slot() {
        let mut a = SessionClock::new(1);
        let mut b = SessionClock::new(2);
        let first = a.issue_at(1_000);
        // The same microsecond again: still strictly increasing.
        let second = a.issue_at(1_000);
        assert!(second > first);
        // A later connect elsewhere orders after, whatever the slots.
        assert!(b.issue_at(1_002) > second);
        // Same microsecond on two slots: distinct ids.
        assert_ne!(
            SessionClock::new(1).issue_at(5),
            SessionClock::new(2).issue_at(5)
        );
        assert!(SessionClock::new(0).issue() > first);
    }

    #[test]
    fn session_headers_parse() {
        assert_eq!(parse_session(b"123"), Some(123));
        assert_eq!(parse_session(b"x"), None);
        assert_eq!(parse_session(b"\xff"), None);
    }
}
