//! A grid of (augmented) training samples with their class, as one RGB
//! image: what `tlab preview`, the TUI's Preview tab and notebooks show.

use image::RgbImage;

use crate::augment::{Augmenter, Image, Rng};
use crate::data::Dataset;

/// One picked sample: its index in the training split and its class.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub index: usize,
    pub class: String,
}

/// `n` training images picked with `seed` (spread over the classes), each
/// passed through `aug` when given, laid out in a near-square grid with a
/// 2-pixel gutter. Returns the image and the tiles in row-major order.
pub fn sample_grid(data: &Dataset, aug: Option<&Augmenter>, seed: u64, n: usize) -> (RgbImage, Vec<Tile>) {
    let n = n.min(data.train.len()).max(1);
    let mut rng = Rng::derive(seed, 0x9E1);
    // Round-robin over classes so every class shows up.
    let classes = data.classes.len();
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in data.train.labels.iter().enumerate() {
        by_class[l].push(i);
    }
    for list in &mut by_class {
        rng.shuffle(list);
    }
    let mut picks = Vec::with_capacity(n);
    let mut round = 0;
    while picks.len() < n && by_class.iter().any(|l| l.len() > round) {
        for list in &by_class {
            if picks.len() < n {
                if let Some(&i) = list.get(round) {
                    picks.push(i);
                }
            }
        }
        round += 1;
    }
    let cols = (picks.len() as f64).sqrt().ceil().max(1.0) as u32;
    let rows = (picks.len() as u32).div_ceil(cols);
    let s = data.size;
    let gap = 2;
    let mut grid = RgbImage::from_pixel(cols * (s + gap) - gap, rows * (s + gap) - gap, image::Rgb([24, 24, 24]));
    let mut tiles = Vec::with_capacity(picks.len());
    for (k, &i) in picks.iter().enumerate() {
        let src = Image::from_rgb8(s, s, &data.train.pixels[i]);
        let img = match aug {
            Some(a) if !a.is_identity() => a.apply(&src, &mut Rng::derive(seed, i as u64)),
            _ => src,
        };
        let px = img.to_rgb8();
        let (x0, y0) = ((k as u32 % cols) * (s + gap), (k as u32 / cols) * (s + gap));
        for y in 0..s {
            for x in 0..s {
                let o = ((y * s + x) * 3) as usize;
                grid.put_pixel(x0 + x, y0 + y, image::Rgb([px[o], px[o + 1], px[o + 2]]));
            }
        }
        tiles.push(Tile { index: i, class: data.classes[data.train.labels[i]].clone() });
    }
    (grid, tiles)
}
