//! Optimisers with PyTorch's update rules (candle ships only plain SGD and
//! AdamW): SGD with momentum and Nesterov, Adam (L2 weight decay) and AdamW
//! (decoupled weight decay, Loshchilov & Hutter 2019).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::Result;
use crate::recipe::{FineTuneConfig, Optimizer as Kind};

struct Slot {
    var: Var,
    /// Momentum buffer (SGD) or first moment (Adam).
    m: Option<Tensor>,
    /// Second moment (Adam).
    v: Option<Tensor>,
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
    pub fn new(vars: Vec<Var>, cfg: &FineTuneConfig) -> Self {
        Optimizer {
            kind: cfg.optimizer,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            weight_decay: cfg.weight_decay,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: 1e-8,
            t: 0,
            slots: vars.into_iter().map(|var| Slot { var, m: None, v: None }).collect(),
        }
    }

    /// The moment buffers and step count, named `m.K` / `v.K` by slot, for a checkpoint.
    pub fn state(&self) -> (i32, Vec<(String, Tensor)>) {
        let mut out = Vec::new();
        for (k, slot) in self.slots.iter().enumerate() {
            if let Some(m) = &slot.m {
                out.push((format!("m.{k}"), m.clone()));
            }
            if let Some(v) = &slot.v {
                out.push((format!("v.{k}"), v.clone()));
            }
        }
        (self.t, out)
    }

    /// Restores what [`Optimizer::state`] saved (same variables, same order).
    pub fn load_state(&mut self, t: i32, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (k, slot) in self.slots.iter_mut().enumerate() {
            for (name, dst) in [(format!("m.{k}"), &mut slot.m), (format!("v.{k}"), &mut slot.v)] {
                *dst = match tensors.get(&name) {
                    Some(t) if t.dims() == slot.var.dims() => Some(t.clone()),
                    Some(t) => {
                        return Err(crate::error::Error::Invalid(format!(
                            "checkpoint optimizer state `{name}` has shape {:?}, expected {:?}",
                            t.dims(),
                            slot.var.dims()
                        )))
                    }
                    None => None,
                };
            }
        }
        self.t = t;
        Ok(())
    }

    pub fn num_params(&self) -> usize {
        self.slots.iter().map(|s| s.var.elem_count()).sum()
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let p = slot.var.as_detached_tensor();
            let update = match self.kind {
                Kind::Sgd => {
                    let g = if self.weight_decay > 0.0 { (g + (&p * self.weight_decay)?)? } else { g.clone() };
                    if self.momentum > 0.0 {
                        let buf = match &slot.m {
                            Some(b) => ((b * self.momentum)? + &g)?,
                            None => g.clone(),
                        };
                        let d = if self.nesterov { (&g + (&buf * self.momentum)?)? } else { buf.clone() };
                        slot.m = Some(buf);
                        d
                    } else {
                        g
                    }
                }
                Kind::Adam | Kind::AdamW => {
                    let g = if self.kind == Kind::Adam && self.weight_decay > 0.0 {
                        (g + (&p * self.weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let m = match &slot.m {
                        Some(m) => ((m * self.beta1)? + (&g * (1.0 - self.beta1))?)?,
                        None => (&g * (1.0 - self.beta1))?,
                    };
                    let v = match &slot.v {
                        Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                        None => (g.sqr()? * (1.0 - self.beta2))?,
                    };
                    let bc1 = 1.0 - self.beta1.powi(self.t);
                    let bc2 = 1.0 - self.beta2.powi(self.t);
                    let d = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.eps)?)?;
                    slot.m = Some(m);
                    slot.v = Some(v);
                    d
                }
            };
            let p = if self.kind == Kind::AdamW && self.weight_decay > 0.0 {
                (&p * (1.0 - lr * self.weight_decay))?
            } else {
                p
            };
            slot.var.set(&(p - (update * lr)?)?)?;
        }
        Ok(())
    }
}
