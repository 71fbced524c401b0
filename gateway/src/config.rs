//! The gateway's configuration: one TOML file, every field optional with a
//! production-sane default; command-line flags and environment variables
//! override it (see `gateway --help`). `gateway print-default-config`
//! prints the defaults as a commented starting point.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ops::secrets;
use serde::{Deserialize, Serialize};

use crate::mapping::{Rule, TopicMapper};
use crate::session::Timing;

mod listener;
pub use listener::{ClientAuth, IDENTITY_PLACEHOLDER, IdentitySource, Listener, Proxy, Tls};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the one plain MQTT listener used when `listeners` is
    /// empty; every shard binds it (SO_REUSEPORT) and the kernel spreads
    /// new connections over them.
    pub listen: SocketAddr,
    /// MQTT listeners, each plain or TLS; empty: one plain listener on
    /// `listen`.
    pub listeners: Vec<Listener>,
    /// Executors; 0 means one per CPU this process may run on (its
    /// affinity mask).
    pub shards: usize,
    /// Whether each shard is pinned to a CPU (`crate::pinning`).
    pub pin: Pin,
    /// Log a task that holds its shard too long, with a backtrace. Off by
    /// default: glommio resolves every such backtrace on the shard thread,
    /// which loads the binary's debug info (about 90 MiB resident, kept)
    /// and makes the stall it reports longer; for debugging only.
    pub detect_stalls: bool,
    pub mqtt: Mqtt,
    /// Ordered topic mapping rules; the first match wins. A PUBLISH no rule
    /// accepts closes the connection.
    pub mapping: Vec<Rule>,
    pub kafka: Kafka,
    pub downlink: Downlink,
    pub limits: Limits,
    pub authorization: Authorization,
    pub drain: Drain,
    pub tls_watch: TlsWatch,
    pub admin: Admin,
    pub log: Log,
}

/// Whether shards are pinned to CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// Pinned when the affinity mask is a strict subset of the online
    /// CPUs (taskset, a cpuset, the kubelet's static CPU manager): CPUs
    /// that are this process's own. A mask of the whole machine is shared
    /// with whoever else runs there: not pinned.
    #[default]
    Auto,
    /// Pinned to the CPUs of the affinity mask, whatever it is: for a
    /// host that runs one gateway and nothing else of weight.
    Always,
    /// Never pinned.
    Never,
}

/// How a gateway empties itself (SIGTERM, `POST /drain`): not ready, no
/// new connections, the open ones closed at a pace the other instances
/// can take as reconnects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Drain {
    /// Connections closed per second, the whole gateway.
    pub closes_per_sec: u32,
    /// Longest a drain takes: with more connections than `closes_per_sec`
    /// closes in this time, they close faster. A Kubernetes grace period
    /// (or systemd's TimeoutStopSec) must exceed it by the flush (15 s).
    pub max_secs: u64,
}

/// The TLS listeners' files looked at for changes (a renewed certificate,
/// a Kubernetes Secret swapped by the kubelet) and reloaded as on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsWatch {
    /// Seconds between looks at every TLS file (its resolved path, inode,
    /// size and times); 0: never (SIGHUP and `POST /reload` only).
    pub poll_secs: u64,
    /// Seconds a changed set of files may go on not loading before the
    /// failure is reported (logged as an error, counted, the failing gauge
    /// set); meanwhile each further change is tried, quietly, and the old
    /// files serve. Rides out a set replaced one file at a time.
    pub settle_secs: u64,
}

/// Overload limits, each counted when hit
/// (`carbridge_gateway_limited_total{limit=...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections one shard holds at most; a socket beyond it is closed
    /// as soon as it is accepted, before any TLS work.
    pub max_connections_per_shard: usize,
    /// New connections one shard accepts per second at most; a reconnect
    /// storm waits in the kernel's listen backlog (and the cars retry)
    /// instead of taking the shard's CPU from the cars already connected.
    pub accept_rate_per_shard: u32,
    /// Longest client id in bytes; a longer one gets CONNACK 0x02.
    pub max_client_id_length: usize,
    /// Topic filters one session may hold; more get 0x80 in the SUBACK.
    pub max_filters_per_session: usize,
    /// Longest topic filter in bytes; a longer one gets 0x80.
    pub max_filter_length: usize,
    /// Bytes one shard holds in incomplete packets, all connections
    /// together; beyond it the connections holding the most are closed
    /// (`partial_budget`).
    pub max_partial_bytes_per_shard: usize,
}

