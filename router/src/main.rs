//! `router`: the downlink join. See `router --help`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use router::Config;
use router::metrics::Metrics;

/// Routes downlink requests to the gateway shard that holds the car.
///
/// Joins the consumer group over cs.downlink (requests: key = client id,
/// header mqtt.topic) and mqtt.sessions (the session registry the gateways
/// write). For each assigned partition it rebuilds its table of sessions
/// before it routes; each request whose car is connected and subscribed to
/// a matching filter is produced to that car's gateway shard (the
/// mqtt.downlink partition named in the session). Others are dropped and
/// counted. Start as many instances as you like: the group spreads the
/// partitions over them.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    kafka: ops::kafka::KafkaArgs,
    /// Consumer group shared by all router instances.
    #[arg(
        long,
        env = "CARBRIDGE_ROUTER_GROUP",
        default_value = "carbridge-router"
    )]
    group: String,
    /// Topic of downlink requests.
    #[arg(long, default_value = contract::topics::DOWNLINK)]
    downlink_topic: String,
    /// Session-registry topic (co-partitioned with the requests).
    #[arg(long, default_value = contract::topics::SESSIONS)]
    sessions_topic: String,
    /// Routed downlink topic (one partition per gateway shard).
    #[arg(long, default_value = contract::topics::ROUTED)]
    routed_topic: String,
    /// Topic of receipts: one per request that asked for one (header
    /// carbridge.receipt) and that the router decided (offline, no_filter,
    /// invalid, no_slot, expired); the gateways answer the rest.
    #[arg(long, default_value = contract::topics::RECEIPTS)]
    receipts_topic: String,
    /// Header carrying the MQTT topic name.
    #[arg(long, default_value = contract::HEADER_TOPIC)]
    topic_header: String,
    /// Maximum age of requests on topics matching FILTER, in seconds
    /// (repeatable, first match wins): an older request is dropped as
    /// expired, also when it carries no expiry header of its own. For
    /// example --max-age 'DL/UNLOCK=30' --max-age 'DL/#=3600'.
    #[arg(long = "max-age", value_name = "FILTER=SECONDS")]
    max_age: Vec<String>,
    /// Hold requests on topics matching FILTER for a car that cannot take
    /// them now (offline, or not subscribed yet) until it can or they
    /// expire: yes or no; repeatable, first matching filter wins. A
    /// request's header carbridge.hold (1 or 0) overrides it. Only
    /// requests with an expiry are held (their carbridge.expires, or a
    /// --max-age rule): give every held filter a --max-age.
    #[arg(long = "hold", value_name = "FILTER=yes|no")]
    hold: Vec<String>,
    /// Held requests per car at most; beyond, a request asking to be held
    /// is answered hold_full.
    #[arg(long, default_value_t = 64)]
    hold_per_car: usize,
    /// Bytes held per car at most (payload, topic, correlation id and
    /// about 100 bytes of bookkeeping per request).
    #[arg(long, default_value_t = 32 * 1024)]
    hold_per_car_bytes: usize,
    /// Bytes held by this router at most, all cars together (the same
    /// count). A takeover adopts what its predecessor held even beyond.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    hold_bytes: usize,
    /// Seconds a request is held at most: a later expiry is brought
    /// forward to this.
    #[arg(long, default_value_t = 86_400)]
    hold_max_secs: u64,
    /// Compacted topic where held requests are kept for a successor.
    #[arg(long, default_value = contract::topics::HELD)]
    held_topic: String,
    /// Milliseconds before the group gives a silent instance's partitions
    /// to the others.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u32,
    /// Milliseconds a cs.downlink partition owned by no other live instance
    /// may have requests waiting, with no instance committing, before it
    /// counts as orphaned (gauge carbridge_router_orphaned_partitions) and
    /// this instance rejoins the group to have it reassigned. Longer than
    /// the session timeout plus the time a table takes to rebuild. 0 turns
    /// the watch off.
    #[arg(long, default_value_t = 60_000)]
    orphan_after_ms: u32,
    /// Only report orphaned partitions; never rejoin the group for them.
    #[arg(long)]
    no_orphan_rejoin: bool,
    #[command(flatten)]
    admin: AdminArgs,
    /// Log format: human or json.
    #[arg(long, env = "CARBRIDGE_LOG_FORMAT", default_value = "human")]
    log_format: String,
    /// tracing filter; RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_filter: String,
}

