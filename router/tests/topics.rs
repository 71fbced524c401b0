//! Topic provisioning (`carbridge-topics`) and the router's refusal to run
//! on topics that are not co-partitioned, against a real broker.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Command, Output};

use testkit::Broker;

fn topics(broker: &Broker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carbridge-topics"))
        .args(args)
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn create_makes_every_topic_and_check_agrees() {
    let broker = Broker::start();
    let before = topics(&broker, &["check", "--partitions", "6", "--slots", "4"]);
    assert_eq!(before.status.code(), Some(1), "{}", text(&before));
    for topic in [
        "cs.uplink",
        "cs.downlink",
        "mqtt.sessions",
        "mqtt.downlink",
        "cs.downlink.receipts",
        "mqtt.held",
    ] {
        assert!(
            text(&before).contains(topic),
            "{topic} not reported: {}",
            text(&before)
        );
    }

    let created = topics(&broker, &["create", "--partitions", "6", "--slots", "4"]);
    assert!(created.status.success(), "{}", text(&created));
    assert_eq!(broker.partition_count("cs.uplink"), Some(6));
    assert_eq!(broker.partition_count("cs.downlink"), Some(6));
    assert_eq!(broker.partition_count("mqtt.sessions"), Some(6));
    assert_eq!(broker.partition_count("mqtt.downlink"), Some(4));
    assert_eq!(broker.partition_count("cs.downlink.receipts"), Some(6));
    assert_eq!(broker.partition_count("mqtt.held"), Some(6));

    // Idempotent: a second create changes nothing and succeeds.
    let again = topics(&broker, &["create", "--partitions", "6", "--slots", "4"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("created"), "{}", text(&again));

    // A layout the topics do not have is reported, and nothing is changed.
    let wrong = topics(&broker, &["check", "--partitions", "6", "--slots", "8"]);
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("mqtt.downlink"), "{}", text(&wrong));
    assert_eq!(broker.partition_count("mqtt.downlink"), Some(4));
}

#[test]
fn the_router_refuses_topics_that_are_not_co_partitioned() {
    let broker = Broker::start();
    broker.create_topic("cs.downlink", 4, &[]);
    broker.create_topic("mqtt.sessions", 3, &[("cleanup.policy", "compact")]);
    broker.create_topic("mqtt.downlink", 2, &[]);
    let output = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(["--admin-listen", ""])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = text(&output);
    assert!(
        said.contains("cs.downlink has 4 partitions but mqtt.sessions has 3"),
        "{said}"
    );
    assert!(said.contains("co-partitioned"), "{said}");

    let check = topics(&broker, &["check", "--partitions", "4", "--slots", "2"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(text(&check).contains("mqtt.sessions"), "{}", text(&check));
}

#[test]
fn the_router_names_a_missing_topic() {
    let broker = Broker::start();
    let output = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(["--admin-listen", ""])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = text(&output);
    assert!(said.contains("cs.downlink does not exist"), "{said}");
    assert!(said.contains("carbridge-topics create"), "{said}");
}

#[test]
fn check_reports_a_registry_that_would_not_be_compacted() {
    let broker = Broker::start();
    broker.create_topic("mqtt.sessions", 2, &[("cleanup.policy", "delete")]);
    let created = topics(&broker, &["create", "--partitions", "2", "--slots", "2"]);
    // The other topics are made; the existing one is reported, not changed.
    assert_eq!(created.status.code(), Some(1), "{}", text(&created));
    assert!(
        text(&created).contains("mqtt.sessions: cleanup.policy = delete, needs compact"),
        "{}",
        text(&created)
    );
    assert_eq!(broker.partition_count("cs.downlink"), Some(2));
}
