#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::golden::{bare, full};
use crate::report::ReceiptStats;

/// A gateway's page: every uplink record of `full()` acknowledged (20,396
/// sent), none failed, and the downlink's two gateway hops.
pub(crate) fn gateway_page(acked: u64, failed: u64) -> String {
    format!(
        "# TYPE carbridge_gateway_publish_acked_total counter
carbridge_gateway_publish_acked_total {acked}
carbridge_gateway_publish_failed_total{{reason=\"timeout\"}} {failed}
carbridge_gateway_downlink_delivered_total 1199
carbridge_gateway_kafka_ack_seconds_bucket{{le=\"0.005\"}} 15000
carbridge_gateway_kafka_ack_seconds_bucket{{le=\"0.01\"}} 20000
carbridge_gateway_kafka_ack_seconds_bucket{{le=\"+Inf\"}} {acked}
carbridge_gateway_kafka_ack_seconds_sum 80
carbridge_gateway_kafka_ack_seconds_count {acked}
carbridge_gateway_downlink_age_at_read_seconds_bucket{{le=\"0.002\"}} 600
carbridge_gateway_downlink_age_at_read_seconds_bucket{{le=\"0.005\"}} 1199
carbridge_gateway_downlink_age_at_read_seconds_bucket{{le=\"+Inf\"}} 1199
carbridge_gateway_downlink_age_at_read_seconds_sum 2.4
carbridge_gateway_downlink_age_at_read_seconds_count 1199
carbridge_gateway_downlink_write_seconds_bucket{{le=\"0.0001\"}} 1100
carbridge_gateway_downlink_write_seconds_bucket{{le=\"0.001\"}} 1199
carbridge_gateway_downlink_write_seconds_bucket{{le=\"+Inf\"}} 1199
carbridge_gateway_downlink_write_seconds_sum 0.12
carbridge_gateway_downlink_write_seconds_count 1199
"
    )
}

/// The router's page: `read` requests read, and its two hops.
pub(crate) fn router_page(read: u64) -> String {
    format!(
        "carbridge_router_requests_received_total {read}
carbridge_router_request_age_at_read_seconds_bucket{{le=\"0.002\"}} 700
carbridge_router_request_age_at_read_seconds_bucket{{le=\"0.005\"}} 1199
carbridge_router_request_age_at_read_seconds_bucket{{le=\"+Inf\"}} 1199
carbridge_router_request_age_at_read_seconds_sum 2.0
carbridge_router_request_age_at_read_seconds_count 1199
carbridge_router_request_age_at_routing_seconds_bucket{{le=\"0.002\"}} 500
carbridge_router_request_age_at_routing_seconds_bucket{{le=\"0.005\"}} 1199
carbridge_router_request_age_at_routing_seconds_bucket{{le=\"+Inf\"}} 1199
carbridge_router_request_age_at_routing_seconds_sum 2.6
carbridge_router_request_age_at_routing_seconds_count 1199
"
    )
}

pub(crate) fn probe(p99_ms: f64) -> Probe {
    Probe {
        sent: 1_200,
        received: 1_200,
        p50_ms: 1.4,
        p99_ms,
        max_ms: p99_ms * 2.0,
    }
}

/// The inputs of a run on a broker that kept up, its metrics saying that
/// 5 uplink records failed.
pub(crate) fn inputs() -> Inputs {
    Inputs {
        broker: "tansu (memory://tansu/)".to_owned(),
        probe: Some(probe(6.5)),
        gateway: Some(Metrics::parse(&gateway_page(20_391, 5))),
        router: Some(Metrics::parse(&router_page(1_199))),
        load: Some(Load {
            average: 1.5,
            cores: 2,
        }),
    }
}

#[test]
fn nothing_lost_and_every_goal_met_is_healthy() {
    let verdict = judge(&bare(), &Inputs::default());
    assert_eq!(verdict.outcome, Outcome::Healthy);
    assert_eq!(exit_code(verdict.outcome), 0);
    assert_eq!(
        verdict.headline,
        "HEALTHY: nothing lost, every latency goal met."
    );
    assert_eq!(verdict.lost, 0);
    assert_eq!(verdict.goals.len(), 1);
    assert!(verdict.goals[0].met);
    // No Kafka stages, no probe: nothing to split the latency by.
    assert!(verdict.shares.is_empty());
    assert!(verdict.findings.is_empty());
}

#[test]
fn a_loss_while_the_broker_kept_up_is_lost() {
    let verdict = judge(&full(), &inputs());
    assert_eq!(verdict.outcome, Outcome::Lost);
    assert_eq!(exit_code(verdict.outcome), 3);
    assert_eq!(verdict.lost, 5);
    assert!(verdict.headline.starts_with("LOST: 5 messages"));
    assert!(verdict.headline.contains("probe p99 6 ms"));
    // Without any other input the verdict is the same.
    let alone = judge(&full(), &Inputs::default());
    assert_eq!(alone.outcome, Outcome::Lost);
    assert!(alone.headline.contains("without a probe"));
}

#[test]
fn a_loss_with_a_slow_broker_is_overloaded() {
    let slow = Inputs {
        probe: Some(probe(300.0)),
        ..inputs()
    };
    let verdict = judge(&full(), &slow);
    assert_eq!(verdict.outcome, Outcome::Overloaded);
    assert_eq!(exit_code(verdict.outcome), 4);
    assert!(
        verdict
            .headline
            .starts_with("OVERLOADED BROKER: 5 messages")
    );
    // A probe that lost records of its own says the same.
    let short = Inputs {
        probe: Some(Probe {
            received: 1_100,
            ..probe(6.5)
        }),
        ..inputs()
    };
    assert_eq!(judge(&full(), &short).outcome, Outcome::Overloaded);
}

#[test]
fn uplink_records_all_acknowledged_but_not_read_back_blame_the_broker() {
    let acked = Inputs {
        gateway: Some(Metrics::parse(&gateway_page(20_396, 0))),
        ..inputs()
    };
    let verdict = judge(&full(), &acked);
    assert_eq!(verdict.outcome, Outcome::Overloaded);
    assert!(verdict.findings[0].contains("every uplink record was acknowledged"));
}

#[test]
fn downlink_requests_the_router_never_read_blame_the_broker() {
    let mut report = full();
    report.uplink.lost = 0;
    let downlink = report.downlink.as_mut().unwrap();
    downlink.lost = 9;
    let read_them_all = judge(&report, &inputs());
    assert_eq!(read_them_all.outcome, Outcome::Lost);
    assert_eq!(read_them_all.lost, 9);
    let short = Inputs {
        router: Some(Metrics::parse(&router_page(1_190))),
        ..inputs()
    };
    let verdict = judge(&report, &short);
    assert_eq!(verdict.outcome, Outcome::Overloaded);
    assert!(verdict.findings[0].contains("the router read 1,190 requests"));
}

#[test]
fn downlink_messages_answered_by_a_receipt_are_not_lost() {
    let mut report = full();
    report.uplink.lost = 0;
    report.downlink.as_mut().unwrap().lost = 4;
    let receipts = |missing, offline| ReceiptStats {
        asked: 1_199,
        answered: 1_199 - missing,
        missing,
        duplicates: 0,
        unreadable: 0,
        outcomes: [
            ("written".to_owned(), 1_195),
            ("offline".to_owned(), offline),
        ]
        .into_iter()
        .collect(),
        progress: std::collections::BTreeMap::new(),
        by_class: std::collections::BTreeMap::new(),
        latency: report.uplink.latency.clone(),
    };
    report.receipts = Some(receipts(0, 4));
    let verdict = judge(&report, &inputs());
    assert_eq!(verdict.outcome, Outcome::Healthy);
    assert_eq!(verdict.lost, 0);
    assert!(verdict.findings[0].contains("answered with a receipt"));
    // A receipt missing: the loss stands.
    report.receipts = Some(receipts(1, 4));
    assert_eq!(judge(&report, &inputs()).outcome, Outcome::Lost);
    // Fewer answered than lost: so does it.
    report.receipts = Some(receipts(0, 3));
    assert_eq!(judge(&report, &inputs()).lost, 4);
}

#[test]
fn a_missed_goal_without_loss_is_healthy_and_says_where_the_time_went() {
    let mut report = full();
    report.uplink.lost = 0;
    report.uplink.latency.p99_ms = 60.0;
    let verdict = judge(&report, &inputs());
    assert_eq!(verdict.outcome, Outcome::Healthy);
    assert!(!verdict.goals[0].met);
    assert!(verdict.goals[1].met);
    assert!(
        verdict
            .headline
            .starts_with("HEALTHY: nothing lost. The uplink p99 goal is missed")
    );
    report.downlink.as_mut().unwrap().latency.p99_ms = 25.0;
    let both = judge(&report, &inputs());
    assert!(
        both.headline
            .contains("uplink and downlink p99 goals are missed")
    );
    // The broker slow as well: the latencies are its.
    let slow = Inputs {
        probe: Some(probe(400.0)),
        ..inputs()
    };
    let verdict = judge(&report, &slow);
    assert_eq!(verdict.outcome, Outcome::Healthy);
    assert!(verdict.headline.starts_with("HEALTHY BUT SLOW"));
}

#[test]
fn the_latency_is_split_between_the_bridge_and_the_broker() {
    let verdict = judge(&full(), &inputs());
    let up = &verdict.shares[0];
    assert_eq!(
        (up.flow.as_str(), up.basis),
        ("uplink", ShareBasis::Measured)
    );
    assert_eq!(up.bridge_p50_ms, 0.82);
    assert_eq!(up.broker_p50_ms, 1.63);
    // The downlink has no Kafka timestamp to split at: two probe hops.
    let down = &verdict.shares[1];
    assert_eq!(down.basis, ShareBasis::Estimated);
    assert!((down.broker_p50_ms - 2.8).abs() < 1e-9);
    assert!((down.broker_p99_ms - 13.0).abs() < 1e-9);
    assert_eq!(down.bridge_p50_ms, 0.0); // 0.96 ms median, below two hops
    assert!(down.bridge_p99_ms.is_none());
    // The hops by their means: router 0.5 ms, gateway 0.1 ms, Kafka 3.7 ms.
    let hops = verdict.downlink_hops.unwrap();
    assert_eq!(hops.hops.len(), 4);
    assert!((hops.router_ms - 0.5).abs() < 1e-3);
    assert!((hops.gateway_ms - 0.1).abs() < 1e-3);
    assert!((hops.kafka_ms - 3.6697).abs() < 1e-3);
    let ack = verdict.gateway.unwrap().kafka_ack.unwrap();
    assert_eq!(ack.count, 20_391);
}

#[test]
fn the_text_says_it_all_and_warns_of_a_busy_machine() {
    let mut report = full();
    report.verdict = Some(judge(&report, &inputs()));
    let words = text(&report);
    assert!(words.starts_with("== verdict (broker: tansu (memory://tansu/)) ==\n"));
    assert!(words.contains("uplink    20,396 sent (1,200/s measured), 20,391 arrived, 5 LOST"));
    assert!(words.contains("(goal p99 < 50 ms): met"));
    assert!(
        words
            .trim_end()
            .ends_with("look at the gateway and router logs.")
    );
    assert!(!words.contains("BUSY MACHINE"));
    let busy = Inputs {
        load: Some(Load {
            average: 3.2,
            cores: 2,
        }),
        ..inputs()
    };
    report.verdict = Some(judge(&report, &busy));
    assert!(text(&report).contains("BUSY MACHINE: load average 3.2 on 2 cores"));
    // A report without a verdict has no text.
    assert_eq!(text(&full()), "");
}

#[test]
fn held_delivery_is_reported_per_class() {
    let mut report = full();
    let class = |written: u64, other: (&str, u64)| {
        [
            ("written".to_owned(), written),
            (other.0.to_owned(), other.1),
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
    };
    report.receipts = Some(ReceiptStats {
        asked: 2_000,
        answered: 2_000,
        missing: 0,
        duplicates: 0,
        unreadable: 0,
        outcomes: std::collections::BTreeMap::new(),
        progress: std::collections::BTreeMap::new(),
        by_class: [
            ("held".to_owned(), class(995, ("expired", 5))),
            ("plain".to_owned(), class(900, ("offline", 100))),
        ]
        .into_iter()
        .collect(),
        latency: report.uplink.latency.clone(),
    });
    let verdict = judge(&report, &inputs());
    let finding = verdict
        .findings
        .iter()
        .find(|f| f.starts_with("held delivery"))
        .expect("a held delivery finding");
    assert!(finding.contains("(99.5 %)"), "{finding}");
    assert!(finding.contains("(90.0 %)"), "{finding}");
}
