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

    // PINGREQ after PINGREQ, never reading a PINGRESP, until the gateway
    // closes: the replies fill the car's receive buffer and the gateway's
    // send buffer (megabytes on loopback, as the kernel tunes them), the
    // gateway's write waits and it stops reading, the car's writes time
    // out, and a second later the gateway gives up on it.
    car.stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pings = [0xC0u8, 0x00].repeat(32 * 1024);
    testkit::wait_until("the write-stall close", WAIT, || {
        let _ = car.stream.write(&pings);
        closed(&gateway, CloseKind::WriteStall) == 1
    });
    assert_eq!(closed(&gateway, CloseKind::Io), 0);
    gateway.stop().unwrap();
}

/// The first `sent` bytes of a PUBLISH on UL/POS that declares a payload
/// of `payload` bytes.
fn publish_head(payload: usize, sent: usize) -> Vec<u8> {
    let topic = b"UL/POS";
    let mut remaining = 2 + topic.len() + payload;
    let mut packet = vec![0x30];
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        packet.push(if remaining > 0 { byte | 0x80 } else { byte });
        if remaining == 0 {
            break;
        }
    }
    packet.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    packet.extend_from_slice(topic);
    packet.resize(sent, b'x');
    packet
}

/// Cars that begin a 250 kB PUBLISH and stall hold about what they sent,
/// not the declared length; the shard's budget closes the largest holder
/// first; and every stalled packet is closed as `packet_timeout` once it
/// has not completed within `mqtt.packet_timeout_secs`.
#[test]
fn stalled_partial_packets_are_bounded_and_closed() {
    const CARS: usize = 200;
    const SENT: usize = 100;
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 1);
    config.mqtt.packet_timeout_secs = 3;
    config.mqtt.max_packet_size = 1024 * 1024;
    config.limits.max_partial_bytes_per_shard = 64 * 1024;
    let gateway = Gateway::start(config).unwrap();
    let addr = gateway.local_addr();
    let partial_bytes =
        || common::total(&gateway, |m| m.partial_bytes.load(Ordering::Relaxed) as u64);

    let resident_before = common::resident_kib(std::process::id());
    // All connected first, then all stalled at once: a connect is a round
    // trip, which can wait a gathering window (up to 20 ms) on the
    // shard, and 200 of them take longer than the packet timeout.
    let mut stalled: Vec<RawClient> = (0..CARS)
        .map(|i| {
            let (car, code) = RawClient::connect(addr, &format!("VIN-STALL-{i}"), 600);
            assert_eq!(code, 0);
            car
        })
        .collect();
    for car in &mut stalled {
        car.send(&publish_head(250_000, SENT));
    }
    testkit::wait_until("the stalled packets held", WAIT, || {
        partial_bytes() == (CARS * SENT) as u64
    });
    // Each once held a 64 KiB read buffer (12.5 MiB for 200), then the
    // 4 KiB of a parked connection's first read. The process is the test's
    // too (its clients, the debug build's tasks): 6-7 KiB a car here, where
    // the release gateway alone grows by 2.8 KiB (scripts/partial-bench.sh).
    let grown = common::resident_kib(std::process::id()).saturating_sub(resident_before);
    eprintln!("{CARS} stalled packets of {SENT} bytes: the resident set grew by {grown} KiB");
    assert!(
        grown < (CARS * 10) as u64,
        "{CARS} stalled packets grew the resident set by {grown} KiB"
    );

    // One car sends 60,000 bytes of its packet: 80,000 held, over the
    // 64 KiB budget, and it holds the most.
    let (mut big, code) = RawClient::connect(addr, "VIN-BIG", 600);
    assert_eq!(code, 0);
    big.send(&publish_head(250_000, 60_000));
    testkit::wait_until("the largest holder closed", WAIT, || {
        closed(&gateway, CloseKind::PartialBudget) == 1
    });
    assert_eq!(limited(&gateway, Limit::PartialBytes), 1);
    assert_eq!(closed(&gateway, CloseKind::PacketTimeout), 0);

    // The others' packets do not complete: closed once they are 3 s old.
    testkit::wait_until("the stalled packets closed", WAIT, || {
        closed(&gateway, CloseKind::PacketTimeout) == CARS as u64
    });
    assert_eq!(partial_bytes(), 0);
    assert_eq!(closed(&gateway, CloseKind::PartialBudget), 1);
    drop(stalled);
    gateway.stop().unwrap();
}

