//! Conclusions computed from the data, one sentence per question with how sure it is: each
//! configuration against its reference (paired over seeds, 95% t interval, Holm-corrected
//! verdict), the trend across cardinality, ResNet against ResNeXt across complexity, and
//! whether block forms are one function. The numbers come from [`crate::comparison`].

use crate::comparison::{
    across_complexity, comparisons, paper_slopes, trend, Comparison, Trend, TrendVerdict, Verdict,
};
use crate::paper;
use crate::stats::LEVEL;
use crate::summary::{Config, Point};

pub use crate::comparison::forms_only;

/// How the comparisons are made and decided: the note under the report's tables.
pub const METHOD: &str = "Seeds are paired: seed s gives every configuration the same data order, augmentation and initialisation stream, so each configuration is compared with its reference seed by seed. A comparison is the mean of the per-seed differences of final test top-1 error (the last end-of-epoch evaluation), with its 95% confidence interval from Student's t; its verdict comes from the paired t test with Holm's correction over all the comparisons of this report: lower or higher where the Holm-adjusted p is at most 0.05, otherwise no difference detected (± the interval's half-width, the size of difference this run could have missed). The interval is not corrected, so one that just excludes 0 can still read no difference detected. With one seed there is no interval.";

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

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "p = 0.012", "p < 0.001".
pub fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// An epoch count for text: "3", or "2.25" within an epoch.
pub fn progress_text(progress: f64) -> String {
    if progress.fract() == 0.0 {
        format!("{progress:.0}")
    } else {
        format!("{progress:.2}")
    }
}

/// "paired difference -0.31 points (95% CI -0.52 to -0.10, 5 seeds)", when there is an
/// interval.
pub fn difference_text(c: &Comparison) -> Option<String> {
    let d = c.difference()?;
    let (lo, hi) = c.interval()?;
    Some(format!(
        "paired difference {:+.2} points (95% CI {lo:+.2} to {hi:+.2}, {})",
        d.mean,
        plural(d.n, "seed", "seeds")
    ))
}

/// One comparison as a sentence: the means, then the paired difference and its verdict, or
/// why there is none.
fn comparison_line(c: &Comparison) -> String {
    let (mean, reference) = (
        c.config.final_test_top1.mean,
        c.reference.final_test_top1.mean,
    );
    let base = format!(
        "**{}** against **{}**: final test top-1 error {mean:.2}% vs {reference:.2}%",
        c.config.label, c.reference.label
    );
    let delta = mean - reference;
    let uncomputed = |why: &str| {
        let gap = if format!("{:.2}", delta.abs()) == "0.00" {
            "equal to two decimals".to_string()
        } else {
            format!(
                "{:.2} points {}",
                delta.abs(),
                if delta < 0.0 { "lower" } else { "higher" }
            )
        };
        format!(
            "{base}, {gap}; the confidence interval cannot be computed ({why}), so this difference cannot be told apart from noise."
        )
    };
    match (&c.verdict, difference_text(c)) {
        (Verdict::Uncomputable(why), _) => uncomputed(why),
        // A computed verdict has two or more pairs, hence an interval.
        (_, None) => uncomputed("no interval"),
        (verdict, Some(difference)) => {
            let adjusted = c.holm_p.map(|p| format!(", Holm-adjusted {}", p_text(p)));
            format!(
                "{base}; {difference}: **{}**{}.",
                verdict.words(),
                adjusted.unwrap_or_default()
            )
        }
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

/// The largest gap between two configurations' mean curves, and the progress where it is.
fn largest_gap(a: &[Point], b: &[Point]) -> Option<(f64, f64)> {
    a.iter()
        .filter_map(|(x, sa)| {
            let (_, sb) = b.iter().find(|(e, _)| e == x)?;
            Some(((sb.mean - sa.mean).abs(), *x))
        })
        .max_by(|x, y| x.0.total_cmp(&y.0))
}

/// Whether two configurations' curves match bit for bit at every point.
fn bit_identical(a: &Config, b: &Config) -> bool {
    let means = |c: &Config| -> Vec<(u64, u64)> {
        [
            &c.curves.train_top1,
            &c.curves.test_top1,
            &c.curves.train_loss,
            &c.curves.test_loss,
        ]
        .iter()
        .flat_map(|curve| curve.iter().map(|(x, s)| (x.to_bits(), s.mean.to_bits())))
        .collect()
    };
    !a.curves.test_top1.is_empty() && means(a) == means(b)
}

/// Configurations whose seeds all gave one final error: worth a warning, since a seed that
/// changes nothing makes the intervals meaningless.
fn identical_seeds_note(configs: &[Config]) -> Option<String> {
    let names: Vec<&str> = configs
        .iter()
        .filter(|c| c.seeds() > 1 && c.final_test_top1.std == Some(0.0))
        .map(|c| c.label.as_str())
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "The seeds of {} gave identical final errors: check that the seed changes the run, or the intervals mean nothing.",
            names.join(", ")
        )
    })
}

