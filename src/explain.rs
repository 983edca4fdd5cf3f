//! Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep
//! Networks via Gradient-based Localization", ICCV 2017): where in the image
//! the evidence for a class lies, for every architecture tlab trains.
//!
//! The activations `A` of one block (by default the last, i.e. the feature
//! map the head pools) become a leaf of the autograd graph; the rest of the
//! network runs from them, and the class score's gradient gives each
//! channel a weight `α_k = mean over the map of ∂y/∂A_k`. The map is
//! `ReLU(Σ_k α_k A_k)`, scaled to [0, 1] and resized to the image.

use candle_core::{Tensor, Var, D};
use image::{Rgb, RgbImage};

use crate::augment::Rng;
use crate::error::{Error, Result};
use crate::models::layers::Mode;
use crate::models::Classifier;

/// A Grad-CAM heat-map: `h × w` values in [0, 1], row-major, at the chosen
/// block's resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

impl Heatmap {
    /// The cell with the largest value, as `(x, y)` at the map's resolution.
    pub fn peak(&self) -> (usize, usize) {
        let i = self.values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
        (i % self.width.max(1), i / self.width.max(1))
    }

    /// `image` with the map laid over it in a blue → red colour scale,
    /// bilinearly resized to the image, strongest where the map is.
    pub fn overlay(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let small = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(
            self.width as u32,
            self.height as u32,
            self.values.clone(),
        );
        let Some(small) = small else { return image.clone() };
        let big = image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle);
        let mut out = image.clone();
        for (x, y, p) in out.enumerate_pixels_mut() {
            let v = big.get_pixel(x, y).0[0].clamp(0.0, 1.0);
            let heat = colour(v);
            let a = 0.25 + 0.35 * v;
            for k in 0..3 {
                p.0[k] = (f32::from(p.0[k]) * (1.0 - a) + f32::from(heat.0[k]) * a).round() as u8;
            }
        }
        out
    }
}

/// A blue → cyan → yellow → red scale (like matplotlib's "jet", softened).
fn colour(v: f32) -> Rgb<u8> {
    let stops = [
        (0.0, [40.0, 60.0, 190.0]),
        (0.35, [40.0, 200.0, 220.0]),
        (0.65, [250.0, 220.0, 40.0]),
        (1.0, [220.0, 30.0, 30.0]),
    ];
    let mut out = stops[0].1;
    for pair in stops.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if v >= a && v <= b {
            let t = (v - a) / (b - a);
            out = [ca[0] + (cb[0] - ca[0]) * t, ca[1] + (cb[1] - ca[1]) * t, ca[2] + (cb[2] - ca[2]) * t];
        }
    }
    Rgb([out[0] as u8, out[1] as u8, out[2] as u8])
}

/// The last block (1-based count of blocks run) among the backbone's
/// [`cam_blocks`](crate::models::Backbone::cam_blocks) whose output map is
/// at least 2×2 (a Vision Transformer's patch grid counts), with that
/// output: a 1×1 map (Inception v3 at 96 px, ConvNeXt at 32 px) weighs
/// every channel by one number and can only colour the whole image. When
/// every map is 1×1, the last block.
fn last_spatial_block(model: &Classifier, x: &Tensor, mode: Mode) -> Result<(usize, Tensor)> {
    let blocks = model.backbone.num_blocks();
    let mut y = x.clone();
    let mut best = None;
    for b in 0..model.backbone.cam_blocks().min(blocks) {
        y = model.backbone.forward_blocks(&y, b..b + 1, mode)?.detach();
        let Some(map) = model.backbone.spatial_map(&y)? else { continue };
        let (_, _, h, w) = map.dims4()?;
        if h.min(w) >= 2 {
            best = Some((b + 1, y.clone()));
        }
    }
    match best {
        Some(found) => Ok(found),
        None => Ok((blocks, model.backbone.forward_blocks(x, 0..blocks, mode)?.detach())),
    }
}

