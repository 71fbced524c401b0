//! The gateway's admin endpoint under siege and with a stuck shard: probes
//! answer within 100 ms while 1,000 clients hold connections to it that
//! never finish a request; `/livez` names a shard whose poller has
//! stopped turning, and says for how long; POST actions need the admin
//! token, or a loopback address when there is none.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{
    Broker, Crowd, Proc, Stalled, WAIT, await_status, free_port, http_get, http_post,
    http_post_bearer, wait_until,
};

/// The bound on a probe while the endpoint is under siege.
const PROBE_BOUND: Duration = Duration::from_millis(100);
/// How long the siege lasts: past the default head timeout (5 s) where the
/// test says so.
const SIEGE: Duration = Duration::from_secs(6);
/// Where the crowds come from; the probes come from 127.0.0.1.
const CROWD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TOKEN: &str = "t0ken-for-the-admin-endp0int";

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The gateway binary with its admin endpoint on `admin`, `config` as its
/// file, and `extra` flags; ready.
fn gateway(
    broker: &Broker,
    admin: SocketAddr,
    config: &str,
    extra: &[&str],
) -> (Proc, tempfile::NamedTempFile) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let mut flags = vec![
        "--admin-listen".to_owned(),
        admin.to_string(),
        "--config".to_owned(),
        file.path().display().to_string(),
    ];
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut gateway = common::spawn_binary(broker, &flags);
    gateway.wait_ready();
    (gateway, file)
}

/// Probes /healthz, /readyz and /metrics over and over for [`SIEGE`];
/// every answer must come within [`PROBE_BOUND`]. The slowest.
fn probe_through_the_siege(admin: SocketAddr) -> Duration {
    let (started, mut slowest, mut probes) = (Instant::now(), Duration::ZERO, 0);
    while started.elapsed() < SIEGE {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let asked = Instant::now();
            let status = http_get(admin, path).map(|(status, _)| status);
            let took = asked.elapsed();
            assert_eq!(status, Some(200), "{path} after {probes} probes");
            assert!(
                took < PROBE_BOUND,
                "{path} took {took:?} after {probes} probes"
            );
            slowest = slowest.max(took);
            probes += 1;
        }
        // Probes come a few times a second, not back to back.
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{probes} probes, the slowest {slowest:?}");
    slowest
}

fn closed(gateway: &Proc, reason: &str) -> f64 {
    gateway.metric(&format!(
        "carbridge_admin_connections_closed_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn probes_answer_at_once_while_a_thousand_clients_hold_connections() {
    let broker = Broker::start();
    let admin = admin_addr();
    // Room for all of them, and a head timeout longer than the siege:
    // every one stays connected, none is closed to make room, and none
    // holds up another.
    let config =
        "[admin]\nmax_connections = 2000\nhead_timeout_secs = 60\nexchange_timeout_secs = 60\n";
    let (gateway, _file) = gateway(&broker, admin, config, &[]);
    let crowd = Crowd::start(admin, CROWD, 500, 500, false);
    // The connects were queued in the kernel ahead of any probe: measured
    // from when the gateway has taken them all.
    wait_until("the crowd held by the gateway", WAIT, || {
        gateway.metric("carbridge_admin_connections_open") >= 1000.0
    });
    probe_through_the_siege(admin);
    assert_eq!(crowd.open(), 1000, "all connected throughout");
    assert_eq!(crowd.closed_by_server(), 0);
    assert!(gateway.metric("carbridge_admin_connections_open") >= 1000.0);
    assert_eq!(closed(&gateway, "evicted"), 0.0);
}

#[test]
fn probes_answer_at_once_while_a_thousand_clients_crowd_the_default_bound() {
    let broker = Broker::start();
    let admin = admin_addr();
    // The defaults: at most 256 connections, so the crowd's own make room,
    // and a head timeout of 5 s within the siege.
    let (gateway, _file) = gateway(&broker, admin, "", &[]);
    let crowd = Crowd::start(admin, CROWD, 500, 500, false);
    wait_until("the gateway to make room", WAIT, || {
        closed(&gateway, "evicted") >= 744.0
    });
    probe_through_the_siege(admin);
    assert!(gateway.metric("carbridge_admin_connections_open") <= 256.0);
    // The ones held were closed at the head timeout.
    wait_until("the rest closed at the head timeout", WAIT, || {
        closed(&gateway, "head_timeout") >= 250.0
    });
    assert!(
        crowd.closed_by_server() >= 994,
        "{}",
        crowd.closed_by_server()
    );
}

#[test]
fn livez_names_a_stalled_shard_and_for_how_long() {
    let broker = Broker::start();
    let admin = admin_addr();
    let (gateway, _file) = gateway(&broker, admin, "[admin]\nliveness_timeout_secs = 2\n", &[]);
    assert_eq!(http_get(admin, "/livez"), Some((200, "live\n".to_owned())));

    let stalled = Stalled::threads(gateway.id(), "shard-1-");
    let stopped = Instant::now();
    let said = await_status(admin, "/livez", 503);
    let noticed = stopped.elapsed();
    // The heart last beat up to one idle poll (250 ms) before the stall.
    assert!(
        noticed >= Duration::from_millis(1750),
        "failed after {noticed:?}"
    );
    assert!(said.starts_with("shard 1: not turned for "), "{said}");
    assert!(said.ends_with(" s (liveness timeout 2 s)\n"), "{said}");
    assert!(!said.contains("shard 0"), "{said}");
    let seconds: f64 = said
        .trim_start_matches("shard 1: not turned for ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2.0..=noticed.as_secs_f64() + 0.5).contains(&seconds),
        "{said}"
    );
    // The process runs and says so; readiness is another question.
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);

    stalled.resume();
    assert_eq!(await_status(admin, "/livez", 200), "live\n");
}

#[test]
fn actions_need_the_admin_token_from_a_file() {
    let broker = Broker::start();
    let admin = admin_addr();
    let token = tempfile::NamedTempFile::new().unwrap();
    // As a Kubernetes Secret or `echo` leaves it: with a line end.
    std::fs::write(token.path(), format!("{TOKEN}\n")).unwrap();
    let path = token.path().display().to_string();
    let (gateway, _file) = gateway(&broker, admin, "", &["--admin-token-file", &path]);

    let (status, said) = http_post(admin, "/drain").unwrap();
    assert_eq!(status, 401, "{said}");
    assert!(said.contains("Authorization: Bearer"), "{said}");
    let (status, said) = http_post_bearer(admin, "/drain", "not-the-token").unwrap();
    assert_eq!(status, 401, "{said}");
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200, "not drained");
    assert_eq!(
        gateway.metric("carbridge_admin_requests_refused_total{reason=\"unauthorized\"}"),
        2.0
    );

    assert_eq!(http_post_bearer(admin, "/reload", TOKEN).unwrap().0, 200);
    let (status, said) = http_post_bearer(admin, "/drain", TOKEN).unwrap();
    assert_eq!((status, said.as_str()), (200, "draining 0 connections\n"));
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 503);
}

