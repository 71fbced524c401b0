//! The admin token: what a `POST` to the admin endpoint (`/drain`,
//! `/reload`) must carry as `Authorization: Bearer <token>`.
//!
//! Read once at start from a file (a mounted Kubernetes Secret, a
//! systemd credential) or an environment variable (a Secret's
//! `secretKeyRef`), never from the command line or the configuration
//! file; trailing line ends are removed, as for every secret
//! ([`crate::secrets`]). Compared in time that does not depend on where
//! the first difference is, and never logged.

use std::path::{Path, PathBuf};

use crate::secrets::{self, SecretError, Source};

/// What errors call it.
const WHAT: &str = "the admin token";

/// Shorter than this is accepted with a warning: a token is guessed
/// against an endpoint that answers in microseconds.
const SHORT: usize = 16;

/// The admin token. Its `Debug` shows no part of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(")?;
        f.write_str(secrets::REDACTED)?;
        f.write_str(")")
    }
}

/// Why the admin token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "the admin token is given twice (the file {} and the environment variable {variable}): \
         give it one source",
        file.display()
    )]
    Twice { file: PathBuf, variable: String },
    #[error(
        "the admin token from {origin} has a space or a control character: an HTTP \
         header carries it, so use letters, digits and punctuation only \
         (for example `openssl rand -hex 32`)"
    )]
    Unusable { origin: String },
}

impl Token {
    /// The token from `file` (when given) or from the environment
    /// variable `variable` (when set); `None` when neither gives one.
    /// Both giving one is an error, as is an empty or unusable value.
    pub fn load(file: Option<&Path>, variable: &str) -> Result<Option<Self>, TokenError> {
        let from_env = std::env::var_os(variable).is_some();
        let (value, origin) = match file {
            Some(file) if from_env => {
                return Err(TokenError::Twice {
                    file: file.to_owned(),
                    variable: variable.to_owned(),
                });
            }
            Some(file) => (
                secrets::read_secret(WHAT, Source::File(file))?,
                format!("the file {}", file.display()),
            ),
            None if from_env => (
                secrets::read_secret(WHAT, Source::Env(variable))?,
                format!("the environment variable {variable}"),
            ),
            None => return Ok(None),
        };
        if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(TokenError::Unusable { origin });
        }
        if value.len() < SHORT {
            tracing::warn!(
                "the admin token from {origin} has fewer than {SHORT} characters: \
                 a longer one is harder to guess"
            );
        }
        Ok(Some(Self(value)))
    }

    /// A token of `value` as it is (tests, and callers that read it
    /// themselves).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Whether an `Authorization` header's value carries this token as a
    /// bearer token (RFC 6750: the scheme in any case, then the token).
    pub(crate) fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(scheme) = value.get(..7) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        let offered = value.get(7..).unwrap_or_default().trim_ascii();
        same(offered, self.0.as_bytes())
    }
}

/// `a == b`, in a time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_token_itself_is_admitted() {
        let token = Token::new("c4rbr1dge-admin-t0ken");
        assert!(token.admits(Some(b"Bearer c4rbr1dge-admin-t0ken")));
        assert!(token.admits(Some(b"bearer  c4rbr1dge-admin-t0ken ")));
        for refused in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer c4rbr1dge-admin-t0ke",
            b"Bearer c4rbr1dge-admin-t0ken2",
            b"Basic c4rbr1dge-admin-t0ken",
            b"c4rbr1dge-admin-t0ken",
            b"Bearer C4RBR1DGE-ADMIN-T0KEN",
        ] {
            assert!(
                !token.admits(Some(refused)),
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        assert!(!token.admits(None));
    }

    #[test]
    fn the_token_comes_from_a_file_and_its_debug_hides_it() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempdir()?;
        let path = dir.join("token");
        std::fs::write(&path, "s3cret-admin-token-0123\n")?;
        let unset = "CARBRIDGE_OPS_ADMIN_TOKEN_NEVER_SET";
        let token = Token::load(Some(&path), unset)?;
        assert_eq!(token, Some(Token::new("s3cret-admin-token-0123")));
        assert_eq!(format!("{token:?}"), "Some(Token((redacted)))");
        assert_eq!(Token::load(None, unset)?, None);

        std::fs::write(&path, "two words\n")?;
        let error = Token::load(Some(&path), unset)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("has a space or a control character"),
            "{error}"
        );
        assert!(!error.contains("two words"), "{error}");

        let missing = dir.join("missing");
        let error = Token::load(Some(&missing), unset)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("the admin token: cannot read") && error.contains("missing"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_file_and_a_set_variable_are_one_source_too_many() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempdir()?;
        let path = dir.join("token");
        std::fs::write(&path, "s3cret-admin-token-0123")?;
        // PATH is set in any test run (edition 2024 makes setting one
        // in-process `unsafe`, which the workspace forbids).
        let error = Token::load(Some(&path), "PATH")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("given twice"), "{error}");
        assert!(error.contains("PATH"), "{error}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    fn tempdir() -> std::io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "ops-admin-token-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
