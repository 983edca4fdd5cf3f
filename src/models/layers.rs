//! Building blocks shared by the architectures: parameter loading with
//! precise mismatch errors, convolution + BatchNorm + activation, linear.
//!
//! Freezing works per layer. A frozen layer reads its `Var`s through
//! `as_detached_tensor`, so candle records no graph for it and spends no
//! gradient work on it; a frozen conv + BatchNorm pair is folded into one
//! convolution with a bias (BatchNorm in eval mode is an affine map per
//! channel), and frozen BatchNorm never uses batch statistics — the
//! Keras#9214 pitfall, where "frozen" BN layers kept updating their moments.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor, Var, D};

use crate::augment::Rng;
use crate::error::{Error, Result};
use crate::formats::onnx::{ConvGeometry, Graph, Value};
use crate::kernels::{self, Padding};

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// torchvision's conv init: kaiming normal, fan-out, ReLU gain.
    KaimingFanOut,
    /// `nn.Linear`'s default: uniform in ±1/√fan_in.
    LinearUniform {
        fan_in: usize,
    },
    Const(f32),
}

/// Hands out parameters by their state-dict name, either from a checkpoint or
/// freshly initialised, and gathers every mismatch so one error lists them all.
pub struct ParamLoader {
    source: String,
    tensors: HashMap<String, Tensor>,
    used: HashSet<String>,
    problems: Vec<String>,
    rng: Rng,
    from_checkpoint: bool,
}

impl ParamLoader {
    /// Parameters from a checkpoint; `source` names it in error messages.
    pub fn from_tensors(source: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        ParamLoader {
            source: source.into(),
            tensors,
            used: HashSet::new(),
            problems: Vec::new(),
            rng: Rng::new(0),
            from_checkpoint: true,
        }
    }

    /// Randomly initialised parameters (seeded, reproducible).
    pub fn random(seed: u64) -> Self {
        ParamLoader {
            source: "random init".into(),
            tensors: HashMap::new(),
            used: HashSet::new(),
            problems: Vec::new(),
            rng: Rng::new(seed),
            from_checkpoint: false,
        }
    }

    /// Fresh parameters that no checkpoint provides (a new head), always random.
    pub fn fresh(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        self.init_var(name, shape, init)
    }

    fn init_var(&mut self, _name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let numel: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Const(v) => vec![v; numel],
            Init::KaimingFanOut => {
                let fan_out = shape[0] * shape[2..].iter().product::<usize>();
                let std = (2.0 / fan_out.max(1) as f64).sqrt();
                (0..numel).map(|_| (standard_normal(&mut self.rng) * std) as f32).collect()
            }
            Init::LinearUniform { fan_in } => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                (0..numel).map(|_| self.rng.uniform(-bound, bound) as f32).collect()
            }
        };
        Ok(Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)?)
    }

    /// The parameter called `name` with the given shape.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        if !self.from_checkpoint {
            return self.init_var(name, shape, init);
        }
        match self.tensors.get(name) {
            Some(t) if t.dims() == shape => {
                self.used.insert(name.to_owned());
                Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
            }
            Some(t) => {
                self.used.insert(name.to_owned());
                self.problems.push(format!("`{name}` has shape {:?}, expected {:?}", t.dims(), shape));
                placeholder(shape)
            }
            None => {
                let hint = closest_names(name, self.tensors.keys().map(String::as_str));
                self.problems.push(format!("missing `{name}` (shape {shape:?}){hint}"));
                placeholder(shape)
            }
        }
    }

    /// Marks names that the architecture knows but does not need (e.g.
    /// `num_batches_tracked`) as consumed.
    pub fn skip(&mut self, name: &str) {
        self.used.insert(name.to_owned());
    }

    /// Marks every tensor under `prefix` as consumed (a classifier that the
    /// new head replaces).
    pub(crate) fn skip_prefix(&mut self, prefix: &str) {
        let names: Vec<String> = self.tensors.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        self.used.extend(names);
    }

    /// Ends loading. `strict` turns unused tensors into errors; with
    /// `optional_prefix`, missing tensors under it (the ImageNet classifier)
    /// are not an error, which is how a headless checkpoint loads as a backbone.
    pub fn finish(mut self, strict: bool, optional_prefix: Option<&str>) -> Result<()> {
        if !self.from_checkpoint {
            return Ok(());
        }
        if let Some(prefix) = optional_prefix {
            self.problems.retain(|p| !p.starts_with(&format!("missing `{prefix}")));
        }
        if strict {
            let mut unused: Vec<&String> = self.tensors.keys().filter(|k| !self.used.contains(*k)).collect();
            unused.sort();
            for name in unused.into_iter().take(8) {
                self.problems.push(format!("unexpected `{name}`"));
            }
        }
        if self.problems.is_empty() {
            return Ok(());
        }
        let total = self.problems.len();
        let mut message = format!("checkpoint does not fit the architecture ({total} problem(s)): ");
        message.push_str(&self.problems.iter().take(6).cloned().collect::<Vec<_>>().join("; "));
        if total > 6 {
            message.push_str(&format!("; … {} more", total - 6));
        }
        Err(Error::Mismatch { source_name: self.source, message })
    }
}

