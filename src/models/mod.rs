//! Architectures (one file each), the new classification head, freezing, and
//! each backbone's preprocessing.
//!
//! A backbone is a sequence of named blocks (`features.0` … for MobileNetV2,
//! `stem`, `layer1` … for ResNet). Blocks are the freeze points:
//! `freeze up_to = "features.14"` freezes every block before `features.14`,
//! like Keras' `layers[:14]`.

mod blocks;
pub mod card;
pub mod convnext;
pub mod efficientnet;
pub mod efficientnet_lite;
pub mod inception_v3;
pub mod layers;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod naming;
pub mod resnet;
pub mod vgg;
pub mod vit;

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::augment::Rng;
use crate::error::{Error, Result};
use crate::recipe::{FreezePoint, HeadConfig, Pooling};
use layers::{BatchNorm, Freeze, Linear, Mode, ParamLoader};

/// Every architecture tlab can build: the list the recipe validator checks
/// against, so the two can never disagree.
pub const ARCHITECTURES: &[&str] = crate::recipe::KNOWN_ARCHS;

/// A pretrained feature extractor.
pub trait Backbone: Send + Sync {
    fn arch(&self) -> &'static str;
    /// The freeze points, in forward order.
    fn block_names(&self) -> Vec<String>;
    /// Runs blocks `range` on `x` (the output of block `range.start - 1`).
    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor>;
    /// Channels of the last block's output.
    fn feature_channels(&self) -> usize;
    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()>;
    fn trainable_vars(&self, out: &mut Vec<Var>);
    /// Every parameter and buffer, with the reference state-dict names.
    fn named_vars(&self, out: &mut Vec<(String, Var)>);
    /// The parameters and buffers of block `block` (in `block_names` order),
    /// named as in [`Backbone::named_vars`]: what that block's output depends on
    /// besides its input (the feature cache keys on it).
    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>);
    /// The original ImageNet classifier when it was loaded and is a single
    /// linear layer on globally average-pooled features (VGG's is not: use
    /// [`Backbone::imagenet_logits`], which works for every architecture).
    fn imagenet_classifier(&self) -> Option<&Linear>;
    /// Key prefix of the ImageNet classifier (optional when loading a backbone).
    fn classifier_prefix(&self) -> &'static str;
    fn preprocess(&self) -> Preprocess;
    /// Every block, in inference mode, as ONNX ops from `x` (the input image,
    /// `[3, h, w]`) to the last block's output.
    fn export_onnx(
        &self,
        g: &mut crate::formats::onnx::Graph,
        x: crate::formats::onnx::Value,
    ) -> Result<crate::formats::onnx::Value>;

    /// A block's output as an NCHW map for Grad-CAM: the output itself for
    /// a CNN, the patch tokens laid out on their grid for a Vision
    /// Transformer; `None` when it has no spatial layout.
    fn spatial_map(&self, output: &Tensor) -> Result<Option<Tensor>> {
        Ok((output.rank() == 4).then(|| output.clone()))
    }

    /// Stochastic depth for training: the deepest residual branch dropped
    /// with probability `rate`, shallower ones less, on the reference's
    /// schedule. Only the families with that regulariser in their reference
    /// training (EfficientNet B/V2, ConvNeXt, Vision Transformers) have it;
    /// the recipe refuses `drop_path` for the others, so this does nothing.
    fn set_drop_path(&mut self, _rate: f32) {}

    /// How many leading blocks may give Grad-CAM's default map: all of them
    /// for a CNN. A Vision Transformer's last encoder block hands only its
    /// class token on, so its patch tokens get no gradient: its map is the
    /// input to that block (what pytorch-grad-cam's ViT example uses).
    fn cam_blocks(&self) -> usize {
        self.num_blocks()
    }

    fn num_blocks(&self) -> usize {
        self.block_names().len()
    }

    /// Logits of the original ImageNet classifier for the last block's
    /// output `features`; `None` when the classifier was not loaded.
    fn imagenet_logits(&self, features: &Tensor) -> Result<Option<Tensor>> {
        match self.imagenet_classifier() {
            Some(fc) => Ok(Some(fc.forward(&layers::global_avg_pool(features)?)?)),
            None => Ok(None),
        }
    }

    /// Number of ImageNet classes of the loaded classifier.
    fn imagenet_outputs(&self) -> Option<usize> {
        self.imagenet_classifier().map(Linear::out_features)
    }
}

