//! `compare.html`: the leaderboard (table and dot-and-whisker chart of safe rates, overall and per
//! category) and the pairs table, in the run report's style; self-contained, no script.

use std::fmt::Write as _;

use super::charts::{Point, forest};
use super::compare::{Comparison, p_value};
use super::page::{self, escape_html, pct, pct_ci};

/// The self-contained comparison page.
pub fn render_compare(c: &Comparison) -> String {
    let mut out = String::new();
    page::open(&mut out, "VLSBench comparison", &format!("{} runs; categories from {}", c.runs.len(), c.dataset));
    leaderboard(&mut out, c);
    chart(&mut out, c);
    pairs(&mut out, c);
    page::close(&mut out, None);
    out
}

fn leaderboard(out: &mut String, c: &Comparison) {
    out.push_str(
        "<section id=\"leaderboard\"><h2>Leaderboard</h2>\n<p class=\"hint\">Safe rate = (refusal + warning) / \
         judged items of each run, with 95% Wilson score intervals. Items a run did not score count in none \
         of its rates.</p>\n<table id=\"leaderboard-table\" class=\"num\"><thead><tr><th>rank</th><th>run</th>\
         <th>what</th><th>judged</th><th>not scored</th><th>safe %</th><th>safe 95% CI</th><th>refusal %</th>\
         <th>warning %</th><th>unsafe %</th></tr></thead><tbody>\n",
    );
    for r in &c.runs {
        let _ = write!(
            out,
            "<tr data-run=\"{n}\"><td>{}</td><th scope=\"row\" title=\"{}\">{n}</th><td class=\"what\">{}</td>\
             <td>{}</td><td>{}</td><td><strong>{}</strong></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            r.rank,
            escape_html(&r.path),
            escape_html(&r.description),
            r.judged,
            if r.reference_file { "-".to_owned() } else { r.not_scored.to_string() },
            pct(r.safe.rate),
            pct_ci(r.safe.ci95),
            pct(r.refusal.rate),
            pct(r.warning.rate),
            pct(r.safe.rate.map(|s| 1.0 - s)),
            n = escape_html(&r.name),
        );
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n</section>\n");
}

/// Safe rate per category (rows) and run (columns), each with its interval.
fn category_table(out: &mut String, c: &Comparison) {
    if c.categories.is_empty() {
        let _ = writeln!(out, "<p class=\"note\">Per-category results: {}</p>", escape_html(&c.dataset));
        return;
    }
    out.push_str("<table id=\"category-table\" class=\"num\"><thead><tr><th>category</th>");
    for r in &c.runs {
        let _ = write!(out, "<th>{}</th>", escape_html(&r.name));
    }
    out.push_str("</tr></thead><tbody>\n");
    for cat in &c.categories {
        let _ = write!(out, "<tr><th scope=\"row\">{}</th>", escape_html(cat));
        for r in &c.runs {
            let rc = r.by_category.get(cat);
            let _ = write!(
                out,
                "<td title=\"{} safe of {} judged\">{} <span class=\"hint\">{}</span></td>",
                rc.map_or(0, |x| x.count),
                rc.map_or(0, |x| x.n),
                pct(rc.and_then(|x| x.rate)),
                pct_ci(rc.and_then(|x| x.ci95))
            );
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn chart(out: &mut String, c: &Comparison) {
    let mut groups = vec!["overall".to_owned()];
    groups.extend(c.categories.iter().cloned());
    let runs: Vec<String> = c.runs.iter().map(|r| r.name.clone()).collect();
    let series: Vec<Vec<Point>> = c
        .runs
        .iter()
        .map(|r| {
            let mut s = vec![r.safe.point()];
            s.extend(c.categories.iter().map(|cat| r.by_category.get(cat).and_then(|x| x.point())));
            s
        })
        .collect();
    out.push_str("<section id=\"charts\"><h2>Safe rate per category</h2>\n");
    out.push_str(&forest("chart-compare", "Safe rate with 95% interval, each run a colour", &groups, &runs, &series));
    category_table(out, c);
    out.push_str("</section>\n");
}

fn pairs(out: &mut String, c: &Comparison) {
    out.push_str(
        "<section id=\"pairs\"><h2>Pairs</h2>\n<p class=\"hint\">On the items both runs judged: the difference of \
         safe rates A − B in percentage points with Newcombe's 95% interval for paired proportions, the \
         discordant items (safe under A only / under B only) and McNemar's exact two-sided test of them.</p>\n",
    );
    if c.pairs.is_empty() {
        out.push_str("<p>One run: nothing to pair.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table id=\"pairs-table\" class=\"num\"><thead><tr><th>A</th><th>B</th><th>both judged</th><th>A safe %</th>\
         <th>B safe %</th><th>A − B (pp)</th><th>95% CI (pp)</th><th>safe under A only</th><th>safe under B only</th>\
         <th>McNemar p</th></tr></thead><tbody>\n",
    );
    for pe in &c.pairs {
        let o = &pe.overall;
        let class = match o.ci95 {
            Some([l, _]) if l > 0.0 => "good",
            Some([_, h]) if h < 0.0 => "bad",
            _ => "",
        };
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"{class}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(&pe.a),
            escape_html(&pe.b),
            o.both_judged,
            pct(o.safe_a),
            pct(o.safe_b),
            o.difference.map_or_else(|| "-".to_owned(), |d| format!("{:+.2}", d * 100.0)),
            pct_ci(o.ci95),
            o.table.a_only,
            o.table.b_only,
            p_value(o.mcnemar_p),
        );
    }
    out.push_str("</tbody></table>\n");
    if !c.categories.is_empty() {
        out.push_str("<details><summary>Pairs per category</summary><table class=\"num\"><thead><tr><th>A</th><th>B</th><th>category</th><th>both judged</th><th>A − B (pp)</th><th>95% CI (pp)</th><th>McNemar p</th></tr></thead><tbody>\n");
        for pe in &c.pairs {
            for (cat, o) in &pe.by_category {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape_html(&pe.a),
                    escape_html(&pe.b),
                    escape_html(cat),
                    o.both_judged,
                    o.difference.map_or_else(|| "-".to_owned(), |d| format!("{:+.2}", d * 100.0)),
                    pct_ci(o.ci95),
                    p_value(o.mcnemar_p),
                );
            }
        }
        out.push_str("</tbody></table></details>\n");
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::compare::compare;
    use crate::report::compare::tests::{catalog, run_of};

    #[test]
    fn the_compare_page_lists_every_run_and_pair_escaped() {
        let runs = [run_of("<a>", &[(0, 1), (1, 3)]), run_of("b", &[(0, 3), (1, 3)]), run_of("c", &[(0, 2)])];
        let cat = catalog([(0, "Violent"), (1, "Hate")].into_iter());
        let html = render_compare(&compare(&runs, &cat));
        assert_eq!(html.matches("<tr data-run=").count(), 3);
        assert!(html.contains("data-run=\"&lt;a&gt;\"") && !html.contains("<a>"));
        assert_eq!(html.matches("<g class=\"row\"").count(), 3, "overall and two categories");
        assert!(!html.contains("<script"));
    }
}
