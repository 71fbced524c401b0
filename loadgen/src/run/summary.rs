//! The end of a run: the report from what was counted, and the human
//! summary of a report.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::progress::Progress;
use super::uplink::Uplink;
use super::{Options, Times};
use crate::report::{ConnectStats, FlowStats, Machine, REPORT_VERSION, Report, Stages, TopicCount};
use crate::stats::latency;

/// The report of a run: `progress` (the workers' totals and the
/// timeline), what arrived on the `uplink` side, the downlink messages
/// sent, and the recount of the uplink topic if asked.
pub(super) fn report(
    options: &Options,
    times: &Times,
    progress: Progress,
    uplink: &Uplink,
    downlink_sent: u64,
    in_topic: Option<TopicCount>,
) -> Report {
    let Progress { totals, timeline } = progress;
    let measured_secs = options.duration_secs as f64;
    Report {
        version: REPORT_VERSION,
        verdict: None,
        stack: None,
        started_at: rfc3339(times.started_us),
        machine: machine(),
        mode: if options.peer {
            "peer"
        } else if options.raw_kafka {
            "raw-kafka"
        } else {
            "gateway"
        }
        .to_owned(),
        options: options.described.clone(),
        warmup_secs: options.warmup_secs as f64,
        measured_secs,
        connect: ConnectStats {
            cars: options.cars,
            connected: totals.connects,
            failed: totals.connect_failures,
            asked_rate: options.connect_rate,
            achieved_rate: totals.connects as f64 / totals.connect_span_secs(),
            latency: latency(&totals.connect_latency),
            failed_by: totals.failed_by,
        },
        uplink: FlowStats {
            asked_rate: options.uplink_rate(),
            achieved_rate: totals.uplink_sent_window as f64 / measured_secs.max(1.0),
            sent: totals.uplink_sent,
            received: uplink.arrivals.unique,
            lost: totals.uplink_sent.saturating_sub(uplink.arrivals.unique),
            duplicates: uplink.arrivals.duplicates,
            out_of_order: uplink.arrivals.out_of_order,
            latency: latency(&uplink.window),
            stages: (!uplink.bridge.is_empty()).then(|| Stages {
                bridge: latency(&uplink.bridge),
                kafka: latency(&uplink.kafka),
            }),
        },
        downlink: (downlink_sent > 0 || (options.downlink_rate > 0.0 && !options.raw_kafka)).then(
            || FlowStats {
                asked_rate: options.downlink_rate,
                achieved_rate: downlink_sent as f64 / measured_secs.max(1.0),
                sent: downlink_sent,
                received: totals.downlink_received,
                lost: downlink_sent.saturating_sub(totals.downlink_received),
                duplicates: totals.downlink_duplicates,
                out_of_order: totals.downlink_out_of_order,
                latency: latency(&totals.downlink_latency),
                stages: None,
            },
        ),
        other_downlink: totals.other_downlink,
        dropped_connections: totals.dropped,
        receipts: None,
        uplink_in_topic: in_topic,
        timeline,
    }
}

fn machine() -> Machine {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    Machine {
        hostname: read("/proc/sys/kernel/hostname"),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        kernel: read("/proc/sys/kernel/osrelease"),
    }
}

