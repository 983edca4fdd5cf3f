//! Vision Transformers: torchvision's ViT-B/16, and timm's DeiT-S/16 and
//! DINOv2's self-supervised ViT-S/14.
//!
//! Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021,
//! <https://arxiv.org/abs/2010.11929>; Touvron et al., "Training
//! data-efficient image transformers", ICML 2021,
//! <https://arxiv.org/abs/2012.12877>; Oquab et al., "DINOv2: Learning Robust
//! Visual Features without Supervision", 2023,
//! <https://arxiv.org/abs/2304.07193>.
//!
//! The image is cut into patches (a convolution with stride = kernel =
//! patch), a class token is put in front, a position embedding added, and a
//! stack of pre-norm encoder blocks (LayerNorm → multi-head self-attention →
//! residual; LayerNorm → 4× MLP with exact GELU → residual; DINOv2 scales
//! each branch by a learned per-channel `gamma` first) runs over the tokens.
//! The final LayerNorm's class token is the feature vector, handed to the
//! head as a `[n, dim, 1, 1]` map so every head and pooling works.
//!
//! Names are the reference's state-dict keys: torchvision's for `vit_b_16`
//! (`conv_proj`, `class_token`, `encoder.pos_embedding`,
//! `encoder.layers.encoder_layer_I.{ln_1, self_attention.in_proj_weight, …}`,
//! `encoder.ln`, `heads.head`; timm's `vit_base_patch16_*` files are renamed
//! by [`super::naming`]) and timm's for the other two (`patch_embed.proj`,
//! `cls_token`, `pos_embed`, `blocks.I.{norm1, attn.qkv, ls1.gamma, …}`,
//! `norm`, `head`). The freeze points are the embedding, each encoder block
//! and the final norm, as the reference names them.
//!
//! At an image size other than the pretraining one, the position embedding
//! is resampled to the new grid as timm does when it loads a checkpoint
//! (`resample_abs_pos_embed`: bicubic, antialiased, the class token's entry
//! kept): a fixed linear map, so the embedding still trains. A backbone
//! `drop_path` drops each block's branches per image while training (timm's
//! stochastic depth, linear over the depth).

use std::ops::Range;

use candle_core::{Device, Tensor, Var, D};

use super::layers::{drop_path_rate, read, Act, Conv, ConvSpec, DropPath, Freeze, Init, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::{Error, Result};
use crate::formats::onnx::{Graph, Value};
use crate::kernels::Padding;

const LN_EPS: f64 = 1e-6;

/// Which reference's names a network is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    Torchvision,
    Timm,
}

impl Names {
    fn embedding(self) -> &'static str {
        match self {
            Names::Torchvision => "conv_proj",
            Names::Timm => "patch_embed",
        }
    }

    fn patch_conv(self) -> &'static str {
        match self {
            Names::Torchvision => "conv_proj",
            Names::Timm => "patch_embed.proj",
        }
    }

    fn class_token(self) -> &'static str {
        match self {
            Names::Torchvision => "class_token",
            Names::Timm => "cls_token",
        }
    }

    fn position(self) -> &'static str {
        match self {
            Names::Torchvision => "encoder.pos_embedding",
            Names::Timm => "pos_embed",
        }
    }

    fn layer(self, i: usize) -> String {
        match self {
            Names::Torchvision => format!("encoder.layers.encoder_layer_{i}"),
            Names::Timm => format!("blocks.{i}"),
        }
    }

    fn final_norm(self) -> &'static str {
        match self {
            Names::Torchvision => "encoder.ln",
            Names::Timm => "norm",
        }
    }

    fn classifier(self) -> &'static str {
        match self {
            Names::Torchvision => "heads.head",
            Names::Timm => "head",
        }
    }
}

/// One architecture's sizes.
struct Config {
    arch: &'static str,
    names: Names,
    dim: usize,
    depth: usize,
    heads: usize,
    patch: usize,
    /// Side of the pretraining grid (the position embedding's).
    grid: usize,
    /// DINOv2's per-channel scale of each residual branch.
    layer_scale: bool,
    preprocess: Preprocess,
}

