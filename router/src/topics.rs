//! Every topic the system uses, with its partition count and cleanup
//! policy, created or checked through the Kafka admin API
//! (`carbridge-topics`).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

const TIMEOUT: Duration = Duration::from_secs(15);

/// One topic as the system needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub partitions: i32,
    /// Topic configs that must hold (`cleanup.policy`, `retention.ms`).
    pub configs: Vec<(&'static str, String)>,
}

/// Topic names and sizes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub uplink: String,
    pub downlink: String,
    pub sessions: String,
    pub routed: String,
    pub receipts: String,
    pub held: String,
    /// Partitions of the uplink, the downlink requests and the registry
    /// (the last two must be equal: co-partitioning).
    pub partitions: i32,
    /// Partitions of `mqtt.downlink`: gateway instances × shards each.
    pub slots: i32,
    /// Replication factor of every topic.
    pub replication: i32,
    /// Retention of the realtime topics (requests and routed messages),
    /// milliseconds.
    pub realtime_retention_ms: u64,
}

impl Layout {
    pub fn new(partitions: i32, slots: i32) -> Self {
        Self {
            uplink: contract::topics::UPLINK.to_owned(),
            downlink: contract::topics::DOWNLINK.to_owned(),
            sessions: contract::topics::SESSIONS.to_owned(),
            routed: contract::topics::ROUTED.to_owned(),
            receipts: contract::topics::RECEIPTS.to_owned(),
            held: contract::topics::HELD.to_owned(),
            partitions,
            slots,
            replication: 1,
            realtime_retention_ms: 60 * 60 * 1000,
        }
    }

    pub fn specs(&self) -> Vec<Spec> {
        let delete = |retention: Option<u64>| {
            let mut configs = vec![("cleanup.policy", "delete".to_owned())];
            if let Some(ms) = retention {
                configs.push(("retention.ms", ms.to_string()));
            }
            configs
        };
        let realtime = Some(self.realtime_retention_ms);
        vec![
            Spec {
                name: self.uplink.clone(),
                partitions: self.partitions,
                configs: delete(None),
            },
            Spec {
                name: self.downlink.clone(),
                partitions: self.partitions,
                configs: delete(realtime),
            },
            Spec {
                name: self.sessions.clone(),
                partitions: self.partitions,
                configs: vec![("cleanup.policy", "compact".to_owned())],
            },
            Spec {
                name: self.routed.clone(),
                partitions: self.slots,
                configs: delete(realtime),
            },
            // Keyed by client id like the requests; kept a day, for
            // services that look up what became of a command later.
            Spec {
                name: self.receipts.clone(),
                partitions: self.partitions,
                configs: delete(Some(24 * 60 * 60 * 1000)),
            },
            // Held requests, keyed {client id}/{offset}, co-partitioned
            // with the requests; compaction drops released ones.
            Spec {
                name: self.held.clone(),
                partitions: self.partitions,
                configs: vec![("cleanup.policy", "compact".to_owned())],
            },
        ]
    }
}

/// What `check` found wrong with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing(String),
    Partitions {
        topic: String,
        has: i32,
        needs: i32,
    },
    Config {
        topic: String,
        key: &'static str,
        has: String,
        needs: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(topic) => write!(f, "{topic}: missing"),
            Self::Partitions { topic, has, needs } => {
                write!(f, "{topic}: {has} partitions, needs {needs}")
            }
            Self::Config {
                topic,
                key,
                has,
                needs,
            } => write!(f, "{topic}: {key} = {has}, needs {needs}"),
        }
    }
}

