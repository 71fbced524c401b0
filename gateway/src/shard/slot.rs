//! A shard's consumer of exactly one `mqtt.downlink` partition (its
//! slot), and the reading of routed records: what feeds the shard's
//! delivery ([`super::delivery`]).
//!
//! The consumer is assigned by hand (no consumer group rebalancing) and
//! delivers from the slot's end: routed messages are realtime data for
//! connections this process holds now, and nothing routed before it started
//! can be for them. The end offset is read before the shard serves, so a
//! message routed after the gateway is ready is never skipped.
//!
//! It commits how far it read (every second), and on start first reads
//! what was routed to the slot after its predecessor's last commit (a
//! crash, a restart): those messages are not delivered (their connections
//! died with the predecessor) but answered, `offline` for those that asked
//! for a receipt, and their stale sessions reported gone.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;

/// Why a shard's downlink slot could not be assigned.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("creating the downlink consumer")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    Metadata(#[from] ops::kafka::Error),
    #[error(
        "topic {topic} does not exist: create the topics first \
         (`carbridge-topics create`), or set downlink.enabled = false"
    )]
    NoTopic { topic: String },
    #[error(
        "topic {topic} has {partitions} partitions, shard {shard} needs slot {slot}: \
         give it one partition per shard of every gateway instance \
         (`carbridge-topics create --slots N`), or check downlink.bridge_id"
    )]
    TooFewPartitions {
        topic: String,
        partitions: usize,
        shard: usize,
        slot: u32,
    },
    #[error("slot {slot} is out of range")]
    OutOfRange { slot: u32 },
    #[error("reading the offsets of {topic}/{slot}")]
    Offsets {
        topic: String,
        slot: u32,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("assigning the slot {topic}/{slot}")]
    Assign {
        topic: String,
        slot: u32,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Bound on each metadata and offset request made while starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The slot of shard `shard` of bridge `bridge` with `per_bridge` shards each.
pub(crate) fn slot_number(bridge: u32, per_bridge: u32, shard: usize) -> u32 {
    bridge * per_bridge + u32::try_from(shard).unwrap_or(u32::MAX)
}

pub(super) struct SlotConsumer {
    consumer: BaseConsumer,
    pub(super) slot: u32,
    /// Records before this offset were routed before this process started:
    /// missed, not delivered.
    live_from: i64,
}

impl std::fmt::Debug for SlotConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotConsumer")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl SlotConsumer {
    /// Assigns `slot` of the routed topic at its current end.
    pub(super) fn new(config: &Config, shard: usize, slot: u32) -> Result<Self, SlotError> {
        let topic = &config.downlink.topic;
        let mut client = ClientConfig::new();
        client
            .set("client.id", format!("carbridge-gateway-slot-{slot}"))
            // A routed message is waiting for a car: answered as soon as
            // any byte is there. Kafka holds a fetch that finds nothing
            // until a record arrives or this wait ends, so a longer wait
            // costs no latency, and an idle slot asks twice a second, not
            // 50 times (at 20 ms this consumer was over half of an idle
            // gateway's CPU). Brokers that answer only when the whole wait
            // is over (tansu, librdkafka's mock cluster) need a short one:
            // `-X fetch.wait.max.ms=20` (docs/operations.md).
            .set("fetch.wait.max.ms", "500")
            .set("fetch.min.bytes", "1");
        for (key, value) in &config.kafka.properties {
            if ops::kafka::for_consumer(key) {
                client.set(key, value);
            }
        }
        client
            // librdkafka wants a group for any assignment; this one never
            // joins (no subscribe). It commits what it stored (every
            // second): where a successor of this process starts reading.
            .set("group.id", format!("carbridge-gateway-slot-{slot}"))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer = client
            .create_with_context(DefaultConsumerContext)
            .map_err(SlotError::Consumer)?;

        let partitions = ops::kafka::partition_count(&consumer, topic, STARTUP_TIMEOUT)?;
        if partitions == 0 {
            return Err(SlotError::NoTopic {
                topic: topic.clone(),
            });
        }
        if u32::try_from(partitions).unwrap_or(u32::MAX) <= slot {
            return Err(SlotError::TooFewPartitions {
                topic: topic.clone(),
                partitions,
                shard,
                slot,
            });
        }
        let partition = i32::try_from(slot).map_err(|_| SlotError::OutOfRange { slot })?;
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, STARTUP_TIMEOUT)
            .map_err(|source| SlotError::Offsets {
                topic: topic.clone(),
                slot,
                source,
            })?;
        // Where the predecessor stopped, if it committed and that is still
        // in the topic.
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(topic, partition);
        let committed = consumer
            .committed_offsets(wanted, STARTUP_TIMEOUT)
            .ok()
            .and_then(|list| {
                list.find_partition(topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    })
            });
        let from = committed.map_or(high, |c| c.clamp(low, high));
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|source| SlotError::Assign {
                topic: topic.clone(),
                slot,
                source,
            })?;
        consumer
            .assign(&assignment)
            .map_err(|source| SlotError::Assign {
                topic: topic.clone(),
                slot,
                source,
            })?;
        if committed.is_none() {
            // The slot's first start: a successor of this process then
            // starts from here, not from its own end, even if this one
            // crashes before its first periodic commit.
            if let Err(error) = consumer.commit(&assignment, rdkafka::consumer::CommitMode::Sync) {
                tracing::warn!(shard, slot, %error, "committing the slot's first offset failed");
            }
        }
        tracing::info!(
            shard,
            slot,
            topic,
            offset = high,
            missed = high - from,
            "downlink slot assigned; messages routed here before this start are answered, not delivered"
        );
        Ok(Self {
            consumer,
            slot,
            live_from: high,
        })
    }

    /// Calls `arrived` (on a librdkafka thread) whenever records arrive
    /// while none were waiting to be polled.
    pub(super) fn on_arrival(&mut self, arrived: impl Fn() + Send + Sync + 'static) {
        self.consumer.set_nonempty_callback(arrived);
    }

    /// Reads the next record, without waiting, and hands what it asks
    /// (`None` for a record this build does not understand) to `handle`.
    pub(super) fn poll_with(
        &self,
        topic_header: &str,
        handle: impl FnOnce(Option<Routed<'_>>, bool),
    ) -> Polled {
        match self.consumer.poll(Duration::ZERO) {
            None => Polled::Empty,
            Some(Ok(message)) => {
                handle(
                    read(&message, topic_header),
                    message.offset() < self.live_from,
                );
                // Handled: a successor starts after it.
                let _ = self.consumer.store_offset_from_message(&message);
                Polled::Read
            }
            Some(Err(error)) => Polled::Failed(error.to_string()),
        }
    }
}

