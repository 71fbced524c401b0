//! Held delivery: a request that asks to be held (header `carbridge.hold:
//! 1`, or a router `--hold` rule) and has an expiry waits at the router
//! while its car cannot take it, reaches the car in Kafka order once it
//! can, before newer requests, and is answered `expired` if its expiry
//! passes first. Held requests survive their router (`mqtt.held`). Real
//! broker, real router and gateway processes, real MQTT clients.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Car, ReceiptsById, Stack, receipts_by_id};
use contract::{DecidedBy, Outcome, now_ms};
use testkit::{Proc, TestProducer, WAIT, wait_until};

const TOPIC: &str = contract::HEADER_TOPIC;
const RECEIPT: &str = contract::HEADER_RECEIPT;
const EXPIRES: &str = contract::HEADER_EXPIRES;
const HOLD: &str = contract::HEADER_HOLD;

/// Sends one request to `client` with correlation id `id`, an expiry
/// `expires_in_ms` from now (if any) and the hold header (if any).
fn send(
    producer: &TestProducer,
    client: &str,
    topic: &str,
    id: &str,
    expires_in_ms: Option<i64>,
    hold: Option<&[u8]>,
) {
    let expires = expires_in_ms.map(|ms| (now_ms() + ms).to_string());
    let mut headers: Vec<(&str, &[u8])> = vec![(TOPIC, topic.as_bytes()), (RECEIPT, id.as_bytes())];
    if let Some(expires) = &expires {
        headers.push((EXPIRES, expires.as_bytes()));
    }
    if let Some(hold) = hold {
        headers.push((HOLD, hold));
    }
    producer.send(
        contract::topics::DOWNLINK,
        Some(client.as_bytes()),
        id.as_bytes(),
        &headers,
        None,
    );
}

/// Asserts `id` got exactly one final receipt, `outcome`, decided by `by`,
/// and that any record before it was a single `held`.
fn assert_final(receipts: &ReceiptsById, id: &str, outcome: Outcome, by: DecidedBy) {
    let records = receipts
        .get(id)
        .unwrap_or_else(|| panic!("no receipt for {id}"));
    let finals: Vec<_> = records.iter().filter(|r| r.is_final).collect();
    assert_eq!(finals.len(), 1, "{id}: {records:?}");
    assert_eq!((finals[0].outcome, finals[0].by), (outcome, by), "{id}");
    for progress in records.iter().filter(|r| !r.is_final) {
        assert_eq!(progress.outcome, Outcome::Held, "{id}");
        assert!(progress.until_ms.is_some(), "{id}: held without until_ms");
    }
}

fn held_now(routers: &[&Proc]) -> f64 {
    routers
        .iter()
        .map(|r| r.metric("carbridge_router_held_requests"))
        .sum()
}

