//! The uplink producer: one librdkafka producer per shard.
//!
//! Records follow the uplink contract: key = client id, value = payload,
//! header `mqtt.topic` = the MQTT topic name, `murmur2_random` partitioner.
//!
//! The shard polls its own producer, so delivery reports run on the shard's
//! thread and update only that shard's counters. Each record carries its
//! size as the delivery opaque: the report subtracts it from the shard's
//! in-flight bytes, which is what flow control watches. Every record handed
//! to librdkafka ends in exactly one report, acknowledged or failed, so
//! `received = acked + failed + in flight` holds at all times.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::config::Kafka;
use crate::metrics::{Failure, ShardMetrics, bump};

#[derive(Debug)]
pub(crate) struct UplinkContext {
    shard: usize,
    metrics: Arc<ShardMetrics>,
}

impl ClientContext for UplinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let shard = self.shard;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(shard, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(shard, facility, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(shard, facility, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(shard, facility, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(shard = self.shard, %error, "Kafka client error: {reason}");
    }
}

impl ProducerContext for UplinkContext {
    /// An uplink record's size in bytes (as counted in flight) and when it
    /// was handed over: see [`uplink_opaque`].
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if opaque == RECEIPT_RECORD {
            if let Err((error, _)) = result {
                bump(&self.metrics.receipts_failed);
                tracing::warn!(shard = self.shard, %error, "receipt lost");
            }
            return;
        }
        if opaque == REGISTRY_RECORD {
            match result {
                Ok(_) => bump(&self.metrics.registry_acked),
                Err((error, _)) => {
                    bump(&self.metrics.registry_failed);
                    tracing::warn!(shard = self.shard, %error, "session-registry record lost: \
                        downlink to that car may be misrouted until it reconnects");
                }
            }
            return;
        }
        let (size, sent_us) = split_opaque(opaque);
        self.metrics
            .in_flight_bytes
            .fetch_sub(i64::from(size), Ordering::Relaxed);
        match result {
            Ok(_) => {
                bump(&self.metrics.publish_acked);
                self.metrics
                    .ack_latency
                    .record(u64::from(clock_us().wrapping_sub(sent_us)));
            }
            Err((error, _)) => {
                let reason = match error.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageTimedOut) => Failure::TimedOut,
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => Failure::TooLarge,
                    Some(
                        RDKafkaErrorCode::BrokerDestroy
                        | RDKafkaErrorCode::PurgeQueue
                        | RDKafkaErrorCode::PurgeInflight
                        | RDKafkaErrorCode::Fatal,
                    ) => Failure::Shutdown,
                    _ => Failure::KafkaError,
                };
                self.metrics.publish_failed.bump(reason);
            }
        }
    }
}

/// The delivery opaque of a session-registry record; an uplink record's
/// opaque ([`uplink_opaque`]) never has all bits set: its size is below
/// `u32::MAX`.
const REGISTRY_RECORD: usize = usize::MAX;
/// The delivery opaque of a receipt record.
const RECEIPT_RECORD: usize = usize::MAX - 1;

/// Batches of delivery reports one poller turn serves at most.
const MAX_EVENTS_PER_POLL: usize = 256;

/// Microseconds on a process-wide monotonic clock, wrapping every 71
/// minutes: differences stay right for acknowledgements within that.
fn clock_us() -> u32 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let micros = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros();
    (micros & u128::from(u32::MAX)) as u32
}

/// An uplink record's delivery opaque: its size in the low 32 bits, the
/// time it was handed over ([`clock_us`]) in the high 32.
fn uplink_opaque(size: u32) -> usize {
    ((u64::from(clock_us()) << 32) | u64::from(size)) as usize
}

fn split_opaque(opaque: usize) -> (u32, u32) {
    let opaque = opaque as u64;
    ((opaque & u64::from(u32::MAX)) as u32, (opaque >> 32) as u32)
}

/// Why a record was not handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// librdkafka's queue is full: poll, wait, and offer the record again.
    QueueFull,
    /// The record can never be sent (counted as failed already).
    Failed,
}

pub(crate) struct ShardProducer {
    producer: BaseProducer<UplinkContext>,
    metrics: Arc<ShardMetrics>,
    max_in_flight: i64,
    header: String,
}

