//! Conclusions computed from the data: each difference, and whether it is larger than the
//! seed-to-seed spread.
//!
//! The rule: a difference of two means counts as larger than the seed-to-seed spread when
//! it exceeds twice the standard error of the difference, sqrt(s1²/n1 + s2²/n2). That is a
//! screen, not a formal test: with three seeds a side it is roughly p < 0.1, and there is no
//! correction for comparing several configurations with one reference. With one seed on
//! either side the spread is not measured and the text says so instead of ranking.

use crate::paper;
use crate::summary::{Config, Stat};

/// How a difference compares with the seed-to-seed spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Larger than twice its standard error (which is given).
    Larger(f64),
    /// Within twice its standard error: no significant difference.
    Within(f64),
    /// A side has a single seed: the spread is unknown.
    Unmeasured,
    /// Several seeds on both sides gave identical values: no spread to compare with, which
    /// suggests the seed does not change the run.
    NoSpread,
}

/// `b - a` and its verdict.
pub fn difference(a: &Stat, b: &Stat) -> (f64, Verdict) {
    let delta = b.mean - a.mean;
    let verdict = match (a.std, b.std) {
        (Some(sa), Some(sb)) if a.n > 1 && b.n > 1 => {
            let se = (sa * sa / a.n as f64 + sb * sb / b.n as f64).sqrt();
            if se == 0.0 {
                Verdict::NoSpread
            } else if delta.abs() > 2.0 * se {
                Verdict::Larger(se)
            } else {
                Verdict::Within(se)
            }
        }
        _ => Verdict::Unmeasured,
    };
    (delta, verdict)
}

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

fn verdict_text(verdict: Verdict) -> String {
    match verdict {
        Verdict::Larger(se) => format!(
            "larger than the seed-to-seed spread (more than twice the standard error of the difference, {se:.2} points)"
        ),
        Verdict::Within(se) => format!(
            "within the seed-to-seed spread (twice the standard error of the difference is {:.2} points): no significant difference",
            2.0 * se
        ),
        Verdict::Unmeasured => "with one seed, the seed-to-seed spread is not measured, so this difference cannot be told apart from noise".into(),
        Verdict::NoSpread => "the seeds gave identical values, so there is no spread to compare with: check that the seed changes the run".into(),
    }
}

fn seeds_text(configs: &[Config]) -> String {
    let min = configs.iter().map(Config::seeds).min().unwrap_or(0);
    let max = configs.iter().map(Config::seeds).max().unwrap_or(0);
    if min == max {
        format!(
            "{min} seed{} per configuration",
            if min == 1 { "" } else { "s" }
        )
    } else {
        format!("{min} to {max} seeds per configuration")
    }
}

/// The conclusion, as Markdown bullet points.
pub fn conclude(configs: &[Config]) -> Vec<String> {
    match configs {
        [] => vec!["No finished run: nothing to conclude yet.".into()],
        [only] => vec![format!(
            "Only one configuration ({}) has finished: final test top-1 error {:.2}%. There is nothing to compare it with yet.",
            only.label, only.final_test_top1.mean
        )],
        _ if forms_only(configs) => equivalence(configs),
        _ => comparison(configs),
    }
}

/// The largest gap between two configurations' mean curves, and the epoch where it is.
fn largest_gap(a: &[(usize, Stat)], b: &[(usize, Stat)]) -> Option<(f64, usize)> {
    a.iter()
        .filter_map(|(epoch, sa)| {
            let (_, sb) = b.iter().find(|(e, _)| e == epoch)?;
            Some(((sb.mean - sa.mean).abs(), *epoch))
        })
        .max_by(|x, y| x.0.total_cmp(&y.0))
}

