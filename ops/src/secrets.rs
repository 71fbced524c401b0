//! Secrets read from a file or an environment variable at start, instead
//! of written in a configuration file or on a command line (which `ps`
//! shows to every user of the host): librdkafka properties whose values
//! are secrets (`sasl.password`, `ssl.key.password`, …) and the admin
//! token ([`crate::admin::Token`]); and the redaction of secret values
//! wherever properties are shown.
//!
//! The source is named by the setting, never guessed from the value: a
//! value such as `file:/run/secrets/x` could be a password. Flags
//! `--kafka-property-file KEY=PATH` and `--kafka-property-env
//! KEY=VARIABLE` (every carbridge command), and in the gateway's file the
//! tables `[kafka.properties_from_files]` and `[kafka.properties_from_env]`.
//! A value read is used as it is, but for its trailing line ends (`echo`
//! and editors add one; a Kubernetes Secret keeps it); an empty value is
//! refused. Errors name the property (or the secret) and the file or
//! variable, never the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a redacted value shows.
pub const REDACTED: &str = "(redacted)";

/// Where a property's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A file's contents (a mounted Secret, `/run/secrets/...`).
    File(&'a Path),
    /// An environment variable's value.
    Env(&'a str),
}

/// Why a secret (a property's value, the admin token) could not be had.
/// The value itself is never part of the message; `what` names the
/// secret ("Kafka property sasl.password", "the admin token").
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what}: cannot read {}: {error}", path.display())]
    File {
        what: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what}: the environment variable {variable} is not set")]
    EnvMissing { what: String, variable: String },
    #[error("{what}: the environment variable {variable} is not valid UTF-8")]
    EnvNotUnicode { what: String, variable: String },
    #[error("{what}: {origin} is empty")]
    Empty { what: String, origin: String },
    #[error("{flag} {argument}: expected {form}")]
    Form {
        flag: &'static str,
        argument: String,
        form: &'static str,
    },
    #[error("Kafka property {key} is given twice ({first} and {second}): give it one source")]
    Twice {
        key: String,
        first: &'static str,
        second: &'static str,
    },
}

/// The value of property `key` from `source`, trailing line ends removed.
pub fn read(key: &str, source: Source<'_>) -> Result<String, SecretError> {
    read_secret(&format!("Kafka property {key}"), source)
}

/// The secret `what` names, from `source`, trailing line ends removed;
/// errors begin with `what`.
pub fn read_secret(what: &str, source: Source<'_>) -> Result<String, SecretError> {
    let (value, origin) = match source {
        Source::File(path) => (
            std::fs::read_to_string(path).map_err(|error| SecretError::File {
                what: what.to_owned(),
                path: path.to_owned(),
                error,
            })?,
            format!("the file {}", path.display()),
        ),
        Source::Env(variable) => (
            std::env::var(variable).map_err(|error| match error {
                std::env::VarError::NotPresent => SecretError::EnvMissing {
                    what: what.to_owned(),
                    variable: variable.to_owned(),
                },
                std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode {
                    what: what.to_owned(),
                    variable: variable.to_owned(),
                },
            })?,
            format!("the environment variable {variable}"),
        ),
    };
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(SecretError::Empty {
            what: what.to_owned(),
            origin,
        });
    }
    Ok(value.to_owned())
}

/// Whether property `key` holds a secret by its name: passwords, secrets,
/// private keys in PEM, OAUTHBEARER configurations.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("key.pem")
        || key == "ssl_key"
        || key == "sasl.oauthbearer.config"
}

/// `properties` as they may be shown: the value of each secret-looking
/// property (or of each key `also` names) replaced by [`REDACTED`].
pub fn redacted<'a>(
    properties: impl IntoIterator<Item = (&'a String, &'a String)>,
    also: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    properties
        .into_iter()
        .map(|(key, value)| {
            let shown = if is_secret(key) || also(key) {
                REDACTED.to_owned()
            } else {
                value.clone()
            };
            (key.clone(), shown)
        })
        .collect()
}

/// Splits a flag's `KEY=VALUE` argument.
pub fn pair(
    flag: &'static str,
    argument: &str,
    form: &'static str,
) -> Result<(String, String), SecretError> {
    argument
        .split_once('=')
        .filter(|(key, value)| !key.is_empty() && !value.is_empty())
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| SecretError::Form {
            flag,
            argument: argument.to_owned(),
            form,
        })
}

/// The flags that take librdkafka properties from files and environment
/// variables, for every carbridge command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecretArgs {
    /// A librdkafka property read from a file at start, repeatable:
    /// --kafka-property-file sasl.password=/run/secrets/kafka/password
    /// (trailing line ends removed; the value is never logged).
    #[arg(long = "kafka-property-file", value_name = "KEY=PATH", global = true)]
    pub kafka_property_files: Vec<String>,
    /// A librdkafka property read from an environment variable at start,
    /// repeatable: --kafka-property-env sasl.password=KAFKA_PASSWORD.
    #[arg(
        long = "kafka-property-env",
        value_name = "KEY=VARIABLE",
        global = true
    )]
    pub kafka_property_envs: Vec<String>,
}

