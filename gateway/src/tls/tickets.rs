//! TLS session tickets that every gateway instance opens: keys derived
//! from shared secrets (the `ticket_keys` file or variable), so that a car
//! resumes its session on whichever instance it reaches next.

use super::*;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
