//! MobileNetV3-Large and -Small, as in torchvision.
//!
//! Howard et al., "Searching for MobileNetV3", ICCV 2019,
//! <https://arxiv.org/abs/1905.02244>.
//!
//! Parameter names equal torchvision's state-dict keys (`features.N.block.K…`,
//! `classifier.0`, `classifier.3`), so `mobilenet_v3_large-8738ca79.pth` and
//! `mobilenet_v3_small-047dcff4.pth` load unchanged. Each `features.N` is a
//! freeze point: the stem, the inverted-residual blocks (expand 1×1,
//! depthwise, squeeze-and-excitation with a hard-sigmoid gate where the paper
//! has it, project 1×1; ReLU or hard-swish), and the last 1×1 convolution.
//! BatchNorm eps is 1e-3, as torchvision sets it.

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::blocks::{InvertedResidual, SqueezeExcite};
use super::layers::{self, Act, ConvBnAct, ConvSpec, DropPath, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::Padding;

const BN_EPS: f64 = 1e-3;

/// One inverted-residual block of the paper's tables 1 and 2: input,
/// kernel, expanded and output channels, squeeze-and-excitation,
/// hard-swish (else ReLU), stride.
type Setting = (usize, usize, usize, usize, bool, bool, usize);

const LARGE: [Setting; 15] = [
    (16, 3, 16, 16, false, false, 1),
    (16, 3, 64, 24, false, false, 2),
    (24, 3, 72, 24, false, false, 1),
    (24, 5, 72, 40, true, false, 2),
    (40, 5, 120, 40, true, false, 1),
    (40, 5, 120, 40, true, false, 1),
    (40, 3, 240, 80, false, true, 2),
    (80, 3, 200, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 480, 112, true, true, 1),
    (112, 3, 672, 112, true, true, 1),
    (112, 5, 672, 160, true, true, 2),
    (160, 5, 960, 160, true, true, 1),
    (160, 5, 960, 160, true, true, 1),
];

const SMALL: [Setting; 11] = [
    (16, 3, 16, 16, true, false, 2),
    (16, 3, 72, 24, false, false, 2),
    (24, 3, 88, 24, false, false, 1),
    (24, 5, 96, 40, true, true, 2),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 120, 48, true, true, 1),
    (48, 5, 144, 48, true, true, 1),
    (48, 5, 288, 96, true, true, 2),
    (96, 5, 576, 96, true, true, 1),
    (96, 5, 576, 96, true, true, 1),
];

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, never
/// below 90 % of `v`.
fn make_divisible(v: usize) -> usize {
    let rounded = ((v + 4) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v as f64 {
        rounded + 8
    } else {
        rounded
    }
}

pub struct MobileNetV3 {
    arch: &'static str,
    blocks: Vec<InvertedResidual>,
    feature_channels: usize,
    /// `classifier.0` (→ 1280 or 1024, hard-swish, dropout) and `classifier.3` (→ 1000).
    classifier: Option<(Linear, Linear)>,
}

fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> ConvSpec {
    ConvSpec { cin, cout, kernel: (kernel, kernel), stride, pad: Padding::same((kernel - 1) / 2), groups }
}

/// `features.{idx}`'s inverted residual: `block.K.0`/`block.K.1` for each
/// conv unit and `block.K.fc1`/`fc2` for SE, K counting only what is there.
fn inverted_residual(p: &mut ParamLoader, idx: usize, s: Setting) -> Result<InvertedResidual> {
    let (cin, k, exp, cout, use_se, hard_swish, stride) = s;
    let act = if hard_swish { Act::Hardswish } else { Act::Relu };
    let unit = |p: &mut ParamLoader, at: usize, spec: ConvSpec, act: Act| {
        let pre = format!("features.{idx}.block.{at}");
        ConvBnAct::load(p, &format!("{pre}.0"), &format!("{pre}.1"), spec, BN_EPS, act)
    };
    let mut convs = Vec::new();
    if exp != cin {
        convs.push(unit(p, 0, conv(cin, exp, 1, 1, 1), act)?);
    }
    convs.push(unit(p, convs.len(), conv(exp, exp, k, stride, exp), act)?);
    let se = match use_se {
        true => {
            let prefix = format!("features.{idx}.block.{}", convs.len());
            Some(SqueezeExcite::load(p, &prefix, (exp, make_divisible(exp / 4)), (Act::Relu, Act::Hardsigmoid))?)
        }
        false => None,
    };
    let at = convs.len() + usize::from(use_se);
    let project = unit(p, at, conv(exp, cout, 1, 1, 1), Act::None)?;
    let residual = stride == 1 && cin == cout;
    Ok(InvertedResidual { head: convs, se, tail: vec![project], residual, drop: DropPath::NONE })
}

impl MobileNetV3 {
    /// Builds `mobilenet_v3_large` or `mobilenet_v3_small`; `None` for
    /// another name. `with_classifier` also loads the ImageNet classifier.
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        let (arch, settings, last_channel): (&'static str, &[Setting], usize) = match arch {
            "mobilenet_v3_large" => ("mobilenet_v3_large", &LARGE, 1280),
            "mobilenet_v3_small" => ("mobilenet_v3_small", &SMALL, 1024),
            _ => return Ok(None),
        };
        let stem = ConvBnAct::load(p, "features.0.0", "features.0.1", conv(3, 16, 3, 2, 1), BN_EPS, Act::Hardswish)?;
        let mut blocks = vec![InvertedResidual::single(stem)];
        for &s in settings {
            let idx = blocks.len();
            blocks.push(inverted_residual(p, idx, s)?);
        }
        let last_in = settings[settings.len() - 1].3;
        let features = 6 * last_in;
        let idx = blocks.len();
        let last = ConvBnAct::load(
            p,
            &format!("features.{idx}.0"),
            &format!("features.{idx}.1"),
            conv(last_in, features, 1, 1, 1),
            BN_EPS,
            Act::Hardswish,
        )?;
        blocks.push(InvertedResidual::single(last));
        let classifier = if with_classifier {
            Some((
                Linear::load(p, "classifier.0", features, last_channel)?,
                Linear::load(p, "classifier.3", last_channel, 1000)?,
            ))
        } else {
            None
        };
        Ok(Some(MobileNetV3 { arch, blocks, feature_channels: features, classifier }))
    }
}