/// What a car may do beyond the topic mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Authorization {
    /// Topic filters a car may SUBSCRIBE to (or narrower ones); a level
    /// `{client_id}` stands for the car's id. Empty: any filter. A filter
    /// outside them gets 0x80 in the SUBACK; the session stays.
    pub subscribe: Vec<String>,
}

/// Delivery of messages to cars (docs/contracts.md: registry, routed downlink).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Downlink {
    /// Off: no session-registry records, no downlink consumer (an
    /// uplink-only gateway).
    pub enabled: bool,
    /// This gateway instance's number, 0-based. Unset: the ordinal at the
    /// end of the host name (`gateway-3` in a Kubernetes StatefulSet is 3),
    /// else 0. Two running gateways must never share one.
    pub bridge_id: Option<u32>,
    /// Shards of every gateway instance; instance `b` owns the
    /// `mqtt.downlink` partitions (slots) `b*s .. b*s+s-1`. 0 = this
    /// process's shard count; set it explicitly when instances could
    /// differ in CPUs.
    pub shards_per_bridge: u32,
    /// The routed downlink topic: one partition per slot.
    pub topic: String,
    /// The compacted session-registry topic.
    pub sessions_topic: String,
    /// Where receipts go: one for each routed message that asked for one
    /// (header carbridge.receipt), with what this gateway did with it.
    pub receipts_topic: String,
    /// Downlink bytes queued for one car that does not read; beyond it,
    /// messages for that car are dropped and counted (`slow_car`).
    pub max_queued_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mqtt {
    /// Largest packet accepted, fixed header included; larger ones close
    /// the connection before their body is read.
    pub max_packet_size: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Cap on the keep-alive a car may ask for, in seconds; a car asking
    /// for 0 (none) gets this. Idle cars are closed after 1.5 × keep-alive.
    pub max_keep_alive_secs: u64,
    /// Seconds a car may take none of what the gateway writes to it (its
    /// replies, its downlink messages) before it is closed as
    /// `write_stall`.
    pub write_timeout_secs: u64,
    /// Seconds a packet may take to arrive once its first byte has: a car
    /// that begins a packet and stalls is closed (`packet_timeout`).
    pub packet_timeout_secs: u64,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    /// librdkafka properties, passed through unchanged: `bootstrap.servers`,
    /// and for a secured cluster `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `ssl.ca.location`, … The gateway sets
    /// `partitioner = murmur2_random` itself (the uplink contract).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are read from files at start
    /// (`"sasl.password" = "/run/secrets/kafka/password"`), trailing line
    /// ends removed: secrets kept out of this file (`ops::secrets`).
    pub properties_from_files: BTreeMap<String, PathBuf>,
    /// librdkafka properties whose values are read from environment
    /// variables at start (`"sasl.password" = "KAFKA_PASSWORD"`).
    pub properties_from_env: BTreeMap<String, String>,
    /// Uplink bytes (payload + key + topic) per shard handed to Kafka and
    /// not yet acknowledged; at this bound the shard stops reading from its
    /// sockets until acknowledgements bring it down.
    pub max_in_flight_bytes: usize,
    /// Kafka header carrying the MQTT topic name.
    pub topic_header: String,
    /// Properties whose values [`Kafka::read_secrets`] read: redacted
    /// wherever the configuration is shown, whatever their names.
    #[serde(skip)]
    secrets: BTreeSet<String>,
}

/// Secret-looking values and the values read from files or variables
/// shown as `(redacted)`.
impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("properties", &self.shown_properties())
            .field("properties_from_files", &self.properties_from_files)
            .field("properties_from_env", &self.properties_from_env)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("topic_header", &self.topic_header)
            .finish()
    }
}

impl Kafka {
    /// Sets property `key` to `value`, dropping any file or variable the
    /// property came from (a flag overrides the file).
    pub fn set_property(&mut self, key: &str, value: &str) {
        self.properties_from_files.remove(key);
        self.properties_from_env.remove(key);
        self.properties.insert(key.to_owned(), value.to_owned());
    }

