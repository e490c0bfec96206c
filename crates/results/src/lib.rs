//! cardinal-results: the results store's schema, defined once.
//!
//! Each run directory holds `metrics.csv`, one [`MetricRow`] per (epoch, split) in long
//! format. The trainer writes it and the analysis reads it; both go through this crate, so
//! the columns, their order and their types cannot drift apart. [`COLUMNS`] describes the
//! same columns for readers that need types up front (the analysis's polars schema), and a
//! test holds it to the struct.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One row of the results store: one (run, epoch, split).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRow {
    pub experiment: String,
    pub run_id: String,
    pub model: String,
    pub cardinality: usize,
    pub bottleneck_width: usize,
    pub form: String,
    pub params: u64,
    pub macs: u64,
    pub seed: u64,
    /// 1-based: the row describes the model after this many epochs.
    pub epoch: usize,
    /// `train` or `test`.
    pub split: String,
    pub loss: f64,
    pub top1_err: f64,
    pub top5_err: f64,
    pub lr: f64,
    pub images_per_sec: f64,
    pub wall_seconds: f64,
    /// Epochs of training done when the row was measured: `epoch` for the end-of-epoch
    /// rows, a fraction of the way through `epoch` for [`INTERIM`] rows.
    pub progress: f64,
    /// `f32` or `bf16-mixed`: the products the run trained with.
    pub precision: String,
}

/// The type of a column, for readers that build a typed schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Float,
}

/// The columns of `metrics.csv`, in order: [`MetricRow`]'s fields.
pub const COLUMNS: [(&str, Kind); 19] = [
    ("experiment", Kind::Text),
    ("run_id", Kind::Text),
    ("model", Kind::Text),
    ("cardinality", Kind::Integer),
    ("bottleneck_width", Kind::Integer),
    ("form", Kind::Text),
    ("params", Kind::Integer),
    ("macs", Kind::Integer),
    ("seed", Kind::Integer),
    ("epoch", Kind::Integer),
    ("split", Kind::Text),
    ("loss", Kind::Float),
    ("top1_err", Kind::Float),
    ("top5_err", Kind::Float),
    ("lr", Kind::Float),
    ("images_per_sec", Kind::Float),
    ("wall_seconds", Kind::Float),
    ("progress", Kind::Float),
    ("precision", Kind::Text),
];

/// The splits every epoch of a run records.
pub const SPLITS: [&str; 2] = ["train", "test"];

/// The split of test evaluations within an epoch (`train.eval_every`): the points of the
/// training curves between the epochs' ends.
pub const INTERIM: &str = "test-interim";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{}: the run finished {epochs} epochs but the file lacks {}", path.display(), describe_missing(missing))]
    Incomplete {
        path: PathBuf,
        epochs: usize,
        missing: Vec<(usize, String)>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn describe_missing(missing: &[(usize, String)]) -> String {
    let mut by_epoch: Vec<String> = Vec::new();
    let mut i = 0;
    while i < missing.len() {
        let epoch = missing[i].0;
        let splits: Vec<&str> = missing[i..]
            .iter()
            .take_while(|(e, _)| *e == epoch)
            .map(|(_, s)| s.as_str())
            .collect();
        i += splits.len();
        by_epoch.push(if splits.len() == SPLITS.len() {
            format!("epoch {epoch}")
        } else {
            format!("epoch {epoch} ({})", splits.join(", "))
        });
    }
    let shown = by_epoch.len().min(10);
    let more = by_epoch.len() - shown;
    let mut text = by_epoch[..shown].join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more epochs"));
    }
    text
}

/// The metrics file's text: header and rows.
pub fn to_csv(rows: &[MetricRow]) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // A header only, when there are no rows, so that the file always names its columns.
    if rows.is_empty() {
        writer
            .write_record(COLUMNS.iter().map(|(name, _)| *name))
            .expect("writing to memory");
    }
    for row in rows {
        writer.serialize(row).expect("a metric row serializes");
    }
    String::from_utf8(writer.into_inner().expect("writing to memory")).expect("UTF-8 CSV")
}

/// Writes `rows` to `path` atomically.
pub fn write_metrics(path: &Path, rows: &[MetricRow]) -> Result<()> {
    write_atomic(path, to_csv(rows).as_bytes())
}

/// Reads a metrics file; the error names the file, and the line and column at fault.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })?;
    parse_metrics(path, &text)
}

/// [`read_metrics`] of text already read; `path` names it in errors.
pub fn parse_metrics(path: &Path, text: &str) -> Result<Vec<MetricRow>> {
    let format = |message: String| Error::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    check_header(reader.headers().map_err(|e| format(e.to_string()))?.iter()).map_err(format)?;
    reader
        .deserialize()
        .map(|row| {
            row.map_err(|e| {
                let line = e
                    .position()
                    .map_or(String::new(), |p| format!("line {}: ", p.line()));
                format(format!("{line}{e}"))
            })
        })
        .collect()
}

