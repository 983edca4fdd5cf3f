//! Optimisers with PyTorch's update rules (candle ships only plain SGD and
//! AdamW): SGD with momentum and Nesterov, Adam (L2 weight decay) and AdamW
//! (decoupled weight decay, Loshchilov & Hutter 2019).

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::error::Result;
use crate::recipe::{Optimizer as Kind, OptimizerParams};

struct Slot {
    var: Var,
    /// This parameter's share of the step's rate (discriminative rates).
    lr_scale: f32,
    /// Whether weight decay applies (not to biases and norm weights with `no_decay_bn_bias`).
    decay: bool,
    /// Momentum buffer (SGD) or first moment (Adam); empty until the first step.
    m: Vec<f32>,
    /// Second moment (Adam); empty until the first step.
    v: Vec<f32>,
}

/// Parameters that share a learning-rate multiplier.
pub(crate) struct ParamGroup {
    pub vars: Vec<Var>,
    pub lr_scale: f64,
}

pub struct Optimizer {
    kind: Kind,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: i32,
    slots: Vec<Slot>,
}

impl Optimizer {
    /// One group at the full rate, weight decay on every parameter.
    pub fn new(vars: Vec<Var>, cfg: &OptimizerParams) -> Self {
        Self::with_groups(vec![ParamGroup { vars, lr_scale: 1.0 }], cfg)
    }

    /// Parameter groups, each at its own fraction of the step's rate; with
    /// `no_decay_bn_bias`, 1-D parameters (biases, BatchNorm weights) get no
    /// weight decay, as timm does.
    pub(crate) fn with_groups(groups: Vec<ParamGroup>, cfg: &OptimizerParams) -> Self {
        let slots = groups
            .into_iter()
            .flat_map(|g| {
                g.vars.into_iter().map(move |var| {
                    let decay = !(cfg.no_decay_bn_bias && var.rank() <= 1);
                    Slot { var, lr_scale: g.lr_scale as f32, decay, m: Vec::new(), v: Vec::new() }
                })
            })
            .collect();
        Optimizer {
            kind: cfg.kind,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            weight_decay: cfg.weight_decay,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: 1e-8,
            t: 0,
            slots,
        }
    }

    /// Sets SGD's momentum or Adam's beta1 for the next steps (one-cycle
    /// cycles it against the rate).
    pub(crate) fn set_momentum(&mut self, momentum: f64) {
        match self.kind {
            Kind::Sgd => self.momentum = momentum,
            Kind::Adam | Kind::AdamW => self.beta1 = momentum,
        }
    }

    /// The trainable variables, in slot order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    /// The moment buffers and step count, named `m.K` / `v.K` by slot, for a checkpoint.
    pub fn state(&self) -> (i32, Vec<(String, Tensor)>) {
        let mut out = Vec::new();
        for (k, slot) in self.slots.iter().enumerate() {
            for (name, buf) in [("m", &slot.m), ("v", &slot.v)] {
                if !buf.is_empty() {
                    if let Ok(t) = Tensor::from_slice(buf, slot.var.shape(), slot.var.device()) {
                        out.push((format!("{name}.{k}"), t));
                    }
                }
            }
        }
        (self.t, out)
    }

    /// Restores what [`Optimizer::state`] saved (same variables, same order).
    pub(crate) fn load_state(&mut self, t: i32, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (k, slot) in self.slots.iter_mut().enumerate() {
            for (name, dst) in [(format!("m.{k}"), &mut slot.m), (format!("v.{k}"), &mut slot.v)] {
                *dst = match tensors.get(&name) {
                    Some(t) if t.dims() == slot.var.dims() => t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                    Some(t) => {
                        return Err(crate::error::Error::CheckpointTensor {
                            name: format!("optimizer.{name}"),
                            expected: slot.var.dims().to_vec(),
                            found: Some(t.dims().to_vec()),
                        })
                    }
                    None => Vec::new(),
                };
            }
        }
        self.t = t;
        Ok(())
    }

    pub(crate) fn num_params(&self) -> usize {
        self.slots.iter().map(|s| s.var.elem_count()).sum()
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    ///
    /// Fused: each parameter is updated in place in one multi-threaded pass
    /// over (parameter, gradient, moments), instead of the ten or so candle
    /// ops (each allocating a full-size tensor) the formulas take as tensor code.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let base = Rule {
            kind: self.kind,
            lr: lr as f32,
            momentum: self.momentum as f32,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            bias1: (1.0 - self.beta1.powi(self.t)) as f32,
            bias2: (1.0 - self.beta2.powi(self.t)) as f32,
        };
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let rule = Rule {
                lr: base.lr * slot.lr_scale,
                weight_decay: if slot.decay { base.weight_decay } else { 0.0 },
                ..base
            };
            let n = slot.var.elem_count();
            // PyTorch starts both moments (and the momentum buffer, see `first`) at zero.
            let first = slot.m.is_empty();
            if rule.needs_m() && first {
                slot.m = vec![0.0; n];
            }
            if rule.needs_v() && slot.v.is_empty() {
                slot.v = vec![0.0; n];
            }
            let op = FusedStep { rule, first, moments: std::sync::Mutex::new((&mut slot.m, &mut slot.v)) };
            slot.var.as_tensor().inplace_op2(&g.to_dtype(DType::F32)?, &op)?;
        }
        Ok(())
    }
}

