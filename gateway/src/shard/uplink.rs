//! A car's PUBLISH on its way to Kafka: its topic mapped, the record
//! handed to the shard's producer, and, when librdkafka's queue is full,
//! offered again until it is taken.

use std::sync::atomic::Ordering;

use codec::Publish;
use glommio::timer::sleep;

use super::POLL_INTERVAL;
use super::connection::Connection;
use crate::kafka::SendError;
use crate::mapping::Unmapped;
use crate::metrics::{Failure, bump};
use crate::session::CloseReason;

/// What became of a PUBLISH offered to the producer.
pub(super) enum Offered {
    /// Handed over (or failed and counted).
    Done,
    Close(CloseReason),
    Full,
}

impl Connection {
    /// A PUBLISH the session let through: counted received, and offered.
    pub(super) fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Offered {
        bump(&self.shard.metrics.publish_received);
        self.offer(topic, payload)
    }

    /// Maps a PUBLISH's topic and hands the record (its topic and payload,
    /// decoded in place or owned) to the shard's producer.
    fn offer(&mut self, topic: &[u8], payload: &[u8]) -> Offered {
        let shard = &self.shard;
        let client_id = self.session.client_id().cloned().unwrap_or_default();
        let mapped = shard
            .mapper
            .borrow_mut()
            .map_bytes_for(topic, Some(&client_id))
            .map(|kafka_topic| {
                shard
                    .producer
                    .send(kafka_topic, client_id.as_bytes(), payload, topic)
            });
        let sent = match mapped {
            Ok(sent) => sent,
            Err(unmapped) => {
                // Refused, not lost: the car's PUBLISH never entered the pipeline.
                shard
                    .metrics
                    .publish_received
                    .fetch_sub(1, Ordering::Relaxed);
                return Offered::Close(self.session.close(match unmapped {
                    Unmapped::NotOwnTopic => CloseReason::ForbiddenTopic,
                    Unmapped::NoRule | Unmapped::InvalidKafkaTopic => CloseReason::UnmappedTopic,
                }));
            }
        };
        match sent {
            Ok(()) => {
                self.control.count_uplink(1, payload.len());
                shard.handed_over();
                Offered::Done
            }
            Err(SendError::Failed) => Offered::Done,
            Err(SendError::QueueFull) => match self.control.reason.get() {
                // Told to close while waiting for queue space: this one record
                // was read and is not handed over.
                Some(reason) => {
                    shard.metrics.publish_failed.bump(Failure::Shutdown);
                    Offered::Close(self.session.close(reason))
                }
                // librdkafka's own queue is full: the shard waits for
                // deliveries, then offers the record again.
                None => Offered::Full,
            },
        }
    }

    /// Offers a PUBLISH that found librdkafka's queue full again, each time
    /// the shard has served delivery reports, until it is taken; `Some` to
    /// close.
    pub(super) async fn retry(&mut self, publish: Publish) -> Option<CloseReason> {
        loop {
            let shard = &self.shard;
            shard.flow.pause(shard.id, &shard.metrics);
            shard.producer.poll();
            sleep(POLL_INTERVAL).await;
            match self.offer(publish.topic_bytes(), publish.payload()) {
                Offered::Done => return None,
                Offered::Close(reason) => return Some(reason),
                Offered::Full => {}
            }
        }
    }
}
