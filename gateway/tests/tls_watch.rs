//! Certificates the Kubernetes way: the TLS files live in a directory laid
//! out like a mounted Secret (`..<timestamp>/` with the files, `..data`
//! linking to it, `tls.crt` → `..data/tls.crt` and so on), replaced the
//! way the kubelet does it (a new timestamped directory, then a new
//! `..data_tmp` link renamed over `..data`), and the gateway picks each
//! set up by itself: no SIGHUP, no `POST /reload`.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use gateway::Gateway;
use gateway::config::{ClientAuth, IdentitySource, Listener, Tls};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use testkit::{Broker, WAIT};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How often the gateway looks at its files here, and how long a set that
/// does not load may take before it is reported.
const POLL_SECS: u64 = 1;
const SETTLE_SECS: u64 = 2;
/// The bound on a swapped set being served: a look a second, a load of a
/// few milliseconds, and room for a debug build on a busy 2-core machine.
const PICKED_UP: Duration = Duration::from_secs(15);

/// A Secret volume as the kubelet writes it.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
    current: Option<String>,
}

impl SecretVolume {
    fn new(files: &[(&str, &str)]) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
            current: None,
        };
        volume.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.path(name)).unwrap();
        }
        volume
    }

    /// The path a pod reads: `<volume>/<name>`.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `files` into a new timestamped directory, points `..data` at
    /// it in one rename, and removes the old directory, as kubelet's
    /// atomic writer does.
    fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let stamp = format!("..2026_12_06_10_00_{:02}.{:09}", self.generation, 1000);
        let root = self.dir.path();
        let data = root.join(&stamp);
        std::fs::create_dir(&data).unwrap();
        for (name, content) in files {
            std::fs::write(data.join(name), content).unwrap();
        }
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        if let Some(old) = self.current.replace(stamp) {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

/// A server certificate and key as the Secret's `tls.crt`, `tls.key` and
/// `ca.crt`.
fn secret<'a>(server: &'a pki::Issued, ca: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("tls.crt", server.cert_pem.as_str()),
        ("tls.key", server.key_pem.as_str()),
        ("ca.crt", ca),
    ]
}

/// The certificate a new TLS connection is served (the handshake only;
/// no resumption, so it is the listener's current one).
fn served(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket.set_write_timeout(Some(WAIT)).unwrap();
    let mut tls =
        rustls::ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).unwrap();
    }
    tls.peer_certificates().unwrap()[0].to_vec()
}

/// notAfter of a DER certificate, unix seconds.
fn not_after(der: &[u8]) -> i64 {
    let (_, certificate) = X509Certificate::from_der(der).unwrap();
    certificate.validity().not_after.timestamp()
}

fn client_config(ca: &pki::Ca, car: &pki::Issued) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der())).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
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
    // A resumed session would show the chain it began with.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// The gateway's TLS samples, by name (and labels).
struct Scrape {
    admin: SocketAddr,
    listener: SocketAddr,
}

impl Scrape {
    fn samples(&self) -> HashMap<String, f64> {
        testkit::scrape(self.admin).expect("/metrics answers")
    }

    fn value(&self, series: &str) -> f64 {
        let samples = self.samples();
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {samples:?}"))
    }

