//! One shard: a pinned glommio executor with its own SO_REUSEPORT
//! listeners, its own connections and sessions, and its own Kafka producer.
//!
//! The modules, from the outside in (a PUBLISH goes down this list):
//!
//! - this module: the shard's state ([`Shard`]), its start and shutdown,
//!   and its clock ([`Shard::tick`]);
//! - [`housekeeping`]: the poller, the sweeper and the drain;
//! - [`accept`]: its listeners and accept loops;
//! - [`readiness`]: its epoll set and the readiness task, which wakes a
//!   connection when its socket has bytes (glommio runs the tasks and the
//!   I/O of Kafka and files, not the cars' sockets);
//! - [`table`]: the open connections, the client ids they hold, their
//!   deadlines, and the wake-ups that reach them;
//! - [`control`]: a connection's control block, what it waits on beside
//!   its socket;
//! - [`preamble`]: PROXY header and TLS handshake, before MQTT;
//! - [`task`]: a connection's task, reading, writing and waiting;
//! - [`parked`]: quiet connections parked without a task, served by the
//!   readiness task through the lot;
//! - [`connection`]: the context both work on, and the close bookkeeping;
//! - [`dispatch`]: its packets fed to its session;
//! - [`admission`]: the CONNECT policy;
//! - [`uplink`]: a PUBLISH mapped and handed to the producer;
//! - [`socket`]: the non-blocking socket calls;
//! - [`flow`]: reads paused while Kafka is behind, and the accept rate;
//! - [`partial`]: bytes held in incomplete packets, within the shard's
//!   budget;
//! - [`delivery`] and [`slot`]: the downlink (routed messages from the
//!   shard's slot, receipts, registry records);
//! - [`inspect`]: a car's state for `GET /cars/<client id>`.
//!
//! A poller task serves the producer's delivery reports and the downlink
//! slot on this thread, and reopens reading when Kafka has caught up.

mod accept;
mod admission;
mod connection;
mod control;
mod delivery;
mod dispatch;
mod flow;
mod housekeeping;
mod input;
mod inspect;
mod parked;
mod partial;
mod preamble;
mod readiness;
mod slot;
mod socket;
mod table;
mod task;
mod tls_car;
mod uplink;

pub use slot::SlotError;
pub(crate) use slot::slot_number;
pub(crate) use socket::{BACKLOG, somaxconn};

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use codec::{Decoder, Role};
use crossbeam_channel::Receiver;
use futures_lite::future;
use glommio::timer::sleep;
use std::net::TcpListener;

use crate::config::{Config, Limits, Listener};
use crate::kafka::ShardProducer;
use crate::kick::Kick;
use crate::mapping::TopicMapper;
use crate::metrics::ShardMetrics;
use crate::registry::{Order, Registry};
use crate::session::{CloseReason, SubscribePolicy, Timing};
use crate::tls::Terminator;
use delivery::Downlink;
use flow::{AcceptRate, FlowControl};
use readiness::Readiness;
use table::ConnectionTable;

/// How often a connection offers again a record that found librdkafka's
/// queue full.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Bound on waiting for connections to close at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bound on flushing the producer at shutdown; with the grace above, the
/// whole shutdown takes at most about 13 s.
const FLUSH_BOUND: Duration = Duration::from_secs(8);
/// How often the shard's sweeper checks connection deadlines. One sweep
/// over the shard's connections replaces a timer per connection: no timer
/// allocation held by every idle car, none re-armed on every packet.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The preambles' task queue's shares, against the default queue's 1,000.
const PREAMBLE_SHARES: usize = 100;
/// How long the preambles may run before the executor looks at its other
/// queues (and how long the connected cars wait for them at most, plus
/// one handshake).
const HANDSHAKE_SLICE: Duration = Duration::from_millis(5);

