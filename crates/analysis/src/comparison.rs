//! The comparisons the reports make, computed from the configurations' per-seed results:
//! each configuration against its reference by paired differences over seeds (95% t
//! intervals, Holm's correction over the comparisons of one report), and the trend of final
//! error across cardinality (per-seed least-squares slopes against log2 C).
//!
//! The reference is the same network in f32 when the configurations differ in precision;
//! else the ResNet (C = 1) when they differ in cardinality (the one at the same complexity
//! level when there are several); otherwise the first configuration.

use crate::paper;
use crate::stats::{holm, paired, slope, unique_seeds, Paired, RepeatedSeed, Stat, ALPHA, LEVEL};
use crate::summary::Config;

/// Configurations whose multiply-adds differ by less than this ratio are at one complexity
/// level: the preserve-complexity solver rounds d to an integer, which moves MACs by a few
/// percent, far less than a change of width or depth does.
pub const SAME_COMPLEXITY: f64 = 1.15;

/// True when the configurations differ only in block form (same C, d and complexity):
/// the question is then whether they are one function, not which is better.
pub fn forms_only(configs: &[Config]) -> bool {
    configs.len() > 1
        && configs.iter().all(|c| {
            c.cardinality == configs[0].cardinality
                && c.bottleneck_width == configs[0].bottleneck_width
                && c.params == configs[0].params
                && c.macs == configs[0].macs
        })
        && configs.iter().any(|c| c.form != configs[0].form)
}

/// The configurations' indices grouped by complexity level, levels by ascending MACs: a new
/// level starts where MACs exceed [`SAME_COMPLEXITY`] times the current level's smallest.
pub fn complexity_levels(configs: &[Config]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..configs.len()).collect();
    order.sort_by_key(|&i| configs[i].macs);
    let mut levels: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match levels.last_mut() {
            Some(level)
                if (configs[i].macs as f64) < SAME_COMPLEXITY * configs[level[0]].macs as f64 =>
            {
                level.push(i)
            }
            _ => levels.push(vec![i]),
        }
    }
    levels
}

fn level_of(levels: &[Vec<usize>], i: usize) -> &[usize] {
    levels
        .iter()
        .find(|level| level.contains(&i))
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// ResNets (C = 1) and ResNeXts (C > 1) at two or more complexity levels: the question "at
/// equal FLOPs, is ResNeXt better?" asked across complexity.
pub fn across_complexity(configs: &[Config]) -> bool {
    configs.iter().any(|c| c.cardinality == 1)
        && configs.iter().any(|c| c.cardinality > 1)
        && complexity_levels(configs).len() > 1
}

/// Three or more configurations, each at its own cardinality: a sweep over C, whose trend
/// [`trend`] measures.
pub fn cardinality_sweep(configs: &[Config]) -> bool {
    let mut cardinalities: Vec<usize> = configs.iter().map(|c| c.cardinality).collect();
    cardinalities.sort_unstable();
    cardinalities.dedup();
    configs.len() > 2 && cardinalities.len() == configs.len() && cardinalities[0] > 0
}

/// The index of the configuration `i` is compared with; none for a reference itself.
pub fn reference_of(configs: &[Config], i: usize) -> Option<usize> {
    // A precision sweep asks whether a precision changes a network's error: each
    // configuration against the same network trained in f32.
    if configs.iter().any(|c| c.precision != configs[0].precision) {
        if configs[i].precision == "f32" {
            return None;
        }
        let same_network = |c: &Config| {
            (&c.model, c.cardinality, c.bottleneck_width, &c.form)
                == (
                    &configs[i].model,
                    configs[i].cardinality,
                    configs[i].bottleneck_width,
                    &configs[i].form,
                )
        };
        return configs
            .iter()
            .position(|c| c.precision == "f32" && same_network(c));
    }
    let resnets: Vec<usize> = (0..configs.len())
        .filter(|&j| configs[j].cardinality == 1)
        .collect();
    let differ_in_c = configs
        .iter()
        .any(|c| c.cardinality != configs[0].cardinality);
    if forms_only(configs) || !differ_in_c || resnets.is_empty() {
        return (i != 0).then_some(0);
    }
    if configs[i].cardinality == 1 {
        return None;
    }
    let levels = complexity_levels(configs);
    let same_level = level_of(&levels, i);
    if let Some(&r) = resnets.iter().find(|r| same_level.contains(r)) {
        return Some(r);
    }
    // No ResNet at this level: the nearest in multiply-adds, by ratio.
    let distance = |j: usize| (configs[j].macs as f64 / configs[i].macs as f64).ln().abs();
    resnets
        .iter()
        .copied()
        .min_by(|&a, &b| distance(a).total_cmp(&distance(b)))
}

/// What a comparison found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Lower error than the reference (Holm-corrected).
    Lower,
    Higher,
    /// The interval's half-width, in points.
    NoDifference(f64),
    /// No interval: why (one seed, no seed in common, a seed that appears twice).
    Uncomputable(String),
}

