//! The worst mistakes of an evaluation: each misclassified validation image
//! (highest loss first) with its true and predicted class and the confidence.

use image::RgbImage;

use super::{escape, img_tag, Block};
use crate::data::Dataset;
use crate::error::Result;
use crate::present::preview;
use crate::train::Evaluation;
use crate::util::draw;

/// One misclassified image.
#[derive(Debug, Clone, PartialEq)]
pub struct Mistake {
    pub path: std::path::PathBuf,
    pub truth: String,
    pub predicted: String,
    pub confidence: f32,
    pub loss: f32,
    /// The image as the model saw it (before normalisation), if still in memory.
    pub image: Option<RgbImage>,
}

/// A gallery of mistakes, worst first.
#[derive(Debug, Clone, PartialEq)]
pub struct Mistakes {
    pub items: Vec<Mistake>,
}

fn class(classes: &[String], i: usize) -> String {
    classes.get(i).cloned().unwrap_or_else(|| format!("#{i}"))
}

impl Mistakes {
    /// The first `n` of `eval`'s mistakes, thumbnails taken from `data`'s validation split.
    pub fn new(eval: &Evaluation, data: &Dataset, n: usize) -> Self {
        let classes = &eval.metrics.classes;
        let items = eval
            .mistakes
            .iter()
            .take(n)
            .map(|p| Mistake {
                path: p.path.clone(),
                truth: class(classes, p.truth),
                predicted: class(classes, p.predicted),
                confidence: p.confidence,
                loss: p.loss,
                image: data
                    .valid
                    .paths
                    .iter()
                    .position(|q| *q == p.path)
                    .and_then(|i| preview::thumbnail(&data.valid, data.size, i)),
            })
            .collect();
        Mistakes { items }
    }

    /// Captions only (when the data is not loaded).
    pub(crate) fn without_images(eval: &Evaluation, n: usize) -> Self {
        let empty = Dataset {
            classes: vec![],
            size: 0,
            train: Default::default(),
            valid: Default::default(),
            test: None,
            skipped: vec![],
        };
        Self::new(eval, &empty, n)
    }

    pub fn to_html(&self) -> Result<String> {
        if self.items.is_empty() {
            return Ok("<p><i>No mistakes.</i></p>".into());
        }
        let mut s = String::from(
            "<div><b>Worst mistakes</b> (highest loss first)<div style=\"display:flex;flex-wrap:wrap;gap:8px\">",
        );
        for (k, m) in self.items.iter().enumerate() {
            let name = m.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let img = match &m.image {
                Some(i) => img_tag(i, &name)?,
                None => String::new(),
            };
            s.push_str(&format!(
                "<figure style=\"margin:0;width:120px;font-family:monospace;font-size:11px\">{img}<figcaption>\
                 {}. true <b>{}</b><br/>pred <b style=\"color:#c00\">{}</b> {:.2}<br/>{}</figcaption></figure>",
                k + 1,
                escape(&m.truth),
                escape(&m.predicted),
                m.confidence,
                escape(&name)
            ));
        }
        s.push_str("</div></div>");
        Ok(s)
    }

    /// The gallery as a picture: each image with true → predicted and the
    /// confidence under it, worst first, 6 per row.
    pub fn to_png(&self) -> RgbImage {
        let tiles: Vec<draw::Captioned> = self
            .items
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let picture =
                    m.image.clone().unwrap_or_else(|| RgbImage::from_pixel(8, 8, image::Rgb([235, 235, 235])));
                let caption = vec![
                    (format!("{}. true {}", k + 1, m.truth.replace('_', " ")), draw::BLACK),
                    (format!("pred {} {:.2}", m.predicted.replace('_', " "), m.confidence), image::Rgb([200, 0, 0])),
                ];
                (picture, caption)
            })
            .collect();
        draw::gallery(&tiles, 6, 112)
    }

    pub(crate) fn to_text(&self) -> String {
        let mut s = String::from("true → predicted (confidence)  file\n");
        for m in &self.items {
            s.push_str(&format!(
                "{} → {} ({:.3})  {}\n",
                m.truth,
                m.predicted,
                m.confidence,
                crate::util::paths::shown(&m.path).display()
            ));
        }
        s
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html()?)])
    }
}

super::evcxr_display!(Mistakes);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::compute;
    use crate::present::preview::tests::tiny_dataset;
    use crate::present::views::tests::first_png;
    use crate::train::Prediction;

    #[test]
    fn gallery_shows_thumbnails_and_classes() {
        let data = tiny_dataset(2, 8);
        let metrics = compute(&[0.2, 0.8], &[0], &data.classes, 1);
        let wrong =
            Prediction { path: data.valid.paths[1].clone(), truth: 0, predicted: 1, confidence: 0.8, loss: 1.6 };
        let eval = Evaluation { metrics, predictions: vec![wrong.clone()], mistakes: vec![wrong] };
        let g = Mistakes::new(&eval, &data, 5);
        assert_eq!(g.items.len(), 1);
        let html = g.to_html().unwrap();
        assert!(html.contains("true <b>a</b>") && html.contains(">b</b> 0.80"), "{html}");
        let png = first_png(&html);
        assert_eq!(png.dimensions(), (8, 8));
        assert_eq!(png.get_pixel(0, 0), &image::Rgb([10, 10, 10]), "image 1 of class a");
        // Without data: captions only; n = 0: nothing.
        assert!(!Mistakes::without_images(&eval, 5).to_html().unwrap().contains("<img"));
        assert!(Mistakes::new(&eval, &data, 0).to_html().unwrap().contains("No mistakes"));
    }
}
