//! MobileNetV2, as in torchvision.
//!
//! Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
//! CVPR 2018, <https://arxiv.org/abs/1801.04381>.
//!
//! Parameter names equal torchvision's state-dict keys (`features.N…`,
//! `classifier.1`), so `mobilenet_v2-b0353104.pth` loads unchanged. Each of
//! `features.0` … `features.18` is a freeze point.

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::layers::{Act, ConvBnAct, ConvSpec, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::Padding;

const BN_EPS: f64 = 1e-5;

/// (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// One `features.N` entry: a list of conv units and whether the input is added back.
struct Block {
    layers: Vec<ConvBnAct>,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward(&y, mode)?;
        }
        Ok(if self.residual { (y + x)? } else { y })
    }
}

pub struct MobileNetV2 {
    blocks: Vec<Block>,
    classifier: Option<Linear>,
}

fn conv(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize) -> ConvSpec {
    ConvSpec { cin, cout, kernel: (kernel, kernel), stride, pad: Padding::same((kernel - 1) / 2), groups }
}

impl MobileNetV2 {
    /// Builds the network from `p`; `with_classifier` also loads the
    /// ImageNet `classifier.1` (1280 → 1000).
    pub fn load(p: &mut ParamLoader, with_classifier: bool) -> Result<Self> {
        let mut blocks = Vec::with_capacity(19);
        blocks.push(Block {
            layers: vec![ConvBnAct::load(p, "features.0.0", "features.0.1", conv(3, 32, 3, 2, 1), BN_EPS, Act::Relu6)?],
            residual: false,
        });
        let mut cin = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let idx = blocks.len();
                let stride = if i == 0 { s } else { 1 };
                let hidden = cin * t;
                let pre = format!("features.{idx}.conv");
                let mut layers = Vec::new();
                let mut j = 0;
                if t != 1 {
                    layers.push(ConvBnAct::load(
                        p,
                        &format!("{pre}.0.0"),
                        &format!("{pre}.0.1"),
                        conv(cin, hidden, 1, 1, 1),
                        BN_EPS,
                        Act::Relu6,
                    )?);
                    j = 1;
                }
                layers.push(ConvBnAct::load(
                    p,
                    &format!("{pre}.{j}.0"),
                    &format!("{pre}.{j}.1"),
                    conv(hidden, hidden, 3, stride, hidden),
                    BN_EPS,
                    Act::Relu6,
                )?);
                layers.push(ConvBnAct::load(
                    p,
                    &format!("{pre}.{}", j + 1),
                    &format!("{pre}.{}", j + 2),
                    conv(hidden, c, 1, 1, 1),
                    BN_EPS,
                    Act::None,
                )?);
                blocks.push(Block { layers, residual: stride == 1 && cin == c });
                cin = c;
            }
        }
        blocks.push(Block {
            layers: vec![ConvBnAct::load(
                p,
                "features.18.0",
                "features.18.1",
                conv(320, 1280, 1, 1, 1),
                BN_EPS,
                Act::Relu6,
            )?],
            residual: false,
        });
        let classifier = if with_classifier { Some(Linear::load(p, "classifier.1", 1280, 1000)?) } else { None };
        Ok(MobileNetV2 { blocks, classifier })
    }
}

impl Backbone for MobileNetV2 {
    fn arch(&self) -> &'static str {
        "mobilenet_v2"
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
        1280
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        self.blocks.iter().try_fold(x, |y, b| super::export_chain(g, &b.layers, b.residual, y))
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        for layer in &mut self.blocks[block].layers {
            layer.set_freeze(freeze)?;
        }
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        for layer in self.blocks.iter().flat_map(|b| &b.layers) {
            layer.trainable_vars(out);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for layer in self.blocks.iter().flat_map(|b| &b.layers) {
            layer.named_vars(out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        for layer in self.blocks.get(block).into_iter().flat_map(|b| &b.layers) {
            layer.named_vars(out);
        }
    }

    fn imagenet_classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }

    fn classifier_prefix(&self) -> &'static str {
        "classifier."
    }

    fn preprocess(&self) -> Preprocess {
        Preprocess::imagenet_torchvision(224)
    }
}