fn equivalence(configs: &[Config]) -> Vec<String> {
    let reference = &configs[0];
    let mut lines = Vec::new();
    for other in &configs[1..] {
        let (delta, verdict) = difference(&reference.final_test_top1, &other.final_test_top1);
        let test_gap = largest_gap(&reference.curves.test_top1, &other.curves.test_top1);
        let loss_gap = largest_gap(&reference.curves.train_loss, &other.curves.train_loss);
        let mut line = format!(
            "**{}** against **{}**: final test top-1 error {:.2}% vs {:.2}% ({delta:+.2} points), {}.",
            other.label,
            reference.label,
            other.final_test_top1.mean,
            reference.final_test_top1.mean,
            verdict_text(verdict)
        );
        if let (Some((gap, epoch)), Some((loss, loss_epoch))) = (test_gap, loss_gap) {
            line.push_str(&format!(
                " Over training the test-error curves are at most {gap:.2} points apart (epoch {epoch}), the training-loss curves at most {loss:.4} (epoch {loss_epoch})."
            ));
        }
        lines.push(line);
    }
    // Forms whose every metric matches exactly compute the same arithmetic: worth saying,
    // since their lines overlap in the figures.
    let same = |a: &Config, b: &Config| {
        let means = |c: &Config| -> Vec<(usize, u64)> {
            [
                &c.curves.train_top1,
                &c.curves.test_top1,
                &c.curves.train_loss,
                &c.curves.test_loss,
            ]
            .iter()
            .flat_map(|curve| curve.iter().map(|(e, s)| (*e, s.mean.to_bits())))
            .collect()
        };
        !a.curves.test_top1.is_empty() && means(a) == means(b)
    };
    for (i, a) in configs.iter().enumerate() {
        for b in &configs[i + 1..] {
            if same(a, b) {
                lines.push(format!(
                    "**{}** and **{}** give bit-identical losses and errors at every epoch: the same arithmetic.",
                    a.label, b.label
                ));
            }
        }
    }
    let verdicts: Vec<Verdict> = configs[1..]
        .iter()
        .map(|c| difference(&reference.final_test_top1, &c.final_test_top1).1)
        .collect();
    let measured = verdicts
        .iter()
        .any(|v| matches!(v, Verdict::Larger(_) | Verdict::Within(_)));
    let any_larger = verdicts.iter().any(|v| matches!(v, Verdict::Larger(_)));
    lines.push(if !measured {
        format!(
            "The forms start as one function; they drift apart only through floating-point rounding, which training amplifies. With {} this run does not measure how large a gap seed noise alone makes: run the `full` preset (three seeds) for that yardstick.",
            seeds_text(configs)
        )
    } else if any_larger {
        "At least one form ends further from the reference than the seed-to-seed spread explains: that is more than rounding, look for a bug in the conversion or the kernels.".into()
    } else {
        "No form ends further from the reference than the seed-to-seed spread: no difference detected (which bounds a real difference only as tightly as the seeds' standard error).".into()
    });
    if let Some(note) = unmeasured_note(&configs[1..], &verdicts, measured) {
        lines.push(note);
    }
    // Time per epoch is where the forms do differ.
    let seconds = |c: &Config| -> Option<f64> {
        let points = &c.curves.epoch_seconds;
        (!points.is_empty())
            .then(|| points.iter().map(|(_, s)| s.mean).sum::<f64>() / points.len() as f64)
    };
    let timed: Vec<(&Config, f64)> = configs
        .iter()
        .filter_map(|c| Some((c, seconds(c)?)))
        .collect();
    let unsteady: Vec<&str> = configs
        .iter()
        .filter(|c| !crate::table::steady(c))
        .map(|c| c.label.as_str())
        .collect();
    if !unsteady.is_empty() {
        lines.push(format!(
            "Time per epoch is not compared: the throughput of {} varied by more than {:.0}% between epochs, so the machine was shared with other work while they trained. `cardinal bench train --form A|B|C` times the forms side by side.",
            unsteady.join(", "),
            (crate::table::UNSTEADY - 1.0) * 100.0
        ));
    } else if let Some(&(fastest, best)) = timed.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        let others: Vec<String> = timed
            .iter()
            .filter(|(c, _)| c.label != fastest.label)
            .map(|(c, s)| format!("{} {:.2}x ({s:.0} s)", c.label, s / best))
            .collect();
        if !others.is_empty() {
            lines.push(format!(
                "Time per epoch (training and evaluation): {} is fastest at {best:.0} s; {}.",
                fastest.label,
                others.join(", ")
            ));
        }
    }
    lines
}