impl SecretArgs {
    /// The `--kafka-property-file` pairs, checked, not read.
    pub fn files(&self) -> Result<BTreeMap<String, PathBuf>, SecretError> {
        self.kafka_property_files
            .iter()
            .map(|argument| {
                pair("--kafka-property-file", argument, "KEY=PATH")
                    .map(|(key, path)| (key, PathBuf::from(path)))
            })
            .collect()
    }

    /// The `--kafka-property-env` pairs, checked, not read.
    pub fn envs(&self) -> Result<BTreeMap<String, String>, SecretError> {
        self.kafka_property_envs
            .iter()
            .map(|argument| pair("--kafka-property-env", argument, "KEY=VARIABLE"))
            .collect()
    }

    /// Every property these flags name, read now. A property named by both
    /// flags is refused.
    pub fn properties(&self) -> Result<BTreeMap<String, String>, SecretError> {
        let envs = self.envs()?;
        let mut properties = BTreeMap::new();
        for (key, path) in self.files()? {
            if envs.contains_key(&key) {
                return Err(SecretError::Twice {
                    key,
                    first: "--kafka-property-file",
                    second: "--kafka-property-env",
                });
            }
            let value = read(&key, Source::File(&path))?;
            properties.insert(key, value);
        }
        for (key, variable) in envs {
            let value = read(&key, Source::Env(&variable))?;
            properties.insert(key, value);
        }
        Ok(properties)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_from_files_without_their_line_end() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("ops-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("password");
        std::fs::write(&path, "s3cret with spaces \r\n\n")?;
        assert_eq!(
            read("sasl.password", Source::File(&path))?,
            "s3cret with spaces "
        );

        let missing = dir.join("missing");
        let error = read("sasl.password", Source::File(&missing))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains("sasl.password") && error.contains(&missing.display().to_string()),
            "{error}"
        );

        std::fs::write(&path, "\n")?;
        let error = read("sasl.password", Source::File(&path))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("is empty"), "{error}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn values_come_from_the_environment_and_errors_name_the_variable() {
        // Edition 2024 makes setting a variable in-process `unsafe` (which
        // the workspace forbids): the gateway's tests give one to a child.
        let unset = read(
            "sasl.password",
            Source::Env("CARBRIDGE_OPS_SECRETS_NEVER_SET"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(
            unset,
            "Kafka property sasl.password: the environment variable \
             CARBRIDGE_OPS_SECRETS_NEVER_SET is not set"
        );
        // PATH is set in any test run, and is no secret.
        assert!(read("x", Source::Env("PATH")).is_ok_and(|path| !path.is_empty()));
    }

    #[test]
    fn secret_looking_properties_are_redacted() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in ["bootstrap.servers", "sasl.username", "ssl.key.location"] {
            assert!(!is_secret(key), "{key}");
        }
        let properties = BTreeMap::from([
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("sasl.username".to_owned(), "gateway".to_owned()),
            ("sasl.oauthbearer.extensions".to_owned(), "t=abc".to_owned()),
        ]);
        let shown = redacted(&properties, |key| key == "sasl.oauthbearer.extensions");
        assert_eq!(shown["sasl.password"], REDACTED);
        assert_eq!(shown["sasl.username"], "gateway");
        assert_eq!(shown["sasl.oauthbearer.extensions"], REDACTED);
    }

    #[test]
    fn flags_are_checked_and_a_property_has_one_source() {
        let args = SecretArgs {
            kafka_property_files: vec!["sasl.password=/run/secrets/p".to_owned()],
            kafka_property_envs: vec!["ssl.key.password=KEY_PASSWORD".to_owned()],
        };
        assert_eq!(
            args.files().ok(),
            Some(BTreeMap::from([(
                "sasl.password".to_owned(),
                PathBuf::from("/run/secrets/p")
            )]))
        );
        for bad in ["no-equals", "=x", "key="] {
            let args = SecretArgs {
                kafka_property_envs: vec![bad.to_owned()],
                ..SecretArgs::default()
            };
            let error = args.envs().err().map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(
                error,
                format!("--kafka-property-env {bad}: expected KEY=VARIABLE")
            );
        }
        let twice = SecretArgs {
            kafka_property_files: vec!["sasl.password=/run/secrets/p".to_owned()],
            kafka_property_envs: vec!["sasl.password=P".to_owned()],
        };
        let error = twice
            .properties()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("given twice"), "{error}");
    }
}