/// The update rule with this step's scalars.
#[derive(Debug, Clone, Copy)]
struct Rule {
    kind: Kind,
    lr: f32,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// `1 - beta^t`, Adam's bias corrections.
    bias1: f32,
    bias2: f32,
}

impl Rule {
    fn needs_m(&self) -> bool {
        !matches!(self.kind, Kind::Sgd) || self.momentum > 0.0
    }
    fn needs_v(&self) -> bool {
        !matches!(self.kind, Kind::Sgd)
    }

    /// PyTorch's update of one element; `first` is the parameter's first step
    /// (SGD's momentum buffer starts as the gradient itself, not zero).
    #[inline(always)]
    fn apply(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32, first: bool) {
        match self.kind {
            Kind::Sgd => {
                let g = g + self.weight_decay * *p;
                let d = if self.momentum > 0.0 {
                    *m = if first { g } else { self.momentum * *m + g };
                    if self.nesterov {
                        g + self.momentum * *m
                    } else {
                        *m
                    }
                } else {
                    g
                };
                *p -= self.lr * d;
            }
            Kind::Adam | Kind::AdamW => {
                let decoupled = self.kind == Kind::AdamW;
                let g = if decoupled { g } else { g + self.weight_decay * *p };
                *m = self.beta1 * *m + (1.0 - self.beta1) * g;
                *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
                let d = (*m / self.bias1) / ((*v / self.bias2).sqrt() + self.eps);
                if decoupled {
                    *p *= 1.0 - self.lr * self.weight_decay;
                }
                *p -= self.lr * d;
            }
        }
    }
}

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// [`Rule`] applied in place to a parameter's storage, with the gradient as
/// the second operand. The moments are borrowed for the call (a Mutex only
/// because custom ops get `&self`).
struct FusedStep<'a> {
    rule: Rule,
    first: bool,
    moments: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "tlab-fused-optimizer-step"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("the fused optimizer step needs f32 parameters and gradients")
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("the fused optimizer step needs contiguous parameters and gradients")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        if p.len() != g.len() {
            candle_core::bail!("gradient has {} elements, parameter {}", g.len(), p.len())
        }
        let mut guard = self.moments.lock().map_err(|_| candle_core::Error::Msg("optimizer state poisoned".into()))?;
        let (m, v) = &mut *guard;
        let (rule, first) = (self.rule, self.first);
        let g_chunks = g.par_chunks(CHUNK);
        // One loop per shape of state, over equal-length slices, so the
        // compiler drops the bounds checks and vectorises the update.
        match (m.is_empty(), v.is_empty()) {
            (false, false) => p
                .par_chunks_mut(CHUNK)
                .zip(g_chunks)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    let n = p.len();
                    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
                    for i in 0..n {
                        rule.apply(&mut p[i], g[i], &mut m[i], &mut v[i], first);
                    }
                }),
            (false, true) => {
                p.par_chunks_mut(CHUNK).zip(g_chunks).zip(m.par_chunks_mut(CHUNK)).for_each(|((p, g), m)| {
                    let n = p.len();
                    let (g, m) = (&g[..n], &mut m[..n]);
                    let mut unused = 0.0;
                    for i in 0..n {
                        rule.apply(&mut p[i], g[i], &mut m[i], &mut unused, first);
                    }
                })
            }
            _ => p.par_chunks_mut(CHUNK).zip(g_chunks).for_each(|(p, g)| {
                let n = p.len();
                let g = &g[..n];
                let (mut m, mut v) = (0.0, 0.0);
                for i in 0..n {
                    rule.apply(&mut p[i], g[i], &mut m, &mut v, first);
                }
            }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> OptimizerParams {
        crate::recipe::fine_tune_for_test(extra).optimizer
    }

    /// PyTorch's formulas written as plain tensor code (what the optimiser
    /// did before it was fused): `(param, m, v)` after one step.
    fn reference(
        cfg: &OptimizerParams,
        t: i32,
        p: &Tensor,
        g: &Tensor,
        (m, v): (Option<&Tensor>, Option<&Tensor>),
        lr: f64,
    ) -> (Tensor, Option<Tensor>, Option<Tensor>) {
        // timm's rule: no decay on 1-D parameters (biases, norm weights) when asked.
        let wd = if cfg.no_decay_bn_bias && p.rank() <= 1 { 0.0 } else { cfg.weight_decay };
        match cfg.kind {
            Kind::Sgd => {
                let g = (g + (p * wd).unwrap()).unwrap();
                if cfg.momentum > 0.0 {
                    let buf = match m {
                        Some(b) => ((b * cfg.momentum).unwrap() + &g).unwrap(),
                        None => g.clone(),
                    };
                    let d = if cfg.nesterov { (&g + (&buf * cfg.momentum).unwrap()).unwrap() } else { buf.clone() };
                    ((p - (d * lr).unwrap()).unwrap(), Some(buf), None)
                } else {
                    ((p - (g * lr).unwrap()).unwrap(), None, None)
                }
            }
            Kind::Adam | Kind::AdamW => {
                let g = if cfg.kind == Kind::Adam { (g + (p * wd).unwrap()).unwrap() } else { g.clone() };
                let zeros = g.zeros_like().unwrap();
                let m = ((m.unwrap_or(&zeros) * cfg.beta1).unwrap() + (&g * (1.0 - cfg.beta1)).unwrap()).unwrap();
                let v = ((v.unwrap_or(&zeros) * cfg.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - cfg.beta2)).unwrap())
                    .unwrap();
                let bc1 = 1.0 - cfg.beta1.powi(t);
                let bc2 = 1.0 - cfg.beta2.powi(t);
                let d = ((&m / bc1).unwrap() / ((&v / bc2).unwrap().sqrt().unwrap() + 1e-8).unwrap()).unwrap();
                let p = if cfg.kind == Kind::AdamW { (p * (1.0 - lr * wd)).unwrap() } else { p.clone() };
                ((p - (d * lr).unwrap()).unwrap(), Some(m), Some(v))
            }
        }
    }

    #[test]
    fn fused_step_matches_the_tensor_formulas() {
        for extra in [
            "optimizer = \"sgd\"\nmomentum = 0.0\nweight_decay = 0.01",
            "optimizer = \"sgd\"\nmomentum = 0.9",
            "optimizer = \"sgd\"\nmomentum = 0.9\nnesterov = true\nweight_decay = 0.001",
            "optimizer = \"adam\"\nweight_decay = 0.01",
            "optimizer = \"adamw\"\nweight_decay = 0.05",
            "optimizer = \"adamw\"\nweight_decay = 0.05\nno_decay_bn_bias = false",
            "optimizer = \"sgd\"\nweight_decay = 0.01\nno_decay_bn_bias = true",
        ] {
            let cfg = config(extra);
            // Sizes below and above one parallel chunk, and a ragged last chunk.
            let shapes: [&[usize]; 3] = [&[7], &[3, 5, 2, 2], &[CHUNK * 2 + 123]];
            let vars: Vec<Var> = shapes
                .iter()
                .map(|s| Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., *s).unwrap()).unwrap())
                .collect();
            let mut expected: Vec<(Tensor, Option<Tensor>, Option<Tensor>)> =
                vars.iter().map(|v| (v.as_tensor().copy().unwrap(), None, None)).collect();
            let mut opt = Optimizer::new(vars.clone(), &cfg);
            for t in 1..=4 {
                let lr = 0.01 / t as f64;
                // Gradients from a real backward pass, so the GradStore is the genuine article.
                let targets: Vec<Tensor> =
                    vars.iter().map(|v| crate::kernels::testing::randn(0f32, 1., v.shape()).unwrap()).collect();
                let loss = vars
                    .iter()
                    .zip(&targets)
                    .map(|(v, r)| (v.as_tensor() * r).unwrap().sqr().unwrap().sum_all().unwrap())
                    .reduce(|a, b| (a + b).unwrap())
                    .unwrap();
                let grads = loss.backward().unwrap();
                for (k, v) in vars.iter().enumerate() {
                    let g = grads.get(v.as_tensor()).unwrap();
                    let (p, m, vv) = &expected[k];
                    expected[k] = reference(&cfg, t, p, g, (m.as_ref(), vv.as_ref()), lr);
                }
                opt.step(&grads, lr).unwrap();
                for (k, v) in vars.iter().enumerate() {
                    let d = (v.as_tensor() - &expected[k].0)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(d < 1e-5, "{extra}: step {t}, tensor {k}: differs by {d}");
                }
            }
            // The state round-trips through a checkpoint.
            let (t, state) = opt.state();
            let map: std::collections::HashMap<String, Tensor> = state.into_iter().collect();
            let mut again = Optimizer::new(vars.clone(), &cfg);
            again.load_state(t, &map).unwrap();
            for (a, b) in opt.slots.iter().zip(&again.slots) {
                assert_eq!((&a.m, &a.v), (&b.m, &b.v));
            }
        }
    }
}