fn equivalence(configs: &[Config]) -> Vec<String> {
    let rows = comparisons(configs);
    let mut lines = Vec::new();
    for c in &rows {
        let mut line = comparison_line(c);
        let test_gap = largest_gap(&c.reference.curves.test_top1, &c.config.curves.test_top1);
        let loss_gap = largest_gap(&c.reference.curves.train_loss, &c.config.curves.train_loss);
        if let (Some((gap, at)), Some((loss, loss_at))) = (test_gap, loss_gap) {
            line.push_str(&format!(
                " Over training the test-error curves are at most {gap:.2} points apart (epoch {}), the training-loss curves at most {loss:.4} (epoch {}).",
                progress_text(at),
                progress_text(loss_at)
            ));
        }
        lines.push(line);
    }
    // Forms whose every metric matches exactly compute the same arithmetic: worth saying,
    // since their lines overlap in the figures.
    for (i, a) in configs.iter().enumerate() {
        for b in &configs[i + 1..] {
            if bit_identical(a, b) {
                lines.push(format!(
                    "**{}** and **{}** give bit-identical losses and errors at every epoch: the same arithmetic.",
                    a.label, b.label
                ));
            }
        }
    }
    let computed: Vec<&Comparison> = rows.iter().filter(|c| c.verdict.computed()).collect();
    let apart = computed
        .iter()
        .any(|c| matches!(c.verdict, Verdict::Lower | Verdict::Higher));
    let widest = computed
        .iter()
        .filter_map(|c| match c.verdict {
            Verdict::NoDifference(w) => Some(w),
            _ => None,
        })
        .fold(0.0, f64::max);
    lines.push(if computed.is_empty() {
        format!(
            "The forms start as one function; they drift apart only through floating-point rounding, which training amplifies. With {} this run does not measure how large a gap seed noise alone makes: run a preset with several seeds (`full`) for that yardstick.",
            seeds_text(configs)
        )
    } else if apart {
        "At least one form ends apart from the reference by more than the seeds' spread allows (paired, Holm-corrected): that is more than rounding, look for a bug in the conversion or the kernels.".into()
    } else {
        format!(
            "Are the forms one function? No form's final error differs from the reference's: no difference detected (±{widest:.2} at most), which bounds a real difference only as tightly as that ({}).",
            seeds_text(configs)
        )
    });
    lines.extend(uncomputed_note(&rows));
    lines.extend(identical_seeds_note(configs));
    lines.extend(epoch_time_line(configs));
    lines
}

/// Time per epoch: where the forms do differ.
fn epoch_time_line(configs: &[Config]) -> Option<String> {
    let timed: Vec<(&Config, f64)> = configs
        .iter()
        .filter_map(|c| Some((c, crate::table::seconds_per_epoch(c)?)))
        .collect();
    let unsteady: Vec<&str> = configs
        .iter()
        .filter(|c| !crate::table::steady(c))
        .map(|c| c.label.as_str())
        .collect();
    if !unsteady.is_empty() {
        return Some(format!(
            "Time per epoch is not compared: the throughput of {} varied by more than {:.0}% between epochs, so the machine was shared with other work while they trained. `cardinal bench train --form A|B|C` times the forms side by side.",
            unsteady.join(", "),
            (crate::table::UNSTEADY - 1.0) * 100.0
        ));
    }
    let &(fastest, best) = timed.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
    let others: Vec<String> = timed
        .iter()
        .filter(|(c, _)| c.label != fastest.label)
        .map(|(c, s)| format!("{} {:.2}x ({s:.0} s)", c.label, s / best))
        .collect();
    (!others.is_empty()).then(|| {
        format!(
            "Time per epoch (training and evaluation): {} is fastest at {best:.0} s; {}.",
            fastest.label,
            others.join(", ")
        )
    })
}

