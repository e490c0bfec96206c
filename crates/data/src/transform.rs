//! From stored pixels to the network's input: augmentation (zero-pad + random crop and
//! horizontal flip for IDX and CIFAR; random-resized crop and flip for image folders) then
//! per-channel normalization. The random draws of a sample depend only on (seed, epoch,
//! sample index), so any batch of any epoch can be rebuilt exactly, in any order, on any
//! thread: a resumed run sees the images an uninterrupted one would have seen.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::AugmentConfig;
use crate::dataset::{Dataset, ImageShape, Split, Storage};
use crate::error::{DataError, Result};

/// The generator of one sample's augmentation.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    ChaCha8Rng::seed_from_u64(splitmix(splitmix(splitmix(seed) ^ epoch) ^ index))
}

/// What happens to the images of one split.
#[derive(Debug, Clone)]
pub struct Transform {
    /// Output shape (CHW).
    pub shape: ImageShape,
    pub augment: bool,
    /// Zero padding of the random crop (dense images).
    pub padding: usize,
    pub hflip: bool,
    pub min_scale: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Image folders: shorter side before the evaluation center crop.
    pub resize: usize,
    /// Normalized value of each byte per channel: normalization is one table lookup.
    lut: Vec<[f32; 256]>,
}

impl Transform {
    /// The training transform (augmented unless `augment.enabled` is false).
    pub fn train(dataset: &Dataset, augment: &AugmentConfig) -> Transform {
        let mut t = Self::eval(dataset);
        t.augment = augment.enabled;
        t.padding = augment.padding.unwrap_or(dataset.default_padding);
        t.hflip = augment.hflip.unwrap_or(dataset.default_hflip);
        t.min_scale = augment.min_scale;
        t
    }

    /// Evaluation: normalization only (plus resize and center crop for image folders).
    pub fn eval(dataset: &Dataset) -> Transform {
        let mean = dataset.stats.mean.clone();
        // A constant channel (std 0) is left unscaled rather than divided by zero.
        let std: Vec<f64> = dataset
            .stats
            .std
            .iter()
            .map(|&s| if s > 0.0 { s } else { 1.0 })
            .collect();
        let lut = mean
            .iter()
            .zip(&std)
            .map(|(&m, &s)| {
                let mut table = [0f32; 256];
                for (v, out) in table.iter_mut().enumerate() {
                    *out = ((v as f64 / 255.0 - m) / s) as f32;
                }
                table
            })
            .collect();
        Transform {
            shape: dataset.shape,
            augment: false,
            padding: 0,
            hflip: false,
            min_scale: 1.0,
            mean,
            std,
            resize: dataset.resize,
            lut,
        }
    }

    /// Writes the transformed image of `position` in `split` into `out` (CHW, normalized).
    pub fn apply(
        &self,
        split: &Split,
        position: usize,
        seed: u64,
        epoch: u64,
        out: &mut [f32],
    ) -> Result<()> {
        let index = split.sample_index(position);
        let mut rng = sample_rng(seed, epoch, index as u64);
        match &split.samples.storage {
            Storage::Dense { shape, .. } => {
                let image = split.samples.dense_image(index as usize).unwrap();
                self.dense(image, *shape, &mut rng, out);
                Ok(())
            }
            Storage::Files { paths } => {
                let image = decode_rgb(&paths[index as usize])?;
                self.files(&image, &mut rng, out);
                Ok(())
            }
        }
    }

    fn dense(&self, image: &[u8], shape: ImageShape, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        let (h, w) = (shape.height, shape.width);
        let pad = self.padding as isize;
        let (dy, dx, flip) = if self.augment {
            (
                rng.random_range(0..=2 * pad as i64) as isize - pad,
                rng.random_range(0..=2 * pad as i64) as isize - pad,
                self.hflip && rng.random_bool(0.5),
            )
        } else {
            (0, 0, false)
        };
        for c in 0..shape.channels {
            let lut = &self.lut[c];
            let plane = &image[c * h * w..(c + 1) * h * w];
            let out_plane = &mut out[c * h * w..(c + 1) * h * w];
            for oy in 0..h {
                let row_out = &mut out_plane[oy * w..(oy + 1) * w];
                let sy = oy as isize + dy;
                if sy < 0 || sy >= h as isize {
                    row_out.fill(lut[0]);
                    continue;
                }
                let row = &plane[sy as usize * w..(sy as usize + 1) * w];
                for (ox, o) in row_out.iter_mut().enumerate() {
                    // The crop is taken first, then flipped (torchvision's order).
                    let cx = if flip { w - 1 - ox } else { ox } as isize;
                    let sx = cx + dx;
                    *o = if sx < 0 || sx >= w as isize {
                        lut[0]
                    } else {
                        lut[row[sx as usize] as usize]
                    };
                }
            }
        }
    }

    fn files(&self, image: &RgbImage, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        let size = self.shape.height;
        let mut cropped = if self.augment {
            random_resized_crop(image, rng, size, self.min_scale)
        } else {
            eval_crop(image, self.resize, size)
        };
        if self.augment && self.hflip && rng.random_bool(0.5) {
            image::imageops::flip_horizontal_in_place(&mut cropped);
        }
        let plane = size * size;
        for (i, pixel) in cropped.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = self.lut[c][pixel[c] as usize];
            }
        }
    }

    /// Maps a normalized value back to a byte (for looking at what the network sees).
    pub fn denormalize(&self, channel: usize, value: f32) -> u8 {
        let v = (value as f64 * self.std[channel] + self.mean[channel]) * 255.0;
        v.round().clamp(0.0, 255.0) as u8
    }
}

pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    reader
        .decode()
        .map(|i| i.to_rgb8())
        .map_err(|e| DataError::UnreadableImage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Resize so the shorter side is `resize`, then take the central `size` x `size` square.
pub fn eval_crop(image: &RgbImage, resize: usize, size: usize) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = resize as f64 / w.min(h) as f64;
    let nw = ((w as f64 * scale).round() as u32).max(size as u32);
    let nh = ((h as f64 * scale).round() as u32).max(size as u32);
    let resized = image::imageops::resize(image, nw, nh, FilterType::Triangle);
    let x = (nw - size as u32) / 2;
    let y = (nh - size as u32) / 2;
    image::imageops::crop_imm(&resized, x, y, size as u32, size as u32).to_image()
}

/// torchvision's RandomResizedCrop: a crop of random area share in [min_scale, 1] and
/// aspect ratio in [3/4, 4/3] (log-uniform), ten tries, then the central crop.
pub fn random_resized_crop(
    image: &RgbImage,
    rng: &mut ChaCha8Rng,
    size: usize,
    min_scale: f64,
) -> RgbImage {
    let (w, h) = image.dimensions();
    let area = (w * h) as f64;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut chosen = None;
    for _ in 0..10 {
        let target = area * rng.random_range(min_scale..=1.0);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            chosen = Some((x, y, cw, ch));
            break;
        }
    }
    let (x, y, cw, ch) = chosen.unwrap_or_else(|| {
        let side = w.min(h);
        ((w - side) / 2, (h - side) / 2, side, side)
    });
    let crop = image::imageops::crop_imm(image, x, y, cw, ch).to_image();
    image::imageops::resize(&crop, size as u32, size as u32, FilterType::Triangle)
}
