//! `vlsbench-host compare RUN RUN [...]`: a leaderboard of runs (overall and per category, safe
//! rates with 95% Wilson intervals) and, for each pair, the paired difference of safe rates on the
//! items both judged, with Newcombe's interval and McNemar's exact test ([`super::paired`]).
//! Written as `compare.json` ([`Comparison`]), `compare.html` and a terminal table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use vlsbench_plugin_api::types::Label;

use super::paired::{PairedTable, mcnemar_exact, paired_difference};
use super::runs::{Catalog, RunData};
use super::stats::wilson_interval;
use super::summary::LabelCounts;

/// The `format` field of `compare.json`.
pub const COMPARE_FORMAT: &str = "vlsbench-compare/1";

/// A count of n with its rate and 95% Wilson interval (`null` when n is 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateCi {
    pub count: usize,
    pub n: usize,
    pub rate: Option<f64>,
    pub ci95: Option<[f64; 2]>,
}

impl RateCi {
    pub fn new(count: usize, n: usize) -> Self {
        Self { count, n, rate: (n > 0).then(|| count as f64 / n as f64), ci95: wilson_interval(count, n) }
    }

    /// The rate with its interval, when defined.
    pub fn point(&self) -> Option<(f64, [f64; 2])> {
        Some((self.rate?, self.ci95?))
    }
}

/// One run of the leaderboard.
#[derive(Debug, Clone, Serialize)]
pub struct RunEntry {
    /// 1 for the highest safe rate (runs with nothing judged come last).
    pub rank: usize,
    pub name: String,
    pub path: String,
    pub description: String,
    pub reference_file: bool,
    pub judged: usize,
    /// Selected items without a label (run folders only; 0 for a bare outputs file).
    pub not_scored: usize,
    pub labels: LabelCounts,
    pub safe: RateCi,
    pub refusal: RateCi,
    pub warning: RateCi,
    /// The safe rate per category (empty when categories are unknown).
    pub by_category: BTreeMap<String, RateCi>,
}

/// The paired comparison of two runs on the items both judged.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub both_judged: usize,
    /// Safe under both / A only / B only / neither.
    pub table: PairedTable,
    /// A's safe rate on these items.
    pub safe_a: Option<f64>,
    pub safe_b: Option<f64>,
    /// safe_a - safe_b.
    pub difference: Option<f64>,
    /// Newcombe's 95% interval of the difference (paired, method 10).
    pub ci95: Option<[f64; 2]>,
    /// McNemar's exact two-sided p-value.
    pub mcnemar_p: f64,
}

impl Paired {
    fn of(t: PairedTable) -> Self {
        let n = t.n();
        let rate = |k: usize| (n > 0).then(|| k as f64 / n as f64);
        let diff = paired_difference(&t);
        Self {
            both_judged: n,
            table: t,
            safe_a: rate(t.both + t.a_only),
            safe_b: rate(t.both + t.b_only),
            difference: diff.map(|d| d.0),
            ci95: diff.map(|d| d.1),
            mcnemar_p: mcnemar_exact(t.a_only, t.b_only),
        }
    }
}

/// One pair of runs.
#[derive(Debug, Clone, Serialize)]
pub struct PairEntry {
    pub a: String,
    pub b: String,
    pub overall: Paired,
    pub by_category: BTreeMap<String, Paired>,
}

/// `compare.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub format: String,
    /// The `data.json` categories came from, or why there were none.
    pub dataset: String,
    pub categories: Vec<String>,
    /// In leaderboard order.
    pub runs: Vec<RunEntry>,
    /// Every pair, in leaderboard order (1 vs 2, 1 vs 3, ..., 2 vs 3, ...).
    pub pairs: Vec<PairEntry>,
}

fn is_safe(l: Label) -> bool {
    l != Label::Unsafe
}

fn category_of(catalog: &Catalog, id: u32) -> Option<&str> {
    catalog.items.get(&id).map(|i| i.category.as_str())
}

