//! Where datasets live, in the order they are looked up: `--data-dir` (or `dir:` in a
//! config), `$CARDINAL_DATA`, `data/<name>` in the current directory, then Debian's
//! `/usr/share/datasets/<name>` (where `apt-get install dataset-fashion-mnist` puts it).

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// The environment variable naming a directory of datasets.
pub const ENV_VAR: &str = "CARDINAL_DATA";
/// Debian's dataset packages install here.
pub const SYSTEM_DIR: &str = "/usr/share/datasets";

#[derive(Debug, Clone)]
pub struct Locator {
    /// `--data-dir`: a dataset directory itself, or a directory holding `<name>/`.
    pub data_dir: Option<PathBuf>,
    /// `$CARDINAL_DATA`, read once when the locator is made.
    pub env_dir: Option<PathBuf>,
    /// The project's own `data/`.
    pub project_dir: PathBuf,
    pub system_dir: PathBuf,
}

impl Locator {
    /// The standard search order, with `data_dir` from the command line or config first.
    pub fn new(data_dir: Option<PathBuf>) -> Self {
        Locator {
            data_dir,
            env_dir: std::env::var_os(ENV_VAR)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            project_dir: PathBuf::from("data"),
            system_dir: PathBuf::from(SYSTEM_DIR),
        }
    }

    /// Candidate directories for dataset `name`, in search order.
    pub fn candidates(&self, name: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for dir in [&self.data_dir, &self.env_dir].into_iter().flatten() {
            out.push(dir.join(name));
            out.push(dir.clone());
        }
        out.push(self.project_dir.join(name));
        out.push(self.system_dir.join(name));
        out
    }

    /// The first candidate that `holds` accepts, or an error listing every place searched
    /// and the command that installs the data.
    pub fn find(&self, name: &str, holds: impl Fn(&Path) -> bool, hint: &str) -> Result<PathBuf> {
        let candidates = self.candidates(name);
        candidates
            .iter()
            .find(|dir| dir.is_dir() && holds(dir))
            .cloned()
            .ok_or_else(|| DataError::NotFound {
                name: name.to_string(),
                searched: candidates,
                hint: hint.to_string(),
            })
    }
}
