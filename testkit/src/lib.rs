//! Test support: a real Kafka-compatible broker for each integration test.
//!
//! [`Broker::start`] runs a fresh tansu broker (in-memory storage) on a free
//! loopback port and waits until it answers metadata requests. The returned
//! guard stops the broker when dropped, so it also goes away when the test
//! panics. Around it:
//! - [`Broker::create_topic`] creates topics with partition counts and
//!   configs through the Kafka admin API,
//! - [`Broker::producer`] sends records with key, headers and an optional
//!   explicit partition, and waits for the broker's acknowledgement,
//! - [`Broker::collector`] reads every partition of a topic from the
//!   beginning and collects [`Record`]s with key, value, headers and
//!   partition.
//!
//! ```no_run
//! let broker = testkit::Broker::start();
//! broker.create_topic("cs.uplink", 3, &[]);
//! broker.producer().send("cs.uplink", Some(b"VIN1"), b"hello", &[("mqtt.topic", b"UL/POS")], None);
//! let records = broker.collector("cs.uplink").collect(1, std::time::Duration::from_secs(10));
//! assert_eq!(records[0].header("mqtt.topic"), Some(&b"UL/POS"[..]));
//! ```
//!
//! The tansu binary is taken from `$TANSU_BIN`, else `tansu` on `PATH`,
//! else `~/.cargo/bin/tansu` (`scripts/setup.sh` installs it there).
//!
//! Every wait is bounded: a broker that does not come up, a topic that does
//! not appear or records that do not arrive fail the test with what was
//! seen so far, instead of hanging it.
//!
//! The helpers the gateway's and the router's integration tests share, one
//! file each:
//! - `wait.rs`: [`WAIT`], the bound on what a test waits for, and
//!   [`wait_until`] (and [`wait_until_eq`]) that poll a condition within a
//!   bound,
//! - `process.rs`: [`Proc`], a child process killed when the test ends,
//!   whose log (and metrics) a failing test prints,
//! - `mqtt.rs`: [`RawClient`], an MQTT client on a raw socket that sends
//!   exactly the bytes a test chooses and sees the gateway close,
//! - `http.rs`: [`http_get`], [`http_post`] (and [`http_get_bearer`],
//!   [`http_post_bearer`]) and [`scrape`] for the admin endpoints,
//! - `crowd.rs`: [`Crowd`], clients that hold connections open and never
//!   finish a request (the admin endpoint's starvation tests),
//! - `stall.rs`: [`Stalled`], threads of a process under test stopped with
//!   ptrace (the liveness tests),
//! - [`link`]: [`link::LinkProxy`], a TCP proxy that gives the link
//!   between cars and the gateway the faults of a cellular one (latency,
//!   jitter, bandwidth, loss as TCP shows it, outages without a FIN), in
//!   the tests and in `loadgen --link`.

// Test support: failing loudly with a message is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

mod crowd;
mod http;
pub mod link;
mod mqtt;
mod process;
mod stall;
mod wait;

pub use crowd::Crowd;
pub use http::{await_status, http_get, http_get_bearer, http_post, http_post_bearer, scrape};
pub use mqtt::RawClient;
pub use process::Proc;
pub use stall::Stalled;
pub use wait::{WAIT, wait_until, wait_until_eq};