/// "falls from 23.9% at C = 1 to 22.2% at C = 32, a least-squares slope of -0.318 points
/// per doubling of C (101 layers: -0.xxx)": the paper's trend in the measure of ours.
pub fn paper_trend_text() -> String {
    let slopes = paper_slopes();
    let deeper: Vec<String> = slopes
        .iter()
        .skip(1)
        .map(|(depth, s)| format!("{depth} layers: {s:+.3}"))
        .collect();
    match (paper::table3_50_layer(1), paper::table3_50_layer(32), slopes.first()) {
        (Some(first), Some(last), Some((_, slope))) => format!(
            "The paper's 50-layer ImageNet row falls monotonically, {:.1}% at C = 1 to {:.1}% at C = 32 (Table 3): a least-squares slope of {slope:+.3} points per doubling of C ({}).",
            first.top1,
            last.top1,
            deeper.join(", ")
        ),
        _ => String::new(),
    }
}

/// The trend as one sentence: what it found and how sure it is.
pub fn trend_sentence(trend: &Trend) -> String {
    let at = if trend.preserved {
        "At preserved complexity"
    } else {
        "Across these configurations (not at one complexity level, so C is not their only difference)"
    };
    let n = trend.slope.n;
    let slope = format!("slope {:+.3} points per doubling of C", trend.slope.mean);
    let interval = || -> String {
        let (lo, hi) = trend.slope.interval(LEVEL).unwrap_or((f64::NAN, f64::NAN));
        format!(
            "95% CI {lo:+.3} to {hi:+.3}, {}",
            plural(n, "seed", "seeds")
        )
    };
    match trend.verdict {
        TrendVerdict::Falls => format!("{at}, error falls with C: {slope} ({}).", interval()),
        TrendVerdict::Rises => format!("{at}, error rises with C: {slope} ({}).", interval()),
        TrendVerdict::NoTrend(width) => format!(
            "{at}, no trend of error with C detected (±{width:.3}): {slope} ({}).",
            interval()
        ),
        TrendVerdict::Uncomputable if n == 0 => format!(
            "{at}, no seed has a finished run of every cardinality, so there is no slope to report."
        ),
        TrendVerdict::Uncomputable => format!(
            "{at}, the least-squares {slope} comes from one seed: its interval cannot be computed, so whether error falls with C cannot be told apart from noise."
        ),
    }
}

/// ResNeXt against ResNet at each complexity level, as one sentence.
fn family_sentence(rows: &[Comparison], configs: &[Config]) -> String {
    let computed: Vec<&Comparison> = rows.iter().filter(|c| c.verdict.computed()).collect();
    let count = |v: fn(&Verdict) -> bool| computed.iter().filter(|c| v(&c.verdict)).count();
    let lower = count(|v| *v == Verdict::Lower);
    let higher = count(|v| *v == Verdict::Higher);
    let levels = crate::comparison::complexity_levels(configs).len();
    if computed.is_empty() {
        return format!(
            "At equal multiply-adds, is ResNeXt better than ResNet? With {} across {levels} complexity levels no interval can be computed, so this run cannot say.",
            seeds_text(configs)
        );
    }
    format!(
        "At equal multiply-adds, is ResNeXt better than ResNet? Of {} (one per ResNeXt and complexity level, {levels} levels), ResNeXt is lower in {lower}, higher in {higher}, and no difference is detected in {} (95%, Holm-corrected, {}).",
        plural(computed.len(), "comparison with an interval", "comparisons with an interval"),
        computed.len() - lower - higher,
        seeds_text(configs)
    )
}