/// The admin endpoint's flags.
#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// Admin HTTP address (/metrics, /healthz, /livez, /readyz); ""
    /// disables it.
    #[arg(long, env = "CARBRIDGE_ADMIN_LISTEN", default_value = "127.0.0.1:9101")]
    admin_listen: String,
    /// Seconds the routing loop may go without a turn before /livez
    /// answers 503. It turns every 50 ms at least while Kafka answers; a
    /// rebalance makes requests to Kafka of up to 10 s each from inside
    /// the loop, several in a row, hence a minute.
    #[arg(
        long,
        env = "CARBRIDGE_LIVENESS_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    liveness_timeout_secs: u64,
    /// Admin connections open at once; beyond, the oldest that has not
    /// sent its request is closed to make room.
    #[arg(
        long,
        default_value_t = ops::admin::Limits::DEFAULT_MAX_CONNECTIONS as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    admin_max_connections: u64,
    /// Seconds from an admin connection's accept to the end of its request
    /// head.
    #[arg(
        long,
        default_value_t = ops::admin::Limits::DEFAULT_HEAD_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    admin_head_timeout_secs: u64,
    /// Seconds from an admin connection's accept to the end of its answer
    /// (at least the head's).
    #[arg(
        long,
        default_value_t = ops::admin::Limits::DEFAULT_EXCHANGE_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    admin_exchange_timeout_secs: u64,
    /// A file holding the admin token that GET /held/<client id> (the
    /// requests held for a car, which carbridge-inspect asks for) needs;
    /// CARBRIDGE_ADMIN_TOKEN instead. Without one, it answers on a
    /// loopback admin address only.
    #[arg(long)]
    admin_token_file: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        matches!(cli.log_format.as_str(), "human" | "json"),
        "--log-format {}: use human or json",
        cli.log_format
    );
    ops::init_logging(&cli.log_filter, cli.log_format == "json");
    let mut config = Config::new(&cli.kafka.kafka_bootstrap);
    config.kafka_properties = cli.kafka.properties()?;
    config.group = cli.group;
    config.downlink_topic = cli.downlink_topic;
    config.sessions_topic = cli.sessions_topic;
    config.routed_topic = cli.routed_topic;
    config.topic_header = cli.topic_header;
    config.receipts_topic = cli.receipts_topic;
    config.max_age = cli
        .max_age
        .iter()
        .map(|rule| parse_max_age(rule))
        .collect::<anyhow::Result<_>>()?;
    config.hold = cli
        .hold
        .iter()
        .map(|rule| parse_hold(rule))
        .collect::<anyhow::Result<_>>()?;
    config.hold_bounds = router::held::Bounds {
        per_car: cli.hold_per_car,
        per_car_bytes: cli.hold_per_car_bytes,
        total_bytes: cli.hold_bytes,
    };
    config.hold_max = std::time::Duration::from_secs(cli.hold_max_secs);
    config.held_topic = cli.held_topic;
    for (filter, hold) in &config.hold {
        if *hold && !config.max_age.iter().any(|(age, _)| age == filter) {
            tracing::warn!(
                filter,
                "--hold without a --max-age for the same filter: requests without their own \
                 carbridge.expires are not held (answered offline)"
            );
        }
    }
    config.session_timeout_ms = cli.session_timeout_ms;
    config.orphan_after_ms = cli.orphan_after_ms;
    config.orphan_rejoin = !cli.no_orphan_rejoin;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let metrics = Arc::new(Metrics::default());
    metrics.held_bytes_limit.store(
        i64::try_from(config.hold_bounds.total_bytes).unwrap_or(i64::MAX),
        Ordering::Relaxed,
    );
    let ready = Arc::new(AtomicBool::new(false));
    let (held_questions, held_lookups) = std::sync::mpsc::channel();
    if !cli.admin.admin_listen.is_empty() {
        let listen = &cli.admin.admin_listen;
        let addr = admin_endpoint(&cli.admin, &metrics, &ready)?
            .lookup(
                "/held/",
                Box::new(move |client: &str, respond| {
                    // The routing loop answers on its next turn.
                    let _ = held_questions.send((client.to_owned(), respond));
                }),
            )
            .spawn(listen, stop.clone())
            .with_context(|| format!("admin endpoint on {listen}"))?;
        tracing::info!(%addr, "admin endpoint listening");
    }
    notify_systemd(metrics.clone(), ready.clone(), stop.clone());
    let result = router::run::run(config, metrics.clone(), ready, stop.clone(), held_lookups);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.store(true, Ordering::Relaxed);
    tracing::info!(
        received = metrics.received.load(Ordering::Relaxed),
        routed = metrics.sent.load(Ordering::Relaxed),
        acked = metrics.acked.load(Ordering::Relaxed),
        failed = metrics.failed.load(Ordering::Relaxed),
        dropped_offline = metrics.dropped.get(router::metrics::Dropped::Offline),
        dropped_no_filter = metrics.dropped.get(router::metrics::Dropped::NoFilter),
        dropped_invalid = metrics.dropped.get(router::metrics::Dropped::Invalid),
        dropped_no_slot = metrics.dropped.get(router::metrics::Dropped::NoSlot),
        takeover_notices = metrics.takeover_notices.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(result?)
}