/// The Grad-CAM map of class `class` for the input `x` (`[1, 3, s, s]`,
/// normalised), taken at the output of block `layer` (`None`: the last
/// block whose map is at least 2×2). The model is used in inference mode;
/// gradients flow back through frozen blocks too (their fused kernels step
/// aside when the input is tracked).
pub fn grad_cam(model: &Classifier, x: &Tensor, class: usize, layer: Option<usize>) -> Result<Heatmap> {
    let blocks = model.backbone.num_blocks();
    let mode = Mode::EVAL;
    let (layer, acts) = match layer {
        Some(layer) if layer == 0 || layer > blocks => {
            return Err(Error::NoSuchBlock { what: "Grad-CAM layer", block: layer, blocks })
        }
        Some(layer) => (layer, model.backbone.forward_blocks(x, 0..layer, mode)?.detach()),
        None => last_spatial_block(model, x, mode)?,
    };
    let leaf = Var::from_tensor(&acts)?;
    let logits = model.forward_from(leaf.as_tensor(), layer, mode, &mut Rng::new(0))?;
    let classes = logits.dim(1)?;
    if class >= classes {
        return Err(Error::NoSuchClass { class, classes });
    }
    let score = logits.narrow(1, class, 1)?.sum_all()?;
    let grads = score.backward()?;
    let grad = grads.get(leaf.as_tensor()).ok_or_else(|| Error::GradCam("no gradient reached the chosen block"))?;
    // A Vision Transformer's tokens become their grid here, after the
    // gradient is taken with respect to them.
    let no_map = || Error::GradCam("the chosen block's output has no spatial layout");
    let acts = model.backbone.spatial_map(&acts)?.ok_or_else(no_map)?;
    let grad = model.backbone.spatial_map(grad)?.ok_or_else(no_map)?;
    let (_, _, h, w) = acts.dims4()?;
    // α_k: the gradient averaged over the map, one weight per channel.
    let alpha = grad.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
    let cam = acts.broadcast_mul(&alpha)?.sum_keepdim(1)?.relu()?.reshape((h, w))?;
    let values = cam.flatten_all()?.to_vec1::<f32>()?;
    let max = values.iter().copied().fold(0.0f32, f32::max);
    let values = if max > 0.0 { values.iter().map(|v| v / max).collect() } else { values };
    Ok(Heatmap { width: w, height: h, values })
}

/// An image explained: the picture (the image, then the Grad-CAM overlay
/// for the predicted class, then for the true class when it differs) and
/// the prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub picture: RgbImage,
    pub predicted: usize,
    pub confidence: f32,
    /// The true class, when the caller knew it.
    pub truth: Option<usize>,
    /// The peak of the predicted class's map, at the map's resolution.
    pub peak: (usize, usize),
    pub map: Heatmap,
}

/// Explains one square image given as RGB bytes (as the data set decodes
/// them): predicts it, and draws Grad-CAM at the output of block `layer`
/// (`None`: the last with a spatial map) for the predicted class and, if
/// `truth` is known and differs, for the true class.
pub fn explain_pixels(
    model: &Classifier,
    preprocess: &crate::models::Preprocess,
    pixels: &[u8],
    classes: &[String],
    truth: Option<usize>,
    layer: Option<usize>,
) -> Result<Explanation> {
    let s = ((pixels.len() / 3) as f64).sqrt().round() as usize;
    if s * s * 3 != pixels.len() {
        return Err(Error::GradCam("the pixels are not a square RGB image"));
    }
    let size = s as u32;
    let as_f32: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
    let x = preprocess.to_tensor(&as_f32, 1, s, s)?;
    let logits = model.forward_from(&x, 0, Mode::EVAL, &mut Rng::new(0))?;
    let probs = crate::metrics::softmax_rows(&logits.flatten_all()?.to_vec1::<f32>()?, classes.len());
    let predicted = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    let image = RgbImage::from_raw(size, size, pixels.to_vec())
        .ok_or_else(|| Error::GradCam("the pixels do not match the image size"))?;
    let map = grad_cam(model, &x, predicted, layer)?;
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| format!("#{i}")).replace('_', " ");
    // A map of zeros: nothing in the image speaks for that class (said on a
    // second caption line, so the first keeps the class readable).
    let caption = |head: String, colour: Rgb<u8>, map: &Heatmap| {
        let mut lines = vec![(head, colour)];
        if map.values.iter().all(|v| *v == 0.0) {
            lines.push(("no positive evidence".to_string(), GREY));
        }
        lines
    };
    let mut tiles: Vec<crate::util::draw::Captioned> = vec![(image.clone(), vec![("image".into(), DARK)])];
    let head = format!("pred {} {:.2}", name(predicted), probs[predicted]);
    tiles.push((map.overlay(&image), caption(head, RED, &map)));
    if let Some(t) = truth.filter(|&t| t != predicted && t < classes.len()) {
        let true_map = grad_cam(model, &x, t, layer)?;
        let head = format!("true {} {:.2}", name(t), probs[t]);
        tiles.push((true_map.overlay(&image), caption(head, DARK, &true_map)));
    }
    let picture = crate::util::draw::gallery(&tiles, tiles.len(), 160);
    Ok(Explanation { picture, predicted, confidence: probs[predicted], truth, peak: map.peak(), map })
}