    /// Property `key` is to be read from the file at `path`.
    pub fn set_property_file(&mut self, key: &str, path: PathBuf) {
        self.properties.remove(key);
        self.properties_from_env.remove(key);
        self.properties_from_files.insert(key.to_owned(), path);
    }

    /// Property `key` is to be read from environment variable `variable`.
    pub fn set_property_env(&mut self, key: &str, variable: &str) {
        self.properties.remove(key);
        self.properties_from_files.remove(key);
        self.properties_from_env
            .insert(key.to_owned(), variable.to_owned());
    }

    /// Every property to be read, and where from.
    fn secret_sources(&self) -> impl Iterator<Item = (&String, secrets::Source<'_>)> {
        let files = self
            .properties_from_files
            .iter()
            .map(|(key, path)| (key, secrets::Source::File(path)));
        let env = self
            .properties_from_env
            .iter()
            .map(|(key, variable)| (key, secrets::Source::Env(variable)));
        files.chain(env)
    }

    /// Reads every property of `properties_from_files` and
    /// `properties_from_env` into `properties`, as a start does; the first
    /// that cannot be read is the error.
    pub fn read_secrets(&mut self) -> Result<(), secrets::SecretError> {
        let mut read = BTreeMap::new();
        for (key, source) in self.secret_sources() {
            read.insert(key.clone(), secrets::read(key, source)?);
        }
        self.properties_from_files.clear();
        self.properties_from_env.clear();
        for (key, value) in read {
            self.secrets.insert(key.clone());
            self.properties.insert(key, value);
        }
        Ok(())
    }

    /// Why each property that a start would read cannot be read; the
    /// values read are dropped at once.
    pub fn check_secrets(&self) -> Vec<secrets::SecretError> {
        self.secret_sources()
            .filter_map(|(key, source)| secrets::read(key, source).err())
            .collect()
    }