fn comparison(configs: &[Config]) -> Vec<String> {
    let baseline = &configs[0];
    let mut lines = Vec::new();
    let mut verdicts = Vec::new();
    for other in &configs[1..] {
        let (delta, verdict) = difference(&baseline.final_test_top1, &other.final_test_top1);
        verdicts.push(verdict);
        let direction = if delta < 0.0 { "lower" } else { "higher" };
        lines.push(format!(
            "**{}** against **{}**: final test top-1 error {:.2}% vs {:.2}%, {:.2} points {direction}; {}.",
            other.label,
            baseline.label,
            other.final_test_top1.mean,
            baseline.final_test_top1.mean,
            delta.abs(),
            verdict_text(verdict)
        ));
    }
    let measured = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Larger(_) | Verdict::Within(_)))
        .count();
    let larger = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::Larger(_)))
        .count();
    let mut cardinalities: Vec<usize> = configs.iter().map(|c| c.cardinality).collect();
    cardinalities.sort_unstable();
    cardinalities.dedup();
    let by_cardinality = cardinalities.len() == configs.len() && configs.len() > 2;
    if by_cardinality {
        let mut sorted: Vec<&Config> = configs.iter().collect();
        sorted.sort_by_key(|c| c.cardinality);
        let means = || sorted.iter().map(|c| c.final_test_top1.mean);
        let spread = means().fold(f64::MIN, f64::max) - means().fold(f64::MAX, f64::min);
        let paper = match (paper::table3_50_layer(1), paper::table3_50_layer(32)) {
            (Some(first), Some(last)) => format!(
                " The paper's 50-layer ImageNet row falls monotonically, {:.1}% at C = 1 to {:.1}% at C = 32 (Table 3).",
                first.top1, last.top1
            ),
            _ => String::new(),
        };
        if measured == verdicts.len() {
            let ordered = sorted
                .windows(2)
                .all(|w| w[1].final_test_top1.mean < w[0].final_test_top1.mean);
            let best = sorted
                .iter()
                .min_by(|a, b| a.final_test_top1.mean.total_cmp(&b.final_test_top1.mean))
                .expect("configs is not empty");
            lines.push(format!(
                "Across the grid the mean final errors span {spread:.2} points; the lowest mean is at C = {} ({}), and the means {} as C grows.{paper}",
                best.cardinality,
                best.label,
                if ordered { "fall monotonically" } else { "do not fall monotonically" },
            ));
        } else {
            lines.push(format!(
                "Across the grid the final errors span {spread:.2} points; without a measured spread for every cell they do not rank the cardinalities.{paper}"
            ));
        }
    }
    lines.push(if measured == 0 {
        format!(
            "With {} the seed-to-seed spread is not measured, so this run cannot say whether these differences are real: run the `full` preset (three seeds) before drawing a conclusion.",
            seeds_text(configs)
        )
    } else if larger == 0 {
        format!(
            "None of the {measured} measured differences from {} is larger than the seed-to-seed spread ({}): no significant difference detected at this scale.",
            baseline.label,
            seeds_text(configs)
        )
    } else {
        format!(
            "{larger} of the {measured} measured differences from {} are larger than the seed-to-seed spread ({}).",
            baseline.label,
            seeds_text(configs)
        )
    });
    let others: Vec<&Config> = configs[1..].iter().collect();
    if let Some(note) = unmeasured_note(&others, &verdicts, measured > 0) {
        lines.push(note);
    }
    lines
}

/// Names the comparisons that could not be weighed, when others could: a claim about "the
/// measured differences" must not silently cover them.
fn unmeasured_note<C: std::borrow::Borrow<Config>>(
    others: &[C],
    verdicts: &[Verdict],
    any_measured: bool,
) -> Option<String> {
    let names: Vec<String> = others
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| matches!(v, Verdict::Unmeasured | Verdict::NoSpread))
        .map(|(c, _)| c.borrow().label.clone())
        .collect();
    (any_measured && !names.is_empty()).then(|| {
        format!(
            "Not weighed against the spread (one seed, or identical seeds): {}.",
            names.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mean: f64, std: f64, n: usize) -> Stat {
        Stat {
            mean,
            std: (n > 1).then_some(std),
            n,
        }
    }

    #[test]
    fn the_rule_is_twice_the_standard_error() {
        // se = sqrt(0.3²/3 + 0.3²/3) = 0.245: 0.4 is within, 0.6 is larger.
        let a = stat(10.0, 0.3, 3);
        assert!(matches!(
            difference(&a, &stat(10.4, 0.3, 3)).1,
            Verdict::Within(_)
        ));
        assert!(matches!(
            difference(&a, &stat(9.4, 0.3, 3)).1,
            Verdict::Larger(_)
        ));
        assert_eq!(difference(&a, &stat(9.0, 0.0, 1)).1, Verdict::Unmeasured);
        let same = stat(10.0, 0.0, 3);
        assert_eq!(difference(&same, &stat(9.0, 0.0, 3)).1, Verdict::NoSpread);
        let (delta, _) = difference(&a, &stat(9.4, 0.3, 3));
        assert!((delta + 0.6).abs() < 1e-12);
    }
}
