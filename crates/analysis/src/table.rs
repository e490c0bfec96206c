//! The report's tables, as Markdown, and the same rows aligned for a terminal.

use crate::comparison::{Comparison, Trend};
use crate::paper;
use crate::stats::LEVEL;
use crate::summary::{Config, Stat};

/// Rows of cells under a header; rendered as Markdown or as aligned text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Right-aligned columns (numbers).
    pub numeric: Vec<bool>,
}

impl Table {
    fn new(header: &[(&str, bool)]) -> Table {
        Table {
            header: header.iter().map(|(h, _)| h.to_string()).collect(),
            rows: Vec::new(),
            numeric: header.iter().map(|(_, n)| *n).collect(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|", self.header.join(" | "));
        for numeric in &self.numeric {
            out.push_str(if *numeric { "---:|" } else { "---|" });
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    }

    /// Aligned columns for a terminal (Markdown emphasis stripped).
    pub fn text(&self) -> String {
        let clean = |s: &str| s.replace("**", "");
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| clean(&r[i]).chars().count())
                    .chain([self.header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if self.numeric[i] {
                        format!("{c:>w$}", w = widths[i])
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = line(self.header.clone());
        out.push('\n');
        out.push_str(&line(widths.iter().map(|w| "-".repeat(*w)).collect()));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row.iter().map(|c| clean(c)).collect()));
            out.push('\n');
        }
        out
    }
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// "9.78 ± 0.12" (mean ± sample std), or "9.78" for one seed, "–" for none.
pub fn mean_std(stat: &Stat, decimals: usize) -> String {
    if stat.n == 0 || !stat.mean.is_finite() {
        return "–".into();
    }
    match stat.std {
        Some(std) => format!("{:.d$} ± {std:.d$}", stat.mean, d = decimals),
        None => format!("{:.d$}", stat.mean, d = decimals),
    }
}

/// Whether the paper's cardinality rows (Tables 2 and 3) belong beside this grid: more than
/// one cardinality, each one the paper measured.
pub fn has_paper_cardinality(configs: &[Config]) -> bool {
    let mut cs: Vec<usize> = configs.iter().map(|c| c.cardinality).collect();
    cs.sort_unstable();
    cs.dedup();
    cs.len() > 1 && cs.iter().all(|&c| paper::table2(c).is_some())
}

/// The grid's complexity, with the paper's Table 2 widths for the same C.
pub fn complexity(configs: &[Config]) -> Table {
    let paper = has_paper_cardinality(configs);
    let mut header = vec![
        ("configuration", false),
        ("C", true),
        ("d", true),
        ("width C x d", true),
        ("params", true),
        ("MACs", true),
        ("params vs first", true),
        ("MACs vs first", true),
    ];
    if paper {
        header.push(("paper Table 2: d, C x d (ResNet-50 conv2)", true));
    }
    let mut table = Table::new(&header);
    let first_macs = configs.first().map(|c| c.macs as f64).unwrap_or(1.0);
    let first_params = configs.first().map(|c| c.params as f64).unwrap_or(1.0);
    for c in configs {
        let mut row = vec![
            c.label.clone(),
            c.cardinality.to_string(),
            c.bottleneck_width.to_string(),
            (c.cardinality * c.bottleneck_width).to_string(),
            thousands(c.params),
            thousands(c.macs),
            format!("{:+.1}%", (c.params as f64 / first_params - 1.0) * 100.0),
            format!("{:+.1}%", (c.macs as f64 / first_macs - 1.0) * 100.0),
        ];
        if paper {
            row.push(
                paper::table2(c.cardinality)
                    .map(|w| format!("{}, {}", w.bottleneck_width, w.group_conv_width))
                    .unwrap_or_else(|| "–".into()),
            );
        }
        table.rows.push(row);
    }
    table
}

/// Above this ratio of fastest to slowest epoch within a run, timings are flagged as taken
/// on a shared machine.
pub const UNSTEADY: f64 = 1.25;

/// Whether a configuration's timings are steady enough to compare.
pub fn steady(config: &Config) -> bool {
    config.throughput_variation.is_nan() || config.throughput_variation <= UNSTEADY
}

/// Mean seconds per epoch over a configuration's epochs.
pub fn seconds_per_epoch(config: &Config) -> Option<f64> {
    let points = &config.curves.epoch_seconds;
    (!points.is_empty())
        .then(|| points.iter().map(|(_, s)| s.mean).sum::<f64>() / points.len() as f64)
}

/// Final and best test errors (mean ± std over seeds), train error, throughput, and the
/// paper's ImageNet error for the same C where it applies.
pub fn errors(configs: &[Config]) -> Table {
    let paper = has_paper_cardinality(configs);
    let mut header = vec![
        ("configuration", false),
        ("seeds", true),
        ("epochs", true),
        ("final top-1 test err (%)", true),
        ("best top-1 test err (%)", true),
        ("final top-5 test err (%)", true),
        ("final top-1 train err (%)", true),
        ("train img/s", true),
        ("s / epoch", true),
    ];
    if paper {
        header.push(("paper: ImageNet-1K top-1 err (%), Table 3", true));
    }
    let mut table = Table::new(&header);
    let best = configs
        .iter()
        .map(|c| c.final_test_top1.mean)
        .fold(f64::INFINITY, f64::min);
    for c in configs {
        let mut final_top1 = mean_std(&c.final_test_top1, 2);
        // A winner only where every mean has a spread behind it.
        let ranked = configs.iter().all(|c| c.seeds() > 1);
        if ranked && configs.len() > 1 && c.final_test_top1.mean == best {
            final_top1 = format!("**{final_top1}**");
        }
        let mut row = vec![
            c.label.clone(),
            c.seeds().to_string(),
            c.epochs.to_string(),
            final_top1,
            mean_std(&c.best_test_top1, 2),
            mean_std(&c.final_test_top5, 2),
            mean_std(&c.final_train_top1, 2),
            format!(
                "{}{}",
                mean_std(&c.images_per_sec, 0),
                if steady(c) { "" } else { " †" }
            ),
            seconds_per_epoch(c)
                .map(|s| format!("{s:.0}{}", if steady(c) { "" } else { " †" }))
                .unwrap_or_else(|| "–".into()),
        ];
        if paper {
            row.push(
                paper::table3_50_layer(c.cardinality)
                    .map(|e| format!("{:.1} ({}x{}d)", e.top1, e.cardinality, e.bottleneck_width))
                    .unwrap_or_else(|| "–".into()),
            );
        }
        table.rows.push(row);
    }
    table
}

/// "0.012", "< 0.001", "–".
fn p_cell(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.001 => "< 0.001".into(),
        Some(p) => format!("{p:.3}"),
        None => "–".into(),
    }
}

/// The paper's Table 3 difference from C = 1 at the same C (50 layers), where both exist.
fn paper_difference(c: &Comparison) -> String {
    let (Some(config), Some(reference)) = (
        paper::table3_50_layer(c.config.cardinality),
        paper::table3_50_layer(c.reference.cardinality),
    ) else {
        return "–".into();
    };
    format!(
        "{:+.1} ({}x{}d vs {}x{}d)",
        config.top1 - reference.top1,
        config.cardinality,
        config.bottleneck_width,
        reference.cardinality,
        reference.bottleneck_width
    )
}

/// Each configuration against its reference: the mean paired difference of final test
/// top-1 error over seeds, its 95% t interval, the paired t test's p before and after
/// Holm's correction, and the verdict; the paper's difference beside it where it has one.
/// `target_half_width` (points) adds the seeds that half-width would take at each
/// comparison's measured spread.
pub fn comparisons(
    rows: &[Comparison],
    configs: &[Config],
    target_half_width: Option<f64>,
) -> Table {
    let paper = has_paper_cardinality(configs)
        && rows
            .iter()
            .all(|c| paper::table3_50_layer(c.reference.cardinality).is_some());
    let mut header = vec![
        ("configuration", false),
        ("reference", false),
        ("paired seeds", true),
        ("mean difference (points)", true),
        ("95% CI (points)", true),
        ("p", true),
        ("Holm-adjusted p", true),
        ("verdict", false),
        ("std of the differences (points)", true),
    ];
    let seeds_header = target_half_width.map(|w| format!("seeds for ±{w}"));
    if let Some(h) = &seeds_header {
        header.push((h, true));
    }
    if paper {
        header.push(("paper: Table 3 difference (points)", true));
    }
    let mut table = Table::new(&header);
    for c in rows {
        let difference = c.difference();
        let interval = match (c.interval(), c.verdict.computed()) {
            (Some((lo, hi)), true) => format!("{lo:+.2} to {hi:+.2}"),
            _ => c.verdict.words(),
        };
        let mut row = vec![
            c.config.label.clone(),
            c.reference.label.clone(),
            c.seeds().to_string(),
            difference
                .map(|d| format!("{:+.2}", d.mean))
                .unwrap_or_else(|| "–".into()),
            interval,
            p_cell(c.p),
            p_cell(c.holm_p),
            if c.verdict.computed() {
                c.verdict.words()
            } else {
                "–".into()
            },
            difference
                .and_then(|d| d.std)
                .map(|s| format!("{s:.2}"))
                .unwrap_or_else(|| "–".into()),
        ];
        if let Some(w) = target_half_width {
            let seeds = difference.and_then(|d| d.std).map(|s| {
                match crate::stats::seeds_for_half_width(s, w, LEVEL) {
                    Some(n) => n.to_string(),
                    None => format!("over {}", crate::stats::MAX_SEEDS),
                }
            });
            row.push(seeds.unwrap_or_else(|| "–".into()));
        }
        if paper {
            row.push(paper_difference(c));
        }
        table.rows.push(row);
    }
    table
}

/// Each seed's slope of final test top-1 error against log2 C, and their mean with its
/// 95% t interval.
pub fn trend(trend: &Trend) -> Table {
    let mut table = Table::new(&[("seed", false), ("slope (points per doubling of C)", true)]);
    for (seed, slope) in &trend.slopes {
        table
            .rows
            .push(vec![seed.to_string(), format!("{slope:+.3}")]);
    }
    let mean = match trend.slope.interval(LEVEL) {
        Some((lo, hi)) => format!("{:+.3} (95% CI {lo:+.3} to {hi:+.3})", trend.slope.mean),
        None if trend.slope.n > 0 => format!("{:+.3} (one seed: no interval)", trend.slope.mean),
        None => "–".into(),
    };
    table.rows.push(vec!["**mean**".into(), mean]);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(thousands(517_226), "517,226");
        assert_eq!(thousands(20_017_280), "20,017,280");
        assert_eq!(thousands(999), "999");
        let one = Stat {
            mean: 9.783,
            std: None,
            n: 1,
        };
        assert_eq!(mean_std(&one, 2), "9.78");
        let three = Stat {
            mean: 9.5,
            std: Some(0.126),
            n: 3,
        };
        assert_eq!(mean_std(&three, 2), "9.50 ± 0.13");
    }

    #[test]
    fn markdown_and_text_align() {
        let mut t = Table::new(&[("name", false), ("value", true)]);
        t.rows.push(vec!["**a**".into(), "1.5".into()]);
        assert_eq!(
            t.markdown(),
            "| name | value |\n|---|---:|\n| **a** | 1.5 |\n"
        );
        assert_eq!(t.text(), "name  value\n----  -----\na       1.5\n");
    }
}