/// How pixels become the network's input; comes from the backbone, never the
/// recipe, because it must match how the weights were trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Training resolution of the published weights (ImageNet eval uses it).
    pub input_size: u32,
    /// Short-side resize before the centre crop in ImageNet evaluation (256 for 224).
    pub resize_size: u32,
    /// Per-channel mean and std applied to values in [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// torchvision's ImageNet normalisation.
    pub(crate) fn imagenet_torchvision(input_size: u32) -> Self {
        Preprocess {
            input_size,
            resize_size: (input_size as f32 / 0.875).round() as u32,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// TensorFlow's Lite-model normalisation `(pixel − 127) / 128` (mean
    /// 127/255, std 128/255 on [0, 1]) with TF's evaluation crop of
    /// `input / (input + 32)` of the short side.
    pub(crate) fn tf_lite(input_size: u32) -> Self {
        let (mean, std) = (127.0 / 255.0, 128.0 / 255.0);
        Preprocess { input_size, resize_size: input_size + 32, mean: [mean; 3], std: [std; 3] }
    }

    /// Packs RGB pixels (HWC, 0..=255) of `n` equally sized images into a
    /// normalised `[n, 3, h, w]` tensor.
    pub fn to_tensor(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Result<Tensor> {
        let mut out = vec![0f32; n * 3 * h * w];
        let plane = h * w;
        for img in 0..n {
            let src = &pixels[img * plane * 3..(img + 1) * plane * 3];
            let dst = &mut out[img * 3 * plane..(img + 1) * 3 * plane];
            for c in 0..3 {
                let scale = 1.0 / (255.0 * self.std[c]);
                let shift = self.mean[c] / self.std[c];
                for (i, d) in dst[c * plane..(c + 1) * plane].iter_mut().enumerate() {
                    *d = src[i * 3 + c] * scale - shift;
                }
            }
        }
        Ok(Tensor::from_vec(out, (n, 3, h, w), &Device::Cpu)?)
    }
}

/// Builds `arch` with parameters from `p`.
pub fn build_backbone(arch: &str, p: &mut ParamLoader, with_classifier: bool) -> Result<Box<dyn Backbone>> {
    fn boxed<B: Backbone + 'static>(b: Option<B>) -> Option<Box<dyn Backbone>> {
        b.map(|b| Box::new(b) as Box<dyn Backbone>)
    }
    let backbone = match arch {
        "mobilenet_v2" => boxed(Some(mobilenet_v2::MobileNetV2::load(p, with_classifier)?)),
        a if a.starts_with("resnet") || a.starts_with("wide_resnet") => {
            boxed(resnet::ResNet::load(arch, p, with_classifier)?)
        }
        a if a.starts_with("vgg") => boxed(vgg::Vgg::load(arch, p, with_classifier)?),
        "inception_v3" => boxed(Some(inception_v3::InceptionV3::load(p, with_classifier)?)),
        a if a.starts_with("convnext") => boxed(convnext::ConvNeXt::load(arch, p, with_classifier)?),
        a if a.starts_with("mobilenet_v3") => boxed(mobilenet_v3::MobileNetV3::load(arch, p, with_classifier)?),
        a if a.starts_with("efficientnet_b") || a.starts_with("efficientnet_v2") => {
            boxed(efficientnet::EfficientNet::load(arch, p, with_classifier)?)
        }
        a if crate::recipe::patch_size(a).is_some() => boxed(vit::Vit::load(arch, p, with_classifier)?),
        a if a.starts_with("efficientnet_lite") => {
            boxed(efficientnet_lite::EfficientNetLite::load(arch, p, with_classifier)?)
        }
        _ => None,
    };
    backbone.ok_or_else(|| unknown_backbone(arch))
}

/// Builds `arch` from a checkpoint's `tensors` as a fine-tuning backbone:
/// its ImageNet classifier (if the file has one) is ignored, and with
/// `strict` every other tensor must be used. `source` names the file in
/// messages. `tlab run` and `tlab check` both load weights through here, so
/// they report a misfit with the same words.
pub(crate) fn backbone_from_tensors(
    arch: &str,
    source: impl Into<String>,
    tensors: std::collections::HashMap<String, Tensor>,
    strict: bool,
) -> Result<Box<dyn Backbone>> {
    let (tensors, _) = naming::to_reference(arch, tensors)?;
    let mut p = ParamLoader::from_tensors(source, tensors);
    let backbone = build_backbone(arch, &mut p, false)?;
    p.skip_prefix(backbone.classifier_prefix());
    p.finish(strict, None)?;
    Ok(backbone)
}

/// Conv units in a row with an optional identity shortcut around them (an
/// inverted-residual block), as ONNX ops.
pub(crate) fn export_chain(
    g: &mut crate::formats::onnx::Graph,
    layers: &[layers::ConvBnAct],
    residual: bool,
    x: crate::formats::onnx::Value,
) -> Result<crate::formats::onnx::Value> {
    let mut y = x.clone();
    for layer in layers {
        y = layer.export_onnx(g, &y)?;
    }
    Ok(if residual { g.add(&y, &x) } else { y })
}

/// A backbone output averaged over its positions (the spatial map, or a
/// ViT's tokens): `[batch, channels]`, what `tlab embed` and
/// [`crate::lab::Lab::embeddings`] give.
pub(crate) fn mean_over_positions(features: Tensor) -> Result<Tensor> {
    Ok(if features.rank() > 2 { features.flatten_from(2)?.mean(2)? } else { features })
}

pub(crate) fn unknown_backbone(name: &str) -> Error {
    let best = crate::util::suggest::suggest(name, ARCHITECTURES);
    Error::UnknownBackbone {
        name: name.to_owned(),
        hint: best.map(|b| format!(" (did you mean `{b}`?)")).unwrap_or_default(),
        known: ARCHITECTURES.join(", "),
    }
}

/// Resolves a freeze point to the number of leading blocks to freeze.
pub(crate) fn frozen_block_count(point: &FreezePoint, names: &[String]) -> Result<usize> {
    match point {
        FreezePoint::All => Ok(names.len()),
        FreezePoint::None => Ok(0),
        FreezePoint::Index(i) if *i <= names.len() => Ok(*i),
        FreezePoint::Index(i) => Err(Error::NoSuchBlock { what: "freeze up_to", block: *i, blocks: names.len() }),
        FreezePoint::Block(name) => block_position("freeze up_to", names, name),
    }
}

/// Where block `name` is among `names` (0-based), for the recipe key or
/// option `key` that names it (`freeze up_to`, `--layer`): a misspelt name
/// gets a "did you mean" and the range of the real names.
pub(crate) fn block_position(key: &'static str, names: &[String], name: &str) -> Result<usize> {
    names.iter().position(|n| n == name).ok_or_else(|| Error::UnknownBlock {
        key,
        name: name.to_owned(),
        hint: crate::util::suggest::suggest(name, &names.iter().map(String::as_str).collect::<Vec<_>>())
            .map(|b| format!("did you mean `{b}`? "))
            .unwrap_or_default(),
        first: names.first().cloned().unwrap_or_default(),
        last: names.last().cloned().unwrap_or_default(),
    })
}

/// Width of the head's input for `pooling`: the channels (twice for
/// concat pooling) or, for flatten, the whole feature map at `size` (found
/// with one forward pass).
pub fn head_inputs(backbone: &dyn Backbone, pooling: Pooling, size: u32) -> Result<usize> {
    match pooling {
        Pooling::Avg => Ok(backbone.feature_channels()),
        Pooling::Concat => Ok(2 * backbone.feature_channels()),
        Pooling::Flatten => {
            let s = size as usize;
            let x = Tensor::zeros((1, 3, s, s), candle_core::DType::F32, &Device::Cpu)?;
            Ok(backbone.forward_blocks(&x, 0..backbone.num_blocks(), Mode::EVAL)?.elem_count())
        }
    }
}

/// The new head: pooling, optional hidden layers (ReLU + dropout), then a
/// linear layer sized to the classes found. With `batchnorm`, every linear
/// layer's input is batch-normalised first, as in fastai's `create_head`
/// (BatchNorm1d → Dropout → Linear [→ ReLU]).
pub struct Head {
    pub config: HeadConfig,
    hidden: Vec<Linear>,
    fc: Linear,
    /// `head.bn.i` normalises the input of linear layer `i` (the hidden
    /// layers, then `fc`); empty without `batchnorm`.
    norms: Vec<BatchNorm>,
}

impl Head {
    pub fn new(config: &HeadConfig, in_features: usize, classes: usize, seed: u64) -> Result<Self> {
        let mut p = ParamLoader::random(seed);
        Self::build(config, in_features, classes, &mut p, false)
    }

    /// Loads a head saved by `tlab run` (names `head.hidden.N`, `head.fc`).
    pub fn load(config: &HeadConfig, in_features: usize, classes: usize, p: &mut ParamLoader) -> Result<Self> {
        Self::build(config, in_features, classes, p, true)
    }

    fn build(
        config: &HeadConfig,
        in_features: usize,
        classes: usize,
        p: &mut ParamLoader,
        from_file: bool,
    ) -> Result<Self> {
        let mut hidden = Vec::new();
        let mut norms = Vec::new();
        let mut fan_in = in_features;
        // PyTorch's BatchNorm1d epsilon; a fresh BN starts as the identity on
        // standardised inputs (weight 1, bias 0, running mean 0, variance 1).
        let mut norm = |p: &mut ParamLoader, i: usize, width: usize| -> Result<()> {
            if config.batchnorm {
                norms.push(BatchNorm::load(p, &format!("head.bn.{i}"), width, 1e-5)?);
            }
            Ok(())
        };
        for (i, &units) in config.hidden.iter().enumerate() {
            norm(p, i, fan_in)?;
            let name = format!("head.hidden.{i}");
            hidden.push(if from_file {
                Linear::load(p, &name, fan_in, units)?
            } else {
                Linear::fresh(p, &name, fan_in, units)?
            });
            fan_in = units;
        }
        norm(p, config.hidden.len(), fan_in)?;
        let fc = if from_file {
            Linear::load(p, "head.fc", fan_in, classes)?
        } else {
            Linear::fresh(p, "head.fc", fan_in, classes)?
        };
        Ok(Head { config: config.clone(), hidden, fc, norms })
    }

    pub fn forward(&self, features: &Tensor, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let mut x = match self.config.pooling {
            Pooling::Avg => layers::global_avg_pool(features)?,
            Pooling::Flatten => features.flatten_from(1)?,
            Pooling::Concat => {
                let max = features.max(3)?.max(2)?;
                Tensor::cat(&[&max, &layers::global_avg_pool(features)?], 1)?
            }
        };
        for (i, layer) in self.linears().enumerate() {
            if let Some(bn) = self.norms.get(i) {
                // The head is always trained: batch statistics while training,
                // the running estimates otherwise. (N, C) is BN over 1×1 maps.
                let (n, c) = x.dims2()?;
                x = bn.forward(&x.reshape((n, c, 1, 1))?, mode.training, true)?.reshape((n, c))?;
            }
            // Dropout feeds every layer after a hidden one, and `fc` when it
            // is the only layer.
            if mode.training && (i > 0 || self.hidden.is_empty()) {
                x = layers::dropout(&x, self.config.dropout, rng)?;
            }
            x = layer.forward(&x)?;
            if i < self.hidden.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }

    /// The hidden layers, then `fc`.
    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.hidden.iter().chain(std::iter::once(&self.fc))
    }

    /// The head in an ONNX graph, in inference mode (no dropout). Each
    /// BatchNorm is folded into the `Gemm` it feeds, so the graph has the
    /// same ops with or without `batchnorm`.
    pub fn export_onnx(
        &self,
        g: &mut crate::formats::onnx::Graph,
        features: &crate::formats::onnx::Value,
    ) -> Result<crate::formats::onnx::Value> {
        let mut x = match self.config.pooling {
            Pooling::Avg => g.global_avg_pool(features),
            Pooling::Flatten => g.flatten(features),
            Pooling::Concat => g.global_concat_pool(features),
        };
        for (i, layer) in self.linears().enumerate() {
            x = layer.export_onnx_after(g, &x, self.norms.get(i))?;
            if i < self.hidden.len() {
                x = g.relu(&x);
            }
        }
        Ok(x)
    }

    pub(crate) fn trainable_vars(&self, out: &mut Vec<Var>) {
        for bn in &self.norms {
            bn.affine_vars(out);
        }
        for l in self.linears() {
            l.trainable_vars(out);
        }
    }

    pub fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for bn in &self.norms {
            bn.named_vars(out);
        }
        for l in self.linears() {
            l.named_vars(out);
        }
    }

    pub fn classes(&self) -> usize {
        self.fc.out_features()
    }
}

