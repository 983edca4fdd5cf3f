//! ConvNeXt-Tiny and -Small, as in torchvision.
//!
//! Liu et al., "A ConvNet for the 2020s", CVPR 2022,
//! <https://arxiv.org/abs/2201.03545>.
//!
//! Parameter names equal torchvision's state-dict keys (`features.0.0`
//! patchify stem, `features.1.I.block.0/2/3/5`, `features.1.I.layer_scale`,
//! `features.2.0/1` downsampling, …, `classifier.0/2`), so
//! `convnext_tiny-983f1562.pth` loads unchanged. The freeze points are
//! torchvision's `features.0` … `features.7`: the stem, the four stages and
//! the three downsampling layers between them. A block is a 7×7 depthwise
//! convolution, LayerNorm over the channels (eps 1e-6), a 4× MLP with exact
//! GELU, a per-channel layer scale, and the residual, its branch dropped per
//! image when training with a backbone `drop_path` (stochastic depth).

use std::ops::Range;

use candle_core::{Tensor, Var, D};

use super::layers::{drop_path_rate, read, Act, Conv, ConvSpec, DropPath, Freeze, Init, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{ConvGeometry, Graph, Value};
use crate::kernels::{self, Padding};

const LN_EPS: f64 = 1e-6;

/// LayerNorm over the channels of an NCHW map (torchvision's `LayerNorm2d`,
/// and `nn.LayerNorm` after its channels-last permute: the same numbers).
struct ChannelNorm {
    prefix: String,
    weight: Var,
    bias: Var,
    frozen: bool,
}

impl ChannelNorm {
    fn load(p: &mut ParamLoader, prefix: &str, channels: usize) -> Result<Self> {
        Ok(ChannelNorm {
            weight: p.get(&format!("{prefix}.weight"), &[channels], Init::Const(1.0))?,
            bias: p.get(&format!("{prefix}.bias"), &[channels], Init::Const(0.0))?,
            prefix: prefix.to_owned(),
            frozen: false,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        if self.frozen && !x.track_op() {
            let (w, b) = (self.weight.as_detached_tensor(), self.bias.as_detached_tensor());
            return Ok(crate::kernels::norm::channel_layer_norm(x, &w, &b, LN_EPS as f32)?);
        }
        let centred = x.broadcast_sub(&x.mean_keepdim(1)?)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        let y = centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        let trainable = !self.frozen;
        let (w, b) =
            (read(&self.weight, trainable).reshape((1, c, 1, 1))?, read(&self.bias, trainable).reshape((1, c, 1, 1))?);
        Ok(y.broadcast_mul(&w)?.broadcast_add(&b)?)
    }

    /// The channel means as a 1×1 convolution with weights 1/C (opset-13
    /// ops only: `ReduceMean` moved its axes to an input in opset 18).
    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let c = x.shape[0];
        let dev = self.weight.device();
        let averaging = Tensor::full(1.0 / c as f32, (1, c, 1, 1), dev)?;
        let zero = Tensor::zeros(1, candle_core::DType::F32, dev)?;
        let geometry = ConvGeometry { stride: 1, pad: Padding::default(), groups: 1 };
        let mean = g.conv(x, &format!("{}.mean", self.prefix), (&averaging, &zero), geometry)?;
        let centred = g.binary("Sub", x, &mean);
        let squared = g.mul(&centred, &centred);
        let var = g.conv(&squared, &format!("{}.var", self.prefix), (&averaging, &zero), geometry)?;
        let eps = g.scalar_value(LN_EPS as f32);
        let std = g.binary("Add", &var, &eps);
        let std = g.unary("Sqrt", &std);
        let y = g.binary("Div", &centred, &std);
        let w =
            g.tensor_value(&format!("{}.weight", self.prefix), &self.weight.as_detached_tensor().reshape((c, 1, 1))?)?;
        let b =
            g.tensor_value(&format!("{}.bias", self.prefix), &self.bias.as_detached_tensor().reshape((c, 1, 1))?)?;
        let scaled = g.mul(&y, &w);
        Ok(g.binary("Add", &scaled, &b))
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        if !self.frozen {
            out.extend([self.weight.clone(), self.bias.clone()]);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((format!("{}.weight", self.prefix), self.weight.clone()));
        out.push((format!("{}.bias", self.prefix), self.bias.clone()));
    }
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`, from opset-13 ops.
pub(super) fn gelu_onnx(g: &mut Graph, x: &Value) -> Value {
    let root2 = g.scalar_value(std::f32::consts::SQRT_2);
    let (one, half) = (g.scalar_value(1.0), g.scalar_value(0.5));
    let scaled = g.binary("Div", x, &root2);
    let erf = g.unary("Erf", &scaled);
    let gate = g.binary("Add", &erf, &one);
    let y = g.mul(x, &gate);
    g.mul(&y, &half)
}

/// One `CNBlock`: `x + layer_scale · mlp(norm(dwconv(x)))`.
struct CnBlock {
    dwconv: Conv,
    norm: ChannelNorm,
    fc1: Linear,
    fc2: Linear,
    layer_scale: Var,
    name: String,
    drop: DropPath,
}

impl CnBlock {
    fn load(p: &mut ParamLoader, name: &str, dim: usize) -> Result<Self> {
        let dw = ConvSpec { cin: dim, cout: dim, kernel: (7, 7), stride: 1, pad: Padding::same(3), groups: dim };
        Ok(CnBlock {
            dwconv: Conv::load(p, &format!("{name}.block.0"), dw, Act::None)?,
            norm: ChannelNorm::load(p, &format!("{name}.block.2"), dim)?,
            fc1: Linear::load(p, &format!("{name}.block.3"), dim, 4 * dim)?,
            fc2: Linear::load(p, &format!("{name}.block.5"), 4 * dim, dim)?,
            layer_scale: p.get(&format!("{name}.layer_scale"), &[dim, 1, 1], Init::Const(1e-6))?,
            name: name.to_owned(),
            drop: DropPath::NONE,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if self.norm.frozen && !x.track_op() {
            return self.forward_frozen(x);
        }
        let (n, c, h, w) = x.dims4()?;
        let y = self.norm.forward(&self.dwconv.forward(x)?)?;
        // The MLP acts on every position's channels: NHWC rows.
        let rows = y.permute((0, 2, 3, 1))?.reshape((n * h * w, c))?;
        let rows = self.fc2.forward(&kernels::norm::gelu(&self.fc1.forward(&rows)?)?)?;
        let y = rows.reshape((n, h, w, c))?.permute((0, 3, 1, 2))?;
        let scale = read(&self.layer_scale, !self.norm.frozen);
        Ok((self.drop.apply(y.broadcast_mul(&scale.unsqueeze(0)?)?, mode)? + x)?)
    }

    /// Inference on tlab's kernels: the MLP as two 1×1 convolutions on the
    /// NCHW map (no permutes), GELU in parallel, the layer scale folded into
    /// the second convolution's weights and bias.
    fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        let (none_lo, none_hi) = Act::None.bounds();
        let one = |w: Tensor| -> Result<Tensor> {
            let (o, i) = w.dims2()?;
            Ok(w.reshape((o, i, 1, 1))?)
        };
        let y = self.norm.forward(&self.dwconv.forward(x)?)?;
        let (w1, b1) = self.fc1.tensors();
        let y = kernels::conv2d_bias_clamp(&y, &one(w1)?, &b1, 1, Padding::default(), 1, none_lo, none_hi)?;
        let y = kernels::norm::gelu(&y)?;
        let scale = self.layer_scale.as_detached_tensor().flatten_all()?;
        let (w2, b2) = self.fc2.tensors();
        let (w2, b2) = (w2.broadcast_mul(&scale.unsqueeze(1)?)?, (b2 * &scale)?);
        let y = kernels::conv2d_bias_clamp(&y, &one(w2)?, &b2, 1, Padding::default(), 1, none_lo, none_hi)?;
        Ok((y + x)?)
    }

    /// The MLP's linear layers as 1×1 convolutions on the NCHW map.
    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let y = self.dwconv.export_onnx(g, x)?;
        let y = self.norm.export_onnx(g, &y)?;
        let as_conv = |l: &Linear| -> Result<(Tensor, Tensor)> {
            let (w, b) = l.tensors();
            let (o, i) = w.dims2()?;
            Ok((w.reshape((o, i, 1, 1))?, b))
        };
        let geometry = ConvGeometry { stride: 1, pad: Padding::default(), groups: 1 };
        let (w1, b1) = as_conv(&self.fc1)?;
        let y = g.conv(&y, &format!("{}.block.3", self.name), (&w1, &b1), geometry)?;
        let y = gelu_onnx(g, &y);
        let (w2, b2) = as_conv(&self.fc2)?;
        let y = g.conv(&y, &format!("{}.block.5", self.name), (&w2, &b2), geometry)?;
        let scale = g.tensor_value(&format!("{}.layer_scale", self.name), &self.layer_scale.as_detached_tensor())?;
        let y = g.mul(&y, &scale);
        Ok(g.add(&y, x))
    }

    fn set_frozen(&mut self, frozen: bool) {
        self.dwconv.set_frozen(frozen);
        self.norm.frozen = frozen;
        self.fc1.frozen = frozen;
        self.fc2.frozen = frozen;
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        self.dwconv.trainable_vars(out);
        self.norm.trainable_vars(out);
        for l in [&self.fc1, &self.fc2] {
            l.trainable_vars(out);
        }
        if !self.norm.frozen {
            out.push(self.layer_scale.clone());
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((format!("{}.layer_scale", self.name), self.layer_scale.clone()));
        self.dwconv.named_vars(out);
        self.norm.named_vars(out);
        self.fc1.named_vars(out);
        self.fc2.named_vars(out);
    }
}

/// A freeze point: the patchify stem (conv then norm), a stage of blocks, or
/// a downsampling layer (norm then conv).
enum Block {
    Stem(Conv, ChannelNorm),
    Stage(Vec<CnBlock>),
    Down(ChannelNorm, Conv),
}

impl Block {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match self {
            Block::Stem(conv, norm) => norm.forward(&conv.forward(x)?),
            Block::Stage(blocks) => blocks.iter().try_fold(x.clone(), |y, b| b.forward(&y, mode)),
            Block::Down(norm, conv) => conv.forward(&norm.forward(x)?),
        }
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        match self {
            Block::Stem(conv, norm) => {
                let y = conv.export_onnx(g, &x)?;
                norm.export_onnx(g, &y)
            }
            Block::Stage(blocks) => blocks.iter().try_fold(x, |y, b| b.export_onnx(g, &y)),
            Block::Down(norm, conv) => {
                let y = norm.export_onnx(g, &x)?;
                conv.export_onnx(g, &y)
            }
        }
    }

    fn set_frozen(&mut self, frozen: bool) {
        match self {
            Block::Stem(conv, norm) | Block::Down(norm, conv) => {
                conv.set_frozen(frozen);
                norm.frozen = frozen;
            }
            Block::Stage(blocks) => blocks.iter_mut().for_each(|b| b.set_frozen(frozen)),
        }
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        match self {
            Block::Stem(conv, norm) | Block::Down(norm, conv) => {
                conv.trainable_vars(out);
                norm.trainable_vars(out);
            }
            Block::Stage(blocks) => blocks.iter().for_each(|b| b.trainable_vars(out)),
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        match self {
            Block::Stem(conv, norm) | Block::Down(norm, conv) => {
                conv.named_vars(out);
                norm.named_vars(out);
            }
            Block::Stage(blocks) => blocks.iter().for_each(|b| b.named_vars(out)),
        }
    }
}

pub struct ConvNeXt {
    arch: &'static str,
    blocks: Vec<Block>,
    /// `classifier.0` (LayerNorm) and `classifier.2` (→ 1000).
    classifier: Option<(ChannelNorm, Linear)>,
    resize: u32,
}

const DIMS: [usize; 4] = [96, 192, 384, 768];

impl ConvNeXt {
    /// Builds `convnext_tiny` or `convnext_small`; `None` for another name.
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        let (arch, depths, resize): (&'static str, [usize; 4], u32) = match arch {
            "convnext_tiny" => ("convnext_tiny", [3, 3, 9, 3], 236),
            "convnext_small" => ("convnext_small", [3, 3, 27, 3], 230),
            _ => return Ok(None),
        };
        let patchify =
            ConvSpec { cin: 3, cout: DIMS[0], kernel: (4, 4), stride: 4, pad: Padding::default(), groups: 1 };
        let stem = Block::Stem(
            Conv::load(p, "features.0.0", patchify, Act::None)?,
            ChannelNorm::load(p, "features.0.1", DIMS[0])?,
        );
        let mut blocks = vec![stem];
        for (s, (&dim, &depth)) in DIMS.iter().zip(&depths).enumerate() {
            let idx = blocks.len();
            let stage =
                (0..depth).map(|i| CnBlock::load(p, &format!("features.{idx}.{i}"), dim)).collect::<Result<_>>()?;
            blocks.push(Block::Stage(stage));
            if let Some(&next) = DIMS.get(s + 1) {
                let idx = blocks.len();
                let spec =
                    ConvSpec { cin: dim, cout: next, kernel: (2, 2), stride: 2, pad: Padding::default(), groups: 1 };
                blocks.push(Block::Down(
                    ChannelNorm::load(p, &format!("features.{idx}.0"), dim)?,
                    Conv::load(p, &format!("features.{idx}.1"), spec, Act::None)?,
                ));
            }
        }
        let classifier = if with_classifier {
            Some((ChannelNorm::load(p, "classifier.0", DIMS[3])?, Linear::load(p, "classifier.2", DIMS[3], 1000)?))
        } else {
            None
        };
        Ok(Some(ConvNeXt { arch, blocks, classifier, resize }))
    }
}

impl Backbone for ConvNeXt {
    fn arch(&self) -> &'static str {
        self.arch
    }

    fn block_names(&self) -> Vec<String> {
        (0..self.blocks.len()).map(|i| format!("features.{i}")).collect()
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        self.blocks[range].iter().try_fold(x.clone(), |y, b| b.forward(&y, mode))
    }

    /// torchvision's schedule: block `i` of `n` (over every stage) gets
    /// `rate · i / (n − 1)`.
    fn set_drop_path(&mut self, rate: f32) {
        let mut blocks: Vec<&mut CnBlock> = self
            .blocks
            .iter_mut()
            .filter_map(|b| match b {
                Block::Stage(s) => Some(s.iter_mut()),
                _ => None,
            })
            .flatten()
            .collect();
        let n = blocks.len();
        for (i, b) in blocks.iter_mut().enumerate() {
            b.drop = DropPath { rate: drop_path_rate(rate, i, n), site: i as u64 };
        }
    }

    fn feature_channels(&self) -> usize {
        DIMS[3]
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        self.blocks.iter().try_fold(x, |y, b| b.export_onnx(g, y))
    }

    /// LayerNorm has no running statistics, so `train_bn` changes nothing.
    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        self.blocks[block].set_frozen(freeze.frozen);
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        self.blocks.iter().for_each(|b| b.trainable_vars(out));
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        self.blocks.iter().for_each(|b| b.named_vars(out));
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        if let Some(b) = self.blocks.get(block) {
            b.named_vars(out);
        }
    }

    /// None: the ImageNet classifier normalises before its linear layer.
    fn imagenet_classifier(&self) -> Option<&Linear> {
        None
    }

    fn imagenet_logits(&self, features: &Tensor) -> Result<Option<Tensor>> {
        let Some((norm, fc)) = &self.classifier else { return Ok(None) };
        let pooled = features.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        Ok(Some(fc.forward(&norm.forward(&pooled)?.flatten_from(1)?)?))
    }

    fn imagenet_outputs(&self) -> Option<usize> {
        self.classifier.as_ref().map(|(_, fc)| fc.out_features())
    }

    fn classifier_prefix(&self) -> &'static str {
        "classifier."
    }

    /// torchvision's transforms for its weights: resize 236 (Tiny) or 230
    /// (Small), centre-crop 224, ImageNet mean and std.
    fn preprocess(&self) -> Preprocess {
        Preprocess { resize_size: self.resize, ..Preprocess::imagenet_torchvision(224) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_norm_normalises_each_position_over_its_channels() {
        let mut p = ParamLoader::random(0);
        let norm = ChannelNorm::load(&mut p, "n", 5).unwrap();
        let x = crate::kernels::testing::randn(0f32, 3.0, (2, 5, 3, 4)).unwrap();
        let y = norm.forward(&x).unwrap();
        let mean = y.mean_keepdim(1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let var = y.sqr().unwrap().mean_keepdim(1).unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mean < 1e-5 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
    }

    #[test]
    fn every_trainable_tensor_gets_a_gradient() {
        let mut net = ConvNeXt::load("convnext_tiny", &mut ParamLoader::random(4), false).unwrap().unwrap();
        assert_eq!(net.block_names().len(), 8);
        for b in 0..8 {
            net.set_block_freeze(b, Freeze { frozen: b < 5, train_bn: false }).unwrap();
        }
        let x = crate::kernels::testing::randn(0f32, 1.0, (2, 3, 32, 32)).unwrap();
        let y = net.forward_blocks(&x, 0..8, Mode::train(0)).unwrap();
        assert_eq!(y.dims(), [2, 768, 1, 1]);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = Vec::new();
        net.trainable_vars(&mut vars);
        assert!(!vars.is_empty() && vars.iter().all(|v| grads.get(v.as_tensor()).is_some()));
    }
}