/// Stands in for a tensor the checkpoint lacks or has misshapen, so loading
/// can go on and report every problem at once: [`ParamLoader::finish`] fails
/// anyway. Zeros, not a random init: `tlab inspect` tries every architecture
/// on a file, and drawing VGG's 138 M random numbers per try took seconds.
fn placeholder(shape: &[usize]) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::zeros(shape, DType::F32, &Device::Cpu)?)?)
}

/// " (closest in the file: `a`, `b`)" for a missing key, recognising the
/// usual culprits: a DataParallel `module.` prefix, timm-style renames.
fn closest_names<'a>(name: &str, keys: impl Iterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = keys.collect();
    if keys.iter().any(|k| k.strip_prefix("module.") == Some(name)) {
        return " (the file has it as `module.…`: saved from DataParallel; strip the prefix)".into();
    }
    let mut scored: Vec<(usize, &str)> =
        keys.iter().map(|k| (crate::util::suggest::levenshtein(name, k), *k)).collect();
    scored.sort();
    let close: Vec<String> =
        scored.iter().take(2).filter(|(d, _)| *d <= name.len() / 2).map(|(_, k)| format!("`{k}`")).collect();
    if close.is_empty() {
        String::new()
    } else {
        format!(" (closest in the file: {})", close.join(", "))
    }
}

/// Box–Muller on the shared [`Rng`], so initialisation is seeded like the rest.
fn standard_normal(rng: &mut Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Activation after a conv + BN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
    /// PyTorch's `Hardswish`, `x · relu6(x + 3) / 6` (MobileNetV3).
    Hardswish,
    /// PyTorch's `Hardsigmoid`, `relu6(x + 3) / 6` (MobileNetV3's squeeze-and-excitation gate).
    Hardsigmoid,
    /// `x · sigmoid(x)` (EfficientNet).
    Silu,
    /// EfficientNet's squeeze-and-excitation gate.
    Sigmoid,
}

impl Act {
    /// The part of the activation that is a `clamp(lo, hi)`, which the
    /// kernels fuse into the convolution or the BatchNorm; the hard
    /// activations have none, and [`Act::after_clamp`] applies them whole.
    pub(crate) fn bounds(self) -> (f32, f32) {
        match self {
            Act::None | Act::Hardswish | Act::Hardsigmoid | Act::Silu | Act::Sigmoid => {
                (f32::NEG_INFINITY, f32::INFINITY)
            }
            Act::Relu => (0.0, f32::INFINITY),
            Act::Relu6 => (0.0, 6.0),
        }
    }

    /// What is left of the activation after a fused clamp of [`Act::bounds`].
    pub(crate) fn after_clamp(self, y: Tensor) -> Result<Tensor> {
        match self {
            Act::Hardswish | Act::Hardsigmoid | Act::Silu | Act::Sigmoid => self.apply(&y),
            Act::None | Act::Relu | Act::Relu6 => Ok(y),
        }
    }

