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

pub(crate) mod watch;

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

/// Session tickets under keys shared by every gateway instance: a key per
/// secret and period (`lifetime`), derived with HMAC-SHA256, and
/// ChaCha20-Poly1305 over the session state. A ticket is
/// `key id (8) | nonce (12) | ciphertext | tag (16)`.
pub struct SharedTicketer {
    secrets: Vec<Vec<u8>>,
    lifetime: u32,
    random: aws_lc_rs::rand::SystemRandom,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTicketer")
            .field("secrets", &self.secrets.len())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Bytes before a ticket's ciphertext, and the tag after it.
const TICKET_OVERHEAD: usize = 8 + 12 + 16;
/// Longest ticket decrypted: rustls' session state is a few hundred bytes
/// plus the car's certificate chain.
const TICKET_MAX: usize = 16 * 1024;

impl SharedTicketer {
    pub fn new(secrets: Vec<Vec<u8>>, lifetime: u32) -> Self {
        Self {
            secrets,
            lifetime: lifetime.max(60),
            random: aws_lc_rs::rand::SystemRandom::new(),
        }
    }

    /// Reads the secrets: one hex line each (at least 32 bytes), `#`
    /// comments and blank lines skipped.
    pub fn from_file(path: &Path, lifetime: u32) -> Result<Self, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|error| file_error(path, error))?;
        Self::from_text(&text, lifetime).map_err(|problem| file_error(path, problem))
    }

    /// Reads the secrets from environment variable `variable`, in the
    /// file's format (a single secret is one hex line).
    pub fn from_env(variable: &str, lifetime: u32) -> Result<Self, TlsError> {
        let env_error = |problem: String| TlsError::Env {
            variable: variable.to_owned(),
            problem,
        };
        let text = std::env::var(variable).map_err(|error| env_error(error.to_string()))?;
        Self::from_text(&text, lifetime).map_err(env_error)
    }

    /// The secrets of `text`, or what is wrong with it (never a secret's
    /// text).
    fn from_text(text: &str, lifetime: u32) -> Result<Self, String> {
        let mut secrets = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let secret = decode_hex(line)
                .filter(|secret| secret.len() >= 32)
                .ok_or_else(|| {
                    format!(
                        "line {}: not a hex secret of at least 32 bytes \
                         (make one with `openssl rand -hex 32`)",
                        number + 1
                    )
                })?;
            secrets.push(secret);
        }
        if secrets.is_empty() {
            return Err("no secret in it".to_owned());
        }
        Ok(Self::new(secrets, lifetime))
    }

    fn period(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.as_secs() / u64::from(self.lifetime))
    }

    /// The key id and key of `secret` in `period`.
    fn key(secret: &[u8], period: u64) -> Option<([u8; 8], aws_lc_rs::aead::LessSafeKey)> {
        use aws_lc_rs::{aead, hmac};
        let prk = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |purpose: &[u8]| hmac::sign(&prk, &[purpose, &period.to_be_bytes()].concat());
        let mut id = [0u8; 8];
        id.copy_from_slice(derive(b"carbridge ticket id").as_ref().get(..8)?);
        let key = derive(b"carbridge ticket key");
        let key = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key.as_ref().get(..32)?).ok()?;
        Some((id, aead::LessSafeKey::new(key)))
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use aws_lc_rs::aead::{Aad, Nonce};
        use aws_lc_rs::rand::SecureRandom;
        let (id, key) = Self::key(self.secrets.first()?, self.period())?;
        let mut nonce = [0u8; 12];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id),
            &mut sealed,
        )
        .ok()?;
        let mut ticket = Vec::with_capacity(TICKET_OVERHEAD + plain.len());
        ticket.extend_from_slice(&id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// Never panics: the ticket is the car's to make up.
    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        use aws_lc_rs::aead::{Aad, Nonce};
        if !(TICKET_OVERHEAD..=TICKET_MAX).contains(&ticket.len()) {
            return None;
        }
        let (id, rest) = ticket.split_at_checked(8)?;
        let (nonce, sealed) = rest.split_at_checked(12)?;
        let period = self.period();
        for secret in &self.secrets {
            for period in [period, period.saturating_sub(1)] {
                let Some((key_id, key)) = Self::key(secret, period) else {
                    continue;
                };
                if key_id != id {
                    continue;
                }
                let mut buffer = sealed.to_vec();
                let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
                let plain = key
                    .open_in_place(nonce, Aad::from(key_id), &mut buffer)
                    .ok()?
                    .len();
                buffer.truncate(plain);
                return Some(buffer);
            }
        }
        None
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
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

/// Why the TLS files are read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// SIGHUP or `POST /reload`: the outcome is always reported.
    Asked,
    /// [`watch`] saw the files change. A failure is reported only with
    /// `report` (the set has not loaded for `[tls_watch] settle_secs`);
    /// before that it may be a set half replaced, and the old files
    /// serve on without a word beyond an info line.
    Changed { report: bool },
}

