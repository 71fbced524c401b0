//! The router binary under systemd's notify protocol: READY=1 once its
//! tables are rebuilt, WATCHDOG=1 while its loop turns, STOPPING=1 on
//! SIGTERM. The test plays systemd's notify socket.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use testkit::NotifySocket;

#[test]
fn readiness_watchdog_and_stop_are_notified() {
    let stack = common::Stack::new(2, 2);
    let mut command = Command::new(env!("CARGO_BIN_EXE_router"));
    command
        .args(["--kafka-bootstrap", &stack.broker.bootstrap_servers()])
        .args(["--admin-listen", "", "--session-timeout-ms", "6000"]);
    NotifySocket::new().check_lifecycle(command, &["STOPPING=1"]);
}