    /// The activation in an ONNX graph: clamps as `Relu`/`Clip`, the hard
    /// sigmoid and swish from elementary ops.
    pub(crate) fn export_onnx(self, g: &mut Graph, x: Value) -> Result<Value> {
        match self {
            Act::Hardswish => g.hard_swish(&x),
            Act::Hardsigmoid => g.hard_sigmoid(&x),
            Act::Sigmoid => Ok(g.sigmoid(&x)),
            Act::Silu => {
                let gate = g.sigmoid(&x);
                Ok(g.mul(&x, &gate))
            }
            Act::None | Act::Relu | Act::Relu6 => {
                let (lo, hi) = self.bounds();
                g.clamp(x, lo, hi)
            }
        }
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Act::None => x.clone(),
            Act::Relu => x.relu()?,
            Act::Relu6 => kernels::elementwise::relu6(x)?,
            Act::Hardsigmoid => (kernels::elementwise::relu6(&(x + 3.0)?)? / 6.0)?,
            Act::Hardswish => x.mul(&(kernels::elementwise::relu6(&(x + 3.0)?)? / 6.0)?)?,
            Act::Silu => kernels::norm::silu(x)?,
            Act::Sigmoid => candle_nn::ops::sigmoid(x)?,
        })
    }
}

/// How a layer takes part in the current forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// True during fine-tuning (dropout on, trainable BN uses batch statistics).
    pub training: bool,
    /// Where this batch's stochastic-depth draws come from (the fit loop
    /// derives it from the seed, the epoch and the batch), so that a run is
    /// reproducible and resumes alike.
    pub noise: u64,
}

impl Mode {
    /// Inference: BatchNorm on its running statistics, every branch kept.
    pub const EVAL: Mode = Mode { training: false, noise: 0 };

    /// Training, with `noise` for stochastic depth.
    pub fn train(noise: u64) -> Mode {
        Mode { training: true, noise }
    }
}

/// Stochastic depth of one residual branch (Huang et al. 2016;
/// torchvision's `StochasticDepth` in "row" mode, timm's `DropPath`): while
/// training, each image's branch is dropped with probability `rate` and a
/// kept one is scaled by `1 / (1 − rate)`. `site` numbers the branch within
/// the network, so that every branch draws its own images from the batch's
/// `mode.noise`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct DropPath {
    pub rate: f32,
    pub site: u64,
}

impl DropPath {
    pub(crate) const NONE: DropPath = DropPath { rate: 0.0, site: 0 };

    pub fn apply(self, branch: Tensor, mode: Mode) -> Result<Tensor> {
        if !mode.training || self.rate <= 0.0 {
            return Ok(branch);
        }
        let n = branch.dim(0)?;
        let keep = 1.0 - self.rate;
        let mut rng = Rng::derive(mode.noise, self.site);
        let mask: Vec<f32> =
            (0..n).map(|_| if rng.uniform(0.0, 1.0) < f64::from(keep) { 1.0 / keep } else { 0.0 }).collect();
        let mut shape = vec![1; branch.rank()];
        shape[0] = n;
        let mask = Tensor::from_vec(mask, shape, branch.device())?;
        Ok(branch.broadcast_mul(&mask)?)
    }
}

/// The rate of residual branch `index` of `count` when the deepest gets
/// `rate` and the first none (torchvision's ConvNeXt, timm's ViT:
/// `rate · index / (count − 1)`).
pub fn drop_path_rate(rate: f32, index: usize, count: usize) -> f32 {
    if count <= 1 {
        return 0.0;
    }
    rate * index as f32 / (count - 1) as f32
}

/// The freeze state of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Freeze {
    pub frozen: bool,
    /// fastai's `train_bn`: BatchNorm stays trainable inside a frozen block.
    pub train_bn: bool,
}

/// Reads a parameter for the forward pass: tracked when trainable, detached
/// (so no graph and no gradient) when frozen.
pub(crate) fn read(v: &Var, trainable: bool) -> Tensor {
    if trainable {
        v.as_tensor().clone()
    } else {
        v.as_detached_tensor()
    }
}

