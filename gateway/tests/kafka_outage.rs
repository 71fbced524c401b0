//! Kafka unavailable under load: the broker stops while cars publish and
//! comes back. No crash, bounded memory, reads pause, publishing resumes,
//! and the counters explain every PUBLISH the gateway read.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::{config, resident_kib, total};
use gateway::Gateway;
use testkit::{Broker, RawClient, WAIT, wait_until};

const CARS: usize = 8;
const MAX_IN_FLIGHT: usize = 256 * 1024;

#[test]
fn publishing_survives_a_kafka_outage() {
    let mut broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = config(&broker, 2);
    config.kafka.max_in_flight_bytes = MAX_IN_FLIGHT;
    for (key, value) in [
        ("message.timeout.ms", "60000"),
        ("reconnect.backoff.ms", "50"),
        ("reconnect.backoff.max.ms", "500"),
        ("topic.metadata.refresh.interval.ms", "500"),
    ] {
        config
            .kafka
            .properties
            .insert(key.to_owned(), value.to_owned());
    }
    let gateway = Gateway::start(config).unwrap();
    let addr = gateway.local_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    for car in 0..CARS {
        let (stop, sent, done) = (stop.clone(), sent.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let (mut client, code) = RawClient::connect(addr, &format!("VIN-LOAD-{car}"), 60);
            assert_eq!(code, 0);
            let payload = vec![b'p'; 1024];
            while !stop.load(Ordering::Relaxed) {
                // Blocks while the gateway applies TCP backpressure.
                client.publish("UL/POS", &payload);
                sent.fetch_add(1, Ordering::Relaxed);
            }
            client.disconnect();
            let _ = done.send(car);
        });
    }
    let acked = |g: &Gateway| total(g, |m| m.publish_acked.load(Ordering::Relaxed));
    wait_until("records acknowledged before the outage", WAIT, || {
        acked(&gateway) > 100
    });

    let resident_before = resident_kib(std::process::id());
    broker.stop();
    let received = |g: &Gateway| total(g, |m| m.publish_received.load(Ordering::Relaxed));
    // Acknowledgements stop, the window fills, and the shards stop reading.
    let settled = |counter: &dyn Fn() -> u64| {
        let before = counter();
        std::thread::sleep(Duration::from_millis(500));
        counter() == before
    };
    wait_until("acknowledgements to stop", WAIT, || {
        settled(&|| acked(&gateway))
    });
    wait_until("reads to stop", WAIT, || settled(&|| received(&gateway)));
    let received_while_down = received(&gateway);
    let sent_while_down = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        received(&gateway),
        received_while_down,
        "the gateway kept reading while Kafka was down"
    );
    assert!(total(&gateway, |m| m.read_pauses.load(Ordering::Relaxed)) > 0);
    for (shard, metrics) in gateway.metrics().iter().enumerate() {
        let in_flight = metrics.in_flight_bytes.load(Ordering::Relaxed);
        // One PUBLISH per connection may be in hand when the bound is hit.
        let bound = i64::try_from(MAX_IN_FLIGHT + CARS * 2048).unwrap();
        assert!(
            in_flight <= bound,
            "shard {shard}: {in_flight} bytes in flight"
        );
    }
    // Cars are held back by TCP: at most what fits in socket buffers went out.
    let sent_during_outage = sent.load(Ordering::Relaxed) - sent_while_down;
    assert!(
        sent_during_outage < 100,
        "{sent_during_outage} PUBLISH packets sent while reads were paused"
    );

    // Kafka comes back (empty: memory storage) and publishing resumes.
    let acked_before_recovery = acked(&gateway);
    broker.restart();
    broker.create_topic("cs.uplink", 1, &[]);
    wait_until("publishing to resume", WAIT, || {
        acked(&gateway) > acked_before_recovery + 100
    });
    let collector = broker.collector("cs.uplink");
    assert!(!collector.collect(1, WAIT).is_empty());

    stop.store(true, Ordering::Relaxed);
    for _ in 0..CARS {
        done_rx.recv_timeout(WAIT).expect("a car thread is stuck");
    }
    let grown = resident_kib(std::process::id()).saturating_sub(resident_before);
    assert!(
        grown < 64 * 1024,
        "resident memory grew by {grown} KiB during the outage"
    );

    let metrics = gateway.metrics().to_vec();
    gateway.stop().unwrap();
    let sum = |f: &dyn Fn(&gateway::metrics::ShardMetrics) -> u64| {
        metrics.iter().map(|m| f(m)).sum::<u64>()
    };
    let received_total = sum(&|m| m.publish_received.load(Ordering::Relaxed));
    let acked = sum(&|m| m.publish_acked.load(Ordering::Relaxed));
    let failed = sum(&|m| m.publish_failed.total());
    let in_flight: i64 = metrics
        .iter()
        .map(|m| m.in_flight_bytes.load(Ordering::Relaxed))
        .sum();
    let pauses = sum(&|m| m.read_pauses.load(Ordering::Relaxed));
    eprintln!(
        "sent {} received {received_total} acked {acked} failed {failed} pauses {pauses}, \
         {sent_during_outage} sent while paused, memory +{grown} KiB",
        sent.load(Ordering::Relaxed)
    );
    assert_eq!(in_flight, 0, "bytes left in flight after stop");
    assert_eq!(
        received_total,
        acked + failed,
        "received {received_total} = acked {acked} + failed {failed}"
    );
    assert!(received_total <= sent.load(Ordering::Relaxed));
}
