//! A downlink stack of real processes for the integration tests: one tansu
//! broker, topics made by `carbridge-topics`, `router` and `gateway`
//! binaries with their admin endpoints, and cars that are real MQTT
//! clients (rumqttc, mosquitto_sub) or raw sockets where a test needs to
//! see a connection close.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use testkit::{Broker, Proc, RawClient, WAIT, free_port, http_get, wait_until, workspace_binary};

/// A message a car received: MQTT topic and payload.
pub type Received = (String, Vec<u8>);

/// A broker with the topics.
pub struct Stack {
    pub broker: Broker,
    pub partitions: u32,
    pub slots: u32,
}

impl Stack {
    /// A broker with every topic made by `carbridge-topics create`.
    pub fn new(partitions: u32, slots: u32) -> Self {
        let broker = Broker::start();
        let output = Command::new(env!("CARGO_BIN_EXE_carbridge-topics"))
            .args(["create", "--kafka-bootstrap", &broker.bootstrap_servers()])
            .args(["--partitions", &partitions.to_string()])
            .args(["--slots", &slots.to_string()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "carbridge-topics create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Self {
            broker,
            partitions,
            slots,
        }
    }

    /// Starts a router process; returns once its admin endpoint answers.
    pub fn router(&self, name: &str) -> Proc {
        self.router_with(name, &[])
    }

    /// [`Stack::router`] with further flags.
    pub fn router_with(&self, name: &str, flags: &[&str]) -> Proc {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut router = Proc::spawn(
            name,
            Command::new(env!("CARGO_BIN_EXE_router"))
                .args(["--kafka-bootstrap", &self.broker.bootstrap_servers()])
                .args(["--admin-listen", &admin.to_string()])
                // The smallest the group protocol allows by default: a router
                // that stops heartbeating loses its partitions within 6 s.
                .args(["--session-timeout-ms", "6000"])
                .args(["--log-format", "json", "--log-filter", "info,router=debug"])
                .args(testkit::ROUTER_ON_TANSU)
                .args(flags),
        )
        .with_admin(admin);
        // Not ready yet: ready means its tables are rebuilt (await_routers).
        router.wait_for("to serve /healthz", |_| {
            http_get(admin, "/healthz").is_some()
        });
        router
    }

    /// Starts a gateway process with bridge id `bridge` (2 shards); returns
    /// once it is ready.
    pub fn gateway(&self, name: &str, bridge: u32) -> Proc {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut gateway = Proc::spawn(
            name,
            Command::new(workspace_binary("gateway"))
                .args(["--listen", &mqtt.to_string(), "--shards", "2"])
                .args(["--bridge-id", &bridge.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .args(["--kafka-bootstrap", &self.broker.bootstrap_servers()])
                .args(testkit::GATEWAY_ON_TANSU),
        )
        .with_admin(admin)
        .with_mqtt(mqtt);
        gateway.wait_ready();
        gateway
    }

    /// Waits until the routers together own every partition with their
    /// tables rebuilt.
    pub fn await_routers(&self, routers: &[&Proc]) {
        wait_until("the routers to own every partition, rebuilt", WAIT, || {
            let mut owned = 0.0;
            for router in routers {
                if !router.ready() {
                    return false;
                }
                owned += router.metric("carbridge_router_partitions_assigned");
            }
            owned == f64::from(self.partitions)
        });
    }

    /// Waits until the gateways' registry records are acknowledged (every
    /// one they had handed to their producer) and the routers have applied
    /// all of them (plus `extra` written by the test or by gateways not
    /// listed), so a request produced now meets the sessions as the cars
    /// set them up. A car's CONNACK or SUBACK arrives after its record is
    /// handed over, not after it is acknowledged: counting acknowledged
    /// records alone could pass before the last car's were. Valid while no
    /// table is being rebuilt (rebuilds count records again).
    pub fn await_registry(&self, gateways: &[&Proc], routers: &[&Proc], extra: f64) {
        wait_until("the routers to apply the session registry", WAIT, || {
            let count = |name: &str| -> f64 { gateways.iter().map(|g| g.metric(name)).sum() };
            let sent = count("carbridge_gateway_registry_sent_total");
            let acked = count("carbridge_gateway_registry_acked_total");
            let written = acked + extra;
            let applied: f64 = routers
                .iter()
                .map(|r| r.metric("carbridge_router_registry_applied_total"))
                .sum();
            written > 0.0 && acked >= sent && applied >= written
        });
    }

    /// Produces downlink requests: (client id, MQTT topic, payload), in order.
    pub fn request(&self, requests: &[(&str, &str, Vec<u8>)]) {
        self.request_with(requests, &[]);
    }

    /// [`Stack::request`], one record per batch: for tests where a router
    /// resumes a partition from a committed offset (see
    /// `testkit::Broker::producer_with` for the tansu behaviour this avoids).
    pub fn request_unbatched(&self, requests: &[(&str, &str, Vec<u8>)]) {
        self.request_with(requests, &[("batch.num.messages", "1")]);
    }

    fn request_with(&self, requests: &[(&str, &str, Vec<u8>)], properties: &[(&str, &str)]) {
        let producer = self.broker.producer_with(properties);
        producer.send_all(
            contract::topics::DOWNLINK,
            requests.iter().map(|(client, topic, payload)| {
                (
                    client.as_bytes(),
                    payload.clone(),
                    vec![(contract::HEADER_TOPIC, topic.as_bytes().to_vec())],
                )
            }),
        );
    }
}

/// A car on rumqttc, the Rust MQTT client.
pub struct Car {
    pub id: String,
    client: rumqttc::Client,
    messages: Receiver<Received>,
    subacks: Receiver<()>,
}

impl Car {
    /// Connects (clean session, QoS 0) and waits for the CONNACK.
    pub fn connect(gateway: &Proc, id: &str) -> Self {
        let addr = gateway.mqtt();
        let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        let (messages_tx, messages) = channel();
        let (subacks_tx, subacks) = channel();
        let (connected_tx, connected) = channel();
        let name = id.to_owned();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))) => {
                        let _ = connected_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) => {
                        let _ = subacks_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(publish))) => {
                        if messages_tx
                            .send((publish.topic, publish.payload.to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // No reconnect: a closed connection ends the car.
                    Err(error) => {
                        eprintln!("car {name}: {error}");
                        return;
                    }
                }
            }
        });
        connected
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("car {id}: no CONNACK"));
        Self {
            id: id.to_owned(),
            client,
            messages,
            subacks,
        }
    }

    pub fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtMostOnce)
            .unwrap();
        self.subacks
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("car {}: no SUBACK for {filter}", self.id));
    }

    /// The next `n` messages; fails after `WAIT` with what came.
    pub fn expect(&self, n: usize) -> Vec<Received> {
        collect(&self.messages, n, &self.id)
    }

    /// Whatever arrives within `window` (for asserting that nothing more
    /// does).
    pub fn drain(&self, window: Duration) -> Vec<Received> {
        drain(&self.messages, window)
    }

    pub fn disconnect(self) {
        let _ = self.client.disconnect();
    }
}