/// BatchNorm2d with torchvision's names and semantics (biased batch variance
/// for normalising, unbiased for the running estimate).
pub struct BatchNorm {
    prefix: String,
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    pub fn load(p: &mut ParamLoader, prefix: &str, channels: usize, eps: f64) -> Result<Self> {
        let c = [channels];
        let bn = BatchNorm {
            weight: p.get(&format!("{prefix}.weight"), &c, Init::Const(1.0))?,
            bias: p.get(&format!("{prefix}.bias"), &c, Init::Const(0.0))?,
            running_mean: p.get(&format!("{prefix}.running_mean"), &c, Init::Const(0.0))?,
            running_var: p.get(&format!("{prefix}.running_var"), &c, Init::Const(1.0))?,
            prefix: prefix.to_owned(),
            eps,
            momentum: 0.1,
        };
        p.skip(&format!("{prefix}.num_batches_tracked"));
        Ok(bn)
    }

    /// Per-channel `(scale, shift)` of the eval-mode transform.
    fn eval_affine(&self, affine_trainable: bool) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_detached_tensor() + self.eps)?.sqrt()?.recip()?;
        let scale = read(&self.weight, affine_trainable).mul(&inv_std)?;
        let shift = read(&self.bias, affine_trainable).sub(&(self.running_mean.as_detached_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// `use_batch_stats`: normalise with this batch's moments and update the
    /// running estimates (train mode); otherwise use the running estimates.
    pub fn forward(&self, x: &Tensor, use_batch_stats: bool, affine_trainable: bool) -> Result<Tensor> {
        self.forward_act(x, use_batch_stats, affine_trainable, Act::None)
    }

    /// BatchNorm then `act`; with batch statistics the activation is fused
    /// into the BatchNorm op (one autograd node instead of two).
    pub(crate) fn forward_act(
        &self,
        x: &Tensor,
        use_batch_stats: bool,
        affine_trainable: bool,
        act: Act,
    ) -> Result<Tensor> {
        let c = x.dim(1)?;
        if !use_batch_stats {
            let (scale, shift) = self.eval_affine(affine_trainable)?;
            let y = x.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?.broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
            return act.apply(&y);
        }
        let (n, _, h, w) = x.dims4()?;
        let count = (n * h * w) as f64;
        let (y, mean, var) = kernels::batchnorm::batch_norm_train(
            x,
            &read(&self.weight, affine_trainable),
            &read(&self.bias, affine_trainable),
            self.eps,
            act.bounds(),
        )?;
        let y = act.after_clamp(y)?;
        // Running estimates use torch's momentum convention and the unbiased variance.
        let m = self.momentum;
        let unbiased = (var * (count / (count - 1.0).max(1.0)))?;
        let new_mean = ((self.running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?;
        let new_var = ((self.running_var.as_detached_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(y)
    }

    /// The trainable scale and shift (not the running estimates).
    pub(crate) fn affine_vars(&self, out: &mut Vec<Var>) {
        out.push(self.weight.clone());
        out.push(self.bias.clone());
    }

    pub fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for (n, v) in [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            out.push((format!("{}.{n}", self.prefix), v.clone()));
        }
    }
}

/// Convolution (no bias) → BatchNorm → activation, the unit every
/// architecture here is built from.
pub(crate) struct ConvBnAct {
    conv_name: String,
    weight: Var,
    pub bn: BatchNorm,
    pub act: Act,
    stride: usize,
    pad: Padding,
    groups: usize,
    /// TensorFlow "SAME" padding, computed from each input's size (`pad` unused).
    tf_same: bool,
    freeze: Freeze,
    /// BN folded into the conv while frozen: `(weight, bias)`.
    folded: Option<(Tensor, Tensor)>,
}

/// Shape of a convolution for `ConvBnAct::load`.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    /// `(height, width)`: Inception's 1×7 and 7×1 convolutions are not square.
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: Padding,
    pub groups: usize,
}

impl ConvBnAct {
    pub fn load(
        p: &mut ParamLoader,
        conv_name: &str,
        bn_prefix: &str,
        spec: ConvSpec,
        bn_eps: f64,
        act: Act,
    ) -> Result<Self> {
        let shape = [spec.cout, spec.cin / spec.groups, spec.kernel.0, spec.kernel.1];
        let weight = p.get(&format!("{conv_name}.weight"), &shape, Init::KaimingFanOut)?;
        let bn = BatchNorm::load(p, bn_prefix, spec.cout, bn_eps)?;
        Ok(ConvBnAct {
            conv_name: conv_name.to_owned(),
            weight,
            bn,
            act,
            stride: spec.stride,
            pad: spec.pad,
            groups: spec.groups,
            tf_same: false,
            freeze: Freeze::default(),
            folded: None,
        })
    }

    /// Switches to TensorFlow's "SAME" padding (ported TF models such as
    /// EfficientNet-Lite): asymmetric, and recomputed for every input size.
    pub(crate) fn with_tf_same_padding(mut self) -> Self {
        self.tf_same = true;
        self
    }

    fn padding(&self, x: &Tensor) -> Result<Padding> {
        if !self.tf_same {
            return Ok(self.pad);
        }
        let (_, _, h, w) = x.dims4()?;
        Ok(Padding::tf_same(h, w, self.weight.dim(2)?, self.stride))
    }

    pub(crate) fn set_freeze(&mut self, freeze: Freeze) -> Result<()> {
        self.freeze = freeze;
        self.folded = if freeze.frozen && !freeze.train_bn {
            let (scale, shift) = self.bn.eval_affine(false)?;
            let c = scale.dim(0)?;
            let w = self.weight.as_detached_tensor().broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
            Some((w, shift.reshape((1, c, 1, 1))?))
        } else {
            None
        };
        Ok(())
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let pad = self.padding(x)?;
        if let Some((w, b)) = &self.folded {
            let (lo, hi) = self.act.bounds();
            let y = kernels::conv2d_bias_clamp(x, w, b, self.stride, pad, self.groups, lo, hi)?;
            return self.act.after_clamp(y);
        }
        let trainable = !self.freeze.frozen;
        let y = kernels::conv2d(x, &read(&self.weight, trainable), self.stride, pad, self.groups)?;
        let bn_trainable = trainable || self.freeze.train_bn;
        self.bn.forward_act(&y, mode.training && bn_trainable, bn_trainable, self.act)
    }

    /// This unit in an ONNX graph, in inference mode: one `Conv` with the
    /// BatchNorm folded in, then the activation.
    pub fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let k = self.weight.dim(2)?;
        let pad = if self.tf_same { Padding::tf_same(x.shape[1], x.shape[2], k, self.stride) } else { self.pad };
        let (scale, shift) = self.bn.eval_affine(false)?;
        let c = scale.dim(0)?;
        let w = self.weight.as_detached_tensor().broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
        let y =
            g.conv(x, &self.conv_name, (&w, &shift), ConvGeometry { stride: self.stride, pad, groups: self.groups })?;
        self.act.export_onnx(g, y)
    }

    pub(crate) fn trainable_vars(&self, out: &mut Vec<Var>) {
        if !self.freeze.frozen {
            out.push(self.weight.clone());
        }
        if !self.freeze.frozen || self.freeze.train_bn {
            out.push(self.bn.weight.clone());
            out.push(self.bn.bias.clone());
        }
    }

    pub fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((format!("{}.weight", self.conv_name), self.weight.clone()));
        self.bn.named_vars(out);
    }
}

/// Convolution with a bias and an activation, no BatchNorm (VGG). Frozen, it
/// reads its weights detached, so candle records no graph for it.
pub struct Conv {
    name: String,
    weight: Var,
    bias: Var,
    pub act: Act,
    stride: usize,
    pad: Padding,
    groups: usize,
    frozen: bool,
}

impl Conv {
    /// Loads `{name}.weight` and `{name}.bias`.
    pub fn load(p: &mut ParamLoader, name: &str, spec: ConvSpec, act: Act) -> Result<Self> {
        let shape = [spec.cout, spec.cin / spec.groups, spec.kernel.0, spec.kernel.1];
        Ok(Conv {
            weight: p.get(&format!("{name}.weight"), &shape, Init::KaimingFanOut)?,
            // torchvision initialises conv biases to zero.
            bias: p.get(&format!("{name}.bias"), &[spec.cout], Init::Const(0.0))?,
            name: name.to_owned(),
            act,
            stride: spec.stride,
            pad: spec.pad,
            groups: spec.groups,
            frozen: false,
        })
    }

    pub(crate) fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
    }

    /// This layer in an ONNX graph: `Conv` with its bias, then the activation.
    pub fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let (w, b) = (self.weight.as_detached_tensor(), self.bias.as_detached_tensor());
        let geometry = ConvGeometry { stride: self.stride, pad: self.pad, groups: self.groups };
        let y = g.conv(x, &self.name, (&w, &b), geometry)?;
        self.act.export_onnx(g, y)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let trainable = !self.frozen;
        let w = read(&self.weight, trainable);
        if !trainable {
            let (lo, hi) = self.act.bounds();
            let b = read(&self.bias, false);
            let y = kernels::conv2d_bias_clamp(x, &w, &b, self.stride, self.pad, self.groups, lo, hi)?;
            return self.act.after_clamp(y);
        }
        let y = kernels::conv2d(x, &w, self.stride, self.pad, self.groups)?;
        let c = self.bias.dim(0)?;
        let y = y.broadcast_add(&read(&self.bias, trainable).reshape((1, c, 1, 1))?)?;
        self.act.apply(&y)
    }

    pub(crate) fn trainable_vars(&self, out: &mut Vec<Var>) {
        if !self.frozen {
            out.push(self.weight.clone());
            out.push(self.bias.clone());
        }
    }

    pub fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((format!("{}.weight", self.name), self.weight.clone()));
        out.push((format!("{}.bias", self.name), self.bias.clone()));
    }
}