fn config(arch: &str) -> Option<Config> {
    let timm = |input_size: u32, resize_size: u32| Preprocess {
        input_size,
        resize_size,
        ..Preprocess::imagenet_torchvision(input_size)
    };
    // The patch sides live with the recipe schema, which checks image sizes.
    let patch = crate::recipe::patch_size(arch)? as usize;
    let c = match arch {
        "vit_b_16" => Config {
            arch: "vit_b_16",
            names: Names::Torchvision,
            dim: 768,
            depth: 12,
            heads: 12,
            patch,
            grid: 14,
            layer_scale: false,
            preprocess: Preprocess::imagenet_torchvision(224),
        },
        // timm's card: crop 0.9 of a 248-px resize, bicubic.
        "deit_small_patch16_224" => Config {
            arch: "deit_small_patch16_224",
            names: Names::Timm,
            dim: 384,
            depth: 12,
            heads: 6,
            patch,
            grid: 14,
            layer_scale: false,
            preprocess: timm(224, 248),
        },
        // Pretrained at 518 px (a 37 × 37 grid), crop 1.0.
        "vit_small_patch14_dinov2" => Config {
            arch: "vit_small_patch14_dinov2",
            names: Names::Timm,
            dim: 384,
            depth: 12,
            heads: 6,
            patch,
            grid: 37,
            layer_scale: true,
            preprocess: timm(518, 518),
        },
        _ => return None,
    };
    Some(c)
}

/// LayerNorm over the last dimension (the tokens' channels), eps 1e-6.
struct TokenNorm {
    prefix: String,
    weight: Var,
    bias: Var,
    frozen: bool,
}

impl TokenNorm {
    fn load(p: &mut ParamLoader, prefix: &str, dim: usize) -> Result<Self> {
        Ok(TokenNorm {
            weight: p.get(&format!("{prefix}.weight"), &[dim], Init::Const(1.0))?,
            bias: p.get(&format!("{prefix}.bias"), &[dim], Init::Const(0.0))?,
            prefix: prefix.to_owned(),
            frozen: false,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.frozen && !x.track_op() {
            // candle's fused LayerNorm has no backward: inference only.
            let (w, b) = (self.weight.as_detached_tensor(), self.bias.as_detached_tensor());
            return Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &w, &b, LN_EPS as f32)?);
        }
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let y = centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        let trainable = !self.frozen;
        Ok(y.broadcast_mul(&read(&self.weight, trainable))?.broadcast_add(&read(&self.bias, trainable))?)
    }

    /// From opset-13 ops (`LayerNormalization` came in opset 17).
    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let mean = g.mean_last(x)?;
        let centred = g.binary("Sub", x, &mean);
        let squared = g.mul(&centred, &centred);
        let var = g.mean_last(&squared)?;
        let eps = g.scalar_value(LN_EPS as f32);
        let std = g.binary("Add", &var, &eps);
        let std = g.unary("Sqrt", &std);
        let y = g.binary("Div", &centred, &std);
        let w = g.tensor_value(&format!("{}.weight", self.prefix), &self.weight.as_detached_tensor())?;
        let b = g.tensor_value(&format!("{}.bias", self.prefix), &self.bias.as_detached_tensor())?;
        let scaled = g.mul(&y, &w);
        Ok(g.binary("Add", &scaled, &b))
    }

    fn vars(&self) -> [(String, Var); 2] {
        [(format!("{}.weight", self.prefix), self.weight.clone()), (format!("{}.bias", self.prefix), self.bias.clone())]
    }
}

/// `x` `[n, t, d_in]` through `layer`, as rows.
fn dense(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    let (n, t, d) = x.dims3()?;
    let y = layer.forward(&x.reshape((n * t, d))?)?;
    Ok(y.reshape((n, t, ()))?)
}

/// Softmax over the last dimension: candle's fused kernel when no gradient
/// is needed (it has no backward), the differentiable composition otherwise.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(if x.track_op() { candle_nn::ops::softmax(x, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(x)? })
}

/// One pre-norm encoder block.
struct EncoderBlock {
    name: String,
    norm1: TokenNorm,
    qkv: Linear,
    proj: Linear,
    /// DINOv2's `ls1.gamma` and `ls2.gamma`.
    scales: Option<(Var, Var)>,
    norm2: TokenNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    /// Stochastic depth of the attention branch; the MLP's is the next site.
    drop: DropPath,
}

