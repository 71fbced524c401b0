//! Thousands of concurrent connections spread over every shard, each
//! publishing: every message is in Kafka exactly once.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use common::{config, total};
use gateway::Gateway;
use testkit::{Broker, RawClient, WAIT, java_partition};

const CARS: usize = 3000;

#[test]
fn every_car_publishes_exactly_once() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 4, &[]);
    let gateway = Gateway::start(config(&broker, 2)).unwrap();
    let addr = gateway.local_addr();

    // All connections open at once before anyone publishes.
    let mut cars: Vec<(String, RawClient)> = (0..CARS)
        .map(|i| {
            let id = format!("VIN{i:014}");
            let (client, code) = RawClient::connect(addr, &id, 60);
            assert_eq!(code, 0, "{id} refused");
            (id, client)
        })
        .collect();
    assert_eq!(
        total(&gateway, |m| u64::try_from(
            m.connections_open.load(Ordering::Relaxed)
        )
        .unwrap()),
        CARS as u64
    );
    for (id, client) in &mut cars {
        client.publish("UL/POS", format!("position of {id}").as_bytes());
    }
    for (_, client) in cars {
        client.disconnect();
    }

    let collector = broker.collector("cs.uplink");
    let records = collector.collect(CARS, WAIT);
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for record in &records {
        let key = record.key.clone().unwrap();
        let id = String::from_utf8(key.clone()).unwrap();
        assert_eq!(
            record.value.as_deref(),
            Some(format!("position of {id}").as_bytes())
        );
        assert_eq!(record.partition, java_partition(&key, 4));
        *seen.entry(key).or_default() += 1;
    }
    assert_eq!(seen.len(), CARS, "distinct cars");
    assert!(
        seen.values().all(|&n| n == 1),
        "a car's message was duplicated"
    );
    // Nothing beyond the expected records arrives later.
    assert_eq!(
        collector.collect_for(std::time::Duration::from_secs(1)),
        vec![]
    );

    // The kernel spread the connections over both shards.
    for (shard, metrics) in gateway.metrics().iter().enumerate() {
        let accepted = metrics.connections_accepted.load(Ordering::Relaxed);
        assert!(
            accepted > CARS as u64 / 10,
            "shard {shard} accepted only {accepted}"
        );
    }
    gateway.stop().unwrap();
}