impl Backbone for MobileNetV3 {
    fn arch(&self) -> &'static str {
        self.arch
    }

    fn block_names(&self) -> Vec<String> {
        (0..self.blocks.len()).map(|i| format!("features.{i}")).collect()
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for block in &self.blocks[range] {
            y = block.forward(&y, mode)?;
        }
        Ok(y)
    }

    fn feature_channels(&self) -> usize {
        self.feature_channels
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        self.blocks.iter().try_fold(x, |y, b| b.export_onnx(g, y))
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        self.blocks[block].set_freeze(freeze)
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        for b in &self.blocks {
            b.trainable_vars(out);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for b in &self.blocks {
            b.named_vars(out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        if let Some(b) = self.blocks.get(block) {
            b.named_vars(out);
        }
    }

    /// None: the ImageNet classifier has two layers (see `imagenet_logits`).
    fn imagenet_classifier(&self) -> Option<&Linear> {
        None
    }

    fn imagenet_logits(&self, features: &Tensor) -> Result<Option<Tensor>> {
        let Some((fc0, fc3)) = &self.classifier else { return Ok(None) };
        // Dropout (classifier.2) is the identity at inference.
        let x = Act::Hardswish.apply(&fc0.forward(&layers::global_avg_pool(features)?)?)?;
        Ok(Some(fc3.forward(&x)?))
    }

    fn imagenet_outputs(&self) -> Option<usize> {
        self.classifier.as_ref().map(|(_, fc3)| fc3.out_features())
    }

    fn classifier_prefix(&self) -> &'static str {
        "classifier."
    }

    fn preprocess(&self) -> Preprocess {
        Preprocess::imagenet_torchvision(224)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn make_divisible_rounds_as_torchvision_does() {
        // The squeeze widths of MobileNetV3-Large's SE blocks (expanded / 4).
        assert_eq!([72, 120, 480, 672, 960].map(|c| make_divisible(c / 4)), [24, 32, 120, 168, 240]);
        assert_eq!(make_divisible(4), 8);
    }

    #[test]
    fn hard_activations_match_their_definitions_and_train() {
        let x = candle_core::Var::new(&[-4f32, -3.0, -1.5, 0.0, 1.0, 3.0, 5.0], &Device::Cpu).unwrap();
        let hs = Act::Hardswish.apply(x.as_tensor()).unwrap();
        let want: Vec<f32> =
            [-4f32, -3.0, -1.5, 0.0, 1.0, 3.0, 5.0].iter().map(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0).collect();
        assert_eq!(hs.to_vec1::<f32>().unwrap(), want);
        let g = hs.sum_all().unwrap().backward().unwrap();
        let grad = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // d/dx x·(x+3)/6 = (2x+3)/6 inside (−3, 3); 0 below, 1 above.
        assert_eq!(grad[0], 0.0);
        assert!((grad[2] - 0.0).abs() < 1e-6 && (grad[4] - 5.0 / 6.0).abs() < 1e-6 && grad[6] == 1.0, "{grad:?}");
    }

    #[test]
    fn every_trainable_tensor_gets_a_gradient() {
        for arch in ["mobilenet_v3_large", "mobilenet_v3_small"] {
            let mut net = MobileNetV3::load(arch, &mut ParamLoader::random(2), false).unwrap().unwrap();
            let n = net.num_blocks();
            for b in 0..n {
                net.set_block_freeze(b, Freeze { frozen: false, train_bn: false }).unwrap();
            }
            let x = crate::kernels::testing::randn(0f32, 1.0, (2, 3, 32, 32)).unwrap();
            let y = net.forward_blocks(&x, 0..n, Mode::train(0)).unwrap();
            assert_eq!(y.dim(1).unwrap(), net.feature_channels());
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let mut vars = Vec::new();
            net.trainable_vars(&mut vars);
            assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()), "{arch}");
        }
    }
}
