//! What the router's loop does with each record and each change of its
//! assignment: a partition's table rebuilt from `mqtt.sessions` before its
//! requests are routed, registry records applied, a request routed to its
//! car's slot (or dropped with a receipt), takeover notices, offsets
//! stored once a record is handed over and committed once it is in Kafka.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;

use super::commit::{self, Kind};
use super::hold::Routed;
use super::{
    Change, Error, FLUSH_BOUND, GroupConsumer, MAX_WAITING, Partition, REQUEST_TIMEOUT, Router,
    Target,
};
use crate::metrics::{Dropped, bump};
use crate::table::{Table, Takeover};

impl Router {
    /// Leaves the group (committing what was handled) and joins it again:
    /// the coordinator starts a new generation and assigns every partition
    /// anew.
    pub(super) fn rejoin(&mut self, consumer: &GroupConsumer) -> Result<(), Error> {
        bump(&self.metrics.orphan_rejoins);
        if let Err(error) = self.producer.flush(FLUSH_BOUND) {
            tracing::warn!(%error, "flushing before rejoining failed; committing anyway");
        }
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
            && !matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
        {
            tracing::warn!(%error, "committing offsets before rejoining failed");
        }
        // The revocation reaches the loop through the rebalance callback.
        consumer.unsubscribe();
        consumer
            .subscribe(&[
                &self.config.downlink_topic,
                &self.config.sessions_topic,
                &self.config.held_topic,
            ])
            .map_err(Error::Rejoin)?;
        tracing::info!("rejoined the consumer group");
        Ok(())
    }

    /// Commits the handled offsets whose records Kafka has (commit.rs).
    pub(super) fn commit(&mut self, consumer: &GroupConsumer) {
        let due = self
            .commits
            .due(&self.in_flight, &self.config.downlink_topic, Instant::now());
        if let Some(offsets) = due
            && let Err(error) = consumer.commit(&offsets, CommitMode::Async)
        {
            tracing::warn!(%error, "committing offsets failed; retrying with the next ones");
        }
    }

    pub(super) fn apply_change(&mut self, consumer: &GroupConsumer, change: Change) {
        bump(&self.metrics.rebalances);
        self.commits.forget();
        self.forget_held();
        match change {
            Change::Revoked => {
                self.watch.set_owned([]);
                self.partitions.clear();
                self.metrics.partitions.store(0, Ordering::Relaxed);
                self.metrics.live_sessions.store(0, Ordering::Relaxed);
            }
            Change::Assigned(partitions) => {
                self.watch.set_owned(partitions.iter().copied());
                self.partitions.clear();
                self.metrics.live_sessions.store(0, Ordering::Relaxed);
                self.metrics.partitions.store(
                    i64::try_from(partitions.len()).unwrap_or(i64::MAX),
                    Ordering::Relaxed,
                );
                for partition in partitions {
                    let registry = self.end(consumer, &self.config.sessions_topic, partition);
                    let held = self.end(consumer, &self.config.held_topic, partition);
                    self.partitions.insert(
                        partition,
                        Partition::Rebuilding {
                            table: Table::new(),
                            registry: Target::of(registry),
                            held: Target::of(held),
                            started: Instant::now(),
                            waiting: Vec::new(),
                        },
                    );
                }
                self.check_rebuilds(consumer);
            }
        }
    }

