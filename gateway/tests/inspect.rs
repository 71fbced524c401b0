//! `GET /cars/<client id>` on the gateway's admin endpoint, with real
//! clients: a car over mutual TLS (mosquitto_sub with a certificate from a
//! test CA) shows the identity its certificate proved; a plain car shows
//! what it published; a car that left shows why; the endpoint needs the
//! admin token, as the actions do.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use gateway::Gateway;
use gateway::config::{ClientAuth, IdentitySource, Listener, Tls};
use serde_json::Value;
use testkit::{Broker, Proc, RawClient, WAIT, http_get, http_get_bearer, wait_until};

const TOKEN: &str = "inspect-token-0123456789";
const TLS_CAR: &str = "VIN-TLS-0000001";

/// The answer to `GET /cars/<path>` with the token: status and JSON.
fn inspect(gateway: &Gateway, path: &str) -> (u16, Value) {
    let admin = gateway.admin_addr().unwrap();
    let (status, body) = http_get_bearer(admin, &format!("/cars/{path}"), TOKEN).unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, json)
}

/// Waits until `GET /cars/<path>` answers `status` with `holds` true of it.
fn await_inspect(
    gateway: &Gateway,
    path: &str,
    status: u16,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    let mut seen = Value::Null;
    wait_until(&format!("/cars/{path} to answer {status}"), WAIT, || {
        let (got, json) = inspect(gateway, path);
        let done = got == status && holds(&json);
        seen = json;
        done
    });
    seen
}

#[test]
fn a_car_is_shown_with_its_identity_its_traffic_and_its_last_close() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new().unwrap();
    std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
    ca.server(&["localhost", "127.0.0.1"])
        .unwrap()
        .write(dir.path(), "server")
        .unwrap();
    ca.car_with(&pki::CarOptions::named(TLS_CAR))
        .unwrap()
        .write(dir.path(), "car")
        .unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();

    let mut config = common::config(&broker, 2);
    // Two listeners need two ports.
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let mut tls = Listener::plain(port());
    tls.tls = Some(Tls {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        client_auth: ClientAuth::Required,
        client_ca: Some(dir.path().join("ca.crt")),
        crls: Vec::new(),
        identity: IdentitySource::Cn,
        ticket_keys: None,
        ticket_keys_env: None,
        ticket_lifetime_secs: 3600,
    });
    config.listeners = vec![Listener::plain(port()), tls];
    config.admin.token_file = Some(token);
    let gateway = Gateway::start(config).unwrap();
    let (plain, tls) = (gateway.local_addrs()[0], gateway.local_addrs()[1]);
    let admin = gateway.admin_addr().unwrap();

    // Never here: 404, nothing known. Without the token: 401, as an action.
    let (status, never) = inspect(&gateway, TLS_CAR);
    assert_eq!(status, 404);
    assert_eq!(never["connected"], false);
    assert_eq!(never["previous_close"], Value::Null);
    let (status, said) = http_get(admin, &format!("/cars/{TLS_CAR}")).unwrap();
    assert_eq!(status, 401, "{said}");

    // The TLS car stays connected, subscribed.
    let mut subscriber = Proc::spawn(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &tls.port().to_string()])
            .args(["-V", "mqttv311", "-i", TLS_CAR, "-t", "DL/#", "-k", "45"])
            .arg("--cafile")
            .arg(dir.path().join("ca.crt"))
            .arg("--cert")
            .arg(dir.path().join("car.crt"))
            .arg("--key")
            .arg(dir.path().join("car.key")),
    );
    let shown = await_inspect(&gateway, TLS_CAR, 200, |car| {
        car["filters"] == serde_json::json!(["DL/#"])
    });
    assert_eq!(shown["client_id"], TLS_CAR);
    assert_eq!(shown["connected"], true);
    assert_eq!(shown["tls_identity"], TLS_CAR);
    assert_eq!(shown["keep_alive_secs"], 45);
    assert!(
        shown["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{shown}"
    );
    assert!(shown["shard"].as_u64().unwrap() < 2, "{shown}");
    // The downlink is off here: no session id, so no connection time.
    assert_eq!(shown["session"], Value::Null);
    assert_eq!(shown["uplink_messages"], 0);
    assert!(shown["last_packet_at_ms"].as_u64().unwrap() > 0, "{shown}");

    // A plain car, with a client id that needs escaping, publishes twice.
    let plain_car = "fleet/VIN 7";
    let escaped = "fleet%2FVIN%207";
    let (mut car, code) = RawClient::connect(plain, plain_car, 60);
    assert_eq!(code, 0);
    car.publish("UL/POS", b"12345");
    car.publish("UL/POS", b"123");
    car.send(&[0xC0, 0x00]);
    let mut pong = [0u8; 2];
    std::io::Read::read_exact(&mut car.stream, &mut pong).unwrap();
    // Quiet now: it is parked, and its counters are in its control block.
    let shown = await_inspect(&gateway, escaped, 200, |car| car["parked"] == true);
    assert_eq!(shown["client_id"], plain_car);
    assert_eq!(shown["uplink_messages"], 2, "{shown}");
    assert_eq!(shown["uplink_bytes"], 8, "{shown}");
    assert_eq!(shown["tls_identity"], Value::Null);
    assert_eq!(shown["downlink_queued"]["messages"], 0);
    assert_eq!(shown["previous_close"], Value::Null);

    // Gone: 404 with the close.
    car.send(&codec::packet::DISCONNECT);
    let gone = await_inspect(&gateway, escaped, 404, |car| {
        !car["previous_close"].is_null()
    });
    assert_eq!(gone["connected"], false);
    assert_eq!(gone["previous_close"]["reason"], "disconnect", "{gone}");
    subscriber.kill();
    let gone = await_inspect(&gateway, TLS_CAR, 404, |car| {
        !car["previous_close"].is_null()
    });
    let reason = gone["previous_close"]["reason"].as_str().unwrap();
    assert!(["peer_closed", "io_error"].contains(&reason), "{gone}");

    // Back again: connected, and the close of its previous connection shown.
    let (_again, code) = RawClient::connect(plain, plain_car, 60);
    assert_eq!(code, 0);
    let back = await_inspect(&gateway, escaped, 200, |_| true);
    assert_eq!(back["previous_close"]["reason"], "disconnect", "{back}");
    gateway.stop().unwrap();
}

