//! The router commits a request's offset only once Kafka has the record it
//! routed for it: a router killed in between leaves the request to its
//! successor instead of losing it. librdkafka's mock cluster stands in for
//! Kafka here because it can make one broker slow: the routed topic's
//! leader answers after seconds, while the group's coordinator (which takes
//! the commits) answers at once. (tansu, the other tests' broker, cannot.)

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::TopicPartitionList;
use testkit::{Proc, free_port};

const GROUP: &str = "carbridge-router";
/// The broker that leads every partition but the routed topic's.
const FAST: i32 = 1;
/// The routed topic's leader, made slow.
const SLOW: i32 = 2;
/// Longer than the router's commit interval (5 s): under librdkafka's
/// auto-commit, a commit would fall inside it.
const SLOW_RTT: Duration = Duration::from_secs(7);

#[test]
fn an_offset_is_committed_only_once_its_routed_record_is_in_kafka() {
    let cluster = MockCluster::new(2).unwrap();
    for topic in [
        contract::topics::UPLINK,
        contract::topics::DOWNLINK,
        contract::topics::SESSIONS,
        contract::topics::ROUTED,
        contract::topics::RECEIPTS,
        contract::topics::HELD,
    ] {
        cluster.create_topic(topic, 1, 1).unwrap();
        let leader = if topic == contract::topics::ROUTED {
            SLOW
        } else {
            FAST
        };
        cluster.partition_leader(topic, 0, Some(leader)).unwrap();
    }
    cluster
        .coordinator(MockCoordinator::Group(GROUP.to_owned()), FAST)
        .unwrap();
    let bootstrap = cluster.bootstrap_servers();

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    // A live session for the car, on slot 0, subscribed to DL/#.
    let session = contract::SessionRecord::live(1, 0, ["DL/#".to_owned()]).encode();
    producer
        .send(
            BaseRecord::to(contract::topics::SESSIONS)
                .partition(0)
                .key("VIN-COMMIT")
                .payload(&session),
        )
        .map_err(|(error, _)| error)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut router = Proc::spawn(
        "router",
        Command::new(env!("CARGO_BIN_EXE_router"))
            .args(["--kafka-bootstrap", &bootstrap])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--session-timeout-ms", "6000", "--orphan-after-ms", "0"])
            .args(["--log-format", "json", "--log-filter", "info,router=debug"])
            .args(testkit::ROUTER_ON_TANSU),
    )
    .with_admin(admin);
    router.wait_ready();
    let request = || {
        producer
            .send(
                BaseRecord::to(contract::topics::DOWNLINK)
                    .partition(0)
                    .key("VIN-COMMIT")
                    .payload("unlock")
                    .headers(OwnedHeaders::new().insert(Header {
                        key: contract::HEADER_TOPIC,
                        value: Some("DL/UNLOCK"),
                    })),
            )
            .map_err(|(error, _)| error)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    // A first request while both brokers are fast: the router's producer
    // connects to the routed topic's leader now, so that the slow request
    // below costs one round trip, not a connection's several.
    request();
    router.wait_for("to route the first request", |router| {
        router.metric("carbridge_router_routed_acked_total") == 1.0
    });

    cluster.broker_round_trip_time(SLOW, SLOW_RTT).unwrap();
    let sent = Instant::now();
    request();

    // The group's committed offset, as a successor would read it.
    let observer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partition = TopicPartitionList::new();
    partition.add_partition(contract::topics::DOWNLINK, 0);
    let deadline = sent + SLOW_RTT * 8;
    loop {
        let committed = observer
            .committed_offsets(partition.clone(), Duration::from_secs(5))
            .unwrap();
        let offset = committed.elements()[0].offset();
        if offset == Offset::Offset(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request's offset was never committed (still {offset:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked = router.metric("carbridge_router_routed_acked_total");
    assert_eq!(
        acked,
        2.0,
        "offset committed {:?} after the request, before Kafka had its routed record",
        sent.elapsed()
    );
    assert!(
        sent.elapsed() >= SLOW_RTT,
        "the routed record cannot be in Kafka before the slow broker answers"
    );
    assert_eq!(
        router.metric("carbridge_router_requests_received_total"),
        2.0
    );
}
