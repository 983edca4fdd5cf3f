//! EfficientNet-B0 … B3 and EfficientNetV2-S, as in torchvision.
//!
//! Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
//! Networks", ICML 2019, <https://arxiv.org/abs/1905.11946>; Tan & Le,
//! "EfficientNetV2: Smaller Models and Faster Training", ICML 2021,
//! <https://arxiv.org/abs/2104.00298>.
//!
//! Parameter names equal torchvision's state-dict keys
//! (`features.S.I.block.K…`, `classifier.1`), so its
//! `efficientnet_b0_rwightman-7f5810bc.pth` … and
//! `efficientnet_v2_s-dd5fe13b.pth` load unchanged. The freeze points are
//! torchvision's `features.N`: the stem, each stage of blocks, and the last
//! 1×1 convolution. MBConv: expand 1×1, depthwise, squeeze-and-excitation
//! (SiLU, sigmoid gate, `input / 4` wide), project 1×1; V2's FusedMBConv
//! replaces expand + depthwise with one full convolution and has no SE. SiLU
//! throughout. BatchNorm eps is 1e-5 for B0–B3 and 1e-3 for V2, as
//! torchvision sets it. With a backbone `drop_path` a residual branch is
//! dropped per image while training (torchvision's stochastic depth,
//! `rate · i / n` for block `i` of `n`).

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::blocks::{InvertedResidual, SqueezeExcite};
use super::layers::{Act, ConvBnAct, ConvSpec, DropPath, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::Padding;

/// A stage of the papers' tables: fused (V2's first stages), expand ratio,
/// kernel, first stride, input and output channels, blocks.
#[derive(Clone, Copy)]
struct Stage {
    fused: bool,
    expand: usize,
    kernel: usize,
    stride: usize,
    cin: usize,
    cout: usize,
    blocks: usize,
}

const fn mb(expand: usize, kernel: usize, stride: usize, cin: usize, cout: usize, blocks: usize) -> Stage {
    Stage { fused: false, expand, kernel, stride, cin, cout, blocks }
}

const fn fused(expand: usize, kernel: usize, stride: usize, cin: usize, cout: usize, blocks: usize) -> Stage {
    Stage { fused: true, expand, kernel, stride, cin, cout, blocks }
}

/// EfficientNet-B0's stages, scaled by width and depth for B1–B3.
const B0: [Stage; 7] = [
    mb(1, 3, 1, 32, 16, 1),
    mb(6, 3, 2, 16, 24, 2),
    mb(6, 5, 2, 24, 40, 2),
    mb(6, 3, 2, 40, 80, 3),
    mb(6, 5, 1, 80, 112, 3),
    mb(6, 5, 2, 112, 192, 4),
    mb(6, 3, 1, 192, 320, 1),
];

const V2_S: [Stage; 6] = [
    fused(1, 3, 1, 24, 24, 2),
    fused(4, 3, 2, 24, 48, 4),
    fused(4, 3, 2, 48, 64, 4),
    mb(4, 3, 2, 64, 128, 6),
    mb(6, 3, 1, 128, 160, 9),
    mb(6, 3, 2, 160, 256, 15),
];

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, never
/// below 90 % of `v`.
fn make_divisible(v: f64) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

/// A variant: its name, stages, width and depth multipliers, BatchNorm eps,
/// last convolution's channels (`None`: 4 × the last stage's), and its
/// ImageNet evaluation crop and resize.
struct Variant {
    arch: &'static str,
    stages: &'static [Stage],
    width: f64,
    depth: f64,
    eps: f64,
    last: Option<usize>,
    crop: u32,
    resize: u32,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        arch: "efficientnet_b0",
        stages: &B0,
        width: 1.0,
        depth: 1.0,
        eps: 1e-5,
        last: None,
        crop: 224,
        resize: 256,
    },
    Variant {
        arch: "efficientnet_b1",
        stages: &B0,
        width: 1.0,
        depth: 1.1,
        eps: 1e-5,
        last: None,
        crop: 240,
        resize: 255,
    },
    Variant {
        arch: "efficientnet_b2",
        stages: &B0,
        width: 1.1,
        depth: 1.2,
        eps: 1e-5,
        last: None,
        crop: 288,
        resize: 288,
    },
    Variant {
        arch: "efficientnet_b3",
        stages: &B0,
        width: 1.2,
        depth: 1.4,
        eps: 1e-5,
        last: None,
        crop: 300,
        resize: 320,
    },
    Variant {
        arch: "efficientnet_v2_s",
        stages: &V2_S,
        width: 1.0,
        depth: 1.0,
        eps: 1e-3,
        last: Some(1280),
        crop: 384,
        resize: 384,
    },
];

fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> ConvSpec {
    ConvSpec { cin, cout, kernel: (kernel, kernel), stride, pad: Padding::same((kernel - 1) / 2), groups }
}

/// Loads the units of `{prefix}.block.K`, K counting what is there.
struct Units<'a> {
    p: &'a mut ParamLoader,
    prefix: String,
    next: usize,
    eps: f64,
}

impl Units<'_> {
    fn conv(&mut self, spec: ConvSpec, act: Act) -> Result<ConvBnAct> {
        let pre = format!("{}.block.{}", self.prefix, self.next);
        self.next += 1;
        ConvBnAct::load(self.p, &format!("{pre}.0"), &format!("{pre}.1"), spec, self.eps, act)
    }

    fn se(&mut self, channels: usize, squeeze: usize) -> Result<SqueezeExcite> {
        let pre = format!("{}.block.{}", self.prefix, self.next);
        self.next += 1;
        SqueezeExcite::load(self.p, &pre, (channels, squeeze), (Act::Silu, Act::Sigmoid))
    }
}

/// One block of `stage` with input `cin` and stride `stride`.
fn block(u: &mut Units, stage: &Stage, cin: usize, cout: usize, stride: usize) -> Result<InvertedResidual> {
    let exp = make_divisible((cin * stage.expand) as f64);
    let k = stage.kernel;
    let residual = stride == 1 && cin == cout;
    if stage.fused {
        if exp == cin {
            let only = u.conv(conv(cin, cout, k, stride, 1), Act::Silu)?;
            return Ok(InvertedResidual {
                head: vec![only],
                se: None,
                tail: Vec::new(),
                residual,
                drop: DropPath::NONE,
            });
        }
        let expand = u.conv(conv(cin, exp, k, stride, 1), Act::Silu)?;
        let project = u.conv(conv(exp, cout, 1, 1, 1), Act::None)?;
        return Ok(InvertedResidual {
            head: vec![expand, project],
            se: None,
            tail: Vec::new(),
            residual,
            drop: DropPath::NONE,
        });
    }
    let mut head = Vec::new();
    if exp != cin {
        head.push(u.conv(conv(cin, exp, 1, 1, 1), Act::Silu)?);
    }
    head.push(u.conv(conv(exp, exp, k, stride, exp), Act::Silu)?);
    let se = Some(u.se(exp, (cin / 4).max(1))?);
    let tail = vec![u.conv(conv(exp, cout, 1, 1, 1), Act::None)?];
    Ok(InvertedResidual { head, se, tail, residual, drop: DropPath::NONE })
}

pub struct EfficientNet {
    variant: &'static Variant,
    stem: ConvBnAct,
    /// `features.1` … : the stages.
    stages: Vec<Vec<InvertedResidual>>,
    last: ConvBnAct,
    feature_channels: usize,
    classifier: Option<Linear>,
}

impl EfficientNet {
    /// Builds `efficientnet_b0` … `efficientnet_b3` or `efficientnet_v2_s`;
    /// `None` for another name. `with_classifier` also loads `classifier.1`.
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        let Some(variant) = VARIANTS.iter().find(|v| v.arch == arch) else { return Ok(None) };
        let width = |c: usize| make_divisible(c as f64 * variant.width);
        let first = width(variant.stages[0].cin);
        let stem = ConvBnAct::load(p, "features.0.0", "features.0.1", conv(3, first, 3, 2, 1), variant.eps, Act::Silu)?;
        let mut stages = Vec::new();
        for (s, stage) in variant.stages.iter().enumerate() {
            let (cin, cout) = (width(stage.cin), width(stage.cout));
            let n = (stage.blocks as f64 * variant.depth).ceil() as usize;
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let mut u = Units { p, prefix: format!("features.{}.{i}", s + 1), next: 0, eps: variant.eps };
                let (input, stride) = if i == 0 { (cin, stage.stride) } else { (cout, 1) };
                blocks.push(block(&mut u, stage, input, cout, stride)?);
            }
            stages.push(blocks);
        }
        let last_in = width(variant.stages[variant.stages.len() - 1].cout);
        let features = variant.last.unwrap_or(4 * last_in);
        let idx = stages.len() + 1;
        let last = ConvBnAct::load(
            p,
            &format!("features.{idx}.0"),
            &format!("features.{idx}.1"),
            conv(last_in, features, 1, 1, 1),
            variant.eps,
            Act::Silu,
        )?;
        let classifier = if with_classifier { Some(Linear::load(p, "classifier.1", features, 1000)?) } else { None };
        Ok(Some(EfficientNet { variant, stem, stages, last, feature_channels: features, classifier }))
    }
}