/// How long a broker may take to answer its first metadata request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on admin and produce round trips.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A running tansu broker; stopped when dropped.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Broker {
    /// Starts a fresh broker on a free port and waits until it serves
    /// metadata. Panics, with the broker's log, if it does not.
    pub fn start() -> Self {
        let mut last_error = String::new();
        // A port found free can be taken before the broker binds it: retry.
        for _ in 0..3 {
            let port = free_port();
            let mut broker = Self {
                port,
                child: None,
                log: tempfile::NamedTempFile::new().expect("temporary file for the broker log"),
            };
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(error) => last_error = error,
            }
        }
        panic!("tansu did not start: {last_error}");
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker (Kafka becomes unavailable); see [`Broker::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port after [`Broker::stop`].
    /// Storage is in memory: topics and records are gone and must be
    /// created again.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(error) = self.spawn_and_wait() {
            panic!("tansu did not restart on port {}: {error}", self.port);
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = self.log.reopen().map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(tansu_binary())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", tansu_binary()))?;
        self.child = Some(child);

        let client = self
            .client_config()
            .create::<BaseConsumer>()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("exited with {status}; log:\n{}", self.log_tail()));
            }
            if client
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "no metadata answer within {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                ));
            }
        }
    }

    /// The broker's whole output so far.
    pub fn log_text(&self) -> String {
        self.log
            .reopen()
            .and_then(|mut file| {
                let mut text = String::new();
                file.read_to_string(&mut text).map(|_| text)
            })
            .unwrap_or_else(|e| format!("(log unavailable: {e})"))
    }

    /// The last few kilobytes of the broker's output, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut file = match self.log.reopen() {
            Ok(file) => file,
            Err(e) => return format!("(log unavailable: {e})"),
        };
        let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(4096)));
        let mut tail = String::new();
        let _ = file.read_to_string(&mut tail);
        tail
    }

    /// A client configuration pointing at this broker, for tests that build
    /// their own clients.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers())
            // Keep librdkafka's reconnect loop short while the broker starts.
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "500");
        config
    }

    /// Creates a topic and waits until its metadata shows every partition.
    /// `configs` are topic configs such as `("cleanup.policy", "compact")`.
    pub fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (key, value) in configs {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = futures_executor::block_on(admin.create_topics([&topic], &options))
            .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
        for result in results {
            if let Err((topic, code)) = result {
                panic!("creating topic {topic}: {code}");
            }
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if self.partition_count(name) == Some(partitions) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name} did not show {partitions} partitions within {REQUEST_TIMEOUT:?}"
            );
        }
    }

    /// The partition count metadata reports for `topic`, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        let client: BaseConsumer = self.client_config().create().expect("metadata client");
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()?;
        let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
        if topic.error().is_some() || topic.partitions().is_empty() {
            return None;
        }
        i32::try_from(topic.partitions().len()).ok()
    }

    /// A producer that waits for each record's acknowledgement.
    pub fn producer(&self) -> TestProducer {
        self.producer_with(&[])
    }

    /// [`Broker::producer`] with further librdkafka properties.
    ///
    /// `("batch.num.messages", "1")` matters where a consumer will start in
    /// the middle of what was produced (a consumer group handing a
    /// partition over): tansu 0.6.0 serves a fetch from an offset inside a
    /// record batch starting at the *next* batch, skipping the rest of that
    /// batch, and reports as high watermark one past the last batch's base
    /// offset. Kafka returns the whole batch and the consumer skips to the
    /// offset. One record per batch keeps such tests about our code.
    pub fn producer_with(&self, properties: &[(&str, &str)]) -> TestProducer {
        let mut config = self.client_config();
        config
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "0")
            .set("max.in.flight.requests.per.connection", "1");
        for (key, value) in properties {
            config.set(*key, *value);
        }
        let producer = config.create_with_context(AckContext).expect("producer");
        TestProducer { producer }
    }

    /// A consumer of every partition of `topic`, from the beginning.
    pub fn collector(&self, topic: &str) -> Collector {
        let partitions = self
            .partition_count(topic)
            .unwrap_or_else(|| panic!("topic {topic} does not exist"));
        let consumer: BaseConsumer = self
            .client_config()
            .set(
                "group.id",
                format!("testkit-{topic}-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        Collector {
            consumer,
            topic: topic.to_owned(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let cargo_bin = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cargo/bin/tansu"))
        .filter(|path| path.is_file());
    cargo_bin.unwrap_or_else(|| {
        panic!(
            "tansu not found (set TANSU_BIN, or run scripts/setup.sh, which runs \
             `cargo install --locked tansu --version 0.6.0 --features dynostore`)"
        )
    })
}

/// Arguments for a gateway binary that produces to tansu: tansu 0.6.0
/// leaves some of an idempotent producer's records unacknowledged, so the
/// gateway's default (idempotent) is turned off against it; and the fetch
/// wait of [`ROUTER_ON_TANSU`].
pub const GATEWAY_ON_TANSU: [&str; 4] =
    ["-X", "enable.idempotence=false", "-X", FETCH_WAIT_ON_TANSU];

/// Arguments for a router binary on tansu (or librdkafka's mock cluster).
/// Both answer a fetch that finds nothing only when its whole wait is over,
/// even if a record arrives meanwhile; Kafka answers it as soon as one
/// does. So the binaries' default wait (500 ms, right for Kafka) would
/// delay each downlink hop by up to that much here.
pub const ROUTER_ON_TANSU: [&str; 2] = ["-X", FETCH_WAIT_ON_TANSU];

/// The downlink consumers' fetch wait on tansu: see [`ROUTER_ON_TANSU`].
pub const FETCH_WAIT_ON_TANSU: &str = "fetch.wait.max.ms=20";

/// One consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }
}

/// Reads one topic's records.
pub struct Collector {
    consumer: BaseConsumer,
    topic: String,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Collector {
    /// Exactly `n` records, waiting at most `timeout`; panics with what
    /// arrived if fewer do.
    pub fn collect(&self, n: usize, timeout: Duration) -> Vec<Record> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::with_capacity(n);
        while records.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {n} records from {} within {timeout:?}; got: {records:?}",
                records.len(),
                self.topic
            );
            if let Some(record) = self.poll(left.min(Duration::from_millis(200))) {
                records.push(record);
            }
        }
        records
    }

    /// Whatever arrives within `duration`: to check that nothing (more) does.
    pub fn collect_for(&self, duration: Duration) -> Vec<Record> {
        let deadline = Instant::now() + duration;
        let mut records = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return records;
            }
            if let Some(record) = self.poll(left.min(Duration::from_millis(200))) {
                records.push(record);
            }
        }
    }

    fn poll(&self, timeout: Duration) -> Option<Record> {
        let message = match self.consumer.poll(timeout)? {
            Ok(message) => message,
            Err(error) => panic!("consuming {}: {error}", self.topic),
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Some(Record {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        })
    }
}

/// Routes each delivery report to the sender waiting for it.
struct AckContext;

type Ack = Result<(i32, i64), String>;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<mpsc::Sender<Ack>>;

    fn delivery(&self, result: &DeliveryResult<'_>, reply: Self::DeliveryOpaque) {
        let ack = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.to_string()),
        };
        let _ = reply.send(ack);
    }
}

/// A producer for tests: every send waits for the broker's acknowledgement.
pub struct TestProducer {
    producer: BaseProducer<AckContext>,
}

impl std::fmt::Debug for TestProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestProducer")
    }
}

impl TestProducer {
    /// Sends one record and returns its (partition, offset). `partition`
    /// `None` lets the `murmur2_random` partitioner choose, as the Java
    /// client's default does.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        partition: Option<i32>,
    ) -> (i32, i64) {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let (tx, rx) = mpsc::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(tx))
            .payload(value)
            .headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Err((error, _)) = self.producer.send(record) {
            panic!("producing to {topic}: {error}");
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            self.producer.poll(Duration::from_millis(50));
            match rx.try_recv() {
                Ok(Ok(position)) => return position,
                Ok(Err(error)) => panic!("producing to {topic}: {error}"),
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "no acknowledgement from {topic} within {REQUEST_TIMEOUT:?}"
                ),
            }
        }
    }

    /// Sends `records` (key, value, headers) in order without waiting for
    /// each acknowledgement, then waits until every one is acknowledged.
    /// One record in flight per connection keeps a retry from reordering.
    pub fn send_all<'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (&'a [u8], Vec<u8>, Vec<(&'a str, Vec<u8>)>)>,
    ) {
        let (tx, rx) = mpsc::channel();
        let mut sent = 0usize;
        for (key, value, headers) in records {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in &headers {
                owned = owned.insert(Header {
                    key: name,
                    value: Some(value.as_slice()),
                });
            }
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(tx.clone()))
                .key(key)
                .payload(&value)
                .headers(owned);
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        assert!(Instant::now() < deadline, "producer queue stayed full");
                        record = back;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((error, _)) => panic!("producing to {topic}: {error}"),
                }
            }
            sent += 1;
            self.producer.poll(Duration::ZERO);
        }
        self.flush();
        for _ in 0..sent {
            self.producer.poll(Duration::ZERO);
            match rx.recv_timeout(REQUEST_TIMEOUT) {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => panic!("producing to {topic}: {error}"),
                Err(_) => panic!("no acknowledgement from {topic} within {REQUEST_TIMEOUT:?}"),
            }
        }
    }

    /// Flushes anything still queued.
    pub fn flush(&self) {
        self.producer
            .flush(REQUEST_TIMEOUT)
            .expect("flushing the test producer");
    }
}

/// The partition the Java client's default partitioner (and librdkafka's
/// `murmur2_random`) picks for a non-empty `key`: `toPositive(murmur2(key))
/// % partitions`, computed independently of librdkafka so tests can check it.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    let positive = i64::from(murmur2(key) & 0x7fff_ffff);
    i32::try_from(positive % i64::from(partitions)).expect("a partition fits in i32")
}

