//! TLS handshakes per second on the gateway's side, to choose its rustls
//! crypto provider: ring against aws-lc-rs, each for a full mutual-TLS
//! handshake (TLS 1.3, ECDSA P-256 server and car certificates, the car's
//! certificate verified against the CA) and for a resumed one (TLS 1.3
//! ticket). Client and server run in memory; only the server's work is
//! timed (`iter_custom`), as that is what a gateway shard pays per car.

// Benchmark code: a failed setup should stop the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

struct Pki {
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    car: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

fn pki() -> Pki {
    let ca = pki::Ca::new().unwrap();
    let server = ca.server(&["gateway.test"]).unwrap();
    let car = ca.car("WVW00000000000042").unwrap();
    let pair = |issued: pki::Issued| {
        (
            CertificateDer::from(issued.cert_der),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der)),
        )
    };
    Pki {
        ca: CertificateDer::from(ca.cert_der()),
        server: pair(server),
        car: pair(car),
    }
}

type Ticketer = fn() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error>;

/// The gateway's config, and the car's with and without resumption.
fn configs(
    pki: &Pki,
    provider: CryptoProvider,
    ticketer: Ticketer,
) -> (Arc<ServerConfig>, Arc<ClientConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(provider);
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    server.ticketer = ticketer().unwrap();
    let resuming = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![pki.car.0.clone()], pki.car.1.clone_key())
        .unwrap();
    let mut full = resuming.clone();
    full.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(full), Arc::new(resuming))
}

/// One handshake; returns the time the server spent in it.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let name = ServerName::try_from("gateway.test").unwrap();
    let mut car = ClientConnection::new(client.clone(), name).unwrap();
    let mut buf = Vec::with_capacity(4096);
    let mut spent = Duration::ZERO;
    let started = Instant::now();
    let mut gateway = ServerConnection::new(server.clone()).unwrap();
    spent += started.elapsed();
    while car.is_handshaking() || gateway.is_handshaking() {
        buf.clear();
        while car.wants_write() {
            car.write_tls(&mut buf).unwrap();
        }
        let started = Instant::now();
        gateway.read_tls(&mut buf.as_slice()).unwrap();
        gateway.process_new_packets().unwrap();
        buf.clear();
        while gateway.wants_write() {
            gateway.write_tls(&mut buf).unwrap();
        }
        spent += started.elapsed();
        car.read_tls(&mut buf.as_slice()).unwrap();
        car.process_new_packets().unwrap();
    }
    assert!(gateway.peer_certificates().is_some());
    spent
}

fn tls(c: &mut Criterion) {
    let pki = pki();
    let mut group = c.benchmark_group("tls_handshake_server_side");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let providers: [(&str, CryptoProvider, Ticketer); 2] = [
        (
            "ring",
            rustls::crypto::ring::default_provider(),
            rustls::crypto::ring::Ticketer::new,
        ),
        (
            "aws_lc_rs",
            rustls::crypto::aws_lc_rs::default_provider(),
            rustls::crypto::aws_lc_rs::Ticketer::new,
        ),
    ];
    for (name, provider, ticketer) in providers {
        let (server, full, resuming) = configs(&pki, provider, ticketer);
        group.bench_function(format!("{name}/full"), |b| {
            b.iter_custom(|n| (0..n).map(|_| handshake(&server, &full)).sum());
        });
        group.bench_function(format!("{name}/resumed"), |b| {
            // The car keeps its tickets: every handshake after the first
            // resumes.
            handshake(&server, &resuming);
            b.iter_custom(|n| (0..n).map(|_| handshake(&server, &resuming)).sum());
        });
    }
    group.finish();
}

criterion_group!(benches, tls);
criterion_main!(benches);