impl EncoderBlock {
    fn load(p: &mut ParamLoader, c: &Config, i: usize) -> Result<Self> {
        let (name, d) = (c.names.layer(i), c.dim);
        let at = |s: &str| format!("{name}.{s}");
        let (qkv_names, proj, norm1, norm2, fc1, fc2) = match c.names {
            Names::Torchvision => (
                (at("self_attention.in_proj_weight"), at("self_attention.in_proj_bias")),
                at("self_attention.out_proj"),
                at("ln_1"),
                at("ln_2"),
                at("mlp.0"),
                at("mlp.3"),
            ),
            Names::Timm => (
                (at("attn.qkv.weight"), at("attn.qkv.bias")),
                at("attn.proj"),
                at("norm1"),
                at("norm2"),
                at("mlp.fc1"),
                at("mlp.fc2"),
            ),
        };
        let scales = if c.layer_scale {
            let gamma = |p: &mut ParamLoader, s: &str| p.get(&at(&format!("{s}.gamma")), &[d], Init::Const(1e-5));
            Some((gamma(p, "ls1")?, gamma(p, "ls2")?))
        } else {
            None
        };
        Ok(EncoderBlock {
            norm1: TokenNorm::load(p, &norm1, d)?,
            qkv: Linear::load_named(p, &at("qkv"), qkv_names, d, 3 * d)?,
            proj: Linear::load(p, &proj, d, d)?,
            scales,
            norm2: TokenNorm::load(p, &norm2, d)?,
            fc1: Linear::load(p, &fc1, d, 4 * d)?,
            fc2: Linear::load(p, &fc2, 4 * d, d)?,
            heads: c.heads,
            name,
            drop: DropPath::NONE,
        })
    }

    fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let (h, hd) = (self.heads, d / self.heads);
        if self.qkv.frozen && !x.track_op() {
            let qkv = dense(&self.qkv, x)?;
            let y = crate::kernels::attention::self_attention(&qkv, h, 1.0 / (hd as f32).sqrt())?;
            return dense(&self.proj, &y);
        }
        let qkv = dense(&self.qkv, x)?.reshape((n, t, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let part = |i: usize| -> Result<Tensor> { Ok(qkv.get(i)?.contiguous()?) };
        let q = (part(0)? * (1.0 / (hd as f64).sqrt()))?;
        let (k, v) = (part(1)?, part(2)?);
        let weights = softmax_last(&q.matmul(&k.t()?.contiguous()?)?)?;
        let y = weights.matmul(&v)?.permute((0, 2, 1, 3))?.reshape((n, t, d))?;
        dense(&self.proj, &y)
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let trainable = !self.norm1.frozen;
        let scaled = |y: Tensor, gamma: Option<&Var>| -> Result<Tensor> {
            Ok(match gamma {
                Some(g) => y.broadcast_mul(&read(g, trainable))?,
                None => y,
            })
        };
        let a = scaled(self.attention(&self.norm1.forward(x)?)?, self.scales.as_ref().map(|s| &s.0))?;
        let x = (x + self.drop.apply(a, mode)?)?;
        let m = dense(&self.fc2, &crate::kernels::norm::gelu(&dense(&self.fc1, &self.norm2.forward(&x)?)?)?)?;
        let m = scaled(m, self.scales.as_ref().map(|s| &s.1))?;
        let mlp_drop = DropPath { site: self.drop.site + 1, ..self.drop };
        Ok((x + mlp_drop.apply(m, mode)?)?)
    }

    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let (t, d) = (x.shape[0], x.shape[1]);
        let (h, hd) = (self.heads, d / self.heads);
        let y = self.norm1.export_onnx(g, x)?;
        let (w, b) = self.qkv.tensors();
        // q, k and v as three products (no split op needed), heads first.
        let mut parts = Vec::new();
        for (i, which) in ["q", "k", "v"].iter().enumerate() {
            let (wi, bi) = (w.narrow(0, i * d, d)?, b.narrow(0, i * d, d)?);
            let p = g.dense(&y, &format!("{}.{which}", self.name), &wi, &bi)?;
            let p = g.reshape(&p, &[t, h, hd]);
            parts.push(g.transpose(&p, &[0, 2, 1, 3]));
        }
        let kt = g.transpose(&parts[1], &[0, 1, 3, 2]);
        let scores = g.matmul(&parts[0], &kt);
        let scale = g.scalar_value(1.0 / (hd as f32).sqrt());
        let scores = g.mul(&scores, &scale);
        let weights = g.softmax_last(&scores);
        let heads = g.matmul(&weights, &parts[2]);
        let heads = g.transpose(&heads, &[0, 2, 1, 3]);
        let merged = g.reshape(&heads, &[t, d]);
        let (pw, pb) = self.proj.tensors();
        let a = g.dense(&merged, &format!("{}.proj", self.name), &pw, &pb)?;
        let a = self.export_scale(g, a, 0)?;
        let x = g.add(x, &a);
        let y = self.norm2.export_onnx(g, &x)?;
        let (w1, b1) = self.fc1.tensors();
        let y = g.dense(&y, &format!("{}.fc1", self.name), &w1, &b1)?;
        let y = super::convnext::gelu_onnx(g, &y);
        let (w2, b2) = self.fc2.tensors();
        let y = g.dense(&y, &format!("{}.fc2", self.name), &w2, &b2)?;
        let y = self.export_scale(g, y, 1)?;
        Ok(g.add(&x, &y))
    }

