//! Downlink delivery through real processes: `carbridge-topics`, `router`
//! and `gateway` binaries on a tansu broker, with cars on rumqttc,
//! mosquitto_sub and raw sockets.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use codec::Packet;
use common::{Car, MosquittoSub, Stack, raw_car};
use contract::SessionRecord;
use testkit::{WAIT, wait_until};

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// mosquitto_sub and rumqttc cars on `DL/#` get their messages, a car on
/// `DL/WARN` only gets `DL/WARN`, nobody gets another car's message, and
/// the counters of router and gateway account for every request.
#[test]
fn each_car_gets_its_own_messages_on_the_topics_it_subscribed() {
    let stack = Stack::new(4, 2);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let gateway = stack.gateway("gateway", 0);

    let mosquitto = MosquittoSub::start(&gateway, "VIN-MOSQUITTO", "DL/#");
    let rust = Car::connect(&gateway, "VIN-RUMQTTC");
    rust.subscribe("DL/#");
    let warn = Car::connect(&gateway, "VIN-WARN-ONLY");
    warn.subscribe("DL/WARN");
    stack.await_registry(&[&gateway], &[&router], 0.0);

    // INFO before WARN in every round: a DL/INFO wrongly delivered to the
    // WARN-only car would reach it before its last DL/WARN (one partition
    // per client keeps the order).
    const ROUNDS: usize = 5;
    let clients = [
        "VIN-MOSQUITTO",
        "VIN-RUMQTTC",
        "VIN-WARN-ONLY",
        "VIN-OFFLINE",
    ];
    let mut requests = Vec::new();
    for round in 0..ROUNDS {
        for client in clients {
            for topic in ["DL/INFO", "DL/WARN"] {
                requests.push((client, topic, format!("{client} {round}").into_bytes()));
            }
        }
    }
    stack.request(&requests);

    let expected = |client: &str, topics: &[&str]| -> Vec<(String, String)> {
        (0..ROUNDS)
            .flat_map(|round| {
                topics
                    .iter()
                    .map(move |topic| ((*topic).to_owned(), format!("{client} {round}")))
            })
            .collect()
    };
    let as_text = |got: Vec<(String, Vec<u8>)>| -> Vec<(String, String)> {
        got.into_iter().map(|(t, p)| (t, text(&p))).collect()
    };
    assert_eq!(
        as_text(mosquitto.expect(2 * ROUNDS)),
        expected("VIN-MOSQUITTO", &["DL/INFO", "DL/WARN"])
    );
    assert_eq!(
        as_text(rust.expect(2 * ROUNDS)),
        expected("VIN-RUMQTTC", &["DL/INFO", "DL/WARN"])
    );
    assert_eq!(
        as_text(warn.expect(ROUNDS)),
        expected("VIN-WARN-ONLY", &["DL/WARN"])
    );

    // Every request is accounted for, then nothing more arrives anywhere.
    let total = requests.len() as f64;
    wait_until("the router to account for every request", WAIT, || {
        router.metric("carbridge_router_requests_received_total") == total
            && router.metric("carbridge_router_routed_acked_total") == 25.0
    });
    let metrics = router.metrics();
    assert_eq!(metrics["carbridge_router_routed_total"], 25.0);
    assert_eq!(
        metrics["carbridge_router_requests_dropped_total{reason=\"offline\"}"],
        10.0
    );
    assert_eq!(
        metrics["carbridge_router_requests_dropped_total{reason=\"no_filter\"}"],
        5.0
    );
    wait_until("the gateway to deliver what was routed", WAIT, || {
        gateway.metric("carbridge_gateway_downlink_delivered_total") == 25.0
    });
    assert_eq!(
        gateway.metric("carbridge_gateway_downlink_received_total"),
        25.0
    );
    let quiet = Duration::from_millis(300);
    assert!(mosquitto.drain(quiet).is_empty());
    assert!(rust.drain(quiet).is_empty());
    assert!(warn.drain(quiet).is_empty());

    // Leaving ends the session in the registry: the router forgets the car.
    assert_eq!(router.metric("carbridge_router_live_sessions"), 3.0);
    rust.disconnect();
    warn.disconnect();
    wait_until(
        "the end-of-session records to reach the router",
        WAIT,
        || router.metric("carbridge_router_live_sessions") == 1.0,
    );
    assert_eq!(
        gateway.metric("carbridge_gateway_connections_closed_total{reason=\"disconnect\"}"),
        2.0
    );
    stack.request(&[("VIN-RUMQTTC", "DL/INFO", b"gone".to_vec())]);
    wait_until(
        "the router to drop a request for a car that left",
        WAIT,
        || router.metric("carbridge_router_requests_dropped_total{reason=\"offline\"}") == 11.0,
    );
}

