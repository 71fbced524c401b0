//! Bad input closes only the offending connection: a table over the
//! codec's rules and this system's refusals, with a well-behaved car
//! publishing between every case, and memory that stays bounded.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use codec::{Connect, Publish, QoS, Will};
use common::{config, resident_kib, total};
use gateway::Gateway;
use gateway::session::CloseKind;
use ops::exposition::LabelSet;
use testkit::{Broker, RawClient, WAIT};

fn connect_bytes(connect: &Connect) -> Vec<u8> {
    let mut out = BytesMut::new();
    connect.encode(&mut out).unwrap();
    out.to_vec()
}

fn publish_bytes(publish: &Publish) -> Vec<u8> {
    let mut out = BytesMut::new();
    publish.encode(&mut out).unwrap();
    out.to_vec()
}

struct Case {
    name: &'static str,
    /// Send a valid CONNECT first (and expect CONNACK 0).
    connected: bool,
    bytes: Vec<u8>,
    /// What the gateway sends before closing.
    reply: &'static [u8],
    reason: CloseKind,
}

#[test]
fn each_violation_closes_only_its_connection() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 2, &[]);
    let mut config = config(&broker, 2);
    config.mqtt.max_packet_size = 1024;
    config.mqtt.connect_timeout_secs = 1;
    let gateway = Gateway::start(config).unwrap();
    let addr = gateway.local_addr();

    let mut will = Connect::new("VIN-WILL", 60);
    will.will = Some(Will {
        topic: "UL/LAST".into(),
        message: "gone".into(),
        qos: QoS::AtMostOnce,
        retain: false,
    });
    let mut level3 = connect_bytes(&Connect::new("VIN-LEVEL", 60));
    level3[8] = 3; // protocol level byte
    let qos1 = Publish::new(
        "UL/POS",
        b"x",
        QoS::AtLeastOnce,
        std::num::NonZeroU16::new(1),
        false,
        false,
    )
    .unwrap();
    let retained = Publish::new("UL/POS", b"x", QoS::AtMostOnce, None, false, true).unwrap();
    let mut oversized = BytesMut::new();
    codec::packet::encode_publish(
        &mut oversized,
        b"UL/POS",
        &[7; 2000],
        QoS::AtMostOnce,
        None,
        false,
        false,
    )
    .unwrap();

    let cases = vec![
        Case {
            name: "reserved packet type",
            connected: false,
            bytes: vec![0xf0, 0],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "huge declared length first",
            connected: false,
            bytes: vec![0x30, 0xff, 0xff, 0xff, 0x7f],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "PINGREQ before CONNECT",
            connected: false,
            bytes: vec![0xc0, 0],
            reply: b"",
            reason: CloseKind::Unsupported,
        },
        Case {
            name: "protocol level 3",
            connected: false,
            bytes: level3,
            reply: &[0x20, 2, 0, 1],
            reason: CloseKind::Malformed,
        },
        Case {
            name: "empty client id",
            connected: false,
            bytes: connect_bytes(&Connect::new("", 60)),
            reply: &[0x20, 2, 0, 2],
            reason: CloseKind::Malformed,
        },
        Case {
            name: "will",
            connected: false,
            bytes: connect_bytes(&will),
            reply: b"",
            reason: CloseKind::Unsupported,
        },
        Case {
            name: "QoS 1 publish",
            connected: true,
            bytes: publish_bytes(&qos1),
            reply: b"",
            reason: CloseKind::Unsupported,
        },
        Case {
            name: "retain",
            connected: true,
            bytes: publish_bytes(&retained),
            reply: b"",
            reason: CloseKind::Unsupported,
        },
        Case {
            name: "second CONNECT",
            connected: true,
            bytes: connect_bytes(&Connect::new("VIN-BAD", 60)),
            reply: b"",
            reason: CloseKind::Unsupported,
        },
        Case {
            name: "unmapped topic",
            connected: true,
            bytes: publish_bytes(&Publish::qos0("XX/POS", b"x").unwrap()),
            reply: b"",
            reason: CloseKind::UnmappedTopic,
        },
        Case {
            name: "over the size limit",
            connected: true,
            bytes: oversized.to_vec(),
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "topic not UTF-8",
            connected: true,
            bytes: vec![0x30, 5, 0, 3, b'U', b'L', 0xff],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "wildcard in topic",
            connected: true,
            bytes: vec![0x30, 6, 0, 4, b'U', b'L', b'/', b'#'],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "DUP on QoS 0",
            connected: true,
            bytes: vec![0x38, 5, 0, 3, b'U', b'L', b'/'],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "SUBSCRIBE with bad flags",
            connected: true,
            bytes: vec![0x80, 6, 0, 1, 0, 1, b'a', 0],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "SUBSCRIBE without filters",
            connected: true,
            bytes: vec![0x82, 2, 0, 1],
            reply: b"",
            reason: CloseKind::Malformed,
        },
        Case {
            name: "huge length after CONNECT",
            connected: true,
            bytes: vec![0x30, 0xff, 0xff, 0xff, 0x7f],
            reply: b"",
            reason: CloseKind::Malformed,
        },
    ];

    let (mut good, code) = RawClient::connect(addr, "VIN-GOOD", 60);
    assert_eq!(code, 0);
    let resident_before = resident_kib(std::process::id());
    let mut expected_closes = vec![0u64; CloseKind::ALL.len()];
    for (i, case) in cases.iter().enumerate() {
        let mut client = if case.connected {
            let (client, code) = RawClient::connect(addr, &format!("VIN-CASE-{i}"), 60);
            assert_eq!(code, 0, "{}", case.name);
            client
        } else {
            RawClient::connect_tcp(addr)
        };
        client.send(&case.bytes);
        let reply = client.expect_closed(Duration::from_secs(5));
        assert_eq!(reply, case.reply, "{}: reply before closing", case.name);
        expected_closes[case.reason.index()] += 1;
        // The well-behaved car is unaffected.
        good.publish("UL/POS", format!("after case {i}").as_bytes());
    }

    // Timers: no CONNECT within the timeout; no packet within 1.5 x keep alive.
    let mut silent = RawClient::connect_tcp(addr);
    assert_eq!(silent.expect_closed(Duration::from_secs(4)), b"");
    let (mut idle, code) = RawClient::connect(addr, "VIN-IDLE", 1);
    assert_eq!(code, 0);
    let started = std::time::Instant::now();
    assert_eq!(idle.expect_closed(Duration::from_secs(4)), b"");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed before 1.5 x keep alive"
    );
    good.publish("UL/POS", b"after the timers");

    let records = broker.collector("cs.uplink").collect(cases.len() + 1, WAIT);
    for (i, record) in records.iter().enumerate().take(cases.len()) {
        assert_eq!(record.key.as_deref(), Some(&b"VIN-GOOD"[..]));
        assert_eq!(
            record.value.as_deref(),
            Some(format!("after case {i}").as_bytes())
        );
    }
    good.disconnect();

    // Memory stayed bounded: no declared length was ever buffered.
    let grown = resident_kib(std::process::id()).saturating_sub(resident_before);
    assert!(grown < 20 * 1024, "resident memory grew by {grown} KiB");

    // Every close was counted under its reason.
    let closed = |reason: CloseKind| total(&gateway, |m| m.closed.get(reason));
    for (index, &reason) in CloseKind::ALL.iter().enumerate() {
        if expected_closes[index] > 0 {
            assert_eq!(
                closed(reason),
                expected_closes[index],
                "closed{{reason={}}}",
                reason.as_str()
            );
        }
    }
    assert_eq!(closed(CloseKind::ConnectTimeout), 1);
    assert_eq!(closed(CloseKind::KeepAliveTimeout), 1);
    gateway.stop().unwrap();
}