/// `tlab explain`: one image file explained by the model of a run
/// (`Predictor::from_run_dir_for_gradients`), at the block named `layer`
/// (`None`: the last with a spatial map); the true class from the image's
/// folder when it names one of the model's classes.
pub fn explain_file(
    predictor: &crate::predict::Predictor,
    path: &std::path::Path,
    layer: Option<&str>,
) -> Result<Explanation> {
    let model = predictor.classifier().ok_or(Error::GradCam("an ONNX model has no gradients; give a run directory"))?;
    let layer = match layer {
        Some(name) => Some(crate::models::block_position("--layer", &model.backbone.block_names(), name)? + 1),
        None => None,
    };
    let (size, preprocess) = predictor.input_spec();
    let pixels = crate::data::decode(path, size).map_err(|e| Error::data(path, e))?;
    let truth = crate::predict::class_of(path, predictor.classes());
    explain_pixels(model, preprocess, &pixels, predictor.classes(), truth, layer)
}

const DARK: Rgb<u8> = Rgb([30, 30, 30]);
const RED: Rgb<u8> = Rgb([200, 0, 0]);
const GREY: Rgb<u8> = Rgb([110, 110, 110]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_layer_is_the_last_with_a_spatial_map() {
        use crate::models::layers::ParamLoader;
        use crate::recipe::{HeadConfig, Pooling};
        // Inception v3 at 96 px: Mixed_6e's map is 4×4, Mixed_7a's on 1×1.
        let backbone = crate::models::build_backbone("inception_v3", &mut ParamLoader::random(5), false).unwrap();
        let cfg = HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.0, batchnorm: false };
        let head = crate::models::Head::new(&cfg, backbone.feature_channels(), 3, 0).unwrap();
        let mut model = Classifier::new(backbone, head);
        // Every block frozen (BatchNorm folded), as a run's model is after a
        // head-only recipe: gradients must still reach the chosen block.
        model.freeze(16, false).unwrap();
        let x = crate::kernels::testing::randn(0f32, 1.0, (1, 3, 96, 96)).unwrap();
        let map = grad_cam(&model, &x, 1, None).unwrap();
        assert_eq!((map.width, map.height), (4, 4));
        let last = grad_cam(&model, &x, 1, Some(16)).unwrap();
        assert_eq!((last.width, last.height), (1, 1));
    }

    #[test]
    fn a_vision_transformer_is_explained_on_the_patches_entering_its_last_block() {
        use crate::models::layers::ParamLoader;
        use crate::recipe::{HeadConfig, Pooling};
        let backbone =
            crate::models::build_backbone("deit_small_patch16_224", &mut ParamLoader::random(5), false).unwrap();
        let cfg = HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.0, batchnorm: false };
        let head = crate::models::Head::new(&cfg, backbone.feature_channels(), 3, 0).unwrap();
        let mut model = Classifier::new(backbone, head);
        model.freeze(14, false).unwrap();
        let x = crate::kernels::testing::randn(0f32, 1.0, (1, 3, 64, 64)).unwrap();
        // The default: the 4 × 4 patch grid out of blocks.10, which the last
        // block's attention reads, so the map has evidence somewhere.
        let map = grad_cam(&model, &x, 1, None).unwrap();
        assert_eq!((map.width, map.height), (4, 4));
        assert!(map.values.iter().any(|&v| v > 0.0), "{:?}", map.values);
        // blocks.11's patch tokens feed nothing: no gradient, an empty map.
        let last = grad_cam(&model, &x, 1, Some(13)).unwrap();
        assert!(last.values.iter().all(|&v| v == 0.0), "{:?}", last.values);
    }

    #[test]
    fn peak_and_overlay() {
        let map = Heatmap { width: 3, height: 2, values: vec![0.0, 0.1, 0.2, 0.3, 1.0, 0.5] };
        assert_eq!(map.peak(), (1, 1));
        let img = RgbImage::from_pixel(30, 20, Rgb([128, 128, 128]));
        let over = map.overlay(&img);
        assert_eq!(over.dimensions(), (30, 20));
        // Hot where the map peaks (red), cool in the corner (blue).
        let hot = over.get_pixel(15, 15);
        let cold = over.get_pixel(0, 0);
        assert!(hot.0[0] > hot.0[2] && cold.0[2] > cold.0[0], "{hot:?} {cold:?}");
    }
}
