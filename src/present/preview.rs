//! Pictures of the data, shared by every front end (notebook views, the TUI):
//! grids of augmented training samples and thumbnails of single images.
//!
//! Everything here works on the decoded pixels a [`Dataset`] keeps in memory
//! and never panics: an empty split or a request for zero images gives an
//! empty (1×1 background) grid.

use image::{Rgb, RgbImage};

use crate::augment::{Augmenter, Image, Rng};
use crate::data::{Dataset, Split};

/// Background between tiles.
pub(crate) const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
/// Gap between tiles, in pixels.
pub const GAP: u32 = 2;

/// Image `index` of `split` as an RGB image, or `None` if out of range or malformed.
pub(crate) fn thumbnail(split: &Split, size: u32, index: usize) -> Option<RgbImage> {
    let px = split.pixels.get(index)?;
    RgbImage::from_raw(size, size, px.to_vec())
}

/// `n` training images spread over the whole split (hence over the classes,
/// which are stored in order), each augmented as training would with `seed`:
/// image `i` uses the stream `(seed, i)`, the same scheme as a training batch.
/// Tiles are laid out in a near-square grid.
pub fn sample_grid(data: &Dataset, aug: &Augmenter, seed: u64, n: usize) -> RgbImage {
    let picks = spread(data.train.len(), n);
    let tiles: Vec<RgbImage> = picks.iter().filter_map(|&i| augmented(data, aug, seed, i)).collect();
    let cols = (tiles.len() as f64).sqrt().ceil() as u32;
    tile(&tiles, cols.max(1))
}

/// One row per image (`images` of them, spread over the training split): the
/// original first, then `variants` augmented versions (seeds `seed`, `seed+1`, …),
/// so the effect of each setting is easy to judge.
pub fn variants_grid(data: &Dataset, aug: &Augmenter, seed: u64, images: usize, variants: usize) -> RgbImage {
    let mut tiles = Vec::new();
    for i in spread(data.train.len(), images) {
        let Some(original) = thumbnail(&data.train, data.size, i) else { continue };
        tiles.push(original);
        for v in 0..variants as u64 {
            tiles.extend(augmented(data, aug, seed.wrapping_add(v), i));
        }
    }
    tile(&tiles, variants as u32 + 1)
}

fn augmented(data: &Dataset, aug: &Augmenter, seed: u64, index: usize) -> Option<RgbImage> {
    let src = data.train.pixels.get(index)?;
    let s = data.size;
    if src.len() != (s * s * 3) as usize {
        return None;
    }
    let out = aug.apply(&Image::from_rgb8(s, s, &src), &mut Rng::derive(seed, index as u64));
    RgbImage::from_raw(out.width, out.height, out.to_rgb8())
}

/// One tile of [`labelled_grid`]: its index in the training split and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub index: usize,
    pub class: String,
}

/// Like [`sample_grid`] (same picks, same augmentation streams) but also
/// returns each tile's class, for captions in the TUI and `tlab preview`.
/// Without an augmenter the images are shown as decoded.
pub fn labelled_grid(data: &Dataset, aug: Option<&Augmenter>, seed: u64, n: usize) -> (RgbImage, Vec<Tile>) {
    let (images, tiles): (Vec<RgbImage>, Vec<Tile>) = labelled_samples(data, aug, seed, n).into_iter().unzip();
    let cols = (images.len() as f64).sqrt().ceil() as u32;
    (tile(&images, cols.max(1)), tiles)
}

/// The images of [`labelled_grid`] one by one, each with its tile.
pub(crate) fn labelled_samples(data: &Dataset, aug: Option<&Augmenter>, seed: u64, n: usize) -> Vec<(RgbImage, Tile)> {
    let identity = Augmenter::new(crate::recipe::AugmentConfig::default());
    let aug = aug.unwrap_or(&identity);
    spread(data.train.len(), n)
        .into_iter()
        .filter_map(|i| {
            let img = augmented(data, aug, seed, i)?;
            let class = data.train.labels.get(i).and_then(|&l| data.classes.get(l)).cloned().unwrap_or_default();
            Some((img, Tile { index: i, class }))
        })
        .collect()
}

