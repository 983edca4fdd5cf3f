//! Classifying image files: with a model saved by `tlab run` (its run
//! directory), or with an ImageNet checkpoint and its own classifier.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::augment::Rng;
use crate::error::{Error, Result};
use crate::models::card::ModelCard;
use crate::models::layers::{Mode, ParamLoader};
use crate::models::{self, Backbone, Classifier, Head, Preprocess};

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

impl Ranked {
    /// The `top` most likely of `classes` (at least one) under the probabilities `p`.
    pub fn new(path: &Path, p: &[f32], classes: &[String], top: usize) -> Ranked {
        let top = ranked(p, top).into_iter().map(|i| (classes[i].clone(), p[i])).collect();
        Ranked { path: path.to_path_buf(), top }
    }

    /// `tlab predict --json`'s line: `path` (as the user reads it),
    /// `predicted`, `confidence` and `top` as `[class, probability]` pairs.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": crate::util::paths::shown(&self.path).display().to_string(),
            "predicted": self.top[0].0,
            "confidence": self.top[0].1,
            "top": self.top,
        })
    }
}

/// Class indices of `p`, most probable first, the first `top` (at least one).
pub fn ranked(p: &[f32], top: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(top.max(1));
    order
}

/// `tlab predict --csv`: `path,predicted,confidence,top_k`, one row per image,
/// `top_k` as `class:probability` pairs.
pub fn ranked_csv(rows: &[Ranked]) -> String {
    use crate::fs::csv_field;
    let mut text = String::from("path,predicted,confidence,top_k\n");
    for r in rows {
        let top: Vec<String> = r.top.iter().map(|(c, p)| format!("{c}:{p:.4}")).collect();
        let path = crate::util::paths::shown(&r.path).display().to_string();
        let line = [csv_field(&path), csv_field(&r.top[0].0), format!("{:.6}", r.top[0].1), csv_field(&top.join(" "))];
        text.push_str(&(line.join(",") + "\n"));
    }
    text
}

/// Labelled images scored as an evaluation scores them: the metrics (top-k
/// with `top` capped by the class count) and each image's prediction.
pub fn score(
    paths: &[PathBuf],
    probs: &[Vec<f32>],
    labels: &[usize],
    classes: &[String],
    top: usize,
) -> (crate::metrics::Metrics, Vec<crate::train::Prediction>) {
    let metrics = crate::metrics::compute(&probs.concat(), labels, classes, top.min(classes.len()).max(1));
    let predictions = paths
        .iter()
        .zip(probs)
        .zip(labels)
        .map(|((path, p), &truth)| {
            let predicted = ranked(p, 1)[0];
            let loss = crate::metrics::nll(p[truth]) as f32;
            crate::train::Prediction { path: path.clone(), truth, predicted, confidence: p[predicted], loss }
        })
        .collect();
    (metrics, predictions)
}

