//! The report's renderings (the summary text, the JSON report, the HTML
//! page and, after `loadgen verdict`, the verdict's text) of three fixed
//! reports, pinned byte for byte against
//! `tests/fixtures/`: a change of output shows here as a diff to review.
//! `LOADGEN_BLESS=1 cargo test -p loadgen --lib golden` rewrites the
//! fixtures from the current code.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::PathBuf;

use crate::report::{
    ConnectStats, CpuUse, FlowStats, Latency, Machine, MemoryUse, REPORT_VERSION, Report, Stack,
    Stages, Tick, TopicCount,
};

fn latency(base: f64, count: u64) -> Latency {
    Latency {
        count,
        min_ms: base * 0.31,
        mean_ms: base * 1.27,
        p50_ms: base,
        p90_ms: base * 2.13,
        p99_ms: base * 4.71,
        p999_ms: base * 9.05,
        max_ms: base * 23.4,
        distribution: vec![
            (0.0, base * 0.31),
            (50.0, base),
            (75.0, base * 1.4),
            (90.0, base * 2.13),
            (99.0, base * 4.71),
            (99.9, base * 9.05),
            (99.99, base * 15.2),
            (100.0, base * 23.4),
        ],
    }
}

fn timeline(seconds: u32, warmup: u32, downlink: bool) -> Vec<Tick> {
    (1..=seconds)
        .map(|s| {
            let ramp = u64::from(s.min(warmup + 1));
            Tick {
                t: f64::from(s) + 0.0137 * f64::from(s % 3),
                warmup: s <= warmup,
                connected: 4_000 * ramp,
                uplink_sent: 1_000 * ramp + u64::from(s % 4) * 17,
                uplink_received: 1_000 * ramp - u64::from(s % 5) * 11,
                uplink_p50_ms: 1.5 + 0.1 * f64::from(s % 7),
                uplink_p99_ms: 12.0 + 3.3 * f64::from(s % 6),
                downlink_sent: if downlink && s > warmup { 100 } else { 0 },
                downlink_received: if downlink && s > warmup {
                    99 + u64::from(s % 2)
                } else {
                    0
                },
                downlink_p99_ms: if downlink {
                    4.25 + 0.5 * f64::from(s % 3)
                } else {
                    0.0
                },
            }
        })
        .collect()
}

/// Everything a report can hold: downlink, Kafka stages, a recount, other
/// services' messages and dropped connections.
pub(crate) fn full() -> Report {
    Report {
        version: REPORT_VERSION,
        verdict: None,
        stack: None,
        started_at: "2026-03-14T09:26:53Z".to_owned(),
        machine: Machine {
            hostname: "bench<1>&co".to_owned(),
            cpus: 2,
            kernel: "6.12.0-amd64".to_owned(),
        },
        mode: "gateway".to_owned(),
        options: vec![
            ("cars".to_owned(), "12000".to_owned()),
            ("targets".to_owned(), "127.0.0.1:21883".to_owned()),
            ("topic".to_owned(), "UL/POS".to_owned()),
            ("subscribe".to_owned(), "DL/#".to_owned()),
            ("downlink_rate".to_owned(), "100".to_owned()),
        ],
        warmup_secs: 5.0,
        measured_secs: 12.0,
        connect: ConnectStats {
            cars: 12_000,
            connected: 11_998,
            failed: 2,
            asked_rate: 20_000.0,
            achieved_rate: 13_417.239,
            latency: latency(3.7, 11_998),
            failed_by: Default::default(),
        },
        uplink: FlowStats {
            asked_rate: 1_200.0,
            achieved_rate: 1_199.583,
            sent: 20_396,
            received: 20_391,
            lost: 5,
            duplicates: 3,
            out_of_order: 1,
            latency: latency(2.45, 14_395),
            stages: Some(Stages {
                bridge: latency(0.82, 14_395),
                kafka: latency(1.63, 14_395),
            }),
        },
        downlink: Some(FlowStats {
            asked_rate: 100.0,
            achieved_rate: 99.917,
            sent: 1_199,
            received: 1_199,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            latency: latency(0.96, 1_199),
            stages: None,
        }),
        other_downlink: 37,
        dropped_connections: 4,
        receipts: None,
        uplink_in_topic: Some(TopicCount {
            records: 20_399,
            unique: 20_396,
            duplicates: 3,
        }),
        timeline: timeline(20, 5, true),
    }
}

