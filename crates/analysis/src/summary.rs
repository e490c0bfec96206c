//! Aggregation over seeds: one summary per configuration (final and best errors, curves,
//! throughput, time per epoch), computed with polars from the runs' metrics.

use std::collections::BTreeMap;

use polars::prelude::*;

use cardinal_results::INTERIM;

use crate::store::{f64s, scan, strings, Run};
use crate::{Error, Result};

pub use crate::stats::Stat;

impl Stat {
    fn from_columns(mean: Option<f64>, std: Option<f64>, n: Option<f64>) -> Option<Stat> {
        let n = n? as usize;
        Some(Stat {
            mean: mean?,
            // polars gives NaN or null for the deviation of one value.
            std: std.filter(|s| n > 1 && s.is_finite()),
            n,
        })
    }

    fn scaled(self, factor: f64) -> Stat {
        Stat {
            mean: self.mean * factor,
            std: self.std.map(|s| s * factor),
            n: self.n,
        }
    }
}

/// One point of a curve: the epochs of training done (fractional for the test evaluations
/// within an epoch) and the statistic over seeds.
pub type Point = (f64, Stat);

/// Curves of one configuration against epochs of training, errors in percent.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    pub train_top1: Vec<Point>,
    /// End-of-epoch and within-epoch (`test-interim`) test evaluations, by progress.
    pub test_top1: Vec<Point>,
    pub train_loss: Vec<Point>,
    pub test_loss: Vec<Point>,
    /// Wall seconds each epoch took (training and evaluation).
    pub epoch_seconds: Vec<Point>,
}

/// A configuration (one cell of the sweep, all its seeds), errors in percent.
#[derive(Debug, Clone)]
pub struct Config {
    pub label: String,
    pub model: String,
    pub cardinality: usize,
    pub bottleneck_width: usize,
    pub form: String,
    pub params: u64,
    pub macs: u64,
    pub epochs: usize,
    pub final_test_top1: Stat,
    /// Each seed's final test top-1 error (the last end-of-epoch test row), by seed: what
    /// paired comparisons match.
    pub final_test_top1_by_seed: Vec<(u64, f64)>,
    pub best_test_top1: Stat,
    pub final_test_top5: Stat,
    pub best_test_top5: Stat,
    pub final_train_top1: Stat,
    /// Training throughput, images per second (mean over epochs, then over seeds).
    pub images_per_sec: Stat,
    /// The largest ratio of fastest to slowest epoch (train img/s) within one run: near 1 on
    /// a quiet machine; well above it when other work shared the CPU, which makes the
    /// timings incomparable.
    pub throughput_variation: f64,
    /// The precision its runs trained with (`f32`, `bf16-mixed`); several, comma-separated,
    /// if its seeds differ.
    pub precision: String,
    pub curves: Curves,
}

impl Config {
    /// The number of seeds behind the final error.
    pub fn seeds(&self) -> usize {
        self.final_test_top1.n
    }
}

const TEST: &str = "test";
const TRAIN: &str = "train";

fn by_epoch() -> SortMultipleOptions {
    SortMultipleOptions::default()
}