/// Fully connected layer, `y = x Wᵀ + b`, torchvision names.
pub struct Linear {
    prefix: String,
    /// The state-dict names of the weight and the bias: `prefix.weight` and
    /// `prefix.bias`, except where the reference names them otherwise
    /// (torchvision's attention: `in_proj_weight`, `in_proj_bias`).
    names: (String, String),
    weight: Var,
    bias: Var,
    pub frozen: bool,
}

impl Linear {
    pub fn load(p: &mut ParamLoader, prefix: &str, fan_in: usize, fan_out: usize) -> Result<Self> {
        Self::load_named(p, prefix, (format!("{prefix}.weight"), format!("{prefix}.bias")), fan_in, fan_out)
    }

    /// A layer whose weight and bias are called `names` in the checkpoint
    /// (`prefix` names its ONNX constants).
    pub(crate) fn load_named(
        p: &mut ParamLoader,
        prefix: &str,
        names: (String, String),
        fan_in: usize,
        fan_out: usize,
    ) -> Result<Self> {
        let init = Init::LinearUniform { fan_in };
        Ok(Linear {
            weight: p.get(&names.0, &[fan_out, fan_in], init)?,
            bias: p.get(&names.1, &[fan_out], init)?,
            prefix: prefix.to_owned(),
            names,
            frozen: false,
        })
    }

