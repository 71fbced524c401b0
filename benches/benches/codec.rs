//! Codec benchmarks, each group with the independent `mqttbytes` 0.6 (v4)
//! implementation measured beside ours as the baseline.
//!
//! Decoding starts from a `BytesMut` holding the frames for both; the copy
//! that fills it is setup, outside the timed routine, and so is dropping the
//! emptied buffer. Both produce whole packets (topic and payload views).

// Benchmark code: a failed setup should stop the run loudly.
#![allow(clippy::expect_used)]

use bytes::{Buf, BytesMut};
use codec::packet::encode_publish;
use codec::{Decoder, Packet, QoS, Role};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mqttbytes::v4 as theirs;
use std::hint::black_box;
use std::time::Duration;

const TOPIC: &str = "UL/POS/VIN12345678901234";
const SIZES: [usize; 3] = [16, 128, 4096];
const MAX: usize = 1024 * 1024;

fn frames(payload: usize, count: usize) -> Vec<u8> {
    let body = vec![0xa5; payload];
    let mut buf = BytesMut::new();
    for _ in 0..count {
        encode_publish(
            &mut buf,
            TOPIC.as_bytes(),
            &body,
            QoS::AtMostOnce,
            None,
            false,
            false,
        )
        .expect("encodable");
    }
    buf.to_vec()
}

/// Outside the timing: both decoders take exactly `count` whole PUBLISH
/// packets with the expected topic and payload off `input`, and nothing else.
fn check_both_decode(ours: &Decoder, input: &[u8], count: usize, payload: usize) {
    let mut buf = BytesMut::from(input);
    let mut decoded = 0;
    while let Some(packet) = ours.decode(&mut buf).expect("valid frames") {
        let Packet::Publish(publish) = packet else {
            panic!("not a PUBLISH: {packet:?}");
        };
        assert_eq!((publish.topic(), publish.payload().len()), (TOPIC, payload));
        decoded += 1;
    }
    assert_eq!((decoded, buf.len()), (count, 0), "codec");

    let mut buf = BytesMut::from(input);
    let mut decoded = 0;
    while !buf.is_empty() {
        let packet = theirs::read(&mut buf, MAX).expect("valid frames");
        let theirs::Packet::Publish(publish) = packet else {
            panic!("not a PUBLISH: {packet:?}");
        };
        assert_eq!((&*publish.topic, publish.payload.len()), (TOPIC, payload));
        decoded += 1;
    }
    assert_eq!(decoded, count, "mqttbytes");
}

fn decode(c: &mut Criterion, count: usize, name: &str) {
    let mut group = c.benchmark_group(name);
    let ours = Decoder::new(Role::Server, MAX);
    // A 1,000-frame buffer of 4 KiB payloads is 4 MB: keep few of them alive
    // per batch (the timing overhead per batch is small next to 1,000 frames).
    let batch = if count == 1 {
        BatchSize::SmallInput
    } else {
        BatchSize::LargeInput
    };
    for size in SIZES {
        let input = frames(size, count);
        check_both_decode(&ours, &input, count, size);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("codec", size), &input, |b, input| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| {
                    while let Ok(Some(packet)) = ours.decode(buf) {
                        black_box(&packet);
                        debug_assert!(matches!(packet, Packet::Publish(_)));
                    }
                },
                batch,
            );
        });
        // The gateway's path: each PUBLISH decoded where it lies, the
        // frame taken off the buffer after it.
        group.bench_with_input(BenchmarkId::new("in_place", size), &input, |b, input| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| {
                    while let Ok(Some((publish, frame))) = ours.decode_publish_in_place(buf) {
                        black_box(&publish);
                        buf.advance(frame);
                    }
                },
                batch,
            );
        });
        group.bench_with_input(BenchmarkId::new("mqttbytes", size), &input, |b, input| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| {
                    while let Ok(packet) = theirs::read(buf, MAX) {
                        black_box(&packet);
                    }
                },
                batch,
            );
        });
        if count == 1 {
            // Not a decoder: the floor both pay for a zero-copy frame. The
            // first `split_to` of a fresh buffer allocates its shared
            // header; dropping the frame is one atomic decrement.
            group.bench_with_input(BenchmarkId::new("split_only", size), &input, |b, input| {
                b.iter_batched_ref(
                    || BytesMut::from(&input[..]),
                    |buf| drop(black_box(buf.split_to(buf.len()).freeze())),
                    batch,
                );
            });
        }
    }
    group.finish();
}

fn decode_one(c: &mut Criterion) {
    decode(c, 1, "decode_publish_one_frame");
}

fn decode_thousand(c: &mut Criterion) {
    decode(c, 1000, "decode_publish_1000_frames");
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publish");
    for size in SIZES {
        let payload = vec![0xa5; size];
        group.throughput(Throughput::Bytes(frames(size, 1).len() as u64));
        group.bench_function(BenchmarkId::new("codec", size), |b| {
            let mut out = BytesMut::with_capacity(8192);
            b.iter(|| {
                out.clear();
                encode_publish(
                    &mut out,
                    black_box(TOPIC.as_bytes()),
                    black_box(&payload),
                    QoS::AtMostOnce,
                    None,
                    false,
                    false,
                )
                .expect("encodable");
                black_box(&out);
            });
        });
        let publish = theirs::Publish::new(TOPIC, mqttbytes::QoS::AtMostOnce, payload.clone());
        group.bench_function(BenchmarkId::new("mqttbytes", size), |b| {
            let mut out = BytesMut::with_capacity(8192);
            b.iter(|| {
                out.clear();
                black_box(&publish).write(&mut out).expect("encodable");
                black_box(&out);
            });
        });
    }
    group.finish();
}

fn topic_matching(c: &mut Criterion) {
    // (filter, topic): exact, '+' inside, '#' at the end, a miss, a '$' topic.
    let cases = [
        ("DL/WARN", "DL/WARN"),
        ("DL/+/WARN", "DL/VIN12345678901234/WARN"),
        ("DL/#", "DL/WARN/ROAD/WATER"),
        ("DL/+/INFO", "DL/VIN12345678901234/WARN"),
        ("$SYS/+/load", "$SYS/broker/load"),
    ];
    let mut group = c.benchmark_group("topic_match");
    group.throughput(Throughput::Elements(cases.len() as u64));
    group.bench_function("codec", |b| {
        b.iter(|| {
            for (filter, topic) in &cases {
                black_box(codec::topic::matches(black_box(filter), black_box(topic)));
            }
        });
    });
    group.bench_function("mqttbytes", |b| {
        b.iter(|| {
            for (filter, topic) in &cases {
                black_box(mqttbytes::matches(black_box(topic), black_box(filter)));
            }
        });
    });
    group.finish();
}

fn config() -> Criterion {
    // Short runs: the suite is a regression check on shared 2-core machines,
    // where only ratios within one run mean anything.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_one, decode_thousand, encode, topic_matching
}
criterion_main!(benches);
