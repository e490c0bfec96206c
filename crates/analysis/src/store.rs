//! The results store: each run directory's `metrics.csv` (one row per epoch and split), its
//! `config.yaml`, `meta.json` and `status.json`, read and aggregated over seeds with polars.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use cardinal_results::{Kind, MetricRow, COLUMNS, INTERIM, SPLITS};

use crate::{Error, Result};

/// The polars type of a results-store column.
fn dtype(kind: Kind) -> DataType {
    match kind {
        Kind::Text => DataType::String,
        Kind::Integer => DataType::Int64,
        Kind::Float => DataType::Float64,
    }
}

/// One training session of a run (a resumed run has several).
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    #[serde(default)]
    pub git_commit: Option<String>,
    #[serde(default)]
    pub git_dirty: Option<bool>,
    /// The commit the binary was built from (`-dirty` when its tree had changes).
    #[serde(default)]
    pub build_commit: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
}

/// `meta.json`: where and with what a run was trained.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    /// The instruction-set path that ran the products (`amx`, `avx2`, ...).
    #[serde(default)]
    pub isa: Option<String>,
    #[serde(default)]
    pub candle_version: Option<String>,
    #[serde(default)]
    pub cardinal_version: Option<String>,
    #[serde(default)]
    pub sessions: Vec<Session>,
    /// The run directory this run was copied from: another experiment's finished run of
    /// the same configuration (its sessions are the original's).
    #[serde(default)]
    pub copied_from: Option<String>,
}

/// `status.json`: whether a run finished.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub state: String,
    #[serde(default)]
    pub epochs_done: usize,
    #[serde(default)]
    pub epochs: usize,
    #[serde(default)]
    pub message: Option<String>,
}

/// A run directory and what it says about itself.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub run_id: String,
    /// The configuration it belongs to, e.g. `4x12d` or `4x12d, form A` (its sweep labels
    /// without the seed).
    pub label: String,
    pub seed: Option<i64>,
    /// The fully resolved config (`config.yaml`), if the run got that far.
    pub config: Option<Value>,
    pub meta: Option<Meta>,
    pub status: Option<Status>,
}

impl Run {
    /// Reads what exists of a run directory; a missing directory is a run not started.
    pub fn open(dir: &Path) -> Result<Run> {
        let run_id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let config = read_optional(&dir.join("config.yaml"), |text| {
            serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
        })?;
        let meta = read_optional(&dir.join("meta.json"), |text| {
            serde_json::from_str::<Meta>(text).map_err(|e| e.to_string())
        })?;
        let status = read_optional(&dir.join("status.json"), |text| {
            serde_json::from_str::<Status>(text).map_err(|e| e.to_string())
        })?;
        let label = config
            .as_ref()
            .map(label_of)
            .unwrap_or_else(|| run_id.clone());
        let seed = config.as_ref().and_then(|c| c.get("seed")?.as_i64());
        Ok(Run {
            dir: dir.to_path_buf(),
            run_id,
            label,
            seed,
            config,
            meta,
            status,
        })
    }

    pub fn finished(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.state == "finished")
    }

    /// "finished", "finished (copied from resnet-vs-resnext)", "running (2/3 epochs)",
    /// "not started", ...
    pub fn state(&self) -> String {
        let copied_from = self
            .meta
            .as_ref()
            .and_then(|m| m.copied_from.as_deref())
            .map(|dir| {
                // `runs/<experiment>/<run-id>`: the experiment names it well enough.
                let path = Path::new(dir);
                path.parent()
                    .and_then(Path::file_name)
                    .map_or(dir.to_string(), |e| e.to_string_lossy().into_owned())
            });
        match &self.status {
            None => "not started".into(),
            Some(s) if s.state == "finished" => match copied_from {
                Some(experiment) => format!("finished (copied from {experiment})"),
                None => s.state.clone(),
            },
            Some(s) => format!("{} ({}/{} epochs)", s.state, s.epochs_done, s.epochs),
        }
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }

    /// A value of the resolved config by dotted path, e.g. `train.epochs`.
    pub fn config_value(&self, dotted: &str) -> Option<&Value> {
        dotted
            .split('.')
            .try_fold(self.config.as_ref()?, |v, key| v.get(key))
    }
}

fn read_optional<T>(
    path: &Path,
    parse: impl Fn(&str) -> std::result::Result<T, String>,
) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map(Some).map_err(|message| Error::Parse {
            path: path.to_path_buf(),
            message,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            cause: source,
        }),
    }
}

/// A configuration's name from its sweep labels: `C x d` first, then the other swept keys
/// (`form A`, a preset name, `key=value`).
pub fn label_of(config: &Value) -> String {
    let labels: BTreeMap<String, String> = config
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(preset) = labels.get("model.preset") {
        parts.push(preset.clone());
    }
    if let (Some(c), Some(d)) = (labels.get("cardinality"), labels.get("bottleneck_width")) {
        parts.push(format!("{c}x{d}d"));
    }
    for (key, value) in &labels {
        match key.as_str() {
            "cardinality" | "bottleneck_width" | "model.preset" => {}
            "model.form" => parts.push(format!("form {value}")),
            _ => parts.push(format!("{key}={value}")),
        }
    }
    if parts.is_empty() {
        config
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("run")
            .to_string()
    } else {
        parts.join(", ")
    }
}

