//! A grid of augmented training samples ([`crate::present::preview`]), to check that an
//! augmentation setting does what was meant before training with it.

use image::RgbImage;

use super::{img_tag, Block};
use crate::augment::Augmenter;
use crate::data::Dataset;
use crate::error::Result;
use crate::present::preview;

/// A picture of training samples and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub image: RgbImage,
    pub caption: String,
}

impl Samples {
    /// See [`preview::sample_grid`].
    pub fn grid(data: &Dataset, aug: &Augmenter, seed: u64, n: usize) -> Self {
        Samples {
            image: preview::sample_grid(data, aug, seed, n),
            caption: format!("{n} augmented training images (seed {seed})"),
        }
    }

    /// See [`preview::variants_grid`].
    pub fn variants(data: &Dataset, aug: &Augmenter, seed: u64, images: usize, variants: usize) -> Self {
        Samples {
            image: preview::variants_grid(data, aug, seed, images, variants),
            caption: format!("each row: an original training image, then {variants} augmented versions"),
        }
    }

    /// `n` training images as `aug` transforms them with `seed`, each with
    /// its class name underneath (the run directory's `augment.png`).
    pub fn labelled(data: &Dataset, aug: Option<&Augmenter>, seed: u64, n: usize) -> Self {
        let tiles: Vec<crate::util::draw::Captioned> = preview::labelled_samples(data, aug, seed, n)
            .into_iter()
            .map(|(img, tile)| (img, vec![(tile.class.replace('_', " "), crate::util::draw::DARK_GREY)]))
            .collect();
        let cols = (tiles.len() as f64).sqrt().ceil() as usize;
        Samples {
            image: crate::util::draw::gallery(&tiles, cols, 96),
            caption: format!("{} augmented training images (seed {seed})", tiles.len()),
        }
    }

    pub fn to_html(&self) -> Result<String> {
        Ok(format!(
            "<figure>{}<figcaption>{}</figcaption></figure>",
            img_tag(&self.image, &self.caption)?,
            super::escape(&self.caption)
        ))
    }

    /// Text and HTML only: an `image/png` block as well would store the
    /// picture twice in a saved notebook, and front ends prefer the HTML.
    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![
            Block::text(format!("{} ({}×{} px)", self.caption, self.image.width(), self.image.height())),
            Block::html(self.to_html()?),
        ])
    }
}

super::evcxr_display!(Samples);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::present::preview::tests::tiny_dataset;
    use crate::present::views::tests::{decode_base64, first_png};
    use crate::recipe::AugmentConfig;

    #[test]
    fn samples_embed_the_grid() {
        let data = tiny_dataset(4, 8);
        let aug = Augmenter::new(AugmentConfig { horizontal_flip: true, ..Default::default() });
        let s = Samples::grid(&data, &aug, 1, 4);
        let blocks = s.blocks().unwrap();
        assert_eq!(blocks.iter().map(|b| b.mime).collect::<Vec<_>>(), ["text/plain", "text/html"]);
        let png = Block::png(&s.image).unwrap();
        let decoded = image::load_from_memory(&decode_base64(&png.content)).unwrap().to_rgb8();
        assert_eq!(decoded, s.image);
        assert_eq!(first_png(&s.to_html().unwrap()).dimensions(), (2 * 8 + preview::GAP, 2 * 8 + preview::GAP));
    }
}
