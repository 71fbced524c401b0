//! The parent process: splits the fleet over worker processes, receives
//! what arrives (from Kafka, or from MQTT subscribers in peer mode), sends
//! downlink messages, shows progress every second and builds the report.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use codec::{Connect, Decoder, Packet, QoS, Role, Subscribe};
use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::payload::{self, Arrivals};
use crate::report::{
    ConnectStats, FlowStats, Machine, REPORT_VERSION, Report, Stages, Tick, TopicCount,
};
use crate::stats::{histogram, latency};
use crate::worker::{Plan, WorkerTick};

/// What the user asked for (see `loadgen --help`).
#[derive(Debug, Clone)]
pub struct Options {
    pub cars: u64,
    pub targets: Vec<SocketAddr>,
    pub connect_rate: f64,
    pub publish_interval_ms: u64,
    pub payload_size: usize,
    pub topic: String,
    pub subscribe: Option<String>,
    pub warmup_secs: u64,
    pub duration_secs: u64,
    /// Gateway mode: where the uplink arrives and downlink is sent.
    pub kafka_bootstrap: Option<String>,
    pub kafka_topic: String,
    pub downlink_topic: String,
    pub downlink_rate: f64,
    /// Peer mode: measure through MQTT subscribers on the target.
    pub peer: bool,
    /// Baseline: produce the fleet's records straight to Kafka, no MQTT.
    pub raw_kafka: bool,
    /// After the run, read the uplink topic again from the start.
    pub recount: bool,
    pub peer_subscribers: u64,
    pub sources: Vec<IpAddr>,
    pub cars_per_source: u64,
    pub cars_per_worker: u64,
    /// The command line, for the report.
    pub described: Vec<(String, String)>,
    pub quiet: bool,
    /// TLS for the cars; `None`: plain TCP.
    pub tls: Option<crate::worker::TlsPlan>,
    /// Cars closed by the server reconnect (to the next target).
    pub reconnect: bool,
}

/// What arrived on the uplink side.
struct Uplink {
    arrivals: Arrivals,
    /// Arrivals of messages sent in the measured window.
    window: Histogram<u64>,
    /// The same, split at the record's Kafka timestamp (gateway mode).
    bridge: Histogram<u64>,
    kafka: Histogram<u64>,
    /// Arrivals since the last tick.
    tick: Histogram<u64>,
    tick_received: u64,
    /// Records sent before this (an earlier run into the same topic) are
    /// not this run's: the consumer may start before the topic's true end
    /// (tansu reports a high watermark inside the last batch).
    run_from_us: u64,
    measure_from_us: u64,
    measure_until_us: u64,
}

impl Uplink {
    /// A message arrived; `created_us`: its Kafka record's timestamp.
    fn arrive(&mut self, payload: &[u8], created_us: Option<u64>) {
        let now = payload::now_us();
        let Some((car, seq, sent)) = payload::decode(payload) else {
            return;
        };
        if sent < self.run_from_us || !self.arrivals.record(car, seq) {
            return;
        }
        let took = now.saturating_sub(sent).max(1);
        self.tick_received += 1;
        let _ = self.tick.record(took);
        if (self.measure_from_us..self.measure_until_us).contains(&sent) {
            let _ = self.window.record(took);
            if let Some(created) = created_us {
                let _ = self.bridge.record(created.saturating_sub(sent).max(1));
                let _ = self.kafka.record(now.saturating_sub(created).max(1));
            }
        }
    }
}

