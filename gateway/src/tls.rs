//! TLS termination for a listener: the rustls server configuration built
//! from PEM files, re-read on demand (SIGHUP, `POST /reload`, or the files
//! seen to change by [`watch`]) without touching live connections, and the
//! car's identity read from its verified certificate.
//!
//! The crypto provider is aws-lc-rs (BENCHMARKS.md: server handshakes per
//! second, 1.09x ring's full ones and 1.12x its resumed ones). The handshake itself runs on the shard
//! that accepted the socket (`shard::connection`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ops::exposition::{Counters, Exposition};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{ClientAuth, IdentitySource, Tls};

mod reload;
mod tickets;
pub(crate) mod watch;

pub(crate) use reload::Attempt;
pub use reload::Reloader;
pub use tickets::SharedTicketer;

ops::label_set! {
    /// What became of a TLS handshake (`carbridge_gateway_tls_handshakes_total`):
    /// full and resumed succeeded; the others closed the connection before
    /// MQTT.
    pub enum Handshake: "result" {
        Full = "full",
        Resumed = "resumed",
        Timeout = "timeout",
        NoCertificate = "no_certificate",
        BadCertificate = "bad_certificate",
        NoIdentity = "no_identity",
        Protocol = "protocol",
        Io = "io_error",
    }
}

ops::label_set! {
    /// How a reload of the TLS files ended (`carbridge_gateway_tls_reloads_total`).
    pub enum Reload: "result" {
        Ok = "ok",
        Failed = "failed",
    }
}

ops::label_set! {
    /// Whose expiry (`carbridge_gateway_tls_certificate_expiry_timestamp_seconds`):
    /// the listener's own chain, or the CA bundle that checks the cars.
    pub enum Certificate: "certificate" {
        Server = "server",
        Ca = "ca",
    }
}

/// Why TLS settings could not be loaded; says which file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error("the environment variable {variable}: {problem}")]
    Env { variable: String, problem: String },
    #[error("server certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn file_error(path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| file_error(path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(path, error))?;
    if certificates.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certificates)
}

/// Revoked certificates of the configured CRLs: (issuer name, serial),
/// both as DER. rustls checks the CRLs in a full handshake; a resumed one
/// does not, so the gateway checks every handshake's leaf against these.
pub type Revoked = std::collections::HashSet<(Vec<u8>, Vec<u8>)>;

