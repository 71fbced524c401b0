//! What a configuration must satisfy before a start: each check says which
//! field and what to change.

use super::{ClientAuth, Config, ConfigError, IDENTITY_PLACEHOLDER};
use crate::mapping::TopicMapper;

impl Config {
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
        for (rate, burst, field) in [
            (
                self.limits.car_messages_per_sec,
                self.limits.car_message_burst,
                "limits.car_message_burst",
            ),
            (
                self.limits.car_bytes_per_sec,
                self.limits.car_byte_burst,
                "limits.car_byte_burst",
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(invalid(
                    field,
                    &0,
                    "must be at least 1 where its rate is set (0 is no limit)",
                ));
            }
        }
        if self.limits.car_bytes_per_sec > 0
            && (self.limits.car_byte_burst as usize) < self.mqtt.max_packet_size
        {
            return Err(invalid(
                "limits.car_byte_burst",
                &self.limits.car_byte_burst,
                "must be at least mqtt.max_packet_size: a car sends a whole packet at once",
            ));
        }
        if self.limits.max_client_id_length < 23 {
            return Err(invalid(
                "limits.max_client_id_length",
                &self.limits.max_client_id_length,
                "must be at least 23 (MQTT 3.1.1 servers must accept ids of 1 to 23 bytes)",
            ));
        }
        if self.drain.linger_secs > 60 {
            return Err(invalid(
                "drain.linger_secs",
                &self.drain.linger_secs,
                "use at most 60: a car that has not closed by then is not going to",
            ));
        }
        if !(5..=100).contains(&self.shard.gather_max_ms) {
            return Err(invalid(
                "shard.gather_max_ms",
                &self.shard.gather_max_ms,
                "use 5 to 100: the window starts at 5 ms, and the wait adds to the uplink's latency",
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
}
