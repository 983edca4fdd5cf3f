//! Minimal raster drawing for every picture tlab makes (views, Grad-CAM): lines, rectangles and text
//! in an embedded font (DejaVu Sans through `ab_glyph`), drawn straight onto
//! an [`RgbImage`]. Plotting crates need system fonts for any text; this keeps
//! the charts reproducible offline and the `:dep` build small.
//!
//! All functions clip to the image, so no coordinate can panic.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

pub const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
pub(crate) const GREY: Rgb<u8> = Rgb([200, 200, 200]);
pub(crate) const DARK_GREY: Rgb<u8> = Rgb([90, 90, 90]);
/// Train series colour (matplotlib's C0).
pub(crate) const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
/// Validation series colour (matplotlib's C1).
pub(crate) const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);

/// Sets a pixel if it is inside the image.
pub fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u64) < u64::from(img.width()) && (y as u64) < u64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

/// Filled rectangle `[x, x+w) × [y, y+h)`.
pub(crate) fn rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
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
pub(crate) fn dashed_vline(img: &mut RgbImage, x: i64, y0: i64, y1: i64, c: Rgb<u8>) {
    for y in (y0..=y1).filter(|y| (y - y0) % 6 < 3) {
        put(img, x, y, c);
    }
}

/// A horizontal dashed line.
pub(crate) fn dashed_hline(img: &mut RgbImage, y: i64, x0: i64, x1: i64, c: Rgb<u8>) {
    for x in (x0..=x1).filter(|x| (x - x0) % 8 < 5) {
        put(img, x, y, c);
        put(img, x, y + 1, c);
    }
}

/// DejaVu Sans (Bitstream Vera licence; see assets/fonts/NOTICE.md),
/// embedded so pictures look the same on every machine, offline.
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok()).as_ref()
}

/// The font size in pixels for a text `scale`: 1 small print (9 px), 2
/// labels (13.5 px), 3 titles (18 px).
fn px(scale: i64) -> PxScale {
    PxScale::from(4.5 + scale.max(1) as f32 * 4.5)
}

/// Width in pixels of `text` at `scale`.
pub(crate) fn text_width(text: &str, scale: i64) -> i64 {
    let Some(font) = font() else { return 0 };
    let f = font.as_scaled(px(scale));
    let mut width = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = previous {
            width += f.kern(p, id);
        }
        width += f.h_advance(id);
        previous = Some(id);
    }
    width.ceil() as i64
}

/// Height in pixels of one line at `scale` (ascent to descent).
pub(crate) fn text_height(scale: i64) -> i64 {
    font().map_or(0, |font| {
        let f = font.as_scaled(px(scale));
        (f.ascent() - f.descent()).ceil() as i64
    })
}

/// Draws `text` with its top-left corner at `(x, y)`, anti-aliased onto the
/// background.
pub fn text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, c: Rgb<u8>) {
    let Some(font) = font() else { return };
    let f = font.as_scaled(px(scale));
    let mut pen = x as f32;
    let baseline = y as f32 + f.ascent();
    let mut previous = None;
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = previous {
            pen += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(px(scale), point(pen, baseline));
        pen += f.h_advance(id);
        previous = Some(id);
        let Some(outline) = font.outline_glyph(glyph) else { continue };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            blend(img, bounds.min.x as i64 + i64::from(gx), bounds.min.y as i64 + i64::from(gy), c, coverage);
        });
    }
}

/// Mixes `c` into the pixel at `(x, y)` by `alpha` (0–1), if it is inside.
fn blend(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>, alpha: f32) {
    if x < 0 || y < 0 || x >= i64::from(img.width()) || y >= i64::from(img.height()) {
        return;
    }
    let a = alpha.clamp(0.0, 1.0);
    let p = img.get_pixel_mut(x as u32, y as u32);
    for k in 0..3 {
        p.0[k] = (f32::from(p.0[k]) * (1.0 - a) + f32::from(c.0[k]) * a).round() as u8;
    }
}