#[test]
fn fifty_held_requests_reach_the_car_in_order_before_newer_ones() {
    let stack = Stack::new(2, 2);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let gateway = stack.gateway("gateway", 0);
    let receipts = stack.broker.collector(contract::topics::RECEIPTS);
    let producer = stack.broker.producer();
    for n in 0..50 {
        let id = format!("held-{n:02}");
        send(
            &producer,
            "VIN-HOLD",
            "DL/INFO",
            &id,
            Some(600_000),
            Some(b"1"),
        );
    }
    wait_until("the router to hold 50 requests", WAIT, || {
        held_now(&[&router]) == 50.0
    });
    let progress = receipts.collect(50, WAIT);
    for record in &progress {
        let receipt = contract::Receipt::decode(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(receipt.outcome, Outcome::Held);
        assert!(!receipt.is_final);
    }

    let car = Car::connect(&gateway, "VIN-HOLD");
    car.subscribe("DL/#");
    wait_until("the router to release them", WAIT, || {
        held_now(&[&router]) == 0.0
    });
    // Newer requests, not asking to be held: after the held ones.
    for n in 0..10 {
        send(
            &producer,
            "VIN-HOLD",
            "DL/INFO",
            &format!("new-{n:02}"),
            None,
            None,
        );
    }
    let got: Vec<String> = car
        .expect(60)
        .into_iter()
        .map(|(_, payload)| String::from_utf8(payload).unwrap())
        .collect();
    let want: Vec<String> = (0..50)
        .map(|n| format!("held-{n:02}"))
        .chain((0..10).map(|n| format!("new-{n:02}")))
        .collect();
    assert_eq!(got, want, "held first, in order, then newer ones");
    assert!(car.drain(Duration::from_millis(500)).is_empty());

    let answered = receipts_by_id(&receipts, 60);
    for id in &want {
        assert_final(&answered, id, Outcome::Written, DecidedBy::Gateway);
    }
    assert_eq!(router.metric("carbridge_router_held_total"), 50.0);
    assert_eq!(router.metric("carbridge_router_held_released_total"), 50.0);
    assert_eq!(router.metric("carbridge_router_held_bytes"), 0.0);
}

/// Expiry while held (the request's own, and a `--max-age`), a `--hold`
/// rule without the header, a header that refuses holding, no expiry at
/// all, and a car that connects without a matching filter and subscribes
/// later.
#[test]
fn held_requests_expire_wait_for_a_filter_and_follow_the_rules() {
    let stack = Stack::new(2, 2);
    let router = stack.router_with(
        "router",
        &[
            "--hold",
            "DL/UNLOCK=yes",
            "--hold",
            "DL/SHORT=yes",
            "--max-age",
            "DL/SHORT=2",
        ],
    );
    stack.await_routers(&[&router]);
    let gateway = stack.gateway("gateway", 0);
    let receipts = stack.broker.collector(contract::topics::RECEIPTS);
    let producer = stack.broker.producer();
    let car = "VIN-LATE";
    send(
        &producer,
        car,
        "DL/INFO",
        "own-expiry",
        Some(2_000),
        Some(b"1"),
    );
    send(&producer, car, "DL/SHORT", "max-age", None, None);
    send(&producer, car, "DL/UNLOCK", "unlock-1", Some(600_000), None);
    send(&producer, car, "DL/UNLOCK", "unlock-2", Some(600_000), None);
    send(
        &producer,
        car,
        "DL/NEVER",
        "never",
        Some(10_000),
        Some(b"1"),
    );
    // Refused by its header, and one without any expiry: decided now.
    send(
        &producer,
        car,
        "DL/UNLOCK",
        "refused",
        Some(600_000),
        Some(b"0"),
    );
    send(&producer, car, "DL/UNLOCK", "no-expiry", None, Some(b"1"));
    send(
        &producer,
        car,
        "DL/UNLOCK",
        "bad-header",
        None,
        Some(b"yes"),
    );

    // The two short ones expire while the car is away.
    wait_until("two held requests to expire", WAIT, || {
        router.metric("carbridge_router_requests_dropped_total{reason=\"expired\"}") >= 2.0
    });
    // It connects, subscribed to something else: nothing fits yet.
    let late = Car::connect(&gateway, car);
    late.subscribe("OTHER/#");
    stack.await_registry(&[&gateway], &[&router], 0.0);
    assert!(late.drain(Duration::from_millis(500)).is_empty());
    assert_eq!(held_now(&[&router]), 3.0);
    // Its filter comes: the matching ones arrive, in order.
    late.subscribe("DL/UNLOCK");
    let got: Vec<Vec<u8>> = late.expect(2).into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, [b"unlock-1".to_vec(), b"unlock-2".to_vec()]);
    // The one on a topic it never subscribes to expires.
    wait_until("the last held request to expire", WAIT, || {
        held_now(&[&router]) == 0.0
    });
    let answered = receipts_by_id(&receipts, 8);
    assert_final(&answered, "refused", Outcome::Offline, DecidedBy::Router);
    assert_final(&answered, "no-expiry", Outcome::Offline, DecidedBy::Router);
    assert_final(&answered, "bad-header", Outcome::Invalid, DecidedBy::Router);
    assert_eq!(
        router.metric("carbridge_router_hold_without_expiry_total"),
        1.0
    );
    assert_final(&answered, "own-expiry", Outcome::Expired, DecidedBy::Router);
    assert_final(&answered, "max-age", Outcome::Expired, DecidedBy::Router);
    assert_final(&answered, "never", Outcome::Expired, DecidedBy::Router);
    assert_final(&answered, "unlock-1", Outcome::Written, DecidedBy::Gateway);
    assert_final(&answered, "unlock-2", Outcome::Written, DecidedBy::Gateway);
    assert!(late.drain(Duration::from_millis(500)).is_empty());
}

