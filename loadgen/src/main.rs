//! `loadgen`: simulates a fleet of cars against the gateway (or any MQTT
//! 3.1.1 server) and reports what arrived, how fast, and what was lost.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use loadgen::run::{Options, run, summary};
use loadgen::worker::Plan;

/// Simulates cars: one MQTT connection each with its own VIN-like client id
/// (CBLG0000000000042), publishing a payload every interval and receiving
/// downlink messages.
///
/// Gateway mode (default): each payload carries car, sequence number and
/// send time; loadgen reads them back from the Kafka topic the gateway
/// maps them to, and sends downlink messages to the cars through
/// cs.downlink, so it measures latency, loss, duplication and order end to
/// end. Peer mode (--peer): the same fleet against any MQTT server, the
/// uplink received by MQTT subscribers on that server.
///
/// The fleet is split over worker processes (--cars-per-worker) so no
/// process exceeds its open-file limit. Against loopback targets, every
/// 20,000 cars connect from their own source address (127.r.x.y), each car
/// from its own port, so local ports never run out and the kernel never
/// searches for one. --link puts a link with a cellular network's faults
/// (latency, bandwidth, loss, outages) between the cars and the target.
/// Progress is printed every second; at the end a summary, and a JSON and
/// an HTML report.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: one worker process (started by loadgen itself).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        plan: String,
    },
    /// The main job's verdict on a finished run (scripts/stack.sh runs it
    /// after loadgen): whether anything was lost, which latency goals were
    /// met, and whose the latency is (the bridge's or the broker's).
    /// Prints it, writes it into the JSON report (with the stack's facts)
    /// and renders the HTML report again with it at the top. Exits 0 when
    /// HEALTHY, 3 when LOST, 4 when OVERLOADED (lost, the broker behind).
    Verdict(VerdictArgs),
}