    fn expiry(&self, certificate: &str) -> f64 {
        self.value(&format!(
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds\
             {{listener=\"{}\",certificate=\"{certificate}\"}}",
            self.listener
        ))
    }

    fn failing(&self) -> f64 {
        self.value("carbridge_gateway_tls_reload_failing")
    }

    fn reloads(&self, result: &str) -> f64 {
        self.value(&format!(
            "carbridge_gateway_tls_reloads_total{{result=\"{result}\"}}"
        ))
    }
}

fn start(broker: &Broker, volume: &SecretVolume) -> Gateway {
    let mut config = common::config(broker, 1);
    config.tls_watch.poll_secs = POLL_SECS;
    config.tls_watch.settle_secs = SETTLE_SECS;
    let mut listener = Listener::plain("127.0.0.1:0".parse().unwrap());
    listener.tls = Some(Tls {
        cert: volume.path("tls.crt"),
        key: volume.path("tls.key"),
        client_auth: ClientAuth::Required,
        client_ca: Some(volume.path("ca.crt")),
        crls: Vec::new(),
        identity: IdentitySource::Cn,
        ticket_keys: None,
        ticket_keys_env: None,
        ticket_lifetime_secs: 3600,
    });
    config.listeners = vec![listener];
    Gateway::start(config).unwrap()
}

#[test]
fn a_secret_swapped_by_the_kubelet_is_served_without_a_signal_and_a_broken_one_is_not() {
    let broker = Broker::start();
    let ca = pki::Ca::new().unwrap();
    let ca_pem = ca.cert_pem();
    let car = ca.car("VIN00000000000001").unwrap();
    let as_car = client_config(&ca, &car);
    let names = ["localhost", "127.0.0.1"];
    let first = ca.server_until(&names, (2027, 3, 1)).unwrap();
    let mut volume = SecretVolume::new(&secret(&first, &ca_pem));
    assert_eq!(
        std::fs::read_link(volume.path("tls.crt")).unwrap(),
        Path::new("..data/tls.crt")
    );
    let gateway = start(&broker, &volume);
    let addr = gateway.local_addr();
    let scrape = Scrape {
        admin: gateway.admin_addr().unwrap(),
        listener: addr,
    };

    // As started: the first certificate, its expiry and the CA's.
    assert_eq!(served(addr, &as_car), first.cert_der);
    assert_eq!(scrape.expiry("server"), not_after(&first.cert_der) as f64);
    assert_eq!(scrape.expiry("server"), 1_803_859_200.0); // 2027-03-01
    assert_eq!(scrape.expiry("ca"), not_after(&ca.cert_der()) as f64);
    assert_eq!(scrape.failing(), 0.0);

    // A renewal: served to new connections within the bound, by itself.
    let renewed = ca.server_until(&names, (2028, 6, 1)).unwrap();
    let swapped = Instant::now();
    volume.swap(&secret(&renewed, &ca_pem));
    testkit::wait_until("the renewed certificate served", PICKED_UP, || {
        served(addr, &as_car) == renewed.cert_der
    });
    let seen = served(addr, &as_car);
    assert_eq!(not_after(&seen), 1_843_430_400); // 2028-06-01, client side
    assert!(swapped.elapsed() < PICKED_UP);
    assert_eq!(scrape.expiry("server"), 1_843_430_400.0);
    assert_eq!(scrape.reloads("ok"), 1.0);
    assert_eq!(scrape.reloads("failed"), 0.0);
    assert_eq!(scrape.failing(), 0.0);

    // A set whose key is broken: reported once it has not loaded for the
    // settle time, never before; the renewed certificate serves on.
    let next = ca.server_until(&names, (2029, 1, 1)).unwrap();
    let swapped = Instant::now();
    volume.swap(&[
        ("tls.crt", &next.cert_pem),
        (
            "tls.key",
            "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
        ),
        ("ca.crt", &ca_pem),
    ]);
    testkit::wait_until("the failure reported", WAIT, || scrape.failing() == 1.0);
    assert!(
        swapped.elapsed() >= Duration::from_secs(SETTLE_SECS),
        "reported {:?} after the swap, before the settle time",
        swapped.elapsed()
    );
    assert_eq!(scrape.reloads("failed"), 1.0);
    assert_eq!(served(addr, &as_car), renewed.cert_der);
    assert_eq!(scrape.expiry("server"), 1_843_430_400.0);
    // Reported once: the same broken set is not counted again. Nothing
    // to wait for here (the check is that nothing happens): two more looks.
    std::thread::sleep(Duration::from_secs(2 * POLL_SECS + 1));
    assert_eq!(scrape.reloads("failed"), 1.0);
    assert_eq!(scrape.failing(), 1.0);

    // The fixed set: loaded, the failure cleared, the new expiry shown.
    volume.swap(&secret(&next, &ca_pem));
    testkit::wait_until("the fixed set served", PICKED_UP, || {
        served(addr, &as_car) == next.cert_der
    });
    testkit::wait_until("the failure cleared", PICKED_UP, || scrape.failing() == 0.0);
    assert_eq!(scrape.expiry("server"), not_after(&next.cert_der) as f64);
    assert_eq!(scrape.reloads("ok"), 2.0);
    assert_eq!(scrape.reloads("failed"), 1.0);
    gateway.stop().unwrap();
}
