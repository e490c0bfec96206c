//! What a dataset is once opened: its classes, its train / validation / test splits, and the
//! per-channel statistics measured on its training images. Opening one is `open.rs`; each
//! file format is in `formats/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Idx,
    Cifar10,
    Cifar100,
    ImageFolder,
}

/// How a split's images are held: decoded bytes in memory (IDX, CIFAR: tens of MB), or
/// files decoded on demand (image folders, which can be any size).
#[derive(Debug)]
pub(crate) enum Storage {
    /// N images of `shape`, CHW, one after another.
    Dense {
        pixels: Vec<u8>,
        shape: ImageShape,
    },
    Files {
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug)]
pub(crate) struct Samples {
    pub(crate) storage: Storage,
    pub(crate) labels: Vec<u32>,
}

impl Samples {
    pub(crate) fn dense_image(&self, index: usize) -> Option<&[u8]> {
        match &self.storage {
            Storage::Dense { pixels, shape } => {
                Some(&pixels[index * shape.len()..(index + 1) * shape.len()])
            }
            Storage::Files { .. } => None,
        }
    }
}

/// A view on samples: the positions of a split within its source files. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Split {
    pub(crate) samples: Arc<Samples>,
    pub(crate) indices: Arc<[u32]>,
}

impl Split {
    pub(crate) fn all(samples: Samples) -> Self {
        let indices: Arc<[u32]> = (0..samples.labels.len() as u32).collect();
        Split {
            samples: Arc::new(samples),
            indices,
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The sample index (its record in the source files) at a position of this split. The
    /// augmentation of a sample is seeded by this index, so it does not depend on the split
    /// or the shuffle.
    pub fn sample_index(&self, position: usize) -> u32 {
        self.indices[position]
    }

    pub fn label(&self, position: usize) -> u32 {
        self.samples.labels[self.indices[position] as usize]
    }

    /// Number of samples of each class.
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &i in self.indices.iter() {
            counts[self.samples.labels[i as usize] as usize] += 1;
        }
        counts
    }

    /// The image file of a position, for image folders.
    pub fn path(&self, position: usize) -> Option<&Path> {
        match &self.samples.storage {
            Storage::Files { paths } => Some(&paths[self.indices[position] as usize]),
            Storage::Dense { .. } => None,
        }
    }

    /// A seeded random subset of `n` samples (all of them if `n` >= len), in file order:
    /// quick runs train on a fixed, class-mixed share of the data.
    pub fn sample(&self, n: usize, seed: u64) -> Split {
        if n >= self.len() {
            return self.clone();
        }
        let mut order: Vec<u32> = self.indices.to_vec();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        order.truncate(n);
        order.sort_unstable();
        self.subset(order)
    }

    pub(crate) fn subset(&self, indices: Vec<u32>) -> Split {
        Split {
            samples: self.samples.clone(),
            indices: indices.into(),
        }
    }
}

/// Per-channel mean and standard deviation of pixel values scaled to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// How many training images the statistics were measured on.
    pub images: usize,
}

/// A source file of the dataset and its checksum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: PathBuf,
    /// SHA-256 of the decompressed contents, when the dataset has a published one.
    pub sha256: Option<String>,
    /// Whether it matched the published value (files that do not match are refused).
    pub verified: bool,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// Canonical name (`fashion-mnist`, `cifar10`, or the folder's name).
    pub name: String,
    pub root: PathBuf,
    pub format: Format,
    pub classes: Vec<String>,
    /// Shape of the images a loader yields.
    pub shape: ImageShape,
    pub train: Split,
    /// Carved from the training files when `validation` > 0 in the config.
    pub validation: Option<Split>,
    pub test: Split,
    /// Measured on every training image (IDX, CIFAR) or a seeded sample (image folders).
    pub stats: ChannelStats,
    pub files: Vec<SourceFile>,
    /// Defaults of augmentation for this dataset (zero-padding of the random crop, flip).
    pub default_padding: usize,
    pub default_hflip: bool,
    /// Image folders: side of the output images and of the shorter side before the
    /// evaluation center crop.
    pub image_size: usize,
    pub resize: usize,
}

impl Dataset {
    /// A split by name: `train`, `validation` (or `val`), `test`.
    pub fn split(&self, name: &str) -> Result<&Split> {
        match name {
            "train" => Ok(&self.train),
            "test" => Ok(&self.test),
            "validation" | "val" => self.validation.as_ref().ok_or_else(|| {
                DataError::config(
                    "validation",
                    "no validation split: set `validation` to the number of training images to hold out",
                )
            }),
            other => Err(DataError::config(
                "split",
                format!("unknown split '{other}' (train, validation, test)"),
            )),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn dense_dataset(
    name: &str,
    root: &Path,
    format: Format,
    classes: Vec<String>,
    shape: ImageShape,
    train: Split,
    test: Split,
    files: Vec<SourceFile>,
    hflip: bool,
) -> Dataset {
    let stats = dense_stats(&train);
    Dataset {
        name: name.to_string(),
        root: root.to_path_buf(),
        format,
        classes,
        shape,
        train,
        validation: None,
        test,
        stats,
        files,
        // 4 pixels of CIFAR's 32 is the standard recipe (He et al. 2016); 2 of 28 keeps
        // the same share of the image for the MNIST family.
        default_padding: if shape.height >= 32 { 4 } else { 2 },
        default_hflip: hflip,
        image_size: shape.height,
        resize: shape.height,
    }
}

/// Exact mean and (population) standard deviation per channel over every training image.
pub(crate) fn dense_stats(split: &Split) -> ChannelStats {
    let Storage::Dense { pixels, shape } = &split.samples.storage else {
        unreachable!("dense_stats on files")
    };
    let plane = shape.height * shape.width;
    let mut sum = vec![0u64; shape.channels];
    let mut sum_sq = vec![0u64; shape.channels];
    for &i in split.indices.iter() {
        let image = &pixels[i as usize * shape.len()..(i as usize + 1) * shape.len()];
        for (c, channel) in image.chunks_exact(plane).enumerate() {
            let (s, q) = channel.iter().fold((0u64, 0u64), |(s, q), &v| {
                (s + v as u64, q + (v as u64) * (v as u64))
            });
            sum[c] += s;
            sum_sq[c] += q;
        }
    }
    let n = (split.len() * plane) as f64;
    let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / n / 255.0).collect();
    let std = sum_sq
        .iter()
        .zip(&mean)
        .map(|(&q, m)| (q as f64 / n / (255.0 * 255.0) - m * m).max(0.0).sqrt())
        .collect();
    ChannelStats {
        mean,
        std,
        images: split.len(),
    }
}

pub(crate) fn files_dataset(
    name: String,
    root: &Path,
    classes: Vec<String>,
    train: (Vec<PathBuf>, Vec<u32>),
    test: (Vec<PathBuf>, Vec<u32>),
    image_size: usize,
    resize: usize,
) -> Dataset {
    let make = |(paths, labels): (Vec<PathBuf>, Vec<u32>)| {
        Split::all(Samples {
            storage: Storage::Files { paths },
            labels,
        })
    };
    Dataset {
        name,
        root: root.to_path_buf(),
        format: Format::ImageFolder,
        classes,
        shape: ImageShape {
            channels: 3,
            height: image_size,
            width: image_size,
        },
        train: make(train),
        validation: None,
        test: make(test),
        // Filled by `folder::open` once the transform can decode images.
        stats: ChannelStats {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            images: 0,
        },
        files: Vec::new(),
        default_padding: 0,
        default_hflip: true,
        image_size,
        resize,
    }
}