#[derive(Debug, Args)]
struct VerdictArgs {
    /// The run's JSON report; the verdict is written into it.
    #[arg(long)]
    report_json: PathBuf,
    /// The HTML report to render again from it, the verdict at the top.
    #[arg(long)]
    report_html: Option<PathBuf>,
    /// The broker probe's figures (`kafka_rtt --json`); missing: no probe.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// The stack's facts as JSON: broker, TLS, gateways, shards, and the
    /// gateways' CPU per message and memory per connection.
    #[arg(long)]
    stack: Option<PathBuf>,
    /// A gateway's /metrics page saved to a file (repeatable: summed).
    #[arg(long)]
    gateway_metrics: Vec<PathBuf>,
    /// The router's /metrics page saved to a file.
    #[arg(long)]
    router_metrics: Option<PathBuf>,
    /// The broker's name in the verdict (default: the stack's, or "the
    /// broker").
    #[arg(long)]
    broker: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Number of cars.
    #[arg(long, default_value_t = 1000)]
    cars: u64,
    /// MQTT server address(es), repeatable; cars are spread over them.
    #[arg(long = "target", default_value = "127.0.0.1:1883")]
    targets: Vec<String>,
    /// New connections per second, all workers together.
    #[arg(long, default_value_t = 20_000.0)]
    connect_rate: f64,
    /// Each car publishes once per this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    publish_interval_ms: u64,
    /// Payload bytes per publish (at least 64: the header with car,
    /// sequence number and send time).
    #[arg(long, default_value_t = 64)]
    payload_size: usize,
    /// MQTT keep-alive each car asks for, seconds; a car with nothing
    /// else to send sends PINGREQ this often, as real clients do.
    /// Default: three publish intervals, at least 60 s.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    keep_alive_secs: Option<u16>,
    /// Uplink MQTT topic; {shard} is replaced in peer mode.
    #[arg(long, default_value = "UL/POS")]
    topic: String,
    /// Filter each car subscribes to; {car} is replaced by its client id.
    /// Default: DL/# (the gateway delivers only the car's own messages);
    /// in peer mode DL/LOAD/{car}, where downlink messages are published.
    #[arg(long)]
    subscribe: Option<String>,
    /// Do not subscribe.
    #[arg(long)]
    no_subscribe: bool,
    /// Seconds of connecting before the measured window.
    #[arg(long, default_value_t = 5)]
    warmup_secs: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// Kafka bootstrap servers (gateway mode).
    #[arg(long, env = "CARBRIDGE_KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Kafka topic the gateway maps the uplink topic to.
    #[arg(long, default_value = contract::topics::UPLINK)]
    kafka_topic: String,
    /// Downlink requests topic.
    #[arg(long, default_value = contract::topics::DOWNLINK)]
    downlink_topic: String,
    /// Downlink messages per second to the cars (round-robin), sent
    /// through Kafka during the measured window; 0 = none.
    #[arg(long, default_value_t = 0.0)]
    downlink_rate: f64,
    /// Every downlink request asks for a receipt; the report counts them
    /// per outcome, times them (request sent to receipt read) and checks
    /// that each request got exactly one (gateway mode).
    #[arg(long)]
    receipts: bool,
    /// Topic the receipts are read from.
    #[arg(long, default_value = contract::topics::RECEIPTS)]
    receipts_topic: String,
    /// Peer mode: any MQTT 3.1.1 server, uplink measured by MQTT
    /// subscribers on it (needs --topic with {shard}, e.g. UL/POS/{shard}).
    #[arg(long)]
    peer: bool,
    /// Baseline: no MQTT; one rdkafka producer writes the records the
    /// gateway would write for this fleet (same keys, header, payloads,
    /// rate and producer settings) to --kafka-topic, measured the same way.
    #[arg(long, conflicts_with = "peer")]
    raw_kafka: bool,
    /// Subscribers in peer mode (cars publish on their {shard}).
    #[arg(long, default_value_t = 2)]
    peer_subscribers: u64,
    /// Source addresses to connect from (repeatable), each car from its own
    /// port (10,000 and up); default: 127.r.x.y for loopback targets, the
    /// kernel's choice otherwise.
    #[arg(long = "source")]
    sources: Vec<IpAddr>,
    /// Cars per source address (at most 50,000: one port each).
    #[arg(long, default_value_t = 20_000)]
    cars_per_source: u64,
    /// Cars per worker process (each car needs one open file; a process
    /// may have 20,000 here). Default: the fleet split over three workers,
    /// at most 15,000 cars each. Here one worker connects about 14,000
    /// cars/s, three about 21,000, nine (5,000 cars each) only 18,600.
    #[arg(long)]
    cars_per_worker: Option<u64>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "loadgen-report.json")]
    report_json: PathBuf,
    /// Where to write the HTML report.
    #[arg(long, default_value = "loadgen-report.html")]
    report_html: PathBuf,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// After the run, read the uplink topic again from where the run
    /// started and count what Kafka holds (tells loss on the way into
    /// Kafka from loss in the live read).
    #[arg(long)]
    recount: bool,
    /// Exit with status 3 if any message was lost or duplicated (for CI).
    #[arg(long)]
    fail_on_loss: bool,
    /// TLS: each car presents its own client certificate (subject CN = its
    /// client id), made from the test CA in --tls-dir, and trusts that CA
    /// for the server.
    #[arg(long)]
    tls: bool,
    /// Test PKI directory: ca.crt and ca.key (made if missing), cars/ with
    /// the cars' certificates (made once, kept for later runs).
    /// `carbridge-testpki DIR` makes it with the gateway's certificate.
    #[arg(long, default_value = "target/testpki")]
    tls_dir: PathBuf,
    /// The name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_server_name: String,
    /// Each car connects once before its measured connection, so that the
    /// measured one resumes the TLS session (a session ticket) instead of
    /// a full handshake.
    #[arg(long, requires = "tls")]
    tls_resume: bool,
    /// A car the server closes before the run ends (a drained or crashed
    /// gateway) connects again after 0.1–1 s, to the next --target, and
    /// goes on publishing with its numbering: the report then shows what
    /// a drain or a failover loses (connects per second in the timeline).
    #[arg(long)]
    reconnect: bool,
    /// Cars leaving per second, fleet-wide: during the run each car
    /// disconnects (DISCONNECT) about every cars / CHURN seconds, stays
    /// away 1–3 s and connects again, so that downlink messages meet cars
    /// that are offline (with --receipts: `offline` receipts). 0: none.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Held delivery (needs --receipts): every downlink request expires
    /// SECS after it is sent, and every other one sent asks the router
    /// to hold it while its car is away (header carbridge.hold, MQTT topic
    /// DL/LOAD/HELD; the others DL/LOAD, not held). With --churn the report
    /// compares the share of each class that reached its car. Held
    /// messages are counted as received but kept out of the downlink's
    /// latency, which their wait would swamp.
    #[arg(long, value_name = "SECS", requires = "receipts")]
    hold: Option<u64>,
    /// The link between each car and its target: none (the cars connect
    /// straight); cellular (150 ms ± 100 ms each way, 64 kB/s each way,
    /// and a 20 s outage about every 5 minutes per connection, during
    /// which nothing passes either way and nothing is closed); lossy (100
    /// ms ± 50 ms, 32 kB/s, and 2 % of the data lost at first and
    /// retransmitted 200, 400 or 800 ms late, holding up what follows).
    /// Each worker runs a proxy with these faults in front of each
    /// target; a car then costs its worker three open files instead of
    /// one (by default at most 6,000 cars per worker).
    #[arg(long, default_value = "none", value_name = "PROFILE")]
    link: String,
}

