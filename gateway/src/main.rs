//! `gateway`: the MQTT ⇄ Kafka bridge's front door. See `gateway --help`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::Gateway;
use gateway::config::{Config, LogFormat, Pin};

/// MQTT 3.1.1 to Kafka gateway for connected cars.
///
/// Cars connect over MQTT and PUBLISH at QoS 0; each PUBLISH whose topic a
/// mapping rule accepts becomes a Kafka record (key = client id, value =
/// payload, header mqtt.topic = topic). Each shard also writes the cars'
/// sessions to the session registry and delivers the messages the router
/// puts on its mqtt.downlink partition. Settings come from the config file
/// (see `gateway print-default-config`), then environment variables, then
/// flags, each overriding the one before.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(short, long, env = "CARBRIDGE_CONFIG", global = true)]
    config: Option<String>,
    /// MQTT address of the plain listener used when the config file has no
    /// [[listeners]], e.g. 0.0.0.0:1883.
    #[arg(long, env = "CARBRIDGE_LISTEN", global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Shards (executors); 0 = one per CPU of the affinity mask.
    #[arg(long, env = "CARBRIDGE_SHARDS", global = true)]
    shards: Option<usize>,
    /// Pin each shard to a CPU: auto (only when the affinity mask is a
    /// strict subset of the online CPUs, i.e. CPUs of this process's own),
    /// always, or never.
    #[arg(long, env = "CARBRIDGE_PIN", value_enum, global = true)]
    pin: Option<PinArg>,
    /// Kafka bootstrap servers (librdkafka's bootstrap.servers).
    #[arg(long, env = "CARBRIDGE_KAFKA_BOOTSTRAP", global = true)]
    kafka_bootstrap: Option<String>,
    /// Any librdkafka property, repeatable: -X security.protocol=SASL_SSL.
    #[arg(
        short = 'X',
        long = "kafka-property",
        value_name = "KEY=VALUE",
        global = true
    )]
    kafka_properties: Vec<String>,
    /// Properties read from files or environment variables at start
    /// (secrets: never on the command line).
    #[command(flatten)]
    kafka_secrets: ops::secrets::SecretArgs,
    /// This instance's bridge id (its downlink slots are id*shards ..);
    /// default: the host name's trailing ordinal, else 0.
    #[arg(long, env = "CARBRIDGE_BRIDGE_ID", global = true)]
    bridge_id: Option<u32>,
    /// Shards of every gateway instance, for the slot numbering; default:
    /// this process's shard count.
    #[arg(long, env = "CARBRIDGE_SHARDS_PER_BRIDGE", global = true)]
    shards_per_bridge: Option<u32>,
    /// Uplink only: no session registry, no downlink delivery.
    #[arg(long, global = true)]
    no_downlink: bool,
    /// Log tasks that hold a shard too long, with a backtrace (debugging:
    /// resolving a backtrace loads the debug info, about 90 MiB).
    #[arg(long, global = true)]
    detect_stalls: bool,
    /// Admin HTTP address (/metrics, /healthz, /livez, /readyz, POST
    /// /drain, POST /reload); "" disables it.
    #[arg(long, env = "CARBRIDGE_ADMIN_LISTEN", global = true)]
    admin_listen: Option<String>,
    /// A file holding the admin token that POST /drain and POST /reload
    /// must carry as `Authorization: Bearer <token>` (or give the token
    /// itself in CARBRIDGE_ADMIN_TOKEN). Without one, the actions run only
    /// on a loopback admin address.
    #[arg(long, env = "CARBRIDGE_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, env = "CARBRIDGE_LOG_FORMAT", value_enum, global = true)]
    log_format: Option<Format>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PinArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Print the default configuration file and exit.
    PrintDefaultConfig,
    /// Check the configuration as a start would, without starting: every
    /// value, the mapping patterns, every TLS file (certificate chains,
    /// keys and whether they match, CA bundles, CRLs, ticket keys), loaded
    /// by the code a start uses, every Kafka property to be read from a
    /// file or a variable, and the admin token. Prints the configuration
    /// (secrets redacted) and exits 0, or exits 1 naming each file,
    /// variable or pattern that would stop a start.
    CheckConfig,
}

