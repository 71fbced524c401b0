//! Helpers shared by the gateway's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use gateway::Gateway;
use gateway::config::Config;
use gateway::metrics::ShardMetrics;
use testkit::{Broker, Proc, free_port};

pub fn config(broker: &Broker, shards: usize) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        ..Config::default()
    };
    config.admin.listen = "127.0.0.1:0".to_owned();
    // Uplink tests: the downlink tests turn it on with their own topics.
    config.downlink.enabled = false;
    config
        .kafka
        .properties
        .insert("bootstrap.servers".to_owned(), broker.bootstrap_servers());
    // What testkit::GATEWAY_ON_TANSU gives the binary as `-X KEY=VALUE`.
    for property in testkit::GATEWAY_ON_TANSU.chunks(2) {
        let (key, value) = property[1].split_once('=').unwrap();
        config
            .kafka
            .properties
            .insert(key.to_owned(), value.to_owned());
    }
    config
}

/// Resident memory of process `pid` (`VmRSS`), in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The gateway binary in its own process (2 shards; no admin endpoint and
/// no downlink unless `extra` names them) on a free port; returns once it
/// accepts connections.
pub fn spawn_binary(broker: &Broker, extra: &[&str]) -> Proc {
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let named = |flag: &str| extra.contains(&flag);
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .args(["--listen", &mqtt.to_string(), "--shards", "2"])
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(testkit::GATEWAY_ON_TANSU);
    if !named("--admin-listen") {
        command.args(["--admin-listen", ""]);
    }
    if !named("--bridge-id") {
        command.arg("--no-downlink");
    }
    let mut gateway = Proc::spawn("gateway", command.args(extra)).with_mqtt(mqtt);
    if let Some(admin) = extra
        .iter()
        .skip_while(|arg| **arg != "--admin-listen")
        .nth(1)
        .and_then(|addr| addr.parse().ok())
    {
        gateway = gateway.with_admin(admin);
    }
    gateway.wait_for("to listen", |_| TcpStream::connect(mqtt).is_ok());
    gateway
}

/// Sum of one counter over all shards.
pub fn total(gateway: &Gateway, counter: impl Fn(&ShardMetrics) -> u64) -> u64 {
    gateway.metrics().iter().map(|m| counter(m)).sum()
}

/// Publishes one message with the Python paho-mqtt client (PyPI), MQTT
/// 3.1.1, over TLS when `tls` names the CA, certificate and key files.
pub fn paho_pub(
    host: &str,
    port: u16,
    client_id: &str,
    topic: &str,
    message: &str,
    tls: Option<[&std::path::Path; 3]>,
) {
    let script = r#"
import sys
import threading
import paho.mqtt.client as mqtt
host, port, client_id, topic, message = sys.argv[1:6]
try:  # paho-mqtt 2.x
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
except AttributeError:  # 1.x, as Debian packages it
    client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
if len(sys.argv) == 9:
    ca, cert, key = sys.argv[6:9]
    client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
# Publish only after the CONNACK: a client that closes with the server's
# bytes (CONNACK, a TLS session ticket) unread makes its kernel send a RST,
# and the gateway's kernel then drops what it had not yet read.
connected = threading.Event()
client.on_connect = lambda *args: connected.set()
client.connect(host, int(port), keepalive=30)
client.loop_start()
if not connected.wait(timeout=10):
    sys.exit("no CONNACK")
info = client.publish(topic, message, qos=0)
info.wait_for_publish(timeout=10)
client.disconnect()
client.loop_stop()
"#;
    let mut command = Command::new("python3");
    command
        .args([
            "-c",
            script,
            host,
            &port.to_string(),
            client_id,
            topic,
            message,
        ])
        .args(tls.iter().flatten());
    let status = command.status().expect("python3 runs");
    assert!(
        status.success(),
        "paho-mqtt publish failed: {status} (pip install paho-mqtt)"
    );
}
