//! A run's state on disk: `status.json` (running, finished, diverged; epochs done) and the
//! human-readable `log.txt`.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::files::write_atomic;
use crate::provenance::utc_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Finished,
    /// The loss became NaN or infinite; the run stopped and the sweep went on.
    Diverged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub epochs_done: usize,
    pub epochs: usize,
    #[serde(default)]
    pub message: Option<String>,
}

impl Status {
    pub fn read(dir: &Path) -> Option<Status> {
        let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

pub(crate) fn write_status(
    dir: &Path,
    state: State,
    epochs_done: usize,
    epochs: usize,
    message: Option<String>,
) -> Result<()> {
    let status = Status {
        state,
        epochs_done,
        epochs,
        message,
    };
    write_atomic(
        &dir.join("status.json"),
        serde_json::to_string_pretty(&status)?.as_bytes(),
    )
}

pub(crate) fn log_line(dir: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log.txt"))
    {
        let _ = writeln!(f, "{} {line}", utc_now());
    }
}
