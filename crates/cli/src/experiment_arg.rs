//! The experiment a command names (`cardinal ablate NAME`, `report NAME`, `train FILE`),
//! read and resolved once: its file, its preset and overrides applied, and its cells. The
//! commands that train and report hand this one value along.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use cardinal_train::experiment::{self, parse_overrides};
use cardinal_train::{Experiment, RunSpec};

/// An experiment file with a preset and overrides applied.
pub struct ResolvedExperiment {
    pub path: PathBuf,
    /// The file's stem: the runs go to runs/NAME, the report to reports/NAME.
    pub name: String,
    /// As written in the file (its question, its default preset).
    pub file: Experiment,
    /// The preset applied: the one asked for, else the file's default.
    pub preset: Option<String>,
    /// The command line's key=value overrides, as typed.
    pub overrides: Vec<String>,
    /// Every run of the sweep, for every seed.
    pub cells: Vec<RunSpec>,
    /// The half-width its report's paired intervals should reach, after the preset.
    pub target_half_width: Option<f64>,
}

/// `experiments/NAME.yaml` for a bare name; a path (with `/` or a YAML extension) as it is.
pub fn experiment_path(name: &str) -> PathBuf {
    if name.ends_with(".yaml") || name.ends_with(".yml") || name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("experiments").join(format!("{name}.yaml"))
    }
}

/// The experiment's name: its file's stem.
pub fn experiment_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "experiment".into())
}

impl ResolvedExperiment {
    /// Reads `name_or_path` (see [`experiment_path`]) and applies the preset and overrides.
    /// A missing file lists the experiments and suggests the closest name.
    pub fn load(
        name_or_path: &str,
        preset: Option<&str>,
        overrides: &[String],
    ) -> Result<ResolvedExperiment> {
        Self::load_path(&experiment_path(name_or_path), preset, overrides)
    }

    pub fn load_path(
        path: &Path,
        preset: Option<&str>,
        overrides: &[String],
    ) -> Result<ResolvedExperiment> {
        if !path.is_file() {
            bail!(
                "no experiment file {}{}",
                path.display(),
                known_experiments(path)
            );
        }
        let file = experiment::load(path)?;
        let parsed = parse_overrides(overrides)?;
        let (resolved, preset) = file
            .resolve(preset, &parsed)
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        let name = experiment_name(path);
        let cells = resolved
            .cells(&name)
            .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        Ok(ResolvedExperiment {
            path: path.to_path_buf(),
            name,
            file,
            preset,
            overrides: overrides.to_vec(),
            cells,
            target_half_width: resolved.target_half_width,
        })
    }
}

/// "; did you mean `cardinality`? experiments: ..." for a missing experiment file, from
/// the YAML files beside where it was looked for.
fn known_experiments(missing: &Path) -> String {
    let dir = missing
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("experiments"));
    let mut known: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "yaml").then(|| experiment_name(&p))
        })
        .collect();
    known.sort();
    if known.is_empty() {
        return String::new();
    }
    let wanted = experiment_name(missing);
    let closest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(k, &wanted), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    format!("{closest}; experiments: {}", known.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_experiment_is_pointed_at_the_closest_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cardinality", "depth2"] {
            std::fs::write(dir.path().join(format!("{name}.yaml")), "question: q\n").unwrap();
        }
        let text = known_experiments(&dir.path().join("cardinalty.yaml"));
        assert!(text.contains("did you mean `cardinality`?"), "{text}");
        assert!(text.contains("experiments: cardinality, depth2"), "{text}");
        let text = known_experiments(&dir.path().join("zzz.yaml"));
        assert!(!text.contains("did you mean"), "{text}");
    }
}
