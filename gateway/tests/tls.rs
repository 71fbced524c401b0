//! Mutual TLS with identity binding, end to end: real clients
//! (mosquitto_pub, paho-mqtt, a rustls client on a socket) with
//! certificates from a test CA, a real broker, the gateway in-process.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;

use bytes::BytesMut;
use codec::Connect;
use gateway::Gateway;
use gateway::config::{ClientAuth, IdentitySource, Listener, Tls};
use gateway::metrics::ShardMetrics;
use gateway::session::CloseKind;
use gateway::tls::Handshake;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use testkit::{Broker, RawClient, WAIT};

/// A test PKI on disk: the CA, the gateway's certificate, car certificates.
struct Pki {
    dir: tempfile::TempDir,
    ca: pki::Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::new().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        ca.server(&["localhost", "127.0.0.1"])
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues and writes `<name>.crt`/`.key`.
    fn car(&self, name: &str, options: &pki::CarOptions) -> pki::Issued {
        let issued = self.ca.car_with(options).unwrap();
        issued.write(self.dir.path(), name).unwrap();
        issued
    }

    fn tls(&self, crls: Vec<PathBuf>) -> Tls {
        Tls {
            cert: self.path("server.crt"),
            key: self.path("server.key"),
            client_auth: ClientAuth::Required,
            client_ca: Some(self.path("ca.crt")),
            crls,
            identity: IdentitySource::Cn,
            ticket_keys: None,
            ticket_keys_env: None,
            ticket_lifetime_secs: 3600,
        }
    }
}

/// A broker, a test PKI with cars 1 and 2, a gateway with the TLS that
/// `tls` makes of the PKI, and each car's client configuration.
struct Stage {
    broker: Broker,
    pki: Pki,
    gateway: Gateway,
    car1: pki::Issued,
    as_car1: Arc<rustls::ClientConfig>,
    car2: pki::Issued,
    as_car2: Arc<rustls::ClientConfig>,
}

fn stage(tls: impl FnOnce(&Pki) -> Tls) -> Stage {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let pki = Pki::new();
    let car1 = pki.car("car1", &pki::CarOptions::named("VIN00000000000001"));
    let car2 = pki.car("car2", &pki::CarOptions::named("VIN00000000000002"));
    let gateway = start(&broker, tls(&pki), 10);
    let (as_car1, as_car2) = (
        TlsCar::client_config(&pki.ca, &car1),
        TlsCar::client_config(&pki.ca, &car2),
    );
    Stage {
        broker,
        pki,
        gateway,
        car1,
        as_car1,
        car2,
        as_car2,
    }
}

fn start(broker: &Broker, tls: Tls, connect_timeout_secs: u64) -> Gateway {
    let mut config = common::config(broker, 2);
    config.mqtt.connect_timeout_secs = connect_timeout_secs;
    let mut listener = Listener::plain("127.0.0.1:0".parse().unwrap());
    listener.tls = Some(tls);
    config.listeners = vec![listener];
    Gateway::start(config).unwrap()
}

fn total(gateway: &Gateway, counter: impl Fn(&ShardMetrics) -> u64) -> u64 {
    common::total(gateway, counter)
}

fn handshakes(gateway: &Gateway, result: Handshake) -> u64 {
    total(gateway, |m| m.tls_handshakes.get(result))
}

fn closed(gateway: &Gateway, reason: CloseKind) -> u64 {
    total(gateway, |m| m.closed.get(reason))
}