    /// A freshly initialised layer (a new head), never read from a checkpoint.
    pub fn fresh(p: &mut ParamLoader, prefix: &str, fan_in: usize, fan_out: usize) -> Result<Self> {
        let init = Init::LinearUniform { fan_in };
        Ok(Linear {
            weight: p.fresh(&format!("{prefix}.weight"), &[fan_out, fan_in], init)?,
            bias: p.fresh(&format!("{prefix}.bias"), &[fan_out], init)?,
            prefix: prefix.to_owned(),
            names: (format!("{prefix}.weight"), format!("{prefix}.bias")),
            frozen: false,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let trainable = !self.frozen;
        Ok(x.matmul(&read(&self.weight, trainable).t()?)?.broadcast_add(&read(&self.bias, trainable))?)
    }

    /// The weight `[out, in]` and bias, detached (for export).
    pub fn tensors(&self) -> (Tensor, Tensor) {
        (self.weight.as_detached_tensor(), self.bias.as_detached_tensor())
    }

    /// This layer in an ONNX graph (`Gemm`).
    pub fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        self.export_onnx_after(g, x, None)
    }

    /// This layer in an ONNX graph with an inference-mode BatchNorm on its
    /// input folded in: `W(x·s + t) + b = (W·diag(s))x + (Wt + b)`, one `Gemm`.
    pub(crate) fn export_onnx_after(&self, g: &mut Graph, x: &Value, bn: Option<&BatchNorm>) -> Result<Value> {
        let (w, b) = (self.weight.as_detached_tensor(), self.bias.as_detached_tensor());
        let Some(bn) = bn else {
            return g.linear(x, &self.prefix, &w, &b);
        };
        let (scale, shift) = bn.eval_affine(false)?;
        let folded_w = w.broadcast_mul(&scale.unsqueeze(0)?)?;
        let folded_b = (w.matmul(&shift.unsqueeze(1)?)?.squeeze(1)? + b)?;
        g.linear(x, &self.prefix, &folded_w, &folded_b)
    }

    pub(crate) fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub(crate) fn trainable_vars(&self, out: &mut Vec<Var>) {
        if !self.frozen {
            out.push(self.weight.clone());
            out.push(self.bias.clone());
        }
    }

    pub fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        out.push((self.names.0.clone(), self.weight.clone()));
        out.push((self.names.1.clone(), self.bias.clone()));
    }
}

