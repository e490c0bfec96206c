//! The IDX format of MNIST and Fashion-MNIST (<http://yann.lecun.com/exdb/mnist/>): two zero
//! bytes, a type byte, the number of dimensions, then each dimension as a big-endian u32,
//! then the data in row-major order. Only unsigned bytes (type 0x08) hold images and labels.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use sha2::{Digest, Sha256};

use crate::dataset::{
    dense_dataset, Dataset, Format, ImageShape, Samples, SourceFile, Split, Storage,
};
use crate::error::{DataError, Result};

/// A parsed IDX file: its dimensions and its bytes (row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

impl Idx {
    /// Number of records (the first dimension).
    pub fn records(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }
}

const UNSIGNED_BYTE: u8 = 0x08;

fn type_name(code: u8) -> &'static str {
    match code {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown",
    }
}

/// Reads a whole file, decompressing it when it starts with the gzip magic (whatever its
/// name), because mirrors ship both `*-ubyte` and `*-ubyte.gz`.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 2);
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                cause: source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `path` only names the file in errors. Never panics, whatever the bytes
/// (the fuzz target `idx` checks that).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx> {
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record: 0,
            expected: 4,
            found: bytes.len() as u64,
        });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::header(
            path,
            format!(
                "wrong magic number 0x{:02x}{:02x}{:02x}{:02x}: an IDX file starts with two zero bytes (0x00000801 labels, 0x00000803 images)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let type_code = bytes[2];
    if type_code != UNSIGNED_BYTE {
        return Err(DataError::header(
            path,
            format!(
                "IDX data type 0x{type_code:02x} ({}) is not supported; images and labels are unsigned bytes (0x08)",
                type_name(type_code)
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(DataError::header(path, "IDX header declares 0 dimensions"));
    }
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record: 0,
            expected: header_len as u64,
            found: bytes.len() as u64,
        });
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let record_len = dims[1..]
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| DataError::header(path, format!("dimensions {dims:?} overflow")))?;
    let data_len = record_len
        .checked_mul(dims[0] as u64)
        .ok_or_else(|| DataError::header(path, format!("dimensions {dims:?} overflow")))?;
    let found = (bytes.len() - header_len) as u64;
    if found < data_len {
        // The first record that is not complete.
        let record = found.checked_div(record_len).unwrap_or(0) as usize;
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            record,
            expected: header_len as u64 + data_len,
            found: bytes.len() as u64,
        });
    }
    if found > data_len {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            records: dims[0],
            extra: found - data_len,
        });
    }
    Ok(Idx {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Parses an image file: 3 dimensions (count, rows, columns), at least one pixel.
pub fn images_from(bytes: &[u8], path: &Path) -> Result<Idx> {
    let idx = parse(bytes, path)?;
    if idx.dims.len() != 3 {
        return Err(DataError::header(
            path,
            format!(
                "an image file has 3 dimensions (count, rows, columns), this one has {:?}",
                idx.dims
            ),
        ));
    }
    if idx.dims.contains(&0) {
        return Err(DataError::header(
            path,
            format!("holds no image data (dimensions {:?})", idx.dims),
        ));
    }
    Ok(idx)
}

/// Parses a label file (1 dimension) and checks every label against the class count.
pub fn labels_from(bytes: &[u8], path: &Path, classes: usize) -> Result<Vec<u32>> {
    let idx = parse(bytes, path)?;
    if idx.dims.len() != 1 {
        return Err(DataError::header(
            path,
            format!(
                "a label file has 1 dimension (count), this one has {:?}",
                idx.dims
            ),
        ));
    }
    check_labels(path, idx.data.iter().map(|&l| l as u32), classes)
}

pub(crate) fn check_labels(
    path: &Path,
    labels: impl Iterator<Item = u32>,
    classes: usize,
) -> Result<Vec<u32>> {
    labels
        .enumerate()
        .map(|(record, label)| {
            if (label as usize) < classes {
                Ok(label)
            } else {
                Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    record,
                    label,
                    classes,
                })
            }
        })
        .collect()
}

/// Writes IDX bytes for unsigned-byte data: used by the tests and fixtures.
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, UNSIGNED_BYTE, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..2 * 3 * 4).map(|v| v as u8).collect();
        let idx = parse(&encode(&[2, 3, 4], &data), Path::new("x")).unwrap();
        assert_eq!(idx.dims, vec![2, 3, 4]);
        assert_eq!(idx.data, data);
    }

    #[test]
    fn truncation_names_the_record() {
        let data = vec![7u8; 5 * 4];
        let mut bytes = encode(&[5, 2, 2], &data);
        bytes.truncate(bytes.len() - 6); // records 0..3 whole, record 3 cut
        match parse(&bytes, Path::new("f")).unwrap_err() {
            DataError::Truncated { record, .. } => assert_eq!(record, 3),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn huge_dimensions_do_not_overflow() {
        let mut bytes = vec![0, 0, 8, 4];
        for _ in 0..4 {
            bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        assert!(parse(&bytes, Path::new("f")).is_err());
    }

    #[test]
    fn zero_dimension_with_huge_others_parses_as_empty() {
        // Found by the fuzzer: the product of the other dimensions overflows u64 in any
        // order that multiplies the zero last.
        let bytes = b"\x00\x00\x08\x04\x00\x00\x08\x03\x00eeeeeee\x00\x00\x00\x00";
        let idx = parse(bytes, Path::new("f")).unwrap();
        assert_eq!(idx.dims, vec![0x803, 0x656565, 0x65656565, 0]);
        assert!(idx.data.is_empty());
    }
}

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

pub(crate) const IDX_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// `dir/stem.gz` if present, else `dir/stem`.
pub(crate) fn idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
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
    let bytes = read_maybe_gzip(path)?;
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

pub(crate) fn open_idx(name: &str, root: &Path) -> Result<Dataset> {
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
        let images = images_from(&image_bytes, images_path)?;
        drop(image_bytes);
        let (label_bytes, label_file) = read_checked(name, labels_path, stem(labels_path))?;
        let labels = labels_from(&label_bytes, labels_path, classes.len())?;
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
