//! The PROXY protocol through the gateway binary: the car's real address in
//! the logs, headers missing, malformed or from an untrusted network
//! refused, and a v2 header's verified CN binding the client id.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codec::Connect;
use proxy_header::{ProxiedAddress, ProxyHeader, SslInfo, Tlv};
use testkit::{Broker, Proc, RawClient, WAIT, free_port, wait_until, wait_until_eq};

struct Gateway {
    process: Proc,
    /// Trusts 127.0.0.0/8, address only.
    open: SocketAddr,
    /// Trusts 10.0.0.0/8 only: the test's loopback is a stranger.
    strict: SocketAddr,
    /// Trusts 127.0.0.0/8; the identity is the proxy's verified CN.
    identified: SocketAddr,
}

fn start(broker: &Broker) -> Gateway {
    let [open, strict, identified, admin] =
        [(); 4].map(|()| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let config = format!(
        r#"
        shards = 2
        [mqtt]
        connect_timeout_secs = 2
        [[listeners]]
        address = "{open}"
        [listeners.proxy]
        trusted_networks = ["127.0.0.0/8"]
        [[listeners]]
        address = "{strict}"
        [listeners.proxy]
        trusted_networks = ["10.0.0.0/8"]
        [[listeners]]
        address = "{identified}"
        [listeners.proxy]
        trusted_networks = ["127.0.0.0/8"]
        identity_from_proxy = true
        "#
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let mut process = Proc::spawn(
        "gateway",
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--config")
            .arg(file.path())
            .args(["--admin-listen", &admin.to_string(), "--no-downlink"])
            .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
            .args(testkit::GATEWAY_ON_TANSU),
    )
    .with_admin(admin);
    process.wait_ready();
    // The config file may go now: it was read.
    drop(file);
    Gateway {
        process,
        open,
        strict,
        identified,
    }
}

fn counter(gateway: &Gateway, name: &str) -> f64 {
    gateway.process.metric(name)
}

fn proxied(result: &str) -> String {
    format!("carbridge_gateway_proxy_headers_total{{result=\"{result}\"}}")
}

fn connect_packet(client_id: &str) -> BytesMut {
    let mut out = BytesMut::new();
    Connect::new(client_id, 30).encode(&mut out).unwrap();
    out
}

fn v2(ssl: Option<SslInfo<'_>>) -> Vec<u8> {
    let address = ProxiedAddress::stream(
        "198.51.100.23:40001".parse().unwrap(),
        "127.0.0.1:8883".parse().unwrap(),
    );
    let header = ProxyHeader::with_tlvs(Some(address), ssl.map(Tlv::Ssl));
    let mut buf = Vec::new();
    header.encode_v2(&mut buf).unwrap();
    buf
}

fn verified(cn: &str) -> SslInfo<'static> {
    let mut ssl = SslInfo::new(true, true, false, 0);
    ssl.append_tlv(Tlv::SslCn(cn.to_owned().into()));
    ssl
}

/// Sends `header` then CONNECT as `client_id`; the CONNACK code, or
/// `None` when the gateway closed the connection without one.
fn connect_through(addr: SocketAddr, header: &[u8], client_id: &str) -> (RawClient, Option<u8>) {
    let mut car = RawClient::connect_tcp(addr);
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&connect_packet(client_id));
    car.send(&bytes);
    let answer = car.connack_or_closed();
    (car, answer)
}

#[test]
fn proxy_headers_are_required_checked_and_give_the_real_address() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let gateway = start(&broker);

    // v1 from a trusted network: accepted; the car's own address is what
    // the gateway logs when it closes the car for a fault.
    let (mut car, code) = connect_through(
        gateway.open,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 1883\r\n",
        "VIN00000000000001",
    );
    assert_eq!(code, Some(0));
    car.publish("UL/POS", b"57.70,11.97");
    car.send(&[0xf0, 0x00]); // a reserved packet type: malformed
    car.expect_closed(WAIT);
    let record = broker.collector("cs.uplink").collect(1, WAIT);
    assert_eq!(record[0].key.as_deref(), Some(&b"VIN00000000000001"[..]));
    wait_until("the close log", WAIT, || {
        gateway
            .process
            .log_text()
            .lines()
            .any(|line| line.contains("malformed") && line.contains("203.0.113.9:40000"))
    });

    // v2, and a LOCAL header (the balancer's health check).
    let (_car, code) = connect_through(gateway.open, &v2(None), "VIN00000000000002");
    assert_eq!(code, Some(0));
    let mut local = Vec::new();
    ProxyHeader::with_local().encode_v2(&mut local).unwrap();
    let (_check, code) = connect_through(gateway.open, &local, "healthcheck");
    assert_eq!(code, Some(0));

    // No header, a malformed one, one from an untrusted network: closed
    // before MQTT.
    let (_, code) = connect_through(gateway.open, b"", "VIN00000000000003");
    assert_eq!(code, None);
    let (_, code) = connect_through(
        gateway.open,
        b"PROXY TCP4 nonsense\r\n",
        "VIN00000000000003",
    );
    assert_eq!(code, None);
    let (_, code) = connect_through(gateway.strict, &v2(None), "VIN00000000000003");
    assert_eq!(code, None);
    // A header that never comes: closed by the connect timeout (2 s).
    let started = Instant::now();
    let mut silent = RawClient::connect_tcp(gateway.open);
    silent.expect_closed(WAIT);
    assert!(started.elapsed() >= Duration::from_millis(1900));

    let expected = [
        ("proxied", 2.0),
        ("local", 1.0),
        ("malformed", 2.0),
        ("untrusted_source", 1.0),
        ("timeout", 1.0),
    ];
    wait_until_eq("the header counters", WAIT, &expected, || {
        expected.map(|(result, _)| (result, counter(&gateway, &proxied(result))))
    });
}

#[test]
fn a_verified_cn_in_a_v2_header_binds_the_client_id() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let gateway = start(&broker);

    let (_car, code) = connect_through(
        gateway.identified,
        &v2(Some(verified("VIN00000000000001"))),
        "VIN00000000000001",
    );
    assert_eq!(code, Some(0));
    // Another car's id with this car's certificate: 0x05.
    let (_, code) = connect_through(
        gateway.identified,
        &v2(Some(verified("VIN00000000000001"))),
        "VIN00000000000002",
    );
    assert_eq!(code, Some(5));
    // No verified certificate (verify failed; none presented): closed.
    let mut unverified = SslInfo::new(true, true, false, 1);
    unverified.append_tlv(Tlv::SslCn("VIN00000000000001".into()));
    let (_, code) = connect_through(
        gateway.identified,
        &v2(Some(unverified)),
        "VIN00000000000001",
    );
    assert_eq!(code, None);
    let (_, code) = connect_through(
        gateway.identified,
        &v2(Some(SslInfo::new(true, false, false, 0))),
        "VIN00000000000001",
    );
    assert_eq!(code, None);
    // A v1 header carries no identity at all.
    let (_, code) = connect_through(
        gateway.identified,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 1883\r\n",
        "VIN00000000000001",
    );
    assert_eq!(code, None);

    wait_until("the counters", WAIT, || {
        counter(&gateway, &proxied("no_identity")) == 3.0
            && counter(
                &gateway,
                "carbridge_gateway_connections_closed_total{reason=\"not_authorized\"}",
            ) == 1.0
    });
}
