//! The main job's verdict: did the system keep up, which goals did it
//! meet, and whose latency is it? `loadgen verdict` runs it on a finished
//! run (scripts/stack.sh does, after loadgen):
//!
//! - inputs: the JSON report, the broker probe's figures (`kafka_rtt`
//!   beside the fleet: produce → consume through the same broker at the
//!   same time, nothing of the bridge in between), the gateways' and the
//!   router's `/metrics` pages saved to files, and the stack's facts
//!   (broker, TLS, gateways and shards, the server side's CPU and memory);
//! - [`judge`] turns them into a [`Verdict`], kept in the report;
//! - [`text`] prints it; the HTML page shows it at its top;
//! - the exit status says it: 0 HEALTHY, 3 LOST, 4 OVERLOADED.

mod metrics;
mod text;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use metrics::Metrics;
use text::count;
pub use text::text;

use crate::report::{
    DownlinkHops, FlowStats, GatewayCounts, Goal, Hop, Load, Outcome, Probe, Report, Share,
    ShareBasis, Stack, Verdict,
};

/// The latency goals: p99 below these.
pub const UPLINK_GOAL_MS: f64 = 50.0;
pub const DOWNLINK_GOAL_MS: f64 = 20.0;
/// A probe this slow means the broker itself is the bottleneck.
const BROKER_SLOW_MS: f64 = 250.0;

/// Exit status of `loadgen verdict` for each outcome (1 and 2 are
/// loadgen's own errors and usage).
pub fn exit_code(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Healthy => 0,
        Outcome::Lost => 3,
        Outcome::Overloaded => 4,
    }
}

/// What the verdict weighs besides the report.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// The broker's name in the verdict's sentences.
    pub broker: String,
    pub probe: Option<Probe>,
    /// The gateways' pages, summed; `None`: none could be read.
    pub gateway: Option<Metrics>,
    pub router: Option<Metrics>,
    pub load: Option<Load>,
}

/// The files `loadgen verdict` reads and writes.
#[derive(Debug, Clone)]
pub struct Files {
    /// The run's JSON report, rewritten with the verdict and the stack.
    pub report_json: PathBuf,
    /// Rendered again from the report, when given.
    pub report_html: Option<PathBuf>,
    /// `kafka_rtt --json`; missing or unreadable: no probe.
    pub probe: Option<PathBuf>,
    /// The stack's facts (JSON, [`Stack`]).
    pub stack: Option<PathBuf>,
    /// Saved `/metrics` pages; missing or empty ones are skipped.
    pub gateway_metrics: Vec<PathBuf>,
    pub router_metrics: Option<PathBuf>,
    /// The broker's name when no stack names it.
    pub broker: Option<String>,
}

/// Reads the files, judges, writes the verdict into the JSON report (and
/// the HTML page), and returns the verdict's text and outcome.
pub fn run(files: &Files) -> anyhow::Result<(String, Outcome)> {
    let path = &files.report_json;
    let mut report: Report = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a loadgen report", path.display()))?;
    if let Some(path) = &files.stack {
        let stack: Stack = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not the stack's facts", path.display()))?;
        report.stack = Some(stack);
    }
    let broker = files
        .broker
        .clone()
        .or_else(|| report.stack.as_ref().map(|s| s.broker_detail.clone()))
        .unwrap_or_else(|| "the broker".to_owned());
    let inputs = Inputs {
        broker,
        probe: files.probe.as_deref().and_then(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            serde_json::from_str(&text).ok()
        }),
        gateway: pages(&files.gateway_metrics),
        router: pages(files.router_metrics.as_slice()),
        load: load(report.machine.cpus),
    };
    let verdict = judge(&report, &inputs);
    let outcome = verdict.outcome;
    report.verdict = Some(verdict);
    std::fs::write(path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(html) = &files.report_html {
        std::fs::write(html, crate::html::render(&report))
            .with_context(|| format!("writing {}", html.display()))?;
    }
    Ok((text(&report), outcome))
}