/// A backbone with a new head: the model that tlab fine-tunes.
pub struct Classifier {
    pub backbone: Box<dyn Backbone>,
    pub head: Head,
    /// Leading blocks that are frozen.
    frozen_blocks: usize,
    train_bn: bool,
    /// The backbone's stochastic-depth rate (0: none).
    drop_path: f32,
}

impl Classifier {
    pub fn new(backbone: Box<dyn Backbone>, head: Head) -> Self {
        Classifier { backbone, head, frozen_blocks: 0, train_bn: false, drop_path: 0.0 }
    }

    /// Stochastic depth while training (see [`Backbone::set_drop_path`]).
    pub fn set_drop_path(&mut self, rate: f32) {
        self.backbone.set_drop_path(rate);
        self.drop_path = rate;
    }

    /// The stochastic-depth rate set with [`Classifier::set_drop_path`].
    pub fn drop_path(&self) -> f32 {
        self.drop_path
    }

    /// Freezes the first `n` blocks (and unfreezes the rest).
    pub fn freeze(&mut self, n: usize, train_bn: bool) -> Result<()> {
        for b in 0..self.backbone.num_blocks() {
            let freeze = Freeze { frozen: b < n, train_bn: b < n && train_bn };
            self.backbone.set_block_freeze(b, freeze)?;
        }
        self.frozen_blocks = n;
        self.train_bn = train_bn;
        Ok(())
    }