/// Why a row cannot be placed on a curve or in a table, if it cannot: a split the store
/// does not define, an end-of-epoch row whose progress is not its epoch, or a within-epoch
/// evaluation outside the epoch it names.
fn misplaced(row: &MetricRow) -> Option<String> {
    let epoch = row.epoch as f64;
    if SPLITS.contains(&row.split.as_str()) {
        (row.progress != epoch).then(|| {
            format!(
                "the {} row of epoch {} has progress {}, not {epoch} (end-of-epoch rows are measured after whole epochs)",
                row.split, row.epoch, row.progress
            )
        })
    } else if row.split == INTERIM {
        (!(row.progress > epoch - 1.0 && row.progress < epoch)).then(|| {
            format!(
                "the {INTERIM} row of epoch {} has progress {}, outside that epoch ({} to {epoch}, exclusive)",
                row.epoch,
                row.progress,
                epoch - 1.0
            )
        })
    } else {
        Some(format!(
            "split {:?} is none of the store's ({}, {INTERIM})",
            row.split,
            SPLITS.join(", ")
        ))
    }
}

/// An error naming the file and line of the first row that [`misplaced`] refuses, or of a
/// second row at the same (split, progress): read on, it would be averaged as if it were
/// another seed.
fn check_rows(path: &Path, rows: &[MetricRow]) -> Result<()> {
    let mut seen: BTreeSet<(&str, u64)> = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        // The header is line 1 and each row one line (no field holds a line break).
        let line = i + 2;
        let refuse = |message: String| Error::Parse {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        };
        if let Some(message) = misplaced(row) {
            return Err(refuse(message));
        }
        if !seen.insert((row.split.as_str(), row.progress.to_bits())) {
            return Err(refuse(format!(
                "a second {} row at progress {} (epoch {})",
                row.split, row.progress, row.epoch
            )));
        }
    }
    Ok(())
}

/// Reads one run's metrics with the store's schema. The error names the file: the first
/// column of the header that is not the store's (columns are read by position), a value
/// that does not parse, a row that fits no curve or table ([`check_rows`]), or, for a
/// finished run, the epochs whose rows are missing.
pub fn scan_run(run: &Run) -> Result<LazyFrame> {
    let path = run.metrics_path();
    let rows = cardinal_results::read_metrics(&path)?;
    check_rows(&path, &rows)?;
    if let Some(status) = run.status.as_ref().filter(|_| run.finished()) {
        cardinal_results::check_complete(&path, &rows, status.epochs_done)?;
    }
    let text_path = path.to_str().ok_or_else(|| Error::Parse {
        path: path.clone(),
        message: "the path is not UTF-8".into(),
    })?;
    let schema: Schema = COLUMNS
        .iter()
        .map(|&(name, kind)| Field::new(name.into(), dtype(kind)))
        .collect();
    let frame = LazyCsvReader::new(PlRefPath::new(text_path))
        .with_has_header(true)
        .with_schema(Some(Arc::new(schema)))
        .finish()
        .and_then(|lf| lf.collect())
        .map_err(|e| Error::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(frame
        .lazy()
        .with_column(lit(run.label.as_str()).alias("config")))
}

/// The metrics of every run given (all must have a metrics.csv), in one lazy frame with a
/// `config` column.
pub fn scan(runs: &[&Run]) -> Result<LazyFrame> {
    let frames = runs
        .iter()
        .map(|run| scan_run(run))
        .collect::<Result<Vec<_>>>()?;
    Ok(concat(frames, UnionArgs::default())?)
}

/// Column `name` as f64 values (integers are cast).
pub(crate) fn f64s(df: &DataFrame, name: &str) -> Result<Vec<Option<f64>>> {
    let column = df.column(name)?.cast(&DataType::Float64)?;
    Ok(column.f64()?.iter().collect())
}

pub(crate) fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>> {
    let column = df.column(name)?.cast(&DataType::String)?;
    Ok(column
        .str()?
        .iter()
        .map(|s| s.unwrap_or_default().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run copied from another experiment says so in its state, by that experiment's name.
    #[test]
    fn a_copied_run_names_the_experiment_it_came_from() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c1x32d-s0-0123456789");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status.json"), r#"{"state": "finished"}"#).unwrap();
        assert_eq!(Run::open(&dir).unwrap().state(), "finished");
        std::fs::write(
            dir.join("meta.json"),
            r#"{"sessions": [], "copied_from": "runs/resnet-vs-resnext/c1x32d-s0-0123456789"}"#,
        )
        .unwrap();
        assert_eq!(
            Run::open(&dir).unwrap().state(),
            "finished (copied from resnet-vs-resnext)"
        );
    }
}
