//! One shard: a pinned glommio executor with its own SO_REUSEPORT listener,
//! its own connections and sessions, and its own Kafka producer.
//!
//! The one place where bytes meet sockets: each connection task reads into
//! its buffer, decodes in a loop, feeds the [`Session`], hands accepted
//! PUBLISH packets to the shard's producer and writes what the session
//! asks. A poller task serves the producer's delivery reports on this
//! thread and reopens reading when Kafka has caught up.
//!
//! Flow control: while the shard's unacknowledged bytes are at
//! `kafka.max_in_flight_bytes` (or librdkafka's queue is full), connections
//! stop reading, so TCP pushes back on the cars; their keep-alive restarts
//! when reading resumes, and new CONNECTs are refused with 0x03.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::packet::encode_publish;
use codec::{ByteString, ConnectReturnCode, Decoder, QoS, Role};
use contract::{End, SessionClock, SessionRecord};
use crossbeam_channel::Receiver;
use futures_lite::future;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;

use crate::config::Config;
use crate::downlink::{Routed, SlotConsumer};
use crate::kafka::{SendError, ShardProducer};
use crate::mapping::TopicMapper;
use crate::metrics::{ShardMetrics, bump};
use crate::registry::{Holder, Registry};
use crate::session::{CloseReason, Session, Step, Timing};

/// Bytes asked for when the car has been quiet: the buffer is held while
/// the read waits, and most connections wait most of the time. A small
/// packet arrives whole in the next read, once its fixed header says how
/// many bytes it needs.
const READ_IDLE: usize = 32;
/// Bytes asked for while reads come back full (a busy car).
const READ_BUSY: usize = 4096;
/// Most bytes read at once for a large partial packet.
const READ_MAX: usize = 64 * 1024;
/// How often the poller serves delivery reports and routed messages while
/// records are in flight or messages arriving.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Longest the poller sleeps while nothing is in flight or arriving: it is
/// woken early by a record handed to the producer and by librdkafka when a
/// routed message arrives, so this only bounds how late it sees a shutdown
/// or a takeover order from another shard. A 1 ms tick when idle cost
/// 6 % of a core per shard (perf), and every reactor turn of a shard with
/// many cars costs more (see `RING_DEPTH`).
const IDLE_POLL: Duration = Duration::from_millis(25);
/// Listening sockets per shard on the one address (SO_REUSEPORT): glommio
/// listens with a backlog of 1024, so four hold 4,096 cars that connect
/// faster than the shard accepts. At 25,000 connects/s asked over three
/// single-shard gateways, one listener each overflowed 10,138 times.
const LISTENERS_PER_SHARD: usize = 4;
/// A car that does not take what we send within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A shard stalled this long by Kafka counts as "Kafka cannot take data":
/// new CONNECTs are refused with 0x03 (server unavailable). Shorter stalls
/// are ordinary backpressure.
const UNAVAILABLE_AFTER: Duration = Duration::from_secs(1);
/// At most one warning of a kind ("reads paused", downlink consumer
/// errors) per shard per interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a warning last logged at `at` may be logged again at `now`;
/// if so, `now` becomes its last time.
fn log_due(at: &Cell<Option<Instant>>, now: Instant) -> bool {
    let due = at
        .get()
        .is_none_or(|last| now.duration_since(last) >= LOG_INTERVAL);
    if due {
        at.set(Some(now));
    }
    due
}
/// Bound on waiting for connections to close at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bound on flushing the producer at shutdown; with the grace above, the
/// whole shutdown takes at most about 13 s.
const FLUSH_BOUND: Duration = Duration::from_secs(8);

/// How often the shard's sweeper checks connection deadlines. One sweep
/// over the shard's connections replaces a timer per connection: no timer
/// allocation held by every idle car, none re-armed on every packet.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Routed records read per poller tick at most, so one busy slot cannot
/// keep the shard from its connections.
const DOWNLINK_BATCH: usize = 1024;
/// A (client, session) reported gone is not reported again within this
/// time: one report per stale registration, not one per message.
const GONE_MEMORY: Duration = Duration::from_secs(30);

