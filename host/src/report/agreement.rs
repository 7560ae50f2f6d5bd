//! `vlsbench-host agreement RUN RUN`: how two judgings of the same answers agree (for example the
//! paper's GPT-4o judge and a cheaper one, the second made with `judge --judge`): the 3x3 confusion
//! matrix of labels, Cohen's kappa with its 95% interval ([`super::paired::cohen_kappa`]), the
//! agreement per category, and every item they disagree on. Written as `agreement.json`
//! ([`Agreement`]), `agreement.html` and a terminal table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::compare::text_table;
use super::paired::{Kappa, cohen_kappa};
use super::runs::{Catalog, RunData};

/// The `format` field of `agreement.json`.
pub const AGREEMENT_FORMAT: &str = "vlsbench-agreement/1";

/// One of the two runs.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub name: String,
    pub path: String,
    pub description: String,
    pub judged: usize,
}

/// Agreement within one category.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryAgreement {
    pub n: usize,
    /// Items with the same label.
    pub agree: usize,
    pub matrix: [[usize; 3]; 3],
    pub kappa: Option<Kappa>,
}

/// An item the two judges labelled differently.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub id: u32,
    pub category: Option<String>,
    pub sub_category: Option<String>,
    pub question: String,
    pub image_path: String,
    /// A's answer (the same as B's, unless `same_answer` is false).
    pub answer: String,
    pub same_answer: bool,
    pub label_a: u8,
    pub label_b: u8,
    pub explanation_a: Option<String>,
    pub explanation_b: Option<String>,
}

/// `agreement.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub format: String,
    pub dataset: String,
    pub a: Side,
    pub b: Side,
    /// Items both judged: the items of every number below.
    pub both_judged: usize,
    pub only_a: usize,
    pub only_b: usize,
    /// Items both judged whose answers differ: then these are not two judgings of the same answers.
    pub different_answers: usize,
    /// Rows: A's label (1, 2, 3); columns: B's label.
    pub matrix: [[usize; 3]; 3],
    pub kappa: Option<Kappa>,
    pub by_category: BTreeMap<String, CategoryAgreement>,
    /// Ordered by id.
    pub disagreements: Vec<Disagreement>,
}

fn side(r: &RunData) -> Side {
    Side { name: r.name.clone(), path: r.path.display().to_string(), description: r.describe(), judged: r.judged.len() }
}

/// Compares the labels of two runs on the items both judged.
pub fn agreement(a: &RunData, b: &RunData, catalog: &Catalog) -> Agreement {
    let mut matrix = [[0usize; 3]; 3];
    let mut per_cat: BTreeMap<String, [[usize; 3]; 3]> = BTreeMap::new();
    let mut disagreements = Vec::new();
    let mut both = 0;
    let mut different_answers = 0;
    for (&id, log_a) in &a.judged {
        let (Some(la), Some(lb), Some(log_b)) = (a.label(id), b.label(id), b.judged.get(&id)) else { continue };
        both += 1;
        let (i, j) = (usize::from(la.code() - 1), usize::from(lb.code() - 1));
        matrix[i][j] += 1;
        let item = catalog.items.get(&id);
        if let Some(item) = item {
            per_cat.entry(item.category.clone()).or_default()[i][j] += 1;
        }
        let same_answer = log_a.pred_answer == log_b.pred_answer;
        different_answers += usize::from(!same_answer);
        if i != j {
            disagreements.push(Disagreement {
                id,
                category: item.map(|i| i.category.clone()),
                sub_category: item.map(|i| i.sub_category.clone()),
                question: log_a.question.clone(),
                image_path: log_a.image_path.clone(),
                answer: log_a.pred_answer.clone(),
                same_answer,
                label_a: la.code(),
                label_b: lb.code(),
                explanation_a: a.explanations.get(&id).cloned(),
                explanation_b: b.explanations.get(&id).cloned(),
            });
        }
    }
    let by_category = per_cat
        .into_iter()
        .map(|(c, m)| {
            let n = m.iter().flatten().sum();
            let agree = (0..3).map(|k| m[k][k]).sum();
            (c, CategoryAgreement { n, agree, matrix: m, kappa: cohen_kappa(&m) })
        })
        .collect();
    Agreement {
        format: AGREEMENT_FORMAT.to_owned(),
        dataset: catalog.source.clone(),
        a: side(a),
        b: side(b),
        both_judged: both,
        only_a: a.judged.len() - both,
        only_b: b.judged.len() - both,
        different_answers,
        matrix,
        kappa: cohen_kappa(&matrix),
        by_category,
        disagreements,
    }
}