/// mosquitto_pub over TLS with the car certificate `cert` (a name in the
/// PKI directory, or none); whether it succeeded, and what it printed.
fn mosquitto_pub(
    gateway: &Gateway,
    dir: &Path,
    cert: Option<&str>,
    client_id: &str,
    message: &str,
) -> (bool, String) {
    let port = gateway.local_addr().port().to_string();
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "0"])
        .args(["-i", client_id, "-t", "UL/POS", "-m", message])
        .arg("--cafile")
        .arg(dir.join("ca.crt"));
    if let Some(cert) = cert {
        command
            .arg("--cert")
            .arg(dir.join(format!("{cert}.crt")))
            .arg("--key")
            .arg(dir.join(format!("{cert}.key")));
    }
    let output = command
        .output()
        .expect("mosquitto_pub (Debian package mosquitto-clients) runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// paho-mqtt (PyPI) over TLS with a car certificate, MQTT 3.1.1.
fn paho_pub(gateway: &Gateway, dir: &Path, cert: &str, client_id: &str, message: &str) {
    let (ca, crt, key) = (
        dir.join("ca.crt"),
        dir.join(format!("{cert}.crt")),
        dir.join(format!("{cert}.key")),
    );
    let port = gateway.local_addr().port();
    common::paho_pub(
        "localhost",
        port,
        client_id,
        "UL/POS",
        message,
        Some([&ca, &crt, &key]),
    );
}

/// A blocking MQTT client over rustls, for exact checks.
struct TlsCar {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsCar {
    fn client_config(ca: &pki::Ca, car: &pki::Issued) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der())).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(car.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(car.key_der.clone())),
        )
        .unwrap();
        Arc::new(config)
    }

    /// Connects with `config` and sends CONNECT; returns the CONNACK code.
    fn connect(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        client_id: &str,
    ) -> (Self, u8) {
        let socket = TcpStream::connect(addr).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let session = rustls::ClientConnection::new(
            config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut car = Self {
            stream: rustls::StreamOwned::new(session, socket),
        };
        let mut out = BytesMut::new();
        Connect::new(client_id, 30).encode(&mut out).unwrap();
        car.stream.write_all(&out).unwrap();
        let mut connack = [0u8; 4];
        car.stream.read_exact(&mut connack).unwrap();
        assert_eq!(&connack[..3], &[0x20, 2, 0], "not a CONNACK: {connack:?}");
        (car, connack[3])
    }

    fn publish(&mut self, topic: &str, payload: &[u8]) {
        let mut out = BytesMut::new();
        codec::Publish::qos0(topic, payload)
            .unwrap()
            .encode(&mut out)
            .unwrap();
        self.stream.write_all(&out).unwrap();
        self.stream.flush().unwrap();
    }

    fn disconnect(&mut self) {
        self.stream.write_all(&codec::packet::DISCONNECT).unwrap();
        self.stream.flush().unwrap();
        assert!(self.closed_within(WAIT));
    }

    /// Whether the gateway closed the connection within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        self.stream.sock.set_read_timeout(Some(within)).unwrap();
        let mut byte = [0u8; 1];
        !matches!(self.stream.read(&mut byte), Err(error)
            if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

#[test]
fn mutual_tls_binds_the_client_id_to_the_certificate() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 3, &[]);
    let pki = Pki::new();
    let dir = pki.dir.path();
    pki.car("car1", &pki::CarOptions::named("VIN00000000000001"));
    pki.car("car2", &pki::CarOptions::named("VIN00000000000002"));
    pki.car(
        "expired",
        &pki::CarOptions {
            expired: true,
            ..pki::CarOptions::named("VIN00000000000003")
        },
    );
    let revoked = pki.car("revoked", &pki::CarOptions::named("VIN00000000000004"));
    std::fs::write(pki.path("cars.crl"), pki.ca.crl(&[revoked.serial]).unwrap()).unwrap();
    // A certificate from a CA the gateway does not trust.
    let stranger = pki::Ca::new().unwrap();
    stranger
        .car("VIN00000000000005")
        .unwrap()
        .write(dir, "stranger")
        .unwrap();
    let gateway = start(&broker, pki.tls(vec![pki.path("cars.crl")]), 10);

    // Each car with its own certificate and id.
    let (ok, printed) = mosquitto_pub(&gateway, dir, Some("car1"), "VIN00000000000001", "one");
    assert!(ok, "{printed}");
    paho_pub(&gateway, dir, "car2", "VIN00000000000002", "two");

    // Another car's id with one's own certificate: CONNACK 0x05.
    let (ok, printed) = mosquitto_pub(&gateway, dir, Some("car1"), "VIN00000000000002", "forged");
    assert!(!ok, "a forged client id was accepted: {printed}");
    assert!(printed.contains("not authori"), "{printed}");

    // No certificate, another CA's, expired, revoked: no MQTT at all.
    for (cert, id) in [
        (None, "VIN00000000000001"),
        (Some("stranger"), "VIN00000000000005"),
        (Some("expired"), "VIN00000000000003"),
        (Some("revoked"), "VIN00000000000004"),
    ] {
        let (ok, printed) = mosquitto_pub(&gateway, dir, cert, id, "refused");
        assert!(!ok, "{cert:?} was accepted: {printed}");
    }

    // Exactly the two cars' records reached Kafka.
    let collector = broker.collector("cs.uplink");
    let mut records = collector.collect(2, WAIT);
    records.extend(collector.collect_for(Duration::from_secs(1)));
    records.sort_by(|a, b| a.key.cmp(&b.key));
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.key.clone().unwrap(), r.value.clone().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (b"VIN00000000000001".to_vec(), b"one".to_vec()),
            (b"VIN00000000000002".to_vec(), b"two".to_vec()),
        ]
    );
    testkit::wait_until("the counters", WAIT, || {
        closed(&gateway, CloseKind::NotAuthorized) == 1
    });
    assert_eq!(handshakes(&gateway, Handshake::Full), 3);
    testkit::wait_until("the counters", WAIT, || {
        handshakes(&gateway, Handshake::BadCertificate) == 3
    });
    assert_eq!(handshakes(&gateway, Handshake::NoCertificate), 1);
    gateway.stop().unwrap();
}

