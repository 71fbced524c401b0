//! The Kafka connection flags every carbridge command takes, defined once:
//! `--kafka-bootstrap` (or `CARBRIDGE_KAFKA_BOOTSTRAP`), any librdkafka
//! property with `-X KEY=VALUE` (security, tuning), and secret ones from
//! files or environment variables (`--kafka-property-file KEY=PATH`,
//! `--kafka-property-env KEY=VARIABLE`: [`crate::secrets`]).

use std::collections::BTreeMap;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::secrets::{SecretArgs, SecretError};

#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "CARBRIDGE_KAFKA_BOOTSTRAP",
        default_value = "localhost:9092",
        global = true
    )]
    pub kafka_bootstrap: String,
    /// Any librdkafka property, repeatable: -X security.protocol=SASL_SSL.
    #[arg(
        short = 'X',
        long = "kafka-property",
        value_name = "KEY=VALUE",
        global = true
    )]
    pub kafka_properties: Vec<String>,
    #[command(flatten)]
    pub secrets: SecretArgs,
}

impl KafkaArgs {
    /// The `-X` properties, checked, and those read from files and
    /// environment variables (read now). A property given by two flags is
    /// refused.
    pub fn properties(&self) -> Result<BTreeMap<String, String>, Error> {
        let mut properties = self
            .kafka_properties
            .iter()
            .map(|property| {
                property
                    .split_once('=')
                    .map(|(key, value)| (key.to_owned(), value.to_owned()))
                    .ok_or_else(|| Error::Property(property.clone()))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        for (key, value) in self.secrets.properties()? {
            if properties.contains_key(&key) {
                return Err(Error::Secret(SecretError::Twice {
                    key,
                    first: "-X",
                    second: "--kafka-property-file or --kafka-property-env",
                }));
            }
            properties.insert(key, value);
        }
        Ok(properties)
    }

    /// A client configuration with the bootstrap servers and every
    /// property of [`KafkaArgs::properties`].
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new();
        for (key, value) in self.properties()? {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &self.kafka_bootstrap);
        Ok(config)
    }
}

/// librdkafka properties only consumers read. `-X` properties go to every
/// client a command makes; a producer given one of these warns
/// (CONFWARN), so each kind takes only its own ([`for_producer`]).
const CONSUMER_ONLY: &[&str] = &[
    "fetch.wait.max.ms",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.queue.backoff.ms",
    "fetch.error.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "isolation.level",
    "partition.assignment.strategy",
    "group.instance.id",
    "check.crcs",
    "enable.partition.eof",
];

/// librdkafka properties only producers read ([`for_consumer`]).
const PRODUCER_ONLY: &[&str] = &[
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.size",
    "batch.num.messages",
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "retries",
    "message.send.max.retries",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "partitioner",
    "transactional.id",
    "sticky.partitioning.linger.ms",
];

/// Whether a producer reads property `key`.
pub fn for_producer(key: &str) -> bool {
    !CONSUMER_ONLY.contains(&key)
}

/// Whether a consumer reads property `key`.
pub fn for_consumer(key: &str) -> bool {
    !PRODUCER_ONLY.contains(&key)
}

/// Serves the events waiting on `producer` (delivery reports, errors), up
/// to `max_events` of them, without blocking.
///
/// rdkafka's `BaseProducer::poll(Duration::ZERO)` serves at most one event
/// per call, and one event is one batch of delivery reports (one
/// partition's produce response): called once per loop turn it falls
/// behind as soon as more batches are acknowledged per turn than that, and
/// every acknowledgement (and the in-flight accounting waiting on it) comes
/// later and later. This serves until an event leaves the producer's count
/// of outstanding messages and events unchanged, or `max_events`.
pub fn serve_events<C: ProducerContext>(producer: &BaseProducer<C>, max_events: usize) {
    for _ in 0..max_events {
        let before = producer.in_flight_count();
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == before {
            break;
        }
    }
}

/// An assignment of partitions `0..partitions` of `topic`, each at its
/// current end (high watermark): for a reader of what comes next.
pub fn at_end<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<rdkafka::TopicPartitionList, Error> {
    let mut assignment = rdkafka::TopicPartitionList::new();
    let count = i32::try_from(partitions).map_err(|_| Error::TooManyPartitions(partitions))?;
    for partition in 0..count {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|source| Error::End {
                topic: topic.to_owned(),
                partition,
                source,
            })?;
        assignment
            .add_partition_offset(topic, partition, rdkafka::Offset::Offset(high))
            .map_err(|source| Error::Assignment {
                topic: topic.to_owned(),
                partition,
                source,
            })?;
    }
    Ok(assignment)
}