/// What the comparisons found together, as one sentence.
fn summary_sentence(rows: &[Comparison], configs: &[Config]) -> String {
    let computed: Vec<&Comparison> = rows.iter().filter(|c| c.verdict.computed()).collect();
    if computed.is_empty() {
        return format!(
            "With {} no confidence interval can be computed, so this run cannot say whether these differences are real: run a preset with several seeds (`full`) before drawing a conclusion.",
            seeds_text(configs)
        );
    }
    let count = |v: fn(&Verdict) -> bool| computed.iter().filter(|c| v(&c.verdict)).count();
    let lower = count(|v| *v == Verdict::Lower);
    let higher = count(|v| *v == Verdict::Higher);
    let none = computed.len() - lower - higher;
    let mut references: Vec<&str> = computed
        .iter()
        .map(|c| c.reference.label.as_str())
        .collect();
    references.dedup();
    format!(
        "Of the {} against {} with a confidence interval ({}), {lower} {} lower, {higher} higher and {none} {} no difference detected (95% intervals; verdicts Holm-corrected over the {}).",
        plural(computed.len(), "comparison", "comparisons"),
        references.join(", "),
        seeds_text(configs),
        if lower == 1 { "is" } else { "are" },
        if none == 1 { "shows" } else { "show" },
        computed.len()
    )
}

/// Names the comparisons without an interval, when others have one: a claim about "the
/// comparisons with an interval" must not silently cover them.
fn uncomputed_note(rows: &[Comparison]) -> Option<String> {
    let names: Vec<String> = rows
        .iter()
        .filter_map(|c| match &c.verdict {
            Verdict::Uncomputable(why) => Some(format!("{} ({why})", c.config.label)),
            _ => None,
        })
        .collect();
    let any_computed = rows.iter().any(|c| c.verdict.computed());
    (any_computed && !names.is_empty())
        .then(|| format!("No confidence interval for: {}.", names.join(", ")))
}

fn comparison(configs: &[Config]) -> Vec<String> {
    let rows = comparisons(configs);
    let mut lines: Vec<String> = rows.iter().map(comparison_line).collect();
    if let Some(trend) = trend(configs) {
        let mut line = trend_sentence(&trend);
        if crate::table::has_paper_cardinality(configs) {
            line.push(' ');
            line.push_str(&paper_trend_text());
        }
        lines.push(line);
    }
    if across_complexity(configs) {
        // The family sentence is the summary there.
        lines.push(family_sentence(&rows, configs));
    } else if rows.len() > 1 || !rows.iter().any(|c| c.verdict.computed()) {
        // One comparison's own line already says everything the summary would.
        lines.push(summary_sentence(&rows, configs));
    }
    lines.extend(uncomputed_note(&rows));
    lines.extend(identical_seeds_note(configs));
    lines.extend(rows.iter().filter_map(|c| precision_parity(c, configs)));
    lines
}

/// For a precision comparison: whether the difference of the two precisions' mean errors
/// is within two standard errors of that difference (sqrt(s1^2/n1 + s2^2/n2), the seeds
/// taken as independent) and within the seed-to-seed spread (the larger standard deviation):
/// the parity rule that decides the default precision.
fn precision_parity(c: &Comparison, configs: &[Config]) -> Option<String> {
    if c.config.precision == c.reference.precision
        || !configs.iter().any(|x| x.precision != configs[0].precision)
    {
        return None;
    }
    let (a, b) = (&c.reference.final_test_top1, &c.config.final_test_top1);
    let (sa, sb) = (a.std?, b.std?);
    let se = (sa * sa / a.n as f64 + sb * sb / b.n as f64).sqrt();
    let delta = b.mean - a.mean;
    let spread = sa.max(sb);
    let within = |ok: bool| if ok { "within" } else { "outside" };
    Some(format!(
        "{}: {} against {}: the mean errors differ by {:+.2} points, {} two standard \
         errors (2 x {:.2}) and {} the seed-to-seed spread (standard deviation {:.2}).",
        c.config.model,
        c.config.precision,
        c.reference.precision,
        delta,
        within(delta.abs() <= 2.0 * se),
        se,
        within(delta.abs() <= spread),
        spread,
    ))
}
