//! The top of the page after a run through the local stack (`loadgen
//! verdict`): the verdict, the goals, whose the latency is, the server
//! side's figures and the setup. Nothing for loadgen's own report.

use std::fmt::Write;

use super::{escape, number};
use crate::report::{Bucketed, CpuUse, Outcome, Report, ShareBasis, Stack, Verdict};

pub(super) fn write(page: &mut String, report: &Report) {
    if let Some(verdict) = &report.verdict {
        write_outcome(page, verdict);
        write_goals(page, report, verdict);
        write_shares(page, verdict);
    }
    write_server_side(page, report.stack.as_ref(), report.verdict.as_ref());
    if let Some(stack) = &report.stack {
        write_setup(page, report, stack);
    }
}

fn write_outcome(page: &mut String, verdict: &Verdict) {
    let class = match verdict.outcome {
        Outcome::Healthy => "healthy",
        Outcome::Lost => "lost",
        Outcome::Overloaded => "overloaded",
    };
    // The headline begins with the outcome's word, shown large above it.
    let word = verdict.outcome.as_str();
    let headline = verdict
        .headline
        .strip_prefix(word)
        .and_then(|rest| rest.strip_prefix(": "))
        .map_or_else(|| verdict.headline.clone(), capitalized);
    let _ = writeln!(
        page,
        "<div class=\"verdict {class}\">\n<p class=\"outcome\">{word}</p>\n<p>{}</p>",
        escape(&headline)
    );
    if !verdict.findings.is_empty() {
        page.push_str("<ul>\n");
        for finding in &verdict.findings {
            let _ = writeln!(page, "<li>{}</li>", escape(finding));
        }
        page.push_str("</ul>\n");
    }
    if let Some(load) = verdict.load.filter(|l| l.busy()) {
        let _ = writeln!(
            page,
            "<p class=\"bad\">Busy machine: load average {} on {} cores at the end of the run; \
             the fleet, the broker and the bridge competed for CPU, which bends every latency \
             here.</p>",
            number(load.average),
            load.cores
        );
    }
    page.push_str("</div>\n");
}

/// One row per goal: nothing lost, and each direction's p99.
fn write_goals(page: &mut String, report: &Report, verdict: &Verdict) {
    page.push_str(
        "<h2>Goals</h2>\n<table class=\"goals\">\n<tr><th>Goal</th><th>This run</th><th></th></tr>\n",
    );
    let sent = report.uplink.sent + report.downlink.as_ref().map_or(0, |d| d.sent);
    goal_row(
        page,
        "Nothing lost",
        &format!("{} of {sent} messages lost", verdict.lost),
        verdict.lost == 0,
    );
    for goal in &verdict.goals {
        goal_row(
            page,
            &format!(
                "{} p99 &lt; {:.0} ms",
                capitalized(&goal.flow),
                goal.p99_limit_ms
            ),
            &format!("{} ms", number(goal.p99_ms)),
            goal.met,
        );
    }
    page.push_str("</table>\n");
}

fn goal_row(page: &mut String, goal: &str, figure: &str, met: bool) {
    let (class, word) = if met {
        ("met", "met")
    } else {
        ("bad", "missed")
    };
    let _ = writeln!(
        page,
        "<tr><th>{goal}</th><td class=\"num\">{figure}</td><td class=\"{class}\">{word}</td></tr>"
    );
}

/// The bridge's part of the latency against the broker's, per direction,
/// then the downlink's hops.
fn write_shares(page: &mut String, verdict: &Verdict) {
    if verdict.shares.is_empty() && verdict.downlink_hops.is_none() {
        return;
    }
    page.push_str(
        "<h2>Where the time goes</h2>\n<table class=\"shares\">\n<tr><th></th>\
         <th>The bridge</th><th>The broker</th><th>How</th></tr>\n",
    );
    for share in &verdict.shares {
        let (bridge, how) = match (share.basis, share.bridge_p99_ms) {
            (ShareBasis::Measured, Some(p99)) => (
                format!(
                    "p50 {} ms, p99 {} ms",
                    number(share.bridge_p50_ms),
                    number(p99)
                ),
                "measured: split at each record's Kafka timestamp".to_owned(),
            ),
            _ => (
                format!("about {} ms at the median", number(share.bridge_p50_ms)),
                format!(
                    "estimated: the broker's part as {} at the probe's figures, the bridge's \
                     as the rest (the clients included)",
                    if share.flow == "uplink" {
                        "one hop"
                    } else {
                        "two hops"
                    }
                ),
            ),
        };
        let _ = writeln!(
            page,
            "<tr><th>{}</th><td>{bridge}</td><td>p50 {} ms, p99 {} ms</td><td>{how}</td></tr>",
            capitalized(&share.flow),
            number(share.broker_p50_ms),
            number(share.broker_p99_ms)
        );
    }
    if let Some(hops) = &verdict.downlink_hops {
        let _ = writeln!(
            page,
            "<tr><th>Downlink, by its hops</th><td>{} ms (router {}, gateway {})</td>\
             <td>{} ms (two Kafka hops)</td><td>means of the router's and gateways' \
             histograms</td></tr>",
            number(hops.router_ms + hops.gateway_ms),
            number(hops.router_ms),
            number(hops.gateway_ms),
            number(hops.kafka_ms)
        );
    }
    page.push_str("</table>\n");
    if let Some(hops) = &verdict.downlink_hops {
        page.push_str(
            "<h3>Downlink hops (whole run, from the histograms' buckets)</h3>\n\
             <table class=\"hops\">\n<tr><th>Hop</th><th>Mean (ms)</th><th>p50 (ms)</th>\
             <th>p99 (ms)</th><th>Messages</th></tr>\n",
        );
        for hop in &hops.hops {
            let _ = write!(page, "<tr><th>{}</th>", escape(&hop.name));
            bucketed_cells(page, &hop.latency);
            page.push_str("</tr>\n");
        }
        page.push_str("</table>\n");
    }
}