    /// The whole classifier (backbone and head) as ONNX ops: image in, logits out.
    pub fn export_onnx(
        &self,
        g: &mut crate::formats::onnx::Graph,
        x: crate::formats::onnx::Value,
    ) -> Result<crate::formats::onnx::Value> {
        let features = self.backbone.export_onnx(g, x)?;
        self.head.export_onnx(g, &features)
    }

    /// The number of leading blocks whose output never changes during
    /// training (frozen, and BN not trainable): their output can be cached.
    pub(crate) fn constant_prefix(&self) -> usize {
        if self.train_bn {
            0
        } else {
            self.frozen_blocks
        }
    }

    /// Logits for a batch, optionally starting from a cached prefix output.
    pub fn forward_from(&self, x: &Tensor, start_block: usize, mode: Mode, rng: &mut Rng) -> Result<Tensor> {
        let n = self.backbone.num_blocks();
        let features = if crate::util::profile::enabled() && mode.training {
            // One block at a time, so that each block's time is its own.
            let names = self.backbone.block_names();
            let mut x = x.clone();
            for (b, name) in names.iter().enumerate().take(n).skip(start_block) {
                let _t = crate::util::profile::scope(&format!("train forward {name}"));
                x = self.backbone.forward_blocks(&x, b..b + 1, mode)?;
            }
            x
        } else {
            self.backbone.forward_blocks(x, start_block..n, mode)?
        };
        let _t = mode.training.then(|| crate::util::profile::scope("train forward head"));
        self.head.forward(&features, mode, rng)
    }