/// Summaries of the configurations of `runs` (each must have a metrics.csv), in the order
/// in which their first run appears.
pub fn summarize(runs: &[&Run]) -> Result<Vec<Config>> {
    if runs.is_empty() {
        return Err(Error::NoRuns("no run to summarize".into()));
    }
    let metrics = scan(runs)?;
    let mut order: Vec<String> = Vec::new();
    for run in runs {
        if !order.contains(&run.label) {
            order.push(run.label.clone());
        }
    }

    // Per run: the last epoch's and the best epoch's test error (end-of-epoch rows only:
    // the within-epoch evaluations are points of the curves), then over seeds.
    let last = |name: &str| col(name).sort_by([col("epoch")], by_epoch()).last();
    let per_run_test = metrics
        .clone()
        .filter(col("split").eq(lit(TEST)))
        .group_by([col("config"), col("run_id")])
        .agg([
            col("seed").first().alias("seed"),
            last("top1_err").alias("final_top1"),
            col("top1_err").min().alias("best_top1"),
            last("top5_err").alias("final_top5"),
            col("top5_err").min().alias("best_top5"),
            col("epoch").max().alias("epochs"),
        ])
        .collect()?;
    let per_seed = per_run_test
        .clone()
        .lazy()
        .select([col("config"), col("seed"), col("final_top1")])
        .sort(["config", "seed"], SortMultipleOptions::default())
        .collect()?;
    let per_run_test = per_run_test.lazy();
    let per_run_train = metrics
        .clone()
        .filter(col("split").eq(lit(TRAIN)))
        .group_by([col("config"), col("run_id")])
        .agg([
            last("top1_err").alias("final_train_top1"),
            col("images_per_sec").mean().alias("images_per_sec"),
            (col("images_per_sec").max() / col("images_per_sec").min()).alias("variation"),
        ]);
    let stat_exprs = |names: &[&str]| -> Vec<Expr> {
        names
            .iter()
            .flat_map(|n| {
                [
                    col(*n).mean().alias(format!("{n}_mean")),
                    col(*n).std(1).alias(format!("{n}_std")),
                    col(*n).count().alias(format!("{n}_n")),
                ]
            })
            .collect()
    };
    let finals = per_run_test
        .group_by([col("config")])
        .agg(
            [
                stat_exprs(&["final_top1", "best_top1", "final_top5", "best_top5"]),
                vec![col("epochs").max().alias("epochs")],
            ]
            .concat(),
        )
        .collect()?;
    let train = per_run_train
        .group_by([col("config")])
        .agg(
            [
                stat_exprs(&["final_train_top1", "images_per_sec"]),
                vec![col("variation").max().alias("variation")],
            ]
            .concat(),
        )
        .collect()?;
    let precisions = metrics
        .clone()
        .group_by([col("config"), col("precision")])
        .agg([col("run_id").count().alias("rows")])
        .sort(["config", "precision"], SortMultipleOptions::default())
        .collect()?;
    let complexity = metrics
        .clone()
        .group_by([col("config")])
        .agg([
            col("model").first(),
            col("cardinality").first(),
            col("bottleneck_width").first(),
            col("form").first(),
            col("params").first(),
            col("macs").first(),
        ])
        .collect()?;
    // The test curve joins the end-of-epoch and the within-epoch evaluations, by progress.
    let curve = when(col("split").eq(lit(INTERIM)))
        .then(lit(TEST))
        .otherwise(col("split"))
        .alias("curve");
    let curves = metrics
        .clone()
        .with_column(curve)
        .group_by([col("config"), col("curve"), col("progress")])
        .agg(stat_exprs(&["top1_err", "loss"]))
        .sort(
            ["config", "curve", "progress"],
            SortMultipleOptions::default(),
        )
        .collect()?;
    let walls = metrics
        .filter(col("split").eq(lit(TEST)))
        .select([
            col("config"),
            col("run_id"),
            col("epoch"),
            col("wall_seconds"),
        ])
        .sort(["run_id", "epoch"], SortMultipleOptions::default())
        .collect()?;

    let finals = Rows::new(&finals)?;
    let train = Rows::new(&train)?;
    let complexity = Rows::new(&complexity)?;
    let by_seed = finals_by_seed(&Rows::new(&per_seed)?)?;
    let precisions = precisions_by_config(&Rows::new(&precisions)?)?;
    let mut configs = Vec::new();
    for label in &order {
        let Some(f) = finals.index(label) else {
            continue; // no test row yet: nothing to report
        };
        let t = train.index(label);
        let c = complexity
            .index(label)
            .ok_or_else(|| Error::NoRuns(label.clone()))?;
        let stat = |rows: &Rows, i: usize, name: &str, factor: f64| -> Result<Stat> {
            Stat::from_columns(
                rows.f(&format!("{name}_mean"), i)?,
                rows.f(&format!("{name}_std"), i)?,
                rows.f(&format!("{name}_n"), i)?,
            )
            .map(|s| s.scaled(factor))
            .ok_or_else(|| Error::NoRuns(format!("{label}: no values of {name}")))
        };
        let missing = Stat {
            mean: f64::NAN,
            std: None,
            n: 0,
        };
        configs.push(Config {
            label: label.clone(),
            model: complexity.s("model", c)?,
            cardinality: complexity.f("cardinality", c)?.unwrap_or(0.0) as usize,
            bottleneck_width: complexity.f("bottleneck_width", c)?.unwrap_or(0.0) as usize,
            form: complexity.s("form", c)?,
            params: complexity.f("params", c)?.unwrap_or(0.0) as u64,
            macs: complexity.f("macs", c)?.unwrap_or(0.0) as u64,
            epochs: finals.f("epochs", f)?.unwrap_or(0.0) as usize,
            final_test_top1: stat(&finals, f, "final_top1", 100.0)?,
            final_test_top1_by_seed: by_seed.get(label).cloned().unwrap_or_default(),
            best_test_top1: stat(&finals, f, "best_top1", 100.0)?,
            final_test_top5: stat(&finals, f, "final_top5", 100.0)?,
            best_test_top5: stat(&finals, f, "best_top5", 100.0)?,
            final_train_top1: match t {
                Some(t) => stat(&train, t, "final_train_top1", 100.0)?,
                None => missing,
            },
            images_per_sec: match t {
                Some(t) => stat(&train, t, "images_per_sec", 1.0)?,
                None => missing,
            },
            throughput_variation: match t {
                Some(t) => train.f("variation", t)?.unwrap_or(f64::NAN),
                None => f64::NAN,
            },
            precision: precisions.get(label).cloned().unwrap_or_default(),
            curves: Curves::default(),
        });
    }

    let curves = Rows::new(&curves)?;
    for i in 0..curves.len() {
        let label = curves.s("config", i)?;
        let Some(config) = configs.iter_mut().find(|c| c.label == label) else {
            continue;
        };
        let progress = curves.f("progress", i)?.unwrap_or(f64::NAN);
        let point = |name: &str, factor: f64| -> Result<Option<Point>> {
            Ok(Stat::from_columns(
                curves.f(&format!("{name}_mean"), i)?,
                curves.f(&format!("{name}_std"), i)?,
                curves.f(&format!("{name}_n"), i)?,
            )
            .map(|s| (progress, s.scaled(factor))))
        };
        let (top1, loss) = match curves.s("curve", i)?.as_str() {
            TRAIN => (&mut config.curves.train_top1, &mut config.curves.train_loss),
            TEST => (&mut config.curves.test_top1, &mut config.curves.test_loss),
            _ => continue,
        };
        top1.extend(point("top1_err", 100.0)?);
        loss.extend(point("loss", 1.0)?);
    }

    // Seconds per epoch: differences of each run's cumulative wall clock.
    let walls = Rows::new(&walls)?;
    let mut seconds: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut previous: Option<(String, f64)> = None;
    for i in 0..walls.len() {
        let run_id = walls.s("run_id", i)?;
        let wall = walls.f("wall_seconds", i)?.unwrap_or(f64::NAN);
        let start = match &previous {
            Some((id, w)) if *id == run_id => *w,
            _ => 0.0,
        };
        let epoch = walls.f("epoch", i)?.unwrap_or(0.0) as usize;
        seconds
            .entry((walls.s("config", i)?, epoch))
            .or_default()
            .push(wall - start);
        previous = Some((run_id, wall));
    }
    for ((label, epoch), values) in seconds {
        if let Some(config) = configs.iter_mut().find(|c| c.label == label) {
            config
                .curves
                .epoch_seconds
                .push((epoch as f64, Stat::of(&values)));
        }
    }
    Ok(configs)
}

