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
    /// The verdict on the run (`loadgen verdict`, which scripts/stack.sh
    /// runs after loadgen): absent from loadgen's own report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The local stack the run went through, and its server-side figures
    /// (`loadgen verdict --stack`): absent from loadgen's own report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<Stack>,
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
    /// Final receipts by outcome (`written`, `offline`, ...).
    pub outcomes: std::collections::BTreeMap<String, u64>,
    /// Progress records (receipt format 2: `held`) by outcome; each
    /// request's final receipt follows its progress record.
    #[serde(default)]
    pub progress: std::collections::BTreeMap<String, u64>,
    /// With `--hold`: final outcomes per class (`held`: asked to be held;
    /// `plain`: did not).
    #[serde(default)]
    pub by_class: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
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
    /// Why the failed ones failed.
    #[serde(default, skip_serializing_if = "ConnectFailures::is_empty")]
    pub failed_by: ConnectFailures,
}

/// Failed connects by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectFailures {
    /// The TCP connect could not be started (no port, no descriptor).
    pub socket: u64,
    /// The TLS handshake failed or took over 10 s (or, with resumption,
    /// the session primed for it did).
    pub tls: u64,
    /// The server closed the connection, or answered the CONNECT with
    /// anything but an accepting CONNACK.
    pub refused: u64,
    /// No CONNACK within 10 s of the CONNECT.
    pub no_connack: u64,
}

impl ConnectFailures {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        self.socket += other.socket;
        self.tls += other.tls;
        self.refused += other.refused;
        self.no_connack += other.no_connack;
    }

    /// "2 no CONNACK within 10 s, 1 refused", or "" with none.
    pub fn describe(&self) -> String {
        [
            (self.socket, "could not start the TCP connect"),
            (self.tls, "TLS handshake failed"),
            (self.refused, "refused or closed"),
            (self.no_connack, "no CONNACK within 10 s"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
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

/// The verdict on a run through the local stack (`loadgen verdict`): did
/// the system keep up, which goals did it meet, and whose latency is it?
/// Computed from the report's own figures, the broker probe's, and the
/// gateways' and router's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The verdict in one sentence, as the terminal's closing line.
    pub headline: String,
    /// The broker, as the verdict names it.
    pub broker: String,
    /// Messages that did not arrive, both directions; a downlink message
    /// answered by a receipt saying why it was not written is not counted.
    pub lost: u64,
    /// The latency goals, met or missed.
    pub goals: Vec<Goal>,
    /// Whose the latency is, per direction: the bridge's part and the
    /// broker's.
    pub shares: Vec<Share>,
    /// The downlink's four hops, from the router's and gateways' own
    /// histograms (whole run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink_hops: Option<DownlinkHops>,
    /// The broker alone beside the fleet: `kafka_rtt` producing and
    /// consuming 100 records/s through a topic of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    /// What the gateways counted, summed over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayCounts>,
    /// Downlink requests the router read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_requests: Option<u64>,
    /// What explains the outcome, in words.
    pub findings: Vec<String>,
    /// The machine's load at the verdict, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
}

/// The three verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Nothing lost (the latency goals may still be missed).
    Healthy,
    /// Messages lost while the broker kept up: the bridge's fault.
    Lost,
    /// Messages lost, and the broker is what fell behind: the run
    /// measured the broker, not the bridge.
    Overloaded,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "HEALTHY",
            Self::Lost => "LOST",
            Self::Overloaded => "OVERLOADED",
        }
    }
}

/// One direction's latency goal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    /// `uplink` or `downlink`.
    pub flow: String,
    /// The goal: p99 below this.
    pub p99_limit_ms: f64,
    pub p99_ms: f64,
    pub met: bool,
}

/// One direction's latency, split between the bridge and the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// `uplink` or `downlink`.
    pub flow: String,
    pub basis: ShareBasis,
    /// The bridge's part at the median; for an estimate, the rest beside
    /// the broker's estimated part (the clients included).
    pub bridge_p50_ms: f64,
    /// Measured splits only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_p99_ms: Option<f64>,
    pub broker_p50_ms: f64,
    pub broker_p99_ms: f64,
}

/// How a latency split was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareBasis {
    /// Split at each record's Kafka timestamp (the uplink).
    Measured,
    /// The broker's part taken as its hops at the probe's figures.
    Estimated,
}

/// The downlink's hops and, by their means, the bridge's share against
/// Kafka's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownlinkHops {
    pub hops: Vec<Hop>,
    /// The router's own time (mean).
    pub router_ms: f64,
    /// The gateway's own time, read to written to the car's socket (mean).
    pub gateway_ms: f64,
    /// Kafka's two hops (means).
    pub kafka_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    pub name: String,
    pub latency: Bucketed,
}

/// A latency from a Prometheus histogram: percentiles interpolated
/// within its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucketed {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The broker probe's figures (`kafka_rtt --json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub sent: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The gateways' counters at the verdict, summed over the gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayCounts {
    /// Uplink records Kafka acknowledged.
    pub acked: u64,
    /// Uplink records Kafka refused or timed out.
    pub failed: u64,
    /// Downlink messages written to cars.
    pub downlink_written: u64,
    /// Kafka's acknowledgement of the uplink records: the gateway's share
    /// of the uplink, without the consumer side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_ack: Option<Bucketed>,
}

/// The load average (1 minute) at the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub average: f64,
    pub cores: usize,
}

impl Load {
    /// More runnable work than cores: the fleet, the broker and the bridge
    /// competed for CPU, which bends every latency.
    pub fn busy(&self) -> bool {
        self.average > self.cores as f64
    }
}

/// The local stack a run went through (scripts/stack.sh writes this as
/// JSON; `loadgen verdict --stack` puts it in the report): its setup and
/// the server side's figures, which loadgen cannot see from the cars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// `mock` (librdkafka's mock cluster) or `tansu`.
    pub broker: String,
    /// The broker as run, in words (`tansu (memory://tansu/)`).
    pub broker_detail: String,
    /// Mutual TLS between the cars and the gateways.
    pub tls: bool,
    /// With TLS: the measured connections resumed a TLS session.
    pub tls_resume: bool,
    pub gateways: u32,
    /// Shards per gateway.
    pub shards: u32,
    /// The router's and gateways' `fetch.wait.max.ms`.
    pub fetch_wait_ms: u64,
    /// The cargo profile of the binaries: `release` or `dev`.
    pub profile: String,
    /// The gateways' CPU over loadgen's whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_cpu: Option<CpuUse>,
    /// The gateways' CPU over loadgen's measured window alone (the
    /// connect storm of the warm-up left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_cpu_window: Option<CpuUse>,
    /// The gateways' memory per connection under load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_memory: Option<MemoryUse>,
}

/// CPU time (user + system) of all gateways over a span of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuUse {
    pub cpu_ms: u64,
    pub secs: f64,
    /// Share of one core over the span, percent.
    pub core_percent: f64,
    /// Uplink PUBLISH the gateways received in the span.
    pub publish: u64,
    /// Gateway CPU per uplink PUBLISH; absent without PUBLISH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub us_per_publish: Option<f64>,
    /// Downlink messages the gateways wrote in the span, where counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downlink: Option<u64>,
}

/// The gateways' resident memory at the sample with the most open
/// connections, against the idle gateways before the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryUse {
    pub connections: u64,
    /// Resident set growth over the idle gateways, MiB.
    pub growth_mib: f64,
    pub idle_mib: f64,
    pub bytes_per_connection: f64,
}
