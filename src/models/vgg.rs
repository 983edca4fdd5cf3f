//! VGG-16 and VGG-19 (without BatchNorm), as in torchvision.
//!
//! Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
//! Image Recognition", ICLR 2015, <https://arxiv.org/abs/1409.1556>.
//!
//! Parameter names equal torchvision's state-dict keys: the convolutions are
//! `features.N` with N their index in torchvision's `nn.Sequential` (every
//! conv is followed by a ReLU, every stage by a max-pool, each taking an
//! index), the classifier is `classifier.0/3/6`.
//!
//! The freeze points are the five stages `block1` … `block5` (Keras' names),
//! each its 3×3 convolutions and the 2×2 max-pool after them. For VGG-16 they
//! start at `features.0`, `.5`, `.10`, `.17`, `.24`; for VGG-19 at `features.0`,
//! `.5`, `.10`, `.19`, `.28`.
//!
//! The new head sees the 512-channel output of `block5` (global average
//! pooling by default). The ImageNet classifier keeps torchvision's adaptive
//! average pooling to 7×7 and three linear layers, so `predict --imagenet`
//! matches torchvision at any input size.

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::layers::{self, Act, Conv, ConvSpec, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::{maxpool, Padding};

/// torchvision's classifier input: 512 channels pooled to 7×7.
const POOLED: usize = 7;

pub(crate) struct Vgg {
    arch: &'static str,
    stages: Vec<Vec<Conv>>,
    classifier: Option<[Linear; 3]>,
}

impl Vgg {
    /// Builds `vgg16` or `vgg19`; `None` for another name. `with_classifier`
    /// also loads the ImageNet `classifier.0/3/6`.
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        // Convolutions per stage (configurations D and E of the paper).
        let (arch, depths): (&'static str, [usize; 5]) = match arch {
            "vgg16" => ("vgg16", [2, 2, 3, 3, 3]),
            "vgg19" => ("vgg19", [2, 2, 4, 4, 4]),
            _ => return Ok(None),
        };
        let mut index = 0;
        let mut cin = 3;
        let mut stages = Vec::with_capacity(5);
        for (s, &depth) in depths.iter().enumerate() {
            let cout = (64 << s).min(512);
            let mut convs = Vec::with_capacity(depth);
            for _ in 0..depth {
                let spec = ConvSpec { cin, cout, kernel: (3, 3), stride: 1, pad: Padding::same(1), groups: 1 };
                convs.push(Conv::load(p, &format!("features.{index}"), spec, Act::Relu)?);
                cin = cout;
                index += 2; // conv, ReLU
            }
            index += 1; // max-pool
            stages.push(convs);
        }
        let classifier = if with_classifier {
            Some([
                Linear::load(p, "classifier.0", 512 * POOLED * POOLED, 4096)?,
                Linear::load(p, "classifier.3", 4096, 4096)?,
                Linear::load(p, "classifier.6", 4096, 1000)?,
            ])
        } else {
            None
        };
        Ok(Some(Vgg { arch, stages, classifier }))
    }
}

impl Backbone for Vgg {
    fn arch(&self) -> &'static str {
        self.arch
    }

    fn block_names(&self) -> Vec<String> {
        (1..=self.stages.len()).map(|i| format!("block{i}")).collect()
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let mut y = x;
        for stage in &self.stages {
            for c in stage {
                y = c.export_onnx(g, &y)?;
            }
            y = g.max_pool(&y, 2, 2, Padding::default());
        }
        Ok(y)
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, _mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for stage in &self.stages[range] {
            for c in stage {
                y = c.forward(&y)?;
            }
            y = maxpool::max_pool2d(&y, 2, 2, Padding::default())?;
        }
        Ok(y)
    }

    fn feature_channels(&self) -> usize {
        512
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        // No BatchNorm, so `train_bn` has nothing to keep trainable.
        for c in &mut self.stages[block] {
            c.set_frozen(freeze.frozen);
        }
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        for c in self.stages.iter().flatten() {
            c.trainable_vars(out);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for c in self.stages.iter().flatten() {
            c.named_vars(out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        for c in self.stages.get(block).into_iter().flatten() {
            c.named_vars(out);
        }
    }

    /// VGG's classifier is three layers on 7×7 features, not one layer on
    /// pooled features: see [`Backbone::imagenet_logits`].
    fn imagenet_classifier(&self) -> Option<&Linear> {
        None
    }

    fn imagenet_outputs(&self) -> Option<usize> {
        self.classifier.as_ref().map(|c| c[2].out_features())
    }

    fn imagenet_logits(&self, features: &Tensor) -> Result<Option<Tensor>> {
        let Some([fc0, fc3, fc6]) = &self.classifier else { return Ok(None) };
        // Dropout (classifier.2/5) is the identity at inference.
        let x = layers::adaptive_avg_pool(features, POOLED, POOLED)?.flatten_from(1)?;
        let x = fc0.forward(&x)?.relu()?;
        let x = fc3.forward(&x)?.relu()?;
        Ok(Some(fc6.forward(&x)?))
    }

    fn classifier_prefix(&self) -> &'static str {
        "classifier."
    }

    fn preprocess(&self) -> Preprocess {
        Preprocess::imagenet_torchvision(224)
    }
}
