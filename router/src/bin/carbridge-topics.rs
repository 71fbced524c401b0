//! `carbridge-topics`: creates or checks every topic the system uses.

use clap::{Parser, Subcommand};
use router::topics::{self, Layout};

/// Creates, or checks, the Kafka topics of the MQTT bridge with the right
/// partition counts and cleanup policies:
///
///   cs.uplink      PARTITIONS   delete             car data
///   cs.downlink    PARTITIONS   delete, 1 h        requests to cars
///   mqtt.sessions  PARTITIONS   compact            session registry
///   mqtt.downlink  SLOTS        delete, 1 h        routed, one per shard
///
/// SLOTS = gateway instances × shards per instance. cs.downlink and
/// mqtt.sessions must have equal partition counts (the router relies on it).
/// Exit status: 0 when every topic is as needed, 1 otherwise.
#[derive(Debug, Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    kafka: ops::kafka::KafkaArgs,
    /// Partitions of cs.uplink, cs.downlink and mqtt.sessions.
    #[arg(long, default_value_t = 12, global = true)]
    partitions: i32,
    /// Partitions of mqtt.downlink: gateway instances × shards each.
    #[arg(long, default_value_t = 2, global = true)]
    slots: i32,
    /// Replication factor for created topics.
    #[arg(long, default_value_t = 1, global = true)]
    replication: i32,
    #[arg(long, default_value = contract::topics::UPLINK, global = true)]
    uplink_topic: String,
    #[arg(long, default_value = contract::topics::DOWNLINK, global = true)]
    downlink_topic: String,
    #[arg(long, default_value = contract::topics::SESSIONS, global = true)]
    sessions_topic: String,
    #[arg(long, default_value = contract::topics::ROUTED, global = true)]
    routed_topic: String,
    #[arg(long, default_value = contract::topics::RECEIPTS, global = true)]
    receipts_topic: String,
    #[arg(long, default_value = contract::topics::HELD, global = true)]
    held_topic: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the missing topics, then check them all.
    Create,
    /// Only check: report what is missing or different.
    Check,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(cli.slots > 0, "--slots must be at least 1");
    let client = cli.kafka.client_config()?;
    let mut layout = Layout::new(cli.partitions, cli.slots);
    layout.replication = cli.replication;
    layout.uplink = cli.uplink_topic;
    layout.downlink = cli.downlink_topic;
    layout.sessions = cli.sessions_topic;
    layout.routed = cli.routed_topic;
    layout.receipts = cli.receipts_topic;
    layout.held = cli.held_topic;
    let specs = layout.specs();
    if matches!(cli.command, Command::Create) {
        for name in topics::create(&client, &specs, layout.replication)? {
            println!("created {name}");
        }
    }
    let (problems, unverified) = topics::check(&client, &specs)?;
    for note in &unverified {
        println!("unverified: {note}");
    }
    if problems.is_empty() {
        println!("ok: {} topics as needed", specs.len());
        Ok(())
    } else {
        for problem in &problems {
            eprintln!("wrong: {problem}");
        }
        eprintln!(
            "{} problem(s); an existing topic is never changed by this command: \
             fix it with your Kafka tooling, or delete it and run `create` again",
            problems.len()
        );
        std::process::exit(1);
    }
}
