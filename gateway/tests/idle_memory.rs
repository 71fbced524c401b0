//! Gateway memory per idle connection, measured on the real binary: the
//! growth of its resident set from 500 to 10,500 connected, silent cars.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{RawClient, WAIT};
use testkit::Broker;

/// ARCHITECTURE goal: at most 2 KiB of gateway memory per idle connection.
const GOAL_BYTES: u64 = 2048;

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn idle_connections_cost_little_memory() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            &addr.to_string(),
            "--shards",
            "2",
            "--admin-listen",
            "",
        ])
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "gateway did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect = |range: std::ops::Range<usize>| -> Vec<RawClient> {
        range
            .map(|i| {
                let (client, code) = RawClient::connect(addr, &format!("VIN-IDLE-{i:08}"), 600);
                assert_eq!(code, 0);
                client
            })
            .collect()
    };
    // Warm up allocator arenas and maps before the baseline.
    let mut cars = connect(0..500);
    std::thread::sleep(Duration::from_millis(500));
    let baseline = resident_kib(child.id());
    cars.extend(connect(500..10_500));
    std::thread::sleep(Duration::from_millis(500));
    let loaded = resident_kib(child.id());
    let per_connection = (loaded.saturating_sub(baseline)) * 1024 / 10_000;
    eprintln!(
        "resident {baseline} KiB with 500 idle cars, {loaded} KiB with 10,500: \
         {per_connection} bytes per idle connection"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(cars);
    assert!(
        per_connection <= GOAL_BYTES,
        "{per_connection} bytes per idle connection (goal {GOAL_BYTES})"
    );
}
