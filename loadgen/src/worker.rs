//! One worker process: a share of the fleet on one glommio executor.
//!
//! Each car is a task: it connects (from its source address), sends
//! CONNECT, waits for the CONNACK, subscribes if asked, then publishes one
//! message per interval until the run ends, and reads what the server sends
//! it (downlink messages: latency, duplicates, order). Every second the
//! worker prints one JSON line ([`WorkerTick`]) on stdout for the parent.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use glommio::timer::sleep;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use testkit::link::{Link, LinkProxy};

use crate::payload::{self, Arrivals};
use crate::report::ConnectFailures;
use crate::stats::{Buckets, histogram};

mod car;

pub use car::{SOURCE_PORT_BASE, SOURCE_PORTS, start_connect};

/// How long cars stay connected after the last publish, for downlink
/// messages in flight.
const LINGER_US: u64 = 3_000_000;

/// What one worker simulates (the parent's options, cut to its share).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub first_car: u64,
    pub cars: u64,
    pub targets: Vec<SocketAddr>,
    /// Source addresses to bind, one per `cars_per_source` cars (at most
    /// [`SOURCE_PORTS`]), each car to its own port; empty: let the kernel
    /// choose.
    pub sources: Vec<IpAddr>,
    pub cars_per_source: u64,
    /// This worker's share of the connect rate, cars per second.
    pub connect_rate: f64,
    pub publish_interval_ms: u64,
    /// The keep-alive asked for in CONNECT; `None`: three publish
    /// intervals, at least 60 s.
    #[serde(default)]
    pub keep_alive_secs: Option<u16>,
    pub payload_size: usize,
    /// Uplink topic; `{car}` and `{shard}` are replaced.
    pub topic: String,
    /// Subscribers of the peer mode: `{shard}` = car % shards.
    pub shards: u64,
    /// Filter to subscribe to after connecting; `{car}` is replaced.
    pub subscribe: Option<String>,
    /// Run start (µs since the epoch) and end of publishing.
    pub start_us: u64,
    pub end_us: u64,
    /// TLS with a client certificate per car; `None`: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsPlan>,
    /// A car the server closes before the run ends connects again (to
    /// the next target) and goes on publishing.
    #[serde(default)]
    pub reconnect: bool,
    /// Each car leaves about this often (seconds, spread by car), stays
    /// away 1–3 s and comes back; `None`: cars stay.
    #[serde(default)]
    pub churn_period_secs: Option<f64>,
    /// The link profile between the cars and their targets: the worker
    /// runs a proxy with its faults in front of each target
    /// (`testkit::link`); `None`: the cars connect straight.
    #[serde(default)]
    pub link: Option<String>,
}

/// The cars' TLS: a test PKI directory (see [`crate::tls`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsPlan {
    /// `ca.crt` (trusted for the server) and `cars/<client id>.{crt,key}`.
    pub dir: std::path::PathBuf,
    /// The name the server's certificate must carry.
    pub server_name: String,
    /// Each car connects once before its measured connection, which then
    /// resumes the TLS session (a ticket) instead of a full handshake.
    pub resume: bool,
}

/// One second of a worker, sent to the parent as a JSON line. Counters are
/// deltas since the previous tick.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerTick {
    pub connected_now: u64,
    pub connects: u64,
    pub connect_failures: u64,
    /// The same failures by cause.
    #[serde(default)]
    pub failed_by: ConnectFailures,
    pub connect_latency: Buckets,
    /// When the first and the latest CONNACK of this worker arrived (µs
    /// since the epoch; 0 before any).
    pub first_connack_us: u64,
    pub last_connack_us: u64,
    pub uplink_sent: u64,
    pub downlink_received: u64,
    pub downlink_duplicates: u64,
    pub downlink_out_of_order: u64,
    pub downlink_latency: Buckets,
    /// Closes the server initiated (or I/O errors) while publishing.
    pub dropped_connections: u64,
    /// Messages to cars loadgen did not send (another service's, such as
    /// the water-warning service's DL/WARN).
    pub other_downlink: u64,
    /// Set on the last line.
    pub done: bool,
}