fn kafka_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// A consumer of every partition of `topic` from its current end.
fn uplink_consumer(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<(BaseConsumer, TopicPartitionList)> {
    let consumer: BaseConsumer = kafka_config(bootstrap)
        .set("group.id", "carbridge-loadgen")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .context("creating the uplink consumer")?;
    let partitions = ops::kafka::partition_count(&consumer, topic, Duration::from_secs(10))
        .with_context(|| format!("at {bootstrap}"))?;
    if partitions == 0 {
        bail!("topic {topic} does not exist at {bootstrap} (carbridge-topics create)");
    }
    let mut assignment = TopicPartitionList::new();
    for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the end of {topic}/{partition}"))?;
        assignment.add_partition_offset(topic, partition, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    Ok((consumer, assignment))
}

/// Reads `topic` again from where the run started (`start`) until nothing
/// new comes for 2 s (bounded at 120 s), counting this run's distinct and
/// repeated records: tells loss on the way into Kafka from loss in the
/// live read.
fn recount(
    bootstrap: &str,
    start: &TopicPartitionList,
    run_from_us: u64,
) -> anyhow::Result<TopicCount> {
    let consumer: BaseConsumer = kafka_config(bootstrap)
        .set("group.id", "carbridge-loadgen-recount")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .context("creating the recount consumer")?;
    consumer.assign(start)?;
    let mut arrivals = Arrivals::default();
    let mut records = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(2) && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100))
            && let Some((car, seq, sent)) = payload::decode(message.payload().unwrap_or_default())
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

/// Peer mode: one MQTT subscriber on `filter` feeding the uplink side.
fn receive_from_mqtt(
    target: SocketAddr,
    id: String,
    filter: String,
    uplink: Arc<Mutex<Uplink>>,
    stop: Arc<AtomicBool>,
    subscribed: crossbeam_channel::Sender<anyhow::Result<()>>,
) {
    let setup = || -> anyhow::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut out = BytesMut::new();
        Connect::new(id.as_str(), 600).encode(&mut out)?;
        Subscribe::new(
            std::num::NonZeroU16::MIN,
            [(filter.as_str(), QoS::AtMostOnce)],
        )?
        .encode(&mut out)?;
        stream.write_all(&out)?;
        Ok(stream)
    };
    let mut stream = match setup() {
        Ok(stream) => stream,
        Err(error) => {
            let _ = subscribed.send(Err(error));
            return;
        }
    };
    let decoder = Decoder::new(Role::Client, 1 << 20);
    let mut input = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut acked = false;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(Packet::SubAck(_))) if !acked => {
                    acked = true;
                    let _ = subscribed.send(Ok(()));
                }
                Ok(Some(Packet::Publish(publish))) => {
                    if let Ok(mut uplink) = uplink.lock() {
                        uplink.arrive(publish.payload(), None);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(error) => {
                    eprintln!("peer subscriber {id}: {error}");
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => input.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Messages to the fleet at a fixed rate, round-robin over the cars, each
/// car's numbered from 1: the pacing shared by the downlink senders and
/// the raw producer.
struct RoundRobin {
    started: Instant,
    rate: f64,
    cars: u64,
    /// Messages sent so far: message `n` is due at `started + n / rate`.
    count: u64,
    /// The last sequence number sent to each car.
    seqs: Vec<u64>,
}

impl RoundRobin {
    /// Starts pacing now.
    fn new(cars: u64, rate: f64) -> Self {
        Self {
            started: Instant::now(),
            rate: rate.max(0.001),
            cars: cars.max(1),
            count: 0,
            seqs: vec![0; usize::try_from(cars.max(1)).unwrap_or(0)],
        }
    }

    /// How long until the next message is due; `None` when it is.
    fn wait(&self) -> Option<Duration> {
        (self.started + Duration::from_secs_f64(self.count as f64 / self.rate))
            .checked_duration_since(Instant::now())
    }

    /// (car, seq) of the next message; it counts once [`Self::mark_sent`].
    fn next(&self) -> (u64, u64) {
        let car = self.count % self.cars;
        let last = usize::try_from(car)
            .ok()
            .and_then(|i| self.seqs.get(i))
            .copied()
            .unwrap_or(0);
        (car, last + 1)
    }

    /// The message [`Self::next`] named went out.
    fn mark_sent(&mut self) {
        let (car, seq) = self.next();
        if let Some(last) = usize::try_from(car).ok().and_then(|i| self.seqs.get_mut(i)) {
            *last = seq;
        }
        self.count += 1;
    }
}

/// Sends downlink messages at `rate` per second from `from_us` to
/// `until_us`, round-robin over the cars, counting them in `sent`.
#[allow(clippy::too_many_arguments)]
fn send_downlink(
    bootstrap: &str,
    topic: &str,
    cars: u64,
    rate: f64,
    from_us: u64,
    until_us: u64,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let producer: BaseProducer = kafka_config(bootstrap)
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random")
        .create()
        .context("creating the downlink producer")?;
    std::thread::sleep(Duration::from_micros(
        from_us.saturating_sub(payload::now_us()),
    ));
    let mut pace = RoundRobin::new(cars, rate);
    while !stop.load(Ordering::Relaxed) && payload::now_us() < until_us {
        if let Some(wait) = pace.wait() {
            producer.poll(wait.min(Duration::from_millis(5)));
            continue;
        }
        let (car, seq) = pace.next();
        let client = payload::client_id(car);
        let body = payload::encode(car, seq, payload::now_us(), payload::MIN_PAYLOAD);
        let headers = OwnedHeaders::new().insert(Header {
            key: contract::HEADER_TOPIC,
            value: Some(payload::DOWNLINK_TOPIC),
        });
        let record = BaseRecord::to(topic)
            .key(&client)
            .payload(&body)
            .headers(headers);
        if producer.send(record).is_err() {
            producer.poll(Duration::from_millis(10));
            continue;
        }
        pace.mark_sent();
        sent.fetch_add(1, Ordering::Relaxed);
        producer.poll(Duration::ZERO);
    }
    let _ = producer.flush(Duration::from_secs(10));
    Ok(())
}

/// Peer mode's downlink: one MQTT connection publishes to
/// `DL/LOAD/{client id}` (each car subscribed to its own) at `rate` per
/// second from `from_us` to `until_us`, round-robin over the cars.
fn send_downlink_mqtt(
    target: SocketAddr,
    cars: u64,
    rate: f64,
    from_us: u64,
    until_us: u64,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .with_context(|| format!("connecting the downlink publisher to {target}"))?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    Connect::new("loadgen-downlink", 600).encode(&mut out)?;
    stream.write_all(&out)?;
    // The server's CONNACK and PINGRESPs are not read: QoS 0 only, and a
    // keep-alive of 10 minutes outlasts any run this publishes in.
    std::thread::sleep(Duration::from_micros(
        from_us.saturating_sub(payload::now_us()),
    ));
    let mut pace = RoundRobin::new(cars, rate);
    while !stop.load(Ordering::Relaxed) && payload::now_us() < until_us {
        out.clear();
        // Everything due now goes out in one write.
        while pace.wait().is_none() {
            let (car, seq) = pace.next();
            let topic = format!("{}/{}", payload::DOWNLINK_TOPIC, payload::client_id(car));
            let body = payload::encode(car, seq, payload::now_us(), payload::MIN_PAYLOAD);
            codec::packet::encode_publish(
                &mut out,
                topic.as_bytes(),
                &body,
                QoS::AtMostOnce,
                None,
                false,
                false,
            )?;
            pace.mark_sent();
        }
        if out.is_empty() {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        stream.write_all(&out)?;
        sent.store(pace.count, Ordering::Relaxed);
    }
    let _ = stream.write_all(&codec::packet::DISCONNECT);
    Ok(())
}

/// Cars per worker process unless asked: the fleet over three workers
/// (connecting spreads over the cores, and more processes only add
/// switching: 45,000 cars connected at 21,487 cars/s over three workers,
/// 18,587 over nine), at most 15,000 each (below the 20,000 open files a
/// process may have here).
pub fn default_cars_per_worker(cars: u64) -> u64 {
    cars.div_ceil(3).clamp(1, 15_000)
}

/// Source addresses for loopback targets: 127.r.x.y, one per
/// `per_source` cars, so local ports never run out. `r` changes from run
/// to run: the previous run's connections linger in TIME_WAIT on the
/// server side, and a new SYN on the same address pair can stall there.
fn loopback_sources(cars: u64, per_source: u64) -> Vec<IpAddr> {
    let run = 1 + (payload::now_us() / 1_000_000 % 250) as u8;
    let needed = cars.div_ceil(per_source.max(1)).max(1);
    (0..needed)
        .map(|k| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                run,
                ((k / 250) % 256) as u8,
                (k % 250 + 1) as u8,
            ))
        })
        .collect()
}

fn machine() -> Machine {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    Machine {
        hostname: read("/proc/sys/kernel/hostname"),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        kernel: read("/proc/sys/kernel/osrelease"),
    }
}

fn rfc3339(us: u64) -> String {
    // Days since the epoch to a civil date (proleptic Gregorian).
    let secs = us / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

struct Worker {
    /// `None` for the raw producer thread of `--raw-kafka`.
    child: Option<Child>,
    last: WorkerTick,
    done: bool,
}

/// What `--raw-kafka` produces: the records the gateway would write for
/// the same fleet, straight from one rdkafka producer.
struct RawPlan {
    bootstrap: String,
    topic: String,
    mqtt_topic: String,
    cars: u64,
    rate: f64,
    payload_size: usize,
    start_us: u64,
    end_us: u64,
}

/// The baseline for the gateway's uplink: the same records, keys, header
/// and producer settings (`linger.ms` 5, `murmur2_random`) as the gateway
/// writes, produced at the fleet's rate by one producer. Reports like a
/// worker (`index` 0) so the parent measures both the same way.
fn produce_raw(
    plan: &RawPlan,
    ticks: &crossbeam_channel::Sender<(usize, WorkerTick)>,
    stop: &AtomicBool,
) {
    let producer: BaseProducer = match kafka_config(&plan.bootstrap)
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
        producer.poll(Duration::ZERO);
    }
    let _ = producer.flush(Duration::from_secs(30));
    report(sent_tick, false, &mut first);
    report(0, true, &mut first);
}

/// Runs the whole load test and returns its report.
pub fn run(options: &Options, stop: Arc<AtomicBool>) -> anyhow::Result<Report> {
    if options.targets.is_empty() {
        bail!("no --target");
    }
    if !options.peer && options.kafka_bootstrap.is_none() {
        bail!("--kafka-bootstrap is needed to measure through Kafka (or use --peer)");
    }
    let started_us = payload::now_us();
    // Workers need a moment to start before the first car is due.
    let start_us = started_us + 500_000;
    let measure_from_us = start_us + options.warmup_secs * 1_000_000;
    let end_us = measure_from_us + options.duration_secs * 1_000_000;
    let uplink = Arc::new(Mutex::new(Uplink {
        arrivals: Arrivals::default(),
        window: histogram(),
        bridge: histogram(),
        kafka: histogram(),
        tick: histogram(),
        tick_received: 0,
        run_from_us: started_us,
        measure_from_us,
        measure_until_us: end_us,
    }));
    let receiving = Arc::new(AtomicBool::new(false));
    let mut recount_from = None;
    let mut receivers = Vec::new();
    let shards = if options.peer {
        options.peer_subscribers.max(1)
    } else {
        1
    };
    if options.peer {
        let (tx, rx) = crossbeam_channel::unbounded();
        let target = *options.targets.first().context("no target")?;
        for shard in 0..shards {
            let filter = options.topic.replace("{shard}", &shard.to_string());
            let (uplink, stop, tx) = (uplink.clone(), receiving.clone(), tx.clone());
            receivers.push(std::thread::spawn(move || {
                receive_from_mqtt(
                    target,
                    format!("loadgen-sub-{shard}"),
                    filter,
                    uplink,
                    stop,
                    tx,
                );
            }));
        }
        for _ in 0..shards {
            rx.recv_timeout(Duration::from_secs(10))
                .context("a peer subscriber got no SUBACK within 10 s")??;
        }
    } else if let Some(bootstrap) = &options.kafka_bootstrap {
        let (consumer, start) = uplink_consumer(bootstrap, &options.kafka_topic)?;
        recount_from = Some((bootstrap.clone(), start));
        let (uplink, stop) = (uplink.clone(), receiving.clone());
        receivers.push(std::thread::spawn(move || {
            receive_from_kafka(consumer, uplink, stop)
        }));
    }

    // Loopback targets: every car connects from its own source address
    // and port (see `worker::source_of`). Left to itself, the kernel
    // searches the port range for a free port at each connect (or bind),
    // which at tens of thousands of connections to one address takes
    // most of the CPU.
    let sources = if options.sources.is_empty()
        && options.targets.iter().all(|t| t.ip().is_loopback())
        && options.targets.iter().all(SocketAddr::is_ipv4)
    {
        loopback_sources(options.cars, options.cars_per_source)
    } else {
        options.sources.clone()
    };
    let workers_needed = options.cars.div_ceil(options.cars_per_worker.max(1)).max(1);
    let (ticks_tx, ticks) = crossbeam_channel::unbounded::<(usize, WorkerTick)>();
    let mut workers = Vec::new();
    let exe = std::env::current_exe().context("finding the loadgen binary")?;
    if let (true, Some(bootstrap)) = (options.raw_kafka, &options.kafka_bootstrap) {
        let raw = RawPlan {
            bootstrap: bootstrap.clone(),
            topic: options.kafka_topic.clone(),
            mqtt_topic: options.topic.clone(),
            cars: options.cars,
            rate: options.cars as f64 * 1000.0 / options.publish_interval_ms.max(1) as f64,
            payload_size: options.payload_size,
            start_us,
            end_us,
        };
        let (tx, stop) = (ticks_tx.clone(), stop.clone());
        std::thread::spawn(move || produce_raw(&raw, &tx, &stop));
        workers.push(Worker {
            child: None,
            last: WorkerTick::default(),
            done: false,
        });
    }
    for w in 0..if options.raw_kafka { 0 } else { workers_needed } {
        let first_car = w * options.cars / workers_needed;
        let next = (w + 1) * options.cars / workers_needed;
        let plan = Plan {
            first_car,
            cars: next - first_car,
            targets: options.targets.clone(),
            sources: sources.clone(),
            cars_per_source: options.cars_per_source,
            connect_rate: options.connect_rate / workers_needed as f64,
            tls: options.tls.clone(),
            reconnect: options.reconnect,
            publish_interval_ms: options.publish_interval_ms,
            payload_size: options.payload_size,
            topic: options.topic.clone(),
            shards,
            subscribe: options.subscribe.clone(),
            start_us,
            end_us,
        };
        let mut child = Command::new(&exe)
            .args(["worker", "--plan", &serde_json::to_string(&plan)?])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = ticks_tx.clone();
        let index = usize::try_from(w).unwrap_or(usize::MAX);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(tick) = serde_json::from_str::<WorkerTick>(&line) {
                    let _ = tx.send((index, tick));
                }
            }
        });
        workers.push(Worker {
            child: Some(child),
            last: WorkerTick::default(),
            done: false,
        });
    }
    drop(ticks_tx);

    let downlink_sent = Arc::new(AtomicU64::new(0));
    let downlink_thread = match (
        &options.kafka_bootstrap,
        // Raw mode has no cars to receive downlink messages.
        options.downlink_rate > 0.0 && !options.peer && !options.raw_kafka,
    ) {
        (Some(bootstrap), true) => {
            let (bootstrap, topic) = (bootstrap.clone(), options.downlink_topic.clone());
            let (cars, rate, sent, stop) = (
                options.cars,
                options.downlink_rate,
                downlink_sent.clone(),
                stop.clone(),
            );
            Some(std::thread::spawn(move || {
                send_downlink(
                    &bootstrap,
                    &topic,
                    cars,
                    rate,
                    measure_from_us,
                    end_us,
                    sent,
                    stop,
                )
            }))
        }
        _ if options.peer && options.downlink_rate > 0.0 => {
            let target = *options.targets.first().context("no target")?;
            let (cars, rate, sent, stop) = (
                options.cars,
                options.downlink_rate,
                downlink_sent.clone(),
                stop.clone(),
            );
            Some(std::thread::spawn(move || {
                send_downlink_mqtt(target, cars, rate, measure_from_us, end_us, &sent, &stop)
            }))
        }
        _ => None,
    };

    // Every second: merge the workers' ticks, print progress.
    let mut connect_hist = histogram();
    let mut downlink_window = histogram();
    let mut timeline = Vec::new();
    let (mut connects, mut connect_failures, mut uplink_sent, mut uplink_sent_window) =
        (0u64, 0u64, 0u64, 0u64);
    let mut other_downlink = 0u64;
    let (mut dl_received, mut dl_duplicates, mut dl_out_of_order, mut dropped) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut first_connect_us, mut last_connect_us) = (None, 0u64);
    let mut dl_sent_before = 0u64;
    let mut signalled = false;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    loop {
        if stop.load(Ordering::Relaxed) && !signalled {
            signalled = true;
            for child in workers.iter().filter_map(|w| w.child.as_ref()) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        let mut tick_sent = 0u64;
        let mut tick_dl = 0u64;
        let mut tick_dl_hist = histogram();
        while let Ok((index, tick)) = ticks.recv_deadline(next_tick) {
            let now = payload::now_us();
            // A tick reports the second before it: the window's ticks arrive
            // from just after its start to just after its end.
            let in_window = (measure_from_us + 500_000..end_us + 500_000).contains(&now);
            connects += tick.connects;
            connect_failures += tick.connect_failures;
            if tick.first_connack_us > 0 {
                let first = first_connect_us.get_or_insert(tick.first_connack_us);
                *first = (*first).min(tick.first_connack_us);
                last_connect_us = last_connect_us.max(tick.last_connack_us);
            }
            tick.connect_latency.add_to(&mut connect_hist);
            uplink_sent += tick.uplink_sent;
            tick_sent += tick.uplink_sent;
            if in_window {
                uplink_sent_window += tick.uplink_sent;
                tick.downlink_latency.add_to(&mut downlink_window);
            }
            tick.downlink_latency.add_to(&mut tick_dl_hist);
            dl_received += tick.downlink_received;
            tick_dl += tick.downlink_received;
            dl_duplicates += tick.downlink_duplicates;
            dl_out_of_order += tick.downlink_out_of_order;
            dropped += tick.dropped_connections;
            other_downlink += tick.other_downlink;
            if let Some(worker) = workers.get_mut(index) {
                worker.done |= tick.done;
                worker.last = tick;
            }
        }
        next_tick += Duration::from_secs(1);
        for worker in &mut workers {
            if !worker.done
                && let Some(child) = worker.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                worker.done = true;
            }
        }
        let now = payload::now_us();
        let connected: u64 = workers.iter().map(|w| w.last.connected_now).sum();
        let (received, up_p50, up_p99) = uplink
            .lock()
            .map(|mut u| {
                let tick = (
                    u.tick_received,
                    ms(u.tick.value_at_quantile(0.5)),
                    ms(u.tick.value_at_quantile(0.99)),
                );
                u.tick_received = 0;
                u.tick.reset();
                tick
            })
            .unwrap_or_default();
        let dl_sent_now = downlink_sent.load(Ordering::Relaxed);
        let t = now.saturating_sub(started_us) as f64 / 1e6;
        timeline.push(Tick {
            t,
            warmup: now < measure_from_us,
            connected,
            uplink_sent: tick_sent,
            uplink_received: received,
            uplink_p50_ms: up_p50,
            uplink_p99_ms: up_p99,
            downlink_sent: dl_sent_now - dl_sent_before,
            downlink_received: tick_dl,
            downlink_p99_ms: ms(tick_dl_hist.value_at_quantile(0.99)),
        });
        dl_sent_before = dl_sent_now;
        if !options.quiet {
            let phase = if now < measure_from_us {
                "warm-up"
            } else if now < end_us {
                "measuring"
            } else {
                "draining"
            };
            eprintln!(
                "[{t:6.1}s {phase:9}] cars {connected}/{} (failed {connect_failures})  uplink {tick_sent}/s sent {received}/s received p99 {up_p99:.1} ms  downlink {tick_dl}/s p99 {:.1} ms",
                options.cars,
                ms(tick_dl_hist.value_at_quantile(0.99)),
            );
        }
        if workers.iter().all(|w| w.done) {
            break;
        }
    }
    for worker in &mut workers {
        if let Some(child) = worker.child.as_mut() {
            let _ = child.wait();
        }
    }
    if let Some(thread) = downlink_thread {
        match thread.join() {
            Ok(Err(error)) => eprintln!("downlink sender: {error:#}"),
            Err(_) => eprintln!("downlink sender panicked"),
            Ok(Ok(())) => {}
        }
    }
    // Let what is still on its way arrive: until everything did, or
    // nothing more came for 3 s (bounded at 15 s).
    let drain_until = Instant::now() + Duration::from_secs(15);
    let mut last = (0u64, Instant::now());
    loop {
        let unique = uplink.lock().map(|u| u.arrivals.unique).unwrap_or(0);
        if unique >= uplink_sent || Instant::now() > drain_until {
            break;
        }
        if unique != last.0 {
            last = (unique, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    receiving.store(true, Ordering::Relaxed);
    for receiver in receivers {
        let _ = receiver.join();
    }
    let in_topic = match (options.recount, recount_from) {
        (true, Some((bootstrap, start))) => match recount(&bootstrap, &start, started_us) {
            Ok(count) => Some(count),
            Err(error) => {
                eprintln!("recount: {error:#}");
                None
            }
        },
        _ => None,
    };

    let uplink = uplink
        .lock()
        .map_err(|_| anyhow::anyhow!("uplink state poisoned"))?;
    let measured_secs = options.duration_secs as f64;
    let connect_span = first_connect_us
        .map_or(0.0, |first| {
            (last_connect_us.saturating_sub(first)) as f64 / 1e6
        })
        .max(1e-3);
    let dl_sent = downlink_sent.load(Ordering::Relaxed);
    if dropped > 0 && !options.quiet {
        eprintln!("{dropped} car connections were closed by the server or failed while publishing");
    }
    Ok(Report {
        version: REPORT_VERSION,
        started_at: rfc3339(started_us),
        machine: machine(),
        mode: if options.peer {
            "peer"
        } else if options.raw_kafka {
            "raw-kafka"
        } else {
            "gateway"
        }
        .to_owned(),
        options: options.described.clone(),
        warmup_secs: options.warmup_secs as f64,
        measured_secs,
        connect: ConnectStats {
            cars: options.cars,
            connected: connects,
            failed: connect_failures,
            asked_rate: options.connect_rate,
            achieved_rate: connects as f64 / connect_span,
            latency: latency(&connect_hist),
        },
        uplink: FlowStats {
            asked_rate: options.cars as f64 * 1000.0 / options.publish_interval_ms.max(1) as f64,
            achieved_rate: uplink_sent_window as f64 / measured_secs.max(1.0),
            sent: uplink_sent,
            received: uplink.arrivals.unique,
            lost: uplink_sent.saturating_sub(uplink.arrivals.unique),
            duplicates: uplink.arrivals.duplicates,
            out_of_order: uplink.arrivals.out_of_order,
            latency: latency(&uplink.window),
            stages: (!uplink.bridge.is_empty()).then(|| Stages {
                bridge: latency(&uplink.bridge),
                kafka: latency(&uplink.kafka),
            }),
        },
        downlink: (dl_sent > 0 || (options.downlink_rate > 0.0 && !options.raw_kafka)).then(|| {
            FlowStats {
                asked_rate: options.downlink_rate,
                achieved_rate: dl_sent as f64 / measured_secs.max(1.0),
                sent: dl_sent,
                received: dl_received,
                lost: dl_sent.saturating_sub(dl_received),
                duplicates: dl_duplicates,
                out_of_order: dl_out_of_order,
                latency: latency(&downlink_window),
                stages: None,
            }
        }),
        other_downlink,
        dropped_connections: dropped,
        uplink_in_topic: in_topic,
        timeline,
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The human summary printed at the end.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.connect;
    let line = |name: &str, f: &FlowStats| {
        let stages = f.stages.as_ref().map_or(String::new(), |s| {
            format!(
                "          of which to the gateway's producer (the bridge) p50 {:.2} p99 {:.2}; \
                 in Kafka (batching, broker, fetch) p50 {:.2} p99 {:.2} (ms resolution)\n",
                s.bridge.p50_ms, s.bridge.p99_ms, s.kafka.p50_ms, s.kafka.p99_ms
            )
        });
        format!(
            "{name:9} asked {:.0}/s, sent {:.0}/s; sent {} received {} lost {} duplicated {} out of order {}\n          latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n{stages}",
            f.asked_rate,
            f.achieved_rate,
            f.sent,
            f.received,
            f.lost,
            f.duplicates,
            f.out_of_order,
            f.latency.p50_ms,
            f.latency.p90_ms,
            f.latency.p99_ms,
            f.latency.p999_ms,
            f.latency.max_ms
        )
    };
    out.push_str(&format!(
        "loadgen {} mode, {} cars, {:.0} s measured after {:.0} s warm-up ({}, {} CPUs)\n",
        report.mode,
        c.cars,
        report.measured_secs,
        report.warmup_secs,
        report.machine.hostname,
        report.machine.cpus
    ));
    out.push_str(&format!(
        "connect   {} of {} connected, {} failed; {:.0} cars/s (asked {:.0}); latency ms p50 {:.2} p99 {:.2} max {:.2}\n",
        c.connected, c.cars, c.failed, c.achieved_rate, c.asked_rate, c.latency.p50_ms, c.latency.p99_ms, c.latency.max_ms
    ));
    out.push_str(&line("uplink", &report.uplink));
    if let Some(downlink) = &report.downlink {
        out.push_str(&line("downlink", downlink));
    }
    if let Some(count) = &report.uplink_in_topic {
        out.push_str(&format!(
            "recount   {} uplink records in the topic, {} distinct, {} repeated\n",
            count.records, count.unique, count.duplicates
        ));
    }
    if report.other_downlink > 0 {
        out.push_str(&format!(
            "other     {} messages to cars from other services (such as DL/WARN)\n",
            report.other_downlink
        ));
    }
    if report.dropped_connections > 0 {
        out.push_str(&format!(
            "closed    {} car connections closed by the server or failed while publishing\n",
            report.dropped_connections
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_fleet_is_three_workers_of_at_most_15000() {
        assert_eq!(default_cars_per_worker(1), 1);
        assert_eq!(default_cars_per_worker(300), 100);
        assert_eq!(default_cars_per_worker(45_000), 15_000);
        assert_eq!(default_cars_per_worker(700_000), 15_000);
        assert_eq!(700_000u64.div_ceil(default_cars_per_worker(700_000)), 47);
    }

    #[test]
    fn the_start_time_is_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // Microseconds are cut, not rounded.
        assert_eq!(rfc3339(951_825_600_999_999), "2000-02-29T12:00:00Z");
        assert_eq!(rfc3339(1_773_480_413_250_000), "2026-03-14T09:26:53Z");
        assert_eq!(rfc3339(4_107_542_399_000_000), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400_000_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799_000_000), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn round_robin_numbers_each_car_from_one_and_counts_only_what_went_out() {
        let mut pace = RoundRobin::new(2, 1e9);
        assert_eq!(pace.next(), (0, 1));
        // Not sent (say the queue was full): the same message again.
        assert_eq!(pace.next(), (0, 1));
        pace.mark_sent();
        assert_eq!(pace.next(), (1, 1));
        pace.mark_sent();
        assert_eq!(pace.next(), (0, 2));
        assert_eq!(pace.count, 2);
        // At a slow rate the third message is not due yet.
        let slow = RoundRobin {
            count: 3,
            ..RoundRobin::new(2, 1.0)
        };
        assert!(slow.wait().is_some());
    }
}
