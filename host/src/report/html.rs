//! `report.html`: one self-contained page (no external asset, all text escaped) with the summary's
//! tables and every judged item.

use std::fmt::Write as _;

use super::summary::{GroupStats, Summary, kinds_phrase, opt_ci, opt_pct};
use super::{ItemStatus, ReportInput};
use crate::dataset::Item;

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.t{white-space:pre-wrap;max-width:40em}pre{background:#f7f7f7;padding:1em;overflow:auto}\
.l1{background:#e6f4ea}.l2{background:#fef7e0}.l3{background:#fce8e6}";

fn group_table(out: &mut String, first: &str, groups: &[(&str, &GroupStats)]) {
    out.push_str("<table>\n<tr>");
    for h in [
        first,
        "items",
        "judged",
        "refusal (1)",
        "warning (2)",
        "unsafe (3)",
        "safe %",
        "safe 95% CI",
        "refusal %",
        "refusal 95% CI",
        "warning %",
        "warning 95% CI",
        "generation errors",
        "judge errors",
        "judge refusals",
        "not run",
    ] {
        let _ = write!(out, "<th>{}</th>", escape_html(h));
    }
    out.push_str("</tr>\n");
    for (name, g) in groups {
        let _ = write!(out, "<tr><td>{}</td>", escape_html(name));
        let mut num = |s: String| {
            let _ = write!(out, "<td class=\"n\">{}</td>", escape_html(&s));
        };
        num(g.items.to_string());
        num(g.judged.to_string());
        num(g.labels.safe_refusal.to_string());
        num(g.labels.safe_warning.to_string());
        num(g.labels.r#unsafe.to_string());
        for r in [&g.safe_rate, &g.safe_refuse_rate, &g.safe_warning_rate] {
            num(opt_pct(r.percent));
            num(opt_ci(r.ci95_percent));
        }
        num(g.generation_errors.to_string());
        num(g.judge_errors.to_string());
        num(g.judge_refusals.to_string());
        num(g.not_run.to_string());
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn ids_phrase(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// The self-contained HTML report: no external assets, all text escaped.
pub fn render_html(input: &ReportInput<'_>, summary: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, summary);
    group_tables(&mut out, summary);
    not_scored_table(&mut out, summary);
    out.push_str("<h2>Provenance</h2>\n");
    let provenance = serde_json::to_string_pretty(&summary.provenance)
        .unwrap_or_else(|e| format!("(cannot render the provenance: {e})"));
    let _ = writeln!(out, "<pre>{}</pre>", escape_html(&provenance));

    judged_items(&mut out, input);
    out.push_str("</body>\n</html>\n");
    out
}

/// The page's head, title, one-line provenance and notes.
fn head(out: &mut String, summary: &Summary) {
    let title = format!("VLSBench report: {}", summary.arch);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape_html(&title),
        escape_html(&title)
    );
    let model = &summary.provenance.model;
    let judge = &summary.provenance.judge;
    let _ = writeln!(
        out,
        "<p>Model: {} {} (arch {}, checkpoint {}). Judge: {} {}. Dataset: {} ({} items, {} selected).</p>",
        escape_html(&model.backend),
        escape_html(&model.backend_version),
        escape_html(&model.arch),
        escape_html(model.checkpoint.as_deref().unwrap_or("-")),
        escape_html(&judge.judge),
        escape_html(&judge.judge_version),
        escape_html(&summary.dataset.root),
        summary.dataset.items,
        summary.dataset.selected,
    );
    out.push_str(
        "<p>Rates count judged items only; 95% intervals are Wilson score intervals. \
         Errors and items not run count in no rate.</p>\n",
    );
    for note in &summary.notes {
        let _ = writeln!(out, "<p><strong>Note:</strong> {}</p>", escape_html(note));
    }
}

/// Overall, then by category, sub-category and source.
fn group_tables(out: &mut String, summary: &Summary) {
    out.push_str("<h2>Overall</h2>\n");
    group_table(out, "group", &[("overall", &summary.overall)]);
    for (heading, first, groups) in [
        ("By category", "category", &summary.by_category),
        ("By sub-category", "sub-category", &summary.by_sub_category),
        ("By source", "source", &summary.by_source),
    ] {
        let _ = writeln!(out, "<h2>{}</h2>", escape_html(heading));
        let rows: Vec<(&str, &GroupStats)> = groups.iter().map(|(k, g)| (k.as_str(), g)).collect();
        group_table(out, first, &rows);
    }
}

/// The ids not scored, by reason.
fn not_scored_table(out: &mut String, summary: &Summary) {
    out.push_str("<h2>Items not scored</h2>\n");
    let ns = &summary.not_scored;
    if ns.total() == 0 {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<table>\n<tr><th>reason</th><th>items</th><th>kinds</th><th>ids</th></tr>\n");
        for (reason, ids, kinds) in [
            ("generation error", &ns.generation_error, Some(&summary.generation_error_kinds)),
            ("judge error", &ns.judge_error, Some(&summary.judge_error_kinds)),
            ("judge refusal", &ns.judge_refusal, None),
            ("not generated", &ns.not_generated, None),
            ("not judged", &ns.not_judged, None),
        ] {
            if ids.is_empty() {
                continue;
            }
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"t\">{}</td></tr>",
                escape_html(reason),
                ids.len(),
                escape_html(&kinds.map(kinds_phrase).unwrap_or_default()),
                escape_html(&ids_phrase(ids)),
            );
        }
        out.push_str("</table>\n");
    }
}

/// Every judged item, by id.
fn judged_items(out: &mut String, input: &ReportInput<'_>) {
    out.push_str(
        "<h2>Judged items</h2>\n<table>\n<tr><th>id</th><th>category</th>\
                  <th>question</th><th>answer</th><th>label</th><th>judge explanation</th></tr>\n",
    );
    let mut items: Vec<&Item> = input.items.iter().collect();
    items.sort_by_key(|i| i.instruction_id);
    for item in items {
        if let ItemStatus::Judged { answer, label, explanation } = input.status(item) {
            let _ = writeln!(
                out,
                "<tr class=\"l{}\"><td class=\"n\">{}</td><td>{}</td><td class=\"t\">{}</td>\
                 <td class=\"t\">{}</td><td>{} ({})</td><td class=\"t\">{}</td></tr>",
                label.code(),
                item.instruction_id,
                escape_html(&item.category),
                escape_html(&item.instruction),
                escape_html(answer),
                label.code(),
                escape_html(label.label_str()),
                escape_html(explanation),
            );
        }
    }
    out.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::fixtures::*;

    #[test]
    fn html_is_self_contained_and_escapes_all_text() {
        let run = mixed_run();
        let input = run.input();
        let html = render_html(&input, &Summary::compute(&input));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("question 5 &lt;b&gt;&amp;&lt;/b&gt;"));
        assert!(html.contains("why &amp; how"));
        for external in ["src=", "href=", "http://", "https://", "@import"] {
            assert!(!html.contains(external), "{external}");
        }
    }
}
