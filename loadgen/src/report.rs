//! What a load-generator run measured: the data behind the human summary,
//! the JSON report (this struct, serialized) and the HTML report.
//!
//! Times are milliseconds (f64) unless a name says otherwise; rates are per
//! second. Every count is exact (no sampling).

use serde::{Deserialize, Serialize};

/// Format version of the JSON report.
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    pub machine: Machine,
    /// "gateway" (end to end through Kafka) or "peer" (through MQTT
    /// subscribers on the server under test).
    pub mode: String,
    /// The options of the run, as given on the command line.
    pub options: Vec<(String, String)>,
    /// Seconds of warm-up (connecting, not measured) and of measurement.
    pub warmup_secs: f64,
    pub measured_secs: f64,
    pub connect: ConnectStats,
    pub uplink: FlowStats,
    /// Absent when the run sent no downlink messages.
    pub downlink: Option<FlowStats>,
    /// Messages cars received that loadgen did not send (another
    /// service's, such as the water-warning service's DL/WARN).
    #[serde(default)]
    pub other_downlink: u64,
    /// Car connections the server closed (or that failed) while the car
    /// was publishing.
    #[serde(default)]
    pub dropped_connections: u64,
    /// With `--receipts`: what the receipts said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<ReceiptStats>,
    /// With `--recount`: the uplink topic read again after the run.
    #[serde(default)]
    pub uplink_in_topic: Option<TopicCount>,
    /// One entry per second of the whole run (warm-up included).
    pub timeline: Vec<Tick>,
}

/// What the receipts of the run's downlink requests said (`--receipts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptStats {
    /// Downlink requests that asked for a receipt.
    pub asked: u64,
    /// Requests with a receipt; `missing` have none.
    pub answered: u64,
    pub missing: u64,
    /// Receipts beyond the first for one request.
    pub duplicates: u64,
    /// Records on the receipts topic that were not receipts.
    pub unreadable: u64,
    /// Receipts by outcome (`written`, `offline`, ...).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// From a request's send to its receipt read back.
    pub latency: Latency,
}

/// The uplink topic read again from the start of the run: what Kafka
/// holds, as opposed to what the live read saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicCount {
    pub records: u64,
    pub unique: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cpus: usize,
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectStats {
    pub cars: u64,
    pub connected: u64,
    pub failed: u64,
    /// Connections per second asked for, and achieved (connected / time
    /// from the first attempt to the last CONNACK).
    pub asked_rate: f64,
    pub achieved_rate: f64,
    /// From the start of the TCP connect to the CONNACK.
    pub latency: Latency,
}

/// One direction of messages: uplink (cars → Kafka or the peer's
/// subscribers) or downlink (Kafka or the peer → cars).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Messages per second asked for, and sent per second achieved, over
    /// the measured window.
    pub asked_rate: f64,
    pub achieved_rate: f64,
    pub sent: u64,
    /// Distinct messages that arrived.
    pub received: u64,
    /// sent − received: messages that never arrived.
    pub lost: u64,
    /// Arrivals of a message that had already arrived.
    pub duplicates: u64,
    /// Arrivals of a message after a later message of the same car.
    pub out_of_order: u64,
    /// From the send to the arrival.
    pub latency: Latency,
    /// Uplink through Kafka: the latency split at the record's Kafka
    /// timestamp (CreateTime, set when the gateway handed the record to
    /// its producer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Stages>,
}

/// One flow's latency in two parts, split at the record's Kafka timestamp
/// (millisecond resolution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    /// The car's send to the gateway's hand-over to its producer: the
    /// bridge's part (the car's own stack and the network included).
    pub bridge: Latency,
    /// The hand-over to the arrival at the consumer: producer batching,
    /// the broker, and the consumer's fetch.
    pub kafka: Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile 0–100, ms) pairs for a percentile-distribution plot,
    /// densest near the tail (as HdrHistogram's percentile output).
    pub distribution: Vec<(f64, f64)>,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the start of the run (end of this second).
    pub t: f64,
    /// True while warming up (not counted in the measured figures).
    pub warmup: bool,
    pub connected: u64,
    pub uplink_sent: u64,
    pub uplink_received: u64,
    pub uplink_p50_ms: f64,
    pub uplink_p99_ms: f64,
    pub downlink_sent: u64,
    pub downlink_received: u64,
    pub downlink_p99_ms: f64,
}