impl Cli {
    /// The configuration to run, validated.
    fn config(&self) -> anyhow::Result<Config> {
        let config = self.settings()?;
        config.validate()?;
        Ok(config)
    }

    /// The file's settings with the environment's and the flags' over
    /// them, not validated yet.
    fn settings(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(shards) = self.shards {
            config.shards = shards;
        }
        if let Some(pin) = self.pin {
            config.pin = match pin {
                PinArg::Auto => Pin::Auto,
                PinArg::Always => Pin::Always,
                PinArg::Never => Pin::Never,
            };
        }
        if let Some(bootstrap) = &self.kafka_bootstrap {
            config.kafka.set_property("bootstrap.servers", bootstrap);
        }
        for property in &self.kafka_properties {
            let (key, value) = property
                .split_once('=')
                .with_context(|| format!("-X {property}: expected KEY=VALUE"))?;
            config.kafka.set_property(key, value);
        }
        for (key, path) in self.kafka_secrets.files()? {
            config.kafka.set_property_file(&key, path);
        }
        for (key, variable) in self.kafka_secrets.envs()? {
            config.kafka.set_property_env(&key, &variable);
        }
        if let Some(bridge) = self.bridge_id {
            config.downlink.bridge_id = Some(bridge);
        }
        if let Some(per_bridge) = self.shards_per_bridge {
            config.downlink.shards_per_bridge = per_bridge;
        }
        if self.no_downlink {
            config.downlink.enabled = false;
        }
        if self.detect_stalls {
            config.detect_stalls = true;
        }
        if let Some(admin) = &self.admin_listen {
            config.admin.listen = admin.clone();
        }
        if let Some(token) = &self.admin_token_file {
            config.admin.token_file = Some(token.clone());
        }
        if let Some(format) = self.log_format {
            config.log.format = match format {
                Format::Human => LogFormat::Human,
                Format::Json => LogFormat::Json,
            };
        }
        Ok(config)
    }
}

