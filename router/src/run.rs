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
//! Offsets of `cs.downlink` are stored once the routed record is handed
//! to the producer, committed only once Kafka has it ([`commit`]), and
//! committed (after a flush) before partitions are given up, so neither a
//! crash nor a rebalance skips requests, and none is routed with a stale
//! table.
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
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset};

use crate::Config;
use crate::metrics::{Metrics, bump};
use crate::table::Table;
use crate::watch::{Shared, Watch};

mod commit;
mod hold;
mod router;

use commit::{InFlight, RoutedContext};

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
    held: String,
    changes: Mutex<Vec<Change>>,
    metrics: Arc<Metrics>,
    /// Flushed before a revoke commits: what is handed over is in Kafka.
    producer: Arc<BaseProducer<RoutedContext>>,
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
                let whole: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.sessions || e.topic() == self.held)
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                // The registry is always read whole: it is the table; so
                // are the held requests.
                let mut held = TopicPartitionList::new();
                for (topic, partition) in whole {
                    let _ = tpl.set_partition_offset(&topic, partition, Offset::Beginning);
                    if topic == self.held {
                        let _ = held.add_partition(&topic, partition);
                    }
                }
                self.anchor(consumer, &downlink, tpl);
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "assigning partitions failed");
                }
                // No request is read before its partition's table is rebuilt.
                if let Err(error) = consumer.pause(&downlink) {
                    tracing::error!(%error, "pausing downlink partitions failed");
                }
                // Held partitions are read from their beginning; none is
                // paused (librdkafka would keep a pause across
                // assignments), but make sure.
                if let Err(error) = consumer.resume(&held) {
                    tracing::error!(%error, "resuming held partitions failed");
                }
                partitions.sort_unstable();
                tracing::info!(?partitions, "partitions assigned");
                self.lock().push(Change::Assigned(partitions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Hand over exactly where this instance stopped, once what
                // it produced for those requests is in Kafka.
                if let Err(error) = self.producer.flush(FLUSH_BOUND) {
                    tracing::warn!(%error, "flushing before the rebalance failed; committing anyway");
                }
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

type GroupConsumer = BaseConsumer<RouterContext>;

/// One assigned partition.
enum Partition {
    /// Reading the registry and the held requests up to their targets
    /// (end offsets at assignment; `None` until they could be read);
    /// requests read meanwhile wait.
    Rebuilding {
        table: Table,
        registry: Target,
        held: Target,
        started: Instant,
        waiting: Vec<OwnedMessage>,
    },
    Ready(Table),
}

/// How far a rebuild must read one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Its end offset could not be read yet.
    Unknown,
    Offset(i64),
    Reached,
}

impl Target {
    fn of(end: Option<i64>) -> Self {
        match end {
            None => Self::Unknown,
            Some(0) => Self::Reached,
            Some(end) => Self::Offset(end),
        }
    }

    /// The consumer is at `position` (the next offset to read).
    fn reach(&mut self, position: i64) {
        if matches!(*self, Self::Offset(end) if position >= end) {
            *self = Self::Reached;
        }
    }
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
    producer: Arc<BaseProducer<RoutedContext>>,
    in_flight: Arc<InFlight>,
    /// Which handled offsets may be committed, and when.
    commits: commit::Commits,
    metrics: Arc<Metrics>,
    slots: u32,
    partitions: HashMap<i32, Partition>,
    /// Requests held for offline cars, per partition (hold.rs).
    held: HashMap<i32, crate::held::Held>,
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
/// What the admin endpoint asks the loop: the requests held for a client.
pub type HeldLookups = std::sync::mpsc::Receiver<(String, ops::admin::Respond)>;

pub fn run(
    config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    held_lookups: HeldLookups,
) -> Result<(), Error> {
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
    let in_flight = Arc::new(InFlight::default());
    let producer: BaseProducer<RoutedContext> = producer_config
        .create_with_context(RoutedContext {
            metrics: metrics.clone(),
            in_flight: in_flight.clone(),
        })
        .map_err(|source| Error::Client {
            client: "the producer",
            source,
        })?;
    let producer = Arc::new(producer);

    let mut consumer_config = client_config(&config, ops::kafka::for_consumer);
    consumer_config
        .set("group.id", &config.group)
        .set("partition.assignment.strategy", "range")
        // Committed by the loop once Kafka has what was produced (commit.rs).
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the end: downlink is realtime data.
        .set("auto.offset.reset", "latest")
        .set("session.timeout.ms", config.session_timeout_ms.to_string());
    // Kafka answers a waiting fetch as soon as a record arrives, so the
    // wait costs no latency there (librdkafka's default, 500 ms).
    // `-X fetch.wait.max.ms=` overrides it: brokers that answer an empty
    // fetch only after the whole wait, as tansu and the mock cluster do,
    // make each downlink hop cost up to this much (docs/operations.md).
    if !config.kafka_properties.contains_key("fetch.wait.max.ms") {
        consumer_config.set("fetch.wait.max.ms", "500");
    }
    let consumer: BaseConsumer<RouterContext> = consumer_config
        .create_with_context(RouterContext {
            downlink: config.downlink_topic.clone(),
            sessions: config.sessions_topic.clone(),
            held: config.held_topic.clone(),
            changes: Mutex::new(Vec::new()),
            metrics: metrics.clone(),
            producer: producer.clone(),
        })
        .map_err(|source| Error::Client {
            client: "the consumer",
            source,
        })?;

    let downlink = partition_count(&consumer, &config.downlink_topic)?;
    for topic in [&config.sessions_topic, &config.held_topic] {
        let count = partition_count(&consumer, topic)?;
        if downlink != count {
            return Err(Error::NotCoPartitioned {
                downlink_topic: config.downlink_topic.clone(),
                downlink,
                sessions_topic: topic.clone(),
                sessions: count,
            });
        }
    }
    let routed = partition_count(&consumer, &config.routed_topic)?;
    let slots = u32::try_from(routed).map_err(|_| Error::TooManySlots(routed))?;

    consumer
        .subscribe(&[
            &config.downlink_topic,
            &config.sessions_topic,
            &config.held_topic,
        ])
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
        in_flight,
        commits: commit::Commits::new(Instant::now()),
        metrics,
        slots,
        partitions: HashMap::new(),
        held: HashMap::new(),
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
        // After the changes: a snapshot never outlives its assignment.
        router.commit(&consumer);
        if let Some(result) = consumer.poll(Duration::from_millis(50)) {
            match result {
                Ok(message) => router.handle(&consumer, &message),
                Err(error) => tracing::warn!(%error, "consumer error"),
            }
        }
        ops::kafka::serve_events(&router.producer, 1024);
        while let Ok((client, respond)) = held_lookups.try_recv() {
            router.answer_held(&client, respond);
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            router.check_rebuilds(&consumer);
            router.expire_held();
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
