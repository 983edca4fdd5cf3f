//! Classifying image files: with a model saved by `tlab run` (its run
//! directory), or with an ImageNet checkpoint and its own classifier.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::augment::Rng;
use crate::error::{Error, Result};
use crate::models::layers::{Mode, ParamLoader};
use crate::models::{self, Backbone, Classifier, Head, Preprocess};
use crate::report::ModelCard;

/// The shipped ImageNet MobileNetV2 and its class names.
pub fn shipped_imagenet_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/weights/mobilenet_v2.safetensors")
}

pub fn shipped_imagenet_classes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/weights/imagenet_classes.txt")
}

/// Top classes for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub path: PathBuf,
    /// `(class, probability)`, most likely first.
    pub top: Vec<(String, f32)>,
}

enum Kind {
    Imagenet(Box<dyn Backbone>),
    Trained(Classifier),
}

/// A loaded model ready to classify files.
pub struct Predictor {
    kind: Kind,
    classes: Vec<String>,
    preprocess: Preprocess,
    /// Centre-crop evaluation (ImageNet) or a plain squash to the training size.
    crop: bool,
    size: u32,
}

impl Predictor {
    /// An ImageNet checkpoint of `arch` with its original classifier.
    pub fn imagenet(arch: &str, weights: &Path, classes_file: &Path) -> Result<Self> {
        let tensors = crate::weights::load(weights)?;
        let mut p = ParamLoader::from_tensors(weights.display().to_string(), tensors);
        let backbone = models::build_backbone(arch, &mut p, true)?;
        p.finish(true, None)?;
        let text = std::fs::read_to_string(classes_file).map_err(|e| Error::io(classes_file, e))?;
        let classes: Vec<String> = text.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
        let n = backbone.imagenet_outputs().unwrap_or(0);
        if classes.len() != n {
            return Err(Error::data(
                classes_file,
                format!("{} class names, but the classifier has {n} outputs", classes.len()),
            ));
        }
        let preprocess = backbone.preprocess();
        Ok(Predictor { size: preprocess.input_size, kind: Kind::Imagenet(backbone), classes, preprocess, crop: true })
    }

    /// A model saved by `tlab run` in `dir` (model.json + model.safetensors).
    pub fn from_run_dir(dir: &Path) -> Result<Self> {
        let card_path = dir.join("model.json");
        let text = std::fs::read_to_string(&card_path).map_err(|e| Error::io(&card_path, e))?;
        let card: ModelCard =
            serde_json::from_str(&text).map_err(|e| Error::data(&card_path, format!("invalid model card: {e}")))?;
        let weights = dir.join("model.safetensors");
        let mut p = ParamLoader::from_tensors(weights.display().to_string(), crate::weights::load(&weights)?);
        let backbone = models::build_backbone(&card.backbone, &mut p, false)?;
        let head_cfg = card.head.to_config()?;
        let in_features = match head_cfg.pooling {
            crate::recipe::Pooling::Avg => backbone.feature_channels(),
            crate::recipe::Pooling::Flatten => {
                let s = card.image_size as usize;
                let x = Tensor::zeros((1, 3, s, s), DType::F32, &candle_core::Device::Cpu)?;
                backbone.forward_blocks(&x, 0..backbone.num_blocks(), Mode { training: false })?.elem_count()
            }
        };
        let head = Head::load(&head_cfg, in_features, card.classes.len(), &mut p)?;
        p.finish(true, None)?;
        Ok(Predictor {
            size: card.image_size,
            kind: Kind::Trained(Classifier::new(backbone, head)),
            classes: card.classes,
            preprocess: card.preprocess,
            crop: false,
        })
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Probabilities for one image file.
    pub fn probabilities(&self, path: &Path) -> Result<Vec<f32>> {
        let pixels = self.load_pixels(path)?;
        let s = self.size as usize;
        let x = self.preprocess.to_tensor(&pixels, 1, s, s)?;
        let mode = Mode { training: false };
        let logits = match &self.kind {
            Kind::Imagenet(b) => {
                let f = b.forward_blocks(&x, 0..b.num_blocks(), mode)?;
                b.imagenet_logits(&f)?.ok_or_else(|| Error::Invalid("checkpoint has no classifier".into()))?
            }
            Kind::Trained(m) => m.forward_from(&x, 0, mode, &mut Rng::new(0))?,
        };
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok(crate::metrics::softmax_rows(&logits, self.classes.len()))
    }

    /// The `k` most likely classes for each file.
    pub fn top_k(&self, paths: &[PathBuf], k: usize) -> Result<Vec<Ranked>> {
        paths
            .iter()
            .map(|path| {
                let probs = self.probabilities(path)?;
                let mut order: Vec<usize> = (0..probs.len()).collect();
                order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
                let top = order.into_iter().take(k).map(|i| (self.classes[i].clone(), probs[i])).collect();
                Ok(Ranked { path: path.clone(), top })
            })
            .collect()
    }

    /// Decodes and resizes like the model's evaluation: ImageNet models get
    /// torchvision's resize-shorter-side + centre crop, trained models the
    /// same squash to `image_size` that training used.
    fn load_pixels(&self, path: &Path) -> Result<Vec<f32>> {
        if !self.crop {
            let px = crate::data::decode(path, self.size).map_err(|e| Error::data(path, e))?;
            return Ok(px.into_iter().map(f32::from).collect());
        }
        let img = image::ImageReader::open(path)
            .map_err(|e| Error::io(path, e))?
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?
            .decode()
            .map_err(|e| Error::data(path, format!("cannot decode: {e}")))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        let short = self.preprocess.resize_size as f64;
        let scale = short / f64::from(w.min(h));
        let (nw, nh) = ((f64::from(w) * scale).round().max(1.0) as u32, (f64::from(h) * scale).round().max(1.0) as u32);
        let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
        let s = self.size;
        let (x0, y0) = ((nw.saturating_sub(s)) / 2, (nh.saturating_sub(s)) / 2);
        let crop = image::imageops::crop_imm(&resized, x0, y0, s.min(nw), s.min(nh)).to_image();
        let crop = if crop.dimensions() == (s, s) {
            crop
        } else {
            image::imageops::resize(&crop, s, s, image::imageops::FilterType::Triangle)
        };
        Ok(crop.into_raw().into_iter().map(f32::from).collect())
    }
}