/// Every TLS listener's files, reloaded together, the outcome logged and
/// counted (a failed reload stays visible in a gauge until one succeeds).
#[derive(Debug, Default)]
pub struct Reloader {
    terminators: Vec<Arc<Terminator>>,
    /// Each terminator's listener address: the configured one, then the
    /// bound one (port 0 resolved) once the shards listen.
    addresses: RwLock<Vec<SocketAddr>>,
    reloads: Counters<Reload>,
    failing: AtomicBool,
    /// One reload at a time (SIGHUP, `POST /reload` and the watcher may
    /// meet): the failing gauge is the last one's.
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    /// The TLS listeners: each one's address and terminator.
    pub fn new(listeners: Vec<(SocketAddr, Arc<Terminator>)>) -> Self {
        let (addresses, terminators) = listeners.into_iter().unzip();
        Self {
            terminators,
            addresses: RwLock::new(addresses),
            ..Self::default()
        }
    }

    /// The addresses the listeners were bound to, in the same order.
    pub fn bound(&self, addresses: Vec<SocketAddr>) {
        *self
            .addresses
            .write()
            .unwrap_or_else(PoisonError::into_inner) = addresses;
    }

    /// Reloads every listener (SIGHUP, `POST /reload`); the message says
    /// what happened.
    pub fn reload(&self) -> Result<String, String> {
        self.reload_as(Attempt::Asked)
    }

    /// Reloads every listener: a listener whose files load serves them to
    /// new connections, one whose files do not keeps its old ones. Logged
    /// and counted unless `attempt` is a change not to be reported yet.
    pub(crate) fn reload_as(&self, attempt: Attempt) -> Result<String, String> {
        let _one = self
            .one_at_a_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let report = attempt != Attempt::Changed { report: false };
        let cause = match attempt {
            Attempt::Asked => "asked (SIGHUP or POST /reload)",
            Attempt::Changed { .. } => "the files changed",
        };
        let mut errors = Vec::new();
        for terminator in &self.terminators {
            if let Err(error) = terminator.reload() {
                if report {
                    tracing::error!(
                        %error,
                        cause,
                        "TLS reload failed: this listener keeps its old files"
                    );
                }
                errors.push(error.to_string());
            }
        }
        if errors.is_empty() {
            self.failing.store(false, Ordering::Relaxed);
            self.reloads.bump(Reload::Ok);
            let done = format!("reloaded {} TLS listener(s)\n", self.terminators.len());
            tracing::info!(cause, "{}", done.trim_end());
            return Ok(done);
        }
        if report {
            self.failing.store(true, Ordering::Relaxed);
            self.reloads.bump(Reload::Failed);
        }
        Err(format!(
            "kept the old files of {} listener(s):\n{}\n",
            errors.len(),
            errors.join("\n")
        ))
    }

