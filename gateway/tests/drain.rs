//! Draining (`POST /drain`, as SIGTERM begins it): the gateway reports not
//! ready, accepts no new connection, and closes the open ones at its drain
//! rate rather than all at once; each half-closed, and closed when the car
//! closes its end, or `drain.linger_secs` later (also a car that sends
//! without pause beyond its uplink limit).

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use gateway::Gateway;
use testkit::{Broker, RawClient, WAIT, http_get, http_post};

const CARS: usize = 200;
const RATE: u32 = 100;

fn drained(gateway: &Gateway) -> u64 {
    common::total(gateway, |m| {
        m.closed.get(gateway::session::CloseKind::Drained)
    })
}

#[test]
fn a_drain_closes_connections_at_its_rate_and_accepts_no_new_ones() {
    let broker = Broker::start();
    broker.create_topic("cs.uplink", 1, &[]);
    let mut config = common::config(&broker, 2);
    config.drain.closes_per_sec = RATE;
    config.drain.linger_secs = 3;
    config.limits.car_messages_per_sec = 20;
    config.limits.car_message_burst = 20;
    let gateway = Gateway::start(config).unwrap();
    let (addr, admin) = (gateway.local_addr(), gateway.admin_addr().unwrap());
    let cars: Vec<RawClient> = (0..CARS)
        .map(|n| {
            let (car, code) = RawClient::connect(addr, &format!("VIN{n:014}"), 60);
            assert_eq!(code, 0);
            car
        })
        .collect();
    // One car that never reads, so never sees its connection end: closed
    // `linger_secs` after its half-close.
    let (deaf, code) = RawClient::connect(addr, "VIN-DEAF", 60);
    assert_eq!(code, 0);
    // One car that publishes within its uplink limit until it sees the
    // half-close, then without pause: held at its limit while lingering,
    // it always has bytes to read, and is closed all the same
    // `linger_secs` after its half-close (once, it kept a stop waiting).
    let (mut flood, code) = RawClient::connect(addr, "VIN-FLOOD", 60);
    assert_eq!(code, 0);
    let flood = std::thread::spawn(move || {
        let mut out = bytes::BytesMut::new();
        codec::Publish::qos0("UL/POS", b"flood")
            .unwrap()
            .encode(&mut out)
            .unwrap();
        let started = Instant::now();
        flood
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut byte = [0u8; 1];
        while !matches!(flood.stream.read(&mut byte), Ok(0)) {
            assert!(started.elapsed() < WAIT, "never half-closed");
            flood.stream.write_all(&out).unwrap();
        }
        while flood.stream.write_all(&out).is_ok() {
            assert!(
                started.elapsed() < WAIT,
                "the flooding car was never closed"
            );
        }
    });
    // The others, as real cars do, read on and close when the gateway's
    // end closes: what each read before its end comes back.
    let cars: Vec<_> = cars
        .into_iter()
        .map(|mut car| std::thread::spawn(move || car.expect_closed(WAIT)))
        .collect();
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);
    assert_eq!(
        http_post(admin, "/reload").unwrap().0,
        200,
        "no TLS listener: nothing to reload"
    );
    assert_eq!(http_get(admin, "/drain").unwrap().0, 405);

    let started = Instant::now();
    let (status, said) = http_post(admin, "/drain").unwrap();
    assert_eq!(status, 200);
    assert!(
        said.contains(&format!("draining {} connections", CARS + 2)),
        "{said}"
    );
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 503);

    // Half a second in: about RATE / 2 closed, certainly not all.
    std::thread::sleep(Duration::from_millis(500));
    let early = drained(&gateway);
    assert!(
        early > 0 && early < CARS as u64 / 2,
        "{early} closed after 0.5 s"
    );
    // No new connection is accepted meanwhile.
    let refused = match std::net::TcpStream::connect(addr) {
        Err(_) => true,
        Ok(mut stream) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut out = bytes::BytesMut::new();
            codec::Connect::new("LATE", 60).encode(&mut out).unwrap();
            let _ = stream.write_all(&out);
            let mut byte = [0u8; 1];
            !matches!(stream.read(&mut byte), Ok(1))
        }
    };
    assert!(refused, "a draining gateway accepted a new car");

    for car in cars {
        assert!(car.join().unwrap().is_empty());
    }
    testkit::wait_until("the cars' closes", WAIT, || {
        drained(&gateway) >= CARS as u64
    });
    let took = started.elapsed();
    // 200 at 100/s: about two seconds, spread, not at once.
    assert!(took >= Duration::from_millis(1500), "drained in {took:?}");
    // The deaf car and the flooding one: 3 s after the gateway stopped
    // writing to them.
    testkit::wait_until("the deaf and the flooding car's closes", WAIT, || {
        drained(&gateway) == CARS as u64 + 2
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "the deaf and the flooding car closed after {took:?}"
    );
    flood.join().unwrap();
    drop(deaf);
    assert_eq!(gateway.open_connections(), 0);
    gateway.stop().unwrap();
}