    /// `properties` as they may be shown (logs, `check-config`).
    pub fn shown_properties(&self) -> BTreeMap<String, String> {
        secrets::redacted(&self.properties, |key| self.secrets.contains(key))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Address of the HTTP endpoint serving /metrics, /healthz, /livez,
    /// /readyz, POST /drain and POST /reload; empty string disables it.
    pub listen: String,
    /// A file holding the admin token that POST /drain and POST /reload
    /// must carry (`Authorization: Bearer <token>`); the environment
    /// variable `CARBRIDGE_ADMIN_TOKEN` is the other source. Without a
    /// token the actions run only on a loopback `listen` address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `/livez` fails once a shard's poller has not turned for this long.
    pub liveness_timeout_secs: u64,
    /// Admin connections open at once; beyond, the oldest that has not
    /// sent its request makes room.
    pub max_connections: usize,
    /// Time from an admin connection's accept to the end of its request
    /// head.
    pub head_timeout_secs: u64,
    /// Time from an admin connection's accept to the end of its answer.
    pub exchange_timeout_secs: u64,
}

impl Admin {
    /// The endpoint's bounds on its connections.
    pub fn limits(&self) -> ops::admin::Limits {
        ops::admin::Limits {
            max_connections: self.max_connections,
            head_timeout: Duration::from_secs(self.head_timeout_secs),
            exchange_timeout: Duration::from_secs(self.exchange_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `info,gateway=debug`; `RUST_LOG`
    /// overrides it.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            listeners: Vec::new(),
            shards: 0,
            pin: Pin::Auto,
            detect_stalls: false,
            mqtt: Mqtt::default(),
            mapping: vec![Rule::new("^UL/.+", "cs.uplink")],
            kafka: Kafka::default(),
            downlink: Downlink::default(),
            limits: Limits::default(),
            authorization: Authorization::default(),
            drain: Drain::default(),
            tls_watch: TlsWatch::default(),
            admin: Admin::default(),
            log: Log::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // 700,000 cars over a few dozen shards is some 20,000 each;
            // twice that leaves room for a failed-over neighbour's fleet.
            max_connections_per_shard: 50_000,
            // About half of what one core does in full TLS handshakes
            // (BENCHMARKS.md): a storm never takes the whole core.
            accept_rate_per_shard: 2_000,
            // A car's packets arrive whole within a segment or two: only
            // large or stalled ones are held. 32 MiB is 8,000 connections
            // each 4 KiB into a packet.
            max_partial_bytes_per_shard: 32 * 1024 * 1024,
            // A VIN is 17 bytes; MQTT 3.1.1 asks servers for at least 23.
            max_client_id_length: 128,
            max_filters_per_session: 32,
            max_filter_length: 256,
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            // 40,000 cars (two shards' worth) in 80 s: each other instance
            // of a ten-gateway fleet sees about 55 reconnects a second.
            closes_per_sec: 500,
            max_secs: 120,
        }
    }
}

impl Default for TlsWatch {
    fn default() -> Self {
        Self {
            // Kubelet takes a minute or more to pass a Secret's update on:
            // a few seconds more are nothing, and a look is a stat per file.
            poll_secs: 5,
            // Six looks: a set copied in file by file is whole long before;
            // the failing alert waits a minute more.
            settle_secs: 30,
        }
    }
}

impl Default for Mqtt {
    fn default() -> Self {
        let timing = Timing::default();
        Self {
            // Car telemetry is small; 256 KiB leaves room for bursts of
            // batched samples while bounding what one car can make us buffer.
            max_packet_size: 256 * 1024,
            connect_timeout_secs: timing.connect_timeout.as_secs(),
            max_keep_alive_secs: timing.max_keep_alive.as_secs(),
            write_timeout_secs: timing.write_timeout.as_secs(),
            packet_timeout_secs: timing.packet_timeout.as_secs(),
        }
    }
}

impl Default for Kafka {
    fn default() -> Self {
        let mut properties = BTreeMap::new();
        properties.insert("bootstrap.servers".to_owned(), "localhost:9092".to_owned());
        Self {
            properties,
            properties_from_files: BTreeMap::new(),
            properties_from_env: BTreeMap::new(),
            max_in_flight_bytes: 32 * 1024 * 1024,
            topic_header: "mqtt.topic".to_owned(),
            secrets: BTreeSet::new(),
        }
    }
}

impl Default for Downlink {
    fn default() -> Self {
        Self {
            enabled: true,
            bridge_id: None,
            shards_per_bridge: 0,
            topic: contract::topics::ROUTED.to_owned(),
            sessions_topic: contract::topics::SESSIONS.to_owned(),
            receipts_topic: contract::topics::RECEIPTS.to_owned(),
            max_queued_bytes: 64 * 1024,
        }
    }
}

impl Downlink {
    /// The bridge id: configured, else the host name's trailing ordinal,
    /// else 0.
    pub fn bridge_id(&self) -> u32 {
        self.bridge_id
            .or_else(|| {
                let host = std::env::var("HOSTNAME").ok()?;
                host.rsplit_once('-')?.1.parse().ok()
            })
            .unwrap_or(0)
    }
}

impl Default for Admin {
    fn default() -> Self {
        let limits = ops::admin::Limits::default();
        Self {
            listen: "127.0.0.1:9100".to_owned(),
            token_file: None,
            // A busy shard's poller turns every few milliseconds, an idle
            // one at least every 250 ms: 20 s is a stuck shard, not a busy
            // one.
            liveness_timeout_secs: 20,
            max_connections: limits.max_connections,
            head_timeout_secs: limits.head_timeout.as_secs(),
            exchange_timeout_secs: limits.exchange_timeout.as_secs(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".to_owned(),
        }
    }
}

/// A configuration that cannot run, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    // The mapping error's text is part of this one's (not a `source`), so
    // that an error chain printed whole does not say it twice.
    #[error("mapping: {0}")]
    Mapping(crate::mapping::MappingError),
    #[error("{field} = {value}: {fix}")]
    Invalid {
        field: &'static str,
        value: String,
        fix: &'static str,
    },
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults.
    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The defaults as a commented TOML document (`gateway
    /// print-default-config`); a test keeps it equal to `Config::default()`.
    pub fn default_toml() -> &'static str {
        include_str!("default.toml")
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, value: &dyn ToString, fix| ConfigError::Invalid {
            field,
            value: value.to_string(),
            fix,
        };
        let listeners = self.listeners();
        for (i, listener) in listeners.iter().enumerate() {
            if listeners
                .iter()
                .skip(i + 1)
                .any(|other| other.address == listener.address)
            {
                return Err(invalid(
                    "listeners",
                    &listener.address,
                    "two listeners on one address: give each its own port",
                ));
            }
            if !listener.client_id.contains(IDENTITY_PLACEHOLDER) {
                return Err(invalid(
                    "listeners.client_id",
                    &listener.client_id,
                    "must contain {identity}, e.g. \"{identity}\" or \"car-{identity}\"",
                ));
            }
            if let Some(proxy) = &listener.proxy {
                if proxy.trusted_networks.is_empty() {
                    return Err(invalid(
                        "listeners.proxy.trusted_networks",
                        &"[]",
                        "name the load balancers' networks, e.g. [\"10.0.0.0/8\"]",
                    ));
                }
                if proxy.identity_from_proxy
                    && listener
                        .tls
                        .as_ref()
                        .is_some_and(|tls| tls.client_auth != ClientAuth::None)
                {
                    return Err(invalid(
                        "listeners.proxy.identity_from_proxy",
                        &true,
                        "the identity comes from the proxy or from the TLS client \
                         certificate, not both: set tls.client_auth = \"none\" or drop it",
                    ));
                }
            }
            if let Some(tls) = &listener.tls
                && (tls.ticket_keys.is_some() && tls.ticket_keys_env.is_some()
                    || tls.ticket_keys_env.as_deref() == Some(""))
            {
                return Err(invalid(
                    "listeners.tls.ticket_keys_env",
                    &tls.ticket_keys_env.as_deref().unwrap_or_default(),
                    "name one source of the ticket keys: a file (ticket_keys) or a \
                     variable (ticket_keys_env), not both",
                ));
            }
            if let Some(tls) = &listener.tls
                && tls.client_auth != ClientAuth::None
                && tls.client_ca.is_none()
            {
                return Err(invalid(
                    "listeners.tls.client_ca",
                    &"(unset)",
                    "name the PEM file of the CAs that issue car certificates, \
                     or set client_auth = \"none\"",
                ));
            }
        }
        if self.shards > 1024 {
            return Err(invalid(
                "shards",
                &self.shards,
                "use 0 (one per CPU) or at most 1024",
            ));
        }
        if !(64..=codec::header::MAX_REMAINING_LENGTH + 5).contains(&self.mqtt.max_packet_size) {
            return Err(invalid(
                "mqtt.max_packet_size",
                &self.mqtt.max_packet_size,
                "must be between 64 bytes and 268435460 bytes (MQTT's own limit)",
            ));
        }
        if self.mqtt.connect_timeout_secs == 0 {
            return Err(invalid(
                "mqtt.connect_timeout_secs",
                &0,
                "must be at least 1",
            ));
        }
        if self.mqtt.write_timeout_secs == 0 {
            return Err(invalid("mqtt.write_timeout_secs", &0, "must be at least 1"));
        }
        if self.mqtt.packet_timeout_secs == 0 {
            return Err(invalid(
                "mqtt.packet_timeout_secs",
                &0,
                "must be at least 1",
            ));
        }
        if self.mqtt.max_keep_alive_secs == 0 || self.mqtt.max_keep_alive_secs > 65_535 {
            return Err(invalid(
                "mqtt.max_keep_alive_secs",
                &self.mqtt.max_keep_alive_secs,
                "must be between 1 and 65535 (MQTT's own limit)",
            ));
        }
        if self.kafka.max_in_flight_bytes < self.mqtt.max_packet_size {
            return Err(invalid(
                "kafka.max_in_flight_bytes",
                &self.kafka.max_in_flight_bytes,
                "must be at least mqtt.max_packet_size, or one PUBLISH could never be sent",
            ));
        }
        let kafka = &self.kafka;
        for key in kafka.properties_from_files.keys() {
            if kafka.properties.contains_key(key) || kafka.properties_from_env.contains_key(key) {
                return Err(invalid(
                    "kafka.properties_from_files",
                    key,
                    "the property is also in kafka.properties or kafka.properties_from_env: \
                     give it one source",
                ));
            }
        }
        for key in kafka.properties_from_env.keys() {
            if kafka.properties.contains_key(key) {
                return Err(invalid(
                    "kafka.properties_from_env",
                    key,
                    "the property is also in kafka.properties: give it one source",
                ));
            }
        }
        if self
            .kafka
            .properties_from_files
            .values()
            .any(|path| path.as_os_str().is_empty())
            || self
                .kafka
                .properties_from_env
                .values()
                .any(String::is_empty)
        {
            return Err(invalid(
                "kafka.properties_from_files",
                &"\"\"",
                "name a file (properties_from_files) or a variable (properties_from_env) for \
                 each property",
            ));
        }
        if !self.kafka.properties.contains_key("bootstrap.servers")
            && !self
                .kafka
                .properties_from_files
                .contains_key("bootstrap.servers")
            && !self
                .kafka
                .properties_from_env
                .contains_key("bootstrap.servers")
        {
            return Err(invalid(
                "kafka.properties",
                &"(no bootstrap.servers)",
                "set kafka.properties.\"bootstrap.servers\" (or --kafka-bootstrap)",
            ));
        }
        if self.kafka.topic_header.is_empty() {
            return Err(invalid(
                "kafka.topic_header",
                &"\"\"",
                "name the header, e.g. mqtt.topic",
            ));
        }
        if self.downlink.enabled {
            if self.downlink.topic.is_empty() || self.downlink.sessions_topic.is_empty() {
                return Err(invalid(
                    "downlink.topic",
                    &"\"\"",
                    "name both downlink.topic and downlink.sessions_topic",
                ));
            }
            let shards = u32::try_from(self.shards).unwrap_or(u32::MAX);
            if self.downlink.shards_per_bridge != 0
                && shards != 0
                && shards > self.downlink.shards_per_bridge
            {
                return Err(invalid(
                    "downlink.shards_per_bridge",
                    &self.downlink.shards_per_bridge,
                    "must be at least `shards`, or two shards would share a slot",
                ));
            }
            if self.downlink.max_queued_bytes < 1024 {
                return Err(invalid(
                    "downlink.max_queued_bytes",
                    &self.downlink.max_queued_bytes,
                    "must be at least 1024",
                ));
            }
        }
        for (field, value) in [
            (
                "limits.max_connections_per_shard",
                self.limits.max_connections_per_shard,
            ),
            (
                "limits.accept_rate_per_shard",
                self.limits.accept_rate_per_shard as usize,
            ),
            (
                "limits.max_client_id_length",
                self.limits.max_client_id_length,
            ),
            (
                "limits.max_partial_bytes_per_shard",
                self.limits.max_partial_bytes_per_shard,
            ),
            (
                "limits.max_filters_per_session",
                self.limits.max_filters_per_session,
            ),
            ("limits.max_filter_length", self.limits.max_filter_length),
        ] {
            if value == 0 {
                return Err(invalid(field, &0, "must be at least 1"));
            }
        }
        if self.limits.max_client_id_length < 23 {
            return Err(invalid(
                "limits.max_client_id_length",
                &self.limits.max_client_id_length,
                "must be at least 23 (MQTT 3.1.1 servers must accept ids of 1 to 23 bytes)",
            ));
        }
        if self.tls_watch.poll_secs > 3600 {
            return Err(invalid(
                "tls_watch.poll_secs",
                &self.tls_watch.poll_secs,
                "use at most 3600 (0 turns the watch off)",
            ));
        }
        if self.tls_watch.settle_secs > 86_400 {
            return Err(invalid(
                "tls_watch.settle_secs",
                &self.tls_watch.settle_secs,
                "use at most 86400",
            ));
        }
        if self.drain.closes_per_sec == 0 || self.drain.max_secs == 0 {
            return Err(invalid(
                "drain",
                &format!(
                    "closes_per_sec = {}, max_secs = {}",
                    self.drain.closes_per_sec, self.drain.max_secs
                ),
                "both must be at least 1",
            ));
        }
        let admin = &self.admin;
        for (field, value) in [
            ("admin.liveness_timeout_secs", admin.liveness_timeout_secs),
            ("admin.max_connections", admin.max_connections as u64),
            ("admin.head_timeout_secs", admin.head_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(field, &0, "must be at least 1"));
            }
        }
        if admin.exchange_timeout_secs < admin.head_timeout_secs {
            return Err(invalid(
                "admin.exchange_timeout_secs",
                &admin.exchange_timeout_secs,
                "must be at least admin.head_timeout_secs (the exchange includes the head)",
            ));
        }
        if admin
            .token_file
            .as_ref()
            .is_some_and(|path| path.as_os_str().is_empty())
        {
            return Err(invalid(
                "admin.token_file",
                &"\"\"",
                "name the file holding the admin token, or leave the setting out",
            ));
        }
        for pattern in &self.authorization.subscribe {
            let filter = pattern.replace(crate::policy::CLIENT_ID_PLACEHOLDER, "id");
            if codec::topic::validate_topic_filter(&filter).is_err() {
                return Err(invalid(
                    "authorization.subscribe",
                    pattern,
                    "each entry must be an MQTT topic filter, e.g. \"DL/{client_id}/#\"",
                ));
            }
        }
        TopicMapper::new(&self.mapping).map_err(ConfigError::Mapping)?;
        Ok(())
    }

