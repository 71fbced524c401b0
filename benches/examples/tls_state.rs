//! Heap held by one idle rustls server connection after a mutual-TLS
//! handshake (TLS 1.3, ECDSA P-256, the car's certificate verified), with
//! dhat as the allocator: what a TLS car costs the gateway beyond a plain
//! one, before any buffering of ours.
//!
//! ```sh
//! cargo run --release -p benches --example tls_state
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn heap() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

fn main() {
    // With a path argument: a dhat heap profile of the first case, ended
    // while its connection is still alive (what it holds is "at t-end").
    let profile = std::env::args().nth(1);
    let mut profiler = Some(match &profile {
        Some(path) => dhat::Profiler::builder().file_name(path).build(),
        None => dhat::Profiler::builder().testing().build(),
    });
    let ca = pki::Ca::new().unwrap();
    let server = ca.server(&["gateway.test"]).unwrap();
    let car = ca.car("WVW00000000000042").unwrap();
    let key = |der: Vec<u8>| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der));
    for (name, provider, suites) in [
        (
            "aws-lc-rs, AES-128-GCM",
            rustls::crypto::aws_lc_rs::default_provider(),
            "TLS13_AES_128_GCM_SHA256",
        ),
        (
            "aws-lc-rs, ChaCha20-Poly1305",
            rustls::crypto::aws_lc_rs::default_provider(),
            "TLS13_CHACHA20_POLY1305_SHA256",
        ),
        (
            "ring, AES-128-GCM",
            rustls::crypto::ring::default_provider(),
            "TLS13_AES_128_GCM_SHA256",
        ),
    ] {
        let mut provider: CryptoProvider = provider;
        provider
            .cipher_suites
            .retain(|suite| format!("{:?}", suite.suite()) == suites);
        let provider = Arc::new(provider);
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der())).unwrap();
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        let mut server_config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server.cert_der.clone())],
                key(server.key_der.clone()),
            )
            .unwrap();
        server_config.send_tls13_tickets = 1;
        let server_config = Arc::new(server_config);
        let client_config = Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from(car.cert_der.clone())],
                    key(car.key_der.clone()),
                )
                .unwrap(),
        );

        let before = heap();
        let mut gateway = ServerConnection::new(server_config.clone()).unwrap();
        {
            let mut client = ClientConnection::new(
                client_config.clone(),
                ServerName::try_from("gateway.test").unwrap(),
            )
            .unwrap();
            let mut buf = Vec::new();
            while client.is_handshaking() || gateway.is_handshaking() || gateway.wants_write() {
                buf.clear();
                while client.wants_write() {
                    client.write_tls(&mut buf).unwrap();
                }
                gateway.read_tls(&mut buf.as_slice()).unwrap();
                gateway.process_new_packets().unwrap();
                buf.clear();
                while gateway.wants_write() {
                    gateway.write_tls(&mut buf).unwrap();
                }
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            // One small record each way, as a car's PUBLISH and a PINGRESP.
            use std::io::{Read, Write};
            client.writer().write_all(&[0x30; 100]).unwrap();
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            gateway.read_tls(&mut buf.as_slice()).unwrap();
            gateway.process_new_packets().unwrap();
            let mut plain = [0u8; 256];
            let _ = gateway.reader().read(&mut plain).unwrap();
            gateway.writer().write_all(&[0xd0, 0]).unwrap();
            buf.clear();
            gateway.write_tls(&mut buf).unwrap();
        }
        let held = heap() - before;
        println!(
            "{name}: {held} bytes on the heap + {} inline = {} per idle connection",
            std::mem::size_of::<ServerConnection>(),
            held + std::mem::size_of::<ServerConnection>() as u64
        );
        if profile.is_some() {
            drop(profiler.take());
            return;
        }
        drop(gateway);

        println!(
            "{name}, unbuffered (the gateway's): {} bytes on the heap, the session boxed as the gateway keeps it",
            unbuffered(&server_config, &client_config)
        );
    }
}

/// The same handshake and records with rustls' unbuffered server, as the
/// gateway runs it (`gateway/src/shard/tls_car.rs`): the buffers are the
/// caller's, dropped here before the reading, so what is held is the
/// session alone.
fn unbuffered(server_config: &Arc<ServerConfig>, client_config: &Arc<ClientConfig>) -> u64 {
    use rustls::server::UnbufferedServerConnection;
    use rustls::unbuffered::ConnectionState;
    use std::io::{Read, Write};

    enum Then {
        Again,
        Read,
        Traffic,
    }
    let before = heap();
    let mut gateway = Box::new(UnbufferedServerConnection::new(server_config.clone()).unwrap());
    {
        let mut client = ClientConnection::new(
            client_config.clone(),
            ServerName::try_from("gateway.test").unwrap(),
        )
        .unwrap();
        let mut incoming = Vec::new();
        let mut outgoing = Vec::new();
        // Runs the server over what `incoming` holds; what it sends goes
        // to `outgoing`, plaintext it decrypts to `plain`.
        let mut serve = |incoming: &mut Vec<u8>, outgoing: &mut Vec<u8>, plain: &mut Vec<u8>| loop {
            let status = gateway.process_tls_records(incoming);
            let discard = status.discard;
            let then = match status.state.unwrap() {
                ConnectionState::EncodeTlsData(mut data) => {
                    let mut room = vec![0; 32 * 1024];
                    let written = data.encode(&mut room).unwrap();
                    outgoing.extend_from_slice(&room[..written]);
                    Then::Again
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    Then::Again
                }
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        plain.extend_from_slice(record.unwrap().payload);
                    }
                    Then::Again
                }
                ConnectionState::BlockedHandshake => Then::Read,
                ConnectionState::WriteTraffic(_) => Then::Traffic,
                other => panic!("unexpected {other:?}"),
            };
            incoming.drain(..discard);
            match then {
                Then::Again => {}
                Then::Read => return false,
                Then::Traffic => return true,
            }
        };
        let mut plain = Vec::new();
        loop {
            while client.wants_write() {
                client.write_tls(&mut incoming).unwrap();
            }
            let traffic = serve(&mut incoming, &mut outgoing, &mut plain);
            client.read_tls(&mut outgoing.as_slice()).unwrap();
            outgoing.clear();
            client.process_new_packets().unwrap();
            if traffic && !client.is_handshaking() && !client.wants_write() {
                break;
            }
        }
        // One small record each way, as a car's PUBLISH and a PINGRESP.
        client.writer().write_all(&[0x30; 100]).unwrap();
        client.write_tls(&mut incoming).unwrap();
        assert!(serve(&mut incoming, &mut outgoing, &mut plain));
        assert_eq!(plain.len(), 100);
        let ConnectionState::WriteTraffic(mut traffic) =
            gateway.process_tls_records(&mut []).state.unwrap()
        else {
            panic!("not ready to send");
        };
        let mut room = vec![0; 256];
        let written = traffic.encrypt(&[0xd0, 0], &mut room).unwrap();
        client.read_tls(&mut &room[..written]).unwrap();
        client.process_new_packets().unwrap();
        let mut pingresp = [0u8; 2];
        client.reader().read_exact(&mut pingresp).unwrap();
    }
    let held = heap() - before;
    drop(gateway);
    held
}
