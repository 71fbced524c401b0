//! Start-up checks on the real binary, started with lowered limits
//! (`prlimit`, util-linux): the open-files limit raised and the cap it sets
//! warned about; too little locked memory refused with what to change.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, http_get};

const WAIT: Duration = Duration::from_secs(30);

fn gateway_under(limit: &str) -> Command {
    let mut command = Command::new("prlimit");
    command
        .arg(limit)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--shards",
            "2",
            "--no-downlink",
            "--kafka-bootstrap",
            "127.0.0.1:1",
        ]);
    command
}

#[test]
fn the_open_files_limit_is_raised_and_its_cap_reported() {
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = gateway_under("--nofile=1024:4096")
        .args([
            "--listen",
            &mqtt.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let deadline = Instant::now() + WAIT;
    while http_get(admin, "/readyz").map(|(status, _)| status) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited: {}",
            std::fs::read_to_string(log.path()).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let said = std::fs::read_to_string(log.path()).unwrap();
    assert!(said.contains("raised the open-files limit"), "{said}");
    assert!(
        said.contains("caps this gateway at about 3840 connections"),
        "{said}"
    );
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        open_files.split_whitespace().any(|w| w == "4096"),
        "{open_files}"
    );
}

#[test]
fn too_little_locked_memory_is_refused_with_what_to_change() {
    let output = gateway_under("--memlock=65536:65536")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", ""])
        .stdin(Stdio::null())
        .output()
        .expect("prlimit (util-linux) runs");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        said.contains("RLIMIT_MEMLOCK") && said.contains("LimitMEMLOCK"),
        "{said}"
    );
}