/// 10,000 messages to one car arrive complete and in the order produced.
#[test]
fn ten_thousand_messages_to_one_car_arrive_in_order() {
    const N: usize = 10_000;
    let stack = Stack::new(4, 2);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let gateway = stack.gateway("gateway", 0);
    let car = Car::connect(&gateway, "VIN-ORDER");
    car.subscribe("DL/#");
    stack.await_registry(&[&gateway], &[&router], 0.0);

    let requests: Vec<_> = (0..N)
        .map(|i| ("VIN-ORDER", "DL/SEQ", i.to_string().into_bytes()))
        .collect();
    stack.request(&requests);
    let got: Vec<usize> = car
        .expect(N)
        .into_iter()
        .map(|(_, payload)| text(&payload).parse().unwrap())
        .collect();
    let first_out_of_order = got.iter().enumerate().find(|(i, n)| *i != **n);
    assert_eq!(first_out_of_order, None, "order broken");
    assert!(car.drain(Duration::from_millis(300)).is_empty());
    assert_eq!(
        gateway.metric("carbridge_gateway_downlink_delivered_total"),
        N as f64
    );
}

/// The session-registry records of `client` written so far, with the
/// partition of `mqtt.sessions` they are on.
fn sessions_of(stack: &Stack, client: &str, at_least: usize) -> Vec<SessionRecord> {
    let collector = stack.broker.collector(contract::topics::SESSIONS);
    let mut mine = Vec::new();
    wait_until(
        &format!("{at_least} registry records of {client}"),
        WAIT,
        || {
            mine.extend(
                collector
                    .collect_for(Duration::from_millis(200))
                    .into_iter()
                    .filter(|r| r.key.as_deref() == Some(client.as_bytes()))
                    .map(|r| SessionRecord::decode(r.value.as_deref().unwrap()).unwrap()),
            );
            mine.len() >= at_least
        },
    );
    mine
}

/// The same client id connects to gateway B while its connection to A is
/// still open: A closes the old connection when the router's takeover
/// notice arrives, and messages reach the car on B, also when A's records
/// of the old session (its end, even a late re-registration) come after
/// B's.
#[test]
fn a_car_that_moves_to_another_gateway_keeps_getting_its_messages() {
    let stack = Stack::new(4, 4);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let a = stack.gateway("gateway-a", 0);
    let b = stack.gateway("gateway-b", 1);

    let mut on_a = raw_car(&a, "VIN-MOVER", "DL/#");
    stack.await_registry(&[&a], &[&router], 0.0);
    let old = sessions_of(&stack, "VIN-MOVER", 2);
    let old_session = old[0].session;
    assert!(old.iter().all(|r| r.session == old_session && r.slot < 2));

    // The move: A does not know yet.
    let on_b = Car::connect(&b, "VIN-MOVER");
    on_b.subscribe("DL/#");
    // Takeover: A closes its connection on the router's notice.
    assert_eq!(on_a.next_packet(), None, "A's connection was not closed");
    wait_until("A to count the takeover notice", WAIT, || {
        a.metric("carbridge_gateway_takeover_notices_total") == 1.0
    });
    assert_eq!(
        a.metric("carbridge_gateway_connections_closed_total{reason=\"taken_over\"}"),
        1.0
    );
    assert_eq!(
        router.metric("carbridge_router_takeover_notices_total"),
        1.0
    );

    // A's end record (written when it closed) came after B's records. Late
    // records of the old session, as a slow gateway A would write them: a
    // re-registration with filters, then the end once more.
    let late = [
        SessionRecord::live(old_session, old[0].slot, ["DL/#".to_owned()]),
        SessionRecord::ended(old_session, old[0].slot, contract::End::Closed),
    ];
    let producer = stack.broker.producer();
    for record in &late {
        producer.send(
            contract::topics::SESSIONS,
            Some(b"VIN-MOVER"),
            &record.encode(),
            &[],
            None,
        );
    }
    stack.await_registry(&[&a, &b], &[&router], late.len() as f64);

    let requests: Vec<_> = (0..20)
        .map(|i| ("VIN-MOVER", "DL/INFO", format!("{i}").into_bytes()))
        .collect();
    stack.request(&requests);
    let got: Vec<String> = on_b.expect(20).into_iter().map(|(_, p)| text(&p)).collect();
    assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    wait_until("the router to route all 20", WAIT, || {
        router.metric("carbridge_router_routed_acked_total") == 20.0
    });
    // Nothing went to A: the late live record of the old session was
    // refused (and earned the old connection another notice, harmlessly).
    assert_eq!(a.metric("carbridge_gateway_downlink_received_total"), 0.0);
    assert_eq!(b.metric("carbridge_gateway_downlink_delivered_total"), 20.0);
}

/// A connection to the same client id on the same gateway also wins; the
/// car's stream continues on the new connection.
#[test]
fn a_reconnect_to_the_same_gateway_moves_the_stream() {
    let stack = Stack::new(2, 2);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let gateway = stack.gateway("gateway", 0);
    let mut first = raw_car(&gateway, "VIN-AGAIN", "DL/#");
    stack.await_registry(&[&gateway], &[&router], 0.0);
    stack.request(&[("VIN-AGAIN", "DL/A", b"first".to_vec())]);
    match first.next_packet() {
        Some(Packet::Publish(publish)) => assert_eq!(publish.payload(), b"first"),
        other => panic!("expected the first message, got {other:?}"),
    }
    let second = Car::connect(&gateway, "VIN-AGAIN");
    second.subscribe("DL/#");
    assert_eq!(first.next_packet(), None, "the older connection stays open");
    stack.await_registry(&[&gateway], &[&router], 0.0);
    stack.request(&[("VIN-AGAIN", "DL/A", b"second".to_vec())]);
    assert_eq!(text(&second.expect(1)[0].1), "second");
}