/// Each configuration's final test top-1 errors in percent, by seed, from rows of
/// (config, seed, final_top1).
fn finals_by_seed(rows: &Rows) -> Result<BTreeMap<String, Vec<(u64, f64)>>> {
    let mut by_seed: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for i in 0..rows.len() {
        let (Some(seed), Some(error)) = (rows.f("seed", i)?, rows.f("final_top1", i)?) else {
            continue; // polars gives null only for an empty group, which has no run
        };
        by_seed
            .entry(rows.s("config", i)?)
            .or_default()
            .push((seed as u64, error * 100.0));
    }
    Ok(by_seed)
}

/// Each configuration's precisions, comma-separated, from rows of (config, precision).
fn precisions_by_config(rows: &Rows) -> Result<BTreeMap<String, String>> {
    let mut by_config: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..rows.len() {
        by_config
            .entry(rows.s("config", i)?)
            .or_default()
            .push(rows.s("precision", i)?);
    }
    Ok(by_config
        .into_iter()
        .map(|(config, values)| (config, values.join(", ")))
        .collect())
}

/// Row access by column name over a collected frame.
struct Rows {
    columns: BTreeMap<String, Vec<Option<f64>>>,
    text: BTreeMap<String, Vec<String>>,
    labels: Vec<String>,
}

impl Rows {
    fn new(df: &DataFrame) -> Result<Rows> {
        let mut columns = BTreeMap::new();
        let mut text = BTreeMap::new();
        for column in df.columns() {
            let name = column.name().to_string();
            if column.dtype() == &DataType::String {
                text.insert(name.clone(), strings(df, &name)?);
            } else {
                columns.insert(name.clone(), f64s(df, &name)?);
            }
        }
        let labels = text.get("config").cloned().unwrap_or_default();
        Ok(Rows {
            columns,
            text,
            labels,
        })
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn index(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }

    fn f(&self, name: &str, i: usize) -> Result<Option<f64>> {
        let column = self
            .columns
            .get(name)
            .ok_or_else(|| Error::NoRuns(format!("no column {name}")))?;
        Ok(column[i])
    }

    fn s(&self, name: &str, i: usize) -> Result<String> {
        let column = self
            .text
            .get(name)
            .ok_or_else(|| Error::NoRuns(format!("no column {name}")))?;
        Ok(column[i].clone())
    }
}