    /// This configuration as it may be shown (`check-config`, logs):
    /// secret-looking Kafka properties and those read from files or
    /// variables redacted.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.kafka.properties = self.kafka.shown_properties();
        shown
    }

    /// The listeners to bind: `listeners`, or one plain listener on
    /// `listen` when none is configured.
    pub fn listeners(&self) -> Vec<Listener> {
        if self.listeners.is_empty() {
            vec![Listener::plain(self.listen)]
        } else {
            self.listeners.clone()
        }
    }

    /// What cars may subscribe to, as the sessions apply it.
    pub fn subscribe_policy(&self) -> crate::policy::SubscribePolicy {
        crate::policy::SubscribePolicy {
            max_filters: self.limits.max_filters_per_session,
            max_filter_length: self.limits.max_filter_length,
            allowed: self.authorization.subscribe.clone(),
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            connect_timeout: Duration::from_secs(self.mqtt.connect_timeout_secs),
            max_keep_alive: Duration::from_secs(self.mqtt.max_keep_alive_secs),
            write_timeout: Duration::from_secs(self.mqtt.write_timeout_secs),
            packet_timeout: Duration::from_secs(self.mqtt.packet_timeout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_is_valid() {
        let text = Config::default_toml();
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
        Config::default().validate().unwrap();
        // Key for key, so no field goes undocumented in the template.
        let documented: toml::Value = toml::from_str(text).unwrap();
        let serialized: toml::Value =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        assert_eq!(documented, serialized);
    }

    #[test]
    fn partial_files_take_defaults_and_unknown_fields_are_refused() {
        let config = Config::from_toml(
            r#"
            shards = 2
            [kafka.properties]
            "bootstrap.servers" = "kafka:9092"
            "security.protocol" = "SASL_SSL"
            [[mapping]]
            mqtt = "^UL/(POS|SPEED)$"
            kafka = "cs.$1"
            "#,
        )
        .unwrap();
        assert_eq!(config.shards, 2);
        assert_eq!(config.mqtt, Mqtt::default());
        assert_eq!(config.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(config.mapping, vec![Rule::new("^UL/(POS|SPEED)$", "cs.$1")]);
        config.validate().unwrap();

        let error = Config::from_toml("listen_port = 1883")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field"), "{error}");
        let error = Config::from_toml("[mqtt]\nmax_packet = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field"), "{error}");
    }

    #[test]
    fn kafka_secrets_are_read_from_files_at_start_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("password");
        std::fs::write(&password, "hunter2\n").unwrap();
        let mut config = Config::from_toml(&format!(
            r#"
            [kafka.properties]
            "bootstrap.servers" = "kafka:9092"
            "ssl.key.password" = "inline-secret"
            [kafka.properties_from_files]
            "sasl.username" = {password:?}
            "#
        ))
        .unwrap();
        config.validate().unwrap();
        assert!(config.kafka.check_secrets().is_empty());
        config.kafka.read_secrets().unwrap();
        // Read, without the line end, into what the clients are given.
        assert_eq!(config.kafka.properties["sasl.username"], "hunter2");
        assert!(config.kafka.properties_from_files.is_empty());
        config.validate().unwrap();
        // Shown nowhere: not in Debug (logs), not in what check-config
        // prints; an inline secret-looking property neither. The value
        // read is hidden although its name looks harmless.
        for shown in [
            format!("{config:?}"),
            format!("{:?}", config.kafka),
            toml::to_string(&config.redacted()).unwrap(),
        ] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("inline-secret"),
                "{shown}"
            );
            assert!(shown.contains(secrets::REDACTED), "{shown}");
            assert!(shown.contains("kafka:9092"), "{shown}");
        }

        // A missing file is named with its property, at check and at start.
        let missing = dir.path().join("missing");
        config
            .kafka
            .set_property_file("sasl.password", missing.clone());
        let checked: Vec<String> = config
            .kafka
            .check_secrets()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(checked.len(), 1, "{checked:?}");
        let error = config.kafka.read_secrets().unwrap_err().to_string();
        assert_eq!(error, checked[0]);
        assert!(
            error.contains("sasl.password") && error.contains(&missing.display().to_string()),
            "{error}"
        );
    }

    #[test]
    fn a_kafka_property_has_one_source() {
        let mut config = Config::default();
        config
            .kafka
            .properties_from_files
            .insert("sasl.password".to_owned(), "/run/secrets/p".into());
        config
            .kafka
            .properties_from_env
            .insert("sasl.password".to_owned(), "P".to_owned());
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("kafka.properties_from_files") && error.contains("one source"),
            "{error}"
        );
        // A flag replaces the property's other sources.
        config.kafka.set_property("sasl.password", "from-a-flag");
        assert!(config.kafka.properties_from_files.is_empty());
        assert!(config.kafka.properties_from_env.is_empty());
        config.validate().unwrap();
        config.kafka.set_property_env("sasl.password", "P");
        assert!(!config.kafka.properties.contains_key("sasl.password"));
        config.validate().unwrap();
        // bootstrap.servers may come from a file too.
        config.kafka.properties.clear();
        config
            .kafka
            .set_property_file("bootstrap.servers", "/run/secrets/b".into());
        config.validate().unwrap();
    }

    #[test]
    fn validation_says_what_to_fix() {
        let check = |edit: fn(&mut Config), field: &str| {
            let mut config = Config::default();
            edit(&mut config);
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(field), "{message}");
        };
        check(|c| c.mqtt.max_packet_size = 10, "mqtt.max_packet_size");
        check(
            |c| c.mqtt.connect_timeout_secs = 0,
            "mqtt.connect_timeout_secs",
        );
        check(|c| c.mqtt.write_timeout_secs = 0, "mqtt.write_timeout_secs");
        check(
            |c| c.mqtt.packet_timeout_secs = 0,
            "mqtt.packet_timeout_secs",
        );
        check(
            |c| c.mqtt.max_keep_alive_secs = 70_000,
            "mqtt.max_keep_alive_secs",
        );
        check(
            |c| c.kafka.max_in_flight_bytes = 1,
            "kafka.max_in_flight_bytes",
        );
        check(|c| c.kafka.properties.clear(), "bootstrap.servers");
        check(|c| c.mapping.clear(), "no topic mapping rules");
        check(|c| c.mapping = vec![Rule::new("(", "x")], "rule 0");
        check(|c| c.tls_watch.poll_secs = 3601, "tls_watch.poll_secs");
        check(
            |c| c.tls_watch.settle_secs = 100_000,
            "tls_watch.settle_secs",
        );
    }

    #[test]
    fn the_tls_watch_is_on_by_default_and_may_be_turned_off() {
        assert_eq!(Config::default().tls_watch.poll_secs, 5);
        let config = Config::from_toml("[tls_watch]\npoll_secs = 0\n").unwrap();
        assert_eq!(config.tls_watch.poll_secs, 0);
        assert_eq!(config.tls_watch.settle_secs, 30);
        config.validate().unwrap();
    }
}