/// `us` since the epoch as RFC 3339 UTC, to the second.
fn rfc3339(us: u64) -> String {
    i64::try_from(us / 1_000_000)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Microseconds as milliseconds.
pub(super) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The human summary printed at the end.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.connect;
    let line = |name: &str, f: &FlowStats| {
        let stages = f.stages.as_ref().map_or(String::new(), |s| {
            format!(
                "          of which to the gateway's producer (the bridge) p50 {:.2} p99 {:.2}; \
                 in Kafka (batching, broker, fetch) p50 {:.2} p99 {:.2} (ms resolution)\n",
                s.bridge.p50_ms, s.bridge.p99_ms, s.kafka.p50_ms, s.kafka.p99_ms
            )
        });
        format!(
            "{name:9} asked {:.0}/s, sent {:.0}/s; sent {} received {} lost {} duplicated {} out of order {}\n          latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n{stages}",
            f.asked_rate,
            f.achieved_rate,
            f.sent,
            f.received,
            f.lost,
            f.duplicates,
            f.out_of_order,
            f.latency.p50_ms,
            f.latency.p90_ms,
            f.latency.p99_ms,
            f.latency.p999_ms,
            f.latency.max_ms
        )
    };
    out.push_str(&format!(
        "loadgen {} mode, {} cars, {:.0} s measured after {:.0} s warm-up ({}, {} CPUs)\n",
        report.mode,
        c.cars,
        report.measured_secs,
        report.warmup_secs,
        report.machine.hostname,
        report.machine.cpus
    ));
    out.push_str(&format!(
        "connect   {} of {} connected, {} failed; {:.0} cars/s (asked {:.0}); latency ms p50 {:.2} p99 {:.2} max {:.2}\n",
        c.connected, c.cars, c.failed, c.achieved_rate, c.asked_rate, c.latency.p50_ms, c.latency.p99_ms, c.latency.max_ms
    ));
    if !c.failed_by.is_empty() {
        out.push_str(&format!("          failed: {}\n", c.failed_by.describe()));
    }
    out.push_str(&line("uplink", &report.uplink));
    if let Some(downlink) = &report.downlink {
        out.push_str(&line("downlink", downlink));
    }
    if let Some(r) = &report.receipts {
        let outcomes: Vec<String> = r.outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        out.push_str(&format!(
            "receipts  {} asked, {} answered, {} missing, {} duplicated; {}; request to receipt ms p50 {:.2} p99 {:.2} max {:.2}\n",
            r.asked,
            r.answered,
            r.missing,
            r.duplicates,
            if outcomes.is_empty() { "none".to_owned() } else { outcomes.join(", ") },
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms
        ));
        if !r.by_class.is_empty() {
            let share = |class: &str| {
                let outcomes = r.by_class.get(class);
                let total: u64 = outcomes.map_or(0, |o| o.values().sum());
                let written = outcomes
                    .and_then(|o| o.get("written"))
                    .copied()
                    .unwrap_or(0);
                (written, total, 100.0 * written as f64 / total.max(1) as f64)
            };
            let ((hw, ht, hp), (pw, pt, pp)) = (share("held"), share("plain"));
            out.push_str(&format!(
                "holding   delivered: asked to be held {hw} of {ht} ({hp:.1} %), not held {pw} of {pt} ({pp:.1} %)\n"
            ));
        }
    }
    if let Some(count) = &report.uplink_in_topic {
        out.push_str(&format!(
            "recount   {} uplink records in the topic, {} distinct, {} repeated\n",
            count.records, count.unique, count.duplicates
        ));
    }
    if report.other_downlink > 0 {
        out.push_str(&format!(
            "other     {} messages to cars from other services (such as DL/WARN)\n",
            report.other_downlink
        ));
    }
    if report.dropped_connections > 0 {
        out.push_str(&format!(
            "closed    {} car connections closed by the server or failed while publishing\n",
            report.dropped_connections
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::run::progress::Totals;
    use crate::stats::histogram;

    fn options() -> Options {
        Options {
            cars: 100,
            targets: Vec::new(),
            connect_rate: 50.0,
            publish_interval_ms: 500,
            keep_alive_secs: None,
            payload_size: 64,
            topic: "UL/POS".to_owned(),
            subscribe: None,
            warmup_secs: 2,
            duration_secs: 4,
            kafka_bootstrap: None,
            kafka_topic: String::new(),
            downlink_topic: String::new(),
            downlink_rate: 0.0,
            receipts_topic: None,
            peer: false,
            raw_kafka: false,
            recount: false,
            peer_subscribers: 1,
            sources: Vec::new(),
            cars_per_source: 1,
            cars_per_worker: 1,
            described: vec![("cars".to_owned(), "100".to_owned())],
            quiet: true,
            tls: None,
            reconnect: false,
            churn: 0.0,
            hold_secs: None,
            link: None,
        }
    }

    fn times() -> Times {
        Times {
            started_us: 1_773_480_413_250_000,
            start_us: 1_773_480_413_750_000,
            measure_from_us: 1_773_480_415_750_000,
            end_us: 1_773_480_419_750_000,
        }
    }

    fn progress() -> Progress {
        let mut totals = Totals::new();
        let mut window = histogram();
        window.record_n(4_000, 6).unwrap();
        totals.connects = 98;
        totals.connect_failures = 2;
        totals.first_connack_us = Some(1_000_000);
        totals.last_connack_us = 3_000_000;
        totals.uplink_sent = 900;
        totals.uplink_sent_window = 800;
        totals.downlink_received = 7;
        totals.downlink_duplicates = 1;
        totals.downlink_out_of_order = 2;
        totals.downlink_latency = window;
        totals.dropped = 3;
        totals.other_downlink = 4;
        Progress {
            totals,
            timeline: Vec::new(),
        }
    }

    #[test]
    fn the_report_takes_its_figures_from_the_totals_and_the_arrivals() {
        // Every arrival is of this run and in its window.
        let mut uplink = Uplink::new(&Times {
            started_us: 0,
            start_us: 0,
            measure_from_us: 0,
            end_us: u64::MAX,
        });
        for seq in [1, 2, 2, 3] {
            let sent = crate::payload::now_us();
            let payload = crate::payload::encode(0, seq, sent, 64);
            uplink.arrive(&payload, Some(sent + 1_000));
        }
        let report = report(&options(), &times(), progress(), &uplink, 10, None);
        assert_eq!(report.started_at, "2026-03-14T09:26:53Z");
        assert_eq!(report.mode, "gateway");
        assert_eq!((report.warmup_secs, report.measured_secs), (2.0, 4.0));
        assert_eq!((report.connect.connected, report.connect.failed), (98, 2));
        assert!((report.connect.achieved_rate - 49.0).abs() < 1e-9);
        let up = &report.uplink;
        assert!((up.asked_rate - 200.0).abs() < 1e-9);
        assert!((up.achieved_rate - 200.0).abs() < 1e-9);
        assert_eq!((up.sent, up.received, up.lost), (900, 3, 897));
        assert_eq!((up.duplicates, up.out_of_order), (1, 0));
        assert_eq!(up.latency.count, 3);
        assert!(up.stages.is_some());
        let down = report.downlink.unwrap();
        assert_eq!((down.sent, down.received, down.lost), (10, 7, 3));
        assert_eq!((down.duplicates, down.out_of_order), (1, 2));
        assert!((down.achieved_rate - 2.5).abs() < 1e-9);
        assert_eq!(down.latency.count, 6);
        assert_eq!((report.dropped_connections, report.other_downlink), (3, 4));
        // No downlink asked or sent: none in the report; raw mode never has one.
        let none = report_with(&options(), 0);
        assert!(none.downlink.is_none());
        let asked = Options {
            downlink_rate: 5.0,
            ..options()
        };
        assert!(report_with(&asked, 0).downlink.is_some());
        let raw = Options {
            raw_kafka: true,
            ..asked
        };
        let raw = report_with(&raw, 0);
        assert_eq!(raw.mode, "raw-kafka");
        assert!(raw.downlink.is_none());
    }

    #[test]
    fn the_summary_says_why_connects_failed() {
        let mut report = report_with(&options(), 0);
        assert!(!summary(&report).contains("failed:"), "no causes, no line");
        report.connect.failed_by.refused = 1;
        report.connect.failed_by.no_connack = 2;
        let text = summary(&report);
        assert!(
            text.contains("failed: 1 refused or closed, 2 no CONNACK within 10 s\n"),
            "{text}"
        );
    }

    fn report_with(options: &Options, downlink_sent: u64) -> Report {
        let uplink = Uplink::new(&times());
        report(options, &times(), progress(), &uplink, downlink_sent, None)
    }

    #[test]
    fn the_start_time_is_rfc3339_utc_to_the_second() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // Microseconds are cut, not rounded.
        assert_eq!(rfc3339(951_825_600_999_999), "2000-02-29T12:00:00Z");
        assert_eq!(rfc3339(1_773_480_413_250_000), "2026-03-14T09:26:53Z");
        assert_eq!(rfc3339(4_107_542_399_000_000), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400_000_000), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799_000_000), "9999-12-31T23:59:59Z");
    }
}
