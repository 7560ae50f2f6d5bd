//! `agreement.html`: the confusion matrix, Cohen's kappa with its interval, the agreement per
//! category and every disagreeing item, in the run report's style; self-contained, no script.

use std::fmt::Write as _;

use super::agreement::{Agreement, kappa_phrase};
use super::charts::LABELS;
use super::page::{self, escape_html};

/// The self-contained agreement page.
pub fn render_agreement(ag: &Agreement) -> String {
    let mut out = String::new();
    page::open(
        &mut out,
        "VLSBench judge agreement",
        &format!("{} (A) and {} (B): {} items both judged", ag.a.name, ag.b.name, ag.both_judged),
    );
    out.push_str("<section id=\"runs\"><h2>The two judgings</h2>\n<table><tbody>\n");
    for (k, s) in [("A", &ag.a), ("B", &ag.b)] {
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{k}</th><td>{}</td><td>{}</td><td>{} judged</td><td class=\"hint\">{}</td></tr>",
            escape_html(&s.name),
            escape_html(&s.description),
            s.judged,
            escape_html(&s.path)
        );
    }
    out.push_str("</tbody></table>\n");
    let _ = writeln!(
        out,
        "<p>{} items judged by both; {} by A only and {} by B only are left out.</p>",
        ag.both_judged, ag.only_a, ag.only_b
    );
    if ag.different_answers > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note\"><strong>Note:</strong> {} of these items have different answers in the two runs: \
             they are not two judgings of the same answers.</p>",
            ag.different_answers
        );
    }
    out.push_str("</section>\n");
    matrix(&mut out, ag);
    categories(&mut out, ag);
    disagreements(&mut out, ag);
    page::close(&mut out, None);
    out
}

fn matrix(out: &mut String, ag: &Agreement) {
    out.push_str("<section id=\"matrix\"><h2>Confusion matrix</h2>\n");
    let total: usize = ag.matrix.iter().flatten().sum();
    let max = ag.matrix.iter().flatten().copied().max().unwrap_or(0).max(1);
    out.push_str("<table id=\"confusion\" class=\"matrix\"><thead><tr><th>A ↓ / B →</th>");
    for (_, name) in LABELS {
        let _ = write!(out, "<th scope=\"col\">{}</th>", escape_html(name));
    }
    out.push_str("<th>A total</th></tr></thead><tbody>\n");
    for (i, (_, name)) in LABELS.iter().enumerate() {
        let _ = write!(out, "<tr><th scope=\"row\">{}</th>", escape_html(name));
        for j in 0..3 {
            let n = ag.matrix[i][j];
            // Shade by count: the darker, the more items.
            let alpha = 0.08 + 0.6 * n as f64 / max as f64;
            let (r, g, b) = if i == j { (47, 138, 76) } else { (207, 59, 59) };
            let _ = write!(
                out,
                "<td class=\"{}\" style=\"background:rgba({r},{g},{b},{alpha:.2})\">{n}</td>",
                if i == j { "diag" } else { "off" }
            );
        }
        let _ = writeln!(out, "<td>{}</td></tr>", ag.matrix[i].iter().sum::<usize>());
    }
    out.push_str("<tr><th scope=\"row\">B total</th>");
    for j in 0..3 {
        let _ = write!(out, "<td>{}</td>", (0..3).map(|i| ag.matrix[i][j]).sum::<usize>());
    }
    let _ = writeln!(out, "<td>{total}</td></tr></tbody></table>");
    let observed = ag.kappa.map_or_else(|| "-".to_owned(), |k| format!("{:.2}%", k.observed * 100.0));
    let expected = ag.kappa.map_or_else(|| "-".to_owned(), |k| format!("{:.2}%", k.expected * 100.0));
    let _ = writeln!(
        out,
        "<div class=\"cards\"><div class=\"card safe\"><div class=\"k\">Cohen's kappa [95% CI]</div>\
         <div class=\"v\" id=\"kappa\">{}</div><div class=\"ci\">large-sample interval (Fleiss, Cohen &amp; Everitt)</div></div>\
         <div class=\"card\"><div class=\"k\">Observed agreement</div><div class=\"v\">{observed}</div>\
         <div class=\"ci\">expected by chance {expected}</div></div>\
         <div class=\"card l3\"><div class=\"k\">Disagreements</div><div class=\"v\">{}</div></div></div>",
        escape_html(&kappa_phrase(ag.kappa.as_ref())),
        ag.disagreements.len()
    );
    out.push_str("</section>\n");
}

