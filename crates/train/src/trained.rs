//! A trained run as a model to use: its spec from `config.yaml` and its weights from the
//! checkpoint, for inference and export.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use cardinal_zoo::spec::BlockForm;
use cardinal_zoo::weights::check_state;
use cardinal_zoo::StateDict;

use crate::checkpoint::load_checkpoint;
use crate::run::{RunSpec, Status};

/// The checkpoint's file name in a run directory.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// A run's model: what trained, and its weights after the last finished epoch.
pub struct Trained {
    pub dir: PathBuf,
    pub run: RunSpec,
    /// Epochs the weights have trained for, and of how many the run asked.
    pub epochs_done: usize,
    pub epochs: usize,
    /// In the spec's block form, as the model trained.
    pub state: StateDict,
}

impl Trained {
    /// Opens a run directory, or the checkpoint inside one (`config.yaml` beside it names the
    /// model). The weights are checked against the spec, key by key.
    pub fn open(path: &Path) -> Result<Trained> {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            match path.parent() {
                Some(parent) if parent.join("config.yaml").is_file() => parent.to_path_buf(),
                _ => bail!(
                    "{}: not a run directory nor a run's checkpoint (no config.yaml beside it)",
                    path.display()
                ),
            }
        };
        let config = dir.join("config.yaml");
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("{}: not a run directory (no config.yaml)", dir.display()))?;
        let run: RunSpec =
            serde_saphyr::from_str(&text).map_err(|e| anyhow!("{}: {e}", config.display()))?;
        let checkpoint_path = if path.is_dir() {
            dir.join(CHECKPOINT)
        } else {
            path.to_path_buf()
        };
        if !checkpoint_path.is_file() {
            bail!(
                "{}: the run has no checkpoint yet (it saves one after each epoch)",
                dir.display()
            );
        }
        let checkpoint = load_checkpoint(&checkpoint_path)?;
        let file = checkpoint_path.display().to_string();
        let grouped = cardinal_zoo::convert::convert(
            &run.spec,
            &checkpoint.state,
            run.spec.form,
            BlockForm::C,
        )?;
        check_state(&run.spec, &grouped, &file, &run.model)?;
        let epochs = Status::read(&dir).map_or(run.train.epochs, |s| s.epochs);
        Ok(Trained {
            dir,
            epochs_done: checkpoint.epochs_done,
            epochs,
            state: checkpoint.state,
            run,
        })
    }

    /// Whether `path` names a run (a directory with `config.yaml`, or a checkpoint beside
    /// one) rather than a plain weights file.
    pub fn is_run(path: &Path) -> bool {
        if path.is_dir() {
            return path.join("config.yaml").is_file();
        }
        path.file_name().is_some_and(|n| n == CHECKPOINT)
            && path
                .parent()
                .is_some_and(|p| p.join("config.yaml").is_file())
    }

    /// Writes the weights as a torchvision state dict (form C names and layout, f32), which
    /// PyTorch's `load_state_dict` takes for the same architecture.
    pub fn export(&self, out: &Path) -> Result<()> {
        cardinal_zoo::save_safetensors(out, &self.run.spec, &self.state)
            .with_context(|| format!("cannot export to {}", out.display()))
    }
}
