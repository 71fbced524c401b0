//! The MQTT ⇄ Kafka gateway.
//!
//! Data flow: a car's TCP connection lands on one shard (one glommio
//! executor per CPU, pinned when the CPUs are this process's own
//! ([`pinning`]), each with its own SO_REUSEPORT listener). The shard's
//! connection task decodes packets with `codec`, feeds the per-connection
//! [`session`] state machine, maps PUBLISH topics with [`mapping`] and hands
//! records to the shard's own Kafka producer ([`kafka`]), whose delivery
//! reports it serves on its own thread. [`metrics`] counts everything per
//! shard; the admin endpoint (crate `ops`) serves the sums over HTTP.
//! TLS listeners' files are reloaded on SIGHUP, `POST /reload` and when a
//! thread of their own sees them change ([`tls`]).
//!
//! [`Gateway::start`] is the testable entry point: it returns once every
//! shard listens; [`Gateway::stop`] stops accepting, closes connections,
//! flushes the producers within a bound and joins the shards.

pub mod config;
mod error;
mod inspect;
mod kafka;
mod kick;
pub mod mapping;
pub mod metrics;
pub mod pinning;
pub mod policy;
pub mod proxy;
pub mod rate;
mod registry;
pub mod session;
mod shard;
pub use error::Error;
pub use shard::{SlotError, StartError};
pub mod startup;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::metrics::ShardMetrics;

/// io_uring submission-queue depth of each shard (glommio's default: 128).
///
/// Chosen when every quiet car held a pending poll in its shard's ring:
/// the kernel looks a cancelled request up in a hash table of all the
/// ring's pending polls, with 2^(log2(completion entries) − 5) buckets, at
/// most 256, and at 128 entries (8 buckets) with 16,000 cars `io_poll_find`
/// took half of the machine's CPU (perf). Since the shard's sockets sit in
/// one epoll set, the ring holds a handful of polls (the epoll set's, the
/// timers', Kafka's), and 4096 entries cost about 1 MiB of ring memory per
/// shard for a reason that is gone; they stay until a measurement says the
/// default does as well.
pub const RING_DEPTH: usize = 4096;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    shards: Vec<glommio::ExecutorJoinHandle<Result<(), shard::StartError>>>,
    metrics: Vec<Arc<ShardMetrics>>,
    shutdown: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    /// Each shard's poller's wake-up: the flags above are looked at when
    /// it turns, and an idle poller sleeps up to 250 ms.
    kicks: Vec<Arc<kick::Kick>>,
    ready: Arc<AtomicBool>,
    local_addrs: Vec<SocketAddr>,
    reloader: Arc<tls::Reloader>,
    /// Looks at the TLS files (`[tls_watch]`); none when off or without
    /// TLS listeners.
    watcher: Option<tls::watch::Watcher>,
    admin_addr: Option<SocketAddr>,
}

/// Sets `flag` (the stop or the drain) and wakes every shard's poller to
/// see it; whether it was set already.
fn tell_shards(flag: &AtomicBool, kicks: &[Arc<kick::Kick>]) -> bool {
    let already = flag.swap(true, Ordering::Relaxed);
    for kick in kicks {
        kick.kick();
    }
    already
}

/// The admin endpoint: `/metrics` over every shard and the TLS
/// reloader, `/livez` on each shard's heartbeat, `/readyz` on `ready`,
/// `POST /reload`, `POST /drain` and `GET /cars/<client id>` (asked of
/// the shard holding the car through the registry) behind the admin token.
fn admin_endpoint(
    config: &Config,
    metrics: &[Arc<ShardMetrics>],
    reloader: &Arc<tls::Reloader>,
    ready: &Arc<AtomicBool>,
    drain: &Arc<AtomicBool>,
    kicks: &[Arc<kick::Kick>],
    registry: &Arc<registry::Registry>,
) -> Result<ops::admin::Endpoint, Error> {
    let token = ops::admin::Token::load(config.admin.token_file.as_deref(), ops::admin::TOKEN_ENV)?;
    let render = {
        let (metrics, reloader) = (metrics.to_vec(), reloader.clone());
        Box::new(move || {
            let mut page = metrics::page(&metrics);
            reloader.render(&mut page);
            page.finish()
        })
    };
    let heartbeats = ops::admin::Heartbeats::new(
        (0..metrics.len()).map(|id| format!("shard {id}")).collect(),
        Duration::from_secs(config.admin.liveness_timeout_secs),
        {
            let metrics = metrics.to_vec();
            move || {
                metrics
                    .iter()
                    .map(|m| m.heartbeat.load(Ordering::Relaxed))
                    .collect()
            }
        },
    );
    let reload = {
        let reloader = reloader.clone();
        Box::new(move || reloader.reload()) as ops::admin::Action
    };
    let drain = {
        let (drain, ready, metrics, kicks) = (
            drain.clone(),
            ready.clone(),
            metrics.to_vec(),
            kicks.to_vec(),
        );
        Box::new(move || {
            ready.store(false, Ordering::Relaxed);
            // Counted before the shards hear of it: kicked, they start
            // closing at once.
            let open = metrics::open_connections(&metrics);
            let already = tell_shards(&drain, &kicks);
            Ok(if already {
                format!("draining already: {open} connections open\n")
            } else {
                tracing::info!(connections = open, "POST /drain: draining");
                format!("draining {open} connections\n")
            })
        }) as ops::admin::Action
    };
    let cars = {
        let registry = registry.clone();
        Box::new(move |client_id: &str, respond| registry.inspect(client_id, respond))
            as ops::admin::Lookup
    };
    Ok(ops::admin::Endpoint::new(render, ready.clone())
        .action("/reload", reload)
        .action("/drain", drain)
        .lookup("/cars/", cars)
        .heartbeats(heartbeats)
        .token(token)
        .limits(config.admin.limits()))
}