    fn export_scale(&self, g: &mut Graph, y: Value, which: usize) -> Result<Value> {
        let Some((ls1, ls2)) = &self.scales else { return Ok(y) };
        let gamma = if which == 0 { ls1 } else { ls2 };
        let gamma = g.tensor_value(&format!("{}.ls{}.gamma", self.name, which + 1), &gamma.as_detached_tensor())?;
        Ok(g.mul(&y, &gamma))
    }

    fn set_frozen(&mut self, frozen: bool) {
        self.norm1.frozen = frozen;
        self.norm2.frozen = frozen;
        for l in [&mut self.qkv, &mut self.proj, &mut self.fc1, &mut self.fc2] {
            l.frozen = frozen;
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.extend(self.norm1.vars());
        self.qkv.named_vars(out);
        self.proj.named_vars(out);
        out.extend(self.norm2.vars());
        self.fc1.named_vars(out);
        self.fc2.named_vars(out);
        if let Some((ls1, ls2)) = &self.scales {
            out.push((format!("{}.ls1.gamma", self.name), ls1.clone()));
            out.push((format!("{}.ls2.gamma", self.name), ls2.clone()));
        }
    }
}

/// The embedding: patches, the class token in front, the position embedding.
struct Embedding {
    arch: &'static str,
    conv: Conv,
    class_token: Var,
    position: Var,
    names: Names,
    patch: usize,
    grid: usize,
    frozen: bool,
}

impl Embedding {
    fn load(p: &mut ParamLoader, c: &Config) -> Result<Self> {
        let spec = ConvSpec {
            cin: 3,
            cout: c.dim,
            kernel: (c.patch, c.patch),
            stride: c.patch,
            pad: Padding::default(),
            groups: 1,
        };
        Ok(Embedding {
            arch: c.arch,
            conv: Conv::load(p, c.names.patch_conv(), spec, Act::None)?,
            class_token: p.get(c.names.class_token(), &[1, 1, c.dim], Init::Const(0.0))?,
            position: p.get(c.names.position(), &[1, 1 + c.grid * c.grid, c.dim], Init::Const(0.0))?,
            names: c.names,
            patch: c.patch,
            grid: c.grid,
            frozen: false,
        })
    }

    /// The grid side for a `size`-px image, or why there is none.
    fn grid_for(&self, h: usize, w: usize) -> Result<usize> {
        if h != w || !h.is_multiple_of(self.patch) || h == 0 {
            return Err(Error::PatchSize { arch: self.arch, patch: self.patch, height: h, width: w });
        }
        Ok(h / self.patch)
    }