/// Mixup / CutMix as training applies them: `n` images, each mixed with
/// another (seeded), captioned with both classes and their weights, e.g.
/// `0.73 bag + 0.27 coat`.
pub fn mixed_samples(
    data: &Dataset,
    aug: Option<&Augmenter>,
    mix: &crate::recipe::MixConfig,
    seed: u64,
    n: usize,
) -> Vec<(RgbImage, String)> {
    let samples = labelled_samples(data, aug, seed, n);
    let m = samples.len();
    let mut rng = Rng::derive(seed, 0x313C);
    (0..m)
        .map(|i| {
            let ((a, ta), (b, tb)) = (&samples[i], &samples[m - 1 - i]);
            let cut = match (mix.mixup_alpha > 0.0, mix.cutmix_alpha > 0.0) {
                (true, true) => rng.bool(mix.switch_prob),
                (false, true) => true,
                _ => false,
            };
            let (w, h) = (a.width() as usize, a.height() as usize);
            let mut out = a.clone();
            let lam = if cut {
                let lam = crate::train::mix::beta(mix.cutmix_alpha, &mut rng);
                let (y0, y1, x0, x1) = crate::train::mix::cut_box(h, w, lam, &mut rng);
                for y in y0..y1 {
                    for x in x0..x1 {
                        out.put_pixel(x as u32, y as u32, *b.get_pixel(x as u32, y as u32));
                    }
                }
                1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (w * h) as f64
            } else {
                let lam = crate::train::mix::beta(mix.mixup_alpha, &mut rng);
                for (o, (pa, pb)) in out.pixels_mut().zip(a.pixels().zip(b.pixels())) {
                    for c in 0..3 {
                        o.0[c] = (f64::from(pa.0[c]) * lam + f64::from(pb.0[c]) * (1.0 - lam)).round() as u8;
                    }
                }
                lam
            };
            (out, format!("{lam:.2} {} + {:.2} {}", ta.class, 1.0 - lam, tb.class))
        })
        .collect()
}

/// The mixup / CutMix setting of the first fine_tune step after recipe step
/// `after`: what the images an augment step prepares are mixed with in
/// training (`None` when that step does not mix images — no mixing, or
/// `mix_at = "features"` — or none follows).
pub fn mix_after(recipe: &crate::recipe::Recipe, after: usize) -> Option<crate::recipe::MixConfig> {
    recipe
        .steps
        .iter()
        .skip(after + 1)
        .find_map(|s| match &s.kind {
            crate::recipe::StepKind::FineTune(f) => Some(f.mix),
            _ => None,
        })
        .flatten()
        .filter(|m| m.at == crate::recipe::MixAt::Input)
}

/// `tlab preview RECIPE`: `count` training images of the recipe's data as
/// its training sees them (the last augment step before the first
/// fine_tune; with mixup or CutMix there, mixed pairs), each captioned in
/// its tile, and the captions as text.
pub fn recipe_preview(
    recipe: &crate::recipe::Recipe,
    count: usize,
    seed: u64,
) -> crate::error::Result<(RgbImage, Vec<String>)> {
    use crate::recipe::StepKind;
    use crate::util::draw;
    let augment = recipe
        .steps
        .iter()
        .take_while(|s| !matches!(s.kind, StepKind::FineTune(_)))
        .filter_map(|s| match &s.kind {
            StepKind::Augment(a) => Some(a.clone()),
            _ => None,
        })
        .last();
    let data = Dataset::load(&recipe.data, recipe.seed)?;
    let aug = augment.map(Augmenter::new);
    Ok(match mix_after(recipe, 0) {
        Some(mix) => {
            let samples = mixed_samples(&data, aug.as_ref(), &mix, seed, count);
            let captions: Vec<String> = samples.iter().map(|(_, c)| c.clone()).collect();
            // Two lines per tile: the weight and class of each image.
            let tiles: Vec<draw::Captioned> = samples
                .into_iter()
                .map(|(img, c)| (img, c.split(" + ").map(|l| (l.to_string(), draw::BLACK)).collect()))
                .collect();
            let cols = (tiles.len() as f64).sqrt().ceil() as usize;
            (draw::gallery(&tiles, cols.max(1), 128), captions)
        }
        None => {
            let (grid, tiles) = labelled_grid(&data, aug.as_ref(), seed, count);
            (grid, tiles.into_iter().map(|t| t.class).collect())
        }
    })
}

