//! Image folders: one sub-folder per class holding JPEG or PNG files, either directly under
//! the root (a test split is then carved per class) or under `train/` and `test/` (or
//! `val/`), as torchvision's `ImageFolder` and the flower-photos archive lay them out.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::DataConfig;
use crate::dataset::{files_dataset, ChannelStats, Dataset};
use crate::error::{DataError, Result};
use crate::transform;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// At most this many training images are decoded to measure the channel statistics: enough
/// for three significant digits, and opening a large folder stays quick.
pub const STATS_SAMPLE: usize = 256;

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sub_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if path.is_dir() && !hidden {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// A directory with at least one sub-folder counts as an image folder for lookup; its
/// contents are checked when it is opened.
pub fn looks_like_folder(dir: &Path) -> bool {
    sub_dirs(dir).is_ok_and(|d| !d.is_empty())
}

type Listing = (Vec<String>, Vec<PathBuf>, Vec<u32>);
/// Image files and their labels.
type Labelled = (Vec<PathBuf>, Vec<u32>);

/// Classes (sorted folder names) and their images (sorted by path within a class).
fn list(dir: &Path) -> Result<Listing> {
    let class_dirs = sub_dirs(dir)?;
    if class_dirs.is_empty() {
        return Err(DataError::NoClasses {
            path: dir.to_path_buf(),
        });
    }
    let mut classes = Vec::new();
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (label, class_dir) in class_dirs.iter().enumerate() {
        let mut images = Vec::new();
        for entry in std::fs::read_dir(class_dir).map_err(|e| DataError::io(class_dir, e))? {
            let path = entry.map_err(|e| DataError::io(class_dir, e))?.path();
            if path.is_file() && is_image(&path) {
                images.push(path);
            }
        }
        if images.is_empty() {
            return Err(DataError::EmptyClassFolder {
                path: class_dir.clone(),
            });
        }
        images.sort();
        labels.extend(std::iter::repeat_n(label as u32, images.len()));
        paths.extend(images);
        classes.push(
            class_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok((classes, paths, labels))
}

/// Reads each file's header so that a damaged image is reported when the dataset is
/// opened, naming the file, rather than in the middle of an epoch.
fn check_headers(paths: &[PathBuf]) -> Result<()> {
    paths.par_iter().try_for_each(|path| {
        image::ImageReader::open(path)
            .map_err(|e| DataError::io(path, e))?
            .with_guessed_format()
            .map_err(|e| DataError::io(path, e))?
            .into_dimensions()
            .map(|_| ())
            .map_err(|e| DataError::UnreadableImage {
                path: path.clone(),
                reason: e.to_string(),
            })
    })
}

pub fn open(root: &Path, config: &DataConfig) -> Result<Dataset> {
    let image_size = config.image_size.unwrap_or(224);
    let resize = config
        .resize
        .unwrap_or((image_size * 256).div_ceil(224).max(image_size));
    let train_dir = root.join("train");
    let test_dir = ["test", "val"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir());
    let (classes, train, test) = match (train_dir.is_dir(), test_dir) {
        (true, Some(test_dir)) => {
            let (classes, train_paths, train_labels) = list(&train_dir)?;
            let (test_classes, test_paths, test_labels) = list(&test_dir)?;
            if test_classes != classes {
                return Err(DataError::ClassesDiffer {
                    path: test_dir,
                    split: "test".into(),
                    expected: classes,
                    found: test_classes,
                });
            }
            (
                classes,
                (train_paths, train_labels),
                (test_paths, test_labels),
            )
        }
        (has_train, _) => {
            let dir = if has_train {
                train_dir
            } else {
                root.to_path_buf()
            };
            let (classes, paths, labels) = list(&dir)?;
            let (train, test) =
                carve_test(paths, labels, config.test_fraction, config.validation_seed);
            (classes, train, test)
        }
    };
    check_headers(&train.0)?;
    check_headers(&test.0)?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| root.display().to_string());
    let mut dataset = files_dataset(name, root, classes, train, test, image_size, resize);
    dataset.stats = sample_stats(&dataset)?;
    Ok(dataset)
}

/// Holds out `fraction` of each class (at least one image when the fraction is positive and
/// the class has two or more), drawn with `seed`.
fn carve_test(
    paths: Vec<PathBuf>,
    labels: Vec<u32>,
    fraction: f64,
    seed: u64,
) -> (Labelled, Labelled) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut train = (Vec::new(), Vec::new());
    let mut test = (Vec::new(), Vec::new());
    for class in 0..classes as u32 {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        let mut held = (members.len() as f64 * fraction).round() as usize;
        if fraction > 0.0 && held == 0 && members.len() >= 2 {
            held = 1;
        }
        let (test_members, train_members) = members.split_at(held);
        let mut test_members = test_members.to_vec();
        let mut train_members = train_members.to_vec();
        test_members.sort_unstable();
        train_members.sort_unstable();
        for i in train_members {
            train.0.push(paths[i].clone());
            train.1.push(class);
        }
        for i in test_members {
            test.0.push(paths[i].clone());
            test.1.push(class);
        }
    }
    (train, test)
}

/// Mean and std per channel of up to `STATS_SAMPLE` training images (a seeded sample),
/// after the evaluation resize and crop.
fn sample_stats(dataset: &Dataset) -> Result<ChannelStats> {
    let mut positions: Vec<usize> = (0..dataset.train.len()).collect();
    positions.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
    positions.truncate(STATS_SAMPLE);
    let sums = positions
        .par_iter()
        .map(|&p| {
            let path = dataset.train.path(p).expect("image folder");
            let image = transform::eval_crop(
                &transform::decode_rgb(path)?,
                dataset.resize,
                dataset.image_size,
            );
            let mut sum = [0f64; 6];
            for pixel in image.pixels() {
                for c in 0..3 {
                    let v = pixel[c] as f64 / 255.0;
                    sum[c] += v;
                    sum[3 + c] += v * v;
                }
            }
            Ok(sum)
        })
        .collect::<Result<Vec<_>>>()?;
    let n = (positions.len() * dataset.image_size * dataset.image_size) as f64;
    let mut mean = vec![0.0; 3];
    let mut std = vec![0.0; 3];
    for c in 0..3 {
        let s: f64 = sums.iter().map(|v| v[c]).sum();
        let q: f64 = sums.iter().map(|v| v[3 + c]).sum();
        mean[c] = s / n;
        std[c] = (q / n - mean[c] * mean[c]).max(0.0).sqrt();
    }
    Ok(ChannelStats {
        mean,
        std,
        images: positions.len(),
    })
}
