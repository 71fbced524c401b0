//! Helpers shared by the gateway's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::{Connect, Decoder, Packet, Publish, Role};
use gateway::Gateway;
use gateway::config::Config;
use gateway::metrics::ShardMetrics;
use testkit::Broker;

pub const WAIT: Duration = Duration::from_secs(30);

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
    // As testkit::GATEWAY_ON_TANSU does for the binary.
    config
        .kafka
        .properties
        .insert("enable.idempotence".to_owned(), "false".to_owned());
    config
}

/// Resident memory of process `pid` (`VmRSS`), in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The gateway binary in its own process (2 shards, no admin endpoint
/// unless `extra` names one) on a free port, its output (stdout and stderr) to `log`; returns once it
/// accepts connections.
pub fn spawn_binary(broker: &Broker, log: &std::fs::File, extra: &[&str]) -> (Child, SocketAddr) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let admin = (!extra.contains(&"--admin-listen")).then_some(["--admin-listen", ""]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", &addr.to_string(), "--shards", "2"])
        .args(admin.iter().flatten())
        .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
        .args(testkit::GATEWAY_ON_TANSU)
        .args(
            (!extra.contains(&"--bridge-id"))
                .then_some("--no-downlink")
                .iter(),
        )
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "gateway did not listen");
        assert!(child.try_wait().unwrap().is_none(), "gateway exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// Sum of one counter over all shards.
pub fn total(gateway: &Gateway, counter: impl Fn(&ShardMetrics) -> u64) -> u64 {
    gateway.metrics().iter().map(|m| counter(m)).sum()
}

/// A blocking MQTT client on raw sockets, for tests that need to send
/// exactly the bytes they choose.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    pub fn connect_tcp(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self { stream }
    }

    /// TCP connect, CONNECT, and the CONNACK's return code.
    pub fn connect(addr: SocketAddr, client_id: &str, keep_alive: u16) -> (Self, u8) {
        let mut client = Self::connect_tcp(addr);
        let mut out = BytesMut::new();
        Connect::new(client_id, keep_alive)
            .encode(&mut out)
            .unwrap();
        client.send(&out);
        let code = client.connack();
        (client, code)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8]) {
        let mut out = BytesMut::new();
        Publish::qos0(topic, payload)
            .unwrap()
            .encode(&mut out)
            .unwrap();
        self.send(&out);
    }

    pub fn connack(&mut self) -> u8 {
        let mut connack = [0u8; 4];
        self.stream.read_exact(&mut connack).unwrap();
        assert_eq!(&connack[..3], &[0x20, 2, 0], "not a CONNACK: {connack:?}");
        connack[3]
    }

    /// Reads the next packet the gateway sends.
    pub fn next_packet(&mut self) -> Option<Packet> {
        let decoder = Decoder::new(Role::Client, 1 << 20);
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(packet) = decoder.decode(&mut buf).unwrap() {
                return Some(packet);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits until the gateway closes the connection, returning what it
    /// sent first; fails if it stays open beyond `within`.
    pub fn expect_closed(&mut self, within: Duration) -> Vec<u8> {
        self.stream.set_read_timeout(Some(within)).unwrap();
        let started = Instant::now();
        let mut received = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
                Err(e) => panic!("connection still open after {:?}: {e}", started.elapsed()),
            }
        }
    }

    pub fn disconnect(mut self) {
        self.send(&codec::packet::DISCONNECT);
    }
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