/// What kept `create` or `check` from finishing. The text says what
/// failed and what to do; a Kafka cause is the
/// [`source`](std::error::Error::source), printed after it by the binary's
/// `main`, which reports the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka flags (`-X`) do not make a client.
    #[error("creating the Kafka admin client: check the -X properties")]
    Admin(#[source] KafkaError),
    /// As [`Error::Admin`], for the client that reads topic metadata.
    #[error("creating a metadata client: check the -X properties")]
    MetadataClient(#[source] KafkaError),
    /// Upstream: the broker did not answer.
    #[error("reading the metadata of {topic}: check that the Kafka brokers are reachable")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// Upstream: the CreateTopics request failed as a whole.
    #[error("creating {topic}: check that the Kafka brokers are reachable")]
    CreateRequest {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// Upstream: the broker refused to create the topic (the code says
    /// why: a replication factor above the brokers' count, a policy).
    #[error("creating {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// Upstream: the broker said yes but its metadata never showed it.
    #[error(
        "{topic} was created but its metadata did not show {partitions} partitions within \
         {timeout:?}: run `carbridge-topics check` once the brokers agree"
    )]
    NotShown {
        topic: String,
        partitions: i32,
        timeout: Duration,
    },
}

fn admin(config: &ClientConfig) -> Result<AdminClient<DefaultClientContext>, Error> {
    config.create().map_err(Error::Admin)
}

fn partitions(config: &ClientConfig, topic: &str) -> Result<Option<i32>, Error> {
    let consumer: BaseConsumer = config.create().map_err(Error::MetadataClient)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|source| Error::Metadata {
            topic: topic.to_owned(),
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .and_then(|t| i32::try_from(t.partitions().len()).ok()))
}

/// Creates the topics of `specs` that do not exist; returns the names
/// created. Existing topics are left alone (see [`check`]).
pub fn create(
    config: &ClientConfig,
    specs: &[Spec],
    replication: i32,
) -> Result<Vec<String>, Error> {
    let admin = admin(config)?;
    let mut created = Vec::new();
    for spec in specs {
        if partitions(config, &spec.name)?.is_some() {
            continue;
        }
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(replication),
        );
        for (key, value) in &spec.configs {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        let results = futures_executor::block_on(admin.create_topics([&topic], &options)).map_err(
            |source| Error::CreateRequest {
                topic: spec.name.clone(),
                source,
            },
        )?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(Error::Refused { topic, code }),
            }
        }
        // Wait until the metadata shows it, so what runs next finds it.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while partitions(config, &spec.name)? != Some(spec.partitions) {
            if std::time::Instant::now() >= deadline {
                return Err(Error::NotShown {
                    topic: spec.name.clone(),
                    partitions: spec.partitions,
                    timeout: TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        created.push(spec.name.clone());
    }
    Ok(created)
}

/// Compares the cluster with `specs`. Partition counts are always checked;
/// topic configs where the broker answers DescribeConfigs (a broker that
/// does not is reported in the second list, unverified, not as a problem).
pub fn check(config: &ClientConfig, specs: &[Spec]) -> Result<(Vec<Problem>, Vec<String>), Error> {
    let admin = admin(config)?;
    let mut problems = Vec::new();
    let mut unverified = Vec::new();
    for spec in specs {
        match partitions(config, &spec.name)? {
            None => {
                problems.push(Problem::Missing(spec.name.clone()));
                continue;
            }
            Some(has) if has != spec.partitions => problems.push(Problem::Partitions {
                topic: spec.name.clone(),
                has,
                needs: spec.partitions,
            }),
            Some(_) => {}
        }
        let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let described = futures_executor::block_on(
            admin.describe_configs([&ResourceSpecifier::Topic(&spec.name)], &options),
        );
        let resource = match described.as_deref() {
            Ok([Ok(resource)]) => resource,
            Ok(_) | Err(_) => {
                unverified.push(format!(
                    "{}: the broker did not describe its configs",
                    spec.name
                ));
                continue;
            }
        };
        for (key, needs) in &spec.configs {
            match resource.get(key).and_then(|entry| entry.value.clone()) {
                Some(has) if has == *needs => {}
                Some(has) => problems.push(Problem::Config {
                    topic: spec.name.clone(),
                    key,
                    has,
                    needs: needs.clone(),
                }),
                None => unverified.push(format!("{}: {key} not reported", spec.name)),
            }
        }
    }
    Ok((problems, unverified))
}
