//! The router's Kafka loop: one consumer-group member over `cs.downlink`
//! and `mqtt.sessions`, one producer to `mqtt.downlink`.
//!
//! With equal partition counts the range assignor hands this instance the
//! same partitions of both topics: the registry partition holding a car's
//! sessions is co-located with the downlink partition holding the
//! requests for it. On each assignment the router:
//! 1. seeks every assigned `mqtt.sessions` partition to its beginning and
//!    pauses the matching `cs.downlink` partition;
//! 2. rebuilds that partition's table up to the end offset it had at
//!    assignment time;
//! 3. resumes the `cs.downlink` partition (from its committed offset, so a
//!    request that arrived while no instance owned it is not skipped).
//!
//! Offsets of `cs.downlink` are stored only once the routed record is handed
//! to the producer, and committed before partitions are given up, so a
//! rebalance neither skips requests nor routes them with a stale table.
//! A partition the group has never committed gets its end committed the
//! first time it is assigned, so an instance that takes it over after a
//! crash resumes there rather than at the end of its day (the consumer's
//! `auto.offset.reset=latest` would skip what arrived meanwhile).
//!
//! Beside the loop runs the orphan watch ([`crate::watch`]); when it asks,
//! the loop leaves and rejoins the group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset};

use crate::Config;
use crate::metrics::{Dropped, Metrics, bump};
use crate::table::{Table, Takeover};
use crate::watch::{Shared, Watch};

/// Bound on metadata and offset requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on flushing routed records at shutdown.
const FLUSH_BOUND: Duration = Duration::from_secs(10);
/// Requests held for one partition while its table is rebuilt; beyond,
/// they wait in Kafka (the partition stays paused).
const MAX_WAITING: usize = 100_000;

/// Why the router stopped, or could not start. The text says what failed
/// and what to do; a Kafka cause is the [`source`](std::error::Error::source),
/// printed after it by the binary's `main`, which reports the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's settings: librdkafka would not make a client of them.
    #[error("creating {client}: check the -X properties")]
    Client {
        client: &'static str,
        #[source]
        source: KafkaError,
    },
    /// Upstream: a metadata request failed.
    #[error(transparent)]
    Kafka(#[from] ops::kafka::Error),
    /// The topic layout: a topic the router reads or writes is missing.
    #[error("topic {0} does not exist: create the topics first (`carbridge-topics create`)")]
    Missing(String),
    /// The topic layout: requests and sessions of one car would land on
    /// different routers.
    #[error(
        "{downlink_topic} has {downlink} partitions but {sessions_topic} has {sessions}: they \
         must be co-partitioned (equal counts), or requests and sessions of one car land on \
         different routers. Recreate {sessions_topic} with {downlink} partitions \
         (`carbridge-topics create`)."
    )]
    NotCoPartitioned {
        downlink_topic: String,
        downlink: usize,
        sessions_topic: String,
        sessions: usize,
    },
    /// Internal: more partitions than Kafka numbers.
    #[error("too many partitions: {0} (Kafka numbers them with a 32-bit integer)")]
    TooManyPartitions(usize),
    /// The topic layout: more slots than a session record can name.
    #[error("too many slots: the routed topic has {0} partitions (at most 2^32 - 1)")]
    TooManySlots(usize),
    /// Upstream: the group would not take the subscription.
    #[error(
        "joining the consumer group: check the -X properties and that the brokers are reachable"
    )]
    Join(#[source] KafkaError),
    /// Upstream: leaving and joining again (the orphan watch asked) failed.
    #[error(
        "rejoining the consumer group: check that the brokers are reachable, then restart the router"
    )]
    Rejoin(#[source] KafkaError),
    /// Internal: the process could not start a thread.
    #[error("starting the orphan watch: the process may be out of threads or memory")]
    Watch(#[source] std::io::Error),
}

/// Consumer-group changes, recorded by the rebalance callback and handled
/// by the loop.
#[derive(Debug)]
enum Change {
    Assigned(Vec<i32>),
    Revoked,
}

struct RouterContext {
    downlink: String,
    sessions: String,
    changes: Mutex<Vec<Change>>,
    metrics: Arc<Metrics>,
}

impl ClientContext for RouterContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, "Kafka client error: {reason}");
    }
}

