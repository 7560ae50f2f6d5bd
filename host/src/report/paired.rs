//! Statistics of two judgements of the same items: McNemar's exact test and Newcombe's interval
//! for a difference of paired proportions (`compare`), and Cohen's kappa with its large-sample
//! interval (`agreement`).
//!
//! The formulas, each checked in the tests against values computed independently:
//!
//! - McNemar's exact test: the two-sided binomial test of the discordant pairs, `b` of `b + c` at
//!   p = 1/2: `min(1, 2 P(X <= min(b, c)))` (statsmodels' `mcnemar(table, exact=True)`);
//! - the difference `(b - c) / n` with Newcombe's hybrid score interval for paired data (method 10
//!   of Newcombe, Stat. Med. 1998;17:2635-50): Wilson intervals of both marginals combined with
//!   the phi correlation of the 2x2 table;
//! - Cohen's kappa, its standard error by Fleiss, Cohen and Everitt (1969) (statsmodels'
//!   `cohens_kappa(table).std_kappa`) and the 95% interval kappa +- 1.96 se.

use serde::{Deserialize, Serialize};

use super::stats::{Z_95, wilson_interval};

/// A paired 2x2 table of a binary outcome (here: safe) under A and under B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PairedTable {
    /// Safe under both.
    pub both: usize,
    /// Safe under A only.
    pub a_only: usize,
    /// Safe under B only.
    pub b_only: usize,
    /// Safe under neither.
    pub neither: usize,
}

impl PairedTable {
    /// Items in the table.
    pub fn n(&self) -> usize {
        self.both + self.a_only + self.b_only + self.neither
    }
}

/// McNemar's exact two-sided p-value for `b` and `c` discordant pairs (1 when there is none).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    // P(X <= k) for X ~ Bin(n, 1/2), summed in log space so that n in the thousands stays exact
    // to double precision.
    let k = b.min(c);
    let mut log_pmf = n as f64 * 0.5f64.ln();
    let mut logs = Vec::with_capacity(k + 1);
    for i in 0..=k {
        logs.push(log_pmf);
        log_pmf += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let cdf = max.exp() * logs.iter().map(|l| (l - max).exp()).sum::<f64>();
    (2.0 * cdf).min(1.0)
}

/// The difference of the two marginal proportions, `(a_only - b_only) / n`, with Newcombe's 95%
/// hybrid score interval for paired data (his method 10); `None` when the table is empty.
pub fn paired_difference(t: &PairedTable) -> Option<(f64, [f64; 2])> {
    let n = t.n();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let p1 = (t.both + t.a_only) as f64 / nf;
    let p2 = (t.both + t.b_only) as f64 / nf;
    let diff = p1 - p2;
    let [l1, u1] = wilson_interval(t.both + t.a_only, n)?;
    let [l2, u2] = wilson_interval(t.both + t.b_only, n)?;
    let (a, b, c, d) = (t.both as f64, t.a_only as f64, t.b_only as f64, t.neither as f64);
    let denom = (a + b) * (c + d) * (a + c) * (b + d);
    let phi = if denom > 0.0 { (a * d - b * c) / denom.sqrt() } else { 0.0 };
    let (dl1, du1, dl2, du2) = (p1 - l1, u1 - p1, p2 - l2, u2 - p2);
    let lower = diff - (dl1 * dl1 - 2.0 * phi * dl1 * du2 + du2 * du2).max(0.0).sqrt();
    let upper = diff + (du1 * du1 - 2.0 * phi * du1 * dl2 + dl2 * dl2).max(0.0).sqrt();
    Some((diff, [lower.max(-1.0), upper.min(1.0)]))
}

/// Cohen's (unweighted) kappa of a square table (rows: A's label, columns: B's label).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Kappa {
    /// Items in the table.
    pub n: usize,
    /// Observed agreement: the diagonal over n.
    pub observed: f64,
    /// Agreement expected by chance from the marginals.
    pub expected: f64,
    /// `(observed - expected) / (1 - expected)`; `None` when expected is 1 (both raters gave one
    /// and the same label to every item).
    pub kappa: Option<f64>,
    /// Its large-sample standard error (Fleiss, Cohen and Everitt 1969).
    pub se: Option<f64>,
    /// kappa +- 1.96 se.
    pub ci95: Option<[f64; 2]>,
}