fn revoked(path: &Path, crls: &[CertificateRevocationListDer<'_>]) -> Result<Revoked, TlsError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let mut revoked = Revoked::new();
    for crl in crls {
        // Refused rather than skipped: a CRL rustls reads and this does not
        // would let its revoked cars resume sessions.
        let (_, crl) = CertificateRevocationList::from_der(crl.as_ref())
            .map_err(|error| file_error(path, format!("CRL: {error}")))?;
        let issuer = crl.issuer().as_raw().to_vec();
        for certificate in crl.iter_revoked_certificates() {
            revoked.insert((issuer.clone(), certificate.raw_serial().to_vec()));
        }
    }
    Ok(revoked)
}

type Ticketer = Arc<dyn rustls::server::ProducesTickets>;

/// When the first of `certificates` expires (its notAfter, unix seconds);
/// `None` if none parses (rustls has accepted them: a certificate this
/// parser cannot read only goes unreported).
fn earliest_expiry(certificates: &[CertificateDer<'_>]) -> Option<i64> {
    certificates
        .iter()
        .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok())
        .map(|(_, certificate)| certificate.validity().not_after.timestamp())
        .min()
}

/// The file a failed client verifier comes from: the CA bundle, or the
/// CRL file that webpki refuses (found by trying each alone; an error
/// path only).
fn verifier_error(
    error: rustls::server::VerifierBuilderError,
    ca: &Path,
    files: &[(&PathBuf, Vec<CertificateRevocationListDer<'static>>)],
    roots: &Arc<rustls::RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> TlsError {
    use rustls::server::VerifierBuilderError;
    match error {
        VerifierBuilderError::NoRootAnchors => file_error(ca, "no usable CA certificate"),
        VerifierBuilderError::InvalidCrl(_) => files
            .iter()
            .find_map(|(path, file)| {
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .with_crls(file.iter().cloned())
                    .build()
                    .err()
                    .map(|error| file_error(path, format!("CRL: {error}")))
            })
            .unwrap_or(TlsError::Verifier(error)),
        other => TlsError::Verifier(other),
    }
}

/// The server configuration, the revoked certificates and the expiries;
/// `random` makes the tickets when no ticket key file is configured.
fn load(tls: &Tls, random: &Ticketer) -> Result<Loaded, TlsError> {
    let provider = provider();
    let chain = certificates(&tls.cert)?;
    let mut expiry = Expiry {
        server: earliest_expiry(&chain),
        ca: None,
    };
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => file_error(
            &tls.key,
            "no PRIVATE KEY in the file (PEM: PKCS#8, PKCS#1 or SEC1)",
        ),
        other => file_error(&tls.key, other),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut revoked_certificates = Revoked::new();
    let builder = match (tls.client_auth, &tls.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(file_error(
                Path::new("client_ca"),
                "unset: required unless client_auth = \"none\"",
            ));
        }
        (auth, Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            let bundle = certificates(ca)?;
            expiry.ca = earliest_expiry(&bundle);
            for certificate in bundle {
                roots
                    .add(certificate)
                    .map_err(|error| file_error(ca, error))?;
            }
            let mut files = Vec::new();
            for path in &tls.crls {
                let file = CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|error| file_error(path, error))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| file_error(path, error))?;
                if file.is_empty() {
                    return Err(file_error(path, "no X509 CRL in the file"));
                }
                revoked_certificates.extend(revoked(path, &file)?);
                files.push((path, file));
            }
            let roots = Arc::new(roots);
            let crls = files.iter().flat_map(|(_, file)| file.iter().cloned());
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .with_crls(crls);
            if auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|error| verifier_error(error, ca, &files, &roots, &provider))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => file_error(
                &tls.key,
                format!(
                    "this key does not match the certificate in {}",
                    tls.cert.display()
                ),
            ),
            other => file_error(
                &tls.key,
                format!("with the certificate in {}: {other}", tls.cert.display()),
            ),
        })?;
    config.ticketer = match (&tls.ticket_keys, &tls.ticket_keys_env) {
        (Some(path), _) => Arc::new(SharedTicketer::from_file(path, tls.ticket_lifetime_secs)?),
        (None, Some(variable)) => Arc::new(SharedTicketer::from_env(
            variable,
            tls.ticket_lifetime_secs,
        )?),
        (None, None) => random.clone(),
    };
    // One ticket per car is enough to resume once; each costs bytes and
    // an encryption per handshake.
    config.send_tls13_tickets = 1;
    // The server's cipher suite order (AES-GCM first, fast with AES-NI)
    // rather than whatever the car lists first.
    config.ignore_client_order = true;
    Ok(Loaded {
        config: Arc::new(config),
        revoked: revoked_certificates,
        expiry,
    })
}

/// A listener's TLS as loaded from its files.
#[derive(Debug)]
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    pub revoked: Revoked,
    pub expiry: Expiry,
}

/// When what a listener loaded expires: the earliest notAfter (unix
/// seconds) of its certificate chain and of its CA bundle (none without
/// one: `client_auth = "none"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub server: Option<i64>,
    pub ca: Option<i64>,
}

impl Loaded {
    /// What a verified car certificate says: its identity, or why the
    /// connection may not go on.
    pub fn admit(
        &self,
        leaf: &CertificateDer<'_>,
        source: IdentitySource,
    ) -> Result<String, Handshake> {
        let (_, certificate) =
            X509Certificate::from_der(leaf.as_ref()).map_err(|_| Handshake::BadCertificate)?;
        let key = (
            certificate.issuer().as_raw().to_vec(),
            certificate.raw_serial().to_vec(),
        );
        if self.revoked.contains(&key) {
            // Only a resumed session gets here: a full handshake already
            // refused it.
            return Err(Handshake::BadCertificate);
        }
        identity_of(&certificate, source).ok_or(Handshake::NoIdentity)
    }
}

/// A listener's TLS: the current configuration, replaced whole on reload.
#[derive(Debug)]
pub struct Terminator {
    spec: Tls,
    current: RwLock<Arc<Loaded>>,
    /// This process's own ticket key (no `ticket_keys` file): kept across
    /// reloads, so a reload does not cost every car a full handshake.
    random: Ticketer,
}

fn loaded(spec: &Tls, random: &Ticketer) -> Result<Arc<Loaded>, TlsError> {
    load(spec, random).map(Arc::new)
}

