//! `[kafka]`: the bridge's own Kafka client, its librdkafka properties,
//! and those read at start from files or environment variables
//! (`ops::secrets`), redacted wherever the configuration is shown.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ops::secrets;
use serde::{Deserialize, Serialize};

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
