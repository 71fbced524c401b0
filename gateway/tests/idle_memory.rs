//! Gateway memory per connection, measured on the real binary with the
//! downlink on: the growth of its resident set from 500 to 10,500 cars,
//! read at each step of a car's life as a fleet lives it: connected,
//! subscribed to its downlink (`DL/#`), and after publishing one position
//! (a car between two publishes is what a fleet mostly is).

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::num::NonZeroU16;
use std::time::Duration;

use bytes::BytesMut;
use codec::{QoS, Subscribe};
use common::{RawClient, resident_kib, spawn_binary};
use testkit::Broker;

/// ARCHITECTURE goal: at most 2 KiB of gateway memory per connection, for
/// the release build. A debug build's tasks are larger (its futures are
/// laid out without optimization: about 2,100 bytes subscribed, 2,200
/// after a publish), so there the bound only catches gross regressions
/// such as a 4 KiB buffer held per car; `scripts/test.sh` also runs this
/// test on the release build.
const GOAL_BYTES: u64 = if cfg!(debug_assertions) { 2560 } else { 2048 };
const WARM: usize = 500;
const CARS: usize = 10_000;

#[test]
fn connections_cost_little_memory() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    broker.create_topic("mqtt.sessions", 1, &[("cleanup.policy", "compact")]);
    broker.create_topic("mqtt.downlink", 2, &[]);
    let log = tempfile::tempfile().unwrap();
    let (mut child, addr) = spawn_binary(&broker, &log, &["--bridge-id", "0"]);
    let connect = |range: std::ops::Range<usize>| -> Vec<RawClient> {
        range
            .map(|i| {
                let (client, code) = RawClient::connect(addr, &format!("VIN-IDLE-{i:08}"), 600);
                assert_eq!(code, 0);
                client
            })
            .collect()
    };
    let settle = || std::thread::sleep(Duration::from_millis(500));
    let per_connection =
        |kib: u64, baseline: u64| kib.saturating_sub(baseline) * 1024 / CARS as u64;

    // Warm up allocator arenas and maps before the baseline.
    let mut cars = connect(0..WARM);
    settle();
    let baseline = resident_kib(child.id());
    cars.extend(connect(WARM..WARM + CARS));
    settle();
    let connected = per_connection(resident_kib(child.id()), baseline);

    let mut subscribe = BytesMut::new();
    Subscribe::new(NonZeroU16::MIN, [("DL/#", QoS::AtMostOnce)])
        .unwrap()
        .encode(&mut subscribe)
        .unwrap();
    for car in &mut cars {
        car.send(&subscribe);
    }
    for car in &mut cars {
        let mut suback = [0u8; 5];
        std::io::Read::read_exact(&mut car.stream, &mut suback).unwrap();
        assert_eq!(suback[0], 0x90, "not a SUBACK: {suback:?}");
    }
    settle();
    let subscribed = per_connection(resident_kib(child.id()), baseline);

    // Each car publishes a loadgen-sized position once; all of them are
    // in Kafka (so every connection has handled its PUBLISH and is back
    // waiting) before the resident set is read again.
    let uplink = broker.collector("cs.uplink");
    let position = [b'.'; 100];
    for car in &mut cars {
        car.publish("UL/POS", &position);
    }
    uplink.collect(cars.len(), Duration::from_secs(60));
    settle();
    let published = per_connection(resident_kib(child.id()), baseline);
    eprintln!(
        "bytes per connection: {connected} connected, {subscribed} subscribed, \
         {published} after one publish each"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(cars);
    for (step, bytes) in [
        ("connected", connected),
        ("subscribed", subscribed),
        ("after one publish", published),
    ] {
        assert!(
            bytes <= GOAL_BYTES,
            "{bytes} bytes per connection {step} (goal {GOAL_BYTES})"
        );
    }
}