#[test]
fn plain_mqtt_garbage_and_silence_on_a_tls_port_are_closed() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let pki = Pki::new();
    let gateway = start(&broker, pki.tls(Vec::new()), 1);
    let addr = gateway.local_addr();

    // Plain MQTT: a CONNECT where a ClientHello belongs.
    let mut plain = RawClient::connect_tcp(addr);
    let mut out = BytesMut::new();
    Connect::new("VIN00000000000001", 30)
        .encode(&mut out)
        .unwrap();
    plain.send(&out);
    let answered = plain.expect_closed(WAIT);
    assert!(!answered.starts_with(&[0x20]), "a CONNACK on a TLS port");

    // Garbage.
    let mut garbage = RawClient::connect_tcp(addr);
    garbage.send(&[0xff; 64]);
    garbage.expect_closed(WAIT);

    // Silence: closed by the connect timeout (1 s here), not held.
    let started = Instant::now();
    let mut silent = RawClient::connect_tcp(addr);
    silent.expect_closed(WAIT);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(5));

    // A slow handshake: half a ClientHello, then nothing.
    let mut slow = RawClient::connect_tcp(addr);
    slow.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    slow.expect_closed(WAIT);

    testkit::wait_until("the counters", WAIT, || {
        handshakes(&gateway, Handshake::Timeout) == 2
    });
    assert_eq!(handshakes(&gateway, Handshake::Protocol), 2);
    assert_eq!(handshakes(&gateway, Handshake::Full), 0);
    assert_eq!(
        total(&gateway, |m| m.publish_received.load(Ordering::Relaxed)),
        0
    );
    gateway.stop().unwrap();
}

#[test]
fn a_session_is_taken_over_only_by_the_same_identity() {
    let Stage {
        gateway,
        as_car1,
        as_car2,
        ..
    } = stage(|pki| pki.tls(Vec::new()));
    let addr = gateway.local_addr();

    let (mut first, code) = TlsCar::connect(addr, &as_car1, "VIN00000000000001");
    assert_eq!(code, 0);
    // Car 2 claiming car 1's id is refused, and car 1 stays connected.
    let (mut intruder, code) = TlsCar::connect(addr, &as_car2, "VIN00000000000001");
    assert_eq!(code, 5);
    assert!(intruder.closed_within(WAIT));
    assert!(!first.closed_within(Duration::from_millis(500)));
    assert_eq!(closed(&gateway, CloseKind::TakenOver), 0);

    // Car 1 again (a reconnect): the newer connection wins.
    let (mut second, code) = TlsCar::connect(addr, &as_car1, "VIN00000000000001");
    assert_eq!(code, 0);
    assert!(first.closed_within(WAIT));
    assert!(!second.closed_within(Duration::from_millis(200)));
    testkit::wait_until("the counters", WAIT, || {
        closed(&gateway, CloseKind::TakenOver) == 1
    });
    assert_eq!(closed(&gateway, CloseKind::NotAuthorized), 1);
    gateway.stop().unwrap();
}