/// Kafka's murmur2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils#murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = u32::try_from(data.len()).expect("key shorter than 4 GiB");
    let mut h: u32 = 0x9747_b28c ^ len;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// A binary of this workspace, from the target directory the running test
/// was built into (`cargo test --workspace` builds every package's
/// binaries; `cargo build --workspace --bins` does too).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A loopback port nothing listens on right now, below the kernel's range
/// of ephemeral ports (32768–60999 by default). A port from that range can
/// be given meanwhile to any outgoing connection as its source port; a
/// test's "is it listening yet" connect can even be given the very port it
/// connects to and connect to itself (TCP's simultaneous open), holding
/// the port the server is about to bind. Seen once in the suite: a gateway
/// failed with "Address already in use" while its test saw the port
/// answer.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    /// 20,000 ports, from 12,000: below the ephemeral range.
    const FIRST: u32 = 12_000;
    const PORTS: u32 = 20_000;
    /// Each call tries the next port of its process's walk.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes start their walks at different ports; a step of 7,919 (a
    // prime, so coprime with 20,000) visits every port once in PORTS tries.
    let start = u64::from(std::process::id()) * 2_654_435_761;
    for _ in 0..PORTS {
        let n = u64::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = u64::from(FIRST) + (start + n * 7_919) % u64::from(PORTS);
        let port = u16::try_from(port).expect("below 32,000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port from {FIRST} to {}",
        FIRST + PORTS - 1
    )
}

