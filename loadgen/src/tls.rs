//! The cars' TLS: a test PKI directory holds the CA (`ca.crt`, `ca.key`)
//! and one certificate per car (`cars/<client id>.crt` and `.key`, subject
//! CN = the client id), made from the CA the first time a car needs one
//! and kept for later runs. `carbridge-testpki` makes the same directory
//! with the gateway's server certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::payload;

fn car_paths(dir: &Path, client_id: &str) -> (PathBuf, PathBuf) {
    let cars = dir.join("cars");
    (
        cars.join(format!("{client_id}.crt")),
        cars.join(format!("{client_id}.key")),
    )
}

/// Makes the certificates cars `first .. first + count` lack; returns how
/// many it made.
pub fn prepare(dir: &Path, first: u64, count: u64) -> anyhow::Result<u64> {
    let ca = pki::Ca::load_or_create(dir)?;
    std::fs::create_dir_all(dir.join("cars"))
        .with_context(|| format!("creating {}/cars", dir.display()))?;
    let mut made = 0;
    for car in first..first + count {
        let client_id = payload::client_id(car);
        let (cert, key) = car_paths(dir, &client_id);
        if cert.exists() && key.exists() {
            continue;
        }
        let issued = ca.car(&client_id)?;
        std::fs::write(&key, &issued.key_pem).with_context(|| format!("{}", key.display()))?;
        std::fs::write(&cert, &issued.cert_pem).with_context(|| format!("{}", cert.display()))?;
        made += 1;
    }
    Ok(made)
}

/// A car's client configuration: the directory's CA trusted, the car's
/// own certificate presented, resumption on (per car: a ticket is the
/// car's own session).
pub fn car_config(dir: &Path, client_id: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = dir.join("ca.crt");
    for cert in CertificateDer::pem_file_iter(&ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(cert.with_context(|| format!("{}", ca.display()))?)?;
    }
    let (cert, key) = car_paths(dir, client_id);
    let chain = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("{}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key).with_context(|| format!("{}", key.display()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_once_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare(dir.path(), 1, 3).unwrap(), 3);
        assert_eq!(prepare(dir.path(), 1, 4).unwrap(), 1);
        car_config(dir.path(), &payload::client_id(2)).unwrap();
        assert!(car_config(dir.path(), &payload::client_id(9)).is_err());
    }
}
