//! Overload limits and authorization, each refused as MQTT says and
//! counted: connections per shard, client id length, filters per session,
//! filter length, subscribe patterns, and a mapping rule that requires the
//! car's own id in the topic.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway::Gateway;
use gateway::mapping::Rule;
use gateway::metrics::Limit;
use gateway::session::CloseKind;
use testkit::{Broker, RawClient, WAIT};

fn limited(gateway: &Gateway, limit: Limit) -> u64 {
    common::total(gateway, |m| m.limited.get(limit))
}

fn closed(gateway: &Gateway, reason: CloseKind) -> u64 {
    common::total(gateway, |m| m.closed.get(reason))
}

/// CONNECT as `client_id`: the CONNACK code, `None` if closed first.
fn try_connect(addr: std::net::SocketAddr, client_id: &str) -> Option<u8> {
    let mut car = RawClient::connect_tcp(addr);
    car.send_connect(client_id, 30).ok()?;
    car.connack_or_closed()
}

#[test]
fn limits_and_authorization_refuse_and_count() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 1);
    config.limits.max_connections_per_shard = 3;
    config.limits.max_client_id_length = 24;
    config.limits.max_filters_per_session = 2;
    config.limits.max_filter_length = 24;
    config.authorization.subscribe = vec!["DL/{client_id}/#".to_owned()];
    let mut own = Rule::new("^UL/[^/]+/POS$", "cs.uplink");
    own.require_client_id = true;
    config.mapping = vec![own];
    let gateway = Gateway::start(config).unwrap();
    let addr = gateway.local_addr();

    // A client id over the limit: CONNACK 0x02 (identifier rejected).
    let (_, code) = RawClient::connect(addr, "VIN0000000000000000000001", 30);
    assert_eq!(code, 2);
    assert_eq!(limited(&gateway, Limit::ClientIdLength), 1);

    // Filters: own id allowed, another car's not, too long, too many.
    let (mut car, code) = RawClient::connect(addr, "VIN1", 30);
    assert_eq!(code, 0);
    let codes = car.subscribe(&[
        "DL/VIN1/#",
        "DL/VIN2/#",
        "DL/VIN1/a/filter/far/too/long",
        "DL/VIN1/WARN",
        "DL/VIN1/INFO",
    ]);
    assert_eq!(codes, [0x00, 0x80, 0x80, 0x00, 0x80]);
    assert_eq!(limited(&gateway, Limit::FilterLength), 1);
    assert_eq!(limited(&gateway, Limit::FiltersPerSession), 1);
    assert_eq!(
        common::total(&gateway, |m| m.subscribe_denied.load(Ordering::Relaxed)),
        1
    );

    // Publishing: the car's own topic goes to Kafka, another car's closes.
    car.publish("UL/VIN1/POS", b"own");
    let record = broker.collector("cs.uplink").collect(1, WAIT);
    assert_eq!(record[0].value.as_deref(), Some(&b"own"[..]));
    car.publish("UL/VIN2/POS", b"forged");
    car.expect_closed(WAIT);
    testkit::wait_until("the close", WAIT, || {
        closed(&gateway, CloseKind::ForbiddenTopic) == 1
    });

    // Three connections fill the shard; the fourth is closed on accept.
    let held: Vec<_> = (1..=3)
        .map(|n| {
            let (car, code) = RawClient::connect(addr, &format!("CAR{n}"), 30);
            assert_eq!(code, 0);
            car
        })
        .collect();
    let mut fourth = RawClient::connect_tcp(addr);
    // The gateway may have closed the connection before it is written.
    let _ = fourth.send_connect("CAR4", 30);
    assert!(
        fourth.expect_closed(WAIT).is_empty(),
        "no CONNACK when full"
    );
    assert_eq!(limited(&gateway, Limit::ConnectionsPerShard), 1);
    // One leaves: there is room again.
    held.into_iter().next().unwrap().disconnect();
    testkit::wait_until("room on the shard", Duration::from_secs(10), || {
        try_connect(addr, "CAR5") == Some(0)
    });
    gateway.stop().unwrap();
}

/// A car that stops reading is closed once the gateway's writes to it have
/// waited `mqtt.write_timeout_secs` for room, as `write_stall` (not as a
/// socket error), and nothing else is counted for it.
#[test]
fn a_car_that_stops_reading_is_closed_as_a_write_stall() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 1);
    config.mqtt.write_timeout_secs = 1;
    let gateway = Gateway::start(config).unwrap();
    let (mut car, code) = RawClient::connect(gateway.local_addr(), "VIN-DEAF", 60);
    assert_eq!(code, 0);

    // PINGREQ after PINGREQ, never reading a PINGRESP: the replies fill the
    // car's receive buffer and the gateway's send buffer, the gateway's
    // write waits and it stops reading, and then the car's own writes stop.
    car.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pings = [0xC0u8, 0x00].repeat(32 * 1024);
    let started = std::time::Instant::now();
    while car.stream.write_all(&pings).is_ok() {
        assert!(
            started.elapsed() < WAIT,
            "the gateway kept reading from a car that reads nothing"
        );
    }
    testkit::wait_until("the write-stall close", WAIT, || {
        closed(&gateway, CloseKind::WriteStall) == 1
    });
    assert_eq!(closed(&gateway, CloseKind::Io), 0);
    gateway.stop().unwrap();
}
