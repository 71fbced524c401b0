//! The router binary under systemd's notify protocol: READY=1 once its
//! tables are rebuilt, WATCHDOG=1 while its loop turns, STOPPING=1 on
//! SIGTERM. The test plays systemd's notify socket.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn readiness_watchdog_and_stop_are_notified() {
    let stack = common::Stack::new(2, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--kafka-bootstrap", &stack.broker.bootstrap_servers()])
        .args(["--admin-listen", "", "--session-timeout-ms", "6000"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let mut read = |until: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            let n = socket.recv(&mut buf).unwrap();
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            said.push(message.clone());
            if message.contains(until) {
                return;
            }
        }
        panic!("no {until}: {said:?}");
    };
    read("READY=1");
    read("WATCHDOG=1");
    read("WATCHDOG=1");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    read("STOPPING=1");
    assert!(child.wait().unwrap().success());
}
