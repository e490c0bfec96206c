//! cardinal-font: DejaVu Sans (its licence is in `assets/fonts/`), embedded once, so that
//! figures and image grids draw text on any machine without a system font, and the binary
//! carries one copy of it.

/// The TrueType bytes of DejaVu Sans.
pub static DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

#[cfg(test)]
mod tests {
    #[test]
    fn is_a_truetype_font() {
        // The TrueType version tag, and more than a header's worth of glyphs.
        assert_eq!(&super::DEJAVU_SANS[..4], &[0, 1, 0, 0]);
        assert!(super::DEJAVU_SANS.len() > 100_000);
    }
}
