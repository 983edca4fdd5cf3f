//! What a fine_tune step does besides descending the gradient, one callback
//! each, on named events (fastai's `Learner` callbacks; burn-train's
//! early-stopping and checkpoint strategies).
//!
//! The events and the [`Callback`] trait belong to the loop ([`super::fit`]);
//! this module holds the standard callbacks and [`standard`], the list a
//! fine_tune step runs with. Epoch-level events get the whole [`FineTune`];
//! batch-level events, which run while the input pipeline borrows the
//! model, get a [`BatchCtx`].

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::fit::{BatchCtx, Callback, FineTune};
use super::{Checkpoint, EpochRecord, Event, Stop};
use crate::error::{Error, Result};
use crate::models::Snapshot;
use crate::recipe::{EarlyStopping as EarlyStoppingConfig, Monitor};

/// Progress to the observer: epoch start, batch, epoch record.
pub(crate) struct ProgressEvents;

impl Callback for ProgressEvents {
    fn before_epoch(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        let (epoch, epochs, batches) = (fit.epoch + 1, fit.epochs(), fit.batches());
        fit.obs.event(Event::EpochStart { epoch, epochs, batches });
        Ok(())
    }
    fn after_batch(&mut self, ctx: &mut BatchCtx<'_>, loss: f64, accuracy: f64) -> Result<()> {
        let (epoch, batch, batches) = (ctx.epoch + 1, ctx.batch + 1, ctx.batches);
        ctx.obs.event(Event::Batch { epoch, batch, batches, loss, accuracy, lr: ctx.lr });
        Ok(())
    }
    fn after_validate(&mut self, fit: &mut FineTune<'_>, record: &EpochRecord) -> Result<()> {
        fit.obs.event(Event::Epoch(record.clone()));
        Ok(())
    }
}

/// The standard callbacks for `cfg`, in the order their events must run.
pub fn standard(
    cfg: &crate::recipe::FineTuneConfig,
    resume_extra: Option<&std::collections::HashMap<String, Tensor>>,
) -> Vec<Box<dyn Callback>> {
    let mut cbs: Vec<Box<dyn Callback>> = vec![Box::new(ProgressEvents), Box::<NanGuard>::default()];
    if let Some(max_norm) = cfg.clip_grad_norm {
        cbs.push(Box::new(ClipGradNorm { max_norm, vars: Vec::new() }));
    }
    if let Some(decay) = cfg.ema {
        cbs.push(Box::new(Ema::new(decay, resume_extra)));
    }
    if let Some(es) = &cfg.early_stopping {
        cbs.push(Box::new(EarlyStopping { config: es.clone() }));
    }
    if let Some(seconds) = cfg.time_limit_secs {
        cbs.push(Box::new(TimeLimit { seconds }));
    }
    cbs.push(Box::new(Checkpointing));
    cbs
}

/// Ends the fit when the loss is not finite, with the weights put back to
/// the start of that epoch.
#[derive(Default)]
pub struct NanGuard {
    last_good: Option<Snapshot>,
}

impl Callback for NanGuard {
    fn before_epoch(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        self.last_good = Some(fit.model.snapshot_trainable()?);
        Ok(())
    }
    fn after_loss(&mut self, ctx: &mut BatchCtx<'_>) -> Result<()> {
        if ctx.loss.is_finite() {
            return Ok(());
        }
        Err(Error::Diverged(format!(
            "loss became {} at epoch {} batch {}; weights restored to the start of that epoch (try a lower lr)",
            ctx.loss,
            ctx.epoch + 1,
            ctx.batch + 1
        )))
    }
    fn on_error(&mut self, fit: &mut FineTune<'_>, error: &Error) -> Result<()> {
        match (&self.last_good, error) {
            (Some(snap), Error::Diverged(_)) => fit.model.restore(snap),
            _ => Ok(()),
        }
    }
}

/// Stops when the monitored metric has not improved for `patience` epochs,
/// and (optionally) ends with the best epoch's weights. Its record lives in
/// [`FineTune::best`] because checkpoints and the outcome read it.
pub struct EarlyStopping {
    pub config: EarlyStoppingConfig,
}

