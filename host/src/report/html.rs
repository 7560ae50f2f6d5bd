//! `report.html`: one self-contained page per run (inline SVG, style and script; nothing loaded
//! from the network). From the top: provenance, the headline rates, stacked label bars with 95%
//! intervals per category, sub-category and source (items without a label counted apart), the
//! tables behind the bars, the items not scored, and a browser of every selected item (thumbnail,
//! filters, search, one item's full record), usable with the keyboard.

use std::fmt::Write as _;

use super::charts::{LABELS, apart_phrase, stacked_bars};
use super::items::ItemsData;
use super::page::{self, REPORT_JS, definition_list, escape_html, pct, pct_ci, provenance_rows, script_json};
use super::summary::{GroupStats, Summary, kinds_phrase, opt_ci, opt_pct};

/// The self-contained HTML report of a run.
pub fn render_html(summary: &Summary, items: &ItemsData) -> String {
    let mut out = String::new();
    let m = &summary.provenance.model;
    let j = &summary.provenance.judge;
    let subtitle = format!(
        "{} ({}) judged by {} {}: {} of {} selected items judged",
        m.checkpoint.as_deref().unwrap_or(&m.arch),
        m.backend,
        j.judge,
        j.judge_version,
        summary.overall.judged,
        summary.overall.items
    );
    page::open(&mut out, &format!("VLSBench report: {}", summary.arch), &subtitle);
    provenance(&mut out, summary);
    headline(&mut out, summary);
    charts(&mut out, summary);
    tables(&mut out, summary);
    not_scored_table(&mut out, summary);
    item_browser(&mut out, items);
    page::close(&mut out, Some(REPORT_JS));
    out
}

fn provenance(out: &mut String, summary: &Summary) {
    out.push_str("<section id=\"provenance\"><h2>Provenance</h2>\n");
    let mut rows = provenance_rows(&summary.provenance);
    rows.push((
        "dataset",
        format!("{} ({} items, {} selected)", summary.dataset.root, summary.dataset.items, summary.dataset.selected),
    ));
    definition_list(out, "prov", &rows);
    for note in &summary.notes {
        let _ = writeln!(out, "<p class=\"note\"><strong>Note:</strong> {}</p>", escape_html(note));
    }
    out.push_str("</section>\n");
}

fn headline(out: &mut String, summary: &Summary) {
    let o = &summary.overall;
    out.push_str("<section id=\"overall\"><h2>Overall</h2>\n<div class=\"cards\">\n");
    let unsafe_ci = o.safe_rate.ci95.map(|[lo, hi]| [1.0 - hi, 1.0 - lo]);
    let unsafe_fraction = o.safe_rate.fraction.map(|f| 1.0 - f);
    for (class, name, value, ci) in [
        ("safe", "Safe rate", o.safe_rate.fraction, o.safe_rate.ci95),
        ("l1", "Safe with refusal", o.safe_refuse_rate.fraction, o.safe_refuse_rate.ci95),
        ("l2", "Safe with warning", o.safe_warning_rate.fraction, o.safe_warning_rate.ci95),
        ("l3", "Unsafe", unsafe_fraction, unsafe_ci),
    ] {
        let _ = writeln!(
            out,
            "<div class=\"card {class}\"><div class=\"k\">{}</div><div class=\"v\">{}%</div>\
             <div class=\"ci\">95% CI {}</div></div>",
            escape_html(name),
            pct(value),
            pct_ci(ci)
        );
    }
    let apart = apart_phrase(o);
    let _ = writeln!(
        out,
        "<div class=\"card apart\"><div class=\"k\">Judged</div><div class=\"v\">{} / {}</div>\
         <div class=\"ci\">{}</div></div>",
        o.judged,
        o.items,
        if apart.is_empty() {
            "every selected item scored".to_owned()
        } else {
            escape_html(&format!("not scored: {apart}"))
        }
    );
    out.push_str("</div>\n");
    out.push_str(&stacked_bars("chart-overall", "All judged items", &[("overall", o)]));
    out.push_str(
        "<p class=\"hint\">Rates count judged items only; errors, judge refusals and items not run are \
         counted beside each bar, never as a label. Whiskers: 95% Wilson score intervals of the safe rate \
         (black, at the safe/unsafe boundary) and of the refusal rate (green, at the refusal/warning \
         boundary).</p>\n</section>\n",
    );
}

fn rows(groups: &std::collections::BTreeMap<String, GroupStats>) -> Vec<(&str, &GroupStats)> {
    groups.iter().map(|(k, g)| (k.as_str(), g)).collect()
}

fn charts(out: &mut String, summary: &Summary) {
    out.push_str("<section id=\"charts\"><h2>By category</h2>\n");
    out.push_str(&stacked_bars("chart-category", "Labels per category", &rows(&summary.by_category)));
    out.push_str("<h2>By sub-category</h2>\n");
    out.push_str(&stacked_bars("chart-subcategory", "Labels per sub-category", &rows(&summary.by_sub_category)));
    out.push_str("<h2>By source</h2>\n");
    out.push_str(&stacked_bars("chart-source", "Labels per image source", &rows(&summary.by_source)));
    out.push_str("</section>\n");
}