#[test]
fn beyond_its_bounds_a_request_is_answered_hold_full() {
    let stack = Stack::new(1, 1);
    let router = stack.router_with(
        "router",
        &[
            "--hold-per-car",
            "3",
            "--hold-per-car-bytes",
            "2000",
            "--hold-bytes",
            "3000",
        ],
    );
    stack.await_routers(&[&router]);
    let receipts = stack.broker.collector(contract::topics::RECEIPTS);
    let producer = stack.broker.producer();
    let hold = |client: &str, id: &str, payload: usize| {
        let expires = (now_ms() + 600_000).to_string();
        let headers: Vec<(&str, &[u8])> = vec![
            (TOPIC, b"DL/INFO"),
            (RECEIPT, id.as_bytes()),
            (EXPIRES, expires.as_bytes()),
            (HOLD, b"1"),
        ];
        producer.send(
            contract::topics::DOWNLINK,
            Some(client.as_bytes()),
            &vec![b'x'; payload],
            &headers,
            None,
        );
    };
    // Count: three held, the fourth refused.
    for n in 0..4 {
        hold("VIN-A", &format!("a{n}"), 10);
    }
    // Bytes per car: 1,500 fits, another 1,500 does not.
    hold("VIN-B", "b0", 1_500);
    hold("VIN-B", "b1", 1_500);
    // Bytes per router: A and B hold about 2,000; 1,500 more does not fit.
    hold("VIN-C", "c0", 1_500);
    let answered = receipts_by_id(&receipts, 3);
    for id in ["a3", "b1", "c0"] {
        assert_final(&answered, id, Outcome::HoldFull, DecidedBy::Router);
    }
    for bound in ["car_count", "car_bytes", "router_bytes"] {
        assert_eq!(
            router.metric(&format!(
                "carbridge_router_hold_refused_total{{bound=\"{bound}\"}}"
            )),
            1.0,
            "{bound}"
        );
    }
    assert_eq!(held_now(&[&router]), 4.0);
    assert_eq!(
        router.metric("carbridge_router_requests_dropped_total{reason=\"hold_full\"}"),
        3.0
    );
}

/// A router SIGKILLed while it holds requests: the survivor takes them
/// over from `mqtt.held` and delivers each once, in order.
#[test]
fn a_survivor_delivers_what_a_killed_router_held() {
    const PER_CAR: usize = 5;
    let stack = Stack::new(4, 2);
    let watch = ["--orphan-after-ms", "8000"];
    let survivor = stack.router_with("router-1", &watch);
    let mut killed = stack.router_with("router-2", &watch);
    stack.await_routers(&[&survivor, &killed]);
    let gateway = stack.gateway("gateway", 0);
    let receipts = stack.broker.collector(contract::topics::RECEIPTS);
    let producer = stack.broker.producer();
    // Two cars on each partition: both routers hold some.
    let mut ids: Vec<String> = Vec::new();
    for partition in 0..4 {
        let on = (0..)
            .map(|c| format!("VIN-ADOPT-{c}"))
            .filter(|id| testkit::java_partition(id.as_bytes(), 4) == partition);
        ids.extend(on.take(2));
    }
    let cars_n = ids.len();
    for n in 0..PER_CAR {
        for id in &ids {
            send(
                &producer,
                id,
                "DL/INFO",
                &format!("{id} {n}"),
                Some(600_000),
                Some(b"1"),
            );
        }
    }
    let total = (cars_n * PER_CAR) as f64;
    wait_until("the routers to hold every request", WAIT, || {
        held_now(&[&survivor, &killed]) == total
    });
    assert!(
        killed.metric("carbridge_router_held_requests") > 0.0,
        "the router to kill holds nothing"
    );
    // Each held record reached Kafka before its offset was committed.
    killed.signal("KILL");
    killed.wait_exit(WAIT);
    wait_until("the survivor to take over every held request", WAIT, || {
        survivor.metric("carbridge_router_partitions_assigned") == f64::from(stack.partitions)
            && held_now(&[&survivor]) == total
            && survivor.ready()
    });
    assert!(survivor.metric("carbridge_router_held_adopted_total") > 0.0);

    let cars: Vec<Car> = ids
        .iter()
        .map(|id| {
            let car = Car::connect(&gateway, id);
            car.subscribe("DL/#");
            car
        })
        .collect();
    for car in &cars {
        let got: Vec<String> = car
            .expect(PER_CAR)
            .into_iter()
            .map(|(_, payload)| String::from_utf8(payload).unwrap())
            .collect();
        let want: Vec<String> = (0..PER_CAR).map(|n| format!("{} {n}", car.id)).collect();
        assert_eq!(got, want, "{}", car.id);
    }
    let answered = receipts_by_id(&receipts, cars_n * PER_CAR);
    for id in &ids {
        for n in 0..PER_CAR {
            assert_final(
                &answered,
                &format!("{id} {n}"),
                Outcome::Written,
                DecidedBy::Gateway,
            );
        }
    }
    for car in &cars {
        assert!(
            car.drain(Duration::from_millis(300)).is_empty(),
            "{}",
            car.id
        );
    }
    assert_eq!(held_now(&[&survivor]), 0.0);
}