/// The augmentation preview of the TUI and `tlab preview`: `n` training
/// images as training sees them, in a near-square grid, with one caption per
/// tile — the class, or with `mix` both classes and their weights.
pub(crate) fn training_samples(
    data: &Dataset,
    aug: Option<&Augmenter>,
    mix: Option<&crate::recipe::MixConfig>,
    seed: u64,
    n: usize,
) -> (RgbImage, Vec<String>) {
    let (images, captions): (Vec<RgbImage>, Vec<String>) = match mix {
        Some(mix) => mixed_samples(data, aug, mix, seed, n).into_iter().unzip(),
        None => labelled_samples(data, aug, seed, n).into_iter().map(|(img, t)| (img, t.class)).unzip(),
    };
    let cols = (images.len() as f64).sqrt().ceil() as u32;
    (tile(&images, cols.max(1)), captions)
}

/// `n` indices spread evenly over `0..len` (all of them when `n >= len`).
fn spread(len: usize, n: usize) -> Vec<usize> {
    if len == 0 || n == 0 {
        return Vec::new();
    }
    let n = n.min(len);
    (0..n).map(|k| k * len / n).collect()
}

/// Lays `tiles` out row by row, `cols` per row, with [`GAP`] pixels between
/// them; cells are as large as the largest tile.
pub fn tile(tiles: &[RgbImage], cols: u32) -> RgbImage {
    if tiles.is_empty() || cols == 0 {
        return RgbImage::from_pixel(1, 1, BACKGROUND);
    }
    let cw = tiles.iter().map(RgbImage::width).max().unwrap_or(1);
    let ch = tiles.iter().map(RgbImage::height).max().unwrap_or(1);
    let cols = cols.min(tiles.len() as u32);
    let rows = (tiles.len() as u32).div_ceil(cols);
    let mut out = RgbImage::from_pixel(cols * cw + (cols - 1) * GAP, rows * ch + (rows - 1) * GAP, BACKGROUND);
    for (k, t) in tiles.iter().enumerate() {
        let (c, r) = (k as u32 % cols, k as u32 / cols);
        image::imageops::replace(&mut out, t, i64::from(c * (cw + GAP)), i64::from(r * (ch + GAP)));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::recipe::AugmentConfig;

    /// A dataset of `n` solid-colour `size`² images per class (2 classes).
    pub(crate) fn tiny_dataset(n: usize, size: u32) -> Dataset {
        let mut split = Split::default();
        let mut pixels = Vec::new();
        for label in 0..2 {
            for i in 0..n {
                let v = (label * 100 + i * 10) as u8;
                split.paths.push(format!("/d/{label}/{i}.png").into());
                split.labels.push(label);
                pixels.push(vec![v; (size * size * 3) as usize]);
            }
        }
        split.pixels = crate::data::Pixels::Memory(pixels);
        Dataset {
            classes: vec!["a".into(), "b".into()],
            size,
            train: split.clone(),
            valid: split,
            test: None,
            skipped: vec![],
        }
    }

    #[test]
    fn the_preview_shows_the_mix_of_the_fine_tune_that_follows() {
        let text = "name = \"t\"\n[data]\ntrain = \"d\"\n[[step]]\nkind = \"backbone\"\narch = \"resnet18\"\n\
                    [[step]]\nkind = \"augment\"\nhorizontal_flip = true\n[[step]]\nkind = \"fine_tune\"\nmixup = 0.4\n\
                    [[step]]\nkind = \"augment\"\n[[step]]\nkind = \"fine_tune\"\n";
        let recipe = crate::recipe::parse(text, std::path::Path::new("/r.toml")).unwrap();
        assert_eq!(mix_after(&recipe, 1).map(|m| m.mixup_alpha), Some(0.4));
        assert_eq!(mix_after(&recipe, 3), None, "the second fine_tune does not mix");
        let data = tiny_dataset(4, 8);
        let mix = mix_after(&recipe, 1).unwrap();
        let (grid, captions) = training_samples(&data, None, Some(&mix), 2, 4);
        assert_eq!(grid.dimensions(), (2 * 8 + GAP, 2 * 8 + GAP));
        for c in &captions {
            // "0.73 a + 0.27 b": two weights that sum to one, two classes.
            let parts: Vec<&str> = c.split(" + ").collect();
            let w: Vec<f64> = parts.iter().map(|p| p.split(' ').next().unwrap().parse().unwrap()).collect();
            assert!((w[0] + w[1] - 1.0).abs() < 0.011, "{c}");
        }
        // The first tile mixes image 0 (black) with the last shown (class b, level 120).
        let lam: f64 = captions[0].split(' ').next().unwrap().parse().unwrap();
        let want = 120.0 * (1.0 - lam);
        // Captions round the weight to 0.01.
        assert!((f64::from(grid.get_pixel(0, 0).0[0]) - want).abs() <= 120.0 * 0.005 + 1.0, "{}", captions[0]);
        let (_, plain) = training_samples(&data, None, None, 2, 4);
        assert_eq!(plain, ["a", "a", "b", "b"]);
    }

    #[test]
    fn grid_has_the_expected_size_and_pixels() {
        let data = tiny_dataset(5, 8);
        let identity = Augmenter::new(AugmentConfig::default());
        let g = sample_grid(&data, &identity, 1, 4);
        assert_eq!(g.dimensions(), (2 * 8 + GAP, 2 * 8 + GAP));
        // Unaugmented tiles are the source images: indices 0, 2, 5, 7 of the split.
        assert_eq!(g.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(g.get_pixel(8 + GAP, 0), &Rgb([20, 20, 20]));
        assert_eq!(g.get_pixel(8, 0), &BACKGROUND, "gap");
        // More than there are: every image once.
        assert_eq!(sample_grid(&data, &identity, 1, 100).dimensions(), (4 * 8 + 3 * GAP, 3 * 8 + 2 * GAP));
    }

    #[test]
    fn augmentation_is_seeded() {
        let mut data = tiny_dataset(2, 16);
        // A gradient so flips and shifts change pixels.
        let crate::data::Pixels::Memory(pixels) = &mut data.train.pixels else { unreachable!("built in memory") };
        for px in pixels {
            for (k, v) in px.iter_mut().enumerate() {
                *v = (k % 251) as u8;
            }
        }
        let aug = Augmenter::new(AugmentConfig { rotation_range: 30.0, horizontal_flip: true, ..Default::default() });
        let a = sample_grid(&data, &aug, 3, 4);
        assert_eq!(a, sample_grid(&data, &aug, 3, 4));
        assert_ne!(a, sample_grid(&data, &aug, 4, 4));
        let v = variants_grid(&data, &aug, 3, 2, 3);
        assert_eq!(v.dimensions(), (4 * 16 + 3 * GAP, 2 * 16 + GAP));
    }

    #[test]
    fn labelled_grid_matches_sample_grid_and_names_classes() {
        let data = tiny_dataset(3, 8);
        let identity = Augmenter::new(AugmentConfig::default());
        let (g, tiles) = labelled_grid(&data, None, 5, 4);
        assert_eq!(g, sample_grid(&data, &identity, 5, 4));
        let classes: Vec<&str> = tiles.iter().map(|t| t.class.as_str()).collect();
        assert_eq!(classes, vec!["a", "a", "b", "b"]);
    }

    #[test]
    fn empty_inputs_give_a_blank_image() {
        let data = tiny_dataset(0, 8);
        let aug = Augmenter::new(AugmentConfig::default());
        assert_eq!(sample_grid(&data, &aug, 0, 4).dimensions(), (1, 1));
        assert_eq!(sample_grid(&tiny_dataset(3, 8), &aug, 0, 0).dimensions(), (1, 1));
        assert!(thumbnail(&data.train, 8, 0).is_none());
    }
}