#[derive(Debug)]
struct Stats {
    connected_now: Cell<u64>,
    connects: Cell<u64>,
    connect_failures: Cell<u64>,
    failed_by: Cell<ConnectFailures>,
    connect_latency: RefCell<Histogram<u64>>,
    first_connack_us: Cell<u64>,
    last_connack_us: Cell<u64>,
    uplink_sent: Cell<u64>,
    downlink: RefCell<Arrivals>,
    downlink_reported: Cell<(u64, u64, u64)>,
    downlink_latency: RefCell<Histogram<u64>>,
    dropped_connections: Cell<u64>,
    other_downlink: Cell<u64>,
    stop: Arc<AtomicBool>,
}

/// A car's connect failed, for the reason `cause` counts.
fn failed(stats: &Stats, cause: fn(&mut ConnectFailures) -> &mut u64) {
    bump(&stats.connect_failures);
    let mut by = stats.failed_by.get();
    *cause(&mut by) += 1;
    stats.failed_by.set(by);
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

impl Stats {
    fn tick(&self, done: bool) -> WorkerTick {
        let arrivals = self.downlink.borrow();
        let (unique, duplicates, out_of_order) = self.downlink_reported.replace((
            arrivals.unique,
            arrivals.duplicates,
            arrivals.out_of_order,
        ));
        let tick = WorkerTick {
            connected_now: self.connected_now.get(),
            connects: self.connects.replace(0),
            connect_failures: self.connect_failures.replace(0),
            failed_by: self.failed_by.take(),
            connect_latency: Buckets::of(&self.connect_latency.borrow()),
            first_connack_us: self.first_connack_us.get(),
            last_connack_us: self.last_connack_us.get(),
            uplink_sent: self.uplink_sent.replace(0),
            downlink_received: arrivals.unique - unique,
            downlink_duplicates: arrivals.duplicates - duplicates,
            downlink_out_of_order: arrivals.out_of_order - out_of_order,
            downlink_latency: Buckets::of(&self.downlink_latency.borrow()),
            dropped_connections: self.dropped_connections.replace(0),
            other_downlink: self.other_downlink.replace(0),
            done,
        };
        self.connect_latency.borrow_mut().reset();
        self.downlink_latency.borrow_mut().reset();
        tick
    }
}

/// Runs the plan on this thread; returns when the run ended (or SIGTERM).
pub fn run(mut plan: Plan, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    // With a link profile the cars connect to a proxy per target, on a
    // thread of its own, which stops when the run is over.
    let link = match plan.link.as_deref().map(Link::profile).transpose() {
        Err(error) => anyhow::bail!(error),
        Ok(link) => link.flatten(),
    };
    let proxies = match link {
        Some(link) => {
            let proxies = plan
                .targets
                .iter()
                .map(|target| LinkProxy::start(*target, link))
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| anyhow::anyhow!("starting the link proxy: {e}"))?;
            plan.targets = proxies.iter().map(LinkProxy::addr).collect();
            proxies
        }
        None => Vec::new(),
    };
    // Held here until the executor is done: the cars' connections end
    // before their proxies do.
    let proxies = Rc::new(proxies);
    let links = proxies.clone();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("loadgen-worker")
        // The kernel looks up cancelled requests among all pending polls in
        // a hash table sized by the ring: glommio's default of 128 entries
        // gives 8 buckets for the worker's thousands of cars (see the
        // gateway's RING_DEPTH).
        .ring_depth(4096)
        .make()
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?;
    executor.run(async move {
        let stats = Rc::new(Stats {
            connected_now: Cell::new(0),
            connects: Cell::new(0),
            connect_failures: Cell::new(0),
            failed_by: Cell::new(ConnectFailures::default()),
            connect_latency: RefCell::new(histogram()),
            first_connack_us: Cell::new(0),
            last_connack_us: Cell::new(0),
            uplink_sent: Cell::new(0),
            downlink: RefCell::new(Arrivals::default()),
            downlink_reported: Cell::new((0, 0, 0)),
            downlink_latency: RefCell::new(histogram()),
            dropped_connections: Cell::new(0),
            other_downlink: Cell::new(0),
            stop,
        });
        let plan = Rc::new(plan);
        let ticker = glommio::spawn_local(report_every_second(stats.clone(), plan.end_us));
        if let Some(link) = link.filter(|link| link.outages.is_some()) {
            glommio::spawn_local(links_back_at_the_end(links, link, plan.end_us)).detach();
        }
        let start =
            Instant::now() + Duration::from_micros(plan.start_us.saturating_sub(payload::now_us()));
        let mut cars = Vec::new();
        for i in 0..plan.cars {
            if stats.stop.load(Ordering::Relaxed) || payload::now_us() >= plan.end_us {
                break;
            }
            // Paced: car i starts at start + i / rate.
            let due = start + Duration::from_secs_f64(i as f64 / plan.connect_rate.max(0.001));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                sleep(wait).await;
            }
            cars.push(glommio::spawn_local(car::car(
                plan.clone(),
                stats.clone(),
                i,
            )));
        }
        for car in cars {
            car.await;
        }
        ticker.await;
    });
    Ok(())
}

