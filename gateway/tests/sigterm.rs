//! SIGTERM under load, on the real binary: the process exits 0 within its
//! bound, and every PUBLISH it read is in Kafka or counted as failed.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::spawn_binary;
use testkit::{Broker, RawClient};

const CARS: usize = 8;
/// Shutdown must finish within this: connections close, producers flush.
const EXIT_BOUND: Duration = Duration::from_secs(20);
/// Bound on reading back every acknowledged record: a debug-build consumer
/// reading a few hundred thousand records needs more than the usual wait.
const READ_BACK: Duration = Duration::from_secs(120);

#[test]
fn sigterm_under_load_accounts_for_every_publish() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 2, &[]);
    let mut gateway = spawn_binary(&broker, &["--log-format", "json"]);
    let addr = gateway.mqtt();

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
    gateway.signal("TERM");
    // Fails with the log's tail if the gateway is still running.
    let status = gateway.wait_exit(EXIT_BOUND);
    stop.store(true, Ordering::Relaxed);
    for car in cars {
        car.join().unwrap();
    }
    let output = gateway.log_text();
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

    // Everything acknowledged is in Kafka, once.
    let collector = broker.collector("cs.uplink");
    let records = collector.collect(usize::try_from(acked).unwrap(), READ_BACK);
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
