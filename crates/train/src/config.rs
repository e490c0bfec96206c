//! The `train:` section of an experiment: the recipe.

use serde::{Deserialize, Serialize};

/// A value that parses but that no run could use, with the dotted key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidKey {
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine from the peak learning rate to `min_lr` over the epochs after warm-up.
    #[default]
    Cosine,
    /// Multiply by `gamma` at each epoch in `milestones`.
    Step,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate for a batch of `lr_reference_batch` images.
    pub lr: f64,
    /// The learning rate scales linearly with the batch size (Goyal et al.): the rate used is
    /// lr * batch_size / lr_reference_batch. Unset: `lr` is used as it is.
    #[serde(default)]
    pub lr_reference_batch: Option<usize>,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Apply weight decay to BN parameters and biases too (off: only conv and fc weights
    /// decay, as most modern recipes do).
    #[serde(default)]
    pub decay_bn_and_bias: bool,
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Linear warm-up from 0 over this many epochs (fractions allowed), step by step.
    #[serde(default)]
    pub warmup_epochs: f64,
    #[serde(default)]
    pub min_lr: f64,
    /// Step schedule: epochs at which the rate is multiplied by `gamma`.
    #[serde(default)]
    pub milestones: Vec<usize>,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Train on a seeded subset of this many training images (quick presets, tests).
    #[serde(default)]
    pub train_images: Option<usize>,
    /// Evaluate on the first this-many test images.
    #[serde(default)]
    pub test_images: Option<usize>,
    /// Also evaluate the test set every this many epochs within an epoch (e.g. 0.25: four
    /// times an epoch, counting its end), for training curves with more points than epochs.
    /// Unset: at each epoch's end only.
    #[serde(default)]
    pub eval_every: Option<f64>,
    /// `f32`, or `bf16-mixed`: bf16 products with f32 sums, f32 master weights, BN, loss
    /// and optimizer (PyTorch Lightning's names; see the README's precision section).
    /// Unset: bf16-mixed where the CPU multiplies bf16 in hardware (AMX, AVX512-BF16), f32
    /// elsewhere; the resolved config (and so the run id) records the value.
    #[serde(default = "cardinal_zoo::Precision::default_here")]
    pub precision: cardinal_zoo::Precision,
}

fn default_momentum() -> f64 {
    0.9
}
fn default_weight_decay() -> f64 {
    5e-4
}
fn default_gamma() -> f64 {
    0.1
}
fn default_eval_batch() -> usize {
    500
}

impl TrainConfig {
    /// The peak learning rate actually used at this batch size.
    pub fn peak_lr(&self) -> f64 {
        match self.lr_reference_batch {
            Some(reference) => self.lr * self.batch_size as f64 / reference as f64,
            None => self.lr,
        }
    }

    /// Refuses values no run could use; the error names the key.
    pub fn validate(&self) -> Result<(), InvalidKey> {
        let check = |ok: bool, key: &str, why: String| -> Result<(), InvalidKey> {
            if ok {
                Ok(())
            } else {
                Err(InvalidKey {
                    key: format!("train.{key}"),
                    message: why,
                })
            }
        };
        check(self.epochs >= 1, "epochs", "must be at least 1".into())?;
        check(
            self.batch_size >= 1,
            "batch_size",
            "must be at least 1".into(),
        )?;
        check(
            self.eval_batch_size >= 1,
            "eval_batch_size",
            "must be at least 1".into(),
        )?;
        check(
            self.lr > 0.0 && self.lr.is_finite(),
            "lr",
            format!("{} is not a positive number", self.lr),
        )?;
        check(
            self.lr_reference_batch != Some(0),
            "lr_reference_batch",
            "must be at least 1".into(),
        )?;
        check(
            (0.0..1.0).contains(&self.momentum),
            "momentum",
            format!("{} is not in [0, 1)", self.momentum),
        )?;
        check(
            !(self.nesterov && self.momentum == 0.0),
            "nesterov",
            "needs momentum > 0".into(),
        )?;
        check(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "weight_decay",
            format!("{} is not a finite number >= 0", self.weight_decay),
        )?;
        check(
            self.min_lr >= 0.0 && self.min_lr.is_finite(),
            "min_lr",
            format!("{} is not a finite number >= 0", self.min_lr),
        )?;
        check(
            self.gamma > 0.0 && self.gamma.is_finite(),
            "gamma",
            format!("{} is not a positive number", self.gamma),
        )?;
        check(
            self.warmup_epochs >= 0.0 && self.warmup_epochs <= self.epochs as f64,
            "warmup_epochs",
            format!("{} is not in [0, epochs]", self.warmup_epochs),
        )?;
        check(
            self.eval_every
                .is_none_or(|e| e > 0.0 && e <= 1.0 && e.is_finite()),
            "eval_every",
            format!(
                "{:?} is not in (0, 1] epochs",
                self.eval_every.unwrap_or(0.0)
            ),
        )?;
        check(
            self.milestones.windows(2).all(|w| w[0] < w[1]),
            "milestones",
            "must increase".into(),
        )?;
        Ok(())
    }
}