impl Callback for EarlyStopping {
    fn after_validate(&mut self, fit: &mut FineTune<'_>, r: &EpochRecord) -> Result<()> {
        let score = match self.config.monitor {
            Monitor::ValidLoss => -r.valid_loss,
            Monitor::ValidAccuracy => r.valid_accuracy,
        };
        if fit.best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            fit.best = Some((score, r.epoch, fit.model.snapshot_trainable()?));
            fit.since_best = 0;
        } else {
            fit.since_best += 1;
            if fit.since_best >= self.config.patience {
                fit.obs
                    .event(Event::Log(format!("early stopping: no improvement for {} epoch(s)", self.config.patience)));
                fit.stop = Some(Stop::EarlyStopped);
            }
        }
        Ok(())
    }
    fn after_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        if !self.config.restore_best {
            return Ok(());
        }
        if let Some((_, epoch, snap)) = &fit.best {
            if Some(*epoch) != fit.history.last().map(|r| r.epoch) {
                fit.model.restore(snap)?;
                fit.obs.event(Event::Log(format!("restored the best weights (epoch {epoch})")));
            }
            fit.best_epoch = Some(*epoch);
        }
        Ok(())
    }
}

/// Stops after the epoch in which the time limit passed.
pub(crate) struct TimeLimit {
    pub seconds: f64,
}

impl Callback for TimeLimit {
    fn after_epoch(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        if fit.stop.is_none() && fit.started.elapsed().as_secs_f64() > self.seconds {
            fit.obs.event(Event::Log("time limit reached".into()));
            fit.stop = Some(Stop::TimeLimit);
        }
        Ok(())
    }
}

/// Hands the state after every epoch, and at the end, to the observer's
/// [`Observer::checkpoint`](super::Observer::checkpoint) (which the front end points at a run directory).
pub(crate) struct Checkpointing;

impl Checkpointing {
    fn write(fit: &mut FineTune<'_>, finished: bool) -> Result<()> {
        let c = Checkpoint {
            model: fit.model,
            optimizer: &fit.opt,
            history: &fit.history,
            best: fit.best.as_ref().map(|(s, e, snap)| (*s, *e, snap)),
            since_best: fit.since_best,
            finished,
            ended: crate::train::Ended {
                stop: fit.stop.unwrap_or(Stop::Completed),
                best_epoch: fit.best_epoch.or(fit.history.last().map(|r| r.epoch)),
                trainable_params: fit.opt.num_params(),
            },
            extra: &fit.extra_state,
        };
        fit.obs.checkpoint(&c)
    }
}

impl Callback for Checkpointing {
    fn after_epoch(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        // The last epoch and stops are followed by the final checkpoint.
        let ending = fit.epoch + 1 == fit.epochs() || fit.stop.is_some_and(|s| s != Stop::TimeLimit);
        if ending {
            return Ok(());
        }
        Self::write(fit, false)
    }
    fn after_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        if fit.stop == Some(Stop::Cancelled) {
            return Ok(());
        }
        Self::write(fit, true)
    }
}

/// Rescales the gradients so their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`).
pub(crate) struct ClipGradNorm {
    pub max_norm: f64,
    pub vars: Vec<Var>,
}

impl Callback for ClipGradNorm {
    fn before_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        self.vars = fit.opt.vars().cloned().collect();
        Ok(())
    }
    fn after_backward(&mut self, _ctx: &mut BatchCtx<'_>, grads: &mut GradStore) -> Result<()> {
        let mut sq = 0f64;
        for v in &self.vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += f64::from(g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let norm = sq.sqrt();
        if norm <= self.max_norm || !norm.is_finite() {
            return Ok(());
        }
        let scale = self.max_norm / (norm + 1e-6);
        for v in &self.vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
        Ok(())
    }
}

/// Exponential moving average of the weights the step trains (timm's
/// `ModelEmaV3`): `ema = d · ema + (1 - d) · w` after every update, with the
/// decay warmed up as `min(decay, (1 + n) / (10 + n))`. Validation runs on
/// the averaged weights, and they are the ones the step ends with.
pub(crate) struct Ema {
    pub decay: f64,
    updates: u64,
    vars: Vec<(String, Var)>,
    shadow: Vec<Tensor>,
    /// The raw weights while the averaged ones are in the model.
    raw: Option<Vec<Tensor>>,
    /// State from a checkpoint, applied at `before_fit`.
    resumed: Option<(u64, std::collections::HashMap<String, Tensor>)>,
}

impl Ema {
    pub fn new(decay: f64, resume: Option<&std::collections::HashMap<String, Tensor>>) -> Self {
        let resumed = resume.and_then(|r| {
            let n = r.get("ema.updates")?.to_dtype(DType::F64).ok()?.to_scalar::<f64>().ok()? as u64;
            Some((n, r.clone()))
        });
        Ema { decay, updates: 0, vars: Vec::new(), shadow: Vec::new(), raw: None, resumed }
    }