fn init_logging(config: &Config) {
    ops::init_logging(&config.log.filter, config.log.format == LogFormat::Json);
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::PrintDefaultConfig) => {
            print!("{}", Config::default_toml());
            return Ok(());
        }
        Some(Command::CheckConfig) => {
            let config = cli.settings()?;
            // Every problem at once: the values and the files.
            let mut problems = Vec::new();
            if let Err(error) = config.validate() {
                problems.push(error.to_string());
            }
            if let Err(error) =
                ops::admin::Token::load(config.admin.token_file.as_deref(), ops::admin::TOKEN_ENV)
            {
                problems.push(error.to_string());
            }
            let tls = match gateway::startup::check_files(&config) {
                Ok(loaded) => loaded,
                Err(errors) => {
                    problems.extend(errors.0.iter().map(ToString::to_string));
                    0
                }
            };
            if !problems.is_empty() {
                anyhow::bail!(
                    "this configuration would not start:\n{}",
                    problems.join("\n")
                );
            }
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            eprintln!("configuration OK ({tls} TLS listener(s) loaded)");
            return Ok(());
        }
        Some(Command::Run) | None => {}
    }
    let config = cli.config()?;
    init_logging(&config);

    // SIGTERM drains first (the cars reconnect elsewhere as a trickle),
    // SIGINT stops at once.
    let (terminate, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    signal_hook::flag::register(signal_hook::consts::SIGTERM, terminate.clone())
        .context("installing signal handlers")?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())
        .context("installing signal handlers")?;
    let drain_bound = Duration::from_secs(config.drain.max_secs) + Duration::from_secs(5);
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing the SIGHUP handler")?;
    // Each of those signals also writes a byte here, so the loop below
    // sleeps until one comes (or its next check is due) instead of napping
    // 50 ms at a time: an idle gateway's main thread woke 20 times a second
    // for nothing, 0.1 % of a core on the test machine.
    let signalled = Signalled::new()?;
    let gateway = Gateway::start(config)?;
    tracing::info!(
        listeners = ?gateway.local_addrs(),
        admin = ?gateway.admin_addr(),
        shards = gateway.metrics().len(),
        "gateway running"
    );
    // systemd (Type=notify): ready now; the watchdog is fed while every
    // shard's poller turns.
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|usec| usec.parse::<u64>().ok())
        .map(|usec| Duration::from_micros(usec / 2));
    let mut fed = (std::time::Instant::now(), gateway.heartbeats());
    let flag = gateway.shutdown_flag();
    let mut drained_by: Option<std::time::Instant> = None;
    while !stop.load(Ordering::Relaxed) && !flag.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGHUP: reloading TLS files");
            // The outcome is logged and counted by the reload itself.
            let _ = gateway.reload_tls();
        }
        if let Some(every) = watchdog
            && fed.0.elapsed() >= every
        {
            let beats = gateway.heartbeats();
            if beats.iter().zip(&fed.1).all(|(now, then)| now > then) {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                fed = (std::time::Instant::now(), beats);
            } else {
                // Checked again one interval later; systemd restarts the
                // service if that goes on past WatchdogSec.
                tracing::warn!("a shard made no progress: the watchdog is not fed");
                fed.0 = std::time::Instant::now();
            }
        }
        if terminate.load(Ordering::Relaxed) {
            match drained_by {
                None => {
                    tracing::info!("SIGTERM: draining, then stopping");
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("draining")]);
                    gateway.drain();
                    drained_by = Some(std::time::Instant::now() + drain_bound);
                }
                Some(by) => {
                    let open = gateway.open_connections();
                    if open == 0 {
                        break;
                    }
                    if std::time::Instant::now() >= by {
                        tracing::warn!(
                            connections = open,
                            "the drain outlived its bound: stopping"
                        );
                        break;
                    }
                }
            }
        }
        // Draining: the open connections are counted every 50 ms. Else
        // nothing is due before a signal but the watchdog, and a stop the
        // gateway asks for itself (`shutdown_flag`), looked at every second.
        let nap = if drained_by.is_some() {
            Duration::from_millis(50)
        } else {
            watchdog.map_or(IDLE_NAP, |every| every.min(IDLE_NAP))
        };
        signalled.wait(nap);
    }
    tracing::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let metrics = gateway.metrics().to_vec();
    let result = gateway.stop();
    let totals = gateway::metrics::totals(&metrics);
    tracing::info!(
        received = totals.received,
        acked = totals.acked,
        failed = totals.failed,
        in_flight_bytes = totals.in_flight_bytes,
        "stopped"
    );
    Ok(result?)
}

/// Longest the main loop sleeps while no signal comes.
const IDLE_NAP: Duration = Duration::from_secs(1);

/// A socket pair that SIGTERM, SIGINT and SIGHUP write a byte to, beside
/// setting their flags: something the main loop can sleep on.
struct Signalled {
    read: std::os::unix::net::UnixStream,
}

impl Signalled {
    fn new() -> anyhow::Result<Self> {
        let (read, write) =
            std::os::unix::net::UnixStream::pair().context("creating the signal socket pair")?;
        read.set_nonblocking(true)
            .context("creating the signal socket pair")?;
        for signal in [
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ] {
            let write = write
                .try_clone()
                .context("creating the signal socket pair")?;
            signal_hook::low_level::pipe::register(signal, write)
                .context("installing signal handlers")?;
        }
        Ok(Self { read })
    }

    /// Sleeps until a signal comes or `most` has passed, and forgets the
    /// signals' bytes (their flags say which came).
    fn wait(&self, most: Duration) {
        use std::io::Read;
        use std::os::fd::AsFd;
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(most.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(most.subsec_nanos()),
        };
        let fd = self.read.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        // EINTR (a signal came) is a wake-up like any other.
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let mut bytes = [0u8; 64];
        while matches!((&self.read).read(&mut bytes), Ok(n) if n > 0) {}
    }
}
