//! A reconnect storm beyond the gateway's accept limit while a fleet is
//! connected and publishing: the connected cars' messages all arrive, and
//! the bridge's part of their latency stays bounded.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Fleet, gateway_with_admin, metric, router, topics};
use testkit::Broker;

/// Storm connections: each connects and sends its CONNECT, then holds.
const STORM: usize = 4_000;
/// Per shard; the gateway runs two.
const ACCEPT_RATE: u32 = 250;

fn storm(target: SocketAddr, threads: usize, per_thread: usize) -> Vec<TcpStream> {
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..per_thread {
                    // A full backlog drops the SYN: the kernel retries it.
                    let Ok(mut stream) =
                        TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    else {
                        continue;
                    };
                    let mut connect = bytes::BytesMut::new();
                    codec::Connect::new(format!("STORM{t:02}{i:05}"), 60)
                        .encode(&mut connect)
                        .unwrap();
                    let _ = stream.write_all(&connect);
                    held.push(stream);
                }
                held
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|worker| worker.join().unwrap())
        .collect()
}

#[test]
fn a_connect_storm_beyond_the_accept_limit_leaves_connected_cars_alone() {
    let broker = Broker::start();
    topics(&broker, 4, 2);
    let _router = router(&broker);
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("[limits]\naccept_rate_per_shard = {ACCEPT_RATE}\n"),
    )
    .unwrap();
    let (_gateway, mqtt, admin) = gateway_with_admin(&broker, 0, Some(config.path()));

    let fleet = Fleet::start(
        &broker,
        &[mqtt],
        &[
            "--cars",
            "1000",
            "--connect-rate",
            "400",
            "--publish-interval-ms",
            "1000",
            "--downlink-rate",
            "0",
            "--no-subscribe",
            "--warmup-secs",
            "5",
            "--duration-secs",
            "10",
        ],
    );
    // The fleet connected, then the storm: eight times what the gateway
    // accepts in a second.
    testkit::wait_until("the fleet connected", Duration::from_secs(30), || {
        metric(admin, "carbridge_gateway_connections_open") >= 1000.0
    });
    let held = storm(mqtt, 8, STORM / 8);
    let report = fleet.report();

    assert_eq!(report.connect.connected, 1000, "{:?}", report.connect);
    let up = &report.uplink;
    assert!(up.sent > 9_000, "{up:?}");
    assert_eq!(up.lost, 0, "the connected cars lost messages: {up:?}");
    // The bridge's own part (car -> gateway -> producer), not the broker's.
    let bridge = &up
        .stages
        .as_ref()
        .expect("gateway mode splits the latency")
        .bridge;
    assert!(
        bridge.p99_ms < 250.0,
        "the storm starved the connected cars: bridge p99 {} ms",
        bridge.p99_ms
    );
    let limited = testkit::scrape(admin)
        .unwrap()
        .get("carbridge_gateway_limited_total{limit=\"accept_rate\"}")
        .copied()
        .unwrap_or(0.0);
    assert!(limited > 0.0, "the storm never reached the accept limit");
    eprintln!(
        "storm of {} connections held; bridge p50 {} ms p99 {} ms; accept limit hit {limited} times",
        held.len(),
        bridge.p50_ms,
        bridge.p99_ms
    );
}