impl Verdict {
    /// "lower", "higher", "no difference detected (±0.14)", or why none was computed.
    pub fn words(&self) -> String {
        match self {
            Verdict::Lower => "lower".into(),
            Verdict::Higher => "higher".into(),
            Verdict::NoDifference(width) => format!("no difference detected (±{width:.2})"),
            Verdict::Uncomputable(why) => format!("cannot be computed ({why})"),
        }
    }

    pub fn computed(&self) -> bool {
        !matches!(self, Verdict::Uncomputable(_))
    }
}

/// A configuration against its reference: final test top-1 error in percent, paired by
/// seed.
#[derive(Debug, Clone)]
pub struct Comparison<'a> {
    pub config: &'a Config,
    pub reference: &'a Config,
    /// The differences `config - reference` over the seeds both have, or the seed that
    /// appears twice on one side.
    pub paired: Result<Paired, (String, RepeatedSeed)>,
    /// The paired t test's two-sided p-value, and Holm's adjustment of it over every
    /// comparison of the report that has one.
    pub p: Option<f64>,
    pub holm_p: Option<f64>,
    pub verdict: Verdict,
}

impl Comparison<'_> {
    /// The mean paired difference and its 95% interval, when there are seeds to pair.
    pub fn difference(&self) -> Option<&Stat> {
        self.paired
            .as_ref()
            .ok()
            .map(|p| &p.difference)
            .filter(|d| d.n > 0)
    }

    pub fn interval(&self) -> Option<(f64, f64)> {
        self.difference()?.interval(LEVEL)
    }

    /// The number of paired seeds.
    pub fn seeds(&self) -> usize {
        self.difference().map_or(0, |d| d.n)
    }
}

fn pair<'a>(config: &'a Config, reference: &'a Config) -> Comparison<'a> {
    let repeat = |c: &Config| {
        unique_seeds(&c.final_test_top1_by_seed)
            .err()
            .map(|seed| (c.label.clone(), seed))
    };
    let paired = match repeat(config).or_else(|| repeat(reference)) {
        Some(repeated) => Err(repeated),
        None => Ok(paired(
            &config.final_test_top1_by_seed,
            &reference.final_test_top1_by_seed,
        )
        .expect("both sides' seeds are unique")),
    };
    let (p, verdict) = match &paired {
        Err((label, RepeatedSeed(seed))) => (
            None,
            Verdict::Uncomputable(format!("seed {seed} appears twice in {label}")),
        ),
        Ok(p) => match p.difference.n {
            0 => (None, Verdict::Uncomputable("no seed in common".into())),
            1 => (None, Verdict::Uncomputable("one seed".into())),
            // Decided once Holm's correction has seen every p-value.
            _ => (p.difference.p_value(), Verdict::NoDifference(f64::NAN)),
        },
    };
    Comparison {
        config,
        reference,
        paired,
        p,
        holm_p: None,
        verdict,
    }
}

/// Lower or higher where the Holm-adjusted p is at most α, else no difference detected
/// with the 95% interval's half-width.
fn decide(difference: &Stat, holm_p: f64) -> Verdict {
    let half_width = difference.half_width(LEVEL).unwrap_or(f64::NAN);
    if holm_p <= ALPHA && difference.mean < 0.0 {
        Verdict::Lower
    } else if holm_p <= ALPHA && difference.mean > 0.0 {
        Verdict::Higher
    } else {
        Verdict::NoDifference(half_width)
    }
}