fn collect(messages: &Receiver<Received>, n: usize, who: &str) -> Vec<Received> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match messages.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(message) => got.push(message),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                "{who}: {} of {n} messages within {WAIT:?}; last: {:?}",
                got.len(),
                got.last()
            ),
        }
    }
    got
}

fn drain(messages: &Receiver<Received>, window: Duration) -> Vec<Received> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    while let Ok(message) =
        messages.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        got.push(message);
    }
    got
}

/// A car as mosquitto_sub (Debian's mosquitto-clients), printing each
/// message as "topic payload".
pub struct MosquittoSub {
    /// Killed when the car is dropped.
    _process: Proc,
    messages: Receiver<Received>,
}

impl MosquittoSub {
    /// Subscribes `id` to `filter`; returns once the subscription is
    /// acknowledged (mosquitto_sub's debug output shows the SUBACK).
    pub fn start(gateway: &Proc, id: &str, filter: &str) -> Self {
        let addr = gateway.mqtt();
        // Line-buffered: mosquitto_sub flushes only after messages, and
        // the test must see its SUBACK line as it happens.
        // mosquitto_sub: apt install mosquitto-clients (scripts/setup.sh does).
        let (process, stdout) = Proc::spawn_reading_stdout(
            &format!("mosquitto_sub {id}"),
            Command::new("stdbuf")
                .args(["-oL", "mosquitto_sub"])
                .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
                .args(["-i", id, "-t", filter, "-q", "0", "-v", "-d"]),
        );
        let (tx, messages) = channel();
        let (subscribed_tx, subscribed) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // -d's debug lines; the rest are "topic payload".
                if line.starts_with("Client ") || line.starts_with("Subscribed (mid") {
                    if line.contains("received SUBACK") {
                        let _ = subscribed_tx.send(());
                    }
                    continue;
                }
                if let Some((topic, payload)) = line.split_once(' ')
                    && tx
                        .send((topic.to_owned(), payload.as_bytes().to_vec()))
                        .is_err()
                {
                    return;
                }
            }
        });
        assert!(
            subscribed.recv_timeout(WAIT).is_ok(),
            "mosquitto_sub {id}: no SUBACK"
        );
        Self {
            _process: process,
            messages,
        }
    }

    pub fn expect(&self, n: usize) -> Vec<Received> {
        collect(&self.messages, n, "mosquitto_sub")
    }

    pub fn drain(&self, window: Duration) -> Vec<Received> {
        drain(&self.messages, window)
    }
}

/// A car on a raw socket, for tests that must see the gateway close it:
/// CONNECT (clean session) and SUBSCRIBE `filter`, both acknowledged.
pub fn raw_car(gateway: &Proc, id: &str, filter: &str) -> RawClient {
    let (mut car, code) = RawClient::connect(gateway.mqtt(), id, 60);
    assert_eq!(code, 0, "{id}: connection refused");
    assert_eq!(car.subscribe(&[filter]), [0], "{id}: {filter} refused");
    car
}

/// Receipt records by correlation id, in the order read.
pub type ReceiptsById = std::collections::HashMap<String, Vec<contract::Receipt>>;

/// The receipts read until `requests` correlation ids have a final one
/// (or the wait is over), all of each id's, progress records included.
pub fn receipts_by_id(receipts: &testkit::Collector, requests: usize) -> ReceiptsById {
    let mut answered = ReceiptsById::new();
    let deadline = std::time::Instant::now() + WAIT;
    let finals = |answered: &ReceiptsById| {
        answered
            .values()
            .filter(|receipts| receipts.iter().any(|r| r.is_final))
            .count()
    };
    while finals(&answered) < requests && std::time::Instant::now() < deadline {
        for record in receipts.collect_for(Duration::from_millis(500)) {
            let id = String::from_utf8(record.header(contract::HEADER_RECEIPT).unwrap().to_vec())
                .unwrap();
            let receipt = contract::Receipt::decode(record.value.as_deref().unwrap()).unwrap();
            answered.entry(id).or_default().push(receipt);
        }
    }
    answered
}