/// Behind a trusted proxy a connection never parks (the PROXY header's
/// stream is its own), so its task answers: the real address from the
/// header, the identity the proxy verified.
#[test]
fn a_car_behind_a_proxy_is_answered_by_its_task_with_its_real_address() {
    use proxy_header::{ProxiedAddress, ProxyHeader, SslInfo, Tlv};

    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 1);
    let mut listener = Listener::plain("127.0.0.1:0".parse().unwrap());
    listener.proxy = Some(gateway::config::Proxy {
        trusted_networks: vec!["127.0.0.0/8".parse().unwrap()],
        identity_from_proxy: true,
    });
    config.listeners = vec![listener];
    let gateway = Gateway::start(config).unwrap();
    let admin = gateway.admin_addr().unwrap();

    let mut ssl = SslInfo::new(true, true, false, 0);
    ssl.append_tlv(Tlv::SslCn("VIN-PROXY-0001".to_owned().into()));
    let header = ProxyHeader::with_tlvs(
        Some(ProxiedAddress::stream(
            "198.51.100.23:40001".parse().unwrap(),
            "127.0.0.1:8883".parse().unwrap(),
        )),
        Some(Tlv::Ssl(ssl)),
    );
    let mut bytes = Vec::new();
    header.encode_v2(&mut bytes).unwrap();
    let mut connect = bytes::BytesMut::new();
    codec::Connect::new("VIN-PROXY-0001", 30)
        .encode(&mut connect)
        .unwrap();
    bytes.extend_from_slice(&connect);
    let mut car = RawClient::connect_tcp(gateway.local_addr());
    car.send(&bytes);
    assert_eq!(car.connack_or_closed(), Some(0));
    car.publish("UL/POS", b"position");

    // No token configured, admin on loopback: the host's own may ask.
    let mut shown = Value::Null;
    wait_until("the car's PUBLISH to show", WAIT, || {
        let (status, body) = http_get(admin, "/cars/VIN-PROXY-0001").unwrap();
        shown = serde_json::from_str(&body).unwrap();
        status == 200 && shown["uplink_messages"] == 1
    });
    assert_eq!(shown["address"], "198.51.100.23:40001", "{shown}");
    assert_eq!(shown["tls_identity"], "VIN-PROXY-0001", "{shown}");
    assert_eq!(shown["parked"], false, "{shown}");
    assert_eq!(shown["uplink_bytes"], 8, "{shown}");
    assert_eq!(shown["keep_alive_secs"], 30, "{shown}");
    gateway.stop().unwrap();
}
