//! A run, fully resolved: what decides its result, and the stable id that names its
//! directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cardinal_data::DataConfig;
use cardinal_zoo::NetSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TrainConfig;

/// A fully resolved run: everything that decides its result, plus names for tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub experiment: String,
    /// Display name of the model (preset, and the solved C x d in a cardinality sweep).
    pub model: String,
    pub spec: NetSpec,
    pub dataset: DataConfig,
    pub train: TrainConfig,
    pub seed: u64,
    /// The sweep values of this cell, for tables (`cardinality`, `model.form`, ...).
    pub labels: BTreeMap<String, String>,
    pub params: u64,
    pub macs: u64,
}

impl RunSpec {
    /// Stable for a config: a readable prefix and a hash of everything that changes the
    /// result (spec, dataset, recipe, seed), so an interrupted sweep finds its runs again.
    pub fn run_id(&self) -> String {
        let hash: String = Sha256::digest(self.result_key().as_bytes())
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect();
        let form = match self.spec.form {
            cardinal_zoo::BlockForm::C => String::new(),
            other => format!("-form{other:?}"),
        };
        format!(
            "c{}x{}d{form}-s{}-{hash}",
            self.spec.cardinality, self.spec.bottleneck_width, self.seed
        )
    }

    /// Everything that changes the result (spec, dataset, recipe, seed), as JSON: what the
    /// run id hashes, and what two runs must share to be the same run.
    pub fn result_key(&self) -> String {
        serde_json::to_string(&(&self.spec, &self.dataset, &self.train, self.seed))
            .expect("a run spec serializes")
    }

    pub fn dir(&self, runs_dir: &Path) -> PathBuf {
        runs_dir.join(&self.experiment).join(self.run_id())
    }
}