/// A kappa and its interval, or why there is none.
pub fn kappa_phrase(k: Option<&Kappa>) -> String {
    match k {
        None => "- (no item)".to_owned(),
        Some(Kappa { kappa: None, .. }) => "undefined (one label for everything)".to_owned(),
        Some(Kappa { kappa: Some(v), ci95, .. }) => match ci95 {
            Some([l, h]) => format!("{v:.3} [{l:.3}, {h:.3}]"),
            None => format!("{v:.3}"),
        },
    }
}

/// The matrix, kappa and per-category table, as printed at the end of `agreement`.
pub fn terminal(ag: &Agreement) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Agreement of {} (A, rows) and {} (B, columns) on {} items both judged ({} judged by A only, {} by B only)",
        ag.a.name, ag.b.name, ag.both_judged, ag.only_a, ag.only_b
    );
    if ag.different_answers > 0 {
        let _ = writeln!(
            out,
            "warning: {} of these items have different answers in the two runs: they are not two judgings of the same answers",
            ag.different_answers
        );
    }
    let names = ["1 refusal", "2 warning", "3 unsafe"];
    let rows: Vec<Vec<String>> = (0..3)
        .map(|i| {
            let mut r = vec![format!("A {}", names[i])];
            r.extend((0..3).map(|j| ag.matrix[i][j].to_string()));
            r
        })
        .collect();
    out.push_str(&text_table(&["", "B 1 refusal", "B 2 warning", "B 3 unsafe"], &rows));
    let observed = ag.kappa.map_or_else(|| "-".to_owned(), |k| format!("{:.2}%", k.observed * 100.0));
    let _ = writeln!(
        out,
        "observed agreement {observed}; Cohen's kappa {} (95% CI); {} disagreements",
        kappa_phrase(ag.kappa.as_ref()),
        ag.disagreements.len()
    );
    if !ag.by_category.is_empty() {
        let rows: Vec<Vec<String>> = ag
            .by_category
            .iter()
            .map(|(c, ca)| {
                vec![
                    c.clone(),
                    ca.n.to_string(),
                    format!("{:.2}", if ca.n == 0 { 0.0 } else { ca.agree as f64 * 100.0 / ca.n as f64 }),
                    kappa_phrase(ca.kappa.as_ref()),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&text_table(&["category", "both judged", "agree %", "kappa [95% CI]"], &rows));
    } else {
        let _ = writeln!(out, "per-category agreement: {}", ag.dataset);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::compare::tests::{catalog, run_of};

    #[test]
    fn the_matrix_kappa_and_disagreements_count_items_both_judged() {
        // The statsmodels table [[20, 5, 1], [3, 30, 4], [2, 6, 29]] spread over ids, plus two
        // items only A judged.
        let table = [[20, 5, 1], [3, 30, 4], [2, 6, 29]];
        let (mut la, mut lb) = (Vec::new(), Vec::new());
        let mut id = 0;
        for (i, row) in table.iter().enumerate() {
            for (j, &n) in row.iter().enumerate() {
                for _ in 0..n {
                    la.push((id, i as u8 + 1));
                    lb.push((id, j as u8 + 1));
                    id += 1;
                }
            }
        }
        la.push((1000, 1));
        la.push((1001, 3));
        let cat = catalog((0..id).map(|i| (i, if i < 50 { "A" } else { "B" })));
        let ag = agreement(&run_of("a", &la), &run_of("b", &lb), &cat);
        assert_eq!(ag.matrix, table);
        assert_eq!((ag.both_judged, ag.only_a, ag.only_b), (100, 2, 0));
        assert_eq!(ag.disagreements.len(), 21);
        assert!(ag.disagreements.iter().all(|d| d.label_a != d.label_b));
        // From statsmodels' cohens_kappa (see paired.rs).
        assert!((ag.kappa.unwrap().kappa.unwrap() - 0.6806083650190115).abs() < 1e-12);
        assert_eq!(ag.by_category["A"].n + ag.by_category["B"].n, 100);
        let text = terminal(&ag);
        assert!(text.contains("0.681 [0.559, 0.802]"), "{text}");
    }
}