/// When publishing ends every link comes back (an outage under way
/// ends, no new one begins): what the cars sent or were sent during an
/// outage then arrives and is counted. An outage delays messages; it
/// loses none, and the run does not end with some still held.
async fn links_back_at_the_end(proxies: Rc<Vec<LinkProxy>>, link: Link, end_us: u64) {
    sleep(Duration::from_micros(
        end_us.saturating_sub(payload::now_us()),
    ))
    .await;
    for proxy in proxies.iter() {
        proxy.set_link(Link {
            outages: None,
            ..link
        });
    }
}

async fn report_every_second(stats: Rc<Stats>, end_us: u64) {
    loop {
        sleep(Duration::from_secs(1)).await;
        let done = stats.stop.load(Ordering::Relaxed)
            || (payload::now_us() >= end_us && stats.connected_now.get() == 0);
        let line = serde_json::to_string(&stats.tick(done)).unwrap_or_default();
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        if done {
            stats.stop.store(true, Ordering::Relaxed);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::car::source_of;
    use super::*;

    fn plan(sources: usize, cars_per_source: u64) -> Plan {
        Plan {
            first_car: 0,
            cars: 0,
            targets: Vec::new(),
            sources: (0..sources)
                .map(|k| IpAddr::V4(Ipv4Addr::new(127, 9, 0, k as u8 + 1)))
                .collect(),
            cars_per_source,
            connect_rate: 1.0,
            publish_interval_ms: 1000,
            keep_alive_secs: None,
            payload_size: 64,
            topic: String::new(),
            shards: 1,
            subscribe: None,
            start_us: 0,
            end_us: 0,
            tls: None,
            reconnect: false,
            churn_period_secs: None,
            link: None,
        }
    }

    #[test]
    fn every_car_has_its_own_source_address_and_port() {
        let plan = plan(3, 20_000);
        let addresses: HashSet<SocketAddr> = (0..60_000)
            .filter_map(|car| source_of(&plan, car))
            .collect();
        assert_eq!(addresses.len(), 60_000);
        assert!(addresses.iter().all(|a| a.port() >= SOURCE_PORT_BASE));
        assert!(
            addresses
                .iter()
                .all(|a| a.port() < SOURCE_PORT_BASE + 20_000)
        );
    }

    #[test]
    fn cars_per_source_is_capped_at_the_port_span() {
        let plan = plan(2, 1_000_000);
        let last = source_of(&plan, SOURCE_PORTS - 1).map(|a| a.port());
        assert_eq!(last, Some(59_999));
        assert_eq!(
            source_of(&plan, SOURCE_PORTS).map(|a| a.port()),
            Some(SOURCE_PORT_BASE)
        );
    }

    #[test]
    fn no_sources_leaves_the_choice_to_the_kernel() {
        assert_eq!(source_of(&plan(0, 20_000), 7), None);
    }
}
