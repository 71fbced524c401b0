//! The router's join, per downlink request: look up the client among
//! 1,000,000 registered sessions and match the request's topic against its
//! filters (`router::table::Table::route`). Against it, the bare lookup in a
//! `HashMap` of the same size, to show what the table adds.

// Benchmark code: a failed setup should stop the run loudly.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use contract::SessionRecord;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use router::table::Table;

const CLIENTS: u64 = 1_000_000;
/// Requests cycle over this many clients spread over the whole table, so
/// the lookups miss the CPU caches as a fleet's would.
const SAMPLE: usize = 4096;

/// A VIN-like client id: 17 characters.
fn vin(n: u64) -> String {
    format!("WVW{n:014}")
}

/// Spreads sample `i` over the id space (a multiplicative hash).
fn spread(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % CLIENTS
}

fn join(c: &mut Criterion) {
    // Every car subscribes to its warnings and, one in two, to all info.
    let mut table = Table::new();
    let mut plain = HashMap::new();
    for n in 0..CLIENTS {
        let filters: Vec<String> = if n % 2 == 0 {
            vec!["DL/WARN/#".to_owned(), "DL/INFO/+".to_owned()]
        } else {
            vec!["DL/WARN/#".to_owned()]
        };
        let record = SessionRecord::live(n << 12, (n % 8) as u32, filters);
        table.apply(&vin(n), &record);
        plain.insert(vin(n).into_boxed_str(), (n % 8) as u32);
    }
    assert_eq!(table.live(), CLIENTS as usize);
    let sample: Vec<String> = (0..SAMPLE).map(|i| vin(spread(i))).collect();
    let offline: Vec<String> = (0..SAMPLE).map(|i| vin(CLIENTS + spread(i))).collect();

    let mut group = c.benchmark_group("join_1m_clients");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("route_first_filter_matches", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLE;
            black_box(table.route(black_box(&sample[i]), black_box("DL/WARN/water")))
        });
    });
    group.bench_function("route_second_filter_matches", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLE;
            black_box(table.route(black_box(&sample[i]), black_box("DL/INFO/news")))
        });
    });
    group.bench_function("route_no_filter_matches", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLE;
            black_box(table.route(black_box(&sample[i]), black_box("DL/OTA/firmware")))
        });
    });
    group.bench_function("route_offline_client", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLE;
            black_box(table.route(black_box(&offline[i]), black_box("DL/WARN/water")))
        });
    });
    group.bench_function("baseline_hashmap_lookup", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLE;
            black_box(plain.get(black_box(sample[i].as_str())))
        });
    });
    // The same request against a table that fits in the CPU caches: the
    // compute part of the join, without the memory latency.
    let mut small = Table::new();
    for n in 0..1_000 {
        let filters = vec!["DL/WARN/#".to_owned(), "DL/INFO/+".to_owned()];
        small.apply(&vin(n), &SessionRecord::live(n << 12, 0, filters));
    }
    let hot: Vec<String> = (0..SAMPLE).map(|i| vin(spread(i) % 1_000)).collect();
    group.bench_function("route_cached_1k_clients", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLE;
            black_box(small.route(black_box(&hot[i]), black_box("DL/WARN/water")))
        });
    });
    group.bench_function("topic_match_only", |b| {
        b.iter(|| {
            black_box(codec::topic::matches(
                black_box("DL/WARN/#"),
                black_box("DL/WARN/water"),
            ))
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = join
}
criterion_main!(benches);