struct Shard {
    id: usize,
    /// Wakes the poller (from any thread); `poller_idle` says whether it
    /// sleeps long.
    kick: Arc<Kick>,
    poller_idle: Cell<bool>,
    producer: ShardProducer,
    mapper: RefCell<TopicMapper>,
    decoder: Decoder,
    /// Shared by every session of the shard: made once per shard start and
    /// kept for the process's life (a few bytes), so that a session holds a
    /// reference rather than a copy.
    timing: &'static Timing,
    limits: Limits,
    policy: SubscribePolicy,
    metrics: Arc<ShardMetrics>,
    flow: FlowControl,
    accept_rate: AcceptRate,
    /// Bytes held in incomplete packets, and the shard's budget for them.
    partials: partial::Partials,
    /// Which connection holds each client id, across shards.
    registry: Arc<Registry>,
    /// Orders from other threads: takeovers from other shards, inspections
    /// from the admin thread.
    orders: Receiver<Order>,
    /// Inspections waiting for a connection's task to answer them: the
    /// connection's id and where the answer goes ([`inspect`]).
    inspections: RefCell<Vec<(u64, ops::admin::Respond)>>,
    table: ConnectionTable,
    /// The epoll set of the shard's sockets.
    readiness: Readiness,
    downlink: Option<Downlink>,
    /// The process-wide stop flag (signal handlers, `Gateway::stop`).
    shutdown: Arc<AtomicBool>,
    stopping: Cell<bool>,
    /// The process-wide drain flag (SIGTERM, `POST /drain`), and whether
    /// this shard has begun draining.
    drain: Arc<AtomicBool>,
    draining: Cell<bool>,
    /// The tasks waiting for `stopping` or `draining` (the accept loops,
    /// the end of [`serve`]).
    stop_waiters: RefCell<Vec<Waker>>,
    /// Connections closed per second while draining: this shard's share.
    drain_rate: f64,
    drain_max: Duration,
    /// How long a drained connection is read after its half-close.
    pub(super) drain_linger: Duration,
    /// The readiness task's gathering window now, and its bound (see
    /// [`readiness::Gather`]); the poller's busy ticks follow it.
    pub(super) gather: readiness::Gather,
    /// The task queue of new connections' preambles (PROXY header, TLS
    /// handshake): a tenth of the shard's CPU against the connected cars'
    /// tasks when both have work, and the executor switches queues at
    /// least every [`HANDSHAKE_SLICE`] while it has any. A reconnect storm
    /// then delays a connected car's read by about that, not by the
    /// storm's whole CPU.
    pub(super) preambles: glommio::TaskQueueHandle,
    /// Set when connections outlived the close grace: stop waiting for them.
    abandoned: Cell<bool>,
    /// The origin of the shard's clock (see [`Shard::tick`]).
    epoch: Instant,
}

impl Shard {
    /// Starts the shutdown once: no new CONNECT is accepted and every
    /// connection is told to close.
    fn begin_stop(&self) {
        if !self.stopping.replace(true) {
            tracing::info!(shard = self.id, "shutting down: closing connections");
            self.table.fire_all(CloseReason::Shutdown);
            self.table.lot.look();
            self.wake_stop_waiters();
        }
    }

    /// Wakes the tasks waiting for a stop or a drain: one began.
    fn wake_stop_waiters(&self) {
        for waker in self.stop_waiters.take() {
            waker.wake();
        }
    }

    /// Resolves once the shard stops or drains. An event, not a timer:
    /// accept loops that looked every 20 ms (four listeners a shard, then)
    /// were most of an idle shard's wake-ups.
    async fn stop_or_drain(&self) {
        self.until(|| self.stopping.get() || self.draining.get())
            .await;
    }

    /// Resolves once the shard stops.
    async fn stopped(&self) {
        self.until(|| self.stopping.get()).await;
    }