enum Kind {
    Imagenet(Box<dyn Backbone>),
    Trained(Classifier),
    /// An `.onnx` file exported by tlab, run by [`crate::formats::onnx::run`];
    /// `uint8_input` when it was exported with its preprocessing.
    Onnx {
        model: Box<crate::formats::onnx::ModelProto>,
        uint8_input: bool,
    },
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
        // A notebook may predict without ever making a `Lab`: keep candle's
        // spinning pool off here too (see the function).
        crate::kernels::keep_candle_pool_off();
        let (tensors, _) = models::naming::to_reference(arch, crate::formats::weights::load(weights)?)?;
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
        crate::kernels::keep_candle_pool_off();
        let (mut model, card) = load_run_model(dir)?;
        // Inference only: every block frozen, so BatchNorm is folded into
        // the convolutions and the fused kernels run (as `tlab bench forward`).
        let blocks = model.backbone.num_blocks();
        model.freeze(blocks, false)?;
        Ok(Predictor {
            size: card.image_size,
            kind: Kind::Trained(model),
            classes: card.classes,
            preprocess: card.preprocess,
            crop: false,
        })
    }

    /// A trained model with every block unfrozen, so gradients reach every
    /// block's input (Grad-CAM at an earlier `--layer`); slower than
    /// [`Predictor::from_run_dir`].
    pub fn from_run_dir_for_gradients(dir: &Path) -> Result<Self> {
        let mut p = Self::from_run_dir(dir)?;
        if let Kind::Trained(m) = &mut p.kind {
            m.freeze(0, false)?;
        }
        Ok(p)
    }

    /// The image size and preprocessing the model expects.
    pub(crate) fn input_spec(&self) -> (u32, &Preprocess) {
        (self.size, &self.preprocess)
    }

    /// The trained classifier, for a model from a run directory.
    pub fn classifier(&self) -> Option<&Classifier> {
        match &self.kind {
            Kind::Trained(m) => Some(m),
            Kind::Imagenet(_) | Kind::Onnx { .. } => None,
        }
    }

    /// The normalised input tensor `[1, 3, s, s]` the model sees for `path`.
    pub fn input(&self, path: &Path) -> Result<Tensor> {
        let pixels = self.load_pixels(path)?;
        let s = self.size as usize;
        self.preprocess.to_tensor(&pixels, 1, s, s)
    }

    /// `tlab predict --npy PREFIX`: the exact model inputs of `paths`
    /// (PREFIX-inputs.npy, N×3×S×S, normalised) and their probabilities
    /// `probs` (PREFIX-probs.npy, N×classes), to check an exported model
    /// against tlab in Python on the same numbers.
    pub fn write_npy(&self, prefix: &Path, paths: &[PathBuf], probs: &[Vec<f32>]) -> Result<()> {
        let tensors: Vec<Tensor> = paths.iter().map(|p| self.input(p)).collect::<Result<_>>()?;
        let stacked = Tensor::cat(&tensors, 0)?;
        let values = stacked.flatten_all()?.to_vec1::<f32>()?;
        let name = |suffix: &str| {
            let mut p = prefix.to_path_buf().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let npy = crate::formats::npy::f32_array;
        crate::fs::atomic_write(&name("-inputs.npy"), &npy(stacked.dims(), &values))?;
        crate::fs::atomic_write(&name("-probs.npy"), &npy(&[paths.len(), self.classes.len()], &probs.concat()))
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Probabilities for one image file.
    pub fn probabilities(&self, path: &Path) -> Result<Vec<f32>> {
        let x = self.input(path)?;
        let pixels = match self.kind {
            Kind::Onnx { uint8_input: true, .. } => self.load_pixels(path)?,
            _ => vec![],
        };
        let logits = self.logits(&x, &pixels, 1)?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok(crate::metrics::softmax_rows(&logits, self.classes.len()))
    }

    /// Probabilities for many files, decoded in parallel and run in batches
    /// of `batch`: one row per path, in order. `progress` is told how many
    /// files are done after each batch.
    pub fn probabilities_batched(
        &self,
        paths: &[PathBuf],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        use rayon::prelude::*;
        let s = self.size as usize;
        let mut out = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(batch.max(1)) {
            let pixels: Vec<Vec<f32>> = chunk.par_iter().map(|p| self.load_pixels(p)).collect::<Result<_>>()?;
            let flat: Vec<f32> = pixels.concat();
            let x = self.preprocess.to_tensor(&flat, chunk.len(), s, s)?;
            let logits = self.logits(&x, &flat, chunk.len())?;
            let logits = logits.flatten_all()?.to_vec1::<f32>()?;
            let probs = crate::metrics::softmax_rows(&logits, self.classes.len());
            out.extend(probs.chunks(self.classes.len()).map(<[f32]>::to_vec));
            progress(out.len());
        }
        Ok(out)
    }

    /// Logits for a batch: `x` normalised (`[n, 3, s, s]`), or for an ONNX
    /// export that preprocesses itself, the raw `pixels` (`n × s × s × 3`).
    fn logits(&self, x: &Tensor, pixels: &[f32], n: usize) -> Result<Tensor> {
        let mode = Mode::EVAL;
        match &self.kind {
            Kind::Imagenet(b) => {
                let f = b.forward_blocks(x, 0..b.num_blocks(), mode)?;
                b.imagenet_logits(&f)?.ok_or_else(|| Error::NoOutput("the checkpoint has no ImageNet classifier"))
            }
            Kind::Trained(m) => m.forward_from(x, 0, mode, &mut Rng::new(0)),
            Kind::Onnx { model, uint8_input } => {
                let s = self.size as usize;
                let input = if *uint8_input {
                    Tensor::from_vec(pixels.to_vec(), (n, s, s, 3), &candle_core::Device::Cpu)?
                } else {
                    x.clone()
                };
                let mut out = crate::formats::onnx::run(model, input)?;
                out.remove("logits").ok_or_else(|| Error::NoOutput("the ONNX model has no `logits` output"))
            }
        }
    }

    /// A model exported by `tlab export --format onnx`, run by tlab's own
    /// interpreter: checks a shipped file without its run directory.
    pub fn from_onnx(path: &Path) -> Result<Self> {
        use prost::Message;
        crate::kernels::keep_candle_pool_off();
        let card = card_of_onnx(path)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let model = crate::formats::onnx::ModelProto::decode(bytes.as_slice())
            .map_err(|e| Error::data(path, format!("not an ONNX model: {e}")))?;
        let uint8_input = model
            .graph
            .as_ref()
            .and_then(|g| g.input.first())
            .and_then(|i| i.r#type.as_ref()?.tensor_type.as_ref())
            .is_some_and(|t| t.elem_type == crate::formats::onnx::dtype::UINT8);
        Ok(Predictor {
            size: card.image_size,
            kind: Kind::Onnx { model: Box::new(model), uint8_input },
            classes: card.classes,
            preprocess: card.preprocess,
            crop: false,
        })
    }

    /// The `k` most likely classes for each file.
    pub fn top_k(&self, paths: &[PathBuf], k: usize) -> Result<Vec<Ranked>> {
        paths.iter().map(|path| Ok(Ranked::new(path, &self.probabilities(path)?, &self.classes, k))).collect()
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

/// The classifier and model card that `tlab run` saved in `dir`
/// (model.json + model.safetensors).
pub fn load_run_model(dir: &Path) -> Result<(Classifier, ModelCard)> {
    let card_path = dir.join("model.json");
    if !card_path.is_file() {
        return Err(Error::data(
            dir,
            "no model.json: not a run directory with a trained model (did the run finish its backbone step?)",
        ));
    }
    let text = std::fs::read_to_string(&card_path).map_err(|e| Error::io(&card_path, e))?;
    let card: ModelCard =
        serde_json::from_str(&text).map_err(|e| Error::data(&card_path, format!("invalid model card: {e}")))?;
    let weights = dir.join("model.safetensors");
    let mut p = ParamLoader::from_tensors(weights.display().to_string(), crate::formats::weights::load(&weights)?);
    let backbone = models::build_backbone(&card.backbone, &mut p, false)?;
    let head_cfg = card.head.to_config()?;
    let in_features = models::head_inputs(backbone.as_ref(), head_cfg.pooling, card.image_size)?;
    let head = Head::load(&head_cfg, in_features, card.classes.len(), &mut p)?;
    p.finish(true, None)?;
    Ok((Classifier::new(backbone, head), card))
}

/// The class of an image file from its folder (`…/<class>/<file>`), when
/// that folder is one of `classes`.
pub(crate) fn class_of(path: &Path, classes: &[String]) -> Option<usize> {
    let folder = path.parent()?.file_name()?;
    classes.iter().position(|c| c.as_str() == folder)
}

/// Image files to classify from the command line's paths: files as given,
/// folders searched recursively for images (sorted). With the label of each
/// file when a folder has one sub-folder per class of `classes` (the truth,
/// for accuracy), else `None`.
pub fn expand_inputs(paths: &[PathBuf], classes: &[String]) -> Result<Vec<(PathBuf, Option<usize>)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files = Vec::new();
            collect_images(path, &mut files)?;
            files.sort();
            if files.is_empty() {
                return Err(Error::data(path, "no image files in this folder"));
            }
            for f in files {
                // The class is the first folder below `path`.
                let label = f
                    .strip_prefix(path)
                    .ok()
                    .and_then(|rel| rel.components().next())
                    .filter(|_| f.parent() != Some(path.as_path()))
                    .and_then(|c| classes.iter().position(|k| k.as_str() == c.as_os_str()));
                out.push((f, label));
            }
        } else if path.is_file() {
            out.push((path.clone(), None));
        } else {
            return Err(Error::data(path, "no such file or folder"));
        }
    }
    Ok(out)
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if crate::data::is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads the model card back from a tlab `.onnx` file (its metadata), or
/// says why the file is not one.
pub(crate) fn card_of_onnx(path: &Path) -> Result<ModelCard> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = crate::formats::onnx::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::data(path, format!("not an ONNX model: {e}")))?;
    let card = model.metadata_props.iter().find(|p| p.key == "tlab.model_card").ok_or_else(|| {
        Error::data(path, "an ONNX model, but not one exported by tlab (no tlab.model_card metadata)")
    })?;
    serde_json::from_str(&card.value).map_err(|e| Error::data(path, format!("invalid tlab.model_card: {e}")))
}