fn categories(out: &mut String, ag: &Agreement) {
    out.push_str("<section id=\"by-category\"><h2>Agreement per category</h2>\n");
    if ag.by_category.is_empty() {
        let _ = writeln!(out, "<p>{}</p></section>", escape_html(&ag.dataset));
        return;
    }
    out.push_str(
        "<table id=\"category-table\" class=\"num\"><thead><tr><th>category</th><th>both judged</th><th>agree</th>\
         <th>agree %</th><th>kappa [95% CI]</th><th>A unsafe, B safe</th><th>A safe, B unsafe</th></tr></thead><tbody>\n",
    );
    for (c, ca) in &ag.by_category {
        let a_unsafe_b_safe = ca.matrix[2][0] + ca.matrix[2][1];
        let a_safe_b_unsafe = ca.matrix[0][2] + ca.matrix[1][2];
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape_html(c),
            ca.n,
            ca.agree,
            if ca.n == 0 { 0.0 } else { ca.agree as f64 * 100.0 / ca.n as f64 },
            escape_html(&kappa_phrase(ca.kappa.as_ref())),
            a_unsafe_b_safe,
            a_safe_b_unsafe
        );
    }
    out.push_str("</tbody></table>\n</section>\n");
}

fn label_badge(code: u8) -> String {
    let name = LABELS.get(usize::from(code).saturating_sub(1)).map_or("?", |l| l.1);
    format!("<span class=\"badge l{code}\">{}</span>", escape_html(name))
}

fn disagreements(out: &mut String, ag: &Agreement) {
    let _ = writeln!(out, "<section id=\"disagreements\"><h2>Items they disagree on ({})</h2>", ag.disagreements.len());
    if ag.disagreements.is_empty() {
        out.push_str("<p>None.</p></section>\n");
        return;
    }
    out.push_str(
        "<table id=\"disagreement-table\" class=\"items\"><thead><tr><th>id</th><th>category</th><th>question</th>\
         <th>answer</th><th>A</th><th>B</th></tr></thead><tbody>\n",
    );
    for d in &ag.disagreements {
        let expl = |e: &Option<String>| {
            e.as_deref().map_or_else(String::new, |e| format!("<div class=\"hint clip\">{}</div>", escape_html(e)))
        };
        let _ = writeln!(
            out,
            "<tr data-id=\"{}\"><td>{}</td><td>{}<br><span class=\"hint\">{}</span></td><td><div class=\"clip\">{}</div></td>\
             <td><div class=\"clip\">{}</div>{}</td><td>{}{}</td><td>{}{}</td></tr>",
            d.id,
            d.id,
            escape_html(d.category.as_deref().unwrap_or("-")),
            escape_html(d.sub_category.as_deref().unwrap_or("")),
            escape_html(&d.question),
            escape_html(&d.answer),
            if d.same_answer { "" } else { "<div class=\"note\">B judged another answer</div>" },
            label_badge(d.label_a),
            expl(&d.explanation_a),
            label_badge(d.label_b),
            expl(&d.explanation_b),
        );
    }
    out.push_str("</tbody></table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::agreement::agreement;
    use crate::report::compare::tests::{catalog, run_of};

    #[test]
    fn the_agreement_page_shows_the_matrix_kappa_and_each_disagreement() {
        let a = run_of("a", &[(0, 1), (1, 2), (2, 3), (3, 3)]);
        let b = run_of("b", &[(0, 1), (1, 3), (2, 3), (3, 1)]);
        let cat = catalog((0..4).map(|i| (i, "Violent")));
        let html = render_agreement(&agreement(&a, &b, &cat));
        assert_eq!(html.matches("<td class=\"diag\"").count(), 3);
        assert_eq!(html.matches("<tr data-id=").count(), 2);
        assert!(html.contains("id=\"kappa\""));
        assert!(!html.contains("<script"));
    }
}
