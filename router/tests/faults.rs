//! The downlink under process faults: a router stopped mid-stream, a
//! gateway killed and restarted. Every part is its own process.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{Car, Stack};
use testkit::{Proc, WAIT, wait_until};

/// The "stopped" line a router logs on its way out (JSON logs), as counters.
fn final_counters(router: &Proc) -> serde_json::Map<String, serde_json::Value> {
    router
        .log_text()
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| line.get("fields").cloned())
        .filter_map(|fields| match fields {
            serde_json::Value::Object(map)
                if map.get("message").and_then(|m| m.as_str()) == Some("stopped") =>
            {
                Some(map)
            }
            _ => None,
        })
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no 'stopped' line in the router's log:\n{}",
                router.log_text()
            )
        })
}

/// Every car got "{its id} 0" … "{its id} {n - 1}", in order, and nothing
/// more.
fn expect_each_once_in_order(cars: &[Car], n: usize) {
    for car in cars {
        let got: Vec<String> = car
            .expect(n)
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).unwrap())
            .collect();
        let want: Vec<String> = (0..n).map(|r| format!("{} {r}", car.id)).collect();
        assert_eq!(got, want, "car {}", car.id);
    }
    for car in cars {
        assert!(
            car.drain(Duration::from_millis(200)).is_empty(),
            "duplicates to {}",
            car.id
        );
    }
}

fn counter(fields: &serde_json::Map<String, serde_json::Value>, name: &str) -> f64 {
    fields
        .get(name)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
}

/// Two gateways, two routers; one router stops (SIGTERM) while requests
/// stream in. Every car still gets exactly its own messages, in order, and
/// the two routers' counters add up to every request.
#[test]
fn delivery_continues_when_a_router_stops_mid_stream() {
    const CARS_PER_GATEWAY: usize = 6;
    const PER_CAR: usize = 100;
    let stack = Stack::new(4, 4);
    let first = stack.router("router-1");
    let mut second = stack.router("router-2");
    stack.await_routers(&[&first, &second]);
    let gateways = [stack.gateway("gateway-0", 0), stack.gateway("gateway-1", 1)];

    let mut cars = Vec::new();
    for (g, gateway) in gateways.iter().enumerate() {
        for c in 0..CARS_PER_GATEWAY {
            let car = Car::connect(gateway, &format!("VIN-G{g}-C{c}"));
            car.subscribe("DL/#");
            cars.push(car);
        }
    }
    let gateway_refs: Vec<&Proc> = gateways.iter().collect();
    stack.await_registry(&gateway_refs, &[&first, &second], 0.0);

    let ids: Vec<String> = cars.iter().map(|c| c.id.clone()).collect();
    let batch = |rounds: std::ops::Range<usize>| -> Vec<(&str, &str, Vec<u8>)> {
        rounds
            .flat_map(|round| {
                ids.iter()
                    .map(move |id| (id.as_str(), "DL/INFO", format!("{id} {round}").into_bytes()))
            })
            .collect()
    };
    stack.request_unbatched(&batch(0..PER_CAR / 2));
    // Mid-stream: the first half is being routed as the router leaves.
    second.signal("TERM");
    stack.request_unbatched(&batch(PER_CAR / 2..PER_CAR));
    assert!(second.wait_exit(WAIT).success(), "router-2 failed to stop");

    expect_each_once_in_order(&cars, PER_CAR);

    // The counters explain every request: what router-2 handled before it
    // stopped plus what router-1 handled is all of them, each routed once.
    let total = (cars.len() * PER_CAR) as f64;
    let stopped = final_counters(&second);
    wait_until("router-1 to account for the rest", WAIT, || {
        first.metric("carbridge_router_requests_received_total") + counter(&stopped, "received")
            == total
    });
    let routed = first.metric("carbridge_router_routed_acked_total") + counter(&stopped, "acked");
    assert_eq!(routed, total);
    assert_eq!(first.metric("carbridge_router_routed_failed_total"), 0.0);
    assert_eq!(counter(&stopped, "failed"), 0.0);
    let delivered: f64 = gateways
        .iter()
        .map(|g| g.metric("carbridge_gateway_downlink_delivered_total"))
        .sum();
    assert_eq!(delivered, total);
    assert!(
        first.metric("carbridge_router_rebalances_total") >= 2.0,
        "router-1 never saw the rebalance"
    );
}