#[test]
fn the_token_may_come_from_the_environment_and_check_config_reads_it() {
    let broker = Broker::start();
    let admin = admin_addr();
    let mqtt = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut gateway = Proc::spawn(
        "gateway",
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "--listen",
                &mqtt.to_string(),
                "--shards",
                "1",
                "--no-downlink",
            ])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--kafka-bootstrap", &broker.bootstrap_servers()])
            .args(testkit::GATEWAY_ON_TANSU)
            .env("CARBRIDGE_ADMIN_TOKEN", TOKEN),
    )
    .with_admin(admin);
    gateway.wait_ready();
    assert_eq!(http_post(admin, "/reload").unwrap().0, 401);
    assert_eq!(http_post_bearer(admin, "/reload", TOKEN).unwrap().0, 200);
    assert!(
        !gateway.log_text().contains(TOKEN),
        "the token is never logged"
    );

    // check-config reads the token as a start would: a missing file, or a
    // file and the variable at once, stop it.
    let check = |file: &str, env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .args(["check-config", "--kafka-bootstrap", "kafka:9092"])
            .args(["--admin-token-file", file])
            .env_remove("CARBRIDGE_ADMIN_TOKEN");
        if let Some(token) = env {
            command.env("CARBRIDGE_ADMIN_TOKEN", token);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, said) = check("/nonexistent/admin-token", None);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("the admin token: cannot read /nonexistent/admin-token"),
        "{said}"
    );
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), TOKEN).unwrap();
    let path = token.path().display().to_string();
    assert_eq!(check(&path, None).0, Some(0));
    let (code, said) = check(&path, Some(TOKEN));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("given twice"), "{said}");
}

#[test]
fn without_a_token_actions_answer_403_beyond_loopback() {
    let broker = Broker::start();
    // The wildcard address on a port of the kernel's choice (a free port
    // found on loopback may be taken on another address meanwhile).
    let listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut gateway = common::spawn_binary(
        &broker,
        &[
            "--admin-listen",
            &listen.to_string(),
            "--log-format",
            "json",
        ],
    );
    let mut port = None;
    gateway.wait_for("to say where its admin endpoint is", |gateway| {
        port = gateway.log_text().lines().find_map(|line| {
            let (_, rest) = line.split_once("the admin endpoint listens on 0.0.0.0:")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u16>()
                .ok()
        });
        port.is_some()
    });
    let admin = SocketAddr::from(([127, 0, 0, 1], port.unwrap()));
    let mut gateway = gateway.with_admin(admin);
    gateway.wait_ready();

    let (status, said) = http_post(admin, "/drain").unwrap();
    assert_eq!(status, 403, "{said}");
    assert!(said.contains("no admin token is configured"), "{said}");
    assert!(said.contains("listens on 0.0.0.0:"), "{said}");
    assert_eq!(http_post(admin, "/reload").unwrap().0, 403);
    // GETs stay open; nothing was drained.
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);
    assert_eq!(
        gateway.metric("carbridge_admin_requests_refused_total{reason=\"forbidden\"}"),
        2.0
    );
}