    /// The position embedding for a `side × side` grid `[1, 1 + side², dim]`.
    fn position_for(&self, side: usize) -> Result<Tensor> {
        let pos = read(&self.position, !self.frozen);
        if side == self.grid {
            return Ok(pos);
        }
        let cls = pos.narrow(1, 0, 1)?;
        let grid = pos.narrow(1, 1, self.grid * self.grid)?.squeeze(0)?;
        let m = resample_matrix(self.grid, side)?;
        Ok(Tensor::cat(&[cls, m.matmul(&grid)?.unsqueeze(0)?], 1)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let side = self.grid_for(h, w)?;
        let patches = self.conv.forward(x)?.flatten_from(2)?.transpose(1, 2)?;
        let d = patches.dim(2)?;
        let cls = read(&self.class_token, !self.frozen).broadcast_as((n, 1, d))?;
        let tokens = Tensor::cat(&[cls, patches.contiguous()?], 1)?;
        Ok(tokens.broadcast_add(&self.position_for(side)?)?)
    }

    /// The class token's row is `class_token + pos[0]` for every image: a
    /// batch-sized row made from the patches' mean times zero, plus that
    /// constant, then joined in front (opset-13 ops, any batch size).
    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let side = self.grid_for(x.shape[1], x.shape[2])?;
        let map = self.conv.export_onnx(g, &x)?;
        let d = map.shape[0];
        let flat = g.reshape(&map, &[d, side * side]);
        let patches = g.transpose(&flat, &[0, 2, 1]);
        let pos = self.position_for(side)?.squeeze(0)?;
        let grid_pos = g.tensor_value(&format!("{}.grid", self.names.position()), &pos.narrow(0, 1, side * side)?)?;
        let patches = g.add(&patches, &grid_pos);
        let first = (self.class_token.as_detached_tensor().reshape((1, d))? + pos.narrow(0, 0, 1)?)?;
        let first = g.tensor_value(&format!("{}.first", self.names.class_token()), &first)?;
        let average = Tensor::full(1.0 / (side * side) as f32, (1, side * side), &Device::Cpu)?;
        let mean = g.mix_tokens(&format!("{}.average", self.names.class_token()), &average, &patches)?;
        let zero = g.scalar_value(0.0);
        let nothing = g.mul(&mean, &zero);
        let cls = g.add(&nothing, &first);
        Ok(g.concat(&[cls, patches], 1))
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((self.names.class_token().to_owned(), self.class_token.clone()));
        out.push((self.names.position().to_owned(), self.position.clone()));
        self.conv.named_vars(out);
    }
}

/// PyTorch's antialiased bicubic interpolation (`F.interpolate(mode =
/// "bicubic", antialias = True, align_corners = False)`, PIL's filter with
/// a = −0.5, its support widened by the scale when shrinking) as a matrix
/// `[to, from]`.
fn resample_weights(from: usize, to: usize) -> Vec<f64> {
    fn cubic(x: f64) -> f64 {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    }
    let scale = from as f64 / to as f64;
    let (support, inv) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    let mut m = vec![0.0; to * from];
    for i in 0..to {
        let centre = scale * (i as f64 + 0.5);
        // PyTorch truncates these towards zero (both are ≥ −0.5 + 0.5 here).
        let lo = ((centre - support + 0.5).max(0.0) as usize).min(from);
        let hi = ((centre + support + 0.5) as usize).min(from);
        let w: Vec<f64> = (lo..hi).map(|j| cubic((j as f64 - centre + 0.5) * inv)).collect();
        let total: f64 = w.iter().sum();
        for (j, wj) in (lo..hi).zip(w) {
            m[i * from + j] = if total != 0.0 { wj / total } else { wj };
        }
    }
    m
}

/// The 2-D resampling of a `from × from` grid to `to × to` (row-major
/// positions) as one `[to², from²]` matrix: the outer product of the 1-D one.
fn resample_matrix(from: usize, to: usize) -> Result<Tensor> {
    let m = resample_weights(from, to);
    let (n, f2) = (to * to, from * from);
    let mut out = vec![0f32; n * f2];
    for (i, row) in out.chunks_exact_mut(f2).enumerate() {
        let (y, x) = (i / to, i % to);
        for a in 0..from {
            let wy = m[y * from + a];
            if wy == 0.0 {
                continue;
            }
            for b in 0..from {
                row[a * from + b] = (wy * m[x * from + b]) as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, f2), &Device::Cpu)?)
}

/// A Vision Transformer backbone.
pub(crate) struct Vit {
    config: Config,
    embedding: Embedding,
    layers: Vec<EncoderBlock>,
    norm: TokenNorm,
    classifier: Option<Linear>,
}

impl Vit {
    /// Builds `vit_b_16`, `deit_small_patch16_224` or
    /// `vit_small_patch14_dinov2`; `None` for another name.
    pub fn load(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Option<Self>> {
        let Some(c) = config(arch) else { return Ok(None) };
        let embedding = Embedding::load(p, &c)?;
        let layers = (0..c.depth).map(|i| EncoderBlock::load(p, &c, i)).collect::<Result<_>>()?;
        let norm = TokenNorm::load(p, c.names.final_norm(), c.dim)?;
        let classifier = if with_classifier { Some(Linear::load(p, c.names.classifier(), c.dim, 1000)?) } else { None };
        Ok(Some(Vit { config: c, embedding, layers, norm, classifier }))
    }

    fn forward_block(&self, block: usize, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let last = self.layers.len() + 1;
        match block {
            0 => self.embedding.forward(x),
            b if b < last => self.layers[b - 1].forward(x, mode),
            _ => {
                // The class token after the final norm, as a 1 × 1 map.
                let cls = self.norm.forward(&x.narrow(1, 0, 1)?)?;
                let (n, _, d) = cls.dims3()?;
                Ok(cls.reshape((n, d, 1, 1))?)
            }
        }
    }
}

impl Backbone for Vit {
    fn arch(&self) -> &'static str {
        self.config.arch
    }