    /// A partition's end offset (of the registry or the held requests):
    /// the rebuild is complete once the consumer has read up to both.
    /// `None` when it cannot be read now.
    fn end(&self, consumer: &GroupConsumer, topic: &str, partition: i32) -> Option<i64> {
        match consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT) {
            Ok((_, high)) => Some(high),
            Err(error) => {
                tracing::warn!(topic, partition, %error, "reading an end offset failed; retrying");
                None
            }
        }
    }

    /// Finishes every rebuild whose consumer positions reached their
    /// targets (also when the records before them were compacted away, or
    /// the partitions are empty), and retries targets that could not be
    /// read.
    pub(super) fn check_rebuilds(&mut self, consumer: &GroupConsumer) {
        let rebuilding: Vec<(i32, Target, Target)> = self
            .partitions
            .iter()
            .filter_map(|(partition, state)| match state {
                Partition::Rebuilding { registry, held, .. } => {
                    Some((*partition, *registry, *held))
                }
                Partition::Ready(_) => None,
            })
            .collect();
        if rebuilding.is_empty() {
            return;
        }
        let positions = consumer.position().unwrap_or_default();
        let position = |topic: &str, partition: i32| {
            positions
                .find_partition(topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                })
        };
        for (partition, registry, held) in rebuilding {
            let targets = [
                (&self.config.sessions_topic, registry),
                (&self.config.held_topic, held),
            ]
            .map(|(topic, mut target)| {
                if target == Target::Unknown {
                    target = Target::of(self.end(consumer, topic, partition));
                }
                if let Some(at) = position(topic, partition) {
                    target.reach(at);
                }
                target
            });
            if let Some(Partition::Rebuilding { registry, held, .. }) =
                self.partitions.get_mut(&partition)
            {
                [*registry, *held] = targets;
            }
            self.finish_if_rebuilt(consumer, partition);
        }
    }

    /// Finishes the partition's rebuild once both targets are reached.
    fn finish_if_rebuilt(&mut self, consumer: &GroupConsumer, partition: i32) {
        if matches!(
            self.partitions.get(&partition),
            Some(Partition::Rebuilding {
                registry: Target::Reached,
                held: Target::Reached,
                ..
            })
        ) {
            self.finish_rebuild(consumer, partition);
        }
    }

    pub(super) fn handle(&mut self, consumer: &GroupConsumer, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let registry = message.topic() == self.config.sessions_topic;
        if registry || message.topic() == self.config.held_topic {
            if registry {
                self.apply_record(partition, message);
            } else {
                self.apply_held(partition, message);
            }
            if let Some(Partition::Rebuilding {
                registry: registry_target,
                held,
                ..
            }) = self.partitions.get_mut(&partition)
            {
                let target = if registry { registry_target } else { held };
                target.reach(message.offset() + 1);
            }
            self.finish_if_rebuilt(consumer, partition);
            return;
        }
        if let Some(ms) = message.timestamp().to_millis() {
            self.metrics.age_at_read.record_since_kafka_timestamp(ms);
        }
        let ready = match self.partitions.get_mut(&partition) {
            Some(Partition::Ready(_)) => true,
            Some(Partition::Rebuilding { waiting, .. }) if waiting.len() < MAX_WAITING => {
                // Fetched before the pause took effect.
                waiting.push(message.detach());
                false
            }
            Some(Partition::Rebuilding { .. }) => {
                // Too much waiting: read it again once the table is ready.
                if let Err(error) = consumer.seek(
                    &self.config.downlink_topic,
                    partition,
                    Offset::Offset(message.offset()),
                    Duration::ZERO,
                ) {
                    tracing::warn!(partition, %error, "rewinding a paused partition failed");
                }
                false
            }
            None => {
                // Not ours any more: its offset is not stored, so the new
                // owner reads it.
                tracing::debug!(partition, "request for a partition no longer assigned");
                false
            }
        };
        if ready {
            self.route(consumer, message);
        }
    }

    fn finish_rebuild(&mut self, consumer: &GroupConsumer, partition: i32) {
        let Some(Partition::Rebuilding {
            table,
            started,
            waiting,
            ..
        }) = self.partitions.remove(&partition)
        else {
            return;
        };
        let adopted = self.held.get(&partition).map_or(0, crate::held::Held::len);
        tracing::info!(
            partition,
            live_sessions = table.live(),
            held = adopted,
            took_ms = started.elapsed().as_millis(),
            "table rebuilt; routing"
        );
        bump(&self.metrics.rebuilds);
        self.metrics
            .held_adopted
            .fetch_add(adopted as u64, Ordering::Relaxed);
        // `mqtt.held` is read on: a broker may report an end inside its
        // last batch (tansu 0.6.0 does), and what follows is still a
        // predecessor's; this router's own records come back and change
        // nothing (hold.rs, `apply_held`).
        self.partitions.insert(partition, Partition::Ready(table));
        // What was held, before what waited: Kafka order per car.
        self.release_all(partition);
        for message in &waiting {
            self.route(consumer, message);
        }
        let mut resume = TopicPartitionList::new();
        resume.add_partition(&self.config.downlink_topic, partition);
        if let Err(error) = consumer.resume(&resume) {
            tracing::error!(partition, %error, "resuming the downlink partition failed");
        }
    }

    fn apply_record<M: Message>(&mut self, partition: i32, message: &M) {
        let record = message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .zip(message.payload())
            .and_then(|(client, value)| {
                Some((client, contract::SessionRecord::decode(value).ok()?))
            });
        let Some((client, record)) = record else {
            bump(&self.metrics.registry_invalid);
            tracing::debug!(
                partition,
                offset = message.offset(),
                "unreadable registry record skipped"
            );
            return;
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let ready = matches!(state, Partition::Ready(_));
        let table = state.table();
        let before = table.live();
        let notice = table.apply(client, &record);
        let after = table.live();
        self.metrics.live_sessions.fetch_add(
            i64::try_from(after).unwrap_or(0) - i64::try_from(before).unwrap_or(0),
            Ordering::Relaxed,
        );
        bump(&self.metrics.registry_applied);
        // History replayed during a rebuild names connections long closed.
        if let (true, Some(notice)) = (ready, notice) {
            self.send_takeover(client, notice);
        }
        if ready {
            self.release(partition, client);
        }
    }

    fn send_takeover(&self, client: &str, notice: Takeover) {
        if notice.slot >= self.slots {
            return;
        }
        let session = notice.session.to_string();
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: contract::HEADER_CONTROL,
                value: Some(contract::CONTROL_TAKEOVER),
            })
            .insert(Header {
                key: contract::HEADER_SESSION,
                value: Some(session.as_bytes()),
            });
        let record = BaseRecord::with_opaque_to(&self.config.routed_topic, 0)
            .partition(i32::try_from(notice.slot).unwrap_or(i32::MAX))
            .key(client.as_bytes())
            .payload(&[][..])
            .headers(headers);
        if self.send(record, Kind::Takeover) {
            bump(&self.metrics.takeover_notices);
            tracing::debug!(client, slot = notice.slot, "takeover notice sent");
        }
    }

    fn route<M: Message>(&mut self, consumer: &GroupConsumer, message: &M) {
        let partition = message.partition();
        if self
            .held
            .get(&partition)
            .is_some_and(|held| held.decided(message.offset()))
        {
            // Read again after a takeover: held, or released, already
            // (counted as adopted, not received; nor answered again, also
            // if it expired since).
            self.store(consumer, partition, message.offset());
            return;
        }
        bump(&self.metrics.received);
        let request = contract::RequestRef {
            partition,
            offset: message.offset(),
        };
        let key = message.key().unwrap_or_default();
        let client = std::str::from_utf8(key).ok().filter(|c| !c.is_empty());
        let (mut topic, mut receipt, mut expires, mut hold, mut bad) =
            (None, None, None, None, false);
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                match header.key {
                    k if k == self.config.topic_header => {
                        topic = header.value.and_then(|v| std::str::from_utf8(v).ok());
                    }
                    contract::HEADER_RECEIPT => receipt = header.value,
                    contract::HEADER_EXPIRES => {
                        expires = header.value.and_then(contract::parse_expiry);
                        bad |= expires.is_none();
                    }
                    contract::HEADER_HOLD => {
                        hold = header.value.and_then(contract::parse_hold);
                        bad |= hold.is_none();
                    }
                    _ => {}
                }
            }
        }
        let answer = |router: &Self, outcome: contract::Outcome| {
            if let Some(id) = receipt {
                router.send_receipt(key, id, outcome, request);
            }
        };
        let valid = client
            .zip(topic)
            .filter(|(_, topic)| codec::topic::validate_topic_name(topic).is_ok());
        let Some((client, topic)) = valid.filter(|_| !bad) else {
            self.metrics.dropped.bump(Dropped::Invalid);
            answer(self, contract::Outcome::Invalid);
            self.store(consumer, partition, message.offset());
            return;
        };
        // The earlier of the request's own expiry and the maximum age its
        // topic is given here.
        let timestamp = message.timestamp().to_millis();
        let expires = self
            .config
            .max_age_for(topic)
            .zip(timestamp)
            .map(|(age, created)| {
                created.saturating_add(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
            })
            .into_iter()
            .chain(expires)
            .min();
        if expires.is_some_and(|at| contract::now_ms() > at) {
            self.metrics.dropped.bump(Dropped::Expired);
            answer(self, contract::Outcome::Expired);
            self.store(consumer, partition, message.offset());
            return;
        }
        let decision = match self.partitions.get(&partition) {
            Some(Partition::Ready(table)) => table.route(client, topic),
            _ => return,
        };
        let routed = Routed {
            client,
            topic,
            payload: message.payload().unwrap_or_default(),
            expires,
            receipt,
            request,
            timestamp,
        };
        match decision {
            Err(miss) if hold.or_else(|| self.config.hold_for(topic)) == Some(true) => {
                self.hold(miss, &routed);
            }
            Err(miss) => {
                self.metrics.dropped.bump(miss.dropped());
                answer(self, miss.outcome());
            }
            Ok(route) => self.produce_routed(&routed, &route),
        }
        self.store(consumer, partition, message.offset());
    }

    /// Produces the receipt of a request the router decided (key = the
    /// request's key, header = its correlation id).
    pub(super) fn send_receipt(
        &self,
        key: &[u8],
        id: &[u8],
        outcome: contract::Outcome,
        request: contract::RequestRef,
    ) {
        let value =
            contract::Receipt::new(outcome, contract::DecidedBy::Router, None, request).encode();
        self.produce_receipt(key, id, &value, outcome);
    }

    /// Produces one receipt record (key = the request's key, header = its
    /// correlation id).
    pub(super) fn produce_receipt(
        &self,
        key: &[u8],
        id: &[u8],
        value: &[u8],
        outcome: contract::Outcome,
    ) {
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: contract::HEADER_RECEIPT,
            value: Some(id),
        });
        let record = BaseRecord::with_opaque_to(&self.config.receipts_topic, 0)
            .key(key)
            .payload(value)
            .headers(headers);
        if self.send(record, Kind::Receipt) {
            self.metrics.count_receipt(outcome);
        }
    }

    /// Hands a record to the producer, waiting while its queue is full,
    /// and numbers it among the records in flight.
    pub(super) fn send(&self, mut record: BaseRecord<'_, [u8], [u8], usize>, kind: Kind) -> bool {
        let seq = self.in_flight.begin();
        record.delivery_opaque = commit::opaque(kind, seq);
        loop {
            match self.producer.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => {
                    self.in_flight.end(seq);
                    tracing::warn!(%error, "record refused by the producer");
                    return false;
                }
            }
        }
    }

    /// Marks the request at `offset` done: the group resumes after it once
    /// the records produced for it are in Kafka.
    fn store(&mut self, consumer: &GroupConsumer, partition: i32, offset: i64) {
        self.commits.handled(partition, offset);
        // librdkafka's rd_kafka_offset_store (behind `store_offset`) takes
        // the offset of the message handled and commits offset + 1 itself.
        if let Err(error) = consumer.store_offset(&self.config.downlink_topic, partition, offset) {
            tracing::debug!(partition, %error, "storing an offset failed");
        }
    }
}