    /// Resolves once `done` holds, looked at whenever a stop or a drain
    /// begins ([`Shard::wake_stop_waiters`]).
    async fn until(&self, done: impl Fn() -> bool) {
        future::poll_fn(|cx| {
            if done() {
                return Poll::Ready(());
            }
            let mut waiters = self.stop_waiters.borrow_mut();
            if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }

    /// Wakes the poller if it sleeps long: a record was handed over.
    fn handed_over(&self) {
        if self.poller_idle.get() {
            self.kick.kick();
        }
    }

    /// Sleeps until the next multiple of `period` on the shard's clock.
    /// Every periodic sleep of the shard (the gathering of events, the
    /// acknowledgements, the sweep, the idle poll) lands on this one grid,
    /// so that timers of different tasks expire in the same wake-up of the
    /// thread instead of one each: at a fleet's rate, the gathering and
    /// the acknowledgements each woke the shard 200 times a second, at
    /// unrelated instants.
    fn tick(&self, period: Duration) -> impl Future<Output = ()> + use<> {
        sleep(until_tick(self.epoch.elapsed(), period))
    }

    /// Whether the shard has stopped and has no connection left to wait for.
    fn finished(&self) -> bool {
        self.stopping.get() && (self.table.is_empty() || self.abandoned.get())
    }
}

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

/// A listener as the shards serve it: its settings and, for TLS, the
/// configuration shared by all shards and replaced on reload.
#[derive(Debug, Clone)]
pub(crate) struct Door {
    pub(crate) listener: Listener,
    pub(crate) tls: Option<Arc<Terminator>>,
}

/// What a shard is started with.
pub(crate) struct Start {
    pub(crate) id: usize,
    /// How many shards this gateway runs.
    pub(crate) shards: usize,
    /// Wakes this shard's poller: the gateway kicks it on a stop or a
    /// drain, other shards with a takeover order.
    pub(crate) kick: Arc<Kick>,
    pub(crate) config: Arc<Config>,
    /// Shard 0 binds the configured addresses; the others bind what it got
    /// (the same ports, also where port 0 was configured).
    pub(crate) doors: Vec<Door>,
    pub(crate) metrics: Arc<ShardMetrics>,
    /// Set by signal handlers or `Gateway::stop`.
    pub(crate) shutdown: Arc<AtomicBool>,
    /// Set by SIGTERM or `POST /drain`.
    pub(crate) drain: Arc<AtomicBool>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) orders: Receiver<Order>,
    /// This shard's `mqtt.downlink` partition, when the downlink is on.
    pub(crate) slot: Option<u32>,
    /// Receives the listeners' addresses (or the error) once it listens.
    pub(crate) bound: std::sync::mpsc::Sender<io::Result<Vec<SocketAddr>>>,
}

/// Why a shard could not start. Each says what it was doing; the cause
/// is its source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("creating the shard's Kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("compiling the topic mapping")]
    Mapping(#[source] crate::mapping::MappingError),
    #[error("creating the shard's epoll set")]
    Epoll(#[source] io::Error),
    #[error(transparent)]
    Downlink(#[from] slot::SlotError),
}

/// Runs one shard on the current glommio executor until shutdown.
pub(crate) async fn serve(start: Start) -> Result<(), StartError> {
    let Start {
        id,
        shards,
        kick,
        config,
        doors,
        metrics,
        shutdown,
        drain,
        registry,
        orders,
        slot,
        bound,
    } = start;
    let shards = f64::from(u32::try_from(shards.max(1)).unwrap_or(u32::MAX));
    let setup = || -> Result<(Vec<TcpListener>, Shard), StartError> {
        let mut listeners = Vec::with_capacity(doors.len());
        for door in &doors {
            let address = door.listener.address;
            let listener =
                socket::listen(address).map_err(|source| StartError::Bind { address, source })?;
            listeners.push(listener);
        }
        let epoch = Instant::now();
        let downlink = match slot {
            None => None,
            Some(slot) => Some(Downlink::new(&config, id, slot, &kick)?),
        };
        let shard = Shard {
            id,
            kick,
            poller_idle: Cell::new(false),
            producer: ShardProducer::new(&config.kafka, id, metrics.clone())
                .map_err(StartError::Producer)?,
            mapper: RefCell::new(TopicMapper::new(&config.mapping).map_err(StartError::Mapping)?),
            decoder: Decoder::new(Role::Server, config.mqtt.max_packet_size),
            timing: Box::leak(Box::new(config.timing())),
            limits: config.limits.clone(),
            policy: config.subscribe_policy(),
            metrics: metrics.clone(),
            flow: FlowControl::default(),
            accept_rate: AcceptRate::new(config.limits.accept_rate_per_shard),
            partials: partial::Partials::new(
                config.limits.max_partial_bytes_per_shard,
                metrics.clone(),
            ),
            registry,
            orders,
            inspections: RefCell::new(Vec::new()),
            table: ConnectionTable::new(epoch),
            readiness: Readiness::new().map_err(StartError::Epoll)?,
            downlink,
            shutdown,
            stopping: Cell::new(false),
            drain,
            draining: Cell::new(false),
            stop_waiters: RefCell::new(Vec::new()),
            drain_rate: f64::from(config.drain.closes_per_sec.max(1)) / shards,
            drain_max: Duration::from_secs(config.drain.max_secs.max(1)),
            drain_linger: Duration::from_secs(config.drain.linger_secs),
            gather: readiness::Gather::new(Duration::from_millis(config.shard.gather_max_ms)),
            preambles: glommio::executor().create_task_queue(
                glommio::Shares::Static(PREAMBLE_SHARES),
                glommio::Latency::Matters(HANDSHAKE_SLICE),
                "preambles",
            ),
            abandoned: Cell::new(false),
            epoch,
        };
        Ok((listeners, shard))
    };
    let (listeners, shard) = match setup() {
        Ok(ready) => ready,
        Err(error) => {
            let _ = bound.send(Err(io::Error::other(ops::error_chain(&error))));
            return Err(error);
        }
    };
    let addresses = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>();
    let _ = bound.send(addresses);
    let shard = Rc::new(shard);
    let poller = glommio::spawn_local(housekeeping::poll_producer(shard.clone()));
    let sweeper = glommio::spawn_local(housekeeping::sweep_deadlines(shard.clone()));
    let tender = glommio::spawn_local(readiness::tend(shard.clone()));

    let acceptors = accept::spawn_acceptors(&shard, listeners, doors);
    for acceptor in acceptors {
        acceptor.await;
    }
    // A drain ends the accepting; the shard stays (empty, not accepting)
    // until it is told to stop (the poller sees the flag, kicked).
    shard.stopped().await;

    shard.begin_stop();
    let closing = Instant::now();
    while !shard.table.is_empty() && closing.elapsed() < CLOSE_GRACE {
        sleep(Duration::from_millis(5)).await;
    }
    let left = shard.table.len();
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
    tender.await;
    // End-of-session records of the connections just closed.
    if let Some(downlink) = &shard.downlink {
        downlink.retry_pending(&shard);
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

/// How long from `elapsed` (on a clock started at 0) to the next multiple
/// of `period` after it: a whole period when `elapsed` is one.
fn until_tick(elapsed: Duration, period: Duration) -> Duration {
    let period = period.as_nanos().max(1);
    let elapsed = elapsed.as_nanos();
    let left = period - elapsed % period;
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::until_tick;

    const MS: Duration = Duration::from_millis(1);

    /// Sleeps of different periods, started at different instants, end
    /// on the same grid: that is what lets one wake-up serve them all.
    #[test]
    fn ticks_of_different_periods_meet_on_one_grid() {
        let started = [MS * 3, MS * 7 / 2, MS * 4 + Duration::from_nanos(1)];
        for elapsed in started {
            assert_eq!(elapsed + until_tick(elapsed, MS * 5), MS * 5);
        }
        assert_eq!(MS * 3 + until_tick(MS * 3, MS * 25), MS * 25);
        assert_eq!(MS * 24 + until_tick(MS * 24, MS * 5), MS * 25);
    }

    #[test]
    fn a_sleep_on_the_grid_waits_a_whole_period() {
        assert_eq!(until_tick(MS * 10, MS * 5), MS * 5);
        assert_eq!(until_tick(Duration::ZERO, MS * 5), MS * 5);
        assert_eq!(until_tick(MS, Duration::ZERO), Duration::from_nanos(1));
    }
}
