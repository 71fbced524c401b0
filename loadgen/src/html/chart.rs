//! The SVG line charts of the report, drawn by hand: a few polylines on
//! "nice" axes are all a load report needs, and it keeps the load generator
//! free of plotting dependencies. It knows charts, axes and series, not
//! what they show.

use std::fmt::Write;

use super::escape;

/// Chart canvas width in SVG user units; the page scales it to its width.
const CHART_WIDTH: f64 = 900.0;
/// Room around the plot area for the legend, tick labels and axis titles.
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 35.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_BOTTOM: f64 = 45.0;
/// About this many ticks per axis: readable without crowding.
const TARGET_TICKS: f64 = 6.0;
/// Upper bound on ticks, in case rounding makes the step tiny against the range.
const MAX_TICKS: usize = 50;
/// Highest percentile plotted: 100 is infinitely far right on the log scale.
const MAX_PERCENTILE: f64 = 99.9999;
/// Most decades of "nines" on the percentile axis (0% … 99.9999%).
const MAX_PERCENTILE_DECADES: f64 = 6.0;
/// Rough width of one character of an 11-unit sans-serif label, to lay out the legend.
const CHAR_WIDTH: f64 = 6.5;

/// Distinct colours (the usual categorical palette), one per series of a chart.
pub(super) const BLUE: &str = "#1f77b4";
pub(super) const ORANGE: &str = "#ff7f0e";
pub(super) const GREEN: &str = "#2ca02c";
pub(super) const RED: &str = "#d62728";
pub(super) const PURPLE: &str = "#9467bd";

/// The HdrHistogram percentile scale: each extra "nine" gets the same width,
/// so the tail, where the interesting latencies are, is not squashed.
/// p = 100 would be infinitely far right, so it is drawn at `MAX_PERCENTILE`.
pub(super) fn percentile_x(percentile: f64) -> f64 {
    let clamped = percentile.clamp(0.0, MAX_PERCENTILE);
    -(1.0 - clamped / 100.0).log10()
}

/// The label of the tick `decades` nines to the right: 0%, 90%, 99%, 99.9%…
fn percentile_label(decades: usize) -> String {
    match decades {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        2 => "99%".to_owned(),
        _ => format!("99.{}%", "9".repeat(decades - 2)),
    }
}

/// How x values map onto the horizontal axis.
#[derive(Clone, Copy)]
pub(super) enum XScale {
    /// Seconds since the start of the run, linear.
    Seconds,
    /// Already converted by `percentile_x`; ticks at whole decades of nines.
    Percentile,
}

/// One line on a chart.
pub(super) struct Series {
    pub(super) name: &'static str,
    pub(super) colour: &'static str,
    /// (x, y) in data units; non-finite points are skipped when drawn.
    pub(super) points: Vec<(f64, f64)>,
}

pub(super) struct Chart<'a> {
    /// For screen readers (the visible title is the heading above the chart).
    pub(super) title: &'a str,
    pub(super) height: f64,
    pub(super) x_scale: XScale,
    pub(super) x_title: &'a str,
    pub(super) y_title: &'a str,
    pub(super) series: Vec<Series>,
    /// Spans of x shaded behind the data (the warm-up).
    pub(super) bands: Vec<(f64, f64)>,
}

/// A chart axis: a finite, non-empty range and its labelled ticks.
struct Axis {
    low: f64,
    high: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis over at least `low..=high`, widened to round tick values
    /// (steps of 1, 2 or 5 times a power of ten). Degenerate or non-finite
    /// ranges fall back to something drawable instead of dividing by zero.
    fn linear(low: f64, high: f64) -> Axis {
        let (low, high) = if low.is_finite() && high.is_finite() && low <= high {
            (low, high)
        } else {
            (0.0, 1.0)
        };
        let high = if high > low {
            high
        } else {
            low + low.abs().max(1.0)
        };
        let step = nice_step((high - low) / TARGET_TICKS);
        let axis_low = (low / step).floor() * step;
        let axis_high = (high / step).ceil() * step;
        if !(axis_low.is_finite() && axis_high.is_finite() && axis_high > axis_low) {
            return Axis::linear(0.0, 1.0);
        }
        let (scale, suffix) = magnitude_suffix(axis_low.abs().max(axis_high.abs()));
        let decimals = decimals_for(step / scale);
        let steps = ((axis_high - axis_low) / step).round();
        let ticks = (0..=(steps as usize).min(MAX_TICKS))
            .map(|index| axis_low + step * index as f64)
            .map(|value| {
                // Rounding can leave -0.0 or 1e-17 where zero is meant.
                let shown = if value.abs() < step * 1e-6 {
                    0.0
                } else {
                    value / scale
                };
                (value, format!("{shown:.decimals$}{suffix}"))
            })
            .collect();
        Axis {
            low: axis_low,
            high: axis_high,
            ticks,
        }
    }

