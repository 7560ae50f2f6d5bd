//! Inline SVG charts, drawn here so that the pages need no script to show them and the tests can
//! count their parts: stacked label bars with 95% intervals ([`stacked_bars`]) and a dot-and-
//! whisker plot of several runs' safe rates ([`forest`]).
//!
//! Every bar is a `<g class="bar" data-group="...">` and every dot a `<g class="pt" data-run="...">`;
//! each carries a `<title>` with its numbers, which browsers show on hover.

use std::fmt::Write as _;

use super::page::{escape_html, pct, pct_ci};
use super::summary::GroupStats;

const LABEL_W: f64 = 270.0;
const BAR_W: f64 = 400.0;
const ROW_H: f64 = 26.0;
const TOP: f64 = 30.0;
const WIDTH: f64 = 960.0;

/// The colours' class names and legend texts of the three labels, in label order.
pub const LABELS: [(&str, &str); 3] = [("l1", "Safe with refusal"), ("l2", "Safe with warning"), ("l3", "Unsafe")];

fn legend(out: &mut String, entries: &[(&str, &str)]) {
    let mut x = LABEL_W;
    for (class, text) in entries {
        let _ = write!(
            out,
            "<rect class=\"{class}\" x=\"{x}\" y=\"6\" width=\"12\" height=\"12\"/>\
             <text x=\"{}\" y=\"16\">{}</text>",
            x + 16.0,
            escape_html(text)
        );
        x += 24.0 + 7.5 * text.len() as f64;
    }
}

fn axis(out: &mut String, y: f64, x0: f64, w: f64, ticks: &[(f64, &str)]) {
    let _ = write!(out, "<g class=\"axis\"><line x1=\"{x0}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>", x0 + w);
    for (f, text) in ticks {
        let x = x0 + f * w;
        let _ = write!(
            out,
            "<line x1=\"{x}\" x2=\"{x}\" y1=\"{y}\" y2=\"{}\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y + 4.0,
            y + 16.0,
            escape_html(text)
        );
    }
    out.push_str("</g>");
}

/// A horizontal whisker from `lo` to `hi` (fractions of the bar) at height `y`.
fn whisker(out: &mut String, class: &str, [lo, hi]: [f64; 2], y: f64, cap: f64) {
    let (x1, x2) = (LABEL_W + lo * BAR_W, LABEL_W + hi * BAR_W);
    let _ = write!(
        out,
        "<g class=\"{class}\"><line x1=\"{x1:.1}\" x2=\"{x2:.1}\" y1=\"{y}\" y2=\"{y}\"/>\
         <line x1=\"{x1:.1}\" x2=\"{x1:.1}\" y1=\"{}\" y2=\"{}\"/><line x1=\"{x2:.1}\" x2=\"{x2:.1}\" y1=\"{}\" y2=\"{}\"/></g>",
        y - cap,
        y + cap,
        y - cap,
        y + cap
    );
}

