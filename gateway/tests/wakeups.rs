//! How often a shard wakes, with a fleet publishing at its usual pace and
//! with a quiet one: at 1,000 PUBLISH a second, each from a different car,
//! the CPU a gateway spends is mostly wake-ups of its shard, not the
//! handling of PUBLISH (BENCHMARKS.md, "CPU per message: one clock per
//! shard"). The shard gathers events that come faster than one per 5 ms
//! and serves its acknowledgements on the same ticks, and a quiet shard
//! wakes only for its sweeper's ticks; these tests fail if those wake-ups
//! stop sharing ticks.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{config, total};
use gateway::Gateway;
use testkit::{Broker, RawClient, WAIT};

const CARS: usize = 1000;
/// One PUBLISH this often, each from the next car: about 1,000 a second,
/// a fleet of 10,000 cars that each publish every 10 s.
const PACE: Duration = Duration::from_millis(1);
const MEASURED: Duration = Duration::from_secs(4);
/// The shard's ticks are 5 ms apart (200 a second); events in between
/// (a Kafka client's wake-up of the poller, the sweep) add a few dozen.
/// Before the shard had one clock, the gathering and the acknowledgements
/// each kept their own 5 ms timer and the shard woke about 520 times a
/// second at this pace (`scripts/stack.sh`, 10,000 cars every 10 s).
const MOST_WAKEUPS_PER_SEC: f64 = 350.0;

/// The tests count the wake-ups of every thread named `shard-0…` in this
/// process: one gateway at a time.
static ONE_GATEWAY: Mutex<()> = Mutex::new(());

/// Voluntary context switches (the thread went to sleep and was woken)
/// of this process's threads named `shard-0…`.
fn shard_sleeps() -> u64 {
    let mut sleeps = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if !name.starts_with("shard-0") {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))
            .unwrap();
        sleeps += line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    sleeps
}

/// What a test runs against: one gateway of one shard on its own broker,
/// with `CARS` cars connected, and this test's turn.
struct Fleet {
    cars: Vec<RawClient>,
    gateway: Gateway,
    _broker: Broker,
    _alone: MutexGuard<'static, ()>,
}

impl Fleet {
    /// Waits for its turn, then connects the cars (`{name}-00000000`...).
    fn start(name: &str) -> Self {
        let alone = ONE_GATEWAY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let broker = Broker::start();
        broker.create_topic("cs.uplink", 1, &[]);
        let gateway = Gateway::start(config(&broker, 1)).unwrap();
        let addr = gateway.local_addr();
        let cars = (0..CARS)
            .map(|i| {
                let (client, code) = RawClient::connect(addr, &format!("{name}-{i:08}"), 600);
                assert_eq!(code, 0);
                client
            })
            .collect();
        Self {
            cars,
            gateway,
            _broker: broker,
            _alone: alone,
        }
    }

    /// Closes the cars, then stops the gateway.
    fn stop(self) {
        drop(self.cars);
        self.gateway.stop().unwrap();
    }
}

/// Runs `during`, and says how many times a second the shard woke
/// meanwhile, and over how many seconds.
fn wakeups_during<T>(during: impl FnOnce() -> T) -> (T, f64, f64) {
    let sleeps = shard_sleeps();
    let started = Instant::now();
    let result = during();
    let elapsed = started.elapsed().as_secs_f64();
    let wakeups = (shard_sleeps() - sleeps) as f64 / elapsed;
    (result, wakeups, elapsed)
}

#[test]
fn a_fleet_at_its_pace_wakes_the_shard_once_per_tick() {
    let mut fleet = Fleet::start("VIN-WAKE");
    let (gateway, cars) = (&fleet.gateway, &mut fleet.cars);
    let received = || total(gateway, |m| m.publish_received.load(Ordering::Relaxed));
    let acked = || total(gateway, |m| m.publish_acked.load(Ordering::Relaxed));

    // One round first: the producer has met its broker, and each car has
    // been served once.
    for car in cars.iter_mut() {
        car.publish("UL/POS", &[b'.'; 100]);
        std::thread::sleep(PACE);
    }
    testkit::wait_until("the first round acknowledged", WAIT, || {
        acked() == CARS as u64
    });

    let (sent, wakeups, elapsed) = wakeups_during(|| {
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < MEASURED {
            cars[sent % CARS].publish("UL/POS", &[b'.'; 100]);
            sent += 1;
            std::thread::sleep(PACE);
        }
        sent
    });
    let rate = sent as f64 / elapsed;
    testkit::wait_until("every PUBLISH received", WAIT, || {
        received() == (CARS + sent) as u64
    });
    eprintln!(
        "{sent} PUBLISH in {elapsed:.1} s ({rate:.0}/s): the shard woke {wakeups:.0} times a second"
    );
    assert!(
        rate > 1000.0 / 5.0 * 2.0,
        "too few PUBLISH a second ({rate:.0}) to gather: the test proves nothing"
    );
    assert!(
        wakeups <= MOST_WAKEUPS_PER_SEC,
        "the shard woke {wakeups:.0} times a second at {rate:.0} PUBLISH/s (at most {MOST_WAKEUPS_PER_SEC})"
    );
    fleet.stop();
}

/// The sweeper's 4 ticks a second, which the idle poller shares, and a
/// little room: the poller's own 25 ms made 44.
const MOST_WAKEUPS_PER_SEC_QUIET: f64 = 8.0;

#[test]
fn a_quiet_fleet_wakes_the_shard_only_for_its_sweeps() {
    let fleet = Fleet::start("VIN-QUIET");
    let parked = || {
        total(&fleet.gateway, |m| {
            u64::try_from(m.connections_parked.load(Ordering::Relaxed)).unwrap()
        })
    };
    testkit::wait_until("every car parked", WAIT, || parked() == CARS as u64);

    let ((), wakeups, _) = wakeups_during(|| std::thread::sleep(MEASURED));
    eprintln!("{CARS} quiet cars: the shard woke {wakeups:.1} times a second");
    assert_eq!(parked(), CARS as u64, "a car stopped being quiet");
    assert!(
        wakeups <= MOST_WAKEUPS_PER_SEC_QUIET,
        "the shard woke {wakeups:.1} times a second for {CARS} quiet cars (at most {MOST_WAKEUPS_PER_SEC_QUIET})"
    );
    fleet.stop();
}
