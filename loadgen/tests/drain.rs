//! A gateway drained mid-run while its cars publish: they reconnect to the
//! other gateway at the drain's pace, nothing they publish is lost, and
//! all of them are back.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::{Fleet, gateway_at, gateway_with_admin, metric, router, topics};
use testkit::Broker;

const CARS: u64 = 600;
const RATE: u32 = 100;

fn post(addr: SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "POST {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_drained_gateways_cars_move_to_the_other_and_lose_nothing() {
    let broker = Broker::start();
    topics(&broker, 4, 4);
    let _router = router(&broker);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("[drain]\ncloses_per_sec = {RATE}\n")).unwrap();
    let (_stays, stays, stays_admin) = gateway_with_admin(&broker, 0, Some(config.path()));
    let (_drained, drained, drained_admin) = gateway_with_admin(&broker, 1, Some(config.path()));

    let cars = CARS.to_string();
    let fleet = Fleet::start(
        &broker,
        &[stays, drained],
        &[
            "--cars",
            &cars,
            "--reconnect",
            "--publish-interval-ms",
            "1000",
            "--downlink-rate",
            "0",
            "--no-subscribe",
            "--warmup-secs",
            "3",
            "--duration-secs",
            "10",
            "--recount",
        ],
    );
    // Half the cars on each gateway, then the drain: 300 at 100/s.
    testkit::wait_until(
        "the fleet on both gateways",
        Duration::from_secs(30),
        || metric(drained_admin, "carbridge_gateway_connections_open") >= (CARS / 2) as f64,
    );
    let said = post(drained_admin, "/drain");
    assert!(said.contains("draining 300 connections"), "{said}");
    // Halfway through the drain: some moved, not all.
    std::thread::sleep(Duration::from_millis(1500));
    let left = metric(drained_admin, "carbridge_gateway_connections_open");
    assert!(left > 0.0 && left < 300.0, "{left} left after 1.5 s");
    testkit::wait_until("the drain", Duration::from_secs(30), || {
        metric(drained_admin, "carbridge_gateway_connections_open") == 0.0
    });
    testkit::wait_until("every car back", Duration::from_secs(30), || {
        metric(stays_admin, "carbridge_gateway_connections_open") == CARS as f64
    });

    let report = fleet.report();
    // Judged on the topic read again after the run, as below: loadgen's
    // live read missed one record of 7,432 once (01:02, the suite beside
    // a build) that the gateways had produced and had acknowledged.
    let in_topic = report.uplink_in_topic.as_ref().expect("run with --recount");
    assert_eq!(
        in_topic.unique, report.uplink.sent,
        "{in_topic:?}; sent: {:?}",
        report.uplink
    );
    // Duplicates too: the live read once saw a record twice (06:17 on
    // 2026-12-07, the suite alone; lost 1, duplicated 1) where the topic
    // held each once.
    assert_eq!(in_topic.duplicates, 0, "{in_topic:?}");
    assert_eq!(report.connect.connected, CARS + 300, "{:?}", report.connect);
    assert_eq!(
        metric(
            drained_admin,
            "carbridge_gateway_connections_closed_total{reason=\"drained\"}"
        ),
        300.0
    );
}

/// 4,000 publishing cars drained five times between two gateways, each
/// drained one restarted before the next drain: every message a car sent
/// arrives (a drained connection is half-closed and read until the car
/// closes it; closed at once, the bytes the car sent into the close would
/// die with the reset).
#[test]
fn five_drains_of_4000_publishing_cars_lose_nothing() {
    const CARS: u64 = 4000;
    const DRAINS: usize = 5;
    let broker = Broker::start();
    topics(&broker, 4, 4);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[drain]\ncloses_per_sec = 2000\n").unwrap();
    let free = || SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let slots = [(free(), free()), (free(), free())];
    let start = |slot: usize| {
        let (mqtt, admin) = slots[slot];
        gateway_at(&broker, slot as u32, Some(config.path()), 2, mqtt, admin)
    };
    let mut gateways = [Some(start(0)), Some(start(1))];
    let open = |slot: usize| metric(slots[slot].1, "carbridge_gateway_connections_open");

    let cars = CARS.to_string();
    let fleet = Fleet::start(
        &broker,
        &[slots[0].0, slots[1].0],
        &[
            "--cars",
            &cars,
            "--reconnect",
            "--connect-rate",
            "2000",
            "--publish-interval-ms",
            "2000",
            "--downlink-rate",
            "0",
            "--no-subscribe",
            "--warmup-secs",
            "5",
            "--duration-secs",
            "90",
            "--recount",
        ],
    );
    testkit::wait_until("the fleet connected", Duration::from_secs(60), || {
        open(0) + open(1) >= CARS as f64
    });
    for drain in 0..DRAINS {
        // The slot the most cars are on.
        let victim = usize::from(open(1) > open(0));
        let other = 1 - victim;
        let said = post(slots[victim].1, "/drain");
        assert!(said.contains("draining"), "{said}");
        testkit::wait_until("the drain", Duration::from_secs(60), || open(victim) == 0.0);
        testkit::wait_until("every car back", Duration::from_secs(60), || {
            open(other) == CARS as f64
        });
        // The drained gateway flushes what it produced and exits; a new
        // one takes its place for the next drain.
        let mut drained = gateways[victim].take().unwrap();
        drained.signal("TERM");
        assert!(drained.wait_exit(Duration::from_secs(60)).success());
        eprintln!("drain {}: {CARS} cars moved to gateway {other}", drain + 1);
        gateways[victim] = Some(start(victim));
    }

    let report = fleet.report();
    let up = &report.uplink;
    let in_topic = report.uplink_in_topic.as_ref().expect("run with --recount");
    eprintln!(
        "{} messages sent; the live read: {} lost, {} duplicated; Kafka holds {} of them          ({} duplicates); {} connects",
        up.sent,
        up.lost,
        up.duplicates,
        in_topic.unique,
        in_topic.duplicates,
        report.connect.connected
    );
    assert!(up.sent > 100_000, "{up:?}");
    // Judged on the topic read again after the run: loadgen's live read on
    // a loaded tansu was seen to miss a record Kafka held. A duplicate is
    // the producer's retry of a batch (not idempotent on tansu, see
    // docs/gateway.md `kafka.properties`), printed, not a loss.
    assert_eq!(in_topic.unique, up.sent, "{in_topic:?}; sent: {up:?}");
}
