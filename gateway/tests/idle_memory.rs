//! Gateway memory per idle connection, measured on the real binary: the
//! growth of its resident set from 500 to 10,500 connected, silent cars,
//! and again once each of them has published one position (a car between
//! two publishes is what a fleet mostly is).

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{RawClient, resident_kib, spawn_binary};
use testkit::Broker;

/// ARCHITECTURE goal: at most 2 KiB of gateway memory per idle connection.
const GOAL_BYTES: u64 = 2048;

#[test]
fn idle_connections_cost_little_memory() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let log = tempfile::tempfile().unwrap();
    let (mut child, addr) = spawn_binary(&broker, &log, &["--log-format", "json"]);
    let connect = |range: std::ops::Range<usize>| -> Vec<RawClient> {
        range
            .map(|i| {
                let (client, code) = RawClient::connect(addr, &format!("VIN-IDLE-{i:08}"), 600);
                assert_eq!(code, 0);
                client
            })
            .collect()
    };
    // Warm up allocator arenas and maps before the baseline.
    let mut cars = connect(0..500);
    std::thread::sleep(Duration::from_millis(500));
    let baseline = resident_kib(child.id());
    cars.extend(connect(500..10_500));
    std::thread::sleep(Duration::from_millis(500));
    let loaded = resident_kib(child.id());
    let per_connection = (loaded.saturating_sub(baseline)) * 1024 / 10_000;
    eprintln!(
        "resident {baseline} KiB with 500 idle cars, {loaded} KiB with 10,500: \
         {per_connection} bytes per idle connection"
    );

    // Each car publishes a loadgen-sized position once; all of them are
    // in Kafka (so every connection has handled its PUBLISH and is back
    // waiting) before the resident set is read again.
    let uplink = broker.collector("cs.uplink");
    let position = [b'.'; 100];
    for car in &mut cars {
        car.publish("UL/POS", &position);
    }
    uplink.collect(cars.len(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let published = resident_kib(child.id());
    let per_publisher = (published.saturating_sub(baseline)) * 1024 / 10_000;
    eprintln!(
        "resident {published} KiB once every car published: \
         {per_publisher} bytes per connection"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(cars);
    assert!(
        per_connection <= GOAL_BYTES,
        "{per_connection} bytes per idle connection (goal {GOAL_BYTES})"
    );
    assert!(
        per_publisher <= GOAL_BYTES,
        "{per_publisher} bytes per connection after one publish each (goal {GOAL_BYTES})"
    );
}