impl Terminator {
    pub fn new(spec: &Tls) -> Result<Self, TlsError> {
        let random = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(Self {
            current: RwLock::new(loaded(spec, &random)?),
            spec: spec.clone(),
            random,
        })
    }

    /// What new connections use.
    pub fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again; on an error the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = loaded(&self.spec, &self.random)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    pub fn identity_source(&self) -> IdentitySource {
        self.spec.identity
    }
}

/// The identity a verified certificate names, if it names one.
fn identity_of(certificate: &X509Certificate<'_>, source: IdentitySource) -> Option<String> {
    let name = match source {
        IdentitySource::Cn => certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok()),
        san => certificate
            .subject_alternative_name()
            .ok()
            .flatten()?
            .value
            .general_names
            .iter()
            .find_map(|name| match (san, name) {
                (IdentitySource::SanDns, GeneralName::DNSName(dns)) => Some(*dns),
                (IdentitySource::SanUri, GeneralName::URI(uri)) => Some(*uri),
                (IdentitySource::SanEmail, GeneralName::RFC822Name(email)) => Some(*email),
                _ => None,
            }),
    }?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// How a failed handshake is counted.
pub fn failure_label(error: &io::Error) -> Handshake {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => Handshake::NoCertificate,
        Some(rustls::Error::InvalidCertificate(_)) => Handshake::BadCertificate,
        Some(_) => Handshake::Protocol,
        None if error.kind() == io::ErrorKind::InvalidData => Handshake::Protocol,
        None => Handshake::Io,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn identity(certificate: &CertificateDer<'_>, source: IdentitySource) -> Option<String> {
        let (_, certificate) = X509Certificate::from_der(certificate.as_ref()).ok()?;
        identity_of(&certificate, source)
    }

    #[test]
    fn identity_from_cn_or_a_san() {
        let ca = pki::Ca::new().unwrap();
        let car = ca
            .car_with(&pki::CarOptions {
                common_name: Some("WVW00000000000001".to_owned()),
                sans: vec![
                    pki::San::Dns("car1.fleet.example".to_owned()),
                    pki::San::Uri("urn:vin:WVW00000000000001".to_owned()),
                    pki::San::Email("car1@fleet.example".to_owned()),
                ],
                expired: false,
            })
            .unwrap();
        let der = CertificateDer::from(car.cert_der);
        assert_eq!(
            identity(&der, IdentitySource::Cn).as_deref(),
            Some("WVW00000000000001")
        );
        assert_eq!(
            identity(&der, IdentitySource::SanDns).as_deref(),
            Some("car1.fleet.example")
        );
        assert_eq!(
            identity(&der, IdentitySource::SanUri).as_deref(),
            Some("urn:vin:WVW00000000000001")
        );
        assert_eq!(
            identity(&der, IdentitySource::SanEmail).as_deref(),
            Some("car1@fleet.example")
        );
        let bare = ca.car_with(&pki::CarOptions::default()).unwrap();
        let bare = CertificateDer::from(bare.cert_der);
        assert_eq!(identity(&bare, IdentitySource::Cn), None);
        assert_eq!(identity(&bare, IdentitySource::SanDns), None);
        assert_eq!(
            identity(&CertificateDer::from(vec![0x30, 0x03]), IdentitySource::Cn),
            None
        );
    }

    /// Mutual TLS with `server.crt`, `server.key` and `ca.crt` in `dir`.
    pub(super) fn mutual_tls_in(dir: &std::path::Path) -> Tls {
        Tls {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_auth: ClientAuth::Required,
            client_ca: Some(dir.join("ca.crt")),
            crls: Vec::new(),
            identity: IdentitySource::Cn,
            ticket_keys: None,
            ticket_keys_env: None,
            ticket_lifetime_secs: 3600,
        }
    }

    #[test]
    fn a_broken_file_says_which_and_keeps_the_old_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::new().unwrap();
        ca.server(&["localhost"])
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        let spec = mutual_tls_in(dir.path());
        let terminator = Terminator::new(&spec).unwrap();
        let before = terminator.current().config.clone();
        std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
        let error = terminator.reload().unwrap_err().to_string();
        assert!(error.contains("server.key"), "{error}");
        assert!(Arc::ptr_eq(&before, &terminator.current().config));
        ca.server(&["localhost"])
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        terminator.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &terminator.current().config));
    }
}
