//! `carbridge-inspect` against a real stack: a tansu broker, a gateway
//! (2 shards) and a router, cars on raw MQTT sockets. A connected car
//! shows its live session, the gateway's answer with what it published,
//! and the receipt of a message sent to it; a car that left shows its
//! ended session, the gateway's last close and what the router holds for
//! it; a car never seen exits 1;
//! an unreachable Kafka exits 2. (The TLS identity is shown by
//! `gateway/tests/inspect.rs`: this harness's gateways are plain.)

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Output};

use common::Stack;
use serde_json::Value;
use testkit::{Proc, RawClient, WAIT, free_port, wait_until};

/// Runs the inspector about `client` against the stack and `gateway`.
fn inspect(stack: &Stack, gateway: &Proc, client: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_carbridge-inspect"))
        .arg(client)
        .args(["--kafka-bootstrap", &stack.broker.bootstrap_servers()])
        .args(["--shards-per-bridge", "2"])
        .args(["--gateway-admin-list", &gateway.admin().to_string()])
        .args(extra)
        .output()
        .unwrap()
}

/// The inspector's `--json` report, and its exit status.
fn report(stack: &Stack, gateway: &Proc, client: &str) -> (i32, Value) {
    let output = inspect(stack, gateway, client, &["--json"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "not JSON: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), report)
}

#[test]
fn the_inspector_shows_a_car_connected_gone_and_never_seen() {
    let stack = Stack::new(2, 2);
    let gateway = stack.gateway("gateway", 0);
    let router = stack.router("router");
    stack.await_routers(&[&router]);

    // Connected: subscribed, two positions published, a message sent.
    let id = "VIN-INSPECT-0001";
    let mut car = RawClient::connect(gateway.mqtt(), id, 60);
    assert_eq!(car.1, 0);
    assert_eq!(car.0.subscribe(&["DL/#"]), [0]);
    car.0.publish("UL/POS", b"position-1");
    car.0.publish("UL/POS", b"position-2");
    car.0.send(&[0xC0, 0x00]);
    let mut pong = [0u8; 2];
    std::io::Read::read_exact(&mut car.0.stream, &mut pong).unwrap();
    stack.await_registry(&[&gateway], &[&router], 0.0);
    let sent = Command::new(env!("CARGO_BIN_EXE_carbridge-send"))
        .args(["--kafka-bootstrap", &stack.broker.bootstrap_servers()])
        .args([id, "DL/TEST", "hello"])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );

    let (code, shown) = report(&stack, &gateway, id);
    assert_eq!(code, 0, "{shown}");
    assert_eq!(shown["known"], true);
    assert_eq!(shown["session"]["live"], true, "{shown}");
    assert_eq!(shown["session"]["filters"], serde_json::json!(["DL/#"]));
    let slot = shown["session"]["slot"].as_u64().unwrap();
    let answer = &shown["gateway"]["answer"];
    assert_eq!(shown["gateway"]["instance"], 0, "{shown}");
    assert_eq!(shown["gateway"]["shard"], slot % 2, "{shown}");
    assert_eq!(answer["connected"], true, "{shown}");
    assert_eq!(answer["session"], shown["session"]["session"], "{shown}");
    assert_eq!(answer["uplink_messages"], 2, "{shown}");
    assert_eq!(answer["uplink_bytes"], 20, "{shown}");
    assert_eq!(answer["downlink_messages"], 1, "{shown}");
    let receipts = shown["receipts"].as_array().unwrap();
    let written = receipts.iter().find(|r| r["outcome"] == "written");
    let written = written.unwrap_or_else(|| panic!("no receipt written: {shown}"));
    assert!(
        written["correlation_id"]
            .as_str()
            .unwrap()
            .starts_with("carbridge-send-"),
        "{shown}"
    );
    assert_eq!(shown["held_requests"]["available"], false);

    // The same for a person: the facts, one a line.
    let text = inspect(&stack, &gateway, id, &[]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8_lossy(&text.stdout);
    for line in [
        "session      ",
        " LIVE",
        "gateway      CONNECTED on shard",
        "uplink       2 messages, 20 bytes",
        "written",
        "held         not asked",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }

    // Gone: the session record ended, the gateway's last close.
    let (mut leaving, code) = RawClient::connect(gateway.mqtt(), "VIN-INSPECT-0002", 60);
    assert_eq!(code, 0);
    leaving.send(&codec::packet::DISCONNECT);
    let mut gone = Value::Null;
    wait_until("the ended session to show", WAIT, || {
        let (code, shown) = report(&stack, &gateway, "VIN-INSPECT-0002");
        gone = shown;
        code == 0 && gone["session"]["live"] == false
    });
    assert_eq!(gone["session"]["ended"], "closed", "{gone}");
    let answer = &gone["gateway"]["answer"];
    assert_eq!(answer["connected"], false, "{gone}");
    assert_eq!(answer["previous_close"]["reason"], "disconnect", "{gone}");

    // Gone, with a command held for it: the router shows it.
    let held = Command::new(env!("CARGO_BIN_EXE_carbridge-send"))
        .args(["--kafka-bootstrap", &stack.broker.bootstrap_servers()])
        .args([
            "--hold",
            "--expires-in-secs",
            "600",
            "--receipt-timeout-secs",
            "0",
        ])
        .args(["VIN-INSPECT-0002", "DL/UNLOCK", "open"])
        .output()
        .unwrap();
    assert!(
        held.status.success(),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
    wait_until("the router to hold it", WAIT, || {
        router.metric("carbridge_router_held_requests") == 1.0
    });
    let router_admin = router.admin().to_string();
    let output = inspect(
        &stack,
        &gateway,
        "VIN-INSPECT-0002",
        &["--json", "--router-admin", &router_admin],
    );
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["held_requests"]["available"], true, "{shown}");
    let requests = shown["held_requests"]["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "{shown}");
    assert_eq!(requests[0]["topic"], "DL/UNLOCK", "{shown}");
    assert_eq!(requests[0]["payload_bytes"], 4, "{shown}");
    let text = inspect(
        &stack,
        &gateway,
        "VIN-INSPECT-0002",
        &["--router-admin", &router_admin],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("held         1 request(s)"), "{text}");
    assert!(text.contains("DL/UNLOCK (4 bytes) until"), "{text}");

    // Never seen: exit 1.
    let (code, never) = report(&stack, &gateway, "VIN-NEVER-SEEN");
    assert_eq!(code, 1, "{never}");
    assert_eq!(never["known"], false);
    assert_eq!(never["session"], Value::Null);

    // Kafka unreachable: exit 2, saying so.
    let nowhere = Command::new(env!("CARGO_BIN_EXE_carbridge-inspect"))
        .arg(id)
        .args(["--kafka-bootstrap", &format!("127.0.0.1:{}", free_port())])
        .args(["--timeout-secs", "2"])
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(2));
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(said.starts_with("carbridge-inspect: "), "{said}");
}
