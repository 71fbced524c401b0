//! Gateway mode's Kafka side: the live read of the uplink topic, its
//! recount after the run, and `--raw-kafka`'s producer, the baseline that
//! writes the fleet's records without MQTT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};

use super::pace::RoundRobin;
use super::uplink::Uplink;
use super::{Options, Times};
use crate::payload::{self, Arrivals};
use crate::report::TopicCount;
use crate::worker::WorkerTick;

pub(super) fn config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// A consumer of every partition of `topic` from its current end.
pub(super) fn consumer_from_end(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<(BaseConsumer, TopicPartitionList)> {
    let consumer: BaseConsumer = config(bootstrap)
        .set("group.id", "carbridge-loadgen")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .with_context(|| format!("creating a consumer of {topic}"))?;
    let partitions = ops::kafka::partition_count(&consumer, topic, Duration::from_secs(10))
        .with_context(|| format!("at {bootstrap}"))?;
    if partitions == 0 {
        bail!("topic {topic} does not exist at {bootstrap} (carbridge-topics create)");
    }
    let assignment = ops::kafka::at_end(&consumer, topic, partitions, Duration::from_secs(10))?;
    consumer.assign(&assignment)?;
    Ok((consumer, assignment))
}

/// Where the live read of the uplink topic started.
pub(super) struct ReadFrom {
    bootstrap: String,
    assignment: TopicPartitionList,
}

/// Reads `topic` from its current end into `uplink` on a thread of its
/// own, until `stop`.
pub(super) fn receive(
    bootstrap: &str,
    topic: &str,
    uplink: &Arc<Mutex<Uplink>>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(JoinHandle<()>, ReadFrom)> {
    let (consumer, assignment) = consumer_from_end(bootstrap, topic)?;
    let (uplink, stop) = (uplink.clone(), stop.clone());
    let thread = std::thread::spawn(move || receive_from_kafka(consumer, uplink, stop));
    let read_from = ReadFrom {
        bootstrap: bootstrap.to_owned(),
        assignment,
    };
    Ok((thread, read_from))
}

fn receive_from_kafka(consumer: BaseConsumer, uplink: Arc<Mutex<Uplink>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            let payload = message.payload().unwrap_or_default();
            let created_us = message
                .timestamp()
                .to_millis()
                .and_then(|ms| u64::try_from(ms).ok())
                .map(|ms| ms * 1000);
            if let Ok(mut uplink) = uplink.lock() {
                uplink.arrive(payload, created_us);
            }
        }
    }
}

impl ReadFrom {
    /// Reads the topic again from where the run started until nothing new
    /// comes for 2 s (bounded at 120 s), counting this run's (sent from
    /// `run_from_us`) distinct and repeated records: tells loss on the way
    /// into Kafka from loss in the live read.
    pub(super) fn recount(&self, run_from_us: u64) -> anyhow::Result<TopicCount> {
        let consumer: BaseConsumer = config(&self.bootstrap)
            .set("group.id", "carbridge-loadgen-recount")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "52428800")
            .create()
            .context("creating the recount consumer")?;
        consumer.assign(&self.assignment)?;
        let mut arrivals = Arrivals::default();
        let mut records = 0u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100))
                && let Some((car, seq, sent)) =
                    payload::decode(message.payload().unwrap_or_default())
                && sent >= run_from_us
            {
                records += 1;
                arrivals.record(car, seq);
                last = Instant::now();
            }
        }
        Ok(TopicCount {
            records,
            unique: arrivals.unique,
            duplicates: arrivals.duplicates,
        })
    }
}

/// What `--raw-kafka` produces: the records the gateway would write for
/// the same fleet, straight from one rdkafka producer.
#[derive(Debug)]
pub(super) struct RawPlan {
    bootstrap: String,
    topic: String,
    mqtt_topic: String,
    cars: u64,
    rate: f64,
    payload_size: usize,
    start_us: u64,
    end_us: u64,
}

impl RawPlan {
    pub(super) fn new(options: &Options, bootstrap: &str, times: &Times) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            topic: options.kafka_topic.clone(),
            mqtt_topic: options.topic.clone(),
            cars: options.cars,
            rate: options.uplink_rate(),
            payload_size: options.payload_size,
            start_us: times.start_us,
            end_us: times.end_us,
        }
    }
}

/// The baseline for the gateway's uplink: the same records, keys, header
/// and producer settings (`linger.ms` 5, `murmur2_random`) as the gateway
/// writes, produced at the fleet's rate by one producer. Reports like a
/// worker (`index` 0) so the parent measures both the same way.
pub(super) fn produce_raw(
    plan: &RawPlan,
    ticks: &crossbeam_channel::Sender<(usize, WorkerTick)>,
    stop: &AtomicBool,
) {
    let producer: BaseProducer = match config(&plan.bootstrap)
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
    {
        Ok(producer) => producer,
        Err(error) => {
            eprintln!("raw producer: {error}");
            let _ = ticks.send((
                0,
                WorkerTick {
                    done: true,
                    ..WorkerTick::default()
                },
            ));
            return;
        }
    };
    std::thread::sleep(Duration::from_micros(
        plan.start_us.saturating_sub(payload::now_us()),
    ));
    let mut pace = RoundRobin::new(plan.cars, plan.rate);
    let mut sent_tick = 0u64;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let mut first = true;
    let report = |sent: u64, done: bool, first: &mut bool| {
        let tick = WorkerTick {
            connected_now: if done { 0 } else { plan.cars },
            connects: if std::mem::take(first) { plan.cars } else { 0 },
            uplink_sent: sent,
            done,
            ..WorkerTick::default()
        };
        let _ = ticks.send((0, tick));
    };
    while !stop.load(Ordering::Relaxed) && payload::now_us() < plan.end_us {
        if Instant::now() >= next_tick {
            report(std::mem::take(&mut sent_tick), false, &mut first);
            next_tick += Duration::from_secs(1);
        }
        if let Some(wait) = pace.wait() {
            producer.poll(wait.min(Duration::from_millis(1)));
            continue;
        }
        let (car, seq) = pace.next();
        let client = payload::client_id(car);
        let body = payload::encode(car, seq, payload::now_us(), plan.payload_size);
        let headers = OwnedHeaders::new().insert(Header {
            key: contract::HEADER_TOPIC,
            value: Some(plan.mqtt_topic.as_str()),
        });
        let record = BaseRecord::to(&plan.topic)
            .key(&client)
            .payload(&body)
            .headers(headers);
        if producer.send(record).is_err() {
            producer.poll(Duration::from_millis(1));
            continue;
        }
        pace.mark_sent();
        sent_tick += 1;
        ops::kafka::serve_events(&producer, usize::MAX);
    }
    let _ = producer.flush(Duration::from_secs(30));
    report(sent_tick, false, &mut first);
    report(0, true, &mut first);
}