impl std::fmt::Debug for ShardProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardProducer")
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl ShardProducer {
    pub(crate) fn new(
        config: &Kafka,
        shard: usize,
        metrics: Arc<ShardMetrics>,
    ) -> Result<Self, KafkaError> {
        let mut client = ClientConfig::new();
        // Low latency by default; every property can be overridden.
        // Idempotent: a batch librdkafka retries after a lost
        // acknowledgement is not stored twice, and a car's records keep
        // their order. Tests and the local stack turn it off: tansu 0.6.0
        // leaves some of an idempotent producer's records unacknowledged.
        client
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .set("client.id", format!("carbridge-gateway-{shard}"));
        for (key, value) in &config.properties {
            if ops::kafka::for_producer(key) {
                client.set(key, value);
            }
        }
        // The uplink contract: the same partition as the Java client picks.
        client.set("partitioner", "murmur2_random");
        let producer = client.create_with_context(UplinkContext {
            shard,
            metrics: metrics.clone(),
        })?;
        Ok(Self {
            producer,
            metrics,
            max_in_flight: i64::try_from(config.max_in_flight_bytes).unwrap_or(i64::MAX),
            header: config.topic_header.clone(),
        })
    }

    /// Whether the shard may read more from its sockets.
    pub(crate) fn has_room(&self) -> bool {
        self.metrics.in_flight_bytes.load(Ordering::Relaxed) < self.max_in_flight
    }

    /// Hands one record to librdkafka.
    pub(crate) fn send(
        &self,
        kafka_topic: &str,
        client_id: &[u8],
        payload: &[u8],
        mqtt_topic: &[u8],
    ) -> Result<(), SendError> {
        let size = client_id.len() + payload.len() + mqtt_topic.len();
        // Packets are at most `max_packet_size` (validated < 256 MiB); the
        // two largest sizes are never used, so no opaque is a registry's
        // or a receipt's.
        let size32 = u32::try_from(size)
            .unwrap_or(u32::MAX - 2)
            .min(u32::MAX - 2);
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: &self.header,
            value: Some(mqtt_topic),
        });
        let record = BaseRecord::with_opaque_to(kafka_topic, uplink_opaque(size32))
            .key(client_id)
            .payload(payload)
            .headers(headers);
        match self.producer.send(record) {
            Ok(()) => {
                self.metrics
                    .in_flight_bytes
                    .fetch_add(i64::from(size32), Ordering::Relaxed);
                Ok(())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull)
            }
            Err((error, _)) => {
                let reason = match error.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::MessageSizeTooLarge) => Failure::TooLarge,
                    _ => Failure::KafkaError,
                };
                tracing::warn!(%error, kafka_topic, "record refused by the producer");
                self.metrics.publish_failed.bump(reason);
                Err(SendError::Failed)
            }
        }
    }

    /// Hands one receipt record (key = client id, header = the request's
    /// correlation id) to librdkafka.
    pub(crate) fn send_receipt(
        &self,
        topic: &str,
        client_id: &[u8],
        id: &[u8],
        value: &[u8],
    ) -> Result<(), SendError> {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: contract::HEADER_RECEIPT,
            value: Some(id),
        });
        let record = BaseRecord::with_opaque_to(topic, RECEIPT_RECORD)
            .key(client_id)
            .payload(value)
            .headers(headers);
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull)
            }
            Err((error, _)) => {
                tracing::warn!(%error, topic, "receipt refused by the producer");
                bump(&self.metrics.receipts_failed);
                Err(SendError::Failed)
            }
        }
    }

    /// Hands one session-registry record (key = client id) to librdkafka.
    /// Not subject to the in-flight bound: these are few and small, and
    /// losing one would misroute the car's downlink.
    pub(crate) fn send_registry(
        &self,
        topic: &str,
        client_id: &[u8],
        value: &[u8],
    ) -> Result<(), SendError> {
        let record = BaseRecord::with_opaque_to(topic, REGISTRY_RECORD)
            .key(client_id)
            .payload(value);
        match self.producer.send(record) {
            Ok(()) => {
                bump(&self.metrics.registry_sent);
                Ok(())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(SendError::QueueFull)
            }
            Err((error, _)) => {
                tracing::warn!(%error, topic, "session-registry record refused by the producer");
                bump(&self.metrics.registry_failed);
                Err(SendError::Failed)
            }
        }
    }

    /// Serves the delivery reports waiting, without blocking (at most
    /// [`MAX_EVENTS_PER_POLL`] batches, so the poller's other work gets its
    /// turn).
    pub(crate) fn poll(&self) {
        ops::kafka::serve_events(&self.producer, MAX_EVENTS_PER_POLL);
    }

    /// Waits up to `timeout` for every record to be acknowledged or failed.
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Drops every record still queued or in flight; their delivery reports
    /// (failed, "shutdown") are served before this returns.
    pub(crate) fn purge(&self) {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        ops::kafka::serve_events(&self.producer, usize::MAX);
    }

    /// Records librdkafka still holds.
    pub(crate) fn queued(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_opaque_carries_size_and_time_and_is_never_a_registry_record() {
        let before = clock_us();
        let opaque = uplink_opaque(u32::MAX - 2);
        let (size, sent) = split_opaque(opaque);
        assert_eq!(size, u32::MAX - 2);
        assert!(sent.wrapping_sub(before) < 1_000_000);
        assert_ne!(opaque, REGISTRY_RECORD);
        assert_ne!(opaque, RECEIPT_RECORD);
        assert_eq!(split_opaque(uplink_opaque(17)).0, 17);
    }
}
