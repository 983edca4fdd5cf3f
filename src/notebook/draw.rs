//! Minimal raster drawing for the chart views: lines, rectangles and a 3×5
//! bitmap font (digits, a few capitals and punctuation), drawn straight onto
//! an [`RgbImage`]. Plotting crates need system fonts for any text; this keeps
//! the charts reproducible offline and the `:dep` build small.
//!
//! All functions clip to the image, so no coordinate can panic.

use image::{Rgb, RgbImage};

pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub const GREY: Rgb<u8> = Rgb([200, 200, 200]);
pub const DARK_GREY: Rgb<u8> = Rgb([90, 90, 90]);
/// Train series colour (matplotlib's C0).
pub const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
/// Validation series colour (matplotlib's C1).
pub const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);

/// Sets a pixel if it is inside the image.
pub fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u64) < u64::from(img.width()) && (y as u64) < u64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Filled rectangle `[x, x+w) × [y, y+h)`.
pub fn rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, xx, yy, c);
        }
    }
}

/// A line `width` pixels thick (Bresenham, with a square pen).
pub fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), width: i64, c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    let half = width / 2;
    loop {
        rect(img, x - half, y - half, width.max(1), width.max(1), c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A vertical dashed line.
pub fn dashed_vline(img: &mut RgbImage, x: i64, y0: i64, y1: i64, c: Rgb<u8>) {
    for y in (y0..=y1).filter(|y| (y - y0) % 6 < 3) {
        put(img, x, y, c);
    }
}

/// Rows of a 3×5 glyph, top to bottom, 3 bits each (bit 2 = left column).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '(' => [0b010, 0b100, 0b100, 0b100, 0b010],
        ')' => [0b010, 0b001, 0b001, 0b001, 0b010],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'K' => [0b101, 0b110, 0b100, 0b110, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        // Anything else (lower-case letters are upper-cased above) is blank.
        _ => [0; 5],
    }
}

/// Width in pixels of `text` at `scale` (glyph 3 wide + 1 space).
pub fn text_width(text: &str, scale: i64) -> i64 {
    (text.chars().count() as i64 * 4 - 1).max(0) * scale
}

/// Height in pixels of one line at `scale`.
pub fn text_height(scale: i64) -> i64 {
    5 * scale
}

/// Draws `text` with its top-left corner at `(x, y)`.
pub fn text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, c: Rgb<u8>) {
    for (k, ch) in text.chars().enumerate() {
        let gx = x + k as i64 * 4 * scale;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    rect(img, gx + col * scale, y + row as i64 * scale, scale, scale, c);
                }
            }
        }
    }
}

/// A number for an axis tick: as few decimals as `step` needs.
pub fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil().clamp(0.0, 6.0) as usize };
    format!("{v:.decimals$}")
}

/// "Nice" tick positions covering `[lo, hi]` (1, 2 or 5 × 10^k apart), about `n` of them.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> (f64, f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && hi > lo { (lo, hi) } else { (0.0, lo.max(0.0) + 1.0) };
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_draws_inside_its_box_and_clips() {
        let mut img = RgbImage::from_pixel(20, 10, Rgb([255, 255, 255]));
        text(&mut img, 1, 1, "10", 1, BLACK);
        // '1' has its top-middle pixel set, '0' its top-left.
        assert_eq!(img.get_pixel(2, 1), &BLACK);
        assert_eq!(img.get_pixel(5, 1), &BLACK);
        assert_eq!(img.get_pixel(1, 1), &Rgb([255, 255, 255]));
        assert_eq!(text_width("10", 1), 7);
        // Far outside: no panic.
        text(&mut img, -100, 500, "123", 3, BLACK);
        line(&mut img, (-5, -5), (100, 100), 3, BLACK);
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(nice_ticks(0.0, 1.0, 5), (0.0, 1.0, 0.2));
        let (lo, hi, step) = nice_ticks(0.31, 2.27, 4);
        assert_eq!((lo, hi, step), (0.0, 2.5, 0.5));
        assert_eq!(tick_label(0.5, 0.5), "0.5");
        assert_eq!(tick_label(2.0, 1.0), "2");
        // Degenerate ranges still give a usable axis.
        let (lo, hi, step) = nice_ticks(3.0, 3.0, 4);
        assert!(lo <= 3.0 && hi > lo && step > 0.0);
    }
}
