//! The router: the downlink join (docs/architecture.md, docs/router.md).
//!
//! [`table`] holds the join's pure logic (sessions per client, filter
//! match, session ordering); [`run`] drives it from Kafka; [`topics`]
//! creates and checks every topic the system uses.

pub mod held;
pub mod metrics;
pub mod run;
pub mod table;
pub mod topics;
pub mod watch;

use std::collections::BTreeMap;

/// What the router runs with (flags and environment, see `router --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub bootstrap: String,
    /// Further librdkafka properties (security, tuning), for both clients.
    pub kafka_properties: BTreeMap<String, String>,
    pub group: String,
    pub downlink_topic: String,
    pub sessions_topic: String,
    pub routed_topic: String,
    pub receipts_topic: String,
    pub topic_header: String,
    /// How long a silent instance keeps its partitions before the group
    /// moves them (a crashed router's partitions wait this long).
    pub session_timeout_ms: u32,
    /// A partition of `cs.downlink` that is not this instance's and has had
    /// requests waiting this long with no instance committing an offset
    /// counts as orphaned ([`watch`]). 0 turns the watch off.
    pub orphan_after_ms: u32,
    /// Rejoin the group when partitions are orphaned (see [`watch`]).
    pub orphan_rejoin: bool,
    /// Maximum ages by topic filter, first match wins: a request older
    /// than its topic's is dropped as `expired` (also when it carries no
    /// expiry of its own).
    pub max_age: Vec<(String, std::time::Duration)>,
    /// Compacted topic of held requests (docs/contracts.md).
    pub held_topic: String,
    /// Whether requests on a topic are held for an offline car when they
    /// do not say (header `carbridge.hold`), by topic filter, first match
    /// wins.
    pub hold: Vec<(String, bool)>,
    /// Limits on held requests.
    pub hold_bounds: held::Bounds,
    /// The longest a request is held: a later expiry is brought forward.
    pub hold_max: std::time::Duration,
}

impl Config {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            kafka_properties: BTreeMap::new(),
            group: "carbridge-router".to_owned(),
            downlink_topic: contract::topics::DOWNLINK.to_owned(),
            sessions_topic: contract::topics::SESSIONS.to_owned(),
            routed_topic: contract::topics::ROUTED.to_owned(),
            receipts_topic: contract::topics::RECEIPTS.to_owned(),
            topic_header: contract::HEADER_TOPIC.to_owned(),
            session_timeout_ms: 10_000,
            orphan_after_ms: 60_000,
            orphan_rejoin: true,
            max_age: Vec::new(),
            held_topic: contract::topics::HELD.to_owned(),
            hold: Vec::new(),
            hold_bounds: held::Bounds::default(),
            hold_max: std::time::Duration::from_secs(86_400),
        }
    }

    /// Whether requests on `topic` are held by default (`None`: no rule).
    pub fn hold_for(&self, topic: &str) -> Option<bool> {
        self.hold
            .iter()
            .find(|(filter, _)| codec::topic::matches(filter, topic))
            .map(|(_, hold)| *hold)
    }

    /// The maximum age of requests on MQTT topic `topic`, if any rule
    /// matches.
    pub fn max_age_for(&self, topic: &str) -> Option<std::time::Duration> {
        self.max_age
            .iter()
            .find(|(filter, _)| codec::topic::matches(filter, topic))
            .map(|(_, age)| *age)
    }
}