/// Open files a worker holds besides its cars' (standard streams, its
/// io_uring, the proxy's listeners and runtime).
const FILES_BESIDE_CARS: u64 = 64;

fn verdict(args: VerdictArgs) -> ! {
    let files = loadgen::verdict::Files {
        report_json: args.report_json,
        report_html: args.report_html,
        probe: args.probe,
        stack: args.stack,
        gateway_metrics: args.gateway_metrics,
        router_metrics: args.router_metrics,
        broker: args.broker,
    };
    match loadgen::verdict::run(&files) {
        Ok((text, outcome)) => {
            print!("{text}");
            std::process::exit(loadgen::verdict::exit_code(outcome));
        }
        Err(error) => {
            eprintln!("loadgen verdict: {error:#}");
            std::process::exit(1);
        }
    }
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("--target {target}"))?
        .next()
        .with_context(|| format!("--target {target}: no address"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    match cli.command {
        Some(Command::Worker { plan }) => {
            let plan: Plan = serde_json::from_str(&plan).context("reading the worker plan")?;
            return loadgen::worker::run(plan, stop);
        }
        Some(Command::Verdict(args)) => verdict(args),
        None => {}
    }
    let args = cli.run;
    if args.payload_size < loadgen::payload::MIN_PAYLOAD {
        bail!(
            "--payload-size {}: at least {} bytes (car, sequence number and send time)",
            args.payload_size,
            loadgen::payload::MIN_PAYLOAD
        );
    }
    if args.cars == 0 || args.publish_interval_ms == 0 || args.connect_rate <= 0.0 {
        bail!("--cars, --publish-interval-ms and --connect-rate must be positive");
    }
    if args.cars_per_source == 0 || args.cars_per_source > loadgen::worker::SOURCE_PORTS {
        bail!(
            "--cars-per-source {}: between 1 and {} (each car has its own local port from {})",
            args.cars_per_source,
            loadgen::worker::SOURCE_PORTS,
            loadgen::worker::SOURCE_PORT_BASE
        );
    }
    if args.peer && !args.topic.contains("{shard}") {
        bail!(
            "--peer needs --topic with {{shard}} (e.g. UL/POS/{{shard}}): each subscriber takes one shard"
        );
    }
    let targets = args
        .targets
        .iter()
        .map(|t| resolve(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let subscribe = args.subscribe.clone().unwrap_or_else(|| {
        if args.peer {
            format!("{}/{{car}}", loadgen::payload::DOWNLINK_TOPIC)
        } else {
            "DL/#".to_owned()
        }
    });
    let linked = testkit::link::Link::profile(&args.link)
        .map_err(|e| anyhow::anyhow!("--link: {e}"))?
        .is_some();
    let cars_per_worker = args
        .cars_per_worker
        .unwrap_or_else(|| loadgen::run::default_cars_per_worker(args.cars, linked));
    // A worker that runs out of files fails its cars' connects one by one:
    // say so before starting.
    let files = cars_per_worker * loadgen::run::files_per_car(linked) + FILES_BESIDE_CARS;
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current
        && files > limit
    {
        bail!(
            "--cars-per-worker {cars_per_worker}{}: a worker would need {files} open files, \
             and a process may have {limit} here: fewer cars per worker",
            if linked { " with --link" } else { "" }
        );
    }
    let mut described = vec![
        ("cars".to_owned(), args.cars.to_string()),
        ("targets".to_owned(), args.targets.join(" ")),
        ("connect_rate".to_owned(), args.connect_rate.to_string()),
        (
            "publish_interval_ms".to_owned(),
            args.publish_interval_ms.to_string(),
        ),
        ("payload_size".to_owned(), args.payload_size.to_string()),
        ("topic".to_owned(), args.topic.clone()),
        (
            "subscribe".to_owned(),
            if args.no_subscribe {
                "no".to_owned()
            } else {
                subscribe.clone()
            },
        ),
        ("warmup_secs".to_owned(), args.warmup_secs.to_string()),
        ("duration_secs".to_owned(), args.duration_secs.to_string()),
        ("downlink_rate".to_owned(), args.downlink_rate.to_string()),
        ("raw_kafka".to_owned(), args.raw_kafka.to_string()),
        ("cars_per_worker".to_owned(), cars_per_worker.to_string()),
        ("link".to_owned(), args.link.clone()),
    ];
    if let Some(secs) = args.keep_alive_secs {
        described.push(("keep_alive_secs".to_owned(), secs.to_string()));
    }
    let tls = if args.tls {
        let started = std::time::Instant::now();
        let made = loadgen::tls::prepare(&args.tls_dir, 0, args.cars)?;
        if made > 0 && !args.quiet {
            println!(
                "made {made} car certificates in {} ({:.1} s; kept for later runs)",
                args.tls_dir.join("cars").display(),
                started.elapsed().as_secs_f64()
            );
        }
        Some(loadgen::worker::TlsPlan {
            dir: std::path::absolute(&args.tls_dir)?,
            server_name: args.tls_server_name.clone(),
            resume: args.tls_resume,
        })
    } else {
        None
    };
    let options = Options {
        tls,
        reconnect: args.reconnect,
        churn: args.churn,
        hold_secs: args.hold,
        link: linked.then(|| args.link.clone()),
        cars: args.cars,
        targets,
        connect_rate: args.connect_rate,
        publish_interval_ms: args.publish_interval_ms,
        keep_alive_secs: args.keep_alive_secs,
        payload_size: args.payload_size,
        topic: args.topic,
        subscribe: (!args.no_subscribe).then_some(subscribe),
        warmup_secs: args.warmup_secs,
        duration_secs: args.duration_secs,
        kafka_bootstrap: args.kafka_bootstrap,
        kafka_topic: args.kafka_topic,
        downlink_topic: args.downlink_topic,
        downlink_rate: args.downlink_rate,
        receipts_topic: args.receipts.then_some(args.receipts_topic),
        peer: args.peer,
        raw_kafka: args.raw_kafka,
        recount: args.recount,
        peer_subscribers: args.peer_subscribers,
        sources: args.sources,
        cars_per_source: args.cars_per_source,
        cars_per_worker,
        described,
        quiet: args.quiet,
    };
    let report = run(&options, stop)?;
    print!("{}", summary(&report));
    std::fs::write(&args.report_json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.report_json.display()))?;
    std::fs::write(&args.report_html, loadgen::html::render(&report))
        .with_context(|| format!("writing {}", args.report_html.display()))?;
    println!(
        "reports: {} {}",
        args.report_json.display(),
        args.report_html.display()
    );
    let flows = std::iter::once(&report.uplink).chain(report.downlink.as_ref());
    if args.fail_on_loss && flows.clone().any(|f| f.lost > 0 || f.duplicates > 0) {
        eprintln!("loss or duplication (--fail-on-loss)");
        std::process::exit(3);
    }
    Ok(())
}