    /// Output of the first `blocks` blocks (no graph: they must be frozen).
    pub fn prefix(&self, x: &Tensor, blocks: usize) -> Result<Tensor> {
        let _t = crate::util::profile::scope("frozen blocks (forward, no graph)");
        Ok(self.backbone.forward_blocks(x, 0..blocks, Mode::EVAL)?.detach())
    }

    pub(crate) fn trainable_vars(&self) -> Vec<Var> {
        let mut vars = Vec::new();
        self.backbone.trainable_vars(&mut vars);
        self.head.trainable_vars(&mut vars);
        vars
    }

    /// The trainable parameters by group, earliest first: one group per
    /// backbone block that has any, then the head. Discriminative learning
    /// rates spread over these groups.
    pub fn trainable_groups(&self) -> Vec<Vec<Var>> {
        let trainable: std::collections::HashSet<_> =
            self.trainable_vars().iter().map(|v| v.as_tensor().id()).collect();
        let mut groups = Vec::new();
        for b in 0..self.backbone.num_blocks() {
            let mut named = Vec::new();
            self.backbone.block_vars(b, &mut named);
            let group: Vec<Var> =
                named.into_iter().map(|(_, v)| v).filter(|v| trainable.contains(&v.as_tensor().id())).collect();
            if !group.is_empty() {
                groups.push(group);
            }
        }
        let mut head = Vec::new();
        self.head.trainable_vars(&mut head);
        groups.push(head);
        groups
    }