/// `count` QoS 0 PUBLISH packets to `topic`, each with its number as
/// payload, in one buffer: sent at once, they arrive in a few reads.
fn publishes(topic: &str, count: usize) -> Vec<u8> {
    let mut bytes = bytes::BytesMut::new();
    for n in 0..count {
        codec::Publish::qos0(topic, n.to_string().as_bytes())
            .unwrap()
            .encode(&mut bytes)
            .unwrap();
    }
    bytes.to_vec()
}

/// A car that sends far more than its uplink limit at once is paused, not
/// dropped: every message reaches Kafka, in order, at the limit's pace
/// after the burst, each hold counted; the car stays connected and keeps
/// its keep-alive (it is answered once its messages are through).
#[test]
fn a_car_beyond_its_uplink_limit_is_paused_and_loses_nothing() {
    const RATE: u32 = 20;
    const BURST: u32 = 10;
    const SENT: usize = 60;
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 1);
    config.limits.car_messages_per_sec = RATE;
    config.limits.car_message_burst = BURST;
    let gateway = Gateway::start(config).unwrap();
    let collector = broker.collector("cs.uplink");

    let (mut car, code) = RawClient::connect(gateway.local_addr(), "VIN-FAST", 30);
    assert_eq!(code, 0);
    let started = std::time::Instant::now();
    car.send(&publishes("UL/POS", SENT));
    let records = collector.collect(SENT, WAIT);
    let took = started.elapsed();
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned())
        .collect();
    let expected: Vec<String> = (0..SENT).map(|n| n.to_string()).collect();
    assert_eq!(payloads, expected, "lost or reordered");
    // The burst at once, then 50 more at 20 a second: 2.5 s.
    let pace = Duration::from_secs_f64((SENT as f64 - f64::from(BURST)) / f64::from(RATE));
    assert!(
        took >= pace - Duration::from_millis(100),
        "{SENT} messages through in {took:?}: the limit did not hold (at least {pace:?})"
    );
    assert!(limited(&gateway, Limit::CarMessages) > 0);
    assert_eq!(closed(&gateway, CloseKind::UplinkLimit), 0);
    // Still connected: a PINGREQ is answered.
    car.send(&[0xC0, 0]);
    assert!(matches!(car.next_packet(), Some(codec::Packet::PingResp)));
    gateway.stop().unwrap();
}

/// With `car_over_limit = "disconnect"`, the PUBLISH beyond the burst
/// closes the car (`uplink_limit`): what came within it reaches Kafka,
/// nothing after it does.
#[test]
fn a_car_beyond_its_uplink_limit_is_disconnected_when_so_configured() {
    const BURST: u32 = 5;
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 1);
    config.limits.car_messages_per_sec = 1;
    config.limits.car_message_burst = BURST;
    config.limits.car_over_limit = gateway::rate::OverLimit::Disconnect;
    let gateway = Gateway::start(config).unwrap();
    let collector = broker.collector("cs.uplink");

    let (mut car, code) = RawClient::connect(gateway.local_addr(), "VIN-FLOOD", 30);
    assert_eq!(code, 0);
    car.send(&publishes("UL/POS", 20));
    car.expect_closed(WAIT);
    // Counted just after the socket closes.
    testkit::wait_until("the close counted", WAIT, || {
        closed(&gateway, CloseKind::UplinkLimit) == 1
    });
    assert_eq!(limited(&gateway, Limit::CarMessages), 1);
    assert_eq!(
        collector.collect(BURST as usize, WAIT).len(),
        BURST as usize
    );
    // Given time to arrive, nothing beyond the burst does.
    let late = collector.collect_for(Duration::from_secs(2));
    assert!(late.is_empty(), "{} records beyond the burst", late.len());
    gateway.stop().unwrap();
}