/// The admin endpoint: `/metrics`, `/livez` on the routing loop's
/// heartbeat, `/readyz` on `ready`. No actions.
fn admin_endpoint(
    cli: &AdminArgs,
    metrics: &Arc<Metrics>,
    ready: &Arc<AtomicBool>,
) -> anyhow::Result<ops::admin::Endpoint> {
    anyhow::ensure!(
        cli.admin_exchange_timeout_secs >= cli.admin_head_timeout_secs,
        "--admin-exchange-timeout-secs {} must be at least --admin-head-timeout-secs {} \
         (the exchange includes the head)",
        cli.admin_exchange_timeout_secs,
        cli.admin_head_timeout_secs
    );
    let rendered = metrics.clone();
    let beating = metrics.clone();
    let token = ops::admin::Token::load(cli.admin_token_file.as_deref(), ops::admin::TOKEN_ENV)?;
    Ok(
        ops::admin::Endpoint::new(Box::new(move || rendered.render()), ready.clone())
            .token(token)
            .heartbeats(ops::admin::Heartbeats::new(
                vec!["routing loop".to_owned()],
                Duration::from_secs(cli.liveness_timeout_secs),
                move || vec![beating.heartbeat.load(Ordering::Relaxed)],
            ))
            .limits(ops::admin::Limits {
                max_connections: usize::try_from(cli.admin_max_connections).unwrap_or(usize::MAX),
                head_timeout: Duration::from_secs(cli.admin_head_timeout_secs),
                exchange_timeout: Duration::from_secs(cli.admin_exchange_timeout_secs),
            }),
    )
}

/// One --max-age rule: a valid MQTT topic filter and whole seconds.
fn parse_max_age(rule: &str) -> anyhow::Result<(String, std::time::Duration)> {
    let (filter, secs) = rule
        .rsplit_once('=')
        .with_context(|| format!("--max-age {rule}: expected FILTER=SECONDS"))?;
    codec::topic::validate_topic_filter(filter)
        .map_err(|e| anyhow::anyhow!("--max-age {rule}: {filter} is not a topic filter: {e}"))?;
    let secs: u64 = secs
        .parse()
        .with_context(|| format!("--max-age {rule}: {secs} is not a number of seconds"))?;
    Ok((filter.to_owned(), std::time::Duration::from_secs(secs)))
}

/// One --hold rule: a valid MQTT topic filter and yes or no.
fn parse_hold(rule: &str) -> anyhow::Result<(String, bool)> {
    let (filter, hold) = rule
        .rsplit_once('=')
        .with_context(|| format!("--hold {rule}: expected FILTER=yes or FILTER=no"))?;
    codec::topic::validate_topic_filter(filter)
        .map_err(|e| anyhow::anyhow!("--hold {rule}: {filter} is not a topic filter: {e}"))?;
    let hold = match hold {
        "yes" => true,
        "no" => false,
        other => anyhow::bail!("--hold {rule}: {other} is neither yes nor no"),
    };
    Ok((filter.to_owned(), hold))
}

/// systemd (Type=notify): READY=1 once the tables are rebuilt, and the
/// watchdog fed while the routing loop turns. Does nothing outside systemd.
fn notify_systemd(metrics: Arc<Metrics>, ready: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|usec| usec.parse::<u64>().ok())
        .map(|usec| std::time::Duration::from_micros(usec / 2));
    let spawned = std::thread::Builder::new()
        .name("sd-notify".to_owned())
        .spawn(move || {
            let mut told_ready = false;
            let mut beat = metrics.heartbeat.load(Ordering::Relaxed);
            let mut fed = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if !told_ready && ready.load(Ordering::Relaxed) {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    told_ready = true;
                }
                if let Some(every) = watchdog
                    && fed.elapsed() >= every
                {
                    let now = metrics.heartbeat.load(Ordering::Relaxed);
                    if now != beat {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    } else {
                        tracing::warn!(
                            "the routing loop made no progress: the watchdog is not fed"
                        );
                    }
                    (beat, fed) = (now, std::time::Instant::now());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no systemd notifications");
    }
}