    fn swap_in(&mut self) -> Result<()> {
        let raw = self.vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
        for ((_, v), s) in self.vars.iter().zip(&self.shadow) {
            v.set(s)?;
        }
        self.raw = Some(raw);
        Ok(())
    }

    fn swap_out(&mut self) -> Result<()> {
        if let Some(raw) = self.raw.take() {
            for ((_, v), r) in self.vars.iter().zip(&raw) {
                v.set(r)?;
            }
        }
        Ok(())
    }
}

/// `shadow = shadow · keep + weight · take`, in place on the shadow's storage:
/// the same arithmetic as the tensor expression, without allocating three
/// tensors of every trainable weight per batch (fresh pages the kernel zeroes).
struct EmaUpdate {
    keep: f32,
    take: f32,
}

impl candle_core::InplaceOp2 for EmaUpdate {
    fn name(&self) -> &'static str {
        "tlab-ema-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage::F32;
        let (F32(shadow), F32(weight)) = (s1, s2) else { candle_core::bail!("the EMA update needs f32 weights") };
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("the EMA update needs contiguous weights")
        };
        let (shadow, weight) = (&mut shadow[a0..a1], &weight[b0..b1]);
        if shadow.len() != weight.len() {
            candle_core::bail!("EMA shadow has {} elements, the weight {}", shadow.len(), weight.len())
        }
        for (s, &w) in shadow.iter_mut().zip(weight) {
            *s = *s * self.keep + w * self.take;
        }
        Ok(())
    }
}

impl Callback for Ema {
    fn before_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        self.vars = fit.model.mutable_named_vars();
        let resumed = self.resumed.take();
        self.shadow = self
            .vars
            .iter()
            .map(|(name, v)| match resumed.as_ref().and_then(|(_, r)| r.get(&format!("ema.{name}"))) {
                // Copies: the shadow is updated in place and owns its storage.
                Some(t) if t.dims() == v.dims() => Ok(t.to_dtype(v.dtype())?.copy()?),
                _ => Ok(v.as_tensor().copy()?),
            })
            .collect::<Result<_>>()?;
        self.updates = resumed.map_or(0, |(n, _)| n);
        Ok(())
    }
    fn after_step(&mut self, _ctx: &mut BatchCtx<'_>) -> Result<()> {
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        let update = EmaUpdate { keep: d as f32, take: (1.0 - d) as f32 };
        for ((_, v), s) in self.vars.iter().zip(&self.shadow) {
            s.inplace_op2(v.as_tensor(), &update)?;
        }
        self.updates += 1;
        Ok(())
    }
    fn before_validate(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        self.swap_in()
    }
    fn after_epoch(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        self.swap_out()
    }
    fn after_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        self.swap_out()?;
        if self.updates > 0 {
            for ((_, v), s) in self.vars.iter().zip(&self.shadow) {
                v.set(s)?;
            }
            fit.obs.event(Event::Log(format!("kept the EMA weights ({} updates, decay {})", self.updates, self.decay)));
        }
        Ok(())
    }
    fn on_error(&mut self, _fit: &mut FineTune<'_>, _error: &Error) -> Result<()> {
        self.swap_out()
    }
    fn save(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        // Mid-validation the shadow is in the model; checkpoints happen after `swap_out`.
        // Copies, not shares: the shadow keeps changing in place.
        for ((name, _), s) in self.vars.iter().zip(&self.shadow) {
            out.push((format!("ema.{name}"), s.copy()?));
        }
        out.push(("ema.updates".into(), Tensor::new(self.updates as f32, &Device::Cpu)?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_place_ema_update_gives_the_tensor_expressions_values() {
        let shadow = crate::kernels::testing::randn(0f32, 1., (7, 33)).unwrap();
        let weight = crate::kernels::testing::randn(0f32, 1., (7, 33)).unwrap();
        let d = 0.9f64;
        let want = ((&shadow * d).unwrap() + (&weight * (1.0 - d)).unwrap()).unwrap();
        let updated = shadow.copy().unwrap();
        updated.inplace_op2(&weight, &EmaUpdate { keep: d as f32, take: (1.0 - d) as f32 }).unwrap();
        let (want, got) = (want.flatten_all().unwrap().to_vec1::<f32>().unwrap(), updated.flatten_all().unwrap());
        assert_eq!(got.to_vec1::<f32>().unwrap(), want);
        assert_ne!(want, shadow.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "the update changed the shadow");
    }
}
