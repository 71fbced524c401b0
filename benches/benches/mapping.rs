//! Topic mapping with 1, 10 and 100 rules, the matching rule first (best
//! case) or last (worst case), for both strategies of `gateway::mapping`.

// Benchmark code: a failed setup should stop the run loudly.
#![allow(clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::mapping::{Rule, Strategy, TopicMapper};
use std::hint::black_box;
use std::time::Duration;

fn rules(count: usize) -> Vec<Rule> {
    (0..count)
        .map(|i| Rule::new(format!("^UL/kind{i}/.+"), format!("cs.kind{i}")))
        .collect()
}

fn mapping(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic_mapping");
    group.throughput(Throughput::Elements(1));
    for count in [1, 10, 100] {
        let rules = rules(count);
        for (case, topic) in [
            ("first", "UL/kind0/VIN12345678901234".to_owned()),
            ("last", format!("UL/kind{}/VIN12345678901234", count - 1)),
        ] {
            if count == 1 && case == "last" {
                continue;
            }
            for (name, strategy) in [("sequential", Strategy::Sequential), ("set", Strategy::Set)] {
                let mut mapper = TopicMapper::with_strategy(&rules, strategy).expect("valid rules");
                let id = BenchmarkId::new(name, format!("{count}_rules_{case}"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        black_box(mapper.map(black_box(&topic)).is_ok());
                    });
                });
            }
        }
    }
    // A template with a capture group: one extra capture search per PUBLISH.
    let mut captures = TopicMapper::new(&[Rule::new("^UL/([A-Z]+)$", "cs.$1")]).expect("valid");
    group.bench_function("sequential/1_rule_capture", |b| {
        b.iter(|| black_box(captures.map(black_box("UL/POS")).is_ok()));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = mapping
}
criterion_main!(benches);