/// Every configuration against its reference ([`reference_of`]), in configuration order,
/// with Holm's correction over the comparisons that have a p-value.
pub fn comparisons(configs: &[Config]) -> Vec<Comparison<'_>> {
    let mut rows: Vec<Comparison> = (0..configs.len())
        .filter_map(|i| Some(pair(&configs[i], &configs[reference_of(configs, i)?])))
        .collect();
    let tested: Vec<usize> = (0..rows.len()).filter(|&k| rows[k].p.is_some()).collect();
    let p_values: Vec<f64> = tested.iter().map(|&k| rows[k].p.unwrap_or(1.0)).collect();
    for (&k, adjusted) in tested.iter().zip(holm(&p_values)) {
        let row = &mut rows[k];
        row.holm_p = Some(adjusted);
        if let Some(difference) = row.difference().copied() {
            row.verdict = decide(&difference, adjusted);
        }
    }
    rows
}

/// Whether error falls with C.
#[derive(Debug, Clone, PartialEq)]
pub enum TrendVerdict {
    /// The slope's 95% interval is entirely below 0.
    Falls,
    Rises,
    /// The interval holds 0; its half-width, in points per doubling.
    NoTrend(f64),
    /// One complete seed (or none): a slope without an interval.
    Uncomputable,
}

/// The trend of final test top-1 error across cardinality, over seeds.
#[derive(Debug, Clone)]
pub struct Trend {
    /// The sweep's cardinalities, ascending.
    pub cardinalities: Vec<usize>,
    /// Each complete seed's least-squares slope of final error (points) against log2 C:
    /// points per doubling of C.
    pub slopes: Vec<(u64, f64)>,
    /// The slopes' mean, spread and count.
    pub slope: Stat,
    /// Seeds left out because some configuration lacks them or has them twice: their
    /// slopes would be over other cardinalities.
    pub left_out: Vec<u64>,
    /// All configurations at one complexity level: C is then the only difference.
    pub preserved: bool,
    pub verdict: TrendVerdict,
}

/// The seeds every configuration has exactly once, ascending, and the others.
fn complete_seeds(configs: &[Config]) -> (Vec<u64>, Vec<u64>) {
    let mut all: Vec<u64> = configs
        .iter()
        .flat_map(|c| c.final_test_top1_by_seed.iter().map(|(s, _)| *s))
        .collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().partition(|seed| {
        configs.iter().all(|c| {
            c.final_test_top1_by_seed
                .iter()
                .filter(|(s, _)| s == seed)
                .count()
                == 1
        })
    })
}

fn final_of(config: &Config, seed: u64) -> f64 {
    config
        .final_test_top1_by_seed
        .iter()
        .find(|(s, _)| *s == seed)
        .map_or(f64::NAN, |(_, e)| *e)
}

/// The trend, for a [`cardinality_sweep`]; none otherwise.
pub fn trend(configs: &[Config]) -> Option<Trend> {
    if !cardinality_sweep(configs) {
        return None;
    }
    let (complete, left_out) = complete_seeds(configs);
    let slopes: Vec<(u64, f64)> = complete
        .iter()
        .filter_map(|&seed| {
            let points: Vec<(f64, f64)> = configs
                .iter()
                .map(|c| ((c.cardinality as f64).log2(), final_of(c, seed)))
                .collect();
            Some((seed, slope(&points)?))
        })
        .collect();
    let values: Vec<f64> = slopes.iter().map(|(_, s)| *s).collect();
    let slope = Stat::of(&values);
    let verdict = match slope.interval(LEVEL) {
        None => TrendVerdict::Uncomputable,
        Some((_, hi)) if hi < 0.0 => TrendVerdict::Falls,
        Some((lo, _)) if lo > 0.0 => TrendVerdict::Rises,
        Some((lo, hi)) => TrendVerdict::NoTrend((hi - lo) / 2.0),
    };
    let mut cardinalities: Vec<usize> = configs.iter().map(|c| c.cardinality).collect();
    cardinalities.sort_unstable();
    Some(Trend {
        cardinalities,
        slopes,
        slope,
        left_out,
        preserved: complexity_levels(configs).len() == 1,
        verdict,
    })
}

