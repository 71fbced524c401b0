//! Every topic the system uses, with its partition count and cleanup
//! policy, created or checked through the Kafka admin API
//! (`carbridge-topics`).

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
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

fn admin(config: &ClientConfig) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    config.create().context("creating the Kafka admin client")
}

fn partitions(config: &ClientConfig, topic: &str) -> anyhow::Result<Option<i32>> {
    let consumer: BaseConsumer = config.create().context("creating a metadata client")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading the metadata of {topic}"))?;
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
) -> anyhow::Result<Vec<String>> {
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
        let results = futures_executor::block_on(admin.create_topics([&topic], &options))
            .with_context(|| format!("creating {}", spec.name))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("creating {topic}: {code}"),
            }
        }
        // Wait until the metadata shows it, so what runs next finds it.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while partitions(config, &spec.name)? != Some(spec.partitions) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{} was created but its metadata did not show {} partitions within {TIMEOUT:?}",
                spec.name,
                spec.partitions
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        created.push(spec.name.clone());
    }
    Ok(created)
}

/// Compares the cluster with `specs`. Partition counts are always checked;
/// topic configs where the broker answers DescribeConfigs (a broker that
/// does not is reported in the second list, unverified, not as a problem).
pub fn check(config: &ClientConfig, specs: &[Spec]) -> anyhow::Result<(Vec<Problem>, Vec<String>)> {
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