#[test]
fn reloaded_certificates_serve_new_connections_and_a_broken_file_keeps_the_old() {
    let Stage {
        broker,
        pki,
        gateway,
        as_car1,
        car2,
        as_car2,
        ..
    } = stage(|pki| pki.tls(Vec::new()));
    let addr = gateway.local_addr();
    let (mut live, code) = TlsCar::connect(addr, &as_car1, "VIN00000000000001");
    assert_eq!(code, 0);
    let served = |car: &TlsCar| {
        car.stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first().cloned())
            .unwrap()
    };
    let old = served(&live);

    // A broken key: the reload fails, says why, and the old files serve.
    std::fs::write(pki.path("server.key"), "garbage").unwrap();
    let error = gateway.reload_tls().unwrap_err();
    assert!(error.contains("server.key"), "{error}");
    let (mut car, code) = TlsCar::connect(addr, &as_car2, "VIN00000000000002");
    assert_eq!(code, 0);
    assert_eq!(served(&car), old);
    car.disconnect();

    // A new chain: new connections get it; the live one stays up.
    let fresh = pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
    fresh.write(pki.dir.path(), "server").unwrap();
    gateway.reload_tls().unwrap();
    // A car without a session to resume (a resumed one keeps the chain its
    // session began with).
    let as_car2 = TlsCar::client_config(&pki.ca, &car2);
    let (car, code) = TlsCar::connect(addr, &as_car2, "VIN00000000000002");
    assert_eq!(code, 0);
    assert_eq!(served(&car).as_ref(), fresh.cert_der.as_slice());
    assert!(!live.closed_within(Duration::from_millis(300)));
    live.publish("UL/POS", b"still here");
    let records = broker.collector("cs.uplink").collect(1, WAIT);
    assert_eq!(records[0].value.as_deref(), Some(&b"still here"[..]));
    assert_eq!(
        closed(&gateway, CloseKind::Io) + closed(&gateway, CloseKind::TakenOver),
        0
    );
    gateway.stop().unwrap();
}

