//! Helpers shared by the integration tests.

use std::path::Path;

/// Three colour classes (`blue`, `green`, `red`) of noisy `px`² squares under
/// `root/{train,valid}`: easy enough that one short epoch on ImageNet
/// features separates them.
pub fn colour_squares(root: &Path, seed: u64, px: u32, train: usize, valid: usize) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    for (split, n) in [("train", train), ("valid", valid)] {
        for (c, name) in ["blue", "green", "red"].iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(px, px, |_, _| {
                    let mut p = [next() / 4, next() / 4, next() / 4];
                    p[2 - c] = 160 + next() / 3;
                    image::Rgb(p)
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}
