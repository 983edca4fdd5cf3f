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

use super::layers::{self, Act, Conv, ConvBnAct, ConvSpec, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::kernels::Padding;
use crate::onnx::{Graph, Value};

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

/// torchvision's `SqueezeExcitation` with MobileNetV3's hard-sigmoid gate:
/// `x · hardsigmoid(fc2(relu(fc1(avgpool(x)))))`, `fc1`/`fc2` 1×1
/// convolutions with biases.
struct SqueezeExcite {
    fc1: Conv,
    fc2: Conv,
}

impl SqueezeExcite {
    fn load(p: &mut ParamLoader, prefix: &str, channels: usize) -> Result<Self> {
        let squeeze = make_divisible(channels / 4);
        let spec = |cin, cout| ConvSpec { cin, cout, kernel: (1, 1), stride: 1, pad: Padding::default(), groups: 1 };
        Ok(SqueezeExcite {
            fc1: Conv::load(p, &format!("{prefix}.fc1"), spec(channels, squeeze), Act::Relu)?,
            fc2: Conv::load(p, &format!("{prefix}.fc2"), spec(squeeze, channels), Act::Hardsigmoid)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?;
        let gate = self.fc2.forward(&self.fc1.forward(&pooled)?)?;
        Ok(x.broadcast_mul(&gate)?)
    }

    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let pooled = g.global_avg_pool_keep(x);
        let hidden = self.fc1.export_onnx(g, &pooled)?;
        let gate = self.fc2.export_onnx(g, &hidden)?;
        Ok(g.mul(x, &gate))
    }
}

/// A `features.N` entry: expand (optional), depthwise, SE (optional),
/// project; the input added back when the shape allows.
struct Block {
    /// Expand and depthwise (or the stem / last convolution alone).
    convs: Vec<ConvBnAct>,
    se: Option<SqueezeExcite>,
    project: Option<ConvBnAct>,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y, mode)?;
        }
        if let Some(se) = &self.se {
            y = se.forward(&y)?;
        }
        if let Some(project) = &self.project {
            y = project.forward(&y, mode)?;
        }
        Ok(if self.residual { (y + x)? } else { y })
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.export_onnx(g, &y)?;
        }
        if let Some(se) = &self.se {
            y = se.export_onnx(g, &y)?;
        }
        if let Some(project) = &self.project {
            y = project.export_onnx(g, &y)?;
        }
        Ok(if self.residual { g.add(&y, &x) } else { y })
    }

    fn set_freeze(&mut self, freeze: Freeze) -> Result<()> {
        for c in self.convs.iter_mut().chain(self.project.as_mut()) {
            c.set_freeze(freeze)?;
        }
        if let Some(se) = &mut self.se {
            se.fc1.set_frozen(freeze.frozen);
            se.fc2.set_frozen(freeze.frozen);
        }
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        for c in self.convs.iter().chain(self.project.as_ref()) {
            c.trainable_vars(out);
        }
        if let Some(se) = &self.se {
            se.fc1.trainable_vars(out);
            se.fc2.trainable_vars(out);
        }
    }

    /// In the state dict's order: expand, depthwise, SE, project.
    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for c in &self.convs {
            c.named_vars(out);
        }
        if let Some(se) = &self.se {
            se.fc1.named_vars(out);
            se.fc2.named_vars(out);
        }
        if let Some(project) = &self.project {
            project.named_vars(out);
        }
    }
}

pub struct MobileNetV3 {
    arch: &'static str,
    blocks: Vec<Block>,
    feature_channels: usize,
    /// `classifier.0` (→ 1280 or 1024, hard-swish, dropout) and `classifier.3` (→ 1000).
    classifier: Option<(Linear, Linear)>,
}

fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> ConvSpec {
    ConvSpec { cin, cout, kernel: (kernel, kernel), stride, pad: Padding::same((kernel - 1) / 2), groups }
}

/// `features.{idx}`'s inverted residual: `block.K.0`/`block.K.1` for each
/// conv unit and `block.K.fc1`/`fc2` for SE, K counting only what is there.
fn inverted_residual(p: &mut ParamLoader, idx: usize, s: Setting) -> Result<Block> {
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
        true => Some(SqueezeExcite::load(p, &format!("features.{idx}.block.{}", convs.len()), exp)?),
        false => None,
    };
    let at = convs.len() + usize::from(use_se);
    let project = unit(p, at, conv(exp, cout, 1, 1, 1), Act::None)?;
    Ok(Block { convs, se, project: Some(project), residual: stride == 1 && cin == cout })
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
        let single = |convs| Block { convs, se: None, project: None, residual: false };
        let stem = ConvBnAct::load(p, "features.0.0", "features.0.1", conv(3, 16, 3, 2, 1), BN_EPS, Act::Hardswish)?;
        let mut blocks = vec![single(vec![stem])];
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
        blocks.push(single(vec![last]));
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
            let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
            let y = net.forward_blocks(&x, 0..n, Mode { training: true }).unwrap();
            assert_eq!(y.dim(1).unwrap(), net.feature_channels());
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let mut vars = Vec::new();
            net.trainable_vars(&mut vars);
            assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()), "{arch}");
        }
    }
}