#[test]
fn a_session_resumes_on_another_gateway_with_the_shared_ticket_key() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let pki = Pki::new();
    let car1 = pki.car("car1", &pki::CarOptions::named("VIN00000000000001"));
    std::fs::write(
        pki.path("tickets"),
        "# carbridge ticket secrets, newest first\n\
         6f0cbe2d1a4a5b1c8e7d9f00112233445566778899aabbccddeeff0011223344\n",
    )
    .unwrap();
    let mut tls = pki.tls(Vec::new());
    tls.ticket_keys = Some(pki.path("tickets"));
    let (one, other) = (start(&broker, tls.clone(), 10), start(&broker, tls, 10));
    // A gateway with its own random ticket key.
    let stranger = start(&broker, pki.tls(Vec::new()), 10);
    let config = TlsCar::client_config(&pki.ca, &car1);

    let (mut car, code) = TlsCar::connect(one.local_addr(), &config, "VIN00000000000001");
    assert_eq!(code, 0);
    assert_eq!(
        car.stream.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    car.disconnect();
    // "After a restart": another instance, same key file.
    let (mut car, code) = TlsCar::connect(other.local_addr(), &config, "VIN00000000000001");
    assert_eq!(code, 0);
    assert_eq!(
        car.stream.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    car.disconnect();
    assert_eq!(handshakes(&other, Handshake::Resumed), 1);
    assert_eq!(handshakes(&other, Handshake::Full), 0);
    // The car's identity survives resumption: binding still applies.
    let (_car, code) = TlsCar::connect(other.local_addr(), &config, "VIN00000000000002");
    assert_eq!(code, 5);

    let (car, code) = TlsCar::connect(stranger.local_addr(), &config, "VIN00000000000001");
    assert_eq!(code, 0);
    assert_eq!(
        car.stream.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    for gateway in [one, other, stranger] {
        gateway.stop().unwrap();
    }
}

#[test]
fn a_car_revoked_after_it_got_a_ticket_cannot_resume() {
    let Stage {
        pki,
        gateway,
        car1,
        as_car1,
        as_car2,
        ..
    } = stage(|pki| {
        std::fs::write(pki.path("cars.crl"), pki.ca.crl(&[]).unwrap()).unwrap();
        pki.tls(vec![pki.path("cars.crl")])
    });
    let addr = gateway.local_addr();
    for (config, id) in [
        (&as_car1, "VIN00000000000001"),
        (&as_car2, "VIN00000000000002"),
    ] {
        let (mut car, code) = TlsCar::connect(addr, config, id);
        assert_eq!(code, 0);
        car.disconnect();
    }

    // Car 1 is revoked; the gateway reloads its CRL (its tickets stay).
    std::fs::write(pki.path("cars.crl"), pki.ca.crl(&[car1.serial]).unwrap()).unwrap();
    gateway.reload_tls().unwrap();

    // Car 2 still resumes; car 1's resumed session is refused all the same.
    let (mut car, code) = TlsCar::connect(addr, &as_car2, "VIN00000000000002");
    assert_eq!(code, 0);
    assert_eq!(
        car.stream.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    car.disconnect();
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let session =
        rustls::ClientConnection::new(as_car1.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut stream = rustls::StreamOwned::new(session, socket);
    let mut out = BytesMut::new();
    Connect::new("VIN00000000000001", 30)
        .encode(&mut out)
        .unwrap();
    let _ = stream.write_all(&out);
    let mut connack = [0u8; 4];
    assert!(
        stream.read_exact(&mut connack).is_err(),
        "a revoked car got a CONNACK"
    );
    assert_eq!(
        stream.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    testkit::wait_until("the refusal", WAIT, || {
        handshakes(&gateway, Handshake::BadCertificate) == 1
    });
    assert_eq!(handshakes(&gateway, Handshake::Resumed), 1);
    gateway.stop().unwrap();
}

#[test]
fn certificates_reloaded_while_cars_publish_drop_no_connection() {
    const CARS: usize = 4;
    const EACH: usize = 100;
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 2, &[]);
    let pki = Pki::new();
    let gateway = start(&broker, pki.tls(Vec::new()), 10);
    let addr = gateway.local_addr();
    let configs: Vec<_> = (1..=CARS)
        .map(|n| {
            let car = pki.car(
                &format!("car{n}"),
                &pki::CarOptions::named(&format!("VIN{n:014}")),
            );
            TlsCar::client_config(&pki.ca, &car)
        })
        .collect();
    let publishers: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| {
            std::thread::spawn(move || {
                let (mut car, code) = TlsCar::connect(addr, &config, &format!("VIN{:014}", i + 1));
                assert_eq!(code, 0);
                for seq in 0..EACH {
                    car.publish("UL/POS", format!("{i}-{seq}").as_bytes());
                    std::thread::sleep(Duration::from_millis(10));
                }
                car.disconnect();
            })
        })
        .collect();
    // Meanwhile: new chains, one of them broken for a moment.
    let mut last = None;
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        if round == 2 {
            std::fs::write(pki.path("server.crt"), "not a certificate").unwrap();
            assert!(gateway.reload_tls().is_err());
        }
        let fresh = pki.ca.server(&["localhost", "127.0.0.1"]).unwrap();
        fresh.write(pki.dir.path(), "server").unwrap();
        gateway.reload_tls().unwrap();
        last = Some(fresh);
    }
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let records = broker.collector("cs.uplink").collect(CARS * EACH, WAIT);
    assert_eq!(records.len(), CARS * EACH);
    assert_eq!(
        closed(&gateway, CloseKind::Io) + closed(&gateway, CloseKind::TakenOver),
        0
    );
    assert_eq!(closed(&gateway, CloseKind::Disconnect), CARS as u64);
    // A new connection gets the last chain.
    let car = pki.car("late", &pki::CarOptions::named("VIN00000000000099"));
    let (late, code) = TlsCar::connect(
        addr,
        &TlsCar::client_config(&pki.ca, &car),
        "VIN00000000000099",
    );
    assert_eq!(code, 0);
    let served = late.stream.conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(served.as_ref(), last.unwrap().cert_der.as_slice());
    gateway.stop().unwrap();
}

#[test]
fn protocol_violations_over_tls_close_only_their_connection() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let pki = Pki::new();
    let mut config = common::config(&broker, 2);
    config.mqtt.max_packet_size = 1024;
    let mut listener = Listener::plain("127.0.0.1:0".parse().unwrap());
    listener.tls = Some(pki.tls(Vec::new()));
    config.listeners = vec![listener];
    let gateway = Gateway::start(config).unwrap();
    let addr = gateway.local_addr();
    let good = pki.car("good", &pki::CarOptions::named("VIN00000000000001"));
    let (mut steady, code) = TlsCar::connect(
        addr,
        &TlsCar::client_config(&pki.ca, &good),
        "VIN00000000000001",
    );
    assert_eq!(code, 0);

    let qos1 = {
        let mut out = BytesMut::new();
        codec::Publish::new(
            "UL/POS",
            b"x",
            codec::QoS::AtLeastOnce,
            std::num::NonZeroU16::new(1),
            false,
            false,
        )
        .unwrap()
        .encode(&mut out)
        .unwrap();
        out.to_vec()
    };
    for (n, bytes, reason) in [
        (2, vec![0xf0, 0x00], "malformed"),
        (3, qos1, "unsupported"),
        (4, vec![0x30, 0xff, 0x7f], "malformed"),
    ] {
        let id = format!("VIN{n:014}");
        let car = pki.car(&format!("car{n}"), &pki::CarOptions::named(&id));
        let (mut bad, code) = TlsCar::connect(addr, &TlsCar::client_config(&pki.ca, &car), &id);
        assert_eq!(code, 0);
        bad.stream.write_all(&bytes).unwrap();
        bad.stream.flush().unwrap();
        assert!(bad.closed_within(WAIT), "{reason}: still open");
        steady.publish("UL/POS", id.as_bytes());
    }
    let records = broker.collector("cs.uplink").collect(3, WAIT);
    assert!(
        records
            .iter()
            .all(|r| r.key.as_deref() == Some(&b"VIN00000000000001"[..]))
    );
    assert!(!steady.closed_within(Duration::from_millis(200)));
    testkit::wait_until("the closes", WAIT, || {
        closed(&gateway, CloseKind::Malformed) == 2 && closed(&gateway, CloseKind::Unsupported) == 1
    });
    gateway.stop().unwrap();
}

/// A quiet TLS car is parked without a task, as a plain one is
/// (`shard::tls_car`), and is served again by whatever comes: PUBLISH
/// packets one at a time and many in one write, one larger than a TLS
/// record and than the shard's receive buffer, a PINGREQ answered, and a
/// DISCONNECT; between them it parks again. A car whose certificate named
/// it keeps that identity while parked: a new connection with another
/// car's certificate cannot take its session over.
#[test]
fn a_quiet_tls_car_is_parked_and_served_again() {
    let stage = stage(|pki| pki.tls(Vec::new()));
    let gateway = &stage.gateway;
    let addr = gateway.local_addr();
    let parked = || {
        total(gateway, |m| {
            m.connections_parked.load(Ordering::Relaxed) as u64
        })
    };
    let (mut car1, code) = TlsCar::connect(addr, &stage.as_car1, "VIN00000000000001");
    assert_eq!(code, 0);
    let (mut car2, code) = TlsCar::connect(addr, &stage.as_car2, "VIN00000000000002");
    assert_eq!(code, 0);
    testkit::wait_until("both TLS cars parked", WAIT, || parked() == 2);

    let collector = stage.broker.collector("cs.uplink");
    let mut expected = Vec::new();
    for n in 0..3 {
        let payload = format!("one at a time {n}");
        car1.publish("UL/POS", payload.as_bytes());
        expected.push(payload.into_bytes());
        testkit::wait_until("car 1 parked again", WAIT, || parked() == 2);
    }
    // Ten in one write, then one of 40,000 bytes: three TLS records, more
    // than the shard reads at once.
    let mut out = BytesMut::new();
    for n in 0..10 {
        let payload = format!("together {n}");
        codec::Publish::qos0("UL/POS", payload.as_bytes())
            .unwrap()
            .encode(&mut out)
            .unwrap();
        expected.push(payload.into_bytes());
    }
    car1.stream.write_all(&out).unwrap();
    let large: Vec<u8> = (0..40_000u32).map(|n| (n % 251) as u8).collect();
    car1.publish("UL/POS", &large);
    expected.push(large);
    let records = collector.collect(expected.len(), WAIT);
    let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, expected);
    testkit::wait_until("car 1 parked again", WAIT, || parked() == 2);

    // A PINGREQ to a parked car is answered.
    car2.stream.write_all(&codec::packet::PINGREQ).unwrap();
    car2.stream.flush().unwrap();
    let mut pingresp = [0u8; 2];
    car2.stream.read_exact(&mut pingresp).unwrap();
    assert_eq!(pingresp, [0xd0, 0]);
    testkit::wait_until("car 2 parked again", WAIT, || parked() == 2);

    // Car 2's certificate does not take car 1's session, parked or not.
    let (_forger, code) = TlsCar::connect(addr, &stage.as_car2, "VIN00000000000001");
    assert_eq!(code, 5);
    assert!(!car1.closed_within(Duration::from_millis(200)));

    car1.disconnect();
    car2.disconnect();
    testkit::wait_until("both closed", WAIT, || {
        closed(gateway, CloseKind::Disconnect) == 2 && parked() == 0
    });
    // The forger reused car 2's client configuration, and its ticket.
    assert_eq!(handshakes(gateway, Handshake::Full), 2);
    assert_eq!(handshakes(gateway, Handshake::Resumed), 1);
    stage.gateway.stop().unwrap();
}
