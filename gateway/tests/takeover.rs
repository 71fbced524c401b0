//! The same client id twice on one gateway: the newer connection wins and
//! the older is closed, whether the two landed on the same shard or not.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use codec::Packet;
use common::{config, total};
use gateway::Gateway;
use gateway::session::CloseKind;
use testkit::{Broker, RawClient, WAIT};

/// With 2 shards, the kernel places each connection by its source port;
/// the chance that no pair lands on different shards is about 2^-20.
const PAIRS: usize = 20;

#[test]
fn the_newer_connection_wins_across_shards() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let gateway = Gateway::start(config(&broker, 2)).unwrap();
    let addr = gateway.local_addr();

    for pair in 0..PAIRS {
        let id = format!("VIN-TWICE-{pair}");
        let (mut older, code) = RawClient::connect(addr, &id, 60);
        assert_eq!(code, 0);
        let (mut newer, code) = RawClient::connect(addr, &id, 60);
        assert_eq!(code, 0);
        // The older connection is closed without a word.
        assert_eq!(
            older.expect_closed(Duration::from_secs(5)),
            b"",
            "pair {pair}"
        );
        // The newer one keeps working.
        newer.send(&codec::packet::PINGREQ);
        assert_eq!(newer.next_packet(), Some(Packet::PingResp), "pair {pair}");
        newer.publish("UL/POS", id.as_bytes());
        newer.disconnect();
    }
    let records = broker.collector("cs.uplink").collect(PAIRS, WAIT);
    assert!(
        records.iter().all(|r| r.key == r.value),
        "each newer connection's publish arrives"
    );

    assert_eq!(
        total(&gateway, |m| m.closed.get(CloseKind::TakenOver)),
        PAIRS as u64
    );
    // Both shards closed some older connections.
    for (shard, metrics) in gateway.metrics().iter().enumerate() {
        assert!(
            metrics.closed.get(CloseKind::TakenOver) > 0,
            "shard {shard}"
        );
    }
    gateway.stop().unwrap();
}