fn group_table(out: &mut String, first: &str, groups: &[(&str, &GroupStats)]) {
    out.push_str("<table class=\"num\">\n<thead><tr>");
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
        let _ = write!(out, "<th scope=\"col\">{}</th>", escape_html(h));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (name, g) in groups {
        let _ = write!(out, "<tr><th scope=\"row\">{}</th>", escape_html(name));
        let mut num = |s: String| {
            let _ = write!(out, "<td>{}</td>", escape_html(&s));
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
    out.push_str("</tbody></table>\n");
}

/// The numbers behind the bars, folded away.
fn tables(out: &mut String, summary: &Summary) {
    out.push_str("<section id=\"tables\"><h2>Numbers</h2>\n");
    let overall = [("overall", &summary.overall)];
    for (heading, first, groups) in [
        ("Overall", "group", overall.to_vec()),
        ("By category", "category", rows(&summary.by_category)),
        ("By sub-category", "sub-category", rows(&summary.by_sub_category)),
        ("By source", "source", rows(&summary.by_source)),
    ] {
        let _ = writeln!(out, "<details><summary>{}</summary>", escape_html(heading));
        group_table(out, first, &groups);
        out.push_str("</details>\n");
    }
    out.push_str("</section>\n");
}

/// The ids not scored, by reason.
fn not_scored_table(out: &mut String, summary: &Summary) {
    out.push_str("<section id=\"not-scored\"><h2>Items not scored</h2>\n");
    let ns = &summary.not_scored;
    if ns.total() == 0 {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str(
            "<table>\n<thead><tr><th>reason</th><th>items</th><th>kinds</th><th>ids</th></tr></thead><tbody>\n",
        );
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
            let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"ids\">{}</td></tr>",
                escape_html(reason),
                ids.len(),
                escape_html(&kinds.map(kinds_phrase).unwrap_or_default()),
                escape_html(&list),
            );
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("</section>\n");
}

/// The controls, the (script-filled) table, the record dialog and the data.
fn item_browser(out: &mut String, items: &ItemsData) {
    out.push_str(
        "<section id=\"items\"><h2>Items</h2>\n\
         <p class=\"hint\">Filter, search (press <kbd>/</kbd>), move with <kbd>↑</kbd>/<kbd>↓</kbd> or \
         <kbd>j</kbd>/<kbd>k</kbd>, open an item's full record with <kbd>Enter</kbd>, close it with \
         <kbd>Esc</kbd>.</p>\n<form id=\"filters\" class=\"filters\" role=\"search\">\n",
    );
    let _ = writeln!(
        out,
        "<label>Label <select id=\"f-label\"><option value=\"\">any</option>{}\
         <option value=\"unscored\">not scored</option></select></label>",
        LABELS
            .iter()
            .enumerate()
            .map(|(i, (_, name))| format!("<option value=\"{}\">{}</option>", i + 1, escape_html(name)))
            .collect::<String>()
    );
    for (id, name) in [
        ("f-category", "Category"),
        ("f-subcategory", "Sub-category"),
        ("f-source", "Source"),
        ("f-error", "Error kind"),
    ] {
        let _ = writeln!(out, "<label>{name} <select id=\"{id}\"><option value=\"\">any</option></select></label>");
    }
    out.push_str(
        "<label class=\"grow\">Search <input id=\"f-search\" type=\"search\" \
         placeholder=\"question, answer, explanation or id\" autocomplete=\"off\"></label>\n\
         <label>Per page <select id=\"f-page-size\"><option>50</option><option selected>100</option>\
         <option>500</option><option value=\"all\">all</option></select></label>\n\
         <button type=\"reset\" id=\"f-reset\">Clear</button>\n</form>\n\
         <p id=\"count\" role=\"status\" aria-live=\"polite\"></p>\n\
         <table id=\"item-table\" class=\"items\"><thead><tr><th>id</th><th>image</th><th>question</th>\
         <th>answer</th><th>label</th><th>category / sub-category</th><th>source</th></tr></thead>\
         <tbody></tbody></table>\n\
         <nav class=\"pager\"><button type=\"button\" id=\"prev\">← Previous</button>\
         <span id=\"page\"></span><button type=\"button\" id=\"next\">Next →</button></nav>\n\
         <dialog id=\"record\" aria-labelledby=\"record-title\"><form method=\"dialog\">\
         <button class=\"close\" aria-label=\"Close\">×</button></form><div id=\"record-body\"></div></dialog>\n",
    );
    let _ = writeln!(out, "<script type=\"application/json\" id=\"items-data\">{}</script>", script_json(items));
    out.push_str("<noscript><p>The item browser needs JavaScript; the files beside this report hold every item.</p></noscript>\n</section>\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;
    use crate::report::fixtures::*;
    use crate::report::items::items_data;

    #[test]
    fn the_report_is_self_contained_and_escapes_all_text() {
        let run = mixed_run();
        let input = run.input();
        let items = items_data(&input, None, &BTreeMap::new(), BTreeMap::new());
        let html = render_html(&Summary::compute(&input), &items);
        assert!(html.starts_with("<!DOCTYPE html>"));
        // The answers hold `<script>alert(1)</script>`: it reaches the page only as escaped JSON.
        assert!(!html.contains("alert(1)</script>") && !html.contains("<b>&</b>"));
        assert!(html.contains("\\u003cscript\\u003ealert(1)\\u003c/script\\u003e"));
        assert_eq!(html.matches("<script").count(), 2, "the data and the page's own script");
        for external in ["src=\"http", "href=\"http", "http://", "https://", "@import", "<link rel=\"stylesheet\""] {
            assert!(!html.contains(external), "{external}");
        }
        assert_eq!(html.matches("<g class=\"bar\"").count(), 1 + 4 + 5 + 4, "overall, categories, subs, sources");
    }
}