/// Draws `text` turned 90° anticlockwise (reading bottom to top), its
/// bounding box's top-left corner at `(x, y)`: for column labels.
pub(crate) fn text_vertical(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: i64, c: Rgb<u8>) {
    let (w, h) = (text_width(text, scale).max(1), text_height(scale).max(1));
    let background = Rgb([255, 255, 255]);
    let mut strip = RgbImage::from_pixel(w as u32, h as u32, background);
    self::text(&mut strip, 0, 0, text, scale, c);
    let turned = image::imageops::rotate270(&strip);
    for (tx, ty, p) in turned.enumerate_pixels() {
        if *p != background {
            put(img, x + i64::from(tx), y + i64::from(ty), *p);
        }
    }
}

/// `text` cut to at most `max_width` pixels at `scale`, with an ellipsis.
pub fn fit(text: &str, scale: i64, max_width: i64) -> String {
    if text_width(text, scale) <= max_width {
        return text.to_string();
    }
    let mut cut: String = text.to_string();
    while !cut.is_empty() {
        cut.pop();
        let candidate = format!("{cut}…");
        if text_width(&candidate, scale) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// A chart panel: values in `[lo, hi]` (grid every `step`) against `points`
/// epochs, in the `w × h` box at `(x, y)`. The history chart and the run
/// comparison draw their panels through it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Axes {
    pub x: i64,
    pub y: i64,
    pub w: i64,
    pub h: i64,
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub points: usize,
}

impl Axes {
    /// Epoch `k` (0-based) on the x axis; a single epoch sits in the middle.
    pub(crate) fn x_of(&self, k: usize) -> i64 {
        self.x + if self.points <= 1 { self.w / 2 } else { k as i64 * (self.w - 1) / (self.points as i64 - 1) }
    }

    pub(crate) fn y_of(&self, v: f64) -> i64 {
        self.y + self.h - 1 - (((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0) * (self.h - 1) as f64) as i64
    }

    /// Grid and y ticks, epoch numbers (thinned to fit) under the box, the
    /// frame, and `title` above it at `title_y`.
    pub fn draw(&self, img: &mut RgbImage, title: &str, title_y: i64, scale: i64) {
        self.draw_frame(img, title, title_y, scale);
        let every = self.points.div_ceil(12).max(1);
        for k in (0..self.points).filter(|k| (k + 1) % every == 0 || *k == 0) {
            let label = (k + 1).to_string();
            text(img, self.x_of(k) - text_width(&label, scale) / 2, self.y + self.h + 6, &label, scale, DARK_GREY);
        }
    }

    /// Everything but the x labels: for charts whose x axis is not epochs.
    pub(crate) fn draw_frame(&self, img: &mut RgbImage, title: &str, title_y: i64, scale: i64) {
        let mut v = self.lo;
        while v <= self.hi + self.step * 1e-6 {
            let y = self.y_of(v);
            line(img, (self.x, y), (self.x + self.w - 1, y), 1, GREY);
            let label = tick_label(v, self.step);
            text(img, self.x - 4 - text_width(&label, scale), y - text_height(scale) / 2, &label, scale, DARK_GREY);
            v += self.step;
        }
        let (x0, y0, x1, y1) = (self.x, self.y, self.x + self.w - 1, self.y + self.h - 1);
        for (a, b) in [((x0, y0), (x1, y0)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1)), ((x1, y0), (x1, y1))] {
            line(img, a, b, 1, BLACK);
        }
        text(img, self.x, title_y, title, scale, BLACK);
    }

    /// One series: lines between finite points, a dot on each.
    pub(crate) fn series(&self, img: &mut RgbImage, values: &[f64], colour: Rgb<u8>) {
        let pts: Vec<Option<(i64, i64)>> =
            values.iter().enumerate().map(|(k, &v)| v.is_finite().then(|| (self.x_of(k), self.y_of(v)))).collect();
        for w in pts.windows(2) {
            if let [Some(a), Some(b)] = w {
                line(img, *a, *b, 2, colour);
            }
        }
        for (x, y) in pts.into_iter().flatten() {
            rect(img, x - 3, y - 3, 7, 7, colour);
        }
    }
}

/// One tile of a [`gallery`]: a picture and its caption lines, each in a colour.
pub type Captioned = (RgbImage, Vec<(String, Rgb<u8>)>);

/// Pictures in a grid, `cols` per row, each scaled to `side` pixels (nearest
/// neighbour: small images stay crisp) with its caption lines underneath,
/// cut to the tile's width. For galleries of mistakes and samples.
pub fn gallery(tiles: &[Captioned], cols: usize, side: u32) -> RgbImage {
    const PAD: i64 = 8;
    const SCALE: i64 = 2;
    let lines = tiles.iter().map(|(_, c)| c.len()).max().unwrap_or(0) as i64;
    let line_h = text_height(SCALE);
    let cell_w = i64::from(side) + PAD;
    let cell_h = i64::from(side) + 4 + lines * line_h + PAD;
    let cols = cols.clamp(1, tiles.len().max(1));
    let rows = tiles.len().div_ceil(cols).max(1);
    let mut img = RgbImage::from_pixel(
        (cols as i64 * cell_w + PAD) as u32,
        (rows as i64 * cell_h + PAD) as u32,
        Rgb([255, 255, 255]),
    );
    for (k, (picture, caption)) in tiles.iter().enumerate() {
        let (x, y) = (PAD + (k % cols) as i64 * cell_w, PAD + (k / cols) as i64 * cell_h);
        let scaled = image::imageops::resize(picture, side, side, image::imageops::FilterType::Nearest);
        image::imageops::overlay(&mut img, &scaled, x, y);
        for (l, (line, colour)) in caption.iter().enumerate() {
            let line = fit(line, SCALE, i64::from(side));
            text(&mut img, x, y + i64::from(side) + 4 + l as i64 * line_h, &line, SCALE, *colour);
        }
    }
    img
}

/// A number for an axis tick: as few decimals as `step` needs.
pub(crate) fn tick_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil().clamp(0.0, 6.0) as usize };
    format!("{v:.decimals$}")
}

