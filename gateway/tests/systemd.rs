//! The gateway binary under systemd's notify protocol: READY=1 once it
//! serves, WATCHDOG=1 while its shards turn, STATUS=draining and
//! STOPPING=1 on SIGTERM. The test plays systemd's notify socket.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Command, Stdio};

use testkit::NotifySocket;

#[test]
fn readiness_watchdog_and_stop_are_notified() {
    let mut notify = NotifySocket::new();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "",
            "--shards",
            "2",
        ])
        .args(["--no-downlink", "--kafka-bootstrap", "127.0.0.1:1"])
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    notify.expect("READY=1");
    // At least two watchdog pings, 100 ms apart.
    notify.expect("WATCHDOG=1");
    notify.expect("WATCHDOG=1");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    notify.expect("STATUS=draining");
    notify.expect("STOPPING=1");
    assert!(child.wait().unwrap().success());
}