/// The least a report holds: peer mode, uplink only, nothing else seen.
pub(crate) fn bare() -> Report {
    Report {
        version: REPORT_VERSION,
        verdict: None,
        stack: None,
        started_at: "2025-12-31T23:59:59Z".to_owned(),
        machine: Machine {
            hostname: "host".to_owned(),
            cpus: 16,
            kernel: "6.1.0".to_owned(),
        },
        mode: "peer".to_owned(),
        options: Vec::new(),
        warmup_secs: 1.0,
        measured_secs: 2.0,
        connect: ConnectStats {
            cars: 10,
            connected: 10,
            failed: 0,
            asked_rate: 100.0,
            achieved_rate: 97.5,
            latency: latency(0.4, 10),
            failed_by: Default::default(),
        },
        uplink: FlowStats {
            asked_rate: 1.0,
            achieved_rate: 1.0,
            sent: 30,
            received: 30,
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            latency: latency(0.7, 20),
            stages: None,
        },
        downlink: None,
        other_downlink: 0,
        dropped_connections: 0,
        receipts: None,
        uplink_in_topic: None,
        timeline: timeline(4, 1, false),
    }
}

/// `full()` after `loadgen verdict` on a tansu stack that kept up: the
/// stack's facts and the verdict (LOST: 5 uplink records failed).
pub(crate) fn judged() -> Report {
    let mut report = full();
    report.stack = Some(Stack {
        broker: "tansu".to_owned(),
        broker_detail: "tansu (memory://tansu/)".to_owned(),
        tls: true,
        tls_resume: false,
        gateways: 2,
        shards: 2,
        fetch_wait_ms: 2,
        profile: "release".to_owned(),
        gateway_cpu: Some(CpuUse {
            cpu_ms: 1_830,
            secs: 19.6,
            core_percent: 9.3,
            publish: 20_391,
            us_per_publish: Some(89.7),
            downlink: Some(1_199),
        }),
        gateway_cpu_window: Some(CpuUse {
            cpu_ms: 730,
            secs: 12.0,
            core_percent: 6.1,
            publish: 14_395,
            us_per_publish: Some(50.7),
            downlink: None,
        }),
        gateway_memory: Some(MemoryUse {
            connections: 11_998,
            growth_mib: 27.4,
            idle_mib: 9.8,
            bytes_per_connection: 2_394.6,
        }),
    });
    report.verdict = Some(crate::verdict::judge(
        &report,
        &crate::verdict::tests::inputs(),
    ));
    report
}

/// Compares `actual` with the fixture `name` (or writes it, blessing).
fn pin(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    if std::env::var_os("LOADGEN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (LOADGEN_BLESS=1 writes it)", path.display()));
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .map_or_else(|| "the length".to_owned(), |i| format!("line {}", i + 1));
        panic!("{name} differs from {} at {line}", path.display());
    }
}

#[test]
fn the_summary_text_is_pinned() {
    pin("full.summary.txt", &crate::run::summary(&full()));
    pin("bare.summary.txt", &crate::run::summary(&bare()));
    pin("judged.verdict.txt", &crate::verdict::text(&judged()));
}

#[test]
fn the_json_report_is_pinned() {
    for (name, report) in [
        ("full.json", full()),
        ("bare.json", bare()),
        ("judged.json", judged()),
    ] {
        pin(name, &serde_json::to_string_pretty(&report).unwrap());
    }
}

#[test]
fn the_html_page_is_pinned() {
    pin("full.html", &crate::html::render(&full()));
    pin("bare.html", &crate::html::render(&bare()));
    pin("judged.html", &crate::html::render(&judged()));
}

#[test]
fn a_judged_report_reads_back_as_written() {
    let json = serde_json::to_string_pretty(&judged()).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    assert!(back.stack == judged().stack);
    let (verdict, expected) = (back.verdict.unwrap(), judged().verdict.unwrap());
    assert_eq!(verdict.outcome, expected.outcome);
    assert_eq!(verdict.headline, expected.headline);
    // What matters comes first.
    assert!(json.starts_with("{\n  \"version\": 1,\n  \"verdict\": {\n    \"outcome\": \"LOST\""));
}
