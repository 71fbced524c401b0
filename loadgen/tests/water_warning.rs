//! The demo's water-warning service against real processes: a car (a
//! rumqttc client) that reports a position inside the area gets DL/WARN
//! through gateway, Kafka and router; a car outside does not.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::{Proc, WAIT, gateway, router, topics};
use testkit::Broker;

/// A car on rumqttc, subscribed to DL/#; returns its client and what it
/// receives (topic, payload).
fn car(mqtt: SocketAddr, id: &str) -> (rumqttc::Client, Receiver<(String, String)>) {
    let options = rumqttc::MqttOptions::new(id, "127.0.0.1", mqtt.port());
    let (client, mut connection) = rumqttc::Client::new(options, 16);
    let (tx, rx) = channel();
    let (subscribed_tx, subscribed) = channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic, text)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.subscribe("DL/#", rumqttc::QoS::AtMostOnce).unwrap();
    subscribed.recv_timeout(WAIT).expect("no SUBACK");
    (client, rx)
}

#[test]
fn a_car_in_the_water_area_is_warned_and_one_outside_is_not() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap_servers();
    topics(&broker, 2, 2);
    let _router = router(&broker);
    let (_gateway, mqtt) = gateway(&broker, 0, None);
    // The service reads from the end of cs.uplink once its group has the
    // partitions; positions are sent until it answers, so no sleep guesses
    // when that is.
    let _service = Proc::spawn(
        "water-warning",
        Command::new(env!("CARGO_BIN_EXE_water-warning")).args([
            "--kafka-bootstrap",
            &bootstrap,
            "--repeat-secs",
            "3600",
        ]),
    );

    let (wet, wet_rx) = car(mqtt, "CBLG0000000000001");
    let (dry, dry_rx) = car(mqtt, "CBLG0000000000002");
    // "car seq sent_us lat lon", as loadgen's cars send it: car 1 on the
    // river, car 2 in the city centre.
    let mut warning = None;
    for seq in 1..=60u64 {
        wet.publish(
            "UL/POS",
            rumqttc::QoS::AtMostOnce,
            false,
            format!("1 {seq} 0 57.70000 11.89000 "),
        )
        .unwrap();
        dry.publish(
            "UL/POS",
            rumqttc::QoS::AtMostOnce,
            false,
            format!("2 {seq} 0 57.70600 11.97000 "),
        )
        .unwrap();
        if let Ok(message) = wet_rx.recv_timeout(Duration::from_secs(1)) {
            warning = Some(message);
            break;
        }
    }
    let (topic, text) = warning.expect("the car in the water area got no warning within 60 s");
    assert_eq!(topic, "DL/WARN");
    assert!(text.contains("57.7000,11.8900"), "{text}");
    // The warned car is not warned again within --repeat-secs.
    wet.publish(
        "UL/POS",
        rumqttc::QoS::AtMostOnce,
        false,
        "1 99 0 57.70000 11.89000 ",
    )
    .unwrap();
    assert!(
        wet_rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "warned twice"
    );
    // The dry car reported all along and was never warned.
    assert!(
        dry_rx.try_recv().is_err(),
        "a car outside the area was warned"
    );
}