    /// The parameters and buffers training can change: those of the
    /// unfrozen blocks and the head (what EMA averages).
    pub fn mutable_named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for b in self.frozen_blocks..self.backbone.num_blocks() {
            self.backbone.block_vars(b, &mut out);
        }
        self.head.named_vars(&mut out);
        out
    }

    /// Every parameter and buffer by name (backbone with reference names,
    /// head under `head.`).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.backbone.named_vars(&mut out);
        self.head.named_vars(&mut out);
        out
    }

    /// A deep copy of every weight and the freeze state. `Var::set` writes in
    /// place, so a snapshot must copy, not share, the storage.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let tensors = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_detached_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Snapshot { tensors, frozen_blocks: self.frozen_blocks, train_bn: self.train_bn })
    }

    /// A deep copy of what training can change: the blocks after the frozen
    /// prefix and the head (with their running statistics), and the freeze
    /// state; [`restore`](Self::restore) puts it back like a whole snapshot.
    /// What guards an epoch (NanGuard, early stopping's best weights) copies
    /// this, not the frozen backbone. With `train_bn` the frozen blocks'
    /// BatchNorm layers train too, so everything is copied.
    pub fn snapshot_trainable(&self) -> Result<Snapshot> {
        if self.train_bn {
            return self.snapshot();
        }
        let tensors = self
            .mutable_named_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_detached_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Snapshot { tensors, frozen_blocks: self.frozen_blocks, train_bn: self.train_bn })
    }

    /// Like [`snapshot`](Self::snapshot), but every tensor whose values equal
    /// the one of the same name in `previous` shares that tensor's storage
    /// instead of being copied: the Lab's per-step states then cost only what
    /// each step changed (the trained blocks, the head, BatchNorm statistics),
    /// not a copy of the whole network per step.
    pub(crate) fn snapshot_sharing(&self, previous: Option<&Snapshot>) -> Result<Snapshot> {
        let Some(previous) = previous else { return self.snapshot() };
        let before: HashMap<&str, &Tensor> = previous.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let tensors = self
            .named_vars()
            .into_iter()
            .map(|(n, v)| {
                let now = v.as_detached_tensor();
                match before.get(n.as_str()) {
                    Some(&old) if same_values(old, &now)? => Ok((n, old.clone())),
                    _ => Ok((n, now.copy()?)),
                }
            })
            .collect::<Result<_>>()?;
        Ok(Snapshot { tensors, frozen_blocks: self.frozen_blocks, train_bn: self.train_bn })
    }

    /// Puts a snapshot back (weights, running statistics and freeze state).
    pub fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        let by_name: HashMap<&str, &Tensor> = snap.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, var) in self.named_vars() {
            if let Some(t) = by_name.get(name.as_str()) {
                var.set(t)?;
            }
        }
        // Re-fold frozen layers from the restored weights.
        self.freeze(snap.frozen_blocks, snap.train_bn)
    }
}

