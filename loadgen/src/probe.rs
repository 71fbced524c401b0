//! Helpers of the broker measurements (`examples/kafka_rtt.rs`,
//! `examples/broker_bench.rs`): making their topic.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;

/// Creates `topic` with `partitions` partitions; an existing topic is fine.
pub fn create_topic(common: &ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        common.create().context("creating the admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_lite::future::block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &options,
    ))?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating {name}: {code}"),
        }
    }
    Ok(())
}