    fn block_names(&self) -> Vec<String> {
        let names = self.config.names;
        let mut out = vec![names.embedding().to_owned()];
        out.extend((0..self.layers.len()).map(|i| names.layer(i)));
        out.push(names.final_norm().to_owned());
        out
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        range.into_iter().try_fold(x.clone(), |y, b| self.forward_block(b, &y, mode))
    }

    /// timm's schedule: encoder block `i` of `n` gets `rate · i / (n − 1)`
    /// on both of its branches.
    fn set_drop_path(&mut self, rate: f32) {
        let n = self.layers.len();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.drop = DropPath { rate: drop_path_rate(rate, i, n), site: 2 * i as u64 };
        }
    }

    fn feature_channels(&self) -> usize {
        self.config.dim
    }

    /// The patch tokens (class token dropped) as a `[n, dim, side, side]` map.
    fn spatial_map(&self, output: &Tensor) -> Result<Option<Tensor>> {
        if output.rank() != 3 {
            return Ok((output.rank() == 4).then(|| output.clone()));
        }
        let (n, t, d) = output.dims3()?;
        let side = ((t - 1) as f64).sqrt().round() as usize;
        if side * side + 1 != t {
            return Ok(None);
        }
        let patches = output.narrow(1, 1, t - 1)?.transpose(1, 2)?;
        Ok(Some(patches.reshape((n, d, side, side))?))
    }

