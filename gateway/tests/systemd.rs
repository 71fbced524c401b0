//! The gateway binary under systemd's notify protocol: READY=1 once it
//! serves, WATCHDOG=1 while its shards turn, STATUS=draining and
//! STOPPING=1 on SIGTERM. The test plays systemd's notify socket.

use std::process::Command;

use testkit::NotifySocket;

#[test]
fn readiness_watchdog_and_stop_are_notified() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "",
            "--shards",
            "2",
        ])
        .args(["--no-downlink", "--kafka-bootstrap", "127.0.0.1:1"]);
    NotifySocket::new().check_lifecycle(command, &["STATUS=draining", "STOPPING=1"]);
}
