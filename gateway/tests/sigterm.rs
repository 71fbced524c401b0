//! SIGTERM under load, on the real binary: the process exits 0 within its
//! bound, and every PUBLISH it read is in Kafka or counted as failed.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{RawClient, WAIT, spawn_binary};
use testkit::Broker;

const CARS: usize = 8;
/// Shutdown must finish within this: connections close, producers flush.
const EXIT_BOUND: Duration = Duration::from_secs(20);

#[test]
fn sigterm_under_load_accounts_for_every_publish() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 2, &[]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut child, addr) = spawn_binary(&broker, log.as_file(), &["--log-format", "json"]);

    let stop = Arc::new(AtomicBool::new(false));
    let cars: Vec<_> = (0..CARS)
        .map(|car| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut client, code) = RawClient::connect(addr, &format!("VIN-TERM-{car}"), 60);
                assert_eq!(code, 0);
                let mut seq = 0u64;
                // Publishes until the gateway goes away.
                while !stop.load(Ordering::Relaxed) {
                    let payload = format!("{car}-{seq}");
                    if std::io::Write::write_all(&mut client.stream, &publish(&payload)).is_err() {
                        break;
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    let terminated = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if terminated.elapsed() > EXIT_BOUND {
            let _ = child.kill();
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            let tail: Vec<&str> = output.lines().rev().take(30).collect();
            panic!(
                "gateway still running after {EXIT_BOUND:?}; log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    for car in cars {
        car.join().unwrap();
    }
    let output = std::fs::read_to_string(log.path()).unwrap();
    for line in output.lines().filter(|l| {
        l.contains("\"level\":\"WARN\"")
            || l.contains("shard stopped")
            || l.contains("signal received")
            || l.contains("\"message\":\"stopped\"")
    }) {
        eprintln!("gateway: {line}");
    }
    assert!(status.success(), "exit status {status}; log:\n{output}");

    // The last log line accounts for every PUBLISH read.
    let stopped = output
        .lines()
        .find(|line| line.contains("\"message\":\"stopped\""))
        .unwrap_or_else(|| panic!("no final accounting in the log:\n{output}"));
    let field = |name: &str| -> u64 {
        let start = stopped.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        stopped[start..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (received, acked, failed) = (field("received"), field("acked"), field("failed"));
    assert_eq!(field("in_flight_bytes"), 0);
    assert_eq!(received, acked + failed, "{stopped}");
    assert!(
        received > 1000,
        "too little load to mean anything: {received}"
    );

    // Everything acknowledged is in Kafka, once (a debug-build consumer
    // reading a few hundred thousand records needs more than the usual wait).
    let collector = broker.collector("cs.uplink");
    let records = collector.collect(usize::try_from(acked).unwrap(), 4 * WAIT);
    assert_eq!(collector.collect_for(Duration::from_secs(1)), vec![]);
    let distinct: HashSet<_> = records.iter().map(|r| r.value.clone()).collect();
    assert_eq!(distinct.len(), records.len(), "duplicates in Kafka");
    eprintln!(
        "received {received} acked {acked} failed {failed}; exited in {:?}",
        terminated.elapsed()
    );
}

fn publish(payload: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    codec::Publish::qos0("UL/POS", payload.as_bytes())
        .unwrap()
        .encode(&mut out)
        .unwrap();
    out.to_vec()
}