/// A gateway is SIGKILLed: its sessions are never ended by it. Requests for
/// those cars make the restarted gateway (same bridge id, same slots)
/// report them gone, which clears them from the router; cars connecting to
/// the restarted gateway get their messages.
#[test]
fn a_crashed_gateway_is_cleaned_up_and_its_successor_serves() {
    let stack = Stack::new(4, 2);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let mut crashed = stack.gateway("gateway", 0);
    let stale: Vec<Car> = ["VIN-STALE-1", "VIN-STALE-2"]
        .iter()
        .map(|id| {
            let car = Car::connect(&crashed, id);
            car.subscribe("DL/#");
            car
        })
        .collect();
    stack.await_registry(&[&crashed], &[&router], 0.0);
    let written_before = crashed.metric("carbridge_gateway_registry_acked_total");
    assert_eq!(router.metric("carbridge_router_live_sessions"), 2.0);

    crashed.signal("KILL");
    crashed.wait_exit(WAIT);
    drop(stale);
    let restarted = stack.gateway("gateway-restarted", 0);
    let fresh = Car::connect(&restarted, "VIN-FRESH");
    fresh.subscribe("DL/#");
    stack.await_registry(&[&restarted], &[&router], written_before);
    assert_eq!(router.metric("carbridge_router_live_sessions"), 3.0);

    stack.request(&[
        ("VIN-STALE-1", "DL/INFO", b"to a dead connection".to_vec()),
        ("VIN-STALE-2", "DL/INFO", b"to a dead connection".to_vec()),
        ("VIN-FRESH", "DL/INFO", b"hello".to_vec()),
    ]);
    assert_eq!(fresh.expect(1)[0].1, b"hello");
    wait_until(
        "the stale sessions to be reported and cleared",
        WAIT,
        || {
            restarted.metric("carbridge_gateway_gone_reports_total") == 2.0
                && router.metric("carbridge_router_live_sessions") == 1.0
        },
    );
    assert_eq!(
        restarted.metric("carbridge_gateway_downlink_dropped_total{reason=\"not_held\"}"),
        2.0
    );
    // Now the router knows: the next request for a stale car is dropped
    // there, not sent to the gateway.
    stack.request(&[("VIN-STALE-1", "DL/INFO", b"again".to_vec())]);
    wait_until("the router to drop it as offline", WAIT, || {
        router.metric("carbridge_router_requests_dropped_total{reason=\"offline\"}") == 1.0
    });
    assert_eq!(
        restarted.metric("carbridge_gateway_downlink_received_total"),
        3.0
    );
}

