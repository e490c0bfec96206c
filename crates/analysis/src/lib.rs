//! Tables, figures and reports of cardinal experiments, read from the results store only
//! (each run's `metrics.csv`, `config.yaml`, `meta.json`, `status.json`): nothing here
//! depends on candle, so reports never wait on a model build.
//!
//! - [`store`]: reading runs; [`summary`]: aggregating over seeds with polars;
//! - [`table`]: Markdown and terminal tables; [`figure`]: plotters figures (SVG and PNG);
//! - [`stats`]: t quantiles, paired differences, Holm's correction, slopes;
//! - [`comparison`]: each configuration against its reference, and the trend across C;
//! - [`conclusion`]: what the comparisons found, in sentences;
//! - [`report`]: `reports/<experiment>/README.md`; [`paper`]: the paper's numbers.

use std::path::PathBuf;

pub mod comparison;
pub mod conclusion;
pub mod figure;
pub mod paper;
pub mod report;
pub mod stats;
pub mod store;
pub mod summary;
pub mod table;

pub use report::{compare, write_report, ReportInput, Written};
pub use store::Run;
pub use summary::{summarize, Config, Stat};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    NoRuns(String),
    #[error("figure {}: {message}", path.display())]
    Figure { path: PathBuf, message: String },
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    #[error(transparent)]
    Results(#[from] cardinal_results::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
