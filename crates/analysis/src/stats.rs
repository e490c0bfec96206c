//! The statistics of the reports, written out rather than taken from a crate: Student-t
//! quantiles and tail probabilities (through the regularized incomplete beta function),
//! means with t confidence intervals, paired differences over seeds, Holm's step-down
//! correction and least-squares slopes.
//!
//! No statistics crate is in the workspace's lock file, and the well-kept one (`statrs`)
//! brings a linear-algebra crate the reports do not need; the few functions here are short,
//! standard (Numerical Recipes' continued fraction, Lanczos' gamma) and tested against
//! published tables and textbook examples.

use std::f64::consts::PI;

/// The confidence level of every interval in the reports.
pub const LEVEL: f64 = 0.95;

/// The family-wise error rate Holm's correction holds: one minus [`LEVEL`].
pub const ALPHA: f64 = 1.0 - LEVEL;

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms: about 15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: the series is accurate for x >= 1/2 only.
        return (PI / (PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let sum = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |s, (i, c)| s + c / (x + (i + 1) as f64));
    let t = x + G + 0.5;
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPSILON: f64 = 1e-15;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let even = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < EPSILON {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1].
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    // The fraction converges fast only on this side of the mean; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

/// P(|T| >= |t|) for Student's t with `df` degrees of freedom: the two-sided p-value.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_infinite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// P(T <= t) for Student's t with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let tail = t_two_sided_p(t, df) / 2.0;
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The t with P(T <= t) = p, for p in (0, 1): bisection on the upper tail, which keeps its
/// relative precision where the table's quantiles live.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    assert!(p > 0.0 && p < 1.0, "a quantile needs 0 < p < 1, not {p}");
    assert!(df > 0.0, "Student's t needs df > 0, not {df}");
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let upper = 1.0 - p;
    let tail = |t: f64| t_two_sided_p(t, df) / 2.0;
    let (mut lo, mut hi) = (0.0, 1.0);
    while tail(hi) > upper {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) > upper {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-13 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Mean, sample standard deviation (none for a single value) and count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: Option<f64>,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Stat { mean, std, n }
    }

    /// The standard error of the mean, std / sqrt(n); none below two values.
    pub fn se(&self) -> Option<f64> {
        let std = self.std.filter(|s| s.is_finite() && self.n > 1)?;
        Some(std / (self.n as f64).sqrt())
    }

    /// Half the width of the two-sided t interval of the mean at `level`.
    pub fn half_width(&self, level: f64) -> Option<f64> {
        let se = self.se()?;
        Some(t_quantile((1.0 + level) / 2.0, (self.n - 1) as f64) * se)
    }

    /// The two-sided t interval of the mean at `level`.
    pub fn interval(&self, level: f64) -> Option<(f64, f64)> {
        let half = self.half_width(level)?;
        Some((self.mean - half, self.mean + half))
    }

    /// The two-sided p-value of the t test that the true mean is 0. Values that are all the
    /// same have no spread: they are certain evidence of their mean (p = 0), or of none
    /// (p = 1 when they are all 0).
    pub fn p_value(&self) -> Option<f64> {
        let se = self.se()?;
        if se == 0.0 {
            return Some(if self.mean == 0.0 { 1.0 } else { 0.0 });
        }
        Some(t_two_sided_p(self.mean / se, (self.n - 1) as f64))
    }
}

/// Differences of a configuration from a reference, matched by seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Over the matched seeds: configuration minus reference.
    pub difference: Stat,
    /// The matched seeds, ascending.
    pub seeds: Vec<u64>,
    /// Seeds that only one side has, ascending: they have no partner to be compared with.
    pub unmatched: Vec<u64>,
}

/// A seed that appears more than once on one side, so pairing by seed is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("seed {0} appears more than once")]
pub struct RepeatedSeed(pub u64);

/// An error naming a seed that appears more than once in `values`.
pub fn unique_seeds(values: &[(u64, f64)]) -> Result<(), RepeatedSeed> {
    let mut seeds: Vec<u64> = values.iter().map(|(s, _)| *s).collect();
    seeds.sort_unstable();
    match seeds.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(RepeatedSeed(w[0])),
        None => Ok(()),
    }
}

/// The paired differences `config - reference` over the seeds both have. Seed s trains
/// every configuration on the same data order and initialisation stream, so the seed's
/// own luck largely cancels in its difference.
pub fn paired(config: &[(u64, f64)], reference: &[(u64, f64)]) -> Result<Paired, RepeatedSeed> {
    unique_seeds(config)?;
    unique_seeds(reference)?;
    let mut matched: Vec<(u64, f64)> = config
        .iter()
        .filter_map(|&(seed, value)| {
            let (_, r) = reference.iter().find(|(s, _)| *s == seed)?;
            Some((seed, value - r))
        })
        .collect();
    matched.sort_by_key(|(seed, _)| *seed);
    let mut unmatched: Vec<u64> = config
        .iter()
        .chain(reference)
        .map(|(s, _)| *s)
        .filter(|s| !matched.iter().any(|(m, _)| m == s))
        .collect();
    unmatched.sort_unstable();
    unmatched.dedup();
    let differences: Vec<f64> = matched.iter().map(|(_, d)| *d).collect();
    Ok(Paired {
        difference: Stat::of(&differences),
        seeds: matched.iter().map(|(s, _)| *s).collect(),
        unmatched,
    })
}