/// What a connection waits on beside its socket: a close order (takeover,
/// shutdown), its session deadline coming due, or downlink messages to
/// write. Shared between the connection task and the shard's poller.
#[derive(Debug, Default)]
struct Signal {
    reason: Cell<Option<CloseReason>>,
    deadline: Cell<Option<Instant>>,
    due: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// The session id, once the CONNECT is accepted.
    session: Cell<Option<u64>>,
    /// The session's topic filters, shared for downlink matching.
    filters: RefCell<Option<Rc<[ByteString]>>>,
    /// Encoded downlink PUBLISH packets not yet written, and their count.
    outbox: RefCell<BytesMut>,
    queued: Cell<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Wake {
    Close(CloseReason),
    Deadline,
    Output,
}

impl Signal {
    fn fire(&self, reason: CloseReason) {
        if self.reason.get().is_none() {
            self.reason.set(Some(reason));
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Called by the sweeper.
    fn check_deadline(&self, now: Instant) {
        if self.deadline.get().is_some_and(|at| at <= now) && !self.due.replace(true) {
            self.wake();
        }
    }

    fn wait(&self) -> impl Future<Output = Wake> + '_ {
        future::poll_fn(|cx| {
            if let Some(reason) = self.reason.get() {
                Poll::Ready(Wake::Close(reason))
            } else if self.due.replace(false) {
                Poll::Ready(Wake::Deadline)
            } else if self.queued.get() > 0 {
                Poll::Ready(Wake::Output)
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Resolves on a close order only; deadlines and downlink output wait
    /// until reading resumes.
    fn closed(&self) -> impl Future<Output = CloseReason> + '_ {
        future::poll_fn(|cx| match self.reason.get() {
            Some(reason) => Poll::Ready(reason),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Takes the queued downlink bytes and their message count.
    fn take_output(&self) -> (BytesMut, u64) {
        (self.outbox.take(), self.queued.replace(0))
    }
}

/// A shard's downlink state (absent when `downlink.enabled` is false).
struct Downlink {
    consumer: SlotConsumer,
    clock: RefCell<SessionClock>,
    sessions_topic: String,
    topic_header: String,
    max_queued: usize,
    /// Registry records librdkafka's queue had no room for, in order.
    pending: RefCell<VecDeque<(ByteString, Vec<u8>)>>,
    /// Recently reported gone, and when the memory was last cleared.
    gone: RefCell<HashSet<(String, u64)>>,
    gone_cleared: Cell<Instant>,
    error_logged_at: Cell<Option<Instant>>,
}

/// Wakes the shard's poller from its idle sleep, from the shard's own
/// thread or another one (librdkafka's, when a routed message arrives;
/// glommio wakers may be woken from any thread).
#[derive(Debug, Default)]
pub(crate) struct Kick {
    kicked: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Kick {
    pub(crate) fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        let waker = self.waker.lock().ok().and_then(|mut waker| waker.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Drops the stored waker here, on the shard's thread, rather than
    /// wherever the last owner of this `Kick` ends up.
    fn forget(&self) {
        drop(self.waker.lock().ok().and_then(|mut waker| waker.take()));
    }

    /// Completes once kicked (at once if kicked since the last time).
    async fn kicked(&self) {
        future::poll_fn(|cx| {
            if self.kicked.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            if let Ok(mut waker) = self.waker.lock() {
                *waker = Some(cx.waker().clone());
            }
            // A kick between the check and storing the waker found no
            // waker to wake: look again.
            if self.kicked.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

struct Shard {
    id: usize,
    /// Wakes the poller; `poller_idle` says whether it sleeps long.
    kick: Arc<Kick>,
    poller_idle: Cell<bool>,
    producer: ShardProducer,
    mapper: RefCell<TopicMapper>,
    decoder: Decoder,
    timing: Timing,
    metrics: Arc<ShardMetrics>,
    paused: Cell<bool>,
    paused_since: Cell<Option<Instant>>,
    pause_logged_at: Cell<Option<Instant>>,
    pauses_unlogged: Cell<u64>,
    resume_wakers: RefCell<Vec<Waker>>,
    /// Which connection holds each client id, across shards.
    registry: Arc<Registry>,
    /// Takeover orders from other shards: connection ids to close.
    orders: Receiver<u64>,
    /// Every open connection, for shutdown and downlink delivery.
    connections: RefCell<HashMap<u64, Rc<Signal>>>,
    /// Which connection holds each client id on this shard.
    clients: RefCell<HashMap<ByteString, u64>>,
    downlink: Option<Downlink>,
    next_connection: Cell<u64>,
    /// The process-wide stop flag (signal handlers, `Gateway::stop`).
    shutdown: Arc<AtomicBool>,
    stopping: Cell<bool>,
    /// Set when connections outlived the close grace: stop waiting for them.
    abandoned: Cell<bool>,
}

impl Shard {
    /// Resolves once the producer has room again.
    fn resumed(&self) -> impl Future<Output = ()> + '_ {
        future::poll_fn(|cx| {
            if self.paused.get() {
                self.resume_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }

    /// Whether Kafka has been unable to take data for a while.
    fn kafka_unavailable(&self) -> bool {
        self.paused_since
            .get()
            .is_some_and(|since| since.elapsed() >= UNAVAILABLE_AFTER)
    }

    /// Starts the shutdown once: no new CONNECT is accepted and every
    /// connection is told to close.
    fn begin_stop(&self) {
        if !self.stopping.replace(true) {
            tracing::info!(shard = self.id, "shutting down: closing connections");
            for signal in self.connections.borrow().values() {
                signal.fire(CloseReason::Shutdown);
            }
        }
    }

    /// Writes a session-registry record, keeping this shard's records for
    /// one client in order.
    fn register(&self, client_id: &ByteString, record: &SessionRecord) {
        let Some(downlink) = &self.downlink else {
            return;
        };
        self.handed_over();
        let value = record.encode();
        let mut pending = downlink.pending.borrow_mut();
        if pending.is_empty() {
            match self.producer.send_registry(
                &downlink.sessions_topic,
                client_id.as_bytes(),
                &value,
            ) {
                Ok(()) | Err(SendError::Failed) => return,
                Err(SendError::QueueFull) => {}
            }
        }
        pending.push_back((client_id.clone(), value));
    }

    /// Offers the registry records that found the queue full again.
    fn retry_registry(&self, downlink: &Downlink) {
        let mut pending = downlink.pending.borrow_mut();
        while let Some((client_id, value)) = pending.front() {
            match self
                .producer
                .send_registry(&downlink.sessions_topic, client_id.as_bytes(), value)
            {
                Ok(()) | Err(SendError::Failed) => {
                    pending.pop_front();
                }
                Err(SendError::QueueFull) => return,
            }
        }
    }

    /// Reads what arrived on this shard's slot and delivers it; whether
    /// anything was read or waits to be sent (poll again soon).
    fn serve_downlink(&self) -> bool {
        let Some(downlink) = &self.downlink else {
            return false;
        };
        self.retry_registry(downlink);
        if downlink.gone_cleared.get().elapsed() >= GONE_MEMORY {
            downlink.gone.borrow_mut().clear();
            downlink.gone_cleared.set(Instant::now());
        }
        let mut busy = !downlink.pending.borrow().is_empty();
        for _ in 0..DOWNLINK_BATCH {
            match downlink.consumer.poll() {
                None => return busy,
                Some(Ok(message)) => {
                    busy = true;
                    self.route(downlink, &message);
                }
                Some(Err(error)) => {
                    if log_due(&downlink.error_logged_at, Instant::now()) {
                        tracing::warn!(shard = self.id, slot = downlink.consumer.slot, %error,
                            "downlink consumer error");
                    }
                    return busy;
                }
            }
        }
        true
    }

    /// Wakes the poller if it sleeps long: a record was handed over.
    fn handed_over(&self) {
        if self.poller_idle.get() {
            self.kick.kick();
        }
    }

    fn route(&self, downlink: &Downlink, message: &rdkafka::message::BorrowedMessage<'_>) {
        let held = |client: &str| {
            let connection = *self.clients.borrow().get(client)?;
            self.connections.borrow().get(&connection).cloned()
        };
        match crate::downlink::read(message, &downlink.topic_header) {
            None => {
                bump(&self.metrics.downlink_received);
                self.metrics.drop_downlink("invalid");
            }
            Some(Routed::Takeover { client, session }) => {
                if let Some(signal) = held(client)
                    && signal.session.get() == Some(session)
                {
                    bump(&self.metrics.takeover_notices);
                    signal.fire(CloseReason::TakenOver);
                }
            }
            Some(Routed::Message {
                client,
                session,
                topic,
                payload,
            }) => {
                bump(&self.metrics.downlink_received);
                let Some(signal) = held(client) else {
                    self.metrics.drop_downlink("not_held");
                    if let Some(session) = session {
                        self.report_gone(downlink, client, session);
                    }
                    return;
                };
                // The router matched the filters it knew; the car may have
                // unsubscribed since.
                if !signal
                    .filters
                    .borrow()
                    .iter()
                    .flat_map(|filters| filters.iter())
                    .any(|filter| codec::topic::matches(filter, topic))
                {
                    self.metrics.drop_downlink("no_filter");
                    return;
                }
                let mut outbox = signal.outbox.borrow_mut();
                if outbox.len() + topic.len() + payload.len() > downlink.max_queued {
                    self.metrics.drop_downlink("slow_car");
                    return;
                }
                match encode_publish(
                    &mut outbox,
                    topic.as_bytes(),
                    payload,
                    QoS::AtMostOnce,
                    None,
                    false,
                    false,
                ) {
                    Ok(()) => {
                        signal.queued.set(signal.queued.get() + 1);
                        drop(outbox);
                        signal.wake();
                    }
                    Err(_) => self.metrics.drop_downlink("invalid"),
                }
            }
        }
    }

    /// Tells the router this shard does not hold `session` of `client`
    /// (for example after a crash): its registration is stale.
    fn report_gone(&self, downlink: &Downlink, client: &str, session: u64) {
        if !downlink
            .gone
            .borrow_mut()
            .insert((client.to_owned(), session))
        {
            return;
        }
        bump(&self.metrics.gone_reports);
        tracing::debug!(
            shard = self.id,
            client,
            session,
            "reporting a stale session as gone"
        );
        let record = SessionRecord::ended(session, downlink.consumer.slot, End::Gone);
        self.register(&ByteString::from(client), &record);
    }

    fn pause(&self) {
        if !self.paused.replace(true) {
            let now = Instant::now();
            self.paused_since.set(Some(now));
            bump(&self.metrics.read_pauses);
            // Under heavy load pauses come and go many times a second:
            // warn once per interval, with the count, not once per pause.
            self.pauses_unlogged.set(self.pauses_unlogged.get() + 1);
            if log_due(&self.pause_logged_at, now) {
                tracing::warn!(
                    shard = self.id,
                    pauses = self.pauses_unlogged.replace(0),
                    "Kafka is behind: reads paused until it catches up \
                     (pauses since the last warning)"
                );
            }
        }
    }
}

/// What a shard is started with.
pub(crate) struct Start {
    pub(crate) id: usize,
    pub(crate) config: Arc<Config>,
    pub(crate) listen: SocketAddr,
    pub(crate) metrics: Arc<ShardMetrics>,
    /// Set by signal handlers or `Gateway::stop`.
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) orders: Receiver<u64>,
    /// This shard's `mqtt.downlink` partition, when the downlink is on.
    pub(crate) slot: Option<u32>,
    /// Receives the listener's address (or the error) once it listens.
    pub(crate) bound: std::sync::mpsc::Sender<io::Result<SocketAddr>>,
}

/// Runs one shard on the current glommio executor until shutdown.
pub(crate) async fn serve(start: Start) -> anyhow::Result<()> {
    let Start {
        id,
        config,
        listen,
        metrics,
        shutdown,
        registry,
        orders,
        slot,
        bound,
    } = start;
    let setup = move || -> anyhow::Result<(TcpListener, Shard)> {
        let listener = TcpListener::bind(listen).map_err(io::Error::from)?;
        let kick = Arc::new(Kick::default());
        let downlink = match slot {
            None => None,
            Some(slot) => Some(Downlink {
                consumer: {
                    let mut consumer = SlotConsumer::new(&config, id, slot)?;
                    let kick = kick.clone();
                    consumer.on_arrival(move || kick.kick());
                    consumer
                },
                clock: RefCell::new(SessionClock::new(slot)),
                sessions_topic: config.downlink.sessions_topic.clone(),
                topic_header: config.kafka.topic_header.clone(),
                max_queued: config.downlink.max_queued_bytes,
                pending: RefCell::new(VecDeque::new()),
                gone: RefCell::new(HashSet::new()),
                gone_cleared: Cell::new(Instant::now()),
                error_logged_at: Cell::new(None),
            }),
        };
        let shard = Shard {
            id,
            kick,
            poller_idle: Cell::new(false),
            producer: ShardProducer::new(&config.kafka, id, metrics.clone())?,
            mapper: RefCell::new(TopicMapper::new(&config.mapping)?),
            decoder: Decoder::new(Role::Server, config.mqtt.max_packet_size),
            timing: config.timing(),
            metrics: metrics.clone(),
            paused: Cell::new(false),
            paused_since: Cell::new(None),
            pause_logged_at: Cell::new(None),
            pauses_unlogged: Cell::new(0),
            resume_wakers: RefCell::new(Vec::new()),
            registry,
            orders,
            connections: RefCell::new(HashMap::new()),
            clients: RefCell::new(HashMap::new()),
            downlink,
            next_connection: Cell::new(0),
            shutdown,
            stopping: Cell::new(false),
            abandoned: Cell::new(false),
        };
        Ok((listener, shard))
    };
    let (listener, shard) = match setup() {
        Ok(ready) => ready,
        Err(error) => {
            let _ = bound.send(Err(io::Error::other(format!("{error:#}"))));
            return Err(error);
        }
    };
    let _ = bound.send(listener.local_addr().map_err(io::Error::from));
    tracing::info!(shard = id, address = %listen, "listening");
    let shard = Rc::new(shard);
    let poller = glommio::spawn_local(poll_producer(shard.clone()));
    let sweeper = glommio::spawn_local(sweep_deadlines(shard.clone()));

    // More listeners on the same address: each has glommio's backlog of
    // 1024, and a connect storm beyond what the shard accepts overflows
    // it (the car retries its SYN after a second).
    let address = listener.local_addr();
    let mut listeners = vec![listener];
    if let Ok(address) = address {
        for _ in 1..LISTENERS_PER_SHARD {
            match TcpListener::bind(address) {
                Ok(more) => listeners.push(more),
                Err(error) => {
                    tracing::warn!(shard = id, %error, "extra listener not bound");
                    break;
                }
            }
        }
    }
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| glommio::spawn_local(accept(listener, shard.clone())))
        .collect();
    for acceptor in acceptors {
        acceptor.await;
    }

    shard.begin_stop();
    let closing = Instant::now();
    while !shard.connections.borrow().is_empty() && closing.elapsed() < CLOSE_GRACE {
        sleep(Duration::from_millis(5)).await;
    }
    let left = shard.connections.borrow().len();
    if left > 0 {
        tracing::warn!(
            shard = id,
            connections = left,
            "connections did not close within {CLOSE_GRACE:?}; abandoning them"
        );
        shard.abandoned.set(true);
    }
    poller.await;
    sweeper.await;
    // End-of-session records of the connections just closed.
    if let Some(downlink) = &shard.downlink {
        shard.retry_registry(downlink);
    }
    let closed_in = closing.elapsed();
    // Each record ends acknowledged or failed: flush within the bound, then
    // purge what is left so its reports (failed, "shutdown") are counted.
    let flushing = Instant::now();
    let queued = shard.producer.queued();
    if let Err(error) = shard.producer.flush(FLUSH_BOUND) {
        tracing::warn!(shard = id, %error, queued = shard.producer.queued(), "flush incomplete");
        shard.producer.purge();
    }
    tracing::info!(
        shard = id,
        closed_in_ms = closed_in.as_millis(),
        flushed_in_ms = flushing.elapsed().as_millis(),
        records_flushed = queued,
        "shard stopped"
    );
    Ok(())
}

/// Wakes the connections whose session deadline has passed.
async fn sweep_deadlines(shard: Rc<Shard>) {
    loop {
        let now = Instant::now();
        for signal in shard.connections.borrow().values() {
            signal.check_deadline(now);
        }
        if shard.stopping.get() && (shard.connections.borrow().is_empty() || shard.abandoned.get())
        {
            return;
        }
        sleep(SWEEP_INTERVAL).await;
    }
}

/// Serves delivery reports and reopens reading when there is room.
async fn poll_producer(shard: Rc<Shard>) {
    loop {
        if shard.shutdown.load(Ordering::Relaxed) {
            shard.begin_stop();
        }
        shard.producer.poll();
        let arriving = shard.serve_downlink();
        for connection in shard.orders.try_iter() {
            if let Some(signal) = shard.connections.borrow().get(&connection) {
                signal.fire(CloseReason::TakenOver);
            }
        }
        if shard.paused.get() && shard.producer.has_room() {
            shard.paused.set(false);
            shard.paused_since.set(None);
            tracing::debug!(shard = shard.id, "Kafka caught up: reads resumed");
            for waker in shard.resume_wakers.borrow_mut().drain(..) {
                waker.wake();
            }
        }
        if shard.stopping.get() && (shard.connections.borrow().is_empty() || shard.abandoned.get())
        {
            shard.kick.forget();
            return;
        }
        let busy =
            arriving || shard.producer.queued() > 0 || shard.paused.get() || shard.stopping.get();
        if busy {
            sleep(POLL_INTERVAL).await;
        } else {
            // Nothing ran since `busy` was computed: a record handed over
            // from now on kicks.
            shard.poller_idle.set(true);
            future::or(sleep(IDLE_POLL), shard.kick.kicked()).await;
            shard.poller_idle.set(false);
        }
    }
}

/// Accepts connections on `listener` until the shard stops.
async fn accept(listener: TcpListener, shard: Rc<Shard>) {
    // The poller notices the stop flag (within IDLE_POLL) and begins the
    // stop; this only ends the accept loop.
    let mut stop = pin!(async {
        while !shard.stopping.get() {
            sleep(Duration::from_millis(20)).await;
        }
    });
    loop {
        let stopped = async {
            stop.as_mut().await;
            None
        };
        match future::or(async { Some(listener.accept().await) }, stopped).await {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(connection(stream, shard.clone())).detach();
            }
            Some(Err(error)) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(shard = shard.id, %error, "accept failed");
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One car's connection, from accept to close.
///
/// A plain function returning an `async move` block rather than an `async
/// fn`: an `async fn` keeps its arguments twice in its state (as captured
/// and as locals), which is 128 bytes more in every connection's task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's state is 128 bytes larger per connection"
)]
fn connection(mut stream: TcpStream, shard: Rc<Shard>) -> impl Future<Output = ()> {
    async move {
        let id = shard.next_connection.get();
        shard.next_connection.set(id + 1);
        let signal = Rc::new(Signal::default());
        if shard.stopping.get() {
            // Accepted just as the shutdown began: close it with the others.
            signal.fire(CloseReason::Shutdown);
        }
        shard.connections.borrow_mut().insert(id, signal.clone());
        bump(&shard.metrics.connections_accepted);
        shard
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));

        let mut session = Session::new(shard.timing, Instant::now());
        let reason = drive(&mut stream, &shard, &signal, id, &mut session).await;
        let _ = stream.close().await;

        shard.metrics.close(reason.label());
        shard
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        shard.connections.borrow_mut().remove(&id);
        let (_, unsent) = signal.take_output();
        for _ in 0..unsent {
            shard.metrics.drop_downlink("closed");
        }
        if let Some(client_id) = session.client_id() {
            shard.registry.release(
                client_id,
                Holder {
                    shard: shard.id,
                    connection: id,
                },
            );
            {
                let mut clients = shard.clients.borrow_mut();
                if clients.get(client_id) == Some(&id) {
                    clients.remove(client_id);
                }
            }
            if let (Some(downlink), Some(session_id)) = (&shard.downlink, signal.session.get()) {
                let record = SessionRecord::ended(session_id, downlink.consumer.slot, End::Closed);
                shard.register(client_id, &record);
            }
        }
        let client = session
            .client_id()
            .map(|c| c.to_string())
            .unwrap_or_default();
        match reason {
            CloseReason::Malformed(error) => {
                tracing::info!(shard = shard.id, client, %error, "closed: malformed packet");
            }
            reason if reason.is_car_fault() => {
                tracing::info!(shard = shard.id, client, reason = reason.label(), "closed");
            }
            reason => tracing::debug!(shard = shard.id, client, reason = reason.label(), "closed"),
        }
    }
}

enum Event {
    Read(io::Result<usize>),
    Deadline,
    Output,
    Signal(CloseReason),
}

/// Runs one connection's protocol over any byte stream: plain TCP today;
/// a TLS stream wrapping the socket fits here unchanged.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    shard: &Shard,
    signal: &Rc<Signal>,
    id: u64,
    session: &mut Session,
) -> CloseReason {
    let mut input = BytesMut::new();
    let mut busy = false;
    loop {
        if !shard.producer.has_room() {
            shard.pause();
            match future::or(
                async {
                    shard.resumed().await;
                    None
                },
                async { Some(signal.closed().await) },
            )
            .await
            {
                Some(reason) => return session.close(reason),
                None => session.resume(Instant::now()),
            }
        }

        // The rest of a frame plus a little more: a read that fills that
        // too shows the car sending faster than one packet per read, so
        // reads grow to READ_BUSY until one comes back short. A car that
        // publishes now and then thus never holds more than READ_IDLE
        // bytes while it is quiet, nor takes READ_BUSY bytes even briefly
        // (short-lived 4 KiB buffers cost 34 bytes per connection in heap
        // fragmentation in the `idle_memory` test).
        let want = match shard.decoder.frame_length(&input) {
            Ok(Some(frame)) if frame > input.len() => {
                let more = if busy { READ_BUSY } else { READ_IDLE };
                (frame - input.len() + more).min(READ_MAX)
            }
            _ if busy => READ_BUSY,
            _ => READ_IDLE,
        };
        signal.deadline.set(session.deadline());
        let event = {
            let read = async { Event::Read(read_some(stream, &mut input, want).await) };
            let woken = async {
                match signal.wait().await {
                    Wake::Close(reason) => Event::Signal(reason),
                    Wake::Deadline => Event::Deadline,
                    Wake::Output => Event::Output,
                }
            };
            // The signal first: `or` polls in order, and under steady load
            // the read is always ready, which would starve a stop order.
            future::or(pin!(woken), pin!(read)).await
        };
        let now = Instant::now();
        match event {
            Event::Read(Ok(0)) => return session.close(CloseReason::PeerClosed),
            // A full first read of READ_IDLE bytes is the normal start of
            // any packet larger than that: not yet a sign of a busy car.
            Event::Read(Ok(read)) => busy = read == want && want > READ_IDLE,
            Event::Read(Err(_)) => return session.close(CloseReason::Io),
            Event::Deadline => match session.on_deadline(now) {
                Some(reason) => return reason,
                None => continue,
            },
            Event::Output => {
                if write_downlink(stream, shard, signal).await.is_err() {
                    return session.close(CloseReason::Io);
                }
                continue;
            }
            Event::Signal(reason) => return session.close(reason),
        }

        // Replies are rare (CONNACK, PINGRESP, SUBACK): a buffer only for
        // this turn, not held in the task while the car is quiet.
        let mut output = BytesMut::new();
        // Boxed: its state (over 300 bytes) would otherwise be part of
        // every connection's task for all the time the car is quiet.
        let closed = Box::pin(handle_input(
            shard,
            signal,
            id,
            session,
            &mut input,
            &mut output,
            now,
        ))
        .await;
        if !output.is_empty() && stream.write_all(&output).await.is_err() {
            return session.close(CloseReason::Io);
        }
        drop(output);
        if let Some(reason) = closed {
            return reason;
        }
        if write_downlink(stream, shard, signal).await.is_err() {
            return session.close(CloseReason::Io);
        }
        if input.is_empty() {
            // Hold no buffer while the car is quiet.
            input = BytesMut::new();
        }
    }
}

/// Writes the downlink messages queued for this connection, if any.
async fn write_downlink<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shard: &Shard,
    signal: &Signal,
) -> io::Result<()> {
    let (bytes, count) = signal.take_output();
    if count == 0 {
        return Ok(());
    }
    match stream.write_all(&bytes).await {
        Ok(()) => {
            shard
                .metrics
                .downlink_delivered
                .fetch_add(count, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            for _ in 0..count {
                shard.metrics.drop_downlink("closed");
            }
            Err(error)
        }
    }
}

/// Reads up to `want` bytes onto the end of `input`.
///
/// Cancel-safe: the read races the connection's signal and is dropped when
/// the signal wins (a downlink message to write, a deadline). `input` then
/// keeps exactly what it had; glommio's read only takes bytes from the
/// socket when it completes.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    input: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    /// Cuts the zero-filled room for the read back to what was read, also
    /// when the read future is dropped before it completes.
    struct Room<'a> {
        input: &'a mut BytesMut,
        keep: usize,
    }
    impl Drop for Room<'_> {
        fn drop(&mut self) {
            self.input.truncate(self.keep);
        }
    }
    let start = input.len();
    input.resize(start + want, 0);
    let mut room = Room { input, keep: start };
    let result = match room.input.get_mut(start..) {
        Some(tail) => stream.read(tail).await,
        None => Ok(0),
    };
    room.keep = start + *result.as_ref().unwrap_or(&0);
    result
}

/// Decodes and handles every whole packet in `input`; `Some` to close.
async fn handle_input(
    shard: &Shard,
    signal: &Rc<Signal>,
    id: u64,
    session: &mut Session,
    input: &mut BytesMut,
    output: &mut BytesMut,
    now: Instant,
) -> Option<CloseReason> {
    loop {
        // Told to close (takeover, shutdown): what is not decoded yet was
        // never read, and is neither produced nor counted.
        if let Some(reason) = signal.reason.get() {
            return Some(session.close(reason));
        }
        let packet = match shard.decoder.decode(input) {
            Ok(Some(packet)) => packet,
            Ok(None) => return None,
            Err(error) => return Some(session.on_decode_error(error, output)),
        };
        match session.on_packet(packet, now, output) {
            Step::Continue => {}
            Step::FiltersChanged => {
                *signal.filters.borrow_mut() = session.shared_filters().cloned();
                if let (Some(downlink), Some(client_id), Some(session_id)) =
                    (&shard.downlink, session.client_id(), signal.session.get())
                {
                    let filters = session.filters().iter().map(ToString::to_string);
                    let record = SessionRecord::live(session_id, downlink.consumer.slot, filters);
                    shard.register(client_id, &record);
                }
            }
            Step::Close(reason) => return Some(reason),
            Step::Connect(connect) => {
                if shard.kafka_unavailable() || shard.stopping.get() {
                    return Some(session.refuse(ConnectReturnCode::ServerUnavailable, output));
                }
                session.accept(&connect, now, output);
                // The session's own copy of the id: compact, shared by refcount.
                let client_id = session.client_id().cloned().unwrap_or_default();
                let me = Holder {
                    shard: shard.id,
                    connection: id,
                };
                // The newer connection wins. An older one on another shard
                // is ordered closed by the registry; one here is closed now.
                if let Some(old) = shard.registry.claim(client_id.clone(), me)
                    && old.shard == shard.id
                    && let Some(signal) = shard.connections.borrow().get(&old.connection)
                {
                    signal.fire(CloseReason::TakenOver);
                }
                if let Some(downlink) = &shard.downlink {
                    let session_id = downlink.clock.borrow_mut().issue();
                    signal.session.set(Some(session_id));
                    shard.clients.borrow_mut().insert(client_id.clone(), id);
                    let record =
                        SessionRecord::live(session_id, downlink.consumer.slot, Vec::new());
                    shard.register(&client_id, &record);
                }
            }
            Step::Publish(publish) => {
                let client_id = session.client_id().cloned().unwrap_or_default();
                bump(&shard.metrics.publish_received);
                loop {
                    let sent = match shard.mapper.borrow_mut().map(publish.topic()) {
                        Ok(kafka_topic) => shard.producer.send(
                            kafka_topic,
                            client_id.as_bytes(),
                            publish.payload(),
                            publish.topic_bytes(),
                        ),
                        Err(_) => {
                            // Refused, not lost: the car's PUBLISH never entered the pipeline.
                            shard
                                .metrics
                                .publish_received
                                .fetch_sub(1, Ordering::Relaxed);
                            return Some(session.close(CloseReason::UnmappedTopic));
                        }
                    };
                    match sent {
                        Ok(()) => {
                            shard.handed_over();
                            break;
                        }
                        Err(SendError::Failed) => break,
                        Err(SendError::QueueFull) if signal.reason.get().is_some() => {
                            // Told to close while waiting for queue space:
                            // this one record was read and is not handed over.
                            shard.metrics.fail("shutdown");
                            return signal.reason.get().map(|reason| session.close(reason));
                        }
                        Err(SendError::QueueFull) => {
                            // librdkafka's own queue is full: this shard waits
                            // for deliveries, then offers the record again.
                            shard.pause();
                            shard.producer.poll();
                            sleep(POLL_INTERVAL).await;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A socket with nothing to read yet.
    struct Quiet;

    impl AsyncRead for Quiet {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    #[test]
    fn a_read_dropped_for_the_signal_leaves_the_input_as_it_was() {
        let mut input = BytesMut::from(&b"\x30\x05ab"[..]);
        let mut quiet = Quiet;
        {
            let read = read_some(&mut quiet, &mut input, 4096);
            assert!(future::block_on(future::poll_once(pin!(read))).is_none());
        }
        // No zero-filled room is left behind for the decoder to choke on.
        assert_eq!(&input[..], b"\x30\x05ab");
        let mut rest: &[u8] = b"cde";
        assert_eq!(
            future::block_on(read_some(&mut rest, &mut input, 4096)).unwrap(),
            3
        );
        assert_eq!(&input[..], b"\x30\x05abcde");
    }
}