impl ConsumerContext for RouterContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut downlink = TopicPartitionList::new();
                let mut partitions = Vec::new();
                for element in tpl.elements() {
                    if element.topic() == self.downlink {
                        partitions.push(element.partition());
                        let _ = downlink.add_partition(&self.downlink, element.partition());
                    }
                }
                let sessions: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.sessions)
                    .map(|e| e.partition())
                    .collect();
                // The registry is always read whole: it is the table.
                for partition in sessions {
                    let _ = tpl.set_partition_offset(&self.sessions, partition, Offset::Beginning);
                }
                self.anchor(consumer, &downlink, tpl);
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "assigning partitions failed");
                }
                // No request is read before its partition's table is rebuilt.
                if let Err(error) = consumer.pause(&downlink) {
                    tracing::error!(%error, "pausing downlink partitions failed");
                }
                partitions.sort_unstable();
                tracing::info!(?partitions, "partitions assigned");
                self.lock().push(Change::Assigned(partitions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Hand over exactly where this instance stopped.
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
                    && !matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
                {
                    tracing::warn!(%error, "committing offsets before the rebalance failed");
                }
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassigning partitions failed");
                }
                tracing::info!("partitions revoked");
                self.lock().push(Change::Revoked);
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
                self.lock().push(Change::Revoked);
            }
        }
    }
}

