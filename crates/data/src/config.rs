//! The `dataset:` and loader sections of an experiment, as data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Which dataset, where, and how it is split and augmented. One line of YAML is enough
/// (`name: fashion-mnist`); every other key has the dataset's own default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `fashion-mnist`, `mnist`, `cifar10`, `cifar100`, or an image folder (a name looked up
    /// like the others, or a path).
    pub name: String,
    /// Searched before `$CARDINAL_DATA`, `data/<name>` and `/usr/share/datasets/<name>`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Number of training images held out as a validation split (0: none).
    #[serde(default)]
    pub validation: usize,
    /// Seed of the draw of the validation images (independent of the training seed, so that
    /// runs with different seeds validate on the same images).
    #[serde(default)]
    pub validation_seed: u64,
    #[serde(default)]
    pub augment: AugmentConfig,
    /// Image folders: side of the square images fed to the network (default 224).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Image folders: shorter side before the evaluation center crop (default
    /// image_size * 256 / 224, the ImageNet ratio).
    #[serde(default)]
    pub resize: Option<usize>,
    /// Image folders without `train/` and `test/` (or `val/`) sub-folders: share of each
    /// class held out as the test split, drawn with `validation_seed`.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
}

fn default_test_fraction() -> f64 {
    0.1
}

/// Augmentation of training images. Evaluation images are only normalized (and, for image
/// folders, resized and center-cropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Off: training images go through the evaluation transform.
    pub enabled: bool,
    /// Zero padding before the random crop back to the original size (IDX and CIFAR);
    /// default 2 for 28x28 images, 4 for 32x32.
    pub padding: Option<usize>,
    /// Random horizontal flip; default on, except for MNIST digits.
    pub hflip: Option<bool>,
    /// Image folders: smallest share of the image area a random-resized crop keeps.
    pub min_scale: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            enabled: true,
            padding: None,
            hflip: None,
            min_scale: 0.08,
        }
    }
}

impl DataConfig {
    pub fn named(name: impl Into<String>) -> Self {
        DataConfig {
            name: name.into(),
            dir: None,
            validation: 0,
            validation_seed: 0,
            augment: AugmentConfig::default(),
            image_size: None,
            resize: None,
            test_fraction: default_test_fraction(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(DataError::config("name", "must name a dataset"));
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(DataError::config(
                "test_fraction",
                format!("{} is not in [0, 1)", self.test_fraction),
            ));
        }
        if !(self.augment.min_scale > 0.0 && self.augment.min_scale <= 1.0) {
            return Err(DataError::config(
                "augment.min_scale",
                format!("{} is not in (0, 1]", self.augment.min_scale),
            ));
        }
        if self.image_size == Some(0) {
            return Err(DataError::config("image_size", "must be at least 1"));
        }
        if let (Some(size), Some(resize)) = (self.image_size, self.resize) {
            if resize < size {
                return Err(DataError::config(
                    "resize",
                    format!(
                        "{resize} is smaller than image_size {size}; the center crop would not fit"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// How batches are drawn from a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Reshuffle every epoch (a permutation seeded by `seed` and the epoch).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Drop the last batch when it is smaller than `batch_size`.
    #[serde(default)]
    pub drop_last: bool,
    /// Batches prepared ahead by a background thread (0: prepare them in the caller's
    /// thread).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Seeds the shuffle and the augmentation.
    #[serde(default)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}

fn default_prefetch() -> usize {
    4
}

impl LoaderConfig {
    pub fn new(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: false,
            prefetch: default_prefetch(),
            seed: 0,
        }
    }
}