/// Cohen's kappa of a 3x3 table of counts; `None` when it is empty.
pub fn cohen_kappa(table: &[[usize; 3]; 3]) -> Option<Kappa> {
    let n: usize = table.iter().flatten().sum();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let p = |i: usize, j: usize| table[i][j] as f64 / nf;
    let row: Vec<f64> = (0..3).map(|i| (0..3).map(|j| p(i, j)).sum()).collect();
    let col: Vec<f64> = (0..3).map(|j| (0..3).map(|i| p(i, j)).sum()).collect();
    let observed: f64 = (0..3).map(|i| p(i, i)).sum();
    let expected: f64 = (0..3).map(|i| row[i] * col[i]).sum();
    if (1.0 - expected).abs() < 1e-15 {
        return Some(Kappa { n, observed, expected, kappa: None, se: None, ci95: None });
    }
    let kappa = (observed - expected) / (1.0 - expected);
    let term_a: f64 = (0..3).map(|i| p(i, i) * (1.0 - (row[i] + col[i]) * (1.0 - kappa)).powi(2)).sum();
    let term_b: f64 = (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .filter(|(i, j)| i != j)
        .map(|(i, j)| p(i, j) * (row[j] + col[i]).powi(2))
        .sum();
    let term_b = (1.0 - kappa).powi(2) * term_b;
    let term_c = (kappa - expected * (1.0 - kappa)).powi(2);
    let var = ((term_a + term_b - term_c) / (1.0 - expected).powi(2) / nf).max(0.0);
    let se = var.sqrt();
    Some(Kappa {
        n,
        observed,
        expected,
        kappa: Some(kappa),
        se: Some(se),
        ci95: Some([kappa - Z_95 * se, kappa + Z_95 * se]),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// McNemar's exact p-values, from statsmodels 0.15.0
    /// (`statsmodels.stats.contingency_tables.mcnemar([[a, b], [c, d]], exact=True).pvalue`,
    /// computed in /work/venv-fixtures; the diagonal does not enter the exact test).
    #[test]
    fn mcnemar_exact_p_values_match_statsmodels() {
        let known: [(usize, usize, f64); 7] = [
            (0, 0, 1.0),
            (1, 0, 1.0),
            (10, 2, 0.03857421875),
            (12, 2, 0.012939453125),
            (59, 6, 4.964650327128616e-12),
            (30, 30, 1.0),
            (120, 150, 0.07738939898021849),
        ];
        for (b, c, p) in known {
            let got = mcnemar_exact(b, c);
            assert!(close(got, p, 1e-12 + p * 1e-9), "b={b} c={c}: {got} vs {p}");
            assert_eq!(mcnemar_exact(c, b), got, "symmetric in b and c");
        }
    }

    /// Cohen's kappa, its standard error and 95% interval, from statsmodels 0.15.0
    /// (`statsmodels.stats.inter_rater.cohens_kappa(table)`: `kappa`, `std_kappa`, `kappa_low`,
    /// `kappa_upp`), computed in /work/venv-fixtures.
    #[test]
    fn cohen_kappa_and_its_interval_match_statsmodels() {
        #[allow(clippy::type_complexity)]
        let known: [([[usize; 3]; 3], f64, f64, f64, f64); 3] = [
            (
                [[20, 5, 1], [3, 30, 4], [2, 6, 29]],
                0.6806083650190115,
                0.06204546933785841,
                0.5590014797129247,
                0.8022152503250982,
            ),
            ([[50, 0, 0], [0, 40, 0], [0, 0, 10]], 1.0, 0.0, 1.0, 1.0),
            (
                [[5, 10, 3], [12, 4, 6], [2, 7, 1]],
                -0.25313283208020054,
                0.08903256916621677,
                -0.42763346109705674,
                -0.07863220306334434,
            ),
        ];
        for (table, kappa, se, lo, hi) in known {
            let k = cohen_kappa(&table).unwrap();
            assert!(close(k.kappa.unwrap(), kappa, 1e-10), "{table:?}: kappa {:?} vs {kappa}", k.kappa);
            assert!(close(k.se.unwrap(), se, 1e-10), "{table:?}: se {:?} vs {se}", k.se);
            let [l, h] = k.ci95.unwrap();
            assert!(close(l, lo, 1e-9) && close(h, hi, 1e-9), "{table:?}: [{l}, {h}] vs [{lo}, {hi}]");
        }
    }

    #[test]
    fn kappa_is_undefined_when_both_raters_give_one_label_to_everything() {
        let k = cohen_kappa(&[[7, 0, 0], [0, 0, 0], [0, 0, 0]]).unwrap();
        assert_eq!(k.observed, 1.0);
        assert_eq!(k.kappa, None);
        assert_eq!(cohen_kappa(&[[0; 3]; 3]), None);
    }

    /// Newcombe's paired interval (method 10), recomputed in Python in /work/venv-fixtures from
    /// statsmodels' Wilson intervals (`proportion_confint(k, n, method="wilson")`) and the phi
    /// correction as the paper writes it.
    #[test]
    fn the_paired_difference_interval_matches_newcombes_method_10() {
        /// (both, A only, B only, neither), difference, lower, upper.
        type Known = ((usize, usize, usize, usize), f64, f64, f64);
        let known: [Known; 3] = [
            ((36, 12, 2, 0), 0.2, 0.05692958400323875, 0.3404276029749408),
            ((10, 3, 4, 83), -0.01, -0.06821545782341393, 0.046926692759293454),
            ((0, 0, 0, 20), 0.0, -0.1611251580528194, 0.1611251580528194),
        ];
        for ((both, a_only, b_only, neither), diff, lo, hi) in known {
            let t = PairedTable { both, a_only, b_only, neither };
            let (d, [l, h]) = paired_difference(&t).unwrap();
            assert!(close(d, diff, 1e-12), "{t:?}: {d} vs {diff}");
            assert!(close(l, lo, 1e-9) && close(h, hi, 1e-9), "{t:?}: [{l}, {h}] vs [{lo}, {hi}]");
        }
        assert_eq!(paired_difference(&PairedTable::default()), None);
    }
}
