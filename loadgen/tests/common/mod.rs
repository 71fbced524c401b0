//! The stack's processes for loadgen's integration tests: topics by
//! `carbridge-topics`, router and gateway binaries, each killed when its
//! guard drops.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use testkit::{Broker, free_port, http_get, workspace_binary};
pub use testkit::{Proc, WAIT};

/// Every topic, with `partitions` partitions and `slots` slots.
pub fn topics(broker: &Broker, partitions: u32, slots: u32) {
    let status = Command::new(workspace_binary("carbridge-topics"))
        .args(["create", "--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(["--partitions", &partitions.to_string()])
        .args(["--slots", &slots.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn ready(admin: SocketAddr) -> bool {
    http_get(admin, "/readyz").is_some_and(|(status, _)| status == 200)
}

pub fn router(broker: &Broker) -> Proc {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut router = Proc::spawn(
        "router",
        Command::new(workspace_binary("router"))
            .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
            .args(["--admin-listen", &admin.to_string()])
            .args(testkit::ROUTER_ON_TANSU),
    )
    .with_admin(admin);
    router.wait_ready();
    router
}

/// A gateway with bridge id `bridge`; `config` is a TOML file or none.
pub fn gateway(
    broker: &Broker,
    bridge: u32,
    config: Option<&std::path::Path>,
) -> (Proc, SocketAddr) {
    let (process, mqtt, _) = gateway_with_admin(broker, bridge, config);
    (process, mqtt)
}

/// As [`gateway`], with its admin address too.
pub fn gateway_with_admin(
    broker: &Broker,
    bridge: u32,
    config: Option<&std::path::Path>,
) -> (Proc, SocketAddr, SocketAddr) {
    gateway_on_shards(broker, bridge, config, 2)
}

/// As [`gateway_with_admin`], with `shards` shards.
pub fn gateway_on_shards(
    broker: &Broker,
    bridge: u32,
    config: Option<&std::path::Path>,
    shards: usize,
) -> (Proc, SocketAddr, SocketAddr) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gateway = gateway_at(broker, bridge, config, shards, mqtt, admin);
    (gateway, mqtt, admin)
}

/// A gateway listening on `mqtt`, its admin endpoint on `admin` (where an
/// earlier one listened: a restart).
pub fn gateway_at(
    broker: &Broker,
    bridge: u32,
    config: Option<&std::path::Path>,
    shards: usize,
    mqtt: SocketAddr,
    admin: SocketAddr,
) -> Proc {
    let mut command = Command::new(workspace_binary("gateway"));
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(["--listen", &mqtt.to_string()])
        .args(["--shards", &shards.to_string()])
        .args(["--bridge-id", &bridge.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(testkit::GATEWAY_ON_TANSU);
    let mut gateway = Proc::spawn("gateway", &mut command)
        .with_admin(admin)
        .with_mqtt(mqtt);
    gateway.wait_ready();
    gateway
}

/// loadgen running in the background against `targets`, quiet, with its
/// reports in a directory of its own.
pub struct Fleet {
    child: Child,
    dir: tempfile::TempDir,
}

impl Fleet {
    pub fn start(broker: &Broker, targets: &[SocketAddr], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
        for target in targets {
            command.args(["--target", &target.to_string()]);
        }
        let child = command
            .args(["--kafka-bootstrap", &broker.bootstrap_servers(), "--quiet"])
            .args(args)
            .arg("--report-json")
            .arg(dir.path().join("report.json"))
            .arg("--report-html")
            .arg(dir.path().join("report.html"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    /// Waits for the run to end; its JSON report.
    pub fn report(self) -> loadgen::report::Report {
        let output = self.child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "loadgen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json = std::fs::read_to_string(self.dir.path().join("report.json")).unwrap();
        serde_json::from_str(&json).unwrap()
    }
}

/// A gauge or counter of the admin endpoint at `admin` (0 if absent).
pub fn metric(admin: SocketAddr, name: &str) -> f64 {
    testkit::scrape(admin)
        .and_then(|samples| samples.get(name).copied())
        .unwrap_or(0.0)
}