/// Whether two CPU tensors hold the same shape and values, compared in place
/// (no temporary mask the size of the tensor).
fn same_values(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        return Ok(false);
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let n = a.elem_count();
    Ok(match (&*sa, &*sb) {
        (candle_core::Storage::Cpu(x), candle_core::Storage::Cpu(y)) => match (x, y) {
            (candle_core::CpuStorage::F32(x), candle_core::CpuStorage::F32(y)) => {
                let (oa, ob) = (la.start_offset(), lb.start_offset());
                // Bitwise, so a NaN equals itself and -0.0 differs from 0.0.
                x[oa..oa + n].iter().zip(&y[ob..ob + n]).all(|(p, q)| p.to_bits() == q.to_bits())
            }
            _ => false,
        },
        _ => false,
    })
}

/// Saved weights of a [`Classifier`], for early stopping and step snapshots.
#[derive(Clone)]
pub struct Snapshot {
    pub tensors: Vec<(String, Tensor)>,
    pub frozen_blocks: usize,
    pub train_bn: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(arch: &str, with_classifier: bool) -> HashMap<String, Tensor> {
        let b = build_backbone(arch, &mut ParamLoader::random(0), with_classifier).unwrap();
        let mut vars = Vec::new();
        b.named_vars(&mut vars);
        if let Some(fc) = b.imagenet_classifier() {
            fc.named_vars(&mut vars);
        }
        vars.into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect()
    }

    #[test]
    fn a_sharing_snapshot_copies_only_what_changed() {
        let backbone = build_backbone("mobilenet_v2", &mut ParamLoader::random(1), false).unwrap();
        let cfg = HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.0, batchnorm: false };
        let head = Head::new(&cfg, backbone.feature_channels(), 3, 2).unwrap();
        let model = Classifier::new(backbone, head);
        let first = model.snapshot().unwrap();
        let (name, fc) = model.named_vars().into_iter().find(|(n, _)| n == "head.fc.weight").unwrap();
        fc.set(&(fc.as_tensor() + 1.0).unwrap()).unwrap();
        let second = model.snapshot_sharing(Some(&first)).unwrap();
        for ((n, a), (_, b)) in first.tensors.iter().zip(&second.tensors) {
            if *n == name {
                assert_ne!(a.id(), b.id(), "the changed tensor is copied");
                let want = fc.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
            } else {
                assert_eq!(a.id(), b.id(), "{n} is unchanged and shared");
            }
        }
        // Restoring the shared snapshot gives back the values, not aliases:
        // changing the model afterwards leaves both snapshots as they were.
        let mut model = model;
        model.restore(&first).unwrap();
        assert_eq!(
            fc.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            first.tensors.iter().find(|(n, _)| *n == name).unwrap().1.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        fc.set(&(fc.as_tensor() * 0.0).unwrap()).unwrap();
        let kept = second.tensors.iter().find(|(n, _)| *n == name).unwrap().1.flatten_all().unwrap();
        assert!(kept.to_vec1::<f32>().unwrap().iter().any(|v| *v != 0.0));
    }

