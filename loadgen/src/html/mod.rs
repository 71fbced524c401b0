//! The HTML report: one self-contained page (inline CSS and SVG, no scripts,
//! no external resources), so it can be archived as a CI artifact or mailed
//! and still open anywhere without a server. The charts are drawn by
//! `chart`, which knows nothing of the report. After a run through the
//! local stack, `verdict` puts what matters at the top: the verdict, the
//! goals, whose the latency is, the server side and the setup.

mod chart;
mod verdict;

use std::fmt::Write;

use crate::report::{ConnectStats, FlowStats, Report, Tick};

use chart::{BLUE, Chart, GREEN, ORANGE, PURPLE, RED, Series, XScale, percentile_x, write_chart};

/// Chart heights in SVG user units (the width is the chart's).
const CHART_HEIGHT: f64 = 300.0;
/// The connected-cars chart only needs to show a ramp and a plateau.
const SMALL_CHART_HEIGHT: f64 = 180.0;

const STYLE: &str = "\
body { font-family: system-ui, sans-serif; color: #222; max-width: 960px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #c00; font-weight: bold; }
.muted { color: #666; }
.met { color: #080; font-weight: bold; }
.verdict { border-left: 0.5em solid #999; padding: 0.2em 1em; margin: 1em 0 1.5em; }
.verdict.healthy { border-color: #2a2; background: #f1faf1; }
.verdict.lost { border-color: #c00; background: #fdf0f0; }
.verdict.overloaded { border-color: #d80; background: #fdf6ec; }
.verdict .outcome { font-size: 1.6em; font-weight: bold; margin: 0.3em 0; }
svg.chart { display: block; width: 100%; height: auto; margin-bottom: 1em; }
";

/// A self-contained HTML page (no scripts, no external resources) for `report`.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    write_head(&mut page, report);
    page.push_str("<h1>Load test report</h1>\n");
    verdict::write(&mut page, report);
    if report.verdict.is_some() || report.stack.is_some() {
        page.push_str("<h2>Run</h2>\n");
    }
    write_header(&mut page, report);
    write_summary(&mut page, report);
    write_throughput_charts(&mut page, report);
    write_latency_chart(&mut page, report);
    write_distribution_chart(&mut page, report);
    page.push_str("</body>\n</html>\n");
    page
}

/// Escapes text from the report (hostnames, options) for HTML content and
/// attribute values: it is free text and may contain markup characters.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A measured value for a table cell, with precision that suits its size;
/// non-finite values (e.g. no samples) show as a dash rather than "NaN".
fn number(value: f64) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// Counts are exact in the report; they become floats only to be plotted.
fn count(value: u64) -> f64 {
    value as f64
}

fn write_head(page: &mut String, report: &Report) {
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}Load test report: {} mode, {}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n",
        report
            .verdict
            .as_ref()
            .map_or(String::new(), |v| format!("{}: ", v.outcome.as_str())),
        escape(&report.mode),
        escape(&report.started_at),
    );
}

/// What was run, where and how: enough to reproduce or compare the run.
fn write_header(page: &mut String, report: &Report) {
    let machine = &report.machine;
    page.push_str("<table class=\"facts\">\n");
    let facts = [
        ("Mode", escape(&report.mode)),
        ("Started", escape(&report.started_at)),
        (
            "Machine",
            format!(
                "{} ({} CPUs, kernel {})",
                escape(&machine.hostname),
                machine.cpus,
                escape(&machine.kernel)
            ),
        ),
        ("Warm-up", format!("{} s", number(report.warmup_secs))),
        ("Measured", format!("{} s", number(report.measured_secs))),
        ("Report version", report.version.to_string()),
    ];
    for (name, value) in facts {
        let _ = writeln!(page, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    page.push_str("</table>\n<h2>Options</h2>\n");
    if report.options.is_empty() {
        page.push_str("<p class=\"muted\">No options recorded.</p>\n");
        return;
    }
    page.push_str("<table class=\"options\">\n<tr><th>Option</th><th>Value</th></tr>\n");
    for (name, value) in &report.options {
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(value)
        );
    }
    page.push_str("</table>\n");
}

/// How a summary figure is shown.
enum Figure {
    /// A rate or a latency: shown with precision that suits its size.
    Measure(f64),
    /// An exact count.
    Count(u64),
    /// A count of failures: highlighted when not zero.
    Problem(u64),
}

fn write_figure_cell(page: &mut String, figure: &Figure) {
    let _ = match figure {
        Figure::Measure(value) => write!(page, "<td class=\"num\">{}</td>", number(*value)),
        Figure::Count(value) => write!(page, "<td class=\"num\">{value}</td>"),
        Figure::Problem(value) if *value > 0 => {
            write!(page, "<td class=\"num bad\">{value}</td>")
        }
        Figure::Problem(value) => write!(page, "<td class=\"num\">{value}</td>"),
    };
}

fn connect_figures(connect: &ConnectStats) -> [(&'static str, Figure); 9] {
    [
        ("Cars", Figure::Count(connect.cars)),
        ("Connected", Figure::Count(connect.connected)),
        ("Failed", Figure::Problem(connect.failed)),
        ("Asked rate (conn/s)", Figure::Measure(connect.asked_rate)),
        (
            "Achieved rate (conn/s)",
            Figure::Measure(connect.achieved_rate),
        ),
        ("Latency p50 (ms)", Figure::Measure(connect.latency.p50_ms)),
        ("Latency p99 (ms)", Figure::Measure(connect.latency.p99_ms)),
        (
            "Latency p99.9 (ms)",
            Figure::Measure(connect.latency.p999_ms),
        ),
        ("Latency max (ms)", Figure::Measure(connect.latency.max_ms)),
    ]
}

fn flow_figures(flow: &FlowStats) -> [(&'static str, Figure); 15] {
    let latency = &flow.latency;
    [
        ("Asked rate (msg/s)", Figure::Measure(flow.asked_rate)),
        ("Achieved rate (msg/s)", Figure::Measure(flow.achieved_rate)),
        ("Sent", Figure::Count(flow.sent)),
        ("Received", Figure::Count(flow.received)),
        ("Lost", Figure::Problem(flow.lost)),
        ("Duplicates", Figure::Problem(flow.duplicates)),
        ("Out of order", Figure::Problem(flow.out_of_order)),
        ("Latency min (ms)", Figure::Measure(latency.min_ms)),
        ("Latency mean (ms)", Figure::Measure(latency.mean_ms)),
        ("Latency p50 (ms)", Figure::Measure(latency.p50_ms)),
        ("Latency p90 (ms)", Figure::Measure(latency.p90_ms)),
        ("Latency p99 (ms)", Figure::Measure(latency.p99_ms)),
        ("Latency p99.9 (ms)", Figure::Measure(latency.p999_ms)),
        ("Latency max (ms)", Figure::Measure(latency.max_ms)),
        ("Latency samples", Figure::Count(latency.count)),
    ]
}

/// The measured figures, one table for connections and one with a column
/// per direction so uplink and downlink read side by side.
fn write_summary(page: &mut String, report: &Report) {
    page.push_str("<h2>Summary</h2>\n<h3>Connections</h3>\n<table class=\"summary\">\n");
    for (name, figure) in connect_figures(&report.connect) {
        let _ = write!(page, "<tr><th>{name}</th>");
        write_figure_cell(page, &figure);
        page.push_str("</tr>\n");
    }
    page.push_str(
        "</table>\n<h3>Messages</h3>\n<table class=\"summary\">\n<tr><th></th><th>Uplink</th>",
    );
    if report.downlink.is_some() {
        page.push_str("<th>Downlink</th>");
    }
    page.push_str("</tr>\n");
    let downlink_figures = report.downlink.as_ref().map(flow_figures);
    let mut downlink_column = downlink_figures.into_iter().flatten();
    for (name, uplink) in flow_figures(&report.uplink) {
        let _ = write!(page, "<tr><th>{name}</th>");
        write_figure_cell(page, &uplink);
        if let Some((_, downlink)) = downlink_column.next() {
            write_figure_cell(page, &downlink);
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
    if report.downlink.is_none() {
        page.push_str("<p class=\"muted\">No downlink messages in this run.</p>\n");
    }
    write_other(page, report);
}

/// What the run saw besides its own messages: other services' messages to
/// the cars, connections the server closed, and the topic re-read.
fn write_other(page: &mut String, report: &Report) {
    let mut rows = Vec::new();
    if report.other_downlink > 0 {
        rows.push((
            "Messages to cars from other services (such as DL/WARN)",
            report.other_downlink.to_string(),
            false,
        ));
    }
    if report.dropped_connections > 0 {
        rows.push((
            "Car connections closed by the server while publishing",
            report.dropped_connections.to_string(),
            true,
        ));
    }
    if let Some(count) = &report.uplink_in_topic {
        rows.push((
            "Uplink topic re-read after the run: records / distinct / repeated",
            format!(
                "{} / {} / {}",
                count.records, count.unique, count.duplicates
            ),
            count.duplicates > 0 || count.unique < report.uplink.sent,
        ));
    }
    if rows.is_empty() {
        return;
    }
    page.push_str("<h3>Also seen</h3>\n<table class=\"summary\">\n");
    for (name, value, bad) in rows {
        let class = if bad { "num bad" } else { "num" };
        let _ = writeln!(
            page,
            "<tr><th>{}</th><td class=\"{class}\">{}</td></tr>",
            escape(name),
            escape(&value)
        );
    }
    page.push_str("</table>\n");
}

/// The warm-up as spans of seconds to shade: each warm-up tick covers the
/// second that ends at its `t`.
fn warmup_bands(timeline: &[Tick]) -> Vec<(f64, f64)> {
    let mut bands = Vec::new();
    let mut current: Option<(f64, f64)> = None;
    for tick in timeline {
        if tick.warmup && tick.t.is_finite() {
            let from = current.map_or(tick.t - 1.0, |(from, _)| from);
            current = Some((from, tick.t));
        } else if let Some(band) = current.take() {
            bands.push(band);
        }
    }
    bands.extend(current);
    bands
}

fn tick_series(
    name: &'static str,
    colour: &'static str,
    timeline: &[Tick],
    value: fn(&Tick) -> f64,
) -> Series {
    Series {
        name,
        colour,
        points: timeline.iter().map(|tick| (tick.t, value(tick))).collect(),
    }
}

fn write_throughput_charts(page: &mut String, report: &Report) {
    let timeline = &report.timeline;
    let mut series = vec![
        tick_series("uplink sent", BLUE, timeline, |tick| {
            count(tick.uplink_sent)
        }),
        tick_series("uplink received", ORANGE, timeline, |tick| {
            count(tick.uplink_received)
        }),
    ];
    if report.downlink.is_some() {
        series.push(tick_series("downlink sent", GREEN, timeline, |tick| {
            count(tick.downlink_sent)
        }));
        series.push(tick_series("downlink received", RED, timeline, |tick| {
            count(tick.downlink_received)
        }));
    }
    let bands = warmup_bands(timeline);
    page.push_str("<h2>Throughput over time</h2>\n");
    write_chart(
        page,
        &Chart {
            title: "Throughput over time",
            height: CHART_HEIGHT,
            x_scale: XScale::Seconds,
            x_title: "Seconds since start (shaded: warm-up)",
            y_title: "Messages per second",
            series,
            bands: bands.clone(),
        },
    );
    write_chart(
        page,
        &Chart {
            title: "Connected cars over time",
            height: SMALL_CHART_HEIGHT,
            x_scale: XScale::Seconds,
            x_title: "Seconds since start (shaded: warm-up)",
            y_title: "Connected cars",
            series: vec![tick_series("connected", PURPLE, timeline, |tick| {
                count(tick.connected)
            })],
            bands,
        },
    );
}

fn write_latency_chart(page: &mut String, report: &Report) {
    let timeline = &report.timeline;
    let mut series = vec![
        tick_series("uplink p50", BLUE, timeline, |tick| tick.uplink_p50_ms),
        tick_series("uplink p99", ORANGE, timeline, |tick| tick.uplink_p99_ms),
    ];
    if report.downlink.is_some() {
        series.push(tick_series("downlink p99", GREEN, timeline, |tick| {
            tick.downlink_p99_ms
        }));
    }
    page.push_str("<h2>Latency over time</h2>\n");
    write_chart(
        page,
        &Chart {
            title: "Latency over time",
            height: CHART_HEIGHT,
            x_scale: XScale::Seconds,
            x_title: "Seconds since start (shaded: warm-up)",
            y_title: "Latency (ms)",
            series,
            bands: warmup_bands(timeline),
        },
    );
}

fn write_distribution_chart(page: &mut String, report: &Report) {
    let distribution = |name, colour, pairs: &[(f64, f64)]| Series {
        name,
        colour,
        points: pairs
            .iter()
            .map(|&(percentile, ms)| (percentile_x(percentile), ms))
            .collect(),
    };
    let mut series = vec![distribution(
        "uplink",
        BLUE,
        &report.uplink.latency.distribution,
    )];
    if let Some(downlink) = &report.downlink {
        series.push(distribution(
            "downlink",
            GREEN,
            &downlink.latency.distribution,
        ));
    }
    page.push_str("<h2>Latency percentile distribution</h2>\n");
    write_chart(
        page,
        &Chart {
            title: "Latency percentile distribution",
            height: CHART_HEIGHT,
            x_scale: XScale::Percentile,
            x_title: "Percentile",
            y_title: "Latency (ms)",
            series,
            bands: Vec::new(),
        },
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::report::{Latency, Machine, REPORT_VERSION};

    fn latency(base: f64) -> Latency {
        Latency {
            count: 1000,
            min_ms: base * 0.5,
            mean_ms: base * 1.2,
            p50_ms: base,
            p90_ms: base * 2.0,
            p99_ms: base * 4.0,
            p999_ms: base * 8.0,
            max_ms: base * 10.0,
            distribution: vec![
                (0.0, base * 0.5),
                (50.0, base),
                (90.0, base * 2.0),
                (99.0, base * 4.0),
                (99.9, base * 8.0),
                (100.0, base * 10.0),
            ],
        }
    }

    fn flow(base: f64) -> FlowStats {
        FlowStats {
            asked_rate: 1000.0,
            achieved_rate: 998.5,
            sent: 10_000,
            received: 9_990,
            lost: 10,
            duplicates: 0,
            out_of_order: 0,
            latency: latency(base),
            stages: None,
        }
    }

    fn tick(t: f64, warmup: bool) -> Tick {
        Tick {
            t,
            warmup,
            connected: if warmup { 50 } else { 100 },
            uplink_sent: 1000,
            uplink_received: 990,
            uplink_p50_ms: 2.0,
            uplink_p99_ms: 9.0,
            downlink_sent: 100,
            downlink_received: 100,
            downlink_p99_ms: 12.0,
        }
    }

    fn sample_report(downlink: Option<FlowStats>) -> Report {
        Report {
            version: REPORT_VERSION,
            verdict: None,
            stack: None,
            started_at: "2026-01-02T03:04:05Z".to_owned(),
            machine: Machine {
                hostname: "a<b&\"c\"".to_owned(),
                cpus: 2,
                kernel: "6.1.0".to_owned(),
            },
            mode: "gateway".to_owned(),
            options: vec![
                ("--cars".to_owned(), "100".to_owned()),
                ("--topic".to_owned(), "cars/<id>/'up'".to_owned()),
            ],
            warmup_secs: 2.0,
            measured_secs: 3.0,
            connect: ConnectStats {
                cars: 100,
                connected: 99,
                failed: 1,
                asked_rate: 50.0,
                achieved_rate: 49.2,
                latency: latency(3.0),
                failed_by: Default::default(),
            },
            uplink: flow(2.0),
            downlink,
            other_downlink: 0,
            dropped_connections: 0,
            receipts: None,
            uplink_in_topic: None,
            timeline: vec![
                tick(1.0, true),
                tick(2.0, true),
                tick(3.0, false),
                tick(4.0, false),
                tick(5.0, false),
            ],
        }
    }

    fn assert_clean(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert!(!html.contains("NaN"), "NaN in output");
        assert!(!html.contains("inf"), "inf in output");
        assert!(!html.contains("<script"));
    }

    #[test]
    fn renders_a_full_report() {
        let html = render(&sample_report(Some(flow(5.0))));
        assert_clean(&html);
        assert!(html.contains("<svg"));
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("Throughput over time"));
        assert!(html.contains("Latency over time"));
        assert!(html.contains("<th>Downlink</th>"));
        assert!(html.contains("downlink received"));
        assert!(html.contains("99.9%"));
        assert!(html.contains(">warm-up<") || html.contains("fill=\"#eee\""));
    }

    #[test]
    fn escapes_report_text() {
        let html = render(&sample_report(None));
        assert!(html.contains("a&lt;b&amp;&quot;c&quot;"));
        assert!(!html.contains("a<b&\"c\""));
        assert!(html.contains("cars/&lt;id&gt;/&#39;up&#39;"));
        assert_eq!(escape("&<>\"'x"), "&amp;&lt;&gt;&quot;&#39;x");
    }

    #[test]
    fn shows_what_else_the_run_saw() {
        let mut report = sample_report(None);
        report.other_downlink = 7;
        report.uplink_in_topic = Some(crate::report::TopicCount {
            records: 3,
            unique: 2,
            duplicates: 1,
        });
        let page = render(&report);
        assert!(page.contains("Also seen"));
        assert!(page.contains("3 / 2 / 1"));
        assert!(!render(&sample_report(None)).contains("Also seen"));
    }

    #[test]
    fn renders_without_downlink() {
        let html = render(&sample_report(None));
        assert_clean(&html);
        assert!(!html.contains("<th>Downlink</th>"));
        assert!(!html.contains("downlink p99"));
        assert!(html.contains("No downlink messages"));
    }

    #[test]
    fn highlights_problems() {
        let html = render(&sample_report(None));
        assert!(html.contains("<td class=\"num bad\">10</td>"));
        assert!(html.contains("<td class=\"num bad\">1</td>"));
        let mut report = sample_report(None);
        report.uplink.lost = 0;
        report.connect.failed = 0;
        assert!(!render(&report).contains("num bad"));
    }

    #[test]
    fn renders_empty_timeline_and_distributions() {
        let mut empty_flow = flow(1.0);
        empty_flow.latency.distribution.clear();
        let mut report = sample_report(Some(empty_flow));
        report.uplink.latency.distribution.clear();
        report.timeline.clear();
        report.options.clear();
        let html = render(&report);
        assert_clean(&html);
        assert!(html.contains("No data"));
        assert!(html.contains("No options recorded"));
    }

    #[test]
    fn renders_all_zero_data() {
        let mut report = sample_report(Some(flow(0.0)));
        report.uplink.latency = latency(0.0);
        for tick in &mut report.timeline {
            *tick = Tick {
                connected: 0,
                uplink_sent: 0,
                uplink_received: 0,
                uplink_p50_ms: 0.0,
                uplink_p99_ms: 0.0,
                downlink_sent: 0,
                downlink_received: 0,
                downlink_p99_ms: 0.0,
                ..tick.clone()
            };
        }
        assert_clean(&render(&report));
    }

    #[test]
    fn survives_non_finite_and_negative_values() {
        let mut report = sample_report(Some(flow(1.0)));
        report.warmup_secs = f64::NAN;
        report.uplink.latency.p99_ms = f64::INFINITY;
        report.uplink.latency.distribution = vec![
            (f64::NAN, 1.0),
            (-5.0, -2.0),
            (50.0, f64::NAN),
            (120.0, f64::INFINITY),
            (99.0, 3.0),
        ];
        report.timeline[1].t = f64::NAN;
        report.timeline[2].uplink_p50_ms = f64::NAN;
        report.timeline[3].uplink_p99_ms = -4.0;
        report.timeline[4].downlink_p99_ms = f64::NEG_INFINITY;
        let html = render(&report);
        assert_clean(&html);
        // The single surviving point of a series is still drawn.
        report.timeline.truncate(1);
        assert_clean(&render(&report));
    }

    #[test]
    fn warmup_ticks_become_bands() {
        let timeline = [
            tick(1.0, true),
            tick(2.0, true),
            tick(3.0, false),
            tick(4.0, true),
        ];
        assert_eq!(warmup_bands(&timeline), [(0.0, 2.0), (3.0, 4.0)]);
    }
}
