//! The verdict in words, for the terminal: one line per part, the
//! verdict's sentence last.

use std::fmt::Write;

use crate::report::{FlowStats, Report, Share, ShareBasis};

/// Indent of the lines that continue a part.
const MORE: &str = "         ";

/// The verdict of `report` as the main job prints it; empty without one.
pub fn text(report: &Report) -> String {
    let Some(verdict) = &report.verdict else {
        return String::new();
    };
    let broker = verdict.broker.as_str();
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("== verdict (broker: {broker}) =="));
    let connect = &report.connect;
    let (cars, connected) = (connect.cars, connect.connected);
    line(format!(
        "{}{}",
        if connected > cars {
            format!(
                "cars      {} cars, {} connections ({} of them reconnects)",
                count(cars),
                count(connected),
                count(connected - cars)
            )
        } else {
            format!(
                "cars      {} of {} connected",
                count(connected),
                count(cars)
            )
        },
        if connect.failed > 0 {
            format!(", {} FAILED", count(connect.failed))
        } else {
            String::new()
        }
    ));
    let flows = std::iter::once(("uplink", &report.uplink, 1))
        .chain(report.downlink.as_ref().map(|d| ("downlink", d, 2)));
    for (name, flow, hops) in flows {
        let goal = verdict.goals.iter().find(|g| g.flow == name);
        let share = verdict.shares.iter().find(|s| s.flow == name);
        for text in flow_lines(
            name,
            flow,
            goal.map(|g| (g.p99_limit_ms, g.met)),
            share,
            hops,
        ) {
            line(text);
        }
    }
    if let Some(r) = &report.receipts {
        let shown: Vec<String> = r
            .outcomes
            .iter()
            .map(|(name, n)| format!("{name} {}", count(*n)))
            .collect();
        line(format!(
            "receipts  {} asked, {} answered ({}), {}{}; request to receipt p50 {:.1} ms, p99 {:.1} ms",
            count(r.asked),
            count(r.answered),
            if shown.is_empty() {
                "none".to_owned()
            } else {
                shown.join(", ")
            },
            if r.missing > 0 {
                format!("{} MISSING", count(r.missing))
            } else {
                "none missing".to_owned()
            },
            if r.duplicates > 0 {
                format!(", {} repeated", count(r.duplicates))
            } else {
                String::new()
            },
            r.latency.p50_ms,
            r.latency.p99_ms
        ));
    }
    if let Some(p) = &verdict.probe {
        line(format!(
            "probe     {} records through {broker} alone: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
            count(p.sent),
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            if p.received >= p.sent {
                String::new()
            } else {
                format!(", {} not read back", count(p.sent - p.received))
            }
        ));
    }
    if let Some(g) = &verdict.gateway {
        line(format!(
            "gateway   {} records acknowledged by {broker}, {} failed, {} downlink messages written to cars",
            count(g.acked),
            count(g.failed),
            count(g.downlink_written)
        ));
        if let Some(ack) = &g.kafka_ack {
            line(format!(
                "{MORE} Kafka's acknowledgement of the gateways' records (the gateway's share of \
                 the uplink, no consumer): mean {:.1} ms, p50 {:.1} ms, p99 {:.1} ms (bucketed)",
                ack.mean_ms, ack.p50_ms, ack.p99_ms
            ));
        }
    }
    if let Some(received) = verdict.router_requests {
        line(format!(
            "router    {} downlink requests read from {broker}",
            count(received)
        ));
    }
    if let Some(h) = &verdict.downlink_hops {
        line(format!(
            "{MORE} hops, from the router's and gateway's histograms (whole run, bucketed):"
        ));
        for hop in &h.hops {
            let l = &hop.latency;
            line(format!(
                "{MORE}   {:<46} mean {:6.1} ms, p50 {:6.1} ms, p99 {:6.1} ms",
                hop.name, l.mean_ms, l.p50_ms, l.p99_ms
            ));
        }
        line(format!(
            "{MORE}   by the means: the bridge's own share {:.1} ms (router {:.1}, gateway {:.1}), \
             Kafka's two hops {:.1} ms",
            h.router_ms + h.gateway_ms,
            h.router_ms,
            h.gateway_ms,
            h.kafka_ms
        ));
    }
    for finding in &verdict.findings {
        line(format!("{MORE} {finding}"));
    }
    line(verdict.headline.clone());
    if let Some(load) = verdict.load.filter(|l| l.busy()) {
        line(format!(
            "BUSY MACHINE: load average {:.1} on {} cores at the end of the run: the fleet, the \
             broker and the bridge competed for CPU, so the latencies above are bent by it; \
             compare figures only between runs on a quiet machine.",
            load.average, load.cores
        ));
    }
    out
}

/// One direction: what arrived, its latency against the goal, and whose
/// the latency is.
fn flow_lines(
    name: &str,
    flow: &FlowStats,
    goal: Option<(f64, bool)>,
    share: Option<&Share>,
    hops: u32,
) -> Vec<String> {
    let latency = &flow.latency;
    let mut lines = vec![format!(
        "{name:<9} {} sent ({}/s measured), {} arrived, {}",
        count(flow.sent),
        count(flow.achieved_rate.max(0.0).round() as u64),
        count(flow.received),
        if flow.lost == 0 {
            "none lost".to_owned()
        } else {
            format!("{} LOST", count(flow.lost))
        }
    )];
    let mut latency_line = format!(
        "{MORE} latency p50 {:.1} ms, p99 {:.1} ms",
        latency.p50_ms, latency.p99_ms
    );
    if let Some((limit, met)) = goal {
        let _ = write!(
            latency_line,
            " (goal p99 < {limit:.0} ms): {}",
            if met { "met" } else { "missed" }
        );
    }
    lines.push(latency_line);
    match share {
        Some(
            s @ Share {
                basis: ShareBasis::Measured,
                ..
            },
        ) => {
            // Split at each record's Kafka timestamp: measured, not estimated.
            lines.push(format!(
                "{MORE} the bridge (car -> gateway -> its producer): p50 {:.1} ms, p99 {:.1} ms",
                s.bridge_p50_ms,
                s.bridge_p99_ms.unwrap_or(f64::NAN)
            ));
            lines.push(format!(
                "{MORE} Kafka (producer batching, broker, consumer fetch): p50 {:.1} ms, p99 {:.1} ms",
                s.broker_p50_ms, s.broker_p99_ms
            ));
        }
        Some(s) => {
            let where_ = if hops == 1 {
                "one hop".to_owned()
            } else {
                format!("{hops} hops")
            };
            lines.push(format!(
                "{MORE} the broker's part, estimated ({where_} at the probe's figures, a quiet \
                 topic of its own): p50 {:.1} ms, p99 {:.1} ms",
                s.broker_p50_ms, s.broker_p99_ms
            ));
            lines.push(format!(
                "{MORE} the rest (the bridge, the clients, and whatever the busy topics cost the \
                 broker beyond the probe's): about {:.1} ms at the median",
                s.bridge_p50_ms
            ));
        }
        None => {}
    }
    lines
}

/// A count with thousands separators: 12,345.
pub(super) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(21_600), "21,600");
        assert_eq!(count(1_234_567), "1,234,567");
    }
}