/// The pages in `paths`, summed; `None` when none holds a sample.
fn pages(paths: &[PathBuf]) -> Option<Metrics> {
    let mut metrics = Metrics::default();
    for page in paths.iter().filter_map(|p: &PathBuf| read(p)) {
        metrics.add(&page);
    }
    (!metrics.is_empty()).then_some(metrics)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The 1-minute load average now, against `cores`.
fn load(cores: usize) -> Option<Load> {
    let text = read(Path::new("/proc/loadavg"))?;
    let average = text.split_whitespace().next()?.parse().ok()?;
    Some(Load {
        average,
        cores: cores.max(1),
    })
}

/// With `loadgen --hold`: how many of each class reached their cars.
fn holding(receipts: &crate::report::ReceiptStats) -> Option<String> {
    let share = |class: &str| {
        let outcomes = receipts.by_class.get(class)?;
        let total: u64 = outcomes.values().sum();
        let written = outcomes.get("written").copied().unwrap_or(0);
        Some((written, total))
    };
    let ((held, held_total), (plain, plain_total)) = (share("held")?, share("plain")?);
    let percent = |n: u64, of: u64| 100.0 * n as f64 / of.max(1) as f64;
    Some(format!(
        "held delivery: {} of {} downlink messages that asked to be held reached their cars \
         ({:.1} %), against {} of {} that did not ({:.1} %)",
        count(held),
        count(held_total),
        percent(held, held_total),
        count(plain),
        count(plain_total),
        percent(plain, plain_total)
    ))
}

/// The verdict on `report`.
pub fn judge(report: &Report, inputs: &Inputs) -> Verdict {
    let broker = inputs.broker.as_str();
    let probe = inputs.probe;
    let downlink = report.downlink.as_ref();
    let mut goals = vec![goal("uplink", &report.uplink, UPLINK_GOAL_MS)];
    goals.extend(downlink.map(|d| goal("downlink", d, DOWNLINK_GOAL_MS)));
    let shares = std::iter::once(share("uplink", &report.uplink, probe, 1))
        .chain(downlink.map(|d| share("downlink", d, probe, 2)))
        .flatten()
        .collect();

    let up_lost = report.uplink.lost;
    let mut down_lost = downlink.map_or(0, |d| d.lost);
    let mut findings = Vec::new();
    if let Some(receipts) = &report.receipts {
        // A message the bridge answered "offline" (the car was away, as
        // with --churn) or otherwise not written was not lost: its sender
        // knows what became of it.
        let answered_undelivered: u64 = receipts
            .outcomes
            .iter()
            .filter(|(name, _)| name.as_str() != "written")
            .map(|(_, n)| n)
            .sum();
        if down_lost > 0 && receipts.missing == 0 && answered_undelivered >= down_lost {
            findings.push(format!(
                "the {} downlink messages that did not arrive were each answered with a \
                 receipt saying why (the cars were away or could not take them)",
                count(down_lost)
            ));
            down_lost = 0;
        }
        if let Some(finding) = holding(receipts) {
            findings.push(finding);
        }
    }

    let gateway = inputs.gateway.as_ref().map(|m| GatewayCounts {
        acked: m.count("carbridge_gateway_publish_acked_total"),
        failed: m.count("carbridge_gateway_publish_failed_total"),
        downlink_written: m.count("carbridge_gateway_downlink_delivered_total"),
        kafka_ack: m.histogram("carbridge_gateway_kafka_ack_seconds"),
    });
    let router = inputs.router.as_ref().filter(|_| downlink.is_some());
    let router_requests = router.map(|m| m.count("carbridge_router_requests_received_total"));
    let downlink_hops = match (router, &inputs.gateway) {
        (Some(router), Some(gateway)) => hops(gateway, router),
        _ => None,
    };

    let mut broker_slow = probe.is_some_and(|p| p.p99_ms > BROKER_SLOW_MS || p.received < p.sent);
    // Every uplink record acknowledged by the broker, yet not all read
    // back in time: the broker's fetch side is behind, not the bridge.
    if let Some(g) = &gateway
        && up_lost > 0
        && g.failed == 0
        && g.acked >= report.uplink.sent
    {
        findings.push(format!(
            "every uplink record was acknowledged by {broker}; the {} missing were not read \
             back from it in time",
            count(up_lost)
        ));
        broker_slow = true;
    }
    if let (Some(received), Some(d)) = (router_requests, downlink)
        && down_lost > 0
        && received < d.sent
    {
        findings.push(format!(
            "the router read {} requests from {broker}: the broker did not hand it the rest \
             in time",
            count(received)
        ));
        broker_slow = true;
    }

    let lost = up_lost + down_lost;
    let missed: Vec<&str> = goals
        .iter()
        .filter(|g| !g.met)
        .map(|g| g.flow.as_str())
        .collect();
    let (outcome, headline) = if lost == 0 && missed.is_empty() {
        (
            Outcome::Healthy,
            "HEALTHY: nothing lost, every latency goal met.".to_owned(),
        )
    } else if lost == 0 && broker_slow {
        (
            Outcome::Healthy,
            format!(
                "HEALTHY BUT SLOW: nothing lost, but {broker} itself is slow here (probe p99 \
                 {}): the latencies above are mostly the broker's.",
                probe_p99(probe)
            ),
        )
    } else if lost == 0 {
        let bridge = match &report.uplink.stages {
            Some(stages) => format!(
                "the bridge's own part of the uplink is p99 {:.1} ms, Kafka's p99 {:.1} ms",
                stages.bridge.p99_ms, stages.kafka.p99_ms
            ),
            None => "see the broker's part above".to_owned(),
        };
        let goals_are = if missed.len() > 1 {
            "goals are"
        } else {
            "goal is"
        };
        (
            Outcome::Healthy,
            format!(
                "HEALTHY: nothing lost. The {} p99 {goals_are} missed, and the time goes to \
                 {broker}: {bridge}; each downlink message crosses the broker twice.",
                missed.join(" and ")
            ),
        )
    } else if broker_slow {
        (
            Outcome::Overloaded,
            format!(
                "OVERLOADED BROKER: {} messages did not arrive in time, and {broker} is what \
                 fell behind (see above; the probe alone saw p99 {}). This run measures the \
                 broker, not the bridge: lower the load (--cars, --publish-interval-ms, \
                 --downlink-rate) or run a broker that keeps up.",
                count(lost),
                probe_p99(probe)
            ),
        )
    } else {
        (
            Outcome::Lost,
            format!(
                "LOST: {} messages did not arrive while the broker kept up ({}): look at the \
                 gateway and router logs.",
                count(lost),
                match probe {
                    Some(p) => format!("probe p99 {:.0} ms", p.p99_ms),
                    None => "as far as can be told without a probe".to_owned(),
                }
            ),
        )
    };
    Verdict {
        outcome,
        headline,
        broker: broker.to_owned(),
        lost,
        goals,
        shares,
        downlink_hops,
        probe,
        gateway,
        router_requests,
        findings,
        load: inputs.load,
    }
}

fn probe_p99(probe: Option<Probe>) -> String {
    probe.map_or_else(|| "no probe".to_owned(), |p| format!("{:.0} ms", p.p99_ms))
}

fn goal(flow: &str, stats: &FlowStats, limit_ms: f64) -> Goal {
    Goal {
        flow: flow.to_owned(),
        p99_limit_ms: limit_ms,
        p99_ms: stats.latency.p99_ms,
        met: stats.latency.p99_ms < limit_ms,
    }
}

/// The bridge's part of `stats`' latency against the broker's: split at
/// the Kafka timestamp where the report has it (measured), else the
/// broker's part taken as `hops` hops at the probe's figures.
fn share(flow: &str, stats: &FlowStats, probe: Option<Probe>, hops: u32) -> Option<Share> {
    if let Some(stages) = &stats.stages {
        return Some(Share {
            flow: flow.to_owned(),
            basis: ShareBasis::Measured,
            bridge_p50_ms: stages.bridge.p50_ms,
            bridge_p99_ms: Some(stages.bridge.p99_ms),
            broker_p50_ms: stages.kafka.p50_ms,
            broker_p99_ms: stages.kafka.p99_ms,
        });
    }
    let probe = probe?;
    let hops = f64::from(hops);
    let broker_p50_ms = hops * probe.p50_ms;
    Some(Share {
        flow: flow.to_owned(),
        basis: ShareBasis::Estimated,
        bridge_p50_ms: (stats.latency.p50_ms - broker_p50_ms).max(0.0),
        bridge_p99_ms: None,
        broker_p50_ms,
        broker_p99_ms: hops * probe.p99_ms,
    })
}

/// The downlink's hops from the bridge's own histograms (whole run); all
/// four or none.
fn hops(gateway: &Metrics, router: &Metrics) -> Option<DownlinkHops> {
    let read = router.histogram("carbridge_router_request_age_at_read_seconds")?;
    let routed = router.histogram("carbridge_router_request_age_at_routing_seconds")?;
    let second = gateway.histogram("carbridge_gateway_downlink_age_at_read_seconds")?;
    let write = gateway.histogram("carbridge_gateway_downlink_write_seconds")?;
    let hop = |name: &str, latency| Hop {
        name: name.to_owned(),
        latency,
    };
    Some(DownlinkHops {
        router_ms: (routed.mean_ms - read.mean_ms).max(0.0),
        gateway_ms: write.mean_ms,
        kafka_ms: read.mean_ms + second.mean_ms,
        hops: vec![
            hop("Kafka: request produced -> router read", read),
            hop("router: -> routed record produced (age)", routed),
            hop("Kafka: routed -> gateway read", second),
            hop("gateway: read -> written to the car's socket", write),
        ],
    })
}

#[cfg(test)]
pub(crate) mod tests;