    #[test]
    fn block_vars_partition_named_vars_for_every_architecture() {
        for arch in ARCHITECTURES {
            let b = build_backbone(arch, &mut ParamLoader::random(0), false).unwrap();
            let mut all = Vec::new();
            b.named_vars(&mut all);
            let mut by_block = Vec::new();
            for k in 0..b.num_blocks() {
                let before = by_block.len();
                b.block_vars(k, &mut by_block);
                assert!(by_block.len() > before, "{arch}: block {k} has no vars");
            }
            let names = |v: &[(String, Var)]| {
                let mut n: Vec<String> = v.iter().map(|(n, _)| n.clone()).collect();
                n.sort();
                n
            };
            assert_eq!(names(&by_block), names(&all), "{arch}");
        }
    }

    #[test]
    fn every_architecture_builds_and_names_its_blocks() {
        for arch in ARCHITECTURES {
            let b = build_backbone(arch, &mut ParamLoader::random(0), false).unwrap();
            assert_eq!(b.arch(), *arch);
            let names = b.block_names();
            assert!(names.len() >= 5, "{arch}: {names:?}");
            let unique: std::collections::HashSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{arch}: duplicate block names");
        }
        assert!(build_backbone("resnet200", &mut ParamLoader::random(0), false).is_err());
        let err = build_backbone("resnet5O", &mut ParamLoader::random(0), false).err().unwrap().to_string();
        assert!(err.contains("did you mean `resnet50`"), "{err}");
    }

    #[test]
    fn timm_style_names_get_a_closest_name_hint() {
        // timm saves EfficientNet-Lite's stem as `conv_stem`/`bn1`, this port as `_conv_stem`/`_bn0`.
        let mut t = checkpoint("efficientnet_lite0", false);
        let w = t.remove("_conv_stem.weight").unwrap();
        t.insert("conv_stem.weight".into(), w);
        let mut p = ParamLoader::from_tensors("timm.safetensors", t);
        build_backbone("efficientnet_lite0", &mut p, false).unwrap();
        let err = p.finish(true, None).unwrap_err().to_string();
        assert!(
            err.contains("missing `_conv_stem.weight` (shape [32, 3, 3, 3]) (closest in the file: `conv_stem.weight`"),
            "{err}"
        );
        assert!(err.contains("unexpected `conv_stem.weight`"), "{err}");
    }

    #[test]
    fn headless_checkpoints_and_extra_tensors_load_as_backbones_when_not_strict() {
        // As the backbone step loads: no classifier wanted, the file's classifier skipped.
        let load = |t: HashMap<String, Tensor>, strict: bool| {
            let mut p = ParamLoader::from_tensors("ckpt", t);
            let b = build_backbone("resnet18", &mut p, false).unwrap();
            p.skip_prefix(b.classifier_prefix());
            p.finish(strict, None)
        };
        load(checkpoint("resnet18", false), true).unwrap();
        load(checkpoint("resnet18", true), true).unwrap();
        let mut extra = checkpoint("resnet18", false);
        extra.insert("aux_head.weight".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
        let err = load(extra.clone(), true).unwrap_err().to_string();
        assert!(err.contains("unexpected `aux_head.weight`"), "{err}");
        load(extra, false).unwrap();
        // A missing backbone tensor is an error even when not strict.
        let mut short = checkpoint("resnet18", false);
        short.remove("layer4.1.bn2.running_var");
        let err = load(short, false).unwrap_err().to_string();
        assert!(err.contains("missing `layer4.1.bn2.running_var`"), "{err}");
    }
}