/// What of a group is not in its bar: generation and judge errors, refusals, items not run.
pub fn apart_phrase(g: &GroupStats) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (g.generation_errors, "generation errors"),
        (g.judge_errors, "judge errors"),
        (g.judge_refusals, "judge refusals"),
        (g.not_run, "not run"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

/// One stacked bar per group: the three labels as shares of the judged items, the 95% interval of
/// the safe rate drawn across the safe/unsafe boundary and that of the refusal rate across the
/// refusal/warning boundary. Items without a label are counted at the right, apart from the bar.
pub fn stacked_bars(id: &str, caption: &str, rows: &[(&str, &GroupStats)]) -> String {
    let height = TOP + ROW_H * rows.len() as f64 + 26.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg id=\"{}\" class=\"bars\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\">",
        escape_html(caption),
        escape_html(id),
        escape_html(caption)
    );
    let mut entries: Vec<(&str, &str)> = LABELS.to_vec();
    entries.push(("ci", "95% interval (safe, refusal)"));
    legend(&mut out, &entries);
    for (i, (name, g)) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        let mid = y + ROW_H / 2.0;
        let apart = apart_phrase(g);
        let _ = write!(
            out,
            "<g class=\"bar\" data-group=\"{n}\" data-judged=\"{j}\"><title>{n}: {j} judged; refusal {r}% {rc}, \
             warning {w}% {wc}, safe {s}% {sc}, unsafe {u}%{a}</title>\
             <text class=\"name\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{n}</text>",
            LABEL_W - 8.0,
            mid + 4.0,
            n = escape_html(name),
            j = g.judged,
            r = pct(g.safe_refuse_rate.fraction),
            rc = pct_ci(g.safe_refuse_rate.ci95),
            w = pct(g.safe_warning_rate.fraction),
            wc = pct_ci(g.safe_warning_rate.ci95),
            s = pct(g.safe_rate.fraction),
            sc = pct_ci(g.safe_rate.ci95),
            u = pct(g.safe_rate.fraction.map(|f| 1.0 - f)),
            a = if apart.is_empty() { String::new() } else { format!("; not scored: {}", escape_html(&apart)) },
        );
        if g.judged == 0 {
            let _ = write!(
                out,
                "<rect class=\"empty\" x=\"{LABEL_W}\" y=\"{}\" width=\"{BAR_W}\" height=\"16\"/>\
                 <text class=\"note\" x=\"{}\" y=\"{}\">no item judged</text>",
                y + 5.0,
                LABEL_W + 8.0,
                mid + 4.0
            );
        } else {
            let n = g.judged as f64;
            let mut x = LABEL_W;
            for ((class, _), count) in
                LABELS.iter().zip([g.labels.safe_refusal, g.labels.safe_warning, g.labels.r#unsafe])
            {
                let w = BAR_W * count as f64 / n;
                let _ = write!(
                    out,
                    "<rect class=\"seg {class}\" x=\"{x:.2}\" y=\"{}\" width=\"{w:.2}\" height=\"16\"/>",
                    y + 5.0
                );
                x += w;
            }
            if let Some(ci) = g.safe_refuse_rate.ci95 {
                whisker(&mut out, "ci ci-refusal", ci, y + 8.0, 3.0);
            }
            if let Some(ci) = g.safe_rate.ci95 {
                whisker(&mut out, "ci ci-safe", ci, mid, 6.0);
            }
        }
        let _ = write!(
            out,
            "<text class=\"count\" x=\"{}\" y=\"{}\">n {}{}</text></g>",
            LABEL_W + BAR_W + 10.0,
            mid + 4.0,
            g.judged,
            if apart.is_empty() { String::new() } else { format!(" · {}", escape_html(&apart)) }
        );
    }
    axis(
        &mut out,
        TOP + ROW_H * rows.len() as f64 + 4.0,
        LABEL_W,
        BAR_W,
        &[(0.0, "0%"), (0.25, "25%"), (0.5, "50%"), (0.75, "75%"), (1.0, "100%")],
    );
    out.push_str("</svg></figure>\n");
    out
}

/// One point of a [`forest`] plot: a rate with its interval, or nothing.
pub type Point = Option<(f64, [f64; 2])>;

/// Safe rates of several runs per group: one row per group, one coloured dot with its 95%
/// whisker per run (`series[r][g]` is run r's point of group g).
pub fn forest(id: &str, caption: &str, groups: &[String], runs: &[String], series: &[Vec<Point>]) -> String {
    let per_run = 12.0;
    let row_h = (per_run * runs.len() as f64).max(ROW_H) + 8.0;
    let height = TOP + row_h * groups.len() as f64 + 26.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg id=\"{}\" class=\"forest\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"{}\">",
        escape_html(caption),
        escape_html(id),
        escape_html(caption)
    );
    let classes: Vec<String> = (0..runs.len()).map(|r| format!("r{}", r % 8)).collect();
    let entries: Vec<(&str, &str)> = classes.iter().map(String::as_str).zip(runs.iter().map(String::as_str)).collect();
    legend(&mut out, &entries);
    for (gi, group) in groups.iter().enumerate() {
        let y = TOP + row_h * gi as f64;
        let _ = write!(
            out,
            "<g class=\"row\" data-group=\"{n}\"><rect class=\"band{}\" x=\"0\" y=\"{y}\" width=\"{WIDTH}\" height=\"{row_h}\"/>\
             <text class=\"name\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{n}</text>",
            gi % 2,
            LABEL_W - 8.0,
            y + row_h / 2.0 + 4.0,
            n = escape_html(group)
        );
        for (ri, run) in runs.iter().enumerate() {
            let Some((rate, ci)) = series.get(ri).and_then(|s| s.get(gi)).copied().flatten() else { continue };
            let py = y + 4.0 + per_run * ri as f64 + per_run / 2.0;
            let _ = write!(
                out,
                "<g class=\"pt {}\" data-run=\"{}\"><title>{}: {} safe {}% {}</title>",
                classes[ri],
                escape_html(run),
                escape_html(run),
                escape_html(group),
                pct(Some(rate)),
                pct_ci(Some(ci))
            );
            whisker(&mut out, "ci", ci, py, 3.0);
            let _ = write!(out, "<circle cx=\"{:.1}\" cy=\"{py}\" r=\"4\"/></g>", LABEL_W + rate * BAR_W);
        }
        out.push_str("</g>");
    }
    axis(
        &mut out,
        TOP + row_h * groups.len() as f64 + 4.0,
        LABEL_W,
        BAR_W,
        &[(0.0, "0%"), (0.25, "25%"), (0.5, "50%"), (0.75, "75%"), (1.0, "100% safe")],
    );
    out.push_str("</svg></figure>\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::fixtures::*;
    use crate::report::summary::Summary;

    #[test]
    fn one_bar_per_group_with_its_interval_and_errors_counted_apart() {
        let run = mixed_run();
        let s = Summary::compute(&run.input());
        let rows: Vec<(&str, &GroupStats)> = s.by_category.iter().map(|(k, g)| (k.as_str(), g)).collect();
        let svg = stacked_bars("c", "By category", &rows);
        assert_eq!(svg.matches("<g class=\"bar\"").count(), s.by_category.len());
        // Privacy has no judged item: no segments, a note, and its errors beside the bar.
        assert!(svg.contains("data-group=\"Privacy\" data-judged=\"0\""));
        assert!(svg.contains("no item judged"));
        assert!(svg.contains("n 0 · 1 generation errors, 2 not run"));
        // Violent: one refusal, one unsafe of 2 judged, each half of the bar; the safe interval drawn.
        assert!(svg.contains("width=\"200.00\""));
        assert!(svg.matches("class=\"ci ci-safe\"").count() >= 2);
    }

    #[test]
    fn a_forest_plot_has_one_dot_per_run_and_group_with_a_value() {
        let groups = vec!["overall".to_owned(), "Violent".to_owned()];
        let runs = vec!["a".to_owned(), "b".to_owned()];
        let series = vec![vec![Some((0.5, [0.4, 0.6])), None], vec![Some((0.7, [0.6, 0.8])), Some((0.2, [0.1, 0.3]))]];
        let svg = forest("f", "Safe rate", &groups, &runs, &series);
        assert_eq!(svg.matches("<g class=\"pt ").count(), 3);
        assert_eq!(svg.matches("<g class=\"row\"").count(), 2);
    }
}