impl Gateway {
    /// Validates `config`, reads the Kafka properties it takes from files
    /// and environment variables, starts every shard and returns once all
    /// listen.
    pub fn start(mut config: Config) -> Result<Self, Error> {
        config.validate()?;
        config.kafka.read_secrets()?;
        let cpus = pinning::affinity_mask();
        let count = match config.shards {
            0 => cpus.len().max(1),
            n => n,
        };
        let decision = pinning::decide(&cpus, &pinning::online_cpus(), config.pin);
        tracing::info!(shards = count, "{}", decision.reason);
        let limits = startup::check(&config, count)?;
        tracing::debug!(
            open_files = limits.files,
            memlock = limits.memlock,
            "start-up checks passed"
        );
        let config = Arc::new(config);
        let shutdown = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let metrics: Vec<Arc<ShardMetrics>> = (0..count)
            .map(|_| Arc::new(ShardMetrics::default()))
            .collect();
        let kicks: Vec<Arc<kick::Kick>> = (0..count).map(|_| Arc::default()).collect();
        let listeners = config.listeners();
        // Looked at before they are loaded: a change during the load is
        // a change to the watcher.
        let watched = tls::watch::Files::of(&listeners);
        let before = watched.look();
        let mut doors = Vec::new();
        for listener in listeners {
            // The same loading as `gateway check-config`'s.
            let tls = startup::terminator(&listener)?;
            doors.push(shard::Door { listener, tls });
        }
        let reloader = Arc::new(tls::Reloader::new(
            doors
                .iter()
                .filter_map(|door| Some((door.listener.address, door.tls.clone()?)))
                .collect(),
        ));
        // Stopped and joined when dropped, should the start fail below.
        let watcher = match config.tls_watch.poll_secs {
            0 => None,
            _ if watched.is_empty() => None,
            secs => {
                tracing::info!(
                    poll_secs = secs,
                    settle_secs = config.tls_watch.settle_secs,
                    "watching the TLS files for changes"
                );
                Some(
                    tls::watch::Watcher::spawn(
                        watched,
                        before,
                        reloader.clone(),
                        Duration::from_secs(secs),
                        Duration::from_secs(config.tls_watch.settle_secs),
                    )
                    .map_err(Error::TlsWatcher)?,
                )
            }
        };

        let (registry, mut inboxes) = registry::Registry::new(kicks.clone());
        let registry = Arc::new(registry);
        inboxes.reverse();

        let admin_addr = match config.admin.listen.as_str() {
            "" => None,
            addr => Some(
                admin_endpoint(
                    &config, &metrics, &reloader, &ready, &drain, &kicks, &registry,
                )?
                .spawn(addr, shutdown.clone())
                .map_err(|source| Error::Admin {
                    address: addr.to_owned(),
                    source,
                })?,
            ),
        };

        let (bridge, per_bridge) = (
            config.downlink.bridge_id(),
            match config.downlink.shards_per_bridge {
                0 => u32::try_from(count).unwrap_or(u32::MAX),
                n => n,
            },
        );
        if config.downlink.enabled {
            if u32::try_from(count).unwrap_or(u32::MAX) > per_bridge {
                return Err(Error::SlotsShared {
                    shards: count,
                    per_bridge,
                });
            }
            tracing::info!(
                bridge,
                shards_per_bridge = per_bridge,
                first_slot = shard::slot_number(bridge, per_bridge, 0),
                "downlink on"
            );
        }
        // Shard 0 binds first, so that with port 0 every shard shares the
        // ports it was given.
        let mut shards = Vec::with_capacity(count);
        for (id, shard_metrics) in metrics.iter().enumerate() {
            let cpu = decision.placement.cpu(id);
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let (config, shard_metrics, stop) =
                (config.clone(), shard_metrics.clone(), shutdown.clone());
            let enabled = config.downlink.enabled;
            let shard_doors = doors.clone();
            let shard_drain = drain.clone();
            // One inbox and one kick per shard, made above for `count`.
            let (Some(orders), Some(kick)) = (inboxes.pop(), kicks.get(id).cloned()) else {
                return Err(Error::ShardExited { shard: id });
            };
            let registry = registry.clone();
            let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("shard-{id}"))
                .ring_depth(RING_DEPTH);
            if config.detect_stalls {
                // A task that hogs its core delays every car on the shard:
                // glommio logs a warning with a backtrace when one does.
                builder =
                    builder.detect_stalls(Some(Box::new(glommio::DefaultStallDetectionHandler {})));
            }
            let handle = builder
                .spawn(move || {
                    shard::serve(shard::Start {
                        id,
                        shards: count,
                        kick,
                        config,
                        doors: shard_doors,
                        metrics: shard_metrics,
                        shutdown: stop,
                        drain: shard_drain,
                        registry,
                        orders,
                        slot: enabled.then(|| shard::slot_number(bridge, per_bridge, id)),
                        bound: bound_tx,
                    })
                })
                .map_err(|error| Error::Executor {
                    shard: id,
                    cpu,
                    source: std::io::Error::from(error),
                })?;
            shards.push(handle);
            match bound_rx.recv() {
                Ok(Ok(addresses)) => {
                    for (door, address) in doors.iter_mut().zip(addresses) {
                        door.listener.address = address;
                    }
                }
                Ok(Err(error)) => {
                    tell_shards(&shutdown, &kicks);
                    return Err(Error::Shard {
                        shard: id,
                        source: error,
                    });
                }
                Err(_) => {
                    // The executor never ran: its ring could not be made.
                    let failed = shards.pop().map(glommio::ExecutorJoinHandle::join);
                    tell_shards(&shutdown, &kicks);
                    if let Some(Err(error)) = failed {
                        return Err(Error::IoUringRefused {
                            shard: id,
                            source: std::io::Error::from(error),
                        });
                    }
                    return Err(Error::ShardExited { shard: id });
                }
            }
        }
        // The expiry gauge names each listener by the address it got.
        reloader.bound(
            doors
                .iter()
                .filter(|door| door.tls.is_some())
                .map(|door| door.listener.address)
                .collect(),
        );
        ready.store(true, Ordering::Relaxed);
        Ok(Self {
            shards,
            metrics,
            shutdown,
            drain,
            kicks,
            ready,
            local_addrs: doors.iter().map(|door| door.listener.address).collect(),
            reloader,
            watcher,
            admin_addr,
        })
    }

    /// The address of the first MQTT listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The addresses of all MQTT listeners, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Reads every TLS listener's certificate, key, CA and CRL files
    /// again (SIGHUP, `POST /reload`; the watcher does the same when it
    /// sees them change). New connections use what loaded, live ones keep
    /// theirs; a listener whose files do not load keeps its old ones, and
    /// the error says which file and why.
    pub fn reload_tls(&self) -> Result<String, String> {
        self.reloader.reload()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Per-shard counters.
    pub fn metrics(&self) -> &[Arc<ShardMetrics>] {
        &self.metrics
    }

    /// Setting this flag stops the gateway (signal handlers set it): an
    /// idle shard sees it within 250 ms; [`Gateway::stop`] tells every
    /// shard at once.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Starts the drain (as `POST /drain` does): not ready any more, no
    /// new connection accepted, the open ones closed at `drain.closes_per_sec`
    /// (faster if needed to end within `drain.max_secs`), so that cars
    /// reconnect elsewhere as a trickle. The process stays until stopped.
    pub fn drain(&self) {
        self.ready.store(false, Ordering::Relaxed);
        // Counted before the shards hear of it: kicked, they start closing
        // at once.
        let open = metrics::open_connections(&self.metrics);
        if !tell_shards(&self.drain, &self.kicks) {
            tracing::info!(connections = open, "draining");
        }
    }

    /// Each shard's poller turns so far: all of them advancing means every
    /// shard is alive (the systemd watchdog is fed only then).
    pub fn heartbeats(&self) -> Vec<u64> {
        self.metrics
            .iter()
            .map(|m| m.heartbeat.load(Ordering::Relaxed))
            .collect()
    }

    /// Connections open now, all shards.
    pub fn open_connections(&self) -> i64 {
        metrics::open_connections(&self.metrics)
    }

    /// Stops accepting, closes connections, flushes and joins.
    pub fn stop(self) -> Result<(), Error> {
        self.ready.store(false, Ordering::Relaxed);
        tell_shards(&self.shutdown, &self.kicks);
        self.join()
    }

    /// Waits until the shutdown flag is set and every shard has finished,
    /// then stops the TLS file watcher.
    pub fn join(mut self) -> Result<(), Error> {
        let mut result = Ok(());
        for (id, shard) in self.shards.into_iter().enumerate() {
            match shard.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    result = Err(Error::ShardStopped {
                        shard: id,
                        source: Box::new(error),
                    })
                }
                Err(error) => {
                    result = Err(Error::ShardFailed {
                        shard: id,
                        reason: error.to_string(),
                    })
                }
            }
        }
        if let Some(mut watcher) = self.watcher.take() {
            watcher.stop();
        }
        self.ready.store(false, Ordering::Relaxed);
        self.shutdown.store(true, Ordering::Relaxed);
        result
    }
}
