//! A dataset opened from disk: its classes, its train / validation / test splits, and the
//! per-channel statistics measured on its training images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cifar::{self, Variant};
use crate::config::DataConfig;
use crate::error::{DataError, Result};
use crate::folder;
use crate::idx;
use crate::locate::Locator;

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
    fn all(samples: Samples) -> Self {
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

    fn subset(&self, indices: Vec<u32>) -> Split {
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

/// The datasets cardinal knows by name; any other name is an image folder.
pub struct Known {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub format: Format,
    pub install_hint: &'static str,
}

pub const KNOWN: &[Known] = &[
    Known {
        name: "fashion-mnist",
        aliases: &["fashion_mnist", "fashionmnist", "fmnist"],
        format: Format::Idx,
        install_hint: "Install it with `just data` (on Debian: `sudo apt-get install dataset-fashion-mnist`).",
    },
    Known {
        name: "mnist",
        aliases: &[],
        format: Format::Idx,
        install_hint: "Put the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in data/mnist/.",
    },
    Known {
        name: "cifar10",
        aliases: &["cifar-10"],
        format: Format::Cifar10,
        install_hint: "Download the binary version from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and extract it with `mkdir -p data/cifar10 && tar -xzf cifar-10-binary.tar.gz -C data/cifar10`.",
    },
    Known {
        name: "cifar100",
        aliases: &["cifar-100"],
        format: Format::Cifar100,
        install_hint: "Download the binary version from https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz and extract it with `mkdir -p data/cifar100 && tar -xzf cifar-100-binary.tar.gz -C data/cifar100`.",
    },
];

/// SHA-256 of the *decompressed* Fashion-MNIST files. The contents are what matter: Debian
/// re-compresses the official `.gz` files, so their compressed bytes differ while the data
/// is the same.
pub const FASHION_MNIST_SHA256: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

pub fn known(name: &str) -> Option<&'static Known> {
    let lower = name.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|k| k.name == lower || k.aliases.contains(&lower.as_str()))
}

const IDX_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// `dir/stem.gz` if present, else `dir/stem`.
fn idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

fn cifar_dir(dir: &Path, variant: Variant) -> Option<PathBuf> {
    let (sub, probe) = match variant {
        Variant::Cifar10 => ("cifar-10-batches-bin", "data_batch_1.bin"),
        Variant::Cifar100 => ("cifar-100-binary", "train.bin"),
    };
    [dir.to_path_buf(), dir.join(sub)]
        .into_iter()
        .find(|d| d.join(probe).is_file())
}

impl Dataset {
    /// Opens the dataset a config names, searching the standard locations.
    pub fn open(config: &DataConfig) -> Result<Dataset> {
        config.validate()?;
        let locator = Locator::new(config.dir.clone());
        Self::open_with(config, &locator)
    }

