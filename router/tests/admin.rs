//! The router's admin endpoint under siege and with its routing loop
//! stuck: probes answer within 100 ms while 1,000 clients hold connections
//! to it that never finish a request; `/livez` says that the routing loop
//! stopped turning, and for how long.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::Stack;
use testkit::{Crowd, Stalled, WAIT, await_status, http_get, wait_until};

/// The bound on a probe while the endpoint is under siege.
const PROBE_BOUND: Duration = Duration::from_millis(100);
/// Where the crowd comes from; the probes come from 127.0.0.1.
const CROWD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

#[test]
fn probes_answer_at_once_while_a_thousand_clients_crowd_the_admin_port() {
    let stack = Stack::new(2, 2);
    let router = stack.router("router");
    stack.await_routers(&[&router]);
    let admin = router.admin();
    let closed = |reason: &str| {
        router.metric(&format!(
            "carbridge_admin_connections_closed_total{{reason=\"{reason}\"}}"
        ))
    };
    // The default bound (256): the crowd's own connections make room.
    let crowd = Crowd::start(admin, CROWD, 500, 500, false);
    wait_until("the router to make room", WAIT, || {
        closed("evicted") >= 744.0
    });
    let (started, mut slowest, mut probes) = (Instant::now(), Duration::ZERO, 0);
    // Within the default head timeout (5 s): the crowd stays connected.
    while started.elapsed() < Duration::from_secs(4) {
        for path in ["/healthz", "/readyz", "/livez", "/metrics"] {
            let asked = Instant::now();
            let status = http_get(admin, path).map(|(status, _)| status);
            let took = asked.elapsed();
            assert_eq!(status, Some(200), "{path} after {probes} probes");
            assert!(took < PROBE_BOUND, "{path} took {took:?}");
            slowest = slowest.max(took);
            probes += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{probes} probes, the slowest {slowest:?}");
    assert!(router.metric("carbridge_admin_connections_open") <= 256.0);
    assert!(crowd.open() >= 200, "{} open", crowd.open());
}

#[test]
fn livez_says_the_routing_loop_stopped_turning() {
    let stack = Stack::new(2, 2);
    let router = stack.router_with("router", &["--liveness-timeout-secs", "2"]);
    stack.await_routers(&[&router]);
    let admin = router.admin();
    assert_eq!(http_get(admin, "/livez"), Some((200, "live\n".to_owned())));

    // The routing loop runs on the main thread; Kafka's threads and the
    // admin thread run on.
    let stalled = Stalled::threads(router.id(), "router");
    let stopped = Instant::now();
    let said = await_status(admin, "/livez", 503);
    assert!(stopped.elapsed() >= Duration::from_secs(2));
    assert!(
        said.starts_with("routing loop: not turned for ")
            && said.ends_with(" s (liveness timeout 2 s)\n"),
        "{said}"
    );
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);

    stalled.resume();
    assert_eq!(await_status(admin, "/livez", 200), "live\n");
    assert!(router.ready());
}
