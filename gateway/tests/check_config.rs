//! `gateway check-config` checks what a start would: every TLS file loads
//! (certificate chain, key and whether it matches, CA bundle, CRLs, ticket
//! keys) and every mapping pattern compiles, each failure naming the file
//! or the place in the pattern; the binary exits non-zero. A start refuses
//! the same configuration in the same words.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gateway::Gateway;
use gateway::config::Config;

/// A test PKI on disk and a configuration with one mutual-TLS listener
/// that uses all of it.
struct Files {
    dir: tempfile::TempDir,
    ca: pki::Ca,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::new().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        ca.server(&["localhost"])
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        std::fs::write(dir.path().join("cars.crl"), ca.crl(&[7]).unwrap()).unwrap();
        let secret = pki::random_hex(32).unwrap();
        std::fs::write(dir.path().join("tickets"), format!("{secret}\n")).unwrap();
        Self { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration file's text: a mutual-TLS listener on
    /// 127.0.0.1:`port` over `cert`, `key`, `crl` and `tickets` (names in
    /// the directory), and `mapping` as the second mapping rule.
    fn toml(&self, port: u16, cert: &str, key: &str, crl: &str, mapping: &str) -> String {
        format!(
            r#"
            [[listeners]]
            address = "127.0.0.1:{port}"
            [listeners.tls]
            cert = {cert:?}
            key = {key:?}
            client_ca = {ca:?}
            crls = [{crl:?}]
            ticket_keys = {tickets:?}

            [[mapping]]
            mqtt = "^UL/(?P<kind>POS|SPEED)$"
            kafka = "cs.${{kind}}"
            [[mapping]]
            mqtt = {mapping:?}
            kafka = "cs.other"
            "#,
            cert = self.path(cert),
            key = self.path(key),
            ca = self.path("ca.crt"),
            crl = self.path(crl),
            tickets = self.path("tickets"),
        )
    }

    /// A second server certificate and key, `other.crt` and `other.key`:
    /// a key that does not match `server.crt`.
    fn another_server_key(&self) {
        self.ca
            .server(&["localhost"])
            .unwrap()
            .write(self.dir.path(), "other")
            .unwrap();
    }

    fn good(&self) -> String {
        self.toml(8883, "server.crt", "server.key", "cars.crl", "^UL/.+")
    }

    /// `gateway check-config` on `toml`.
    fn check(&self, toml: &str) -> Checked {
        let path = self.path("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        check_config(&path)
    }
}

struct Checked {
    output: Output,
    stderr: String,
}

impl Checked {
    /// Asserts that the check failed and that its message holds each of
    /// `words`.
    fn refused_saying(&self, words: &[&str]) {
        assert!(
            !self.output.status.success(),
            "passed: {}\n{}",
            String::from_utf8_lossy(&self.output.stdout),
            self.stderr
        );
        for word in words {
            assert!(
                self.stderr.contains(word),
                "no {word:?} in:\n{}",
                self.stderr
            );
        }
    }
}

fn check_config(path: &Path) -> Checked {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["check-config", "--config"])
        .arg(path)
        .env_remove("CARBRIDGE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Checked { output, stderr }
}

fn show(path: PathBuf) -> String {
    path.display().to_string()
}

#[test]
fn a_good_configuration_passes_and_is_printed() {
    let files = Files::new();
    let checked = files.check(&files.good());
    assert!(checked.output.status.success(), "{}", checked.stderr);
    assert!(
        checked
            .stderr
            .contains("configuration OK (1 TLS listener(s) loaded)"),
        "{}",
        checked.stderr
    );
    // What it prints is the configuration a start would run.
    let printed = Config::from_toml(&String::from_utf8_lossy(&checked.output.stdout)).unwrap();
    assert_eq!(printed, Config::from_toml(&files.good()).unwrap());
}

#[test]
fn a_missing_certificate_file_is_named() {
    let files = Files::new();
    let toml = files.toml(8883, "nowhere.crt", "server.key", "cars.crl", "^UL/.+");
    files.check(&toml).refused_saying(&[
        "would not start",
        "listener on 127.0.0.1:8883",
        &show(files.path("nowhere.crt")),
        "No such file",
    ]);
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_named_with_it() {
    let files = Files::new();
    files.another_server_key();
    let toml = files.toml(8883, "server.crt", "other.key", "cars.crl", "^UL/.+");
    files.check(&toml).refused_saying(&[
        &show(files.path("other.key")),
        "does not match the certificate in",
        &show(files.path("server.crt")),
    ]);
}

#[test]
fn a_corrupt_crl_is_named() {
    let files = Files::new();
    let good = files.ca.crl(&[7]).unwrap();
    // The PEM armour intact, the DER inside cut short: it decodes, and
    // does not parse as a CRL.
    let body: String = good
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let cut = &body[..body.len() / 2 / 4 * 4];
    std::fs::write(
        files.path("cut.crl"),
        format!("-----BEGIN X509 CRL-----\n{cut}\n-----END X509 CRL-----\n"),
    )
    .unwrap();
    let toml = files.toml(8883, "server.crt", "server.key", "cut.crl", "^UL/.+");
    files
        .check(&toml)
        .refused_saying(&[&show(files.path("cut.crl")), "CRL"]);

    // Not a CRL at all (a certificate in its place).
    let toml = files.toml(8883, "server.crt", "server.key", "ca.crt", "^UL/.+");
    files
        .check(&toml)
        .refused_saying(&[&show(files.path("ca.crt")), "no X509 CRL in the file"]);
}

#[test]
fn a_bad_ticket_key_file_is_named() {
    let files = Files::new();
    std::fs::write(files.path("tickets"), "0011\n").unwrap();
    files.check(&files.good()).refused_saying(&[
        &show(files.path("tickets")),
        "line 1",
        "at least 32 bytes",
    ]);
}

#[test]
fn a_bad_mapping_pattern_says_where() {
    let files = Files::new();
    let toml = files.toml(
        8883,
        "server.crt",
        "server.key",
        "cars.crl",
        "^UL/(POS|SPEED$",
    );
    files.check(&toml).refused_saying(&[
        "rule 1",
        "\"^UL/(POS|SPEED$\"",
        "unclosed group",
        "at byte 4",
        "at \"(POS|SPEED$\"",
    ]);
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let files = Files::new();
    let first = files.toml(8883, "nowhere.crt", "server.key", "cars.crl", "^UL/(");
    let second = files
        .toml(8884, "server.crt", "server.crt", "cars.crl", "^UL/.+")
        .split("[[mapping]]")
        .next()
        .unwrap()
        .to_owned();
    files.check(&format!("{second}\n{first}")).refused_saying(&[
        "rule 1",
        "listener on 127.0.0.1:8884",
        &format!(
            "{}: no PRIVATE KEY in the file",
            show(files.path("server.crt"))
        ),
        "listener on 127.0.0.1:8883",
        &show(files.path("nowhere.crt")),
    ]);
}

/// The check and a start load the files with the same code: a start
/// refuses what the check refuses, and says the same.
#[test]
fn a_start_refuses_what_the_check_refuses_in_the_same_words() {
    let files = Files::new();
    files.another_server_key();
    let toml = files.toml(0, "server.crt", "other.key", "cars.crl", "^UL/.+");
    let checked = files.check(&toml);
    checked.refused_saying(&["does not match"]);

    let mut config = Config::from_toml(&toml).unwrap();
    config.admin.listen = String::new();
    config.downlink.enabled = false;
    let error = ops::error_chain(&Gateway::start(config).unwrap_err());
    assert!(error.contains("does not match"), "{error}");
    assert!(
        checked.stderr.contains(&error),
        "the start said:\n{error}\nthe check said:\n{}",
        checked.stderr
    );
}