/// "Nice" tick positions covering `[lo, hi]` (1, 2 or 5 × 10^k apart), about `n` of them.
pub(crate) fn nice_ticks(lo: f64, hi: f64, n: usize) -> (f64, f64, f64) {
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
        let white = Rgb([255, 255, 255]);
        let mut img = RgbImage::from_pixel(40, 30, white);
        text(&mut img, 5, 5, "10", 2, BLACK);
        let (w, h) = (text_width("10", 2), text_height(2));
        assert!(w > 8 && h > 8, "{w}×{h}");
        // Ink inside the box, none outside it.
        let dark = |x: u32, y: u32| img.get_pixel(x, y).0[0] < 128;
        let inside = (5..5 + w as u32).flat_map(|x| (5..5 + h as u32).map(move |y| (x, y)));
        assert!(inside.filter(|&(x, y)| dark(x, y)).count() > 10);
        for (x, y) in (0..40).flat_map(|x| (0..30).map(move |y| (x, y))) {
            let outside = x < 4 || y < 4 || x > 6 + w as u32 || y > 6 + h as u32;
            assert!(!(outside && dark(x, y)), "ink at ({x}, {y}) outside the text's box");
        }
        // Wider text is wider; a vertical label is the box turned.
        assert!(text_width("100", 2) > w);
        let mut tall = RgbImage::from_pixel(30, 40, white);
        text_vertical(&mut tall, 2, 2, "10", 2, BLACK);
        assert!((2..2 + h as u32).any(|x| (2..2 + w as u32).any(|y| tall.get_pixel(x, y).0[0] < 128)));
        assert!(fit("a long class name", 2, 30).ends_with('…'));
        assert_eq!(fit("ok", 2, 100), "ok");
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