    pub fn open_with(config: &DataConfig, locator: &Locator) -> Result<Dataset> {
        config.validate()?;
        let mut dataset = match known(&config.name) {
            Some(k) => {
                let root = match k.format {
                    Format::Idx => locator.find(
                        k.name,
                        |d| idx_file(d, IDX_STEMS[0]).is_some(),
                        k.install_hint,
                    )?,
                    Format::Cifar10 => locator.find(
                        k.name,
                        |d| cifar_dir(d, Variant::Cifar10).is_some(),
                        k.install_hint,
                    )?,
                    Format::Cifar100 => locator.find(
                        k.name,
                        |d| cifar_dir(d, Variant::Cifar100).is_some(),
                        k.install_hint,
                    )?,
                    Format::ImageFolder => unreachable!("image folders are not in KNOWN"),
                };
                match k.format {
                    Format::Idx => open_idx(k.name, &root)?,
                    Format::Cifar10 => open_cifar(k.name, &root, Variant::Cifar10)?,
                    _ => open_cifar(k.name, &root, Variant::Cifar100)?,
                }
            }
            None => {
                let direct = Path::new(&config.name);
                let root = if config.name.contains('/') || direct.is_dir() && config.dir.is_none() {
                    if !direct.is_dir() {
                        return Err(unknown(&config.name, vec![direct.to_path_buf()]));
                    }
                    direct.to_path_buf()
                } else {
                    let found = locator
                        .find(&config.name, folder::looks_like_folder, "")
                        .map_err(|e| match e {
                            DataError::NotFound { searched, .. } => unknown(&config.name, searched),
                            e => e,
                        })?;
                    // A directory of datasets (`--data-dir`, $CARDINAL_DATA) looks like an
                    // image folder too; a near miss of a known name found only there is a
                    // typo, not a dataset.
                    let named = found.file_name().is_some_and(|n| *n == *config.name);
                    if !named && !suggestions(&config.name).is_empty() {
                        return Err(unknown(&config.name, Vec::new()));
                    }
                    found
                };
                folder::open(&root, config)?
            }
        };
        if config.validation > 0 {
            let train = &dataset.train;
            if config.validation >= train.len() {
                return Err(DataError::config(
                    "validation",
                    format!(
                        "{} images cannot be held out of a training split of {}",
                        config.validation,
                        train.len()
                    ),
                ));
            }
            let mut order: Vec<u32> = train.indices.to_vec();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(config.validation_seed));
            let keep = order.len() - config.validation;
            let mut validation = order.split_off(keep);
            let mut kept = order;
            // Sorted so that an unshuffled pass reads the files in order.
            kept.sort_unstable();
            validation.sort_unstable();
            dataset.validation = Some(train.subset(validation));
            dataset.train = train.subset(kept);
        }
        Ok(dataset)
    }

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

/// Known dataset names that `name` resembles (a typo's likely targets).
fn suggestions(name: &str) -> Vec<String> {
    let mut names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
    names.extend(KNOWN.iter().flat_map(|k| k.aliases.iter().copied()));
    let mut suggestions: Vec<String> = names
        .iter()
        .filter(|k| strsim::jaro_winkler(k, &name.to_ascii_lowercase()) > 0.8)
        .map(|k| known(k).unwrap().name.to_string())
        .collect();
    suggestions.dedup();
    suggestions
}