    fn cam_blocks(&self) -> usize {
        self.layers.len()
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        let frozen = freeze.frozen;
        let last = self.layers.len() + 1;
        match block {
            0 => {
                self.embedding.frozen = frozen;
                self.embedding.conv.set_frozen(frozen);
            }
            b if b < last => self.layers[b - 1].set_frozen(frozen),
            _ => self.norm.frozen = frozen,
        }
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        let mut named = Vec::new();
        for b in 0..self.num_blocks() {
            let frozen = match b {
                0 => self.embedding.frozen,
                b if b <= self.layers.len() => self.layers[b - 1].norm1.frozen,
                _ => self.norm.frozen,
            };
            if !frozen {
                self.block_vars(b, &mut named);
            }
        }
        out.extend(named.into_iter().map(|(_, v)| v));
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for b in 0..self.num_blocks() {
            self.block_vars(b, out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        let last = self.layers.len() + 1;
        match block {
            0 => self.embedding.named_vars(out),
            b if b < last => self.layers[b - 1].named_vars(out),
            b if b == last => out.extend(self.norm.vars()),
            _ => {}
        }
    }

    /// The class token's features go to the classifier unpooled: a 1 × 1
    /// map averaged is itself, so the single linear layer is the classifier.
    fn imagenet_classifier(&self) -> Option<&Linear> {
        self.classifier.as_ref()
    }

    fn classifier_prefix(&self) -> &'static str {
        match self.config.names {
            Names::Torchvision => "heads.",
            Names::Timm => "head.",
        }
    }

    fn preprocess(&self) -> Preprocess {
        self.config.preprocess.clone()
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let mut y = self.embedding.export_onnx(g, x)?;
        for layer in &self.layers {
            y = layer.export_onnx(g, &y)?;
        }
        let d = self.config.dim;
        let mut first = vec![0f32; y.shape[0]];
        first[0] = 1.0;
        let first = Tensor::from_vec(first, (1, y.shape[0]), &Device::Cpu)?;
        let cls = g.mix_tokens("class_token.select", &first, &y)?;
        let cls = self.norm.export_onnx(g, &cls)?;
        Ok(g.reshape(&cls, &[d, 1, 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_to_the_same_grid_is_the_identity_and_rows_sum_to_one() {
        let same = resample_weights(5, 5);
        for i in 0..5 {
            for j in 0..5 {
                assert!((same[i * 5 + j] - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
        for (from, to) in [(37, 16), (14, 4), (4, 14)] {
            let m = resample_weights(from, to);
            for row in m.chunks_exact(from) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{from}->{to}");
            }
        }
    }

    #[test]
    fn every_trainable_tensor_gets_a_gradient_and_the_map_is_the_patches() {
        let mut net = Vit::load("deit_small_patch16_224", &mut ParamLoader::random(3), false).unwrap().unwrap();
        let names = net.block_names();
        assert_eq!((names[0].as_str(), names[1].as_str(), names[13].as_str()), ("patch_embed", "blocks.0", "norm"));
        for b in 0..names.len() {
            net.set_block_freeze(b, Freeze { frozen: b < 12, train_bn: false }).unwrap();
        }
        let x = crate::kernels::testing::randn(0f32, 1.0, (2, 3, 32, 32)).unwrap();
        let tokens = net.forward_blocks(&x, 0..12, Mode::train(0)).unwrap();
        assert_eq!(tokens.dims(), [2, 5, 384]);
        assert_eq!(net.spatial_map(&tokens).unwrap().unwrap().dims(), [2, 384, 2, 2]);
        let y = net.forward_blocks(&tokens, 12..14, Mode::train(0)).unwrap();
        assert_eq!(y.dims(), [2, 384, 1, 1]);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = Vec::new();
        net.trainable_vars(&mut vars);
        assert_eq!(vars.len(), 12 + 2, "blocks.11's twelve tensors and the final norm's two");
        assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()));
    }

    #[test]
    fn drop_path_changes_training_passes_only() {
        let mut net = Vit::load("deit_small_patch16_224", &mut ParamLoader::random(3), false).unwrap().unwrap();
        let x = crate::kernels::testing::randn(0f32, 1.0, (8, 3, 32, 32)).unwrap();
        let run = |net: &Vit, mode| net.forward_blocks(&x, 0..14, mode).unwrap().flatten_all().unwrap();
        let (eval, plain) = (run(&net, Mode::EVAL), run(&net, Mode::train(5)));
        net.set_drop_path(0.5);
        let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&run(&net, Mode::EVAL), &eval), 0.0, "inference keeps every branch");
        assert_eq!(diff(&plain, &eval), 0.0, "no drop_path, no change in training");
        let (a, b) = (run(&net, Mode::train(5)), run(&net, Mode::train(6)));
        assert!(diff(&a, &eval) > 0.0 && diff(&a, &b) > 0.0, "branches dropped, by the batch's noise");
        assert_eq!(diff(&run(&net, Mode::train(5)), &a), 0.0, "the same noise, the same draws");
    }

    #[test]
    fn an_image_that_is_not_whole_patches_is_refused_by_name() {
        let net = Vit::load("vit_small_patch14_dinov2", &mut ParamLoader::random(3), false).unwrap().unwrap();
        let x = Tensor::zeros((1, 3, 30, 30), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = net.forward_blocks(&x, 0..1, Mode::EVAL).unwrap_err().to_string();
        assert!(e.contains("multiple of 14") && e.contains("30×30") && e.contains("vit_small_patch14_dinov2"), "{e}");
    }
}