    /// Appends the reload metrics and each listener's expiries.
    pub fn render(&self, page: &mut Exposition) {
        page.counters(
            "carbridge_gateway_tls_reloads_total",
            "TLS file reloads (SIGHUP, POST /reload, files seen to change), by result; a \
             changed set that does not load counts as failed once it has not loaded for \
             [tls_watch] settle_secs.",
            |result| self.reloads.get(result),
        );
        page.gauge(
            "carbridge_gateway_tls_reload_failing",
            "1 while the last reload failed: some listener serves old files.",
            u8::from(self.failing.load(Ordering::Relaxed)),
        );
        let addresses = self
            .addresses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let expiries: Vec<_> = addresses
            .iter()
            .zip(&self.terminators)
            .flat_map(|(address, terminator)| {
                let Expiry { server, ca } = terminator.current().expiry;
                [(Certificate::Server, server), (Certificate::Ca, ca)]
                    .into_iter()
                    .filter_map(move |(which, at)| Some((*address, which, at?)))
            })
            .collect();
        page.samples_with(
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When a TLS listener's certificate (certificate=\"server\": the earliest notAfter \
             of its chain) or its CA bundle (certificate=\"ca\": the earliest of the CAs \
             that check the cars) expires, in unix seconds, as last loaded.",
            "listener",
            expiries,
        );
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

    #[test]
    fn shared_tickets_open_on_another_instance_with_the_same_secrets() {
        use rustls::server::ProducesTickets;
        let (a, b) = (vec![7u8; 32], vec![9u8; 32]);
        let one = SharedTicketer::new(vec![a.clone()], 3600);
        let other = SharedTicketer::new(vec![b.clone(), a.clone()], 3600);
        let ticket = one.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), TICKET_OVERHEAD + 13);
        // The second instance, rotated to a new first secret, still opens it.
        assert_eq!(other.decrypt(&ticket).unwrap(), b"session state");
        // One that never had the secret does not; nor does a forged ticket.
        assert_eq!(SharedTicketer::new(vec![b], 3600).decrypt(&ticket), None);
        let mut forged = ticket.clone();
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        assert_eq!(one.decrypt(&forged), None);
        for length in [0, 1, 8, 20, TICKET_OVERHEAD - 1] {
            assert_eq!(one.decrypt(&ticket[..length]), None);
        }
        assert_eq!(one.decrypt(&vec![0u8; TICKET_MAX + 1]), None);
    }

    #[test]
    fn ticket_key_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickets");
        std::fs::write(&path, "# rotated 2026-11-30\n00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
        assert_eq!(
            SharedTicketer::from_file(&path, 3600)
                .unwrap()
                .secrets
                .len(),
            1
        );
        std::fs::write(&path, "0011\n").unwrap();
        let error = SharedTicketer::from_file(&path, 3600)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 1") && error.contains("32 bytes"),
            "{error}"
        );
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(SharedTicketer::from_file(&path, 3600).is_err());
    }

    /// Mutual TLS with `server.crt`, `server.key` and `ca.crt` in `dir`.
    fn mutual_tls_in(dir: &std::path::Path) -> Tls {
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

    #[test]
    fn changed_files_are_reported_only_when_asked_and_expiries_follow_each_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::new().unwrap();
        let server = |until| {
            ca.server_until(&["localhost"], until)
                .unwrap()
                .write(dir.path(), "server")
                .unwrap();
        };
        server((2031, 5, 1));
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        let spec = mutual_tls_in(dir.path());
        let terminator = Arc::new(Terminator::new(&spec).unwrap());
        let reloader = Reloader::new(vec![("0.0.0.0:0".parse().unwrap(), terminator)]);
        reloader.bound(vec!["0.0.0.0:8883".parse().unwrap()]);
        let page = || {
            let mut page = Exposition::new();
            reloader.render(&mut page);
            page.finish()
        };
        let sample = |text: &str, series: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_owned()
        };
        let (expiry_server, expiry_ca, failing, ok, failed) = (
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds\
             {listener=\"0.0.0.0:8883\",certificate=\"server\"}",
            "carbridge_gateway_tls_certificate_expiry_timestamp_seconds\
             {listener=\"0.0.0.0:8883\",certificate=\"ca\"}",
            "carbridge_gateway_tls_reload_failing",
            "carbridge_gateway_tls_reloads_total{result=\"ok\"}",
            "carbridge_gateway_tls_reloads_total{result=\"failed\"}",
        );
        let text = page();
        // 2031-05-01 and rcgen's default notAfter, 4096-01-01 (UTC).
        assert_eq!(sample(&text, expiry_server), "1935360000");
        assert_eq!(sample(&text, expiry_ca), "67090118400");

        // A key that does not load, seen changing: quiet until reported.
        std::fs::write(dir.path().join("server.key"), "not yet").unwrap();
        let quiet = reloader.reload_as(Attempt::Changed { report: false });
        assert!(quiet.unwrap_err().contains("server.key"));
        let text = page();
        assert_eq!(sample(&text, failing), "0");
        assert_eq!(sample(&text, failed), "0");
        assert!(
            reloader
                .reload_as(Attempt::Changed { report: true })
                .is_err()
        );
        let text = page();
        assert_eq!(sample(&text, failing), "1");
        assert_eq!(sample(&text, failed), "1");
        assert_eq!(sample(&text, expiry_server), "1935360000");

        // A renewed set: loaded, the failure cleared, the new expiry shown.
        server((2032, 1, 1));
        reloader
            .reload_as(Attempt::Changed { report: false })
            .unwrap();
        let text = page();
        assert_eq!(sample(&text, failing), "0");
        assert_eq!(sample(&text, ok), "1");
        assert_eq!(sample(&text, expiry_server), "1956528000");
        // Asked (SIGHUP): counted like any reload.
        reloader.reload().unwrap();
        assert_eq!(sample(&page(), ok), "2");
    }
}
