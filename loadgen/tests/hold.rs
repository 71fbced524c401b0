//! `loadgen --hold` with `--churn`: cars come and go while downlink
//! messages arrive for them; of those that asked to be held, the share that
//! reaches its car is far above that of those that did not. Real broker,
//! router and gateway processes, loadgen's own cars.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{Fleet, gateway, router, topics};
use testkit::Broker;

#[test]
fn holding_delivers_more_to_churning_cars() {
    let broker = Broker::start();
    topics(&broker, 4, 2);
    let _router = router(&broker);
    let (_gateway, mqtt) = gateway(&broker, 0, None);
    let report = Fleet::start(
        &broker,
        &[mqtt],
        &[
            "--cars",
            "60",
            "--publish-interval-ms",
            "5000",
            "--downlink-rate",
            "40",
            "--receipts",
            "--churn",
            "20",
            "--hold",
            "10",
            "--warmup-secs",
            "3",
            "--duration-secs",
            "15",
        ],
    )
    .report();
    let receipts = report.receipts.expect("receipts were asked");
    assert_eq!(receipts.missing, 0, "{receipts:?}");
    let share = |class: &str| {
        let outcomes = &receipts.by_class[class];
        let total: u64 = outcomes.values().sum();
        let written = outcomes.get("written").copied().unwrap_or(0);
        (written as f64 / total as f64, outcomes.clone())
    };
    let (held, held_outcomes) = share("held");
    let (plain, plain_outcomes) = share("plain");
    // The churn made some cars miss plain messages...
    assert!(
        plain_outcomes.get("offline").copied().unwrap_or(0) > 0,
        "no car was away: {plain_outcomes:?}"
    );
    // ... which holding would have delivered.
    assert!(
        held >= 0.95 && held > plain,
        "held {held:.3} ({held_outcomes:?}) against plain {plain:.3} ({plain_outcomes:?})"
    );
    // Every held request that waited said so first.
    assert!(receipts.progress.get("held").copied().unwrap_or(0) > 0);
}