/// What one [`SlotConsumer::poll_with`] found.
#[derive(Debug)]
pub(super) enum Polled {
    /// Nothing waiting.
    Empty,
    /// One record, handed over.
    Read,
    /// The consumer reported an error (the broker unreachable, ...).
    Failed(String),
}

/// What a routed record asks of the shard.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Routed<'a> {
    /// Deliver `payload` on `topic` to the client's connection.
    Message {
        client: &'a str,
        session: Option<u64>,
        topic: &'a str,
        payload: &'a [u8],
        /// The routed record's Kafka timestamp (ms since the epoch).
        created_ms: Option<i64>,
        /// When it expires (ms since the epoch), if it does.
        expires_ms: Option<i64>,
        /// The receipt the service asked for, if it did.
        ask: Option<Ask<'a>>,
    },
    /// Close the client's connection if it still is session `session`.
    Takeover { client: &'a str, session: u64 },
}

/// A request's wish for a receipt, carried on its routed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ask<'a> {
    /// The correlation id the service chose.
    pub(super) id: &'a [u8],
    /// Where the request is in `cs.downlink`.
    pub(super) request: contract::RequestRef,
}

/// Reads a routed record; `None` if it is not one this build understands
/// (counted as `invalid` by the caller).
fn read<'a>(message: &'a BorrowedMessage<'_>, topic_header: &str) -> Option<Routed<'a>> {
    let client = std::str::from_utf8(message.key()?).ok()?;
    let (mut session, mut topic, mut control) = (None, None, None);
    let (mut receipt, mut request, mut expires_ms) = (None, None, None);
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            match header.key {
                k if k == topic_header => topic = header.value,
                contract::HEADER_SESSION => {
                    session = header.value.and_then(contract::parse_session)
                }
                contract::HEADER_CONTROL => control = header.value,
                contract::HEADER_RECEIPT => receipt = header.value,
                contract::HEADER_REQUEST => {
                    request = header.value.and_then(contract::RequestRef::parse_header);
                }
                contract::HEADER_EXPIRES => {
                    expires_ms = header.value.and_then(contract::parse_expiry);
                }
                _ => {}
            }
        }
    }
    match control {
        Some(contract::CONTROL_TAKEOVER) => Some(Routed::Takeover {
            client,
            session: session?,
        }),
        Some(_) => None,
        None => {
            let topic = std::str::from_utf8(topic?).ok()?;
            codec::topic::validate_topic_name(topic).ok()?;
            Some(Routed::Message {
                client,
                session,
                topic,
                payload: message.payload().unwrap_or_default(),
                created_ms: message.timestamp().to_millis(),
                expires_ms,
                ask: receipt
                    .zip(request)
                    .map(|(id, request)| Ask { id, request }),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_contract() {
        assert_eq!(slot_number(0, 2, 0), 0);
        assert_eq!(slot_number(0, 2, 1), 1);
        assert_eq!(slot_number(3, 2, 1), 7);
    }
}