/// The paper's Table 3 halves as (depth, least-squares slope of top-1 error against
/// log2 C, in points per doubling): the same measure as [`trend`], on ImageNet.
pub fn paper_slopes() -> Vec<(&'static str, f64)> {
    paper::TABLE_3
        .chunks(5)
        .filter_map(|rows| {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .map(|e| ((e.cardinality as f64).log2(), e.top1))
                .collect();
            Some((rows[0].model.trim_start_matches("ResNet-"), slope(&points)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Curves;

    fn config(label: &str, cardinality: usize, macs: u64, finals: &[(u64, f64)]) -> Config {
        let values: Vec<f64> = finals.iter().map(|(_, e)| *e).collect();
        Config {
            label: label.into(),
            model: label.into(),
            cardinality,
            bottleneck_width: 64 / cardinality.max(1),
            form: "C".into(),
            params: 1000,
            macs,
            epochs: 3,
            final_test_top1: Stat::of(&values),
            final_test_top1_by_seed: finals.to_vec(),
            best_test_top1: Stat::of(&values),
            final_test_top5: Stat::of(&values),
            best_test_top5: Stat::of(&values),
            final_train_top1: Stat::of(&values),
            images_per_sec: Stat::of(&[1.0]),
            throughput_variation: 1.0,
            precision: "f32".into(),
            curves: Curves::default(),
        }
    }

    fn seeds(values: &[f64]) -> Vec<(u64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(s, &v)| (s as u64, v))
            .collect()
    }

    #[test]
    fn references_are_the_resnet_of_the_same_level() {
        let configs = [
            config("resnet-small", 1, 20_000_000, &seeds(&[10.0])),
            config("resnext-small", 32, 21_000_000, &seeds(&[9.0])),
            config("resnet-large", 1, 80_000_000, &seeds(&[8.0])),
            config("resnext-large", 32, 83_000_000, &seeds(&[7.0])),
            config("resnext-mid", 8, 40_000_000, &seeds(&[7.0])),
        ];
        assert_eq!(
            complexity_levels(&configs),
            [vec![0, 1], vec![4], vec![2, 3]]
        );
        assert!(across_complexity(&configs) && !cardinality_sweep(&configs));
        let references: Vec<Option<usize>> = (0..configs.len())
            .map(|i| reference_of(&configs, i))
            .collect();
        // 40 M MACs has no ResNet: the nearer by ratio is 20 M (ln 2 against ln 2 too: a
        // tie keeps the first).
        assert_eq!(references, [None, Some(0), None, Some(2), Some(0)]);
        // Without a ResNet, or without a difference in C: the first configuration.
        let same_c = [
            config("a", 4, 1, &seeds(&[1.0])),
            config("b", 4, 1, &seeds(&[1.0])),
        ];
        assert_eq!(reference_of(&same_c, 1), Some(0));
        assert_eq!(reference_of(&same_c, 0), None);
    }

    #[test]
    fn a_precision_sweep_compares_each_network_with_itself_in_f32() {
        let mut configs = vec![
            config("a", 1, 100, &seeds(&[1.0, 2.0])),
            config("a", 1, 100, &seeds(&[1.0, 2.0])),
            config("b", 32, 100, &seeds(&[1.0, 2.0])),
            config("b", 32, 100, &seeds(&[1.0, 2.0])),
        ];
        configs[1].precision = "bf16-mixed".into();
        configs[3].precision = "bf16-mixed".into();
        let references: Vec<Option<usize>> = (0..configs.len())
            .map(|i| reference_of(&configs, i))
            .collect();
        assert_eq!(references, [None, Some(0), None, Some(2)]);
    }

    #[test]
    fn holm_decides_the_verdicts() {
        // Paired differences from the reference, seeds 0..4:
        // clear: -1.0, -1.2, -0.8, -1.1, -0.9: mean -1.0, sd 0.158, t = -14.1, p ~ 1.5e-4;
        // noisy: +0.5, -0.4, +0.3, -0.6, +0.2: mean 0.0, p = 1;
        // single: one seed, no interval.
        let reference = [10.0, 11.0, 9.0, 10.5, 9.5];
        let shifted =
            |d: [f64; 5]| -> Vec<f64> { reference.iter().zip(d).map(|(r, d)| r + d).collect() };
        let configs = [
            config("1x64d", 1, 100, &seeds(&reference)),
            config(
                "4x24d",
                4,
                100,
                &seeds(&shifted([-1.0, -1.2, -0.8, -1.1, -0.9])),
            ),
            config(
                "8x14d",
                8,
                100,
                &seeds(&shifted([0.5, -0.4, 0.3, -0.6, 0.2])),
            ),
            config("32x4d", 32, 100, &[(3, 12.0)]),
        ];
        let rows = comparisons(&configs);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].verdict, Verdict::Lower);
        let (lo, hi) = rows[0].interval().unwrap();
        // -1.0 ± 2.776 x 0.158 / sqrt(5) = -1.0 ± 0.196.
        assert!(
            (lo + 1.196).abs() < 1e-3 && (hi + 0.804).abs() < 1e-3,
            "{lo} {hi}"
        );
        // Two p-values in the family: the smaller one is doubled.
        assert!((rows[0].holm_p.unwrap() - 2.0 * rows[0].p.unwrap()).abs() < 1e-12);
        // sd of the noisy differences: sqrt(0.9 / 4) = 0.474; ± 2.776 x 0.474 / sqrt(5).
        assert_eq!(rows[1].verdict.words(), "no difference detected (±0.59)");
        assert!(rows[1].holm_p.unwrap() > 0.99, "{:?}", rows[1].holm_p);
        assert_eq!(rows[2].verdict.words(), "cannot be computed (one seed)");
        assert_eq!(rows[2].holm_p, None);
        let twice = [
            config("1x64d", 1, 100, &seeds(&reference)),
            config("4x24d", 4, 100, &[(0, 1.0), (0, 2.0)]),
        ];
        assert_eq!(
            comparisons(&twice)[0].verdict.words(),
            "cannot be computed (seed 0 appears twice in 4x24d)"
        );
    }

    #[test]
    fn the_trend_is_the_mean_of_per_seed_slopes() {
        // log2 C = 0, 1, 2, 3. Seed 0: 10, 9.9, 9.8, 9.7 (slope -0.1); seed 1: 11, 10.8,
        // 10.6, 10.4 (-0.2); seed 2: 10, 9.85, 9.7, 9.55 (-0.15). Mean -0.15, sd 0.05,
        // se 0.0289, 95% interval -0.15 ± 4.303 x 0.0289 = -0.274 to -0.026: falls.
        // Seed 7 is in one configuration only: left out.
        let per_c = |i: usize| -> Vec<(u64, f64)> {
            let mut v = vec![
                (0, 10.0 - 0.1 * i as f64),
                (1, 11.0 - 0.2 * i as f64),
                (2, 10.0 - 0.15 * i as f64),
            ];
            if i == 0 {
                v.push((7, 3.0));
            }
            v
        };
        let configs: Vec<Config> = [1, 2, 4, 8]
            .iter()
            .enumerate()
            .map(|(i, &c)| config(&format!("{c}x"), c, 100, &per_c(i)))
            .collect();
        let trend = trend(&configs).unwrap();
        assert_eq!(trend.left_out, [7]);
        assert_eq!(trend.slopes.len(), 3);
        assert!((trend.slope.mean + 0.15).abs() < 1e-12);
        let (lo, hi) = trend.slope.interval(LEVEL).unwrap();
        assert!(
            (lo + 0.274).abs() < 1e-3 && (hi + 0.026).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(trend.verdict, TrendVerdict::Falls);
        assert!(trend.preserved);
        // Slopes of both signs: no trend.
        let mixed: Vec<Config> = [1, 2, 4]
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let i = i as f64;
                config(
                    &format!("{c}x"),
                    c,
                    100,
                    &seeds(&[10.0 + i, 10.0 - i, 10.0 + 0.5 * i]),
                )
            })
            .collect();
        assert!(matches!(trend_of(&mixed), TrendVerdict::NoTrend(_)));
        // Two cardinalities are a comparison, not a trend.
        assert!(super::trend(&configs[..2]).is_none());
    }

    fn trend_of(configs: &[Config]) -> TrendVerdict {
        trend(configs).unwrap().verdict
    }

    #[test]
    fn the_papers_table_3_slopes() {
        // 50 layers: x = 0, 1, 2, 3, 5 (C = 1..32), y = 23.9, 23.0, 22.6, 22.3, 22.2;
        // means 2.2 and 22.8, Sxx = 14.8, Sxy = -4.7, slope -0.3176.
        let slopes = paper_slopes();
        assert_eq!(slopes[0].0, "50");
        assert!((slopes[0].1 + 4.7 / 14.8).abs() < 1e-12, "{slopes:?}");
        assert_eq!(slopes.len(), 2);
        assert!(slopes[1].1 < 0.0);
    }
}
