use std::path::{Path, PathBuf};

use thiserror::Error;

/// Every error names the file at fault and, where the format has records, the record index,
/// so that a user can find the bad byte without a debugger.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{}: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: not a valid gzip stream ({cause}); the file is damaged or truncated, delete it and install the dataset again", .path.display())]
    Gzip {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {reason}", .path.display())]
    BadHeader { path: PathBuf, reason: String },
    #[error("{}: truncated at record {record}: expected {expected} bytes, found {found}", .path.display())]
    Truncated {
        path: PathBuf,
        record: usize,
        expected: u64,
        found: u64,
    },
    #[error("{}: {extra} unexpected bytes after the last record ({records} records)", .path.display())]
    TrailingBytes {
        path: PathBuf,
        records: usize,
        extra: u64,
    },
    #[error("{} holds {images} images but {} holds {labels} labels", .images_path.display(), .labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },
    #[error("{}: record {record}: label {label} is outside the class range 0..{classes}", .path.display())]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        label: u32,
        classes: usize,
    },
    #[error("{}: images are {found}, but the rest of the dataset is {expected}", .path.display())]
    ShapeMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{}: class folder holds no image (.png, .jpg, .jpeg); remove it or add images", .path.display())]
    EmptyClassFolder { path: PathBuf },
    #[error("{}: no class folders (one sub-folder per class, holding .png or .jpg images)", .path.display())]
    NoClasses { path: PathBuf },
    #[error("{}: the {split} split's classes {found:?} differ from the train split's {expected:?}", .path.display())]
    ClassesDiffer {
        path: PathBuf,
        split: String,
        expected: Vec<String>,
        found: Vec<String>,
    },
    #[error("{}: unreadable image: {reason}", .path.display())]
    UnreadableImage { path: PathBuf, reason: String },
    #[error("{}: SHA-256 of the decompressed contents is {found}, expected {expected}; the file is damaged or not the {dataset} release, delete it and run `just data`", .path.display())]
    Checksum {
        path: PathBuf,
        dataset: String,
        expected: String,
        found: String,
    },
    #[error("dataset '{name}' not found; looked in:\n{}\n{hint}", .searched.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n"))]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
        hint: String,
    },
    #[error("unknown dataset '{name}'{}; known datasets: {known}; any other name is looked up as an image folder (one sub-folder per class)", suggestion(.suggestions))]
    UnknownDataset {
        name: String,
        suggestions: Vec<String>,
        known: String,
    },
    #[error("{}: missing file {file}", .dir.display())]
    MissingFile { dir: PathBuf, file: String },
    #[error("invalid data config: `{key}`: {reason}")]
    InvalidConfig { key: String, reason: String },
    #[error("building a batch tensor")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Image(String),
}

fn suggestion(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!(" (did you mean '{one}'?)"),
        many => format!(" (did you mean one of: {}?)", many.join(", ")),
    }
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }

    pub(crate) fn header(path: &Path, reason: impl Into<String>) -> Self {
        DataError::BadHeader {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        DataError::InvalidConfig {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