/// Holm's step-down adjusted p-values, in the order given: the i-th smallest p (from 0) is
/// multiplied by m - i, capped at 1, and kept from falling below the ones before it.
/// Rejecting where the adjusted p is at most α holds the family-wise error rate at α.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p_values[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// The least-squares slope of y against x; none without two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The fewest values (2 or more) whose two-sided t interval of the mean at `level` is at
/// most `half_width` wide on each side, when the values spread with standard deviation
/// `std`: the smallest n with t((1 + level) / 2, n - 1) * std / sqrt(n) <= half_width. None
/// past [`MAX_SEEDS`], or for a spread or width that is not a positive finite number (a
/// zero spread needs the minimum, 2).
pub fn seeds_for_half_width(std: f64, half_width: f64, level: f64) -> Option<usize> {
    if !(std.is_finite() && std >= 0.0 && half_width.is_finite() && half_width > 0.0) {
        return None;
    }
    (2..=MAX_SEEDS).find(|&n| {
        t_quantile((1.0 + level) / 2.0, (n - 1) as f64) * std / (n as f64).sqrt() <= half_width
    })
}

/// Where [`seeds_for_half_width`] stops looking.
pub const MAX_SEEDS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_for_a_half_width_match_the_t_table() {
        // sd 1, width 1: n = 6 gives t(5) 2.571 / sqrt 6 = 1.050, n = 7 gives t(6) 2.447 /
        // sqrt 7 = 0.925.
        assert_eq!(seeds_for_half_width(1.0, 1.0, 0.95), Some(7));
        // sd 0.25, width 0.2: n = 8 gives 2.365 * 0.25 / 2.828 = 0.209, n = 9 gives
        // 2.306 * 0.25 / 3 = 0.192.
        assert_eq!(seeds_for_half_width(0.25, 0.2, 0.95), Some(9));
        // Large n: t tends to 1.96, so n is about (1.96 sd / w)^2 = 384.1 for sd = 10 w.
        let n = seeds_for_half_width(10.0, 1.0, 0.95).unwrap();
        assert!((385..=390).contains(&n), "{n}");
        assert_eq!(seeds_for_half_width(0.0, 0.2, 0.95), Some(2));
        assert_eq!(seeds_for_half_width(1e6, 0.2, 0.95), None);
        assert_eq!(seeds_for_half_width(f64::NAN, 0.2, 0.95), None);
        assert_eq!(seeds_for_half_width(0.3, 0.0, 0.95), None);
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn t_quantiles_match_the_printed_table() {
        // t_{0.975, df}, as printed (three decimals) in any statistics textbook's table.
        let table = [
            (1.0, 12.706),
            (2.0, 4.303),
            (3.0, 3.182),
            (4.0, 2.776),
            (5.0, 2.571),
            (9.0, 2.262),
            (29.0, 2.045),
            (120.0, 1.980),
        ];
        for (df, printed) in table {
            let q = t_quantile(0.975, df);
            assert!(close(q, printed, 0.0005), "df {df}: {q} vs {printed}");
        }
        // Beyond the table's rounding: closed forms for df = 1 (Cauchy) and df = 2.
        assert!(close(t_quantile(0.975, 1.0), (PI * 0.475).tan(), 1e-9));
        let p: f64 = 0.975;
        let df2 = (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
        assert!(close(t_quantile(0.975, 2.0), df2, 1e-9));
        // The normal limit, and symmetry.
        assert!(close(t_quantile(0.975, 1e7), 1.959_964, 1e-5));
        assert!(close(
            t_quantile(0.025, 9.0),
            -t_quantile(0.975, 9.0),
            1e-12
        ));
        assert!(close(t_quantile(0.995, 4.0), 4.604, 0.0005));
    }

    #[test]
    fn t_tails_invert_the_quantiles() {
        for df in [1.0, 2.0, 5.0, 30.0] {
            for p in [0.6, 0.9, 0.975, 0.999] {
                assert!(close(t_cdf(t_quantile(p, df), df), p, 1e-10), "{df} {p}");
            }
        }
        assert!(close(t_cdf(0.0, 3.0), 0.5, 1e-15));
        assert!(close(t_two_sided_p(2.262, 9.0), 0.05, 5e-5));
        assert!(close(ln_gamma(0.5), PI.sqrt().ln(), 1e-13));
        assert!(close(ln_gamma(10.0), 362_880f64.ln(), 1e-12));
        // I_x(1, 1) = x, I_x(a, 1) = x^a.
        assert!(close(incomplete_beta(1.0, 1.0, 0.3), 0.3, 1e-14));
        assert!(close(incomplete_beta(3.0, 1.0, 0.5), 0.125, 1e-14));
    }

    #[test]
    fn paired_t_reproduces_students_sleep_data() {
        // Student (1908), the Cushny-Peebles sleep data: extra hours of sleep of ten
        // patients under two drugs. Differences (drug 2 - drug 1): 1.2, 2.4, 1.3, 1.3, 0.0,
        // 1.0, 1.8, 0.8, 4.6, 1.4; sum 15.8, mean 1.58; sum of squared deviations 13.616,
        // sd = sqrt(13.616 / 9) = 1.22999, se = sd / sqrt(10) = 0.38896, t = 4.0621;
        // 95% interval 1.58 ± 2.26216 x 0.38896 = 0.70011 to 2.45989; p = 0.002833 (as R's
        // `t.test(extra ~ group, data = sleep, paired = TRUE)` prints, with the sign flipped).
        let drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
        let drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];
        let side = |values: &[f64]| -> Vec<(u64, f64)> {
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as u64, v))
                .collect()
        };
        // The reference lists its seeds in another order: pairing is by seed, not position.
        let mut reference = side(&drug1);
        reference.reverse();
        let p = paired(&side(&drug2), &reference).unwrap();
        let d = p.difference;
        assert_eq!((d.n, p.seeds.len(), p.unmatched.len()), (10, 10, 0));
        assert!(close(d.mean, 1.58, 1e-12));
        assert!(close(d.std.unwrap(), 1.229_995, 1e-6));
        assert!(close(d.se().unwrap(), 0.388_958, 1e-6));
        let (lo, hi) = d.interval(LEVEL).unwrap();
        assert!(
            close(lo, 0.700_114, 1e-6) && close(hi, 2.459_886, 1e-6),
            "{lo} {hi}"
        );
        assert!(close(d.p_value().unwrap(), 0.002_833, 1e-6));
    }

    #[test]
    fn pairing_names_what_it_cannot_pair() {
        let p = paired(
            &[(0, 10.0), (1, 11.0), (5, 9.0)],
            &[(1, 10.0), (0, 9.0), (2, 1.0)],
        )
        .unwrap();
        assert_eq!(p.seeds, [0, 1]);
        assert_eq!(p.unmatched, [2, 5]);
        assert_eq!(p.difference.mean, 1.0);
        // One pair: a mean, no interval.
        let one = paired(&[(0, 10.0)], &[(0, 9.5)]).unwrap().difference;
        assert_eq!((one.n, one.interval(LEVEL), one.p_value()), (1, None, None));
        assert_eq!(
            paired(&[(0, 1.0), (0, 2.0)], &[(0, 1.0)]),
            Err(RepeatedSeed(0))
        );
        // Every seed the same difference: no spread, certain of it.
        let same = Stat::of(&[-2.0, -2.0, -2.0]);
        assert_eq!(
            (same.p_value(), same.half_width(LEVEL)),
            (Some(0.0), Some(0.0))
        );
        assert_eq!(Stat::of(&[0.0, 0.0]).p_value(), Some(1.0));
    }

    #[test]
    fn holm_steps_down() {
        // m = 4. Sorted: 0.01 x 4 = 0.04, 0.015 x 3 = 0.045, 0.03 x 2 = 0.06, 0.2 x 1 = 0.2.
        // At α = 0.05 Holm rejects the first two; Bonferroni (x 4: 0.04, 0.06, 0.12, 0.8)
        // only the first, and no correction would reject the first three.
        let adjusted = holm(&[0.03, 0.2, 0.01, 0.015]);
        let expected = [0.06, 0.2, 0.04, 0.045];
        for (a, e) in adjusted.iter().zip(expected) {
            assert!(close(*a, e, 1e-12), "{adjusted:?}");
        }
        // Monotone: a larger p never gets a smaller adjusted p; capped at 1.
        // Sorted: 0.04 x 3 = 0.12, 0.05 x 2 = 0.1 -> kept at 0.12, 0.6 x 1 = 0.6.
        let adjusted = holm(&[0.05, 0.04, 0.6]);
        assert!(close(adjusted[0], 0.12, 1e-12) && close(adjusted[1], 0.12, 1e-12));
        assert_eq!(holm(&[0.5, 0.9]), [1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn slope_is_least_squares() {
        // x = 1..5, y = 2, 4, 5, 4, 5: means 3 and 4, Sxy = 6, Sxx = 10, slope 0.6.
        let points = [(1.0, 2.0), (2.0, 4.0), (3.0, 5.0), (4.0, 4.0), (5.0, 5.0)];
        assert!(close(slope(&points).unwrap(), 0.6, 1e-12));
        // An exact line, and no slope from one x.
        let line: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, 3.0 - 0.5 * i as f64)).collect();
        assert!(close(slope(&line).unwrap(), -0.5, 1e-12));
        assert_eq!(slope(&[(2.0, 1.0), (2.0, 3.0)]), None);
    }
}
