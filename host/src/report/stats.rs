//! The numbers of a report: numpy's rounding, percentages, and 95% Wilson score intervals.

/// The z of a two-sided 95% interval: the 0.975 quantile of the standard normal distribution.
pub const Z_95: f64 = 1.959963984540054;

/// numpy's `np.round(x, 2)`: `rint(x * 100) / 100`, ties to even, in f64, same operation order.
pub fn numpy_round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// A rate as the reference reports it: `np.round(rate * 100, 2)`.
pub fn percent(rate: f64) -> f64 {
    numpy_round2(rate * 100.0)
}

/// The 95% Wilson score interval of `k` successes in `n` trials, as fractions in `[0, 1]`;
/// `None` when `n` is 0 (no interval exists).
pub fn wilson_interval(k: usize, n: usize) -> Option<[f64; 2]> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z_95 * Z_95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z_95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    let lower = if k == 0.0 { 0.0 } else { (centre - half).max(0.0) };
    let upper = if k == n { 1.0 } else { (centre + half).min(1.0) };
    Some([lower, upper])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn numpy_rounding_sends_exact_ties_to_even() {
        // 1/8 = 12.5 % is exactly representable: no rounding at all.
        assert_eq!(percent(1.0 / 8.0), 12.5);
        // 1/32 = 3.125 %, times 100 is exactly 312.5: ties to even, 312.
        assert_eq!(percent(1.0 / 32.0), 3.12);
        // 3/32 = 9.375 %, 937.5: ties to even, 938.
        assert_eq!(percent(3.0 / 32.0), 9.38);
        // 5/32 = 15.625 %, 1562.5 -> 1562.
        assert_eq!(percent(5.0 / 32.0), 15.62);
    }

    #[test]
    fn numpy_rounding_follows_binary_floating_point_not_decimal() {
        // numpy multiplies, rints and divides in f64 (no decimal correction, unlike Python's
        // round): 1.005 * 100 is 100.49999999999999, so np.round(1.005, 2) == 1.0; 2.675 * 100
        // rounds to exactly 267.5, a tie sent to even 268, so np.round(2.675, 2) == 2.68 where
        // Python's round(2.675, 2) gives 2.67.
        assert_eq!(numpy_round2(1.005), 1.0);
        assert_eq!(numpy_round2(2.675), 2.68);
        assert_eq!(numpy_round2(0.125), 0.12);
        assert_eq!(percent(1.0 / 3.0), 33.33);
        assert_eq!(percent(2.0 / 3.0), 66.67);
        assert_eq!(percent(1.0), 100.0);
        assert_eq!(percent(0.0), 0.0);
    }

    fn round4(ci: [f64; 2]) -> [f64; 2] {
        ci.map(|x| (x * 1e4).round() / 1e4)
    }

    #[test]
    fn wilson_interval_matches_known_values() {
        assert_eq!(round4(wilson_interval(8, 10).unwrap()), [0.4902, 0.9433]);
        assert_eq!(round4(wilson_interval(0, 10).unwrap()), [0.0, 0.2775]);
        assert_eq!(round4(wilson_interval(10, 10).unwrap()), [0.7225, 1.0]);
        assert_eq!(round4(wilson_interval(1, 2).unwrap()), [0.0945, 0.9055]);
        assert_eq!(round4(wilson_interval(50, 100).unwrap()), [0.4038, 0.5962]);
        assert_eq!(wilson_interval(0, 10).unwrap()[0], 0.0);
        assert_eq!(wilson_interval(10, 10).unwrap()[1], 1.0);
    }

    #[test]
    fn wilson_interval_of_no_trials_is_none() {
        assert_eq!(wilson_interval(0, 0), None);
    }
}
