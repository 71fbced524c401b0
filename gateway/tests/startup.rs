//! Start-up checks on the real binary, started with lowered limits
//! (`prlimit`, util-linux): the open-files limit raised and the cap it sets
//! warned about; too little locked memory refused with what to change.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use testkit::{Proc, free_port};

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
    // prlimit (util-linux) execs the gateway: one process.
    let mut gateway = Proc::spawn(
        "the gateway under prlimit",
        gateway_under("--nofile=1024:4096").args([
            "--listen",
            &mqtt.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ]),
    )
    .with_admin(admin);
    gateway.wait_ready();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gateway.id())).unwrap();
    gateway.kill();
    let said = gateway.log_text();
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