fn entry(run: &RunData, catalog: &Catalog, categories: &[String]) -> RunEntry {
    let mut labels = LabelCounts::default();
    let mut per_cat: BTreeMap<String, (usize, usize)> = categories.iter().map(|c| (c.clone(), (0, 0))).collect();
    for &id in run.judged.keys() {
        let Some(label) = run.label(id) else { continue };
        match label {
            Label::SafeRefusal => labels.safe_refusal += 1,
            Label::SafeWarning => labels.safe_warning += 1,
            Label::Unsafe => labels.r#unsafe += 1,
        }
        if let Some(c) = category_of(catalog, id).and_then(|c| per_cat.get_mut(c)) {
            c.1 += 1;
            c.0 += usize::from(is_safe(label));
        }
    }
    let n = labels.safe_refusal + labels.safe_warning + labels.r#unsafe;
    RunEntry {
        rank: 0,
        name: run.name.clone(),
        path: run.path.display().to_string(),
        description: run.describe(),
        reference_file: run.reference_file,
        judged: n,
        not_scored: run.not_scored.len(),
        labels,
        safe: RateCi::new(labels.safe_refusal + labels.safe_warning, n),
        refusal: RateCi::new(labels.safe_refusal, n),
        warning: RateCi::new(labels.safe_warning, n),
        by_category: per_cat.into_iter().map(|(c, (k, n))| (c, RateCi::new(k, n))).collect(),
    }
}

fn pair(a: &RunData, b: &RunData, catalog: &Catalog, categories: &[String]) -> PairEntry {
    let mut overall = PairedTable::default();
    let mut per_cat: BTreeMap<String, PairedTable> =
        categories.iter().map(|c| (c.clone(), PairedTable::default())).collect();
    for &id in a.judged.keys() {
        let (Some(la), Some(lb)) = (a.label(id), b.label(id)) else { continue };
        let add = |t: &mut PairedTable| match (is_safe(la), is_safe(lb)) {
            (true, true) => t.both += 1,
            (true, false) => t.a_only += 1,
            (false, true) => t.b_only += 1,
            (false, false) => t.neither += 1,
        };
        add(&mut overall);
        if let Some(t) = category_of(catalog, id).and_then(|c| per_cat.get_mut(c)) {
            add(t);
        }
    }
    PairEntry {
        a: a.name.clone(),
        b: b.name.clone(),
        overall: Paired::of(overall),
        by_category: per_cat.into_iter().map(|(c, t)| (c, Paired::of(t))).collect(),
    }
}

/// Ranks the runs and compares every pair.
pub fn compare(runs: &[RunData], catalog: &Catalog) -> Comparison {
    let categories: Vec<String> = {
        let judged: BTreeSet<u32> = runs.iter().flat_map(|r| r.judged.keys().copied()).collect();
        let set: BTreeSet<String> =
            judged.iter().filter_map(|&id| category_of(catalog, id)).map(str::to_owned).collect();
        set.into_iter().collect()
    };
    let mut order: Vec<usize> = (0..runs.len()).collect();
    let entries: Vec<RunEntry> = runs.iter().map(|r| entry(r, catalog, &categories)).collect();
    let key = |i: &usize| entries[*i].safe.rate.unwrap_or(-1.0);
    order.sort_by(|x, y| key(y).total_cmp(&key(x)).then(x.cmp(y)));
    let mut ranked = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        let mut e = entries[i].clone();
        e.rank = rank + 1;
        ranked.push(e);
    }
    let mut pairs = Vec::new();
    for (x, &i) in order.iter().enumerate() {
        for &j in &order[x + 1..] {
            pairs.push(pair(&runs[i], &runs[j], catalog, &categories));
        }
    }
    Comparison { format: COMPARE_FORMAT.to_owned(), dataset: catalog.source.clone(), categories, runs: ranked, pairs }
}

fn p(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{:.2}", x * 100.0))
}

fn ci(c: Option<[f64; 2]>) -> String {
    c.map_or_else(|| "-".to_owned(), |[l, h]| format!("[{:.2}, {:.2}]", l * 100.0, h * 100.0))
}

/// Formats rows as a plain-text table, columns after the first right-aligned.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&mut out, header.to_vec());
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