/// Inverted dropout with an explicit seed, so a run is reproducible.
pub fn dropout(x: &Tensor, p: f64, rng: &mut Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> =
        (0..x.elem_count()).map(|_| if rng.f64() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
    Ok(x.mul(&mask)?)
}

/// Global average pooling `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean(D::Minus1)?.mean(D::Minus1)?)
}

/// PyTorch's `AdaptiveAvgPool2d((oh, ow))`: output cell `i` averages input
/// rows `floor(i·H/oh) .. ceil((i+1)·H/oh)` (windows overlap or repeat when
/// the input is smaller than the output).
pub(crate) fn adaptive_avg_pool(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (oh, ow) {
        return Ok(x.clone());
    }
    let window = |i: usize, n: usize, o: usize| (i * n / o, ((i + 1) * n).div_ceil(o));
    let mut rows = Vec::with_capacity(oh);
    for i in 0..oh {
        let (y0, y1) = window(i, h, oh);
        let band = x.narrow(2, y0, y1 - y0)?.mean_keepdim(2)?;
        let mut cells = Vec::with_capacity(ow);
        for j in 0..ow {
            let (x0, x1) = window(j, w, ow);
            cells.push(band.narrow(3, x0, x1 - x0)?.mean_keepdim(3)?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Ok(Tensor::cat(&rows, 2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn drop_path_drops_whole_images_at_its_rate_and_keeps_the_mean() {
        let branch = Tensor::ones((2000, 3, 2), DType::F32, &Device::Cpu).unwrap();
        let drop = DropPath { rate: 0.3, site: 7 };
        assert_eq!(max_diff(&drop.apply(branch.clone(), Mode::EVAL).unwrap(), &branch), 0.0, "eval keeps all");
        let y = drop.apply(branch.clone(), Mode::train(11)).unwrap();
        let per_image = y.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        let kept = per_image.iter().filter(|r| r.iter().all(|&v| (v - 1.0 / 0.7).abs() < 1e-6)).count();
        let dropped = per_image.iter().filter(|r| r.iter().all(|&v| v == 0.0)).count();
        assert_eq!(kept + dropped, 2000, "an image is kept or dropped whole");
        assert!((kept as f64 / 2000.0 - 0.7).abs() < 0.04, "{kept} of 2000 kept");
        // The same noise and site draw the same images; another site others.
        assert_eq!(max_diff(&drop.apply(branch.clone(), Mode::train(11)).unwrap(), &y), 0.0);
        let other = DropPath { site: 8, ..drop }.apply(branch.clone(), Mode::train(11)).unwrap();
        assert!(max_diff(&other, &y) > 0.0);
        assert_eq!(drop_path_rate(0.4, 0, 5), 0.0);
        assert!((drop_path_rate(0.4, 4, 5) - 0.4).abs() < 1e-7);
    }

    #[test]
    fn folded_frozen_conv_equals_unfolded_eval() {
        let mut p = ParamLoader::random(3);
        let spec = ConvSpec { cin: 4, cout: 6, kernel: (3, 3), stride: 2, pad: Padding::same(1), groups: 1 };
        let mut layer = ConvBnAct::load(&mut p, "c", "bn", spec, 1e-5, Act::Relu6).unwrap();
        // Give BN non-trivial statistics.
        layer.bn.running_mean.set(&Tensor::new(&[0.1f32, -0.2, 0.3, 0.0, 0.5, -1.0], &Device::Cpu).unwrap()).unwrap();
        layer.bn.running_var.set(&Tensor::new(&[1.5f32, 0.2, 0.9, 2.0, 0.7, 1.1], &Device::Cpu).unwrap()).unwrap();
        let x = crate::kernels::testing::randn(0f32, 1., (2, 4, 9, 9)).unwrap();
        let eval = layer.forward(&x, Mode::EVAL).unwrap();
        layer.set_freeze(Freeze { frozen: true, train_bn: false }).unwrap();
        let folded = layer.forward(&x, Mode::train(0)).unwrap();
        assert!(max_diff(&eval, &folded) < 1e-4);
    }

    #[test]
    fn frozen_layers_yield_no_trainable_vars() {
        let mut p = ParamLoader::random(1);
        let spec = ConvSpec { cin: 2, cout: 2, kernel: (1, 1), stride: 1, pad: Padding::default(), groups: 1 };
        let mut layer = ConvBnAct::load(&mut p, "c", "bn", spec, 1e-5, Act::None).unwrap();
        let mut vars = Vec::new();
        layer.trainable_vars(&mut vars);
        assert_eq!(vars.len(), 3);
        layer.set_freeze(Freeze { frozen: true, train_bn: true }).unwrap();
        vars.clear();
        layer.trainable_vars(&mut vars);
        assert_eq!(vars.len(), 2, "train_bn keeps the BN affine parameters");
        layer.set_freeze(Freeze { frozen: true, train_bn: false }).unwrap();
        vars.clear();
        layer.trainable_vars(&mut vars);
        assert!(vars.is_empty());
    }

    #[test]
    fn train_mode_bn_updates_running_stats() {
        let mut p = ParamLoader::random(1);
        let bn = BatchNorm::load(&mut p, "bn", 3, 1e-5).unwrap();
        let x = (crate::kernels::testing::randn(0f32, 1., (4, 3, 5, 5)).unwrap() + 2.0).unwrap();
        let y = bn.forward(&x, true, true).unwrap();
        let mean = y.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mean.abs() < 1e-4);
        let rm = bn.running_mean.as_tensor().to_vec1::<f32>().unwrap();
        assert!(rm.iter().all(|v| (v - 0.2).abs() < 0.1), "{rm:?}");
    }

    #[test]
    fn adaptive_avg_pool_matches_pytorch_windows() {
        // 3 → 2: windows [0, 2) and [1, 3), as torch computes them.
        let x = Tensor::new(&[[[[1f32, 2., 4.], [0., 0., 0.], [3., 3., 3.]]]], &Device::Cpu).unwrap();
        let y = adaptive_avg_pool(&x, 2, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, vec![0.75, 1.5, 1.5, 1.5]);
        // 2 → 3 repeats cells (the middle one averages both).
        let x = Tensor::new(&[[[[0f32, 6.], [0., 6.]]]], &Device::Cpu).unwrap();
        let y = adaptive_avg_pool(&x, 3, 3).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 3]);
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..3], [0., 3., 6.]);
    }

    #[test]
    fn mismatch_errors_name_key_shapes_and_closest() {
        let mut map = HashMap::new();
        map.insert("module.fc.weight".to_string(), Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap());
        map.insert("fc.bias".to_string(), Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap());
        let mut p = ParamLoader::from_tensors("x.safetensors", map);
        let _ = Linear::load(&mut p, "fc", 3, 2).unwrap();
        let err = p.finish(true, None).unwrap_err().to_string();
        assert!(err.contains("x.safetensors"), "{err}");
        assert!(err.contains("missing `fc.weight`") && err.contains("module."), "{err}");
        assert!(err.contains("`fc.bias` has shape [5], expected [2]"), "{err}");
        assert!(err.contains("unexpected `module.fc.weight`"), "{err}");
    }
}