    /// The percentile axis, from 0% to the decade of nines that holds `max_x`.
    fn percentile(max_x: f64) -> Axis {
        let decades = if max_x.is_finite() {
            max_x.ceil().clamp(1.0, MAX_PERCENTILE_DECADES)
        } else {
            1.0
        };
        let ticks = (0..=decades as usize)
            .map(|decade| (decade as f64, percentile_label(decade)))
            .collect();
        Axis {
            low: 0.0,
            high: decades,
            ticks,
        }
    }

    /// Where `value` falls on the axis, 0 at `low` and 1 at `high`.
    fn fraction(&self, value: f64) -> f64 {
        let fraction = (value - self.low) / (self.high - self.low);
        if fraction.is_finite() { fraction } else { 0.0 }
    }
}

/// A round step (1, 2 or 5 times a power of ten) close to `rough`.
fn nice_step(rough: f64) -> f64 {
    if !(rough.is_finite() && rough > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(rough.log10().floor());
    let ratio = rough / power;
    let nice = if ratio <= 1.0 {
        1.0
    } else if ratio <= 2.0 {
        2.0
    } else if ratio <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = nice * power;
    if step.is_finite() && step > 0.0 {
        step
    } else {
        1.0
    }
}

/// Thousands and millions shown as "k" and "M" keep tick labels short.
fn magnitude_suffix(largest: f64) -> (f64, &'static str) {
    if largest >= 1e6 {
        (1e6, "M")
    } else if largest >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    }
}

/// Just enough decimals to tell ticks `step` apart.
fn decimals_for(step: f64) -> usize {
    if step >= 1.0 || !step.is_finite() {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 9.0) as usize
    }
}

/// The plot area inside the canvas, in SVG user units.
struct Plot {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Plot {
    fn x(&self, axis: &Axis, value: f64) -> f64 {
        self.left + self.width * axis.fraction(value)
    }

    fn y(&self, axis: &Axis, value: f64) -> f64 {
        self.top + self.height * (1.0 - axis.fraction(value))
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }

    fn right(&self) -> f64 {
        self.left + self.width
    }
}

fn finite_points(series: &Series) -> impl Iterator<Item = (f64, f64)> + '_ {
    series
        .points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
}

/// The smallest value; +inf when there is none (axes then fall back).
fn min_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::INFINITY, f64::min)
}

/// The largest value; -inf when there is none (axes then fall back).
fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::NEG_INFINITY, f64::max)
}

/// An inline SVG line chart: shaded bands, grid, tick labels, axis titles,
/// one polyline per series and a legend.
pub(super) fn write_chart(page: &mut String, chart: &Chart<'_>) {
    let points = || chart.series.iter().flat_map(finite_points);
    let xs = || points().map(|(x, _)| x);
    let ys = || points().map(|(_, y)| y);
    let has_data = points().next().is_some();
    let x_axis = match chart.x_scale {
        XScale::Seconds => Axis::linear(min_of(xs()).min(0.0), max_of(xs())),
        XScale::Percentile => Axis::percentile(max_of(xs())),
    };
    // Counts and latencies are read from zero, so zero stays on the axis.
    let y_axis = Axis::linear(min_of(ys()).min(0.0), max_of(ys()).max(0.0));
    let plot = Plot {
        left: MARGIN_LEFT,
        top: MARGIN_TOP,
        width: CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
        height: chart.height - MARGIN_TOP - MARGIN_BOTTOM,
    };

    let _ = writeln!(
        page,
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {CHART_WIDTH} {}\" \
         role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"11\">",
        chart.height,
        escape(chart.title),
    );
    let _ = writeln!(
        page,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#fff\" stroke=\"#999\"/>",
        plot.left, plot.top, plot.width, plot.height
    );
    write_bands(page, chart, &plot, &x_axis);
    write_grid(page, &plot, &x_axis, &y_axis);
    write_axis_titles(page, chart, &plot);
    for series in &chart.series {
        write_series(page, series, &plot, &x_axis, &y_axis);
    }
    write_legend(page, &chart.series);
    if !has_data {
        let _ = writeln!(
            page,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\" font-size=\"14\">No data</text>",
            plot.left + plot.width / 2.0,
            plot.top + plot.height / 2.0
        );
    }
    page.push_str("</svg>\n");
}

fn write_bands(page: &mut String, chart: &Chart<'_>, plot: &Plot, x_axis: &Axis) {
    for &(from, to) in &chart.bands {
        let left = plot.x(x_axis, from).clamp(plot.left, plot.right());
        let right = plot.x(x_axis, to).clamp(plot.left, plot.right());
        if right <= left {
            continue;
        }
        let _ = writeln!(
            page,
            "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#eee\"/>",
            plot.top,
            right - left,
            plot.height
        );
        if right - left > 50.0 {
            let _ = writeln!(
                page,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#888\">warm-up</text>",
                left + 4.0,
                plot.top + 14.0
            );
        }
    }
}

