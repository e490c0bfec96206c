//! Fixtures the tests write: small IDX, CIFAR and image-folder datasets.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use cardinal_data::{cifar, idx};

/// Pixel value of image `i` at byte `k`: distinct across images and positions.
pub fn pixel(i: usize, k: usize) -> u8 {
    ((i * 31 + k * 7) % 251) as u8
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An MNIST-layout dataset: `train` and `test` images of `side` x `side`, labels i % 10.
/// Train files gzipped, test files raw (both are accepted).
pub fn write_idx(dir: &Path, train: usize, test: usize, side: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n, zipped) in [("train", train, true), ("t10k", test, false)] {
        let images: Vec<u8> = (0..n)
            .flat_map(|i| (0..side * side).map(move |k| pixel(i, k)))
            .collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let image_bytes = idx::encode(&[n, side, side], &images);
        let label_bytes = idx::encode(&[n], &labels);
        let (image_bytes, label_bytes, ext) = if zipped {
            (gzip(&image_bytes), gzip(&label_bytes), ".gz")
        } else {
            (image_bytes, label_bytes, "")
        };
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte{ext}")),
            image_bytes,
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")),
            label_bytes,
        )
        .unwrap();
    }
}

/// A CIFAR-10 binary layout: five training batches of `per_batch` records and a test
/// batch; labels i % 10.
pub fn write_cifar10(dir: &Path, per_batch: usize) {
    let sub = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&sub).unwrap();
    let records = |offset: usize, n: usize| {
        let labels: Vec<u32> = (offset..offset + n).map(|i| (i % 10) as u32).collect();
        let pixels: Vec<u8> = (offset..offset + n)
            .flat_map(|i| (0..cifar::PIXELS).map(move |k| pixel(i, k)))
            .collect();
        cifar::encode(cifar::Variant::Cifar10, &labels, &pixels)
    };
    for b in 0..5 {
        std::fs::write(
            sub.join(format!("data_batch_{}.bin", b + 1)),
            records(b * per_batch, per_batch),
        )
        .unwrap();
    }
    std::fs::write(sub.join("test_batch.bin"), records(0, per_batch)).unwrap();
}

/// An image folder: `classes` sub-folders of `per_class` PNGs of `width` x `height`,
/// coloured by class so a test can tell them apart.
pub fn write_folder(dir: &Path, classes: &[&str], per_class: usize, width: u32, height: u32) {
    for (c, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..per_class {
            let image = image::RgbImage::from_fn(width, height, |x, y| {
                image::Rgb([(40 * c) as u8, (x * 3 + i as u32) as u8, (y * 5) as u8])
            });
            image
                .save(class_dir.join(format!("img_{i:03}.png")))
                .unwrap();
        }
    }
}
