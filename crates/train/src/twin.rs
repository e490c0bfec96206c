//! Runs shared between experiments. Two experiments may hold the same cell: the same
//! spec, data, recipe and seed, so the same run id (`resnet-vs-resnext` and
//! `cardinality-deep` both train `cpu_resnet29`, for example). Training is deterministic
//! for a given instruction-set path and thread count, so a finished run of another
//! experiment under the same runs directory, trained on the same path with as many
//! threads, already holds the metrics this run would produce bit for bit: it is copied,
//! with this experiment's names, instead of being trained again.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::write_atomic;
use crate::run::{read_metrics_csv, write_metrics, RunSpec};
use crate::status::{log_line, write_status, State, Status};

/// What must match, besides the configuration, for a run to give the same numbers here.
pub(crate) struct Machine {
    pub isa: String,
    pub threads: usize,
}

/// A finished run of the same configuration in another experiment's directory, trained on
/// `machine`'s instruction-set path with as many threads (the first, by path, of several).
pub(crate) fn finished_twin(
    spec: &RunSpec,
    dir: &Path,
    runs_dir: &Path,
    machine: &Machine,
) -> Option<PathBuf> {
    let run_id = spec.run_id();
    let key = spec.result_key();
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join(&run_id)))
        .filter(|candidate| candidate != dir && candidate.is_dir())
        .collect();
    candidates.sort();
    candidates.into_iter().find(|candidate| {
        let finished = Status::read(candidate).is_some_and(|s| s.state == State::Finished);
        let same_config = std::fs::read_to_string(candidate.join("config.yaml"))
            .ok()
            .and_then(|text| serde_saphyr::from_str::<RunSpec>(&text).ok())
            .is_some_and(|other| other.result_key() == key);
        let same_machine = std::fs::read_to_string(candidate.join("meta.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|meta| {
                meta["isa"].as_str() == Some(machine.isa.as_str())
                    && meta["threads"].as_u64() == Some(machine.threads as u64)
            });
        finished
            && same_config
            && same_machine
            && candidate.join("checkpoint.safetensors").is_file()
    })
}

/// Makes `dir` a copy of the finished run `twin`, under this experiment's names: its
/// metrics, checkpoint, log and provenance (the sessions that trained it), then its
/// finished status, written last so that an interruption leaves a run that is copied or
/// trained again.
pub(crate) fn copy_twin(spec: &RunSpec, dir: &Path, twin: &Path) -> Result<Vec<crate::MetricRow>> {
    let rows: Vec<crate::MetricRow> = read_metrics_csv(&twin.join("metrics.csv"))?
        .into_iter()
        .map(|mut row| {
            row.experiment = spec.experiment.clone();
            row.model = spec.model.clone();
            row
        })
        .collect();
    let checkpoint = std::fs::read(twin.join("checkpoint.safetensors")).with_context(|| {
        format!(
            "cannot read {}",
            twin.join("checkpoint.safetensors").display()
        )
    })?;
    write_atomic(&dir.join("checkpoint.safetensors"), &checkpoint)?;
    write_metrics(dir, &rows)?;
    let meta_path = twin.join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("cannot read {}", meta_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", meta_path.display()))?;
    meta["experiment"] = spec.experiment.clone().into();
    meta["copied_from"] = twin.display().to_string().into();
    write_atomic(
        &dir.join("meta.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    let log = std::fs::read_to_string(twin.join("log.txt")).unwrap_or_default();
    write_atomic(&dir.join("log.txt"), log.as_bytes())?;
    log_line(
        dir,
        &format!(
            "copied from {}: a finished run of the same spec, data, recipe and seed, on the same instruction-set path and thread count",
            twin.display()
        ),
    );
    write_status(
        dir,
        State::Finished,
        spec.train.epochs,
        spec.train.epochs,
        None,
    )?;
    Ok(rows)
}
