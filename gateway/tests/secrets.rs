//! Kafka properties and the TLS ticket keys from files and environment
//! variables: read at start (the value from a file reaches librdkafka,
//! without its line end), checked by `gateway check-config` with errors
//! naming the property and the file or variable, and never shown.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gateway::Gateway;
use gateway::config::Config;

const SECRET: &str = "correct horse battery staple";

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// `gateway check-config` on `toml` with `args` and environment `env`;
/// (passed, stdout, stderr).
fn check(dir: &Dir, toml: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let config = dir.write("gateway.toml", toml);
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("CARBRIDGE_CONFIG")
        .env_remove("KAFKA_PASSWORD")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_property_from_a_file_is_checked_and_never_printed() {
    let dir = Dir::new();
    let password = dir.write("password", &format!("{SECRET}\n"));
    let toml = format!(
        r#"
        [kafka.properties]
        "bootstrap.servers" = "kafka:9093"
        "ssl.key.password" = "inline {SECRET}"
        [kafka.properties_from_files]
        "sasl.password" = {password:?}
        "#
    );
    let (passed, stdout, stderr) = check(&dir, &toml, &[], &[]);
    assert!(passed, "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}{stderr}"
    );
    // What it prints names the file, and hides the inline secret.
    assert!(stdout.contains(&show(&password)), "{stdout}");
    assert!(
        stdout.contains("\"ssl.key.password\" = \"(redacted)\""),
        "{stdout}"
    );

    // A missing file: the property and the file are named.
    let missing = dir.path("missing");
    let toml = toml.replace(&show(&password), &show(&missing));
    let (passed, _, stderr) = check(&dir, &toml, &[], &[]);
    assert!(!passed);
    assert!(
        stderr.contains("Kafka property sasl.password: cannot read")
            && stderr.contains(&show(&missing)),
        "{stderr}"
    );
}

#[test]
fn a_property_from_the_environment_is_checked_and_never_printed() {
    let dir = Dir::new();
    let toml = r#"
        [kafka.properties_from_env]
        "sasl.password" = "KAFKA_PASSWORD"
        "#;
    let (passed, _, stderr) = check(&dir, toml, &[], &[]);
    assert!(!passed);
    assert!(
        stderr.contains(
            "Kafka property sasl.password: the environment variable KAFKA_PASSWORD is not set"
        ),
        "{stderr}"
    );
    let (passed, stdout, stderr) = check(&dir, toml, &[], &[("KAFKA_PASSWORD", SECRET)]);
    assert!(passed, "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("KAFKA_PASSWORD"), "{stdout}");

    // Empty is refused, naming the variable.
    let (passed, _, stderr) = check(&dir, toml, &[], &[("KAFKA_PASSWORD", "\n")]);
    assert!(!passed);
    assert!(
        stderr.contains("the environment variable KAFKA_PASSWORD is empty"),
        "{stderr}"
    );
}

#[test]
fn flags_take_properties_from_files_and_variables_over_the_file() {
    let dir = Dir::new();
    let password = dir.write("password", SECRET);
    // The file sets the property inline; the flags move it to a file,
    // then to a variable, the last source given winning.
    let toml = format!(
        r#"
        [kafka.properties]
        "bootstrap.servers" = "kafka:9093"
        "sasl.password" = "inline {SECRET}"
        "sasl.username" = "gateway"
        "#
    );
    let file_flag = format!("sasl.password={}", show(&password));
    let (passed, stdout, stderr) = check(&dir, &toml, &["--kafka-property-file", &file_flag], &[]);
    assert!(passed, "{stderr}");
    assert!(!stdout.contains(SECRET), "{stdout}");
    let printed = Config::from_toml(&stdout).unwrap();
    assert_eq!(
        printed.kafka.properties_from_files["sasl.password"],
        password
    );
    assert!(!printed.kafka.properties.contains_key("sasl.password"));

    let (passed, _, stderr) = check(
        &dir,
        &toml,
        &["--kafka-property-env", "sasl.password=KAFKA_PASSWORD"],
        &[],
    );
    assert!(!passed);
    assert!(stderr.contains("KAFKA_PASSWORD is not set"), "{stderr}");

    let (passed, _, stderr) = check(&dir, &toml, &["--kafka-property-file", "nokey"], &[]);
    assert!(!passed);
    assert!(
        stderr.contains("--kafka-property-file nokey: expected KEY=PATH"),
        "{stderr}"
    );
}

#[test]
fn ticket_keys_come_from_a_variable() {
    let dir = Dir::new();
    let ca = pki::Ca::new().unwrap();
    ca.server(&["localhost"])
        .unwrap()
        .write(dir.0.path(), "server")
        .unwrap();
    let toml = format!(
        r#"
        [[listeners]]
        address = "127.0.0.1:8883"
        [listeners.tls]
        cert = {cert:?}
        key = {key:?}
        client_auth = "none"
        ticket_keys_env = "CARBRIDGE_TICKET_KEYS"
        "#,
        cert = dir.path("server.crt"),
        key = dir.path("server.key"),
    );
    let secret = pki::random_hex(32).unwrap();
    let (passed, stdout, stderr) = check(&dir, &toml, &[], &[("CARBRIDGE_TICKET_KEYS", &secret)]);
    assert!(passed, "{stderr}");
    assert!(!stdout.contains(&secret), "{stdout}");

    let (passed, _, stderr) = check(&dir, &toml, &[], &[("CARBRIDGE_TICKET_KEYS", "0011")]);
    assert!(!passed);
    assert!(
        stderr.contains("the environment variable CARBRIDGE_TICKET_KEYS: line 1")
            && !stderr.contains("0011"),
        "{stderr}"
    );
    let (passed, _, stderr) = check(&dir, &toml, &[], &[]);
    assert!(!passed);
    assert!(stderr.contains("CARBRIDGE_TICKET_KEYS"), "{stderr}");

    // Not both sources.
    let both = toml.replace(
        "ticket_keys_env",
        &format!("ticket_keys = {:?}\n        ticket_keys_env", dir.path("t")),
    );
    let (passed, _, stderr) = check(&dir, &both, &[], &[("CARBRIDGE_TICKET_KEYS", &secret)]);
    assert!(!passed);
    assert!(stderr.contains("not both"), "{stderr}");
}

/// The value read from a file is what librdkafka gets, without its line
/// end: a property librdkafka compares whole (`security.protocol`) starts
/// the gateway when the file holds `plaintext` and a newline, and stops
/// the start with librdkafka's own complaint when it holds something else.
#[test]
fn a_start_hands_the_value_read_to_librdkafka() {
    let dir = Dir::new();
    let start = |value: &str| {
        let protocol = dir.write("protocol", value);
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 1,
            ..Config::default()
        };
        config.admin.listen = String::new();
        config.downlink.enabled = false;
        config
            .kafka
            .set_property("bootstrap.servers", "127.0.0.1:1");
        config
            .kafka
            .set_property_file("security.protocol", protocol);
        Gateway::start(config)
    };
    let gateway = start("plaintext\n").unwrap();
    gateway.stop().unwrap();
    let error = ops::error_chain(&start("plaintext-ish\n").unwrap_err());
    assert!(error.contains("security.protocol"), "{error}");
}
