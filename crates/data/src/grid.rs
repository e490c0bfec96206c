//! A labelled grid of samples, as the network receives them, so a user can look at the data.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::dataset::{Dataset, Split};
use crate::error::{DataError, Result};
use crate::transform::Transform;

/// DejaVu Sans, embedded so that every machine renders the same labels without fonts
/// installed (licence in `assets/fonts/LICENSE-DejaVu.txt`).
pub static FONT: &[u8] = cardinal_font::DEJAVU_SANS;

const LABEL_HEIGHT: u32 = 16;
const GAP: u32 = 4;
/// Small images are enlarged (nearest neighbour, so pixels stay visible) to at least this.
const MIN_TILE: u32 = 84;

pub struct GridOptions {
    pub count: usize,
    pub columns: usize,
    pub seed: u64,
    pub epoch: u64,
}

/// Renders the first `count` samples of `split` (their positions in a permutation seeded by
/// `seed`, so classes mix) through `transform`.
pub fn render(
    dataset: &Dataset,
    split: &Split,
    transform: &Transform,
    options: &GridOptions,
) -> Result<RgbImage> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut positions: Vec<usize> = (0..split.len()).collect();
    positions.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(options.seed));
    positions.truncate(options.count.max(1));

    let shape = transform.shape;
    let side = shape.height.max(shape.width) as u32;
    let zoom = MIN_TILE.div_ceil(side).max(1);
    let (tile_w, tile_h) = (shape.width as u32 * zoom, shape.height as u32 * zoom);
    let columns = options.columns.clamp(1, positions.len()) as u32;
    let rows = (positions.len() as u32).div_ceil(columns);
    let cell_w = tile_w.max(90) + GAP;
    let cell_h = tile_h + LABEL_HEIGHT + GAP;
    let mut canvas = RgbImage::from_pixel(
        columns * cell_w + GAP,
        rows * cell_h + GAP,
        Rgb([255, 255, 255]),
    );
    let font = FontRef::try_from_slice(FONT).map_err(|e| DataError::Image(e.to_string()))?;
    let mut buffer = vec![0f32; shape.len()];
    let plane = shape.height * shape.width;
    for (k, &position) in positions.iter().enumerate() {
        transform.apply(split, position, options.seed, options.epoch, &mut buffer)?;
        let (col, row) = (k as u32 % columns, k as u32 / columns);
        let x0 = GAP + col * cell_w + (cell_w - GAP - tile_w) / 2;
        let y0 = GAP + row * cell_h;
        for y in 0..tile_h {
            for x in 0..tile_w {
                let i = (y / zoom) as usize * shape.width + (x / zoom) as usize;
                let value = |c: usize| transform.denormalize(c, buffer[c * plane + i]);
                let rgb = if shape.channels == 1 {
                    let v = value(0);
                    [v, v, v]
                } else {
                    [value(0), value(1), value(2)]
                };
                canvas.put_pixel(x0 + x, y0 + y, Rgb(rgb));
            }
        }
        let label = &dataset.classes[split.label(position) as usize];
        let text_x = GAP + col * cell_w;
        draw_text(
            &mut canvas,
            &font,
            label,
            text_x,
            y0 + tile_h + 2,
            cell_w - GAP,
            12.0,
        );
    }
    Ok(canvas)
}

/// Draws `text` centred in a box of width `width`, shrunk to fit.
fn draw_text(
    canvas: &mut RgbImage,
    font: &FontRef,
    text: &str,
    x: u32,
    y: u32,
    width: u32,
    size: f32,
) {
    let measure = |scale: PxScale| -> f32 {
        let scaled = font.as_scaled(scale);
        text.chars()
            .map(|c| scaled.h_advance(font.glyph_id(c)))
            .sum()
    };
    let mut scale = PxScale::from(size);
    let mut text_width = measure(scale);
    if text_width > width as f32 {
        scale = PxScale::from(size * width as f32 / text_width);
        text_width = measure(scale);
    }
    let scaled = font.as_scaled(scale);
    let mut caret = x as f32 + (width as f32 - text_width) / 2.0;
    let baseline = y as f32 + scaled.ascent();
    for c in text.chars() {
        let id = font.glyph_id(c);
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, baseline));
        caret += scaled.h_advance(id);
        if let Some(outline) = font.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i64 + gx as i64;
                let py = bounds.min.y as i64 + gy as i64;
                if px >= 0
                    && py >= 0
                    && (px as u32) < canvas.width()
                    && (py as u32) < canvas.height()
                {
                    let pixel = canvas.get_pixel_mut(px as u32, py as u32);
                    for channel in pixel.0.iter_mut() {
                        let ink = 0.0;
                        *channel = (*channel as f32 * (1.0 - coverage) + ink * coverage) as u8;
                    }
                }
            });
        }
    }
}

/// Writes the grid as PNG, naming the file on failure.
pub fn save_png(image: &RgbImage, path: &std::path::Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Image(format!("{}: {e}", path.display())))
}