/// How many partitions `topic` has; 0 when it does not exist (the caller
/// says what to do about it).
pub fn partition_count<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> Result<usize, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| Error::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .map_or(0, |t| t.partitions().len()))
}

/// What went wrong with a Kafka flag, or with a Kafka request made here.
/// The text says what failed; the cause (librdkafka's error) is the
/// [`source`](std::error::Error::source), printed after it by whoever
/// reports the whole chain (a binary's `main`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's flag: a `-X` value without `=`.
    #[error("-X {0}: expected KEY=VALUE")]
    Property(String),
    /// The operator's flag: a property from a file or a variable that
    /// cannot be read (the message names both, never the value).
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Upstream: the broker did not tell a partition's end.
    #[error("reading the end of {topic}/{partition}: check that the Kafka brokers are reachable")]
    End {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    /// Upstream: the broker did not answer a metadata request.
    #[error("reading the metadata of {topic}: check that the Kafka brokers are reachable")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// Internal: Kafka numbers partitions with an `i32`.
    #[error("too many partitions: {0} (Kafka numbers them with a 32-bit integer)")]
    TooManyPartitions(usize),
    /// Internal: librdkafka refused to add a partition to a list.
    #[error("adding {topic}/{partition} to the assignment")]
    Assignment {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_client_takes_its_own_properties() {
        assert!(!for_producer("fetch.wait.max.ms"));
        assert!(for_consumer("fetch.wait.max.ms"));
        assert!(!for_consumer("linger.ms"));
        assert!(for_producer("linger.ms"));
        // Shared ones (security, addresses) go to both.
        for key in ["security.protocol", "bootstrap.servers", "sasl.mechanism"] {
            assert!(for_producer(key) && for_consumer(key), "{key}");
        }
    }

    #[test]
    fn properties_are_checked() {
        let args = KafkaArgs {
            kafka_bootstrap: "k:9092".to_owned(),
            kafka_properties: vec!["security.protocol=SASL_SSL".to_owned()],
            secrets: SecretArgs::default(),
        };
        let properties = args.properties().unwrap_or_default();
        assert_eq!(
            properties.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        let config = args.client_config().ok();
        assert_eq!(
            config.as_ref().and_then(|c| c.get("bootstrap.servers")),
            Some("k:9092")
        );
        let bad = KafkaArgs {
            kafka_properties: vec!["no-equals".to_owned()],
            ..args
        };
        assert!(bad.properties().is_err());
    }

    #[test]
    fn a_bad_property_names_itself_and_the_form() {
        let bad = KafkaArgs {
            kafka_bootstrap: "k:9092".to_owned(),
            kafka_properties: vec!["no-equals".to_owned()],
            secrets: SecretArgs::default(),
        };
        assert_eq!(
            bad.client_config().err().map(|e| e.to_string()).as_deref(),
            Some("-X no-equals: expected KEY=VALUE")
        );
    }

    #[test]
    fn secret_flags_reach_the_client_configuration() -> Result<(), Box<dyn std::error::Error>> {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            kafka: KafkaArgs,
        }
        let dir = std::env::temp_dir().join(format!("ops-kafka-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let password = dir.join("password");
        std::fs::write(&password, "hunter2\n")?;
        let file_flag = format!("sasl.password={}", password.display());
        // As every command parses them (the router, carbridge-send, ...).
        let cli = Cli::try_parse_from([
            "router",
            "-X",
            "sasl.username=router",
            "--kafka-property-file",
            &file_flag,
            "--kafka-property-env",
            "ssl.ca.location=PATH",
        ])?;
        let config = cli.kafka.client_config()?;
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        assert_eq!(config.get("sasl.username"), Some("router"));
        assert!(config.get("ssl.ca.location").is_some_and(|v| !v.is_empty()));

        // One source per property; a missing file is named.
        let twice = Cli::try_parse_from([
            "router",
            "-X",
            "sasl.password=x",
            "--kafka-property-file",
            &file_flag,
        ])?;
        let error = twice.kafka.properties().err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("given twice")),
            "{error:?}"
        );
        std::fs::remove_dir_all(&dir)?;
        let gone = cli.kafka.properties().err().map(|e| e.to_string());
        assert!(
            gone.as_deref()
                .is_some_and(|e| e.contains("sasl.password") && e.contains("cannot read")),
            "{gone:?}"
        );
        Ok(())
    }
}
