//! The gateway's configuration: one TOML file, every field optional with a
//! production-sane default; command-line flags and environment variables
//! override it (see `gateway --help`). `gateway print-default-config`
//! prints the defaults as a commented starting point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mapping::Rule;
use crate::rate::{OverLimit, UplinkLimit};
use crate::session::Timing;

mod kafka;
mod listener;
mod validate;
pub use kafka::Kafka;
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
    pub shard: ShardSettings,
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
    /// (or systemd's TimeoutStopSec) must exceed it, `linger_secs` and
    /// the flush (15 s) together.
    pub max_secs: u64,
    /// A drained car's connection is half-closed (the gateway stops
    /// writing) and read on until the car closes its end, at most this
    /// long: what it sent before it saw the close reaches Kafka.
    pub linger_secs: u64,
}

/// How a shard trades latency for wake-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardSettings {
    /// Longest, in milliseconds, a car's bytes may wait in the kernel while
    /// the shard gathers more to serve in one wake-up (and its Kafka
    /// acknowledgements with them). The window starts at 5 ms while events
    /// come faster than one per window, and doubles up to this bound while
    /// a wake-up finds few: at a fleet's rate a shard wakes once per window
    /// instead of once per car. Each wake-up costs about 40 µs of CPU on a
    /// KVM guest; the wait adds at most this much to the uplink's latency,
    /// and to each of a car's round trips. 5 (the default) keeps the window
    /// fixed at 5 ms; at most 100.
    pub gather_max_ms: u64,
}

impl Default for ShardSettings {
    fn default() -> Self {
        // The window stays at 5 ms by default: a larger bound costs every
        // round trip of a car's (CONNECT, SUBSCRIBE, PINGREQ) up to that
        // much while the shard gathers (docs/gateway.md).
        Self { gather_max_ms: 5 }
    }
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
    /// PUBLISH messages per second one car may send, after a burst of
    /// `car_message_burst` (0: no limit). Counted as
    /// `limited_total{limit="car_messages"}` each time a car is held.
    pub car_messages_per_sec: u32,
    pub car_message_burst: u32,
    /// PUBLISH bytes (whole frames) per second one car may send, after a
    /// burst of `car_byte_burst` (0: no limit); `limit="car_bytes"`.
    pub car_bytes_per_sec: u32,
    pub car_byte_burst: u32,
    /// A car beyond either: `pause` (read nothing more from it until its
    /// allowance allows its next PUBLISH) or `disconnect` (`uplink_limit`).
    pub car_over_limit: OverLimit,
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
            shard: ShardSettings::default(),
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
            // A car publishes every second or every few: 100 a second, and
            // 1,000 at once (a car catching up after a tunnel), is a
            // hundred times that, while one shard ingests hundreds of
            // thousands a second (BENCHMARKS.md): a flooder takes little.
            car_messages_per_sec: 100,
            car_message_burst: 1000,
            // 1 MiB/s, and 4 MiB at once: a few maximum-size packets.
            car_bytes_per_sec: 1024 * 1024,
            car_byte_burst: 4 * 1024 * 1024,
            car_over_limit: OverLimit::Pause,
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
            // A car sees the FIN within a round trip and closes at once; a
            // car that does not is not waited for long.
            linger_secs: 5,
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
            uplink: UplinkLimit::new(
                self.limits.car_messages_per_sec,
                self.limits.car_message_burst,
                self.limits.car_bytes_per_sec,
                self.limits.car_byte_burst,
                self.limits.car_over_limit,
            ),
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
            assert!(shown.contains(ops::secrets::REDACTED), "{shown}");
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
            |c| c.limits.car_message_burst = 0,
            "limits.car_message_burst",
        );
        check(|c| c.limits.car_byte_burst = 1000, "limits.car_byte_burst");
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
