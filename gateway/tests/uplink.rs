//! Uplink end to end: real MQTT clients publish to the gateway, the test
//! reads the records from a real broker and checks the uplink contract.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;

use gateway::Gateway;
use testkit::{Broker, Record, WAIT, java_partition};

fn start_gateway(broker: &Broker, shards: usize) -> Gateway {
    Gateway::start(common::config(broker, shards)).unwrap()
}

fn mosquitto_pub(gateway: &Gateway, client_id: &str, topic: &str, message: &str) {
    let port = gateway.local_addr().port().to_string();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "0"])
        .args(["-i", client_id, "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub (Debian package mosquitto-clients) runs");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// Publishes with the rumqttc crate and disconnects cleanly.
fn rumqttc_pub(gateway: &Gateway, client_id: &str, topic: &str, message: &[u8]) {
    let mut options =
        rumqttc::MqttOptions::new(client_id, "127.0.0.1", gateway.local_addr().port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(options, 10);
    client
        .publish(topic, rumqttc::QoS::AtMostOnce, false, message.to_vec())
        .unwrap();
    client.disconnect().unwrap();
    let deadline = Instant::now() + WAIT;
    for event in connection.iter() {
        match event {
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => panic!("rumqttc: {error}"),
        }
        assert!(Instant::now() < deadline, "rumqttc did not finish");
    }
}

/// Publishes with the Python paho-mqtt client (PyPI), MQTT 3.1.1.
fn paho_pub(gateway: &Gateway, client_id: &str, topic: &str, message: &str) {
    let port = gateway.local_addr().port();
    common::paho_pub("127.0.0.1", port, client_id, topic, message, None);
}

fn check_record(record: &Record, client_id: &str, mqtt_topic: &str, value: &[u8], partitions: i32) {
    assert_eq!(record.topic, "cs.uplink");
    assert_eq!(record.key.as_deref(), Some(client_id.as_bytes()));
    assert_eq!(record.value.as_deref(), Some(value));
    assert_eq!(record.header("mqtt.topic"), Some(mqtt_topic.as_bytes()));
    assert_eq!(
        record.partition,
        java_partition(client_id.as_bytes(), partitions)
    );
}

#[test]
fn mosquitto_rumqttc_and_paho_publish_into_kafka() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 3, &[]);
    let gateway = start_gateway(&broker, 2);

    mosquitto_pub(&gateway, "VIN00000000000001", "UL/POS", "57.70,11.97");
    rumqttc_pub(
        &gateway,
        "VIN00000000000002",
        "UL/temperature/roof",
        b"\x00\x01binary\xff",
    );
    paho_pub(&gateway, "VIN00000000000003", "UL/SPEED", "87");

    let mut records = broker.collector("cs.uplink").collect(3, WAIT);
    records.sort_by(|a, b| a.key.cmp(&b.key));
    check_record(
        &records[0],
        "VIN00000000000001",
        "UL/POS",
        b"57.70,11.97",
        3,
    );
    check_record(
        &records[1],
        "VIN00000000000002",
        "UL/temperature/roof",
        b"\x00\x01binary\xff",
        3,
    );
    check_record(&records[2], "VIN00000000000003", "UL/SPEED", b"87", 3);

    // The admin endpoint reports the same, all shards summed.
    let admin = gateway.admin_addr().unwrap();
    let get = |path| testkit::http_get(admin, path).expect("the admin endpoint answers");
    let (status, body) = get("/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("carbridge_gateway_publish_acked_total 3\n"),
        "{body}"
    );
    assert!(
        body.contains("carbridge_gateway_publish_failed_total{reason=\"timed_out\"} 0\n"),
        "{body}"
    );
    assert_eq!(get("/healthz").0, 200);
    assert_eq!(get("/readyz").0, 200);
    assert_eq!(get("/nope").0, 404);

    let metrics = gateway.metrics().to_vec();
    let sum = |f: &dyn Fn(&gateway::metrics::ShardMetrics) -> u64| {
        metrics.iter().map(|m| f(m)).sum::<u64>()
    };
    gateway.stop().unwrap();
    assert_eq!(sum(&|m| m.publish_received.load(Ordering::Relaxed)), 3);
    assert_eq!(sum(&|m| m.publish_acked.load(Ordering::Relaxed)), 3);
    assert_eq!(sum(&|m| m.publish_failed.total()), 0);
}
