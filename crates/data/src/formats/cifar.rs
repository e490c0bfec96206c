//! The binary versions of CIFAR-10 and CIFAR-100
//! (<https://www.cs.toronto.edu/~kriz/cifar.html>): fixed-size records of label byte(s)
//! followed by 3072 pixel bytes, the red, green and blue 32x32 planes in turn.

use std::path::{Path, PathBuf};

use crate::dataset::{
    dense_dataset, Dataset, Format, ImageShape, Samples, SourceFile, Split, Storage,
};
use crate::error::{DataError, Result};

pub const PIXELS: usize = 3 * 32 * 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// One label byte (0..10).
    Cifar10,
    /// A coarse label byte (0..20), then the fine label (0..100) used for classification.
    Cifar100,
}

impl Variant {
    pub fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }

    pub fn record_len(self) -> usize {
        self.label_bytes() + PIXELS
    }

    pub fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
}

/// Records of one file: labels and CHW pixels, one image after another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    pub labels: Vec<u32>,
    pub pixels: Vec<u8>,
}

/// Parses the records of one file; `path` only names it in errors. Never panics, whatever
/// the bytes (the fuzz target `cifar` checks that).
pub fn parse(bytes: &[u8], variant: Variant, path: &Path) -> Result<Records> {
    let record_len = variant.record_len();
    if bytes.is_empty() {
        return Err(DataError::header(path, "file is empty"));
    }
    let whole = bytes.len() / record_len;
    if !bytes.len().is_multiple_of(record_len) {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record: whole,
            expected: ((whole + 1) * record_len) as u64,
            found: bytes.len() as u64,
        });
    }
    let mut records = Records {
        labels: Vec::with_capacity(whole),
        pixels: Vec::with_capacity(whole * PIXELS),
    };
    for (record, chunk) in bytes.chunks_exact(record_len).enumerate() {
        if variant == Variant::Cifar100 && chunk[0] >= 20 {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                record,
                label: chunk[0] as u32,
                classes: 20,
            });
        }
        let label = chunk[variant.label_bytes() - 1] as u32;
        if label as usize >= variant.classes() {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                record,
                label,
                classes: variant.classes(),
            });
        }
        records.labels.push(label);
        records
            .pixels
            .extend_from_slice(&chunk[variant.label_bytes()..]);
    }
    Ok(records)
}

pub fn read(path: &Path, variant: Variant) -> Result<Records> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse(&bytes, variant, path)
}

/// Encodes records (for tests and fixtures). For CIFAR-100 the coarse label is written as
/// `fine / 5`, which is a valid coarse class.
pub fn encode(variant: Variant, labels: &[u32], pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * variant.record_len());
    for (label, image) in labels.iter().zip(pixels.chunks_exact(PIXELS)) {
        if variant == Variant::Cifar100 {
            out.push((*label / 5) as u8);
        }
        out.push(*label as u8);
        out.extend_from_slice(image);
    }
    out
}

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar100_uses_the_fine_label() {
        let pixels = vec![3u8; 2 * PIXELS];
        let bytes = encode(Variant::Cifar100, &[42, 99], &pixels);
        let records = parse(&bytes, Variant::Cifar100, Path::new("f")).unwrap();
        assert_eq!(records.labels, vec![42, 99]);
        assert_eq!(records.pixels, pixels);
    }

    #[test]
    fn bad_label_names_the_record() {
        let mut bytes = encode(Variant::Cifar10, &[1, 2, 3], &vec![0u8; 3 * PIXELS]);
        bytes[2 * Variant::Cifar10.record_len()] = 10;
        match parse(&bytes, Variant::Cifar10, Path::new("f")).unwrap_err() {
            DataError::LabelOutOfRange { record, label, .. } => {
                assert_eq!((record, label), (2, 10))
            }
            e => panic!("{e}"),
        }
    }
}

pub(crate) fn cifar_dir(dir: &Path, variant: Variant) -> Option<PathBuf> {
    let (sub, probe) = match variant {
        Variant::Cifar10 => ("cifar-10-batches-bin", "data_batch_1.bin"),
        Variant::Cifar100 => ("cifar-100-binary", "train.bin"),
    };
    [dir.to_path_buf(), dir.join(sub)]
        .into_iter()
        .find(|d| d.join(probe).is_file())
}

pub(crate) fn open_cifar(name: &str, root: &Path, variant: Variant) -> Result<Dataset> {
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
        let mut all = Records::default();
        for file in names {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(DataError::MissingFile {
                    dir: dir.clone(),
                    file: file.clone(),
                });
            }
            let records = read(&path, variant)?;
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
        Variant::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
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
