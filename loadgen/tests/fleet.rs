//! loadgen against real processes: a tansu broker, topics from
//! `carbridge-topics`, gateway and router binaries. A clean run's report
//! accounts for every message; a fault injected on the way (one gateway
//! maps the uplink to a topic loadgen does not read) shows up as loss.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{Proc, gateway, router, topics};
use loadgen::report::Report;
use testkit::{Broker, free_port};

fn loadgen(broker: &Broker, targets: &[SocketAddr], extra: &[&str]) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    for target in targets {
        command.args(["--target", &target.to_string()]);
    }
    let output = command
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(["--cars", "60", "--cars-per-worker", "25"])
        .args(["--publish-interval-ms", "500", "--payload-size", "100"])
        .args(["--warmup-secs", "2", "--duration-secs", "3", "--quiet"])
        .arg("--report-json")
        .arg(&json)
        .arg("--report-html")
        .arg(&html)
        .args(extra)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "loadgen failed:\n{said}");
    assert!(said.contains("uplink"), "no summary:\n{said}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg"), "the HTML report has no plots");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

#[test]
fn a_clean_run_accounts_for_every_message() {
    let broker = Broker::start();
    topics(&broker, 4, 4);
    let _router = router(&broker);
    let (_gateway, mqtt) = gateway(&broker, 0, None);
    let report = loadgen(&broker, &[mqtt], &["--downlink-rate", "40"]);

    assert_eq!(report.connect.connected, 60, "{:?}", report.connect);
    assert_eq!(report.connect.failed, 0);
    let up = &report.uplink;
    // 60 cars, one message per 500 ms, for about 5 s.
    assert!(up.sent >= 400, "{up:?}");
    assert_eq!(up.received, up.sent, "{up:?}");
    assert_eq!((up.lost, up.duplicates, up.out_of_order), (0, 0, 0));
    assert!(up.latency.count > 0 && up.latency.p99_ms > 0.0, "{up:?}");
    let down = report.downlink.as_ref().unwrap();
    assert!(down.sent >= 80, "{down:?}");
    assert_eq!(down.received, down.sent, "{down:?}");
    assert_eq!((down.lost, down.duplicates), (0, 0));
    assert!(report.timeline.iter().any(|t| t.warmup));
    assert!(
        report
            .timeline
            .iter()
            .any(|t| !t.warmup && t.uplink_received > 0)
    );
}

#[test]
fn records_that_never_reach_the_topic_are_reported_lost() {
    let broker = Broker::start();
    topics(&broker, 4, 4);
    broker.create_topic("cs.elsewhere", 1, &[]);
    let (_good, good) = gateway(&broker, 0, None);
    // The fault: the second gateway writes the same cars' data elsewhere.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "mapping = [{ mqtt = \"^UL/.+\", kafka = \"cs.elsewhere\" }]\n",
    )
    .unwrap();
    let (_bad, bad) = gateway(&broker, 1, Some(config.path()));
    // Cars alternate between the two targets: half go through the bad one.
    let report = loadgen(&broker, &[good, bad], &["--no-subscribe"]);

    let up = &report.uplink;
    assert_eq!(report.connect.connected, 60);
    assert!(up.lost > 0, "the fault did not show: {up:?}");
    assert_eq!(up.received + up.lost, up.sent, "{up:?}");
    // Every car sends about as much: about half is lost.
    let share = up.lost as f64 / up.sent as f64;
    assert!((0.4..0.6).contains(&share), "lost share {share}: {up:?}");
    assert_eq!(up.duplicates, 0);
    assert!(report.downlink.is_none());
}

/// Peer mode against mosquitto (Debian's): the same fleet and the same
/// accounting through MQTT subscribers and an MQTT publisher.
#[test]
fn peer_mode_measures_any_mqtt_server() {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Debian's mosquitto (scripts/setup.sh installs it).
    let mut mosquitto = Proc::spawn(
        "mosquitto",
        Command::new("mosquitto").args(["-p", &port.to_string()]),
    )
    .with_mqtt(addr);
    mosquitto.wait_for("to listen", |_| std::net::TcpStream::connect(addr).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--peer",
            "--target",
            &addr.to_string(),
            "--topic",
            "UL/POS/{shard}",
        ])
        .args([
            "--cars",
            "50",
            "--publish-interval-ms",
            "200",
            "--downlink-rate",
            "100",
        ])
        .args([
            "--warmup-secs",
            "2",
            "--duration-secs",
            "3",
            "--quiet",
            "--fail-on-loss",
        ])
        .arg("--report-json")
        .arg(&json)
        .arg("--report-html")
        .arg(dir.path().join("report.html"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.mode, "peer");
    assert_eq!(report.connect.connected, 50);
    assert!(report.uplink.sent >= 500, "{:?}", report.uplink);
    assert_eq!(report.uplink.received, report.uplink.sent);
    let down = report.downlink.as_ref().unwrap();
    assert!(down.sent >= 250, "{down:?}");
    assert_eq!(down.received, down.sent, "{down:?}");
    drop(mosquitto);
}

/// Cars with nothing to publish within their keep-alive send PINGREQ, as
/// real clients do, and so keep their connections: the gateway closes a
/// car silent for one and a half keep-alives (3 s here), and the measured
/// window is three times that.
#[test]
fn quiet_cars_keep_their_connections_with_pings() {
    let broker = Broker::start();
    topics(&broker, 2, 2);
    let (_gateway, mqtt) = gateway(&broker, 0, None);
    let report = common::Fleet::start(
        &broker,
        &[mqtt],
        &[
            "--cars",
            "30",
            "--publish-interval-ms",
            "3600000",
            "--keep-alive-secs",
            "2",
            "--no-subscribe",
            "--warmup-secs",
            "2",
            "--duration-secs",
            "9",
        ],
    )
    .report();
    assert_eq!(report.connect.connected, 30, "{:?}", report.connect);
    assert_eq!(report.connect.failed, 0, "{:?}", report.connect);
    assert_eq!(report.dropped_connections, 0, "a quiet car was closed");
    // Every second of the measured window found all of them connected.
    let end = report.warmup_secs + report.measured_secs;
    let connected: Vec<u64> = report
        .timeline
        .iter()
        .filter(|tick| !tick.warmup && tick.t < end)
        .map(|tick| tick.connected)
        .collect();
    assert!(connected.len() >= 6, "{connected:?}");
    assert!(connected.iter().all(|&n| n == 30), "{connected:?}");
}

/// A failed connect is counted under its cause: a server that closes at
/// once refused it; one that never answers left it without a CONNACK
/// (loadgen waits 10 s).
#[test]
fn failed_connects_are_counted_by_cause() {
    let broker = Broker::start();
    topics(&broker, 2, 2);
    // Never accepted: the kernel completes the handshake, and the CONNECT
    // waits in the socket unanswered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closing = closer.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in closer.incoming() {
            drop(stream);
        }
    });
    let report = common::Fleet::start(
        &broker,
        &[silent.local_addr().unwrap(), closing],
        &[
            "--cars",
            "6",
            "--no-subscribe",
            "--warmup-secs",
            "1",
            "--duration-secs",
            "12",
        ],
    )
    .report();
    let failed = report.connect.failed_by;
    assert_eq!(report.connect.failed, 6, "{:?}", report.connect);
    assert_eq!((failed.refused, failed.no_connack), (3, 3), "{failed:?}");
    assert_eq!((failed.socket, failed.tls), (0, 0), "{failed:?}");
}