/// A p-value for people: 4 significant digits, or `< 1e-12`.
pub fn p_value(p: f64) -> String {
    if p < 1e-12 {
        "< 1e-12".to_owned()
    } else if p < 0.001 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

/// The leaderboard and the pairs, as printed at the end of `compare`.
pub fn terminal(c: &Comparison) -> String {
    let rows: Vec<Vec<String>> = c
        .runs
        .iter()
        .map(|r| {
            vec![
                format!("{}. {}", r.rank, r.name),
                r.judged.to_string(),
                p(r.safe.rate),
                ci(r.safe.ci95),
                p(r.refusal.rate),
                p(r.warning.rate),
                p(r.safe.rate.map(|s| 1.0 - s)),
                r.not_scored.to_string(),
            ]
        })
        .collect();
    let mut out = String::from("Leaderboard (safe rate over each run's judged items, 95% Wilson interval)\n");
    out.push_str(&text_table(
        &["run", "judged", "safe %", "safe 95% CI", "refusal %", "warning %", "unsafe %", "not scored"],
        &rows,
    ));
    if !c.pairs.is_empty() {
        out.push_str("\nPairs (items both judged; difference of safe rates A - B, Newcombe 95% CI; McNemar exact)\n");
        let rows: Vec<Vec<String>> = c
            .pairs
            .iter()
            .map(|pe| {
                let o = &pe.overall;
                vec![
                    format!("{} vs {}", pe.a, pe.b),
                    o.both_judged.to_string(),
                    o.difference.map_or_else(|| "-".to_owned(), |d| format!("{:+.2}", d * 100.0)),
                    ci(o.ci95),
                    format!("{}/{}", o.table.a_only, o.table.b_only),
                    p_value(o.mcnemar_p),
                ]
            })
            .collect();
        out.push_str(&text_table(&["A vs B", "both judged", "diff pp", "95% CI", "A only/B only safe", "p"], &rows));
    }
    if c.categories.is_empty() {
        let _ = writeln!(out, "\nper-category results: {}", c.dataset);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::*;
    use crate::dataset::Item;
    use crate::report::reference::ReferenceLog;

    pub(crate) fn run_of(name: &str, labels: &[(u32, u8)]) -> RunData {
        RunData {
            name: name.into(),
            path: PathBuf::from(name),
            reference_file: true,
            arch: "x".into(),
            provenance: None,
            judged: labels
                .iter()
                .map(|&(id, l)| {
                    let log = ReferenceLog {
                        id,
                        question: format!("q{id}"),
                        image_path: format!("imgs/{id}.png"),
                        pred_answer: format!("a{id}"),
                        safe_label: l,
                        label_str: String::new(),
                    };
                    (id, log)
                })
                .collect(),
            explanations: BTreeMap::new(),
            not_scored: BTreeMap::new(),
            dataset_root: None,
        }
    }

    pub(crate) fn catalog(ids: impl Iterator<Item = (u32, &'static str)>) -> Catalog {
        let items = ids
            .map(|(id, cat)| {
                let item = Item {
                    instruction_id: id,
                    instruction: format!("q{id}"),
                    image_path: format!("imgs/{id}.png"),
                    category: cat.into(),
                    sub_category: "s".into(),
                    source: "src".into(),
                    image_description: None,
                    safety_reason: None,
                };
                (id, item)
            })
            .collect();
        Catalog { items, source: "test".into(), found: true }
    }

    #[test]
    fn pairs_count_only_items_both_runs_judged_and_the_leaderboard_ranks_by_safe_rate() {
        // A: ids 0..10 safe except 8, 9; B: ids 0..10 unsafe except 0, 1; id 10 only in A.
        let a: Vec<(u32, u8)> = (0..11).map(|i| (i, if (8..10).contains(&i) { 3 } else { 1 })).collect();
        let b: Vec<(u32, u8)> = (0..10).map(|i| (i, if i < 2 { 2 } else { 3 })).collect();
        let runs = [run_of("b", &b), run_of("a", &a)];
        let cat = catalog((0..11).map(|i| (i, if i % 2 == 0 { "Even" } else { "Odd" })));
        let c = compare(&runs, &cat);
        assert_eq!(c.runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(c.runs[0].rank, 1);
        assert_eq!(c.runs[0].judged, 11);
        let pe = &c.pairs[0];
        assert_eq!((pe.a.as_str(), pe.b.as_str()), ("a", "b"));
        assert_eq!(pe.overall.both_judged, 10);
        assert_eq!(pe.overall.table, PairedTable { both: 2, a_only: 6, b_only: 0, neither: 2 });
        assert!((pe.overall.difference.unwrap() - 0.6).abs() < 1e-12);
        // statsmodels mcnemar([[2, 6], [0, 2]], exact=True).pvalue == 0.03125.
        assert!((pe.overall.mcnemar_p - 0.03125).abs() < 1e-15);
        assert_eq!(c.categories, ["Even", "Odd"]);
        assert_eq!(pe.by_category["Even"].both_judged + pe.by_category["Odd"].both_judged, 10);
        let text = terminal(&c);
        assert!(text.contains("1. a") && text.contains("a vs b") && text.contains("+60.00"), "{text}");
    }
}
