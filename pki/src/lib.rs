//! A throw-away PKI for the tests, the load generator and the local stack:
//! one CA, server certificates, car certificates (subject CN = the car's
//! client id), expired ones, and CRLs that revoke by serial number.
//!
//! Keys are ECDSA P-256 and are written unencrypted: this is for test
//! fleets only. A real fleet's certificates come from the operator's PKI
//! (docs/security.md).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

/// The CA's subject common name.
const CA_NAME: &str = "carbridge test CA";

/// A test certificate authority.
#[derive(Debug)]
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
    next_serial: AtomicU64,
}

/// A certificate with its private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub serial: u64,
}

impl Issued {
    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        write(&dir.join(format!("{name}.crt")), &self.cert_pem)?;
        write(&dir.join(format!("{name}.key")), &self.key_pem)
    }
}

/// A SAN of a car certificate.
#[derive(Debug, Clone)]
pub enum San {
    Dns(String),
    Uri(String),
    Email(String),
}

/// What a car certificate holds beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct CarOptions {
    /// Subject CN; `None`: no CN at all.
    pub common_name: Option<String>,
    pub sans: Vec<San>,
    /// Valid only in 2000 (expired long ago).
    pub expired: bool,
}

impl CarOptions {
    /// A certificate whose CN is `car`.
    pub fn named(car: &str) -> Self {
        Self {
            common_name: Some(car.to_owned()),
            ..Self::default()
        }
    }
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

fn server_params(names: &[&str]) -> anyhow::Result<CertificateParams> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "carbridge gateway");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

impl Ca {
    /// A new CA with a fresh key.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_key(KeyPair::generate()?)
    }

    fn with_key(key: KeyPair) -> anyhow::Result<Self> {
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(ca_params()?, key)?;
        Ok(Self {
            issuer,
            key_pem,
            // Serials unique across runs that share a cached CA.
            next_serial: AtomicU64::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |t| t.as_micros() as u64),
            ),
        })
    }

    /// The CA in `dir` (`ca.crt`, `ca.key`), made there first if missing.
    ///
    /// A reloaded CA signs with the same key and name, so certificates
    /// issued before still verify against the `ca.crt` on disk.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if cert_path.exists()
            && let Ok(key) = std::fs::read_to_string(&key_path)
        {
            // Same key, same name: equivalent to the `ca.crt` on disk.
            let key = KeyPair::from_pem(&key).with_context(|| format!("{}", key_path.display()))?;
            return Self::with_key(key);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Self::new()?;
        write(&cert_path, &ca.cert_pem())?;
        write(&key_path, &ca.key_pem)?;
        Ok(ca)
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    fn issue(&self, mut params: CertificateParams) -> anyhow::Result<Issued> {
        let serial = self.serial();
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            serial,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> anyhow::Result<Issued> {
        self.issue(server_params(names)?)
    }

    /// A server certificate like [`Ca::server`]'s that expires at the
    /// start of `year`-`month`-`day` (UTC): a renewal with a known notAfter.
    pub fn server_until(
        &self,
        names: &[&str],
        (year, month, day): (i32, u8, u8),
    ) -> anyhow::Result<Issued> {
        let mut params = server_params(names)?;
        params.not_after = date_time_ymd(year, month, day);
        self.issue(params)
    }

    /// A car's client certificate with subject CN = `car`.
    pub fn car(&self, car: &str) -> anyhow::Result<Issued> {
        self.car_with(&CarOptions::named(car))
    }

    pub fn car_with(&self, options: &CarOptions) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &options.common_name {
            params
                .distinguished_name
                .push(DnType::CommonName, cn.as_str());
        }
        for san in &options.sans {
            params.subject_alt_names.push(match san {
                San::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
                San::Uri(uri) => SanType::URI(uri.as_str().try_into()?),
                San::Email(email) => SanType::Rfc822Name(email.as_str().try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if options.expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        self.issue(params)
    }

    /// A CRL (PEM) revoking `serials`, issued in 2020, next update in 4000.
    pub fn crl(&self, serials: &[u64]) -> anyhow::Result<String> {
        let this_update = date_time_ymd(2020, 1, 1);
        let params = CertificateRevocationListParams {
            this_update,
            next_update: date_time_ymd(4000, 1, 1),
            crl_number: SerialNumber::from(self.serial()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: this_update,
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut random = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut source| source.read_exact(&mut random))
        .context("reading /dev/urandom")?;
    Ok(random.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_reloaded_ca_keeps_its_key() {
        let dir = std::env::temp_dir().join(format!("pki-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Ca::load_or_create(&dir).unwrap();
        let again = Ca::load_or_create(&dir).unwrap();
        assert_eq!(first.key_pem, again.key_pem);
        assert!(
            again
                .car("VIN1")
                .unwrap()
                .cert_pem
                .contains("BEGIN CERTIFICATE")
        );
        assert!(first.crl(&[7]).unwrap().contains("BEGIN X509 CRL"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