impl Backbone for EfficientNet {
    fn arch(&self) -> &'static str {
        self.variant.arch
    }

    fn block_names(&self) -> Vec<String> {
        (0..self.stages.len() + 2).map(|i| format!("features.{i}")).collect()
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for b in range {
            y = match b {
                0 => self.stem.forward(&y, mode)?,
                b if b <= self.stages.len() => {
                    let mut z = y;
                    for block in &self.stages[b - 1] {
                        z = block.forward(&z, mode)?;
                    }
                    z
                }
                _ => self.last.forward(&y, mode)?,
            };
        }
        Ok(y)
    }

    fn feature_channels(&self) -> usize {
        self.feature_channels
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let mut y = self.stem.export_onnx(g, &x)?;
        for block in self.stages.iter().flatten() {
            y = block.export_onnx(g, y)?;
        }
        self.last.export_onnx(g, &y)
    }

    /// torchvision's schedule: block `i` of `n` (counted over every stage)
    /// gets `rate · i / n`; a branch without a residual has none.
    fn set_drop_path(&mut self, rate: f32) {
        let n = self.stages.iter().map(Vec::len).sum::<usize>().max(1);
        for (i, block) in self.stages.iter_mut().flatten().enumerate() {
            block.drop = DropPath { rate: rate * i as f32 / n as f32, site: i as u64 };
        }
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        match block {
            0 => self.stem.set_freeze(freeze),
            b if b <= self.stages.len() => self.stages[b - 1].iter_mut().try_for_each(|m| m.set_freeze(freeze)),
            _ => self.last.set_freeze(freeze),
        }
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        self.stem.trainable_vars(out);
        for block in self.stages.iter().flatten() {
            block.trainable_vars(out);
        }
        self.last.trainable_vars(out);
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for b in 0..self.num_blocks() {
            self.block_vars(b, out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        match block {
            0 => self.stem.named_vars(out),
            b if b <= self.stages.len() => self.stages[b - 1].iter().for_each(|m| m.named_vars(out)),
            b if b == self.stages.len() + 1 => self.last.named_vars(out),
            _ => {}
        }
    }

    fn imagenet_classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }

    fn classifier_prefix(&self) -> &'static str {
        "classifier."
    }

    /// torchvision's evaluation transforms for the variant's weights (crop
    /// and resize; tlab resizes bilinearly where torchvision's B weights
    /// use bicubic).
    fn preprocess(&self) -> Preprocess {
        Preprocess { resize_size: self.variant.resize, ..Preprocess::imagenet_torchvision(self.variant.crop) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_depths_scale_as_torchvision_does() {
        // B2: 32 · 1.1 = 35.2 → 32; 1280 would be 4 · 352 = 1408 (B2's last conv).
        assert_eq!(make_divisible(35.2), 32);
        assert_eq!(make_divisible(320.0 * 1.1), 352);
        assert_eq!(make_divisible(24.0 * 1.2), 32);
    }

    #[test]
    fn every_variant_builds_and_every_trainable_tensor_gets_a_gradient() {
        for variant in &VARIANTS {
            let mut net = EfficientNet::load(variant.arch, &mut ParamLoader::random(3), false).unwrap().unwrap();
            let n = net.num_blocks();
            for b in 0..n {
                net.set_block_freeze(b, Freeze { frozen: b + 2 < n, train_bn: false }).unwrap();
            }
            let x = crate::kernels::testing::randn(0f32, 1.0, (2, 3, 32, 32)).unwrap();
            let y = net.forward_blocks(&x, 0..n, Mode::train(0)).unwrap();
            assert_eq!(y.dim(1).unwrap(), net.feature_channels(), "{}", variant.arch);
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let mut vars = Vec::new();
            net.trainable_vars(&mut vars);
            assert!(!vars.is_empty() && vars.iter().all(|v| grads.get(v.as_tensor()).is_some()), "{}", variant.arch);
        }
    }
}