/// Two routers, one SIGKILLed (a crash: it never leaves the group). Once
/// the broker expires it, the survivor routes every partition, including
/// requests that arrived while nobody owned them, and those of partitions
/// the dead router had never committed an offset for.
///
/// On tansu 0.6.0 the survivor is given back only its own partitions after
/// the expiry (docs/router.md, "A crashed router on tansu"); the router's
/// orphan watch notices the stalled partitions and rejoins the group.
#[test]
fn delivery_resumes_after_a_router_is_killed() {
    const CARS: usize = 11;
    const PER_CAR: usize = 20;
    let stack = Stack::new(4, 2);
    // ROUTER_KILL_TEST_WATCH=0 shows what happens without the watch.
    let after = std::env::var("ROUTER_KILL_TEST_WATCH").unwrap_or_else(|_| "8000".to_owned());
    let watch = ["--orphan-after-ms", after.as_str()];
    let survivor = stack.router_with("router-1", &watch);
    let mut killed = stack.router_with("router-2", &watch);
    stack.await_routers(&[&survivor, &killed]);
    let gateway = stack.gateway("gateway", 0);
    let cars: Vec<Car> = (0..CARS)
        .map(|c| {
            let car = Car::connect(&gateway, &format!("VIN-KILL-{c}"));
            car.subscribe("DL/#");
            car
        })
        .collect();
    stack.await_registry(&[&gateway], &[&survivor, &killed], 0.0);
    assert!(
        killed.metric("carbridge_router_partitions_assigned") > 0.0,
        "the router to kill owns nothing"
    );

    killed.signal("KILL");
    killed.wait_exit(WAIT);
    let requests: Vec<(&str, &str, Vec<u8>)> = (0..PER_CAR)
        .flat_map(|round| {
            cars.iter().map(move |car| {
                (
                    car.id.as_str(),
                    "DL/INFO",
                    format!("{} {round}", car.id).into_bytes(),
                )
            })
        })
        .collect();
    stack.request_unbatched(&requests);

    // Expiry (6 s) and the rebalance, then the orphan watch if needed.
    expect_each_once_in_order(&cars, PER_CAR);
    assert_eq!(
        survivor.metric("carbridge_router_partitions_assigned"),
        f64::from(stack.partitions)
    );
    wait_until("the orphan gauge to clear", WAIT, || {
        survivor.metric("carbridge_router_orphaned_partitions") == 0.0
    });
    // What happened, for a run with --nocapture (and RUST_LOG=info for
    // tansu's side).
    for line in stack.broker.log_text().lines() {
        if line.contains("missed heartbeat") {
            eprintln!("tansu: {line}");
        }
    }
    for line in survivor.log_text().lines() {
        if line.contains("partitions assigned") || line.contains("rejoin") {
            eprintln!("router-1: {line}");
        }
    }
    eprintln!(
        "survivor: {} orphan rejoins, {} rebalances",
        survivor.metric("carbridge_router_orphan_rejoins_total"),
        survivor.metric("carbridge_router_rebalances_total")
    );
}

/// A member of the router's group that holds partitions and never reads
/// them (a stuck instance): the orphan watch reports those partitions.
/// Rejoining cannot help here (the stuck member is still alive and gets
/// them again), so the instance only reports (`--no-orphan-rejoin`).
#[test]
fn partitions_a_stuck_member_holds_are_reported_orphaned() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let stack = Stack::new(4, 2);
    let router = stack.router_with(
        "router",
        &["--orphan-after-ms", "2000", "--no-orphan-rejoin"],
    );
    stack.await_routers(&[&router]);
    let stuck: BaseConsumer = stack
        .broker
        .client_config()
        .set("group.id", "carbridge-router")
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    stuck
        .subscribe(&[contract::topics::DOWNLINK, contract::topics::SESSIONS])
        .unwrap();
    // It polls (so it stays in the group) but routes nothing.
    wait_until("the stuck member to take half the partitions", WAIT, || {
        let _ = stuck.poll(Duration::from_millis(100));
        router.metric("carbridge_router_partitions_assigned") == 2.0 && router.ready()
    });
    let requests: Vec<(String, &str, Vec<u8>)> = (0..20)
        .map(|c| (format!("VIN-STUCK-{c}"), "DL/INFO", b"x".to_vec()))
        .collect();
    let requests: Vec<(&str, &str, Vec<u8>)> = requests
        .iter()
        .map(|(id, topic, payload)| (id.as_str(), *topic, payload.clone()))
        .collect();
    stack.request(&requests);
    wait_until(
        "the router to report the stuck member's partitions",
        WAIT,
        || {
            let _ = stuck.poll(Duration::from_millis(100));
            router.metric("carbridge_router_orphaned_partitions") == 2.0
        },
    );
    assert_eq!(router.metric("carbridge_router_orphan_rejoins_total"), 0.0);
    assert!(router.log_text().contains("no-orphan-rejoin"));
}
