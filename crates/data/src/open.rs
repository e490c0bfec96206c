//! Opening a dataset by name: the datasets cardinal knows, where each is looked for, and
//! image folders for any other name.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::DataConfig;
use crate::dataset::{Dataset, Format};
use crate::error::{DataError, Result};
use crate::formats::cifar::{cifar_dir, open_cifar, Variant};
use crate::formats::folder;
use crate::formats::idx::{idx_file, open_idx, IDX_STEMS};
use crate::locate::Locator;

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

pub fn known(name: &str) -> Option<&'static Known> {
    let lower = name.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|k| k.name == lower || k.aliases.contains(&lower.as_str()))
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
