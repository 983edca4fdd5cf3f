//! A grid of augmented training samples ([`crate::present::preview`]), to check that an
//! augmentation setting does what was meant before training with it.

use image::RgbImage;

use super::{img_tag, Block};
use crate::augment::Augmenter;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::present::preview;

/// A picture of training samples and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub image: RgbImage,
    pub caption: String,
}

impl Lab {
    /// `n` training images as the current augmentation (the last augment step
    /// run) transforms them with `seed`. Needs the data: run the backbone step first.
    pub fn augmented_samples(&self, n: usize, seed: u64) -> Result<Samples> {
        let (data, aug) = self.data_and_augmenter()?;
        Ok(Samples::grid(data, &aug, seed, n))
    }

    /// Each of `images` training images beside `variants` augmented versions.
    pub fn augmentation_preview(&self, images: usize, variants: usize, seed: u64) -> Result<Samples> {
        let (data, aug) = self.data_and_augmenter()?;
        Ok(Samples::variants(data, &aug, seed, images, variants))
    }

    /// The decoded data and the augmentation in force, or which step is missing.
    fn data_and_augmenter(&self) -> Result<(&crate::data::Dataset, crate::augment::Augmenter)> {
        let data = self
            .data_ref()
            .ok_or(Error::NotYet { what: "showing samples", needs: "the backbone step (it loads the data)" })?;
        let aug =
            self.augmenter().ok_or(Error::NotYet { what: "showing augmented samples", needs: "an augment step" })?;
        Ok((data, aug))
    }
}

impl Lab {
    /// Grad-CAM for one image file (`tlab explain` in a notebook): the image,
    /// the heat-map of the predicted class, and of the true class when the
    /// file sits in a class folder and was misclassified. Needs a model:
    /// run the backbone step first.
    pub fn explain(&self, path: impl AsRef<std::path::Path>) -> Result<Samples> {
        let path = path.as_ref();
        let (model, data) = match (self.model(), self.data_ref()) {
            (Some(m), Some(d)) => (m, d),
            _ => return Err(Error::NotYet { what: "this view", needs: "a backbone step" }),
        };
        let pixels = crate::data::decode(path, data.size).map_err(|e| Error::data(path, e))?;
        let truth = crate::predict::class_of(path, &data.classes);
        let e =
            crate::explain::explain_pixels(model, &model.backbone.preprocess(), &pixels, &data.classes, truth, None)?;
        Ok(Samples {
            image: e.picture,
            caption: format!(
                "Grad-CAM of {} (predicted {})",
                crate::util::paths::shown(path).display(),
                data.classes[e.predicted]
            ),
        })
    }
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
