//! Latency histograms as they travel from the workers to the parent
//! (non-empty buckets as JSON) and as the report shows them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::Latency;

/// Microseconds, 1 µs to 1 hour, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds, exercised by the tests
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram's non-empty buckets: (value µs, count).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets(pub Vec<(u64, u64)>);

impl Buckets {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        Self(
            histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    pub fn add_to(&self, histogram: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            let _ = histogram.record_n(value.max(1), count);
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The report's view of a histogram of microseconds.
pub fn latency(histogram: &Histogram<u64>) -> Latency {
    let empty = histogram.is_empty();
    let at = |q: f64| {
        if empty {
            0.0
        } else {
            ms(histogram.value_at_quantile(q))
        }
    };
    let mut distribution = Vec::new();
    if !empty {
        for p in [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
        ] {
            distribution.push((p, at(p / 100.0)));
        }
    }
    Latency {
        count: histogram.len(),
        min_ms: if empty { 0.0 } else { ms(histogram.min()) },
        mean_ms: if empty {
            0.0
        } else {
            histogram.mean() / 1000.0
        },
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: if empty { 0.0 } else { ms(histogram.max()) },
        distribution,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_carry_a_histogram_across_processes() {
        let mut sent = histogram();
        for us in [1, 150, 150, 2_000, 45_000, 3_600_000_000] {
            assert!(sent.record(us).is_ok());
        }
        let wire = serde_json::to_string(&Buckets::of(&sent)).unwrap_or_default();
        let mut received = histogram();
        serde_json::from_str::<Buckets>(&wire)
            .unwrap_or_default()
            .add_to(&mut received);
        assert_eq!(received.len(), 6);
        assert_eq!(received.max(), sent.max());
        let report = latency(&received);
        assert_eq!(report.count, 6);
        assert!((report.p50_ms - 0.15).abs() < 0.01, "{report:?}");
        assert!(latency(&histogram()).distribution.is_empty());
    }
}
