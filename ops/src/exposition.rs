//! `/metrics` for every carbridge binary: label sets as types, counters
//! per label value, and one writer of the Prometheus text format.
//!
//! A label's values are an enum made with [`label_set!`]: a counter is
//! counted with a variant, so a misspelt label is a compile error rather
//! than a count that goes nowhere, and a label's values are a bounded set
//! by construction (never a client id, a topic or an address). Each shard
//! (or thread) counts into its own counters; [`Exposition`] sums them when
//! `/metrics` is read. That is why this is not the `prometheus-client`
//! crate: its registry holds one shared value per series, which every
//! shard would write across cores, or one series per shard, which is not
//! what the documented metrics are.

use std::fmt::{Display, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::latency::{self, Latency};

/// The values of one label, as an enum: see [`label_set!`].
pub trait LabelSet: Copy + 'static {
    /// The label's name (`reason`, `limit`, ...).
    const NAME: &'static str;
    /// Every value, in exposition order.
    const ALL: &'static [Self];
    /// The value as exposed.
    fn as_str(self) -> &'static str;
    /// The value's position in [`LabelSet::ALL`].
    fn index(self) -> usize;
}

/// Defines an enum of label values and its [`LabelSet`]:
///
/// ```
/// ops::label_set! {
///     /// Why a thing failed.
///     pub enum Failure: "reason" {
///         Timeout = "timed_out",
///         Refused = "refused",
///     }
/// }
/// use ops::exposition::LabelSet;
/// assert_eq!(Failure::Refused.as_str(), "refused");
/// assert_eq!(Failure::ALL.len(), 2);
/// ```
#[macro_export]
macro_rules! label_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $label:literal {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $crate::exposition::LabelSet for $name {
            const NAME: &'static str = $label;
            const ALL: &'static [Self] = &[$(Self::$variant,)+];

            fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// One counter per value of label set `L`.
#[derive(Debug)]
pub struct Counters<L> {
    counts: Box<[AtomicU64]>,
    label: PhantomData<L>,
}

impl<L: LabelSet> Default for Counters<L> {
    fn default() -> Self {
        Self {
            counts: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            label: PhantomData,
        }
    }
}

impl<L: LabelSet> Counters<L> {
    pub fn add(&self, label: L, n: u64) {
        if let Some(counter) = self.counts.get(label.index()) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn bump(&self, label: L) {
        self.add(label, 1);
    }

    pub fn get(&self, label: L) -> u64 {
        self.counts
            .get(label.index())
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }
}

/// A `/metrics` page being written: each metric with its HELP and TYPE
/// lines, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl Display) {
        let _ = writeln!(self.out, "{name}{labels} {value}");
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Display) {
        self.head(name, "counter", help);
        self.sample(name, "", value);
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.head(name, "gauge", help);
        self.sample(name, "", value);
    }

    /// A counter with one sample per value of `L`.
    pub fn counters<L: LabelSet>(&mut self, name: &str, help: &str, value: impl Fn(L) -> u64) {
        self.head(name, "counter", help);
        for &label in L::ALL {
            let labels = format!("{{{}=\"{}\"}}", L::NAME, label.as_str());
            self.sample(name, &labels, value(label));
        }
    }

    /// A metric (`kind`: counter or gauge) with one sample per
    /// `(value of label, sample)`, for labels whose values are known only
    /// at run time but bounded (a shard's number, a listener's address).
    pub fn samples<V: Display, S: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (V, S)>,
    ) {
        self.head(name, kind, help);
        for (value, sample) in samples {
            self.sample(name, &format!("{{{label}=\"{value}\"}}"), sample);
        }
    }

    /// [`Exposition::samples`] with a second, typed label: one sample per
    /// `(value of label, value of L, sample)` (a listener's address and
    /// which of its certificates).
    pub fn samples_with<V: Display, L: LabelSet, S: Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (V, L, S)>,
    ) {
        self.head(name, kind, help);
        for (value, typed, sample) in samples {
            let labels = format!("{{{label}=\"{value}\",{}=\"{}\"}}", L::NAME, typed.as_str());
            self.sample(name, &labels, sample);
        }
    }

    /// The sum of `parts` as a histogram in seconds.
    pub fn histogram<'a>(
        &mut self,
        name: &str,
        help: &str,
        parts: impl Iterator<Item = &'a Latency> + Clone,
    ) {
        self.head(name, "histogram", help);
        latency::write_buckets(&mut self.out, name, parts);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    crate::label_set! {
        enum Colour: "colour" {
            Red = "red",
            Green = "green",
        }
    }

    #[test]
    fn counters_by_label_are_written_in_order_with_their_label() {
        let counts = Counters::<Colour>::default();
        counts.bump(Colour::Green);
        counts.add(Colour::Green, 2);
        assert_eq!(counts.get(Colour::Green), 3);
        assert_eq!(counts.total(), 3);
        let mut page = Exposition::new();
        page.counters("x_total", "Things.", |colour| counts.get(colour));
        page.samples("y", "gauge", "Per shard.", "shard", [(0, 5), (1, 7)]);
        assert_eq!(
            page.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{colour=\"red\"} 0\nx_total{colour=\"green\"} 3\n\
             # HELP y Per shard.\n# TYPE y gauge\ny{shard=\"0\"} 5\ny{shard=\"1\"} 7\n"
        );
    }

    #[test]
    fn samples_with_a_typed_label_name_both_labels() {
        let mut page = Exposition::new();
        page.samples_with(
            "z",
            "gauge",
            "Per door.",
            "door",
            [
                ("0.0.0.0:8883", Colour::Red, 5),
                ("[::]:8883", Colour::Green, 7),
            ],
        );
        assert_eq!(
            page.finish(),
            "# HELP z Per door.\n# TYPE z gauge\n\
             z{door=\"0.0.0.0:8883\",colour=\"red\"} 5\n\
             z{door=\"[::]:8883\",colour=\"green\"} 7\n"
        );
    }
}