/// Checks a header against [`COLUMNS`] by name, naming the first column that differs.
pub fn check_header<'a>(header: impl Iterator<Item = &'a str>) -> std::result::Result<(), String> {
    let header: Vec<&str> = header.collect();
    let expected: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    if header == expected {
        return Ok(());
    }
    let position = header
        .iter()
        .zip(&expected)
        .position(|(a, b)| a != b)
        .unwrap_or(header.len().min(expected.len()));
    Err(format!(
        "not a cardinal metrics file: header column {} is {:?}, expected {:?} (the results store's columns: {})",
        position + 1,
        header.get(position).copied().unwrap_or("nothing"),
        expected.get(position).copied().unwrap_or("nothing"),
        expected.join(",")
    ))
}

/// The (epoch, split) pairs of epochs 1..=`epochs` that `rows` lack, in order.
pub fn missing_rows(rows: &[MetricRow], epochs: usize) -> Vec<(usize, String)> {
    let mut missing = Vec::new();
    for epoch in 1..=epochs {
        for split in SPLITS {
            if !rows.iter().any(|r| r.epoch == epoch && r.split == split) {
                missing.push((epoch, split.to_string()));
            }
        }
    }
    missing
}

/// An error naming `path` and the missing epochs when `rows` of a run that finished
/// `epochs` epochs lack any (epoch, split) row.
pub fn check_complete(path: &Path, rows: &[MetricRow], epochs: usize) -> Result<()> {
    let missing = missing_rows(rows, epochs);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete {
            path: path.to_path_buf(),
            epochs,
            missing,
        })
    }
}

/// Suffix of the temporary files [`write_atomic`] writes before renaming them into place.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The temporary file for `path`: hidden, named after the file and the writing process
/// (`.checkpoint.safetensors.1234.tmp`), so that two processes never share one and a
/// leftover is recognised by its name alone.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}{TEMP_SUFFIX}", std::process::id()))
}

/// Whether a file name is one of [`temp_path`]'s.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Writes a file so that a crash leaves either the old or the new contents, never half:
/// to [`temp_path`], synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|source| Error::Io {
        path: path.to_path_buf(),
        cause: source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(epoch: usize, split: &str) -> MetricRow {
        MetricRow {
            experiment: "cardinality".into(),
            run_id: "c4x12d-s0-0123456789".into(),
            model: "cpu_resnext11_4x12d".into(),
            cardinality: 4,
            bottleneck_width: 12,
            form: "C".into(),
            params: 123_456,
            macs: 20_000_000,
            seed: 0,
            epoch,
            split: split.into(),
            loss: 0.1 + 1.0 / 3.0,
            top1_err: 0.0951,
            top5_err: 1e-300,
            lr: 0.05,
            images_per_sec: 512.25,
            wall_seconds: 61.0 / 7.0,
            progress: epoch as f64,
            precision: "bf16-mixed".into(),
        }
    }

    #[test]
    fn columns_are_the_rows_fields_in_order() {
        let text = to_csv(&[row(1, "train")]);
        let header = text.lines().next().unwrap();
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        assert_eq!(header, names.join(","));
        // An empty file still names its columns.
        assert_eq!(to_csv(&[]).trim_end(), names.join(","));
    }

    #[test]
    fn rows_round_trip_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        let rows = vec![row(1, "train"), row(1, "test")];
        write_metrics(&path, &rows).unwrap();
        assert_eq!(read_metrics(&path).unwrap(), rows);
        write_metrics(&path, &[]).unwrap();
        assert_eq!(read_metrics(&path).unwrap(), vec![]);
    }

    #[test]
    fn a_wrong_header_or_value_is_named() {
        let path = Path::new("runs/x/metrics.csv");
        let good = to_csv(&[row(1, "train")]);
        let swapped = good.replacen("top1_err,top5_err", "top5_err,top1_err", 1);
        let err = parse_metrics(path, &swapped).unwrap_err().to_string();
        assert!(
            err.contains("runs/x/metrics.csv") && err.contains("header column 13 is \"top5_err\""),
            "{err}"
        );
        let bad = good.replacen(",512.25,", ",fast,", 1);
        let err = parse_metrics(path, &bad).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn missing_epochs_are_named() {
        let path = Path::new("runs/x/metrics.csv");
        let rows = vec![row(1, "train"), row(1, "test"), row(3, "train")];
        let err = check_complete(path, &rows, 3).unwrap_err().to_string();
        assert!(
            err.contains("runs/x/metrics.csv")
                && err.contains("finished 3 epochs")
                && err.contains("epoch 2, epoch 3 (test)"),
            "{err}"
        );
        assert!(check_complete(path, &rows[..2], 1).is_ok());
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status.json"]);
        assert!(is_temp_name(
            &temp_path(&path).file_name().unwrap().to_string_lossy()
        ));
    }
}
