//! ResNet-18/34/50/101/152 and Wide ResNet-50-2, as in torchvision (v1.5: the
//! bottleneck strides in its 3×3 convolution).
//!
//! He et al., "Deep Residual Learning for Image Recognition", CVPR 2016,
//! <https://arxiv.org/abs/1512.03385>.
//!
//! Parameter names equal torchvision's state-dict keys (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer1.0.downsample.0/1`, …, `fc`), which timm's
//! `resnet*.a1_in1k` checkpoints share, so both load unchanged. The freeze
//! points are `stem` (conv1 + bn1 + ReLU + max-pool) and `layer1` … `layer4`.

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::layers::{Act, ConvBnAct, ConvSpec, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::{maxpool, Padding};

const BN_EPS: f64 = 1e-5;

/// The residual unit of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 → 1×1 with 4× expansion (ResNet-50 and deeper).
    Bottleneck,
}

impl Unit {
    fn expansion(self) -> usize {
        match self {
            Unit::Basic => 1,
            Unit::Bottleneck => 4,
        }
    }
}

/// One residual block: its convolutions (the last without activation) and
/// the projection shortcut when the shape changes.
struct ResBlock {
    convs: Vec<ConvBnAct>,
    downsample: Option<ConvBnAct>,
}

impl ResBlock {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y, mode)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, mode)?,
            None => x.clone(),
        };
        Ok((y + shortcut)?.relu()?)
    }

    fn layers(&self) -> impl Iterator<Item = &ConvBnAct> {
        self.convs.iter().chain(self.downsample.as_ref())
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut ConvBnAct> {
        self.convs.iter_mut().chain(self.downsample.as_mut())
    }
}

pub struct ResNet {
    arch: &'static str,
    stem: ConvBnAct,
    /// `layer1` … `layer4`.
    stages: Vec<Vec<ResBlock>>,
    feature_channels: usize,
    fc: Option<Linear>,
}

fn conv(cin: usize, cout: usize, kernel: usize, stride: usize) -> ConvSpec {
    ConvSpec { cin, cout, kernel: (kernel, kernel), stride, pad: Padding::same(kernel / 2), groups: 1 }
}

impl ResNet {
    /// Builds `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152` or
    /// `wide_resnet50_2`; `None` for another name.
    /// `with_classifier` also loads the ImageNet `fc` (→ 1000).
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        // Wide ResNet-50-2 (Zagoruyko & Komodakis 2016) doubles the
        // bottleneck's inner width; its output channels stay 4 × 64·2^s.
        let (arch, unit, depths, inner): (&'static str, Unit, [usize; 4], usize) = match arch {
            "resnet18" => ("resnet18", Unit::Basic, [2, 2, 2, 2], 1),
            "resnet34" => ("resnet34", Unit::Basic, [3, 4, 6, 3], 1),
            "resnet50" => ("resnet50", Unit::Bottleneck, [3, 4, 6, 3], 1),
            "resnet101" => ("resnet101", Unit::Bottleneck, [3, 4, 23, 3], 1),
            "resnet152" => ("resnet152", Unit::Bottleneck, [3, 8, 36, 3], 1),
            "wide_resnet50_2" => ("wide_resnet50_2", Unit::Bottleneck, [3, 4, 6, 3], 2),
            _ => return Ok(None),
        };
        let stem = ConvBnAct::load(p, "conv1", "bn1", conv(3, 64, 7, 2), BN_EPS, Act::Relu)?;
        let mut cin = 64;
        let mut stages = Vec::with_capacity(4);
        for (s, &depth) in depths.iter().enumerate() {
            let cout = (64 << s) * unit.expansion();
            let width = (64 << s) * inner;
            let mut blocks = Vec::with_capacity(depth);
            for b in 0..depth {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let pre = format!("layer{}.{b}", s + 1);
                let unit_conv = |p: &mut ParamLoader, i: usize, spec: ConvSpec, act: Act| {
                    ConvBnAct::load(p, &format!("{pre}.conv{i}"), &format!("{pre}.bn{i}"), spec, BN_EPS, act)
                };
                let convs = match unit {
                    Unit::Basic => vec![
                        unit_conv(p, 1, conv(cin, width, 3, stride), Act::Relu)?,
                        unit_conv(p, 2, conv(width, width, 3, 1), Act::None)?,
                    ],
                    Unit::Bottleneck => vec![
                        unit_conv(p, 1, conv(cin, width, 1, 1), Act::Relu)?,
                        unit_conv(p, 2, conv(width, width, 3, stride), Act::Relu)?,
                        unit_conv(p, 3, conv(width, cout, 1, 1), Act::None)?,
                    ],
                };
                let downsample = if stride != 1 || cin != cout {
                    Some(ConvBnAct::load(
                        p,
                        &format!("{pre}.downsample.0"),
                        &format!("{pre}.downsample.1"),
                        conv(cin, cout, 1, stride),
                        BN_EPS,
                        Act::None,
                    )?)
                } else {
                    None
                };
                blocks.push(ResBlock { convs, downsample });
                cin = cout;
            }
            stages.push(blocks);
        }
        let fc = if with_classifier { Some(Linear::load(p, "fc", cin, 1000)?) } else { None };
        Ok(Some(ResNet { arch, stem, stages, feature_channels: cin, fc }))
    }
}

impl Backbone for ResNet {
    fn arch(&self) -> &'static str {
        self.arch
    }

    fn block_names(&self) -> Vec<String> {
        std::iter::once("stem".to_owned()).chain((1..=self.stages.len()).map(|i| format!("layer{i}"))).collect()
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for b in range {
            if b == 0 {
                y = self.stem.forward(&y, mode)?;
                y = maxpool::max_pool2d(&y, 3, 2, Padding::same(1))?;
            } else {
                for block in &self.stages[b - 1] {
                    y = block.forward(&y, mode)?;
                }
            }
        }
        Ok(y)
    }

    fn feature_channels(&self) -> usize {
        self.feature_channels
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let y = self.stem.export_onnx(g, &x)?;
        let mut y = g.max_pool(&y, 3, 2, Padding::same(1));
        for block in self.stages.iter().flatten() {
            let input = y.clone();
            for c in &block.convs {
                y = c.export_onnx(g, &y)?;
            }
            let shortcut = match &block.downsample {
                Some(d) => d.export_onnx(g, &input)?,
                None => input,
            };
            let sum = g.add(&y, &shortcut);
            y = g.relu(&sum);
        }
        Ok(y)
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        if block == 0 {
            return self.stem.set_freeze(freeze);
        }
        for layer in self.stages[block - 1].iter_mut().flat_map(ResBlock::layers_mut) {
            layer.set_freeze(freeze)?;
        }
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        self.stem.trainable_vars(out);
        for layer in self.stages.iter().flatten().flat_map(ResBlock::layers) {
            layer.trainable_vars(out);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        self.stem.named_vars(out);
        for layer in self.stages.iter().flatten().flat_map(ResBlock::layers) {
            layer.named_vars(out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        match block {
            0 => self.stem.named_vars(out),
            b => {
                for layer in self.stages.get(b - 1).into_iter().flatten().flat_map(ResBlock::layers) {
                    layer.named_vars(out);
                }
            }
        }
    }

    fn imagenet_classifier(&self) -> Option<&Linear> {
        self.fc.as_ref()
    }

    fn classifier_prefix(&self) -> &'static str {
        "fc."
    }

    fn preprocess(&self) -> Preprocess {
        Preprocess::imagenet_torchvision(224)
    }
}