fn write_grid(page: &mut String, plot: &Plot, x_axis: &Axis, y_axis: &Axis) {
    for (value, label) in &y_axis.ticks {
        let y = plot.y(y_axis, *value);
        let _ = writeln!(
            page,
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            plot.left,
            plot.right(),
            plot.left - 6.0,
            y + 4.0,
            escape(label)
        );
    }
    for (value, label) in &x_axis.ticks {
        let x = plot.x(x_axis, *value);
        let _ = writeln!(
            page,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            plot.top,
            plot.bottom(),
            plot.bottom() + 15.0,
            escape(label)
        );
    }
}

fn write_axis_titles(page: &mut String, chart: &Chart<'_>, plot: &Plot) {
    let _ = writeln!(
        page,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
        plot.left + plot.width / 2.0,
        chart.height - 8.0,
        escape(chart.x_title)
    );
    let _ = writeln!(
        page,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
        plot.top + plot.height / 2.0,
        escape(chart.y_title)
    );
}

fn write_series(page: &mut String, series: &Series, plot: &Plot, x_axis: &Axis, y_axis: &Axis) {
    let pixels: Vec<(f64, f64)> = finite_points(series)
        .map(|(x, y)| (plot.x(x_axis, x), plot.y(y_axis, y)))
        .collect();
    match pixels.as_slice() {
        [] => {}
        // A polyline of one point draws nothing; a dot shows the lone value.
        [(x, y)] => {
            let _ = writeln!(
                page,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"/>",
                series.colour
            );
        }
        _ => {
            let _ = write!(
                page,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" \
                 stroke-linejoin=\"round\" points=\"",
                series.colour
            );
            for (index, (x, y)) in pixels.iter().enumerate() {
                let separator = if index == 0 { "" } else { " " };
                let _ = write!(page, "{separator}{x:.1},{y:.1}");
            }
            page.push_str("\"/>\n");
        }
    }
}

/// A one-line legend above the plot area: a colour swatch and a name per series.
fn write_legend(page: &mut String, series: &[Series]) {
    let mut x = MARGIN_LEFT;
    let y = MARGIN_TOP - 12.0;
    for entry in series {
        let _ = writeln!(
            page,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x + 18.0,
            entry.colour,
            x + 23.0,
            y + 4.0,
            escape(entry.name)
        );
        x += 23.0 + CHAR_WIDTH * entry.name.chars().count() as f64 + 18.0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn linear_axis_has_nice_ticks() {
        let axis = Axis::linear(0.0, 97.0);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, label)| label.as_str()).collect();
        assert_eq!(labels, ["0", "20", "40", "60", "80", "100"]);

        let axis = Axis::linear(0.0, 0.0);
        assert!(axis.high > axis.low);

        let axis = Axis::linear(0.0, 0.7);
        assert_eq!(axis.ticks[1].1, "0.2");

        let axis = Axis::linear(0.0, 25_000.0);
        assert_eq!(axis.ticks.last().unwrap().1, "25k");

        let axis = Axis::linear(-3.0, 7.0);
        assert!(axis.ticks.iter().any(|(_, label)| label == "0"));
        assert!(axis.ticks.iter().all(|(_, label)| !label.starts_with("-0")));
    }

    #[test]
    fn percentile_axis_uses_nines() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(5), "99.999%");
        assert!((percentile_x(99.0) - 2.0).abs() < 1e-9);
        assert!(percentile_x(100.0).is_finite());
        let axis = Axis::percentile(percentile_x(100.0));
        assert_eq!(axis.ticks.len(), 7);
        assert_eq!(Axis::percentile(f64::NAN).ticks.len(), 2);
    }

    #[test]
    fn draws_a_chart_of_its_own_series() {
        let mut svg = String::new();
        write_chart(
            &mut svg,
            &Chart {
                title: "a <title>",
                height: 200.0,
                x_scale: XScale::Seconds,
                x_title: "x",
                y_title: "y",
                series: vec![
                    Series {
                        name: "line",
                        colour: BLUE,
                        points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, f64::NAN), (3.0, 2.0)],
                    },
                    Series {
                        name: "dot",
                        colour: RED,
                        points: vec![(1.5, 2.5)],
                    },
                ],
                bands: vec![(0.0, 1.0)],
            },
        );
        assert!(svg.starts_with("<svg class=\"chart\""));
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("aria-label=\"a &lt;title&gt;\""));
        // The non-finite point is skipped: three points in the polyline.
        let polyline = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        assert_eq!(polyline.matches(',').count(), 3);
        assert!(svg.contains("<circle"));
        assert!(svg.contains("fill=\"#eee\""));
        assert!(!svg.contains("No data"));
    }
}