fn unknown(name: &str, searched: Vec<PathBuf>) -> DataError {
    let suggestions = suggestions(name);
    if suggestions.is_empty() && !searched.is_empty() {
        return DataError::NotFound {
            name: name.to_string(),
            searched,
            hint: format!(
                "It is neither a known dataset ({}) nor an image folder (one sub-folder per class) in those places.",
                KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
            ),
        };
    }
    DataError::UnknownDataset {
        name: name.to_string(),
        suggestions,
        known: KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads an IDX file, checking its decompressed contents against the published checksum
/// when the dataset has one.
fn read_checked(dataset: &str, path: &Path, stem: &str) -> Result<(Vec<u8>, SourceFile)> {
    let bytes = idx::read_maybe_gzip(path)?;
    let expected = match dataset {
        "fashion-mnist" => FASHION_MNIST_SHA256
            .iter()
            .find(|(s, _)| *s == stem)
            .map(|(_, h)| *h),
        _ => None,
    };
    let mut file = SourceFile {
        path: path.to_path_buf(),
        sha256: None,
        verified: false,
    };
    if let Some(expected) = expected {
        let found = sha256_hex(&bytes);
        if found != expected {
            return Err(DataError::Checksum {
                path: path.to_path_buf(),
                dataset: dataset.to_string(),
                expected: expected.to_string(),
                found,
            });
        }
        file.sha256 = Some(found);
        file.verified = true;
    }
    Ok((bytes, file))
}

fn open_idx(name: &str, root: &Path) -> Result<Dataset> {
    let classes: Vec<String> = match name {
        "fashion-mnist" => FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        _ => (0..10).map(|d| d.to_string()).collect(),
    };
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for stem in IDX_STEMS {
        let path = idx_file(root, stem).ok_or_else(|| DataError::MissingFile {
            dir: root.to_path_buf(),
            file: format!("{stem}.gz (or {stem})"),
        })?;
        paths.push(path);
    }
    let mut splits = Vec::new();
    let mut shape: Option<ImageShape> = None;
    for pair in paths.chunks(2) {
        let (images_path, labels_path) = (&pair[0], &pair[1]);
        let stem = |p: &Path| {
            IDX_STEMS
                .iter()
                .find(|s| p.file_name().unwrap().to_string_lossy().starts_with(*s))
                .copied()
                .unwrap_or("")
        };
        let (image_bytes, image_file) = read_checked(name, images_path, stem(images_path))?;
        let images = idx::images_from(&image_bytes, images_path)?;
        drop(image_bytes);
        let (label_bytes, label_file) = read_checked(name, labels_path, stem(labels_path))?;
        let labels = idx::labels_from(&label_bytes, labels_path, classes.len())?;
        if labels.len() != images.records() {
            return Err(DataError::CountMismatch {
                images_path: images_path.clone(),
                images: images.records(),
                labels_path: labels_path.clone(),
                labels: labels.len(),
            });
        }
        let this_shape = ImageShape {
            channels: 1,
            height: images.dims[1],
            width: images.dims[2],
        };
        if let Some(expected) = shape {
            if expected != this_shape {
                return Err(DataError::ShapeMismatch {
                    path: images_path.clone(),
                    expected: expected.to_string(),
                    found: this_shape.to_string(),
                });
            }
        }
        shape = Some(this_shape);
        files.push(image_file);
        files.push(label_file);
        splits.push(Samples {
            storage: Storage::Dense {
                pixels: images.data,
                shape: this_shape,
            },
            labels,
        });
    }
    let test = Split::all(splits.pop().unwrap());
    let train = Split::all(splits.pop().unwrap());
    let shape = shape.unwrap();
    Ok(dense_dataset(
        name,
        root,
        Format::Idx,
        classes,
        shape,
        train,
        test,
        files,
        name != "mnist",
    ))
}

#[allow(clippy::too_many_arguments)]
fn dense_dataset(
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
fn dense_stats(split: &Split) -> ChannelStats {
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

fn open_cifar(name: &str, root: &Path, variant: Variant) -> Result<Dataset> {
    let dir = cifar_dir(root, variant).ok_or_else(|| DataError::MissingFile {
        dir: root.to_path_buf(),
        file: match variant {
            Variant::Cifar10 => "data_batch_1.bin".into(),
            Variant::Cifar100 => "train.bin".into(),
        },
    })?;
    let (train_files, test_file): (Vec<String>, &str) = match variant {
        Variant::Cifar10 => (
            (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            "test_batch.bin",
        ),
        Variant::Cifar100 => (vec!["train.bin".into()], "test.bin"),
    };
    let mut files = Vec::new();
    let mut read_all = |names: &[String]| -> Result<Samples> {
        let mut all = cifar::Records::default();
        for file in names {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(DataError::MissingFile {
                    dir: dir.clone(),
                    file: file.clone(),
                });
            }
            let records = cifar::read(&path, variant)?;
            all.labels.extend(records.labels);
            all.pixels.extend(records.pixels);
            files.push(SourceFile {
                path,
                sha256: None,
                verified: false,
            });
        }
        Ok(Samples {
            storage: Storage::Dense {
                pixels: all.pixels,
                shape: ImageShape {
                    channels: 3,
                    height: 32,
                    width: 32,
                },
            },
            labels: all.labels,
        })
    };
    let train = Split::all(read_all(&train_files)?);
    let test = Split::all(read_all(&[test_file.to_string()])?);
    let classes = match variant {
        Variant::Cifar10 => cifar::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Variant::Cifar100 => {
            let names = std::fs::read_to_string(dir.join("fine_label_names.txt")).ok();
            let listed: Vec<String> = names
                .iter()
                .flat_map(|t| t.lines())
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            if listed.len() == 100 {
                listed
            } else {
                (0..100).map(|i| format!("class {i}")).collect()
            }
        }
    };
    Ok(dense_dataset(
        name,
        root,
        match variant {
            Variant::Cifar10 => Format::Cifar10,
            Variant::Cifar100 => Format::Cifar100,
        },
        classes,
        ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        },
        train,
        test,
        files,
        true,
    ))
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
