//! The test kit against a real tansu broker: produce, consume, topic
//! configs, explicit partitions, the Java partitioner, stop and restart.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use testkit::{Broker, WAIT, java_partition, murmur2};

#[test]
fn murmur2_matches_the_java_client() {
    // Vectors from Apache Kafka's UtilsTest#testMurmur2.
    let vectors: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];
    for (key, expected) in vectors {
        assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
    }
}

#[test]
fn produce_and_collect_with_keys_headers_and_partitions() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 3, &[]);
    broker.create_topic("mqtt.sessions", 3, &[("cleanup.policy", "compact")]);
    assert_eq!(broker.partition_count("cs.uplink"), Some(3));
    assert_eq!(broker.partition_count("no.such.topic"), None);

    let producer = broker.producer();
    let cars = ["VIN0001", "VIN0002", "VIN0003", "VIN0004", "VIN0005"];
    for car in cars {
        let (partition, _) = producer.send(
            "cs.uplink",
            Some(car.as_bytes()),
            format!("position of {car}").as_bytes(),
            &[("mqtt.topic", b"UL/POS")],
            None,
        );
        // The murmur2_random partitioner agrees with the Java client.
        assert_eq!(partition, java_partition(car.as_bytes(), 3), "{car}");
    }
    let (partition, _) = producer.send("cs.uplink", Some(b"VIN9"), b"pinned", &[], Some(2));
    assert_eq!(partition, 2);

    let mut records = broker.collector("cs.uplink").collect(6, WAIT);
    records.sort_by(|a, b| a.key.cmp(&b.key));
    for (record, car) in records.iter().zip(cars) {
        assert_eq!(record.topic, "cs.uplink");
        assert_eq!(record.key.as_deref(), Some(car.as_bytes()));
        assert_eq!(
            record.value.as_deref(),
            Some(format!("position of {car}").as_bytes())
        );
        assert_eq!(record.header("mqtt.topic"), Some(&b"UL/POS"[..]));
        assert_eq!(record.header("absent"), None);
        assert_eq!(record.partition, java_partition(car.as_bytes(), 3));
    }
    let pinned = &records[5];
    assert_eq!(
        (pinned.key.as_deref(), pinned.partition),
        (Some(&b"VIN9"[..]), 2)
    );
    assert!(pinned.headers.is_empty());

    // The compacted topic takes keyed records too.
    producer.send("mqtt.sessions", Some(b"VIN0001"), b"v1", &[], None);
    let collector = broker.collector("mqtt.sessions");
    let sessions = collector.collect(1, WAIT);
    assert_eq!(sessions[0].value.as_deref(), Some(&b"v1"[..]));
    // Nothing else was produced.
    assert_eq!(collector.collect_for(Duration::from_millis(500)), vec![]);
}

#[test]
fn stop_and_restart_on_the_same_port() {
    let mut broker = Broker::start();
    let port = broker.port();
    broker.create_topic("before", 1, &[]);
    broker.stop();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a stopped broker must not accept connections"
    );
    broker.restart();
    assert_eq!(broker.port(), port);
    // Memory storage: the topic is gone, and the broker works again.
    assert_eq!(broker.partition_count("before"), None);
    broker.create_topic("after", 2, &[]);
    broker
        .producer()
        .send("after", Some(b"k"), b"v", &[], Some(1));
    let records = broker.collector("after").collect(1, WAIT);
    assert_eq!(records[0].partition, 1);
}

#[test]
fn a_panicking_test_still_stops_its_broker() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let broker = Broker::start();
        tx.send(broker.port()).unwrap();
        panic!("the test failed");
    })
    .join();
    assert!(outcome.is_err());
    let port = rx.recv().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "broker on port {port} outlived its test"
    );
}