/// systemd's notify socket, played by a test: a process started with
/// `NOTIFY_SOCKET` = [`NotifySocket::path`] sends its `READY=1`,
/// `WATCHDOG=1`, `STOPPING=1` here.
#[derive(Debug)]
pub struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    dir: tempfile::TempDir,
    said: Vec<String>,
}

impl NotifySocket {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify"))
            .expect("binding the notify socket");
        socket.set_read_timeout(Some(WAIT)).expect("a read timeout");
        Self {
            socket,
            dir,
            said: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("notify")
    }

    /// Reads notifications until one contains `wanted`; fails the test
    /// with all that was said after [`WAIT`].
    pub fn expect(&mut self, wanted: &str) {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                break;
            };
            let message = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            let found = message.contains(wanted);
            self.said.push(message);
            if found {
                return;
            }
        }
        panic!("no {wanted} on the notify socket; said: {:?}", self.said);
    }
}

impl NotifySocket {
    /// Starts `command` under this socket with a 200 ms watchdog, expects
    /// READY=1 and two watchdog pings, sends SIGTERM, expects each of
    /// `on_term` in order, and a clean exit.
    pub fn check_lifecycle(&mut self, mut command: std::process::Command, on_term: &[&str]) {
        let mut service = Proc::spawn(
            "the service",
            command
                .env("NOTIFY_SOCKET", self.path())
                .env("WATCHDOG_USEC", "200000"),
        );
        self.expect("READY=1");
        // At least two watchdog pings, 100 ms apart.
        self.expect("WATCHDOG=1");
        self.expect("WATCHDOG=1");
        service.signal("TERM");
        for wanted in on_term {
            self.expect(wanted);
        }
        assert!(service.wait_exit(WAIT).success());
    }
}

impl Default for NotifySocket {
    fn default() -> Self {
        Self::new()
    }
}