fn bucketed_cells(page: &mut String, latency: &Bucketed) {
    let _ = write!(
        page,
        "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td>",
        number(latency.mean_ms),
        number(latency.p50_ms),
        number(latency.p99_ms),
        latency.count
    );
}

/// What the servers did: the gateways' CPU and memory (the stack's
/// figures), their counters, the router's, the broker alone.
fn write_server_side(page: &mut String, stack: Option<&Stack>, verdict: Option<&Verdict>) {
    let mut rows: Vec<(&str, String, bool)> = Vec::new();
    if let Some(stack) = stack {
        for (name, cpu) in [
            (
                "Gateway CPU per uplink PUBLISH, measured window",
                &stack.gateway_cpu_window,
            ),
            (
                "Gateway CPU per uplink PUBLISH, loadgen's whole run",
                &stack.gateway_cpu,
            ),
        ] {
            if let Some(cpu) = cpu {
                rows.push((name, cpu_figure(cpu), false));
            }
        }
        if let Some(memory) = &stack.gateway_memory {
            rows.push((
                "Gateway memory per connection",
                format!(
                    "{} bytes ({} connections at most; resident {} MiB over {} MiB idle)",
                    number(memory.bytes_per_connection),
                    memory.connections,
                    number(memory.growth_mib),
                    number(memory.idle_mib)
                ),
                false,
            ));
        }
    }
    if let Some(verdict) = verdict {
        if let Some(gateway) = &verdict.gateway {
            rows.push((
                "Uplink records acknowledged by the broker / failed",
                format!("{} / {}", gateway.acked, gateway.failed),
                gateway.failed > 0,
            ));
            if let Some(ack) = &gateway.kafka_ack {
                rows.push((
                    "The broker's acknowledgement of the gateways' records",
                    format!(
                        "mean {} ms, p50 {} ms, p99 {} ms",
                        number(ack.mean_ms),
                        number(ack.p50_ms),
                        number(ack.p99_ms)
                    ),
                    false,
                ));
            }
            rows.push((
                "Downlink messages the gateways wrote to cars",
                gateway.downlink_written.to_string(),
                false,
            ));
        }
        if let Some(read) = verdict.router_requests {
            rows.push(("Downlink requests the router read", read.to_string(), false));
        }
        if let Some(probe) = &verdict.probe {
            rows.push((
                "The broker alone (probe beside the fleet)",
                format!(
                    "p50 {} ms, p99 {} ms, max {} ms; {} of {} records read back",
                    number(probe.p50_ms),
                    number(probe.p99_ms),
                    number(probe.max_ms),
                    probe.received,
                    probe.sent
                ),
                probe.received < probe.sent,
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    page.push_str("<h2>Server side</h2>\n<table class=\"server\">\n");
    for (name, value, bad) in rows {
        let class = if bad { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            page,
            "<tr><th>{name}</th><td{class}>{}</td></tr>",
            escape(&value)
        );
    }
    page.push_str("</table>\n");
}

fn cpu_figure(cpu: &CpuUse) -> String {
    let per = cpu.us_per_publish.map_or_else(
        || "no PUBLISH".to_owned(),
        |us| format!("{} µs", number(us)),
    );
    format!(
        "{per} ({} % of one core over {} s; {} PUBLISH{})",
        number(cpu.core_percent),
        number(cpu.secs),
        cpu.publish,
        cpu.downlink
            .map_or_else(String::new, |n| format!(", {n} downlink messages"))
    )
}

/// The stack the run went through.
fn write_setup(page: &mut String, report: &Report, stack: &Stack) {
    let tls = match (stack.tls, stack.tls_resume) {
        (false, _) => "no (plain TCP)".to_owned(),
        (true, false) => "mutual TLS, each car with its own certificate".to_owned(),
        (true, true) => {
            "mutual TLS, each car with its own certificate; sessions resumed".to_owned()
        }
    };
    let rows = [
        ("Broker", stack.broker_detail.clone()),
        ("TLS", tls),
        (
            "Gateways",
            format!(
                "{} × {} shard{}",
                stack.gateways,
                stack.shards,
                if stack.shards == 1 { "" } else { "s" }
            ),
        ),
        ("Cars", report.connect.cars.to_string()),
        (
            "Fetch wait (router, gateways)",
            format!("{} ms", stack.fetch_wait_ms),
        ),
        ("Build", stack.profile.clone()),
    ];
    page.push_str("<h2>Setup</h2>\n<table class=\"setup\">\n");
    for (name, value) in rows {
        let _ = writeln!(page, "<tr><th>{name}</th><td>{}</td></tr>", escape(&value));
    }
    page.push_str("</table>\n");
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}
