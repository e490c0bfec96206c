//! A small learnable dataset in MNIST's file layout, for tests and demonstrations of the
//! training pipeline: class k is a bright block at a place of its own on a noisy 16x16
//! background, so a small network learns it in a few epochs.

use std::path::Path;

use crate::idx;

const SIDE: usize = 16;

/// Writes `train-*` and `t10k-*` IDX files (uncompressed) with `train` and `test` images.
pub fn write_squares(dir: &Path, train: usize, test: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = vec![0u8; n * SIDE * SIDE];
        let mut labels = Vec::with_capacity(n);
        for (i, image) in images.chunks_exact_mut(SIDE * SIDE).enumerate() {
            let class = (i * 7 + 3) % 10;
            labels.push(class as u8);
            for (k, p) in image.iter_mut().enumerate() {
                *p = ((i * 131 + k * 29) % 97) as u8;
            }
            let (row, col) = (2 + (class / 5) * 7, 1 + (class % 5) * 3);
            for y in row..row + 4 {
                image[y * SIDE + col..y * SIDE + col + 3].fill(255);
            }
        }
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx::encode(&[n, SIDE, SIDE], &images),
        )?;
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx::encode(&[n], &labels),
        )?;
    }
    Ok(())
}
