//! The gateways' and the router's `/metrics` pages, as saved by the main
//! job: Prometheus text read into samples, summed over pages (one per
//! gateway), and the latency histograms the verdict needs.

use crate::report::Bucketed;

/// One sample line: a name, its labels, a value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The samples of one or more pages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Adds the samples of one Prometheus text page; comments and lines
    /// that do not parse are skipped.
    pub fn add(&mut self, page: &str) {
        self.samples.extend(page.lines().filter_map(sample));
    }

    pub fn parse(page: &str) -> Self {
        let mut metrics = Self::default();
        metrics.add(page);
        metrics
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The sum of `name` over every label set and page.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// A counter's total (counters are whole numbers).
    pub fn count(&self, name: &str) -> u64 {
        self.sum(name).max(0.0).round() as u64
    }

    /// The histogram `name` (in seconds), summed over label sets and
    /// pages: count, mean, and p50 and p99 interpolated within the
    /// buckets; `None` without one observation.
    pub fn histogram(&self, name: &str) -> Option<Bucketed> {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for s in self.samples.iter().filter(|s| s.name == bucket_name) {
            let Some(bound) = s
                .labels
                .iter()
                .find(|(label, _)| label == "le")
                .and_then(|(_, le)| bound(le))
            else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, cumulative)) => *cumulative += s.value,
                None => buckets.push((bound, s.value)),
            }
        }
        let total = self.sum(&format!("{name}_count"));
        if buckets.is_empty() || total <= 0.0 {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Bucketed {
            count: total.round() as u64,
            mean_ms: self.sum(&format!("{name}_sum")) / total * 1e3,
            p50_ms: quantile(&buckets, total, 0.5),
            p99_ms: quantile(&buckets, total, 0.99),
        })
    }
}

/// `le`'s value as a number (`+Inf` is infinite).
fn bound(le: &str) -> Option<f64> {
    if le == "+Inf" {
        Some(f64::INFINITY)
    } else {
        le.parse().ok()
    }
}

/// The `q` quantile in ms of cumulative `buckets` (upper bound in seconds,
/// count at or below it) holding `total` observations, linear within the
/// bucket it falls in; in the last (+Inf) bucket, that bucket's lower
/// bound.
fn quantile(buckets: &[(f64, f64)], total: f64, q: f64) -> f64 {
    let want = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, cumulative) in buckets {
        if cumulative >= want {
            if bound.is_infinite() {
                return lower * 1e3;
            }
            let inside = cumulative - below;
            let share = if inside > 0.0 {
                (want - below) / inside
            } else {
                1.0
            };
            return (lower + (bound - lower) * share) * 1e3;
        }
        (lower, below) = (bound, cumulative);
    }
    lower * 1e3
}

/// One line of the text format: `name{label="value",...} value [time]`.
fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inside)?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after a `{`, up to its `}`, and what follows it; label
/// values may hold escaped quotes and backslashes.
fn label_set(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim().to_owned(), value));
        text = after.get(end + 2..)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP carbridge_gateway_publish_failed_total PUBLISH Kafka refused.
# TYPE carbridge_gateway_publish_failed_total counter
carbridge_gateway_publish_failed_total{reason=\"timeout\"} 2
carbridge_gateway_publish_failed_total{reason=\"refused, \\\"full\\\"\"} 3
carbridge_gateway_publish_acked_total 1000
carbridge_ack_seconds_bucket{le=\"0.001\"} 10
carbridge_ack_seconds_bucket{le=\"0.01\"} 90
carbridge_ack_seconds_bucket{le=\"+Inf\"} 100
carbridge_ack_seconds_sum 0.5
carbridge_ack_seconds_count 100
not a sample
# EOF
";

    #[test]
    fn counters_sum_over_labels_and_pages() {
        let mut metrics = Metrics::parse(PAGE);
        assert_eq!(metrics.count("carbridge_gateway_publish_failed_total"), 5);
        metrics.add(PAGE);
        assert_eq!(metrics.count("carbridge_gateway_publish_acked_total"), 2000);
        assert_eq!(metrics.count("carbridge_gateway_publish_failed_total"), 10);
        assert_eq!(metrics.count("absent_total"), 0);
        assert!(Metrics::parse("# only comments\n").is_empty());
    }

    #[test]
    fn label_values_keep_their_escapes_and_commas() {
        let s = sample("m{a=\"x,\\\"y\\\"\",le=\"0.5\"} 7 1700000000").unwrap();
        assert_eq!(s.labels[0], ("a".to_owned(), "x,\"y\"".to_owned()));
        assert_eq!(s.labels[1], ("le".to_owned(), "0.5".to_owned()));
        assert_eq!(s.value, 7.0);
        assert!(sample("m{a=\"unterminated} 7").is_none());
        assert!(sample("m 12abc").is_none());
    }

    #[test]
    fn histograms_interpolate_within_buckets() {
        let h = Metrics::parse(PAGE)
            .histogram("carbridge_ack_seconds")
            .unwrap();
        assert_eq!(h.count, 100);
        assert!((h.mean_ms - 5.0).abs() < 1e-9);
        // The 50th of 100 lies 40 of 80 into (1 ms, 10 ms].
        assert!((h.p50_ms - 5.5).abs() < 1e-9);
        // The 99th is in the +Inf bucket: its lower bound.
        assert!((h.p99_ms - 10.0).abs() < 1e-9);
        // Two pages: the same shape, twice the count.
        let mut two = Metrics::parse(PAGE);
        two.add(PAGE);
        let h2 = two.histogram("carbridge_ack_seconds").unwrap();
        assert_eq!((h2.count, h2.p50_ms), (200, h.p50_ms));
        assert!(Metrics::parse(PAGE).histogram("absent_seconds").is_none());
        assert!(
            Metrics::parse("x_bucket{le=\"1\"} 0\nx_count 0\n")
                .histogram("x")
                .is_none()
        );
    }
}
