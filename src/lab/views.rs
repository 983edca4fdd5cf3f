//! The views of a lab's state for notebooks: `lab.confusion()`,
//! `lab.history_chart()`, `lab.mistakes(n)`… Each takes what the lab holds
//! (its history, last evaluation, data and augmentation) and hands it to a
//! view of [`crate::present::views`], which knows nothing of the lab.

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::present::views::{ClassReport, ConfusionMatrix, HistoryChart, Mistakes, Samples};

impl Lab {
    /// The training history so far as a chart.
    pub fn history_chart(&self) -> HistoryChart {
        HistoryChart { rows: self.history() }
    }

    /// The confusion matrix of the last evaluation.
    pub fn confusion(&self) -> Result<ConfusionMatrix> {
        Ok(ConfusionMatrix::from(&self.evaluation()?.metrics))
    }

    /// Up to `n` of the last evaluation's mistakes (worst first), with thumbnails.
    pub fn mistakes(&self, n: usize) -> Result<Mistakes> {
        let eval = self.evaluation()?;
        Ok(self.data_ref().map_or_else(|| Mistakes::without_images(&eval, n), |d| Mistakes::new(&eval, d, n)))
    }

    /// The classification report of the last evaluation.
    pub fn class_report(&self) -> Result<ClassReport> {
        Ok(ClassReport { metrics: self.evaluation()?.metrics.clone() })
    }

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