impl RouterContext {
    /// Commits the end of every assigned `cs.downlink` partition that has
    /// no committed offset yet, and starts there: from now on whoever owns
    /// the partition next resumes from a committed offset. Best effort: on
    /// failure the partition starts at the end as before.
    fn anchor(
        &self,
        consumer: &BaseConsumer<Self>,
        downlink: &TopicPartitionList,
        tpl: &mut TopicPartitionList,
    ) {
        if downlink.count() == 0 {
            return;
        }
        let committed = match consumer.committed_offsets(downlink.clone(), REQUEST_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "reading committed offsets failed; new partitions start at their end");
                return;
            }
        };
        let mut anchors = TopicPartitionList::new();
        for element in committed.elements() {
            if matches!(element.offset(), Offset::Offset(_)) {
                continue;
            }
            let partition = element.partition();
            match consumer.fetch_watermarks(&self.downlink, partition, REQUEST_TIMEOUT) {
                Ok((_, high)) => {
                    let _ = anchors.add_partition_offset(
                        &self.downlink,
                        partition,
                        Offset::Offset(high),
                    );
                    let _ =
                        tpl.set_partition_offset(&self.downlink, partition, Offset::Offset(high));
                }
                Err(error) => tracing::warn!(partition, %error, "reading the end offset failed"),
            }
        }
        if anchors.count() == 0 {
            return;
        }
        match consumer.commit(&anchors, CommitMode::Sync) {
            Ok(()) => {
                for element in anchors.elements() {
                    bump(&self.metrics.anchored);
                    tracing::info!(
                        partition = element.partition(),
                        offset = ?element.offset(),
                        "first owner of this partition: its end is now its committed offset"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, "committing the first offsets failed"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Change>> {
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Delivery opaques: what a produced record was.
const ROUTED: usize = 0;
const TAKEOVER: usize = 1;
const RECEIPT: usize = 2;

/// Counts what Kafka did with routed records, notices and receipts.
struct RoutedContext {
    metrics: Arc<Metrics>,
}

impl ClientContext for RoutedContext {}

impl ProducerContext for RoutedContext {
    /// [`ROUTED`], [`TAKEOVER`] or [`RECEIPT`].
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, kind: usize) {
        match (result, kind) {
            (Ok(_), ROUTED) => bump(&self.metrics.acked),
            (Err((error, _)), ROUTED) => {
                bump(&self.metrics.failed);
                tracing::warn!(%error, "routed record lost");
            }
            (Err((error, _)), RECEIPT) => {
                bump(&self.metrics.receipts_failed);
                tracing::warn!(%error, "receipt lost");
            }
            (Err((error, _)), _) => tracing::warn!(%error, "takeover notice lost"),
            (Ok(_), _) => {}
        }
    }
}

type GroupConsumer = BaseConsumer<RouterContext>;

/// One assigned partition.
enum Partition {
    /// Reading the registry up to `target` (its end offset at assignment;
    /// `None` until that could be read); requests read meanwhile wait.
    Rebuilding {
        table: Table,
        target: Option<i64>,
        started: Instant,
        waiting: Vec<OwnedMessage>,
    },
    Ready(Table),
}

impl Partition {
    fn table(&mut self) -> &mut Table {
        match self {
            Self::Rebuilding { table, .. } | Self::Ready(table) => table,
        }
    }
}

/// The loop's state. The consumer lives beside it, not in it: a message
/// borrowed from the consumer is handled while the state changes.
struct Router {
    config: Config,
    producer: BaseProducer<RoutedContext>,
    metrics: Arc<Metrics>,
    slots: u32,
    partitions: HashMap<i32, Partition>,
    /// What the orphan watch reads (owned partitions) and asks (rejoin).
    watch: Arc<Shared>,
}

/// Starts the orphan watch on its own thread with its own (unsubscribed)
/// consumer of the group's offsets.
fn spawn_watch(
    config: &Config,
    partitions: usize,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let consumer: BaseConsumer = client_config(config, ops::kafka::for_consumer)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|source| Error::Client {
            client: "the orphan watch's consumer",
            source,
        })?;
    let watch = Watch::new(
        consumer,
        config.downlink_topic.clone(),
        i32::try_from(partitions).map_err(|_| Error::TooManyPartitions(partitions))?,
        Duration::from_millis(u64::from(config.orphan_after_ms)),
        config.orphan_rejoin,
        shared,
        metrics,
    );
    std::thread::Builder::new()
        .name("orphan-watch".to_owned())
        .spawn(move || watch.run(&stop))
        .map_err(Error::Watch)?;
    Ok(())
}

/// The client settings every `-X` property of this kind of client
/// (`ops::kafka::for_consumer` or `for_producer`) adds to.
fn client_config(config: &Config, applies: fn(&str) -> bool) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.kafka_properties {
        if applies(key) {
            client.set(key, value);
        }
    }
    client.set("bootstrap.servers", &config.bootstrap);
    client
}

/// Partition count of `topic`, or an error naming what to do.
pub fn partition_count<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
) -> Result<usize, Error> {
    let count = ops::kafka::partition_count(consumer, topic, REQUEST_TIMEOUT)?;
    if count == 0 {
        return Err(Error::Missing(topic.to_owned()));
    }
    Ok(count)
}

/// Runs the router until `stop` is set. `ready` is set while every
/// assigned partition's table is rebuilt.
pub fn run(
    config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(), Error> {
    let mut consumer_config = client_config(&config, ops::kafka::for_consumer);
    consumer_config
        .set("group.id", &config.group)
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the end: downlink is realtime data.
        .set("auto.offset.reset", "latest")
        .set("session.timeout.ms", config.session_timeout_ms.to_string());
    // Long-poll briefly; `-X fetch.wait.max.ms=` overrides it (brokers that
    // answer an empty fetch only after the whole wait, as tansu and the
    // mock cluster do, make each downlink hop cost up to this much).
    if !config.kafka_properties.contains_key("fetch.wait.max.ms") {
        consumer_config.set("fetch.wait.max.ms", "20");
    }
    let consumer: BaseConsumer<RouterContext> = consumer_config
        .create_with_context(RouterContext {
            downlink: config.downlink_topic.clone(),
            sessions: config.sessions_topic.clone(),
            changes: Mutex::new(Vec::new()),
            metrics: metrics.clone(),
        })
        .map_err(|source| Error::Client {
            client: "the consumer",
            source,
        })?;

    let downlink = partition_count(&consumer, &config.downlink_topic)?;
    let sessions = partition_count(&consumer, &config.sessions_topic)?;
    if downlink != sessions {
        return Err(Error::NotCoPartitioned {
            downlink_topic: config.downlink_topic.clone(),
            downlink,
            sessions_topic: config.sessions_topic.clone(),
            sessions,
        });
    }
    let routed = partition_count(&consumer, &config.routed_topic)?;
    let slots = u32::try_from(routed).map_err(|_| Error::TooManySlots(routed))?;

    let mut producer_config = client_config(&config, ops::kafka::for_producer);
    producer_config
        .set("linger.ms", "1")
        // Receipts are keyed by client id like everything else: the same
        // partition as the gateways' and the services' (routed records
        // name their partition).
        .set("partitioner", "murmur2_random")
        // A retried request must not overtake the next one: per-client
        // order. (Idempotence would allow more in flight, but an
        // idempotent producer stalls when the broker loses its producer
        // state, as a restarted in-memory tansu does.)
        .set("max.in.flight.requests.per.connection", "1")
        .set("client.id", "carbridge-router");
    let producer: BaseProducer<RoutedContext> = producer_config
        .create_with_context(RoutedContext {
            metrics: metrics.clone(),
        })
        .map_err(|source| Error::Client {
            client: "the producer",
            source,
        })?;

    consumer
        .subscribe(&[&config.downlink_topic, &config.sessions_topic])
        .map_err(Error::Join)?;
    tracing::info!(
        group = %config.group,
        partitions = downlink,
        slots,
        "router running"
    );
    let watch = Arc::new(Shared::default());
    if config.orphan_after_ms > 0 {
        spawn_watch(
            &config,
            downlink,
            watch.clone(),
            metrics.clone(),
            stop.clone(),
        )?;
    }
    let mut router = Router {
        config,
        producer,
        metrics,
        slots,
        partitions: HashMap::new(),
        watch,
    };
    let mut assigned_once = false;
    let mut last_check = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        router.metrics.heartbeat.fetch_add(1, Ordering::Relaxed);
        if router.watch.take_rejoin() {
            router.rejoin(&consumer)?;
        }
        let changes = std::mem::take(&mut *consumer.context().lock());
        for change in changes {
            assigned_once |= matches!(change, Change::Assigned(_));
            router.apply_change(&consumer, change);
        }
        if let Some(result) = consumer.poll(Duration::from_millis(50)) {
            match result {
                Ok(message) => router.handle(&consumer, &message),
                Err(error) => tracing::warn!(%error, "consumer error"),
            }
        }
        ops::kafka::serve_events(&router.producer, 1024);
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            router.check_rebuilds(&consumer);
        }
        let rebuilding = router
            .partitions
            .values()
            .any(|p| matches!(p, Partition::Rebuilding { .. }));
        ready.store(assigned_once && !rebuilding, Ordering::Relaxed);
    }
    ready.store(false, Ordering::Relaxed);
    tracing::info!("stopping: flushing routed records and committing offsets");
    if let Err(error) = router.producer.flush(FLUSH_BOUND) {
        tracing::warn!(%error, "flush incomplete");
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
        && !matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
    {
        tracing::warn!(%error, "final offset commit failed");
    }
    consumer.unsubscribe();
    Ok(())
}

impl Router {
    /// Leaves the group (committing what was handled) and joins it again:
    /// the coordinator starts a new generation and assigns every partition
    /// anew.
    fn rejoin(&mut self, consumer: &GroupConsumer) -> Result<(), Error> {
        bump(&self.metrics.orphan_rejoins);
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync)
            && !matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::NoOffset))
        {
            tracing::warn!(%error, "committing offsets before rejoining failed");
        }
        // The revocation reaches the loop through the rebalance callback.
        consumer.unsubscribe();
        consumer
            .subscribe(&[&self.config.downlink_topic, &self.config.sessions_topic])
            .map_err(Error::Rejoin)?;
        tracing::info!("rejoined the consumer group");
        Ok(())
    }

    fn apply_change(&mut self, consumer: &GroupConsumer, change: Change) {
        bump(&self.metrics.rebalances);
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
                    self.partitions.insert(
                        partition,
                        Partition::Rebuilding {
                            table: Table::new(),
                            target: self.registry_end(consumer, partition),
                            started: Instant::now(),
                            waiting: Vec::new(),
                        },
                    );
                }
                self.check_rebuilds(consumer);
            }
        }
    }

    /// The registry partition's end offset: the rebuild is complete once
    /// the consumer has read up to it. `None` when it cannot be read now.
    fn registry_end(&self, consumer: &GroupConsumer, partition: i32) -> Option<i64> {
        match consumer.fetch_watermarks(&self.config.sessions_topic, partition, REQUEST_TIMEOUT) {
            Ok((_, high)) => Some(high),
            Err(error) => {
                tracing::warn!(partition, %error, "reading the registry's end offset failed; retrying");
                None
            }
        }
    }

    /// Finishes every rebuild whose consumer position reached its target
    /// (also when the records before it were compacted away, or the
    /// partition is empty), and retries targets that could not be read.
    fn check_rebuilds(&mut self, consumer: &GroupConsumer) {
        let mut unknown = Vec::new();
        let mut targets = Vec::new();
        for (partition, state) in &self.partitions {
            match state {
                Partition::Rebuilding { target: None, .. } => unknown.push(*partition),
                Partition::Rebuilding {
                    target: Some(target),
                    ..
                } => targets.push((*partition, *target)),
                Partition::Ready(_) => {}
            }
        }
        for partition in unknown {
            let end = self.registry_end(consumer, partition);
            if let Some(Partition::Rebuilding { target, .. }) = self.partitions.get_mut(&partition)
            {
                *target = end;
            }
        }
        if targets.is_empty() {
            return;
        }
        let positions = consumer.position().unwrap_or_default();
        for (partition, target) in targets {
            let position = positions
                .find_partition(&self.config.sessions_topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            if target == 0 || position.is_some_and(|p| p >= target) {
                self.finish_rebuild(consumer, partition);
            }
        }
    }

    fn handle(&mut self, consumer: &GroupConsumer, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        if message.topic() == self.config.sessions_topic {
            self.apply_record(partition, message);
            let done = matches!(
                self.partitions.get(&partition),
                Some(Partition::Rebuilding { target: Some(target), .. })
                    if message.offset() + 1 >= *target
            );
            if done {
                self.finish_rebuild(consumer, partition);
            }
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
        tracing::info!(
            partition,
            live_sessions = table.live(),
            took_ms = started.elapsed().as_millis(),
            "table rebuilt; routing"
        );
        bump(&self.metrics.rebuilds);
        self.partitions.insert(partition, Partition::Ready(table));
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
        let record = BaseRecord::with_opaque_to(&self.config.routed_topic, TAKEOVER)
            .partition(i32::try_from(notice.slot).unwrap_or(i32::MAX))
            .key(client.as_bytes())
            .payload(&[][..])
            .headers(headers);
        if self.send(record) {
            bump(&self.metrics.takeover_notices);
            tracing::debug!(client, slot = notice.slot, "takeover notice sent");
        }
    }

    fn route<M: Message>(&mut self, consumer: &GroupConsumer, message: &M) {
        bump(&self.metrics.received);
        let partition = message.partition();
        let request = contract::RequestRef {
            partition,
            offset: message.offset(),
        };
        let key = message.key().unwrap_or_default();
        let client = std::str::from_utf8(key).ok().filter(|c| !c.is_empty());
        let (mut topic, mut receipt, mut expires, mut bad_expiry) = (None, None, None, false);
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                match header.key {
                    k if k == self.config.topic_header => {
                        topic = header.value.and_then(|v| std::str::from_utf8(v).ok());
                    }
                    contract::HEADER_RECEIPT => receipt = header.value,
                    contract::HEADER_EXPIRES => {
                        expires = header.value.and_then(contract::parse_expiry);
                        bad_expiry |= expires.is_none();
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
        let Some((client, topic)) = valid.filter(|_| !bad_expiry) else {
            self.metrics.dropped.bump(Dropped::Invalid);
            answer(self, contract::Outcome::Invalid);
            self.store(consumer, partition, message.offset());
            return;
        };
        // The earlier of the request's own expiry and the maximum age its
        // topic is given here.
        let expires = self
            .config
            .max_age_for(topic)
            .zip(message.timestamp().to_millis())
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
        match decision {
            Err(miss) => {
                self.metrics.dropped.bump(miss.dropped());
                answer(self, miss.outcome());
            }
            Ok(route) if route.slot >= self.slots => {
                self.metrics.dropped.bump(Dropped::NoSlot);
                answer(self, contract::Outcome::NoSlot);
                tracing::warn!(
                    client,
                    slot = route.slot,
                    slots = self.slots,
                    "session names a slot mqtt.downlink does not have: add partitions"
                );
            }
            Ok(route) => {
                let session = route.session.to_string();
                let expiry = expires.map(|at| at.to_string());
                let request_header = request.header();
                let mut headers = OwnedHeaders::new_with_capacity(5)
                    .insert(Header {
                        key: &self.config.topic_header,
                        value: Some(topic.as_bytes()),
                    })
                    .insert(Header {
                        key: contract::HEADER_SESSION,
                        value: Some(session.as_bytes()),
                    });
                if let Some(expiry) = &expiry {
                    headers = headers.insert(Header {
                        key: contract::HEADER_EXPIRES,
                        value: Some(expiry.as_bytes()),
                    });
                }
                if let Some(id) = receipt {
                    headers = headers
                        .insert(Header {
                            key: contract::HEADER_RECEIPT,
                            value: Some(id),
                        })
                        .insert(Header {
                            key: contract::HEADER_REQUEST,
                            value: Some(request_header.as_bytes()),
                        });
                }
                let record = BaseRecord::with_opaque_to(&self.config.routed_topic, ROUTED)
                    .partition(i32::try_from(route.slot).unwrap_or(i32::MAX))
                    .key(client.as_bytes())
                    .payload(message.payload().unwrap_or_default())
                    .headers(headers);
                if self.send(record) {
                    bump(&self.metrics.sent);
                    if let Some(ms) = message.timestamp().to_millis() {
                        self.metrics.age_at_routing.record_since_kafka_timestamp(ms);
                    }
                } else {
                    bump(&self.metrics.failed);
                }
            }
        }
        self.store(consumer, partition, message.offset());
    }

    /// Produces the receipt of a request the router decided (key = the
    /// request's key, header = its correlation id).
    fn send_receipt(
        &self,
        key: &[u8],
        id: &[u8],
        outcome: contract::Outcome,
        request: contract::RequestRef,
    ) {
        let value =
            contract::Receipt::new(outcome, contract::DecidedBy::Router, None, request).encode();
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: contract::HEADER_RECEIPT,
            value: Some(id),
        });
        let record = BaseRecord::with_opaque_to(&self.config.receipts_topic, RECEIPT)
            .key(key)
            .payload(&value[..])
            .headers(headers);
        if self.send(record) {
            self.metrics.count_receipt(outcome);
        }
    }

    /// Hands a record to the producer, waiting while its queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], usize>) -> bool {
        loop {
            match self.producer.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => {
                    tracing::warn!(%error, "record refused by the producer");
                    return false;
                }
            }
        }
    }

    /// Marks the request at `offset` done: the group resumes after it.
    fn store(&self, consumer: &GroupConsumer, partition: i32, offset: i64) {
        // librdkafka's rd_kafka_offset_store (behind `store_offset`) takes
        // the offset of the message handled and commits offset + 1 itself.
        if let Err(error) = consumer.store_offset(&self.config.downlink_topic, partition, offset) {
            tracing::debug!(partition, %error, "storing an offset failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn layout_errors_say_what_to_do() {
        let missing = Error::Missing("cs.downlink".to_owned()).to_string();
        assert!(missing.contains("cs.downlink does not exist"), "{missing}");
        assert!(missing.contains("carbridge-topics create"), "{missing}");
        let skewed = Error::NotCoPartitioned {
            downlink_topic: "cs.downlink".to_owned(),
            downlink: 4,
            sessions_topic: "mqtt.sessions".to_owned(),
            sessions: 3,
        }
        .to_string();
        assert!(
            skewed.starts_with("cs.downlink has 4 partitions but mqtt.sessions has 3"),
            "{skewed}"
        );
        assert!(skewed.contains("co-partitioned"), "{skewed}");
        assert!(
            skewed.contains("Recreate mqtt.sessions with 4 partitions"),
            "{skewed}"
        );
    }

    #[test]
    fn a_kafka_cause_stays_in_the_chain() {
        let error = Error::Client {
            client: "the producer",
            source: KafkaError::ClientCreation("bad property".to_owned()),
        };
        assert!(error.to_string().starts_with("creating the producer"));
        let cause = error.source().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("bad property"), "{cause}");
        // An ops error passes through unchanged, its cause included.
        let metadata = Error::from(ops::kafka::Error::Metadata {
            topic: "cs.downlink".to_owned(),
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
        });
        assert!(
            metadata
                .to_string()
                .starts_with("reading the metadata of cs.downlink")
        );
        assert!(metadata.source().is_some());
    }
}
