//! The fine_tune loop, in phases: [`FineTune::prepare`] (frozen-feature
//! caches, optimizer, resume), [`FineTune::run`] over epochs of
//! `train_epoch` and `validate`, then the callbacks' `after_fit`. Everything
//! optional (early stopping, time limit, NaN guard, checkpoints, progress,
//! EMA, gradient clipping, lr_find) is a [`Callback`].

use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, D};

use super::cache::{FeatureCache, Features};
use super::mix::{self, Mixed};
use super::optim::{Optimizer, ParamGroup};
use super::schedule::LrSchedule;
use super::{cross_entropy, input, loss_and_accuracy, predict_split, PrefixPass};
use super::{EpochRecord, Event, FineTuneOutcome, Observer, Resume, Stop};
use crate::augment::{Augmenter, Rng};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::layers::Mode;
use crate::models::{Classifier, Snapshot};
use crate::recipe::{ClassWeights, FineTuneConfig, Lr, MixAt, Sampler};

/// One training batch, as the batch-level events see it.
pub struct BatchCtx<'b> {
    pub model: &'b Classifier,
    pub obs: &'b mut dyn Observer,
    /// 0-based epoch and batch.
    pub epoch: usize,
    pub batch: usize,
    pub batches: usize,
    /// The rate this batch trains at; `before_batch` may change it.
    pub lr: f64,
    /// This batch's loss (from `after_loss` on).
    pub loss: f64,
    /// Set to end the epoch (and the fit) after this batch.
    pub stop: bool,
}

/// Hooks into the fine_tune loop. Every method has a default that does
/// nothing, so a callback implements only the events it needs. Callbacks run
/// in the order given; `save` contributes tensors to the checkpoint, and
/// `load` gets them back on resume.
pub trait Callback {
    fn before_fit(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        Ok(())
    }
    fn before_epoch(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        Ok(())
    }
    fn before_batch(&mut self, _ctx: &mut BatchCtx<'_>) -> Result<()> {
        Ok(())
    }
    /// After the forward pass, before backward; an error ends the fit.
    fn after_loss(&mut self, _ctx: &mut BatchCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn after_backward(&mut self, _ctx: &mut BatchCtx<'_>, _grads: &mut GradStore) -> Result<()> {
        Ok(())
    }
    /// After the optimizer updated the weights.
    fn after_step(&mut self, _ctx: &mut BatchCtx<'_>) -> Result<()> {
        Ok(())
    }
    fn after_batch(&mut self, _ctx: &mut BatchCtx<'_>, _loss: f64, _accuracy: f64) -> Result<()> {
        Ok(())
    }
    fn before_validate(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        Ok(())
    }
    fn after_validate(&mut self, _fit: &mut FineTune<'_>, _record: &EpochRecord) -> Result<()> {
        Ok(())
    }
    fn after_epoch(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        Ok(())
    }
    fn after_fit(&mut self, _fit: &mut FineTune<'_>) -> Result<()> {
        Ok(())
    }
    /// The fit failed with `error`; put things back where they belong.
    fn on_error(&mut self, _fit: &mut FineTune<'_>, _error: &Error) -> Result<()> {
        Ok(())
    }
    /// Tensors to keep in the checkpoint, named under this callback's prefix.
    fn save(&self, _out: &mut Vec<(String, Tensor)>) -> Result<()> {
        Ok(())
    }
}

/// A borrowed callback, so the caller keeps it (and reads its record) after the fit.
impl<T: Callback + ?Sized> Callback for &mut T {
    fn before_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        (**self).before_fit(fit)
    }
    fn before_epoch(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        (**self).before_epoch(fit)
    }
    fn before_batch(&mut self, ctx: &mut BatchCtx<'_>) -> Result<()> {
        (**self).before_batch(ctx)
    }
    fn after_loss(&mut self, ctx: &mut BatchCtx<'_>) -> Result<()> {
        (**self).after_loss(ctx)
    }
    fn after_backward(&mut self, ctx: &mut BatchCtx<'_>, grads: &mut GradStore) -> Result<()> {
        (**self).after_backward(ctx, grads)
    }
    fn after_step(&mut self, ctx: &mut BatchCtx<'_>) -> Result<()> {
        (**self).after_step(ctx)
    }
    fn after_batch(&mut self, ctx: &mut BatchCtx<'_>, loss: f64, accuracy: f64) -> Result<()> {
        (**self).after_batch(ctx, loss, accuracy)
    }
    fn before_validate(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        (**self).before_validate(fit)
    }
    fn after_validate(&mut self, fit: &mut FineTune<'_>, record: &EpochRecord) -> Result<()> {
        (**self).after_validate(fit, record)
    }
    fn after_epoch(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        (**self).after_epoch(fit)
    }
    fn after_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        (**self).after_fit(fit)
    }
    fn on_error(&mut self, fit: &mut FineTune<'_>, error: &Error) -> Result<()> {
        (**self).on_error(fit, error)
    }
    fn save(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        (**self).save(out)
    }
}

/// What a fine_tune step trains on and with.
pub struct Setup<'a> {
    pub data: &'a Dataset,
    pub aug: Option<&'a Augmenter>,
    pub cfg: &'a FineTuneConfig,
    pub batch_size: usize,
    pub seed: u64,
    /// The seed of the cached augmented views (`augment_views`): the same in
    /// every step of a recipe, so a later step can reuse an earlier one's views.
    pub view_seed: u64,
    /// Shorter frozen prefixes that later steps will train from: the
    /// frozen-feature pass keeps their outputs on its way. Empty when nothing
    /// later unfreezes more.
    pub later_prefixes: &'a [usize],
    pub cache: &'a mut FeatureCache,
}

/// The inputs of the training loop that stay fixed during a fit.
struct Inputs<'a> {
    data: &'a Dataset,
    aug: Option<&'a Augmenter>,
    batch_size: usize,
    seed: u64,
    /// Leading blocks whose output is constant (cached or computed by the producer).
    k: usize,
    valid_cache: Option<Arc<Features>>,
    /// The one unaugmented set, or `augment_views` augmented views.
    train_cache: Vec<Arc<Features>>,
    schedule: LrSchedule,
    class_weights: Option<Tensor>,
}

/// A fine_tune step in progress: the state every callback can see.
pub struct FineTune<'a> {
    pub model: &'a mut Classifier,
    pub cfg: &'a FineTuneConfig,
    pub obs: &'a mut dyn Observer,
    pub opt: Optimizer,
    pub history: Vec<EpochRecord>,
    /// Early stopping's record: best score, its epoch and weights.
    pub best: Option<(f64, usize, Snapshot)>,
    pub since_best: usize,
    /// Set by a callback (or a cancel) to end the fit after this epoch.
    pub stop: Option<Stop>,
    /// The epoch whose weights the model ends with, when not the last.
    pub best_epoch: Option<usize>,
    pub started: Instant,
    /// The current epoch, 0-based.
    pub epoch: usize,
    /// Callback state gathered for the next checkpoint (see [`Callback::save`]).
    pub extra_state: Vec<(String, Tensor)>,
    /// Run validation after each epoch (lr_find does not).
    pub validate: bool,
    first_epoch: usize,
    input: Inputs<'a>,
}

/// Per-epoch training totals.
#[derive(Default)]
struct EpochStats {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    lr: f64,
}

impl EpochStats {
    /// Adds a trained batch; a mixed image counts as its dominant image's class.
    fn add(&mut self, logits: &Tensor, y: Vec<usize>, mixed: Option<Mixed>, loss: f64, lr: f64) -> Result<()> {
        let y: Vec<usize> = match mixed {
            Some(m) if m.lam < 0.5 => y.into_iter().rev().collect(),
            _ => y,
        };
        let preds = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        self.correct += preds.iter().zip(&y).filter(|(p, &t)| **p as usize == t).count();
        self.loss_sum += loss * y.len() as f64;
        self.seen += y.len();
        self.lr = lr;
        Ok(())
    }
}

impl<'a> FineTune<'a> {
    /// Computes what the frozen blocks give once, builds the optimizer over
    /// the trainable parameters and takes up `resume` when given.
    pub fn prepare(
        model: &'a mut Classifier,
        setup: Setup<'a>,
        obs: &'a mut dyn Observer,
        resume: Option<Resume>,
    ) -> Result<Self> {
        let mut setup = setup;
        setup.aug = setup.aug.filter(|a| !a.is_identity());
        let k = model.constant_prefix();
        let (valid_cache, train_cache) =
            if k > 0 { frozen_features(model, &mut setup, obs)? } else { (None, Vec::new()) };
        let Setup { data, aug, cfg, batch_size, seed, .. } = setup;
        let groups = param_groups(model, cfg);
        if groups.iter().all(|g| g.vars.is_empty()) {
            return Err(Error::NothingToTrain);
        }
        let mut opt = Optimizer::with_groups(groups, &cfg.optimizer);
        // The lab resolves an lr_find suggestion before the step trains.
        let peak = cfg.lr.peak().ok_or(Error::NoLrFind)?;
        let class_weights = class_weights(data, &cfg.class_weights)?;
        let input = Inputs {
            data,
            aug,
            batch_size,
            seed,
            k,
            valid_cache,
            train_cache,
            schedule: LrSchedule::new(peak, cfg.epochs, &cfg.schedule),
            class_weights,
        };
        let (first_epoch, history, best, since_best) = match resume {
            Some(r) => {
                opt.load_state(r.optimizer_t, &r.optimizer)?;
                obs.event(Event::Log(format!("resuming after epoch {}", r.epochs_done)));
                (r.epochs_done, r.history, r.best, r.since_best)
            }
            None => (0, Vec::new(), None, 0),
        };
        Ok(FineTune {
            model,
            cfg,
            obs,
            opt,
            history,
            best,
            since_best,
            stop: None,
            best_epoch: None,
            started: Instant::now(),
            epoch: 0,
            extra_state: Vec::new(),
            validate: true,
            first_epoch,
            input,
        })
    }

    pub fn epochs(&self) -> usize {
        self.cfg.epochs
    }

    pub fn batches(&self) -> usize {
        self.input.data.train.len().div_ceil(self.input.batch_size)
    }

    /// Trains epoch after epoch until the last one or a stop, then lets the
    /// callbacks finish (restore the best weights, keep the EMA, checkpoint).
    pub fn run(mut self, cbs: &mut [Box<dyn Callback + '_>]) -> Result<FineTuneOutcome> {
        let trainable_params = self.opt.num_params();
        let images = self.input.data.train.len();
        self.obs.event(Event::Log(format!("training {trainable_params} parameters on {images} images")));
        let result = self.before_fit(cbs).and_then(|()| self.epochs_loop(cbs));
        if let Err(e) = result {
            for c in cbs.iter_mut() {
                c.on_error(&mut self, &e)?;
            }
            return Err(e);
        }
        self.extra_state = gather(cbs)?;
        for c in cbs.iter_mut() {
            c.after_fit(&mut self)?;
        }
        let best_epoch = self.best_epoch.or(self.history.last().map(|r| r.epoch));
        Ok(FineTuneOutcome {
            history: self.history,
            stop: self.stop.unwrap_or(Stop::Completed),
            best_epoch,
            trainable_params,
        })
    }

    fn before_fit(&mut self, cbs: &mut [Box<dyn Callback + '_>]) -> Result<()> {
        cbs.iter_mut().try_for_each(|c| c.before_fit(self))
    }

    fn epochs_loop(&mut self, cbs: &mut [Box<dyn Callback + '_>]) -> Result<()> {
        for epoch in self.first_epoch..self.cfg.epochs {
            self.epoch = epoch;
            let t0 = Instant::now();
            cbs.iter_mut().try_for_each(|c| c.before_epoch(self))?;
            let stats = self.train_epoch(cbs)?;
            if self.stop == Some(Stop::Cancelled) && stats.seen < self.input.data.train.len() {
                // A partial epoch is not recorded; the weights so far are kept.
                return Ok(());
            }
            if self.validate {
                cbs.iter_mut().try_for_each(|c| c.before_validate(self))?;
                let record = self.validate_epoch(&stats, t0)?;
                self.history.push(record.clone());
                cbs.iter_mut().try_for_each(|c| c.after_validate(self, &record))?;
            }
            self.name_unreadable_images();
            self.extra_state = gather(cbs)?;
            cbs.iter_mut().try_for_each(|c| c.after_epoch(self))?;
            if self.stop.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Streamed images whose files changed into something undecodable or
    /// vanished after the data was listed, named once each: they were
    /// served black and the epoch went on.
    fn name_unreadable_images(&mut self) {
        let data = self.input.data;
        for stream in [&data.train, &data.valid].into_iter().filter_map(|s| s.pixels.stream()) {
            for (path, why) in stream.new_failures() {
                let path = crate::util::paths::shown(&path);
                self.obs.event(Event::Log(format!(
                    "warning: {} could not be read during epoch {} ({why}); it changed or vanished after the data was listed, and was used as a black image",
                    path.display(),
                    self.epoch + 1
                )));
            }
        }
    }

    /// Loss and accuracy on the validation split, as this epoch's record.
    fn validate_epoch(&mut self, stats: &EpochStats, t0: Instant) -> Result<EpochRecord> {
        let _t = crate::util::profile::scope("validation");
        let inp = &self.input;
        let valid = &inp.data.valid;
        let cache = inp.valid_cache.as_deref().map(|c| (c, inp.k));
        let logits = predict_split(self.model, inp.data, valid, cache, inp.batch_size)?;
        let (valid_loss, valid_accuracy) = loss_and_accuracy(&logits, &valid.labels, inp.data.classes.len());
        Ok(EpochRecord {
            epoch: self.epoch + 1,
            train_loss: stats.loss_sum / stats.seen.max(1) as f64,
            train_accuracy: stats.correct as f64 / stats.seen.max(1) as f64,
            valid_loss,
            valid_accuracy,
            lr: stats.lr,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The order images are drawn in this epoch (a per-epoch stream, so a
    /// resumed run draws what an uninterrupted one would).
    fn epoch_order(&self) -> Vec<usize> {
        let train = &self.input.data.train;
        let mut rng = Rng::derive(self.input.seed, 0x0DE5 ^ (self.epoch as u64) << 8);
        match self.cfg.sampler {
            Sampler::Shuffle => {
                let mut order: Vec<usize> = (0..train.len()).collect();
                rng.shuffle(&mut order);
                order
            }
            Sampler::Balanced => balanced_draw(&train.labels, self.input.data.classes.len(), &mut rng),
        }
    }

    /// One pass over the training split. Without cached features, a producer
    /// thread prepares the next batch (decode, augment, mix, normalise, frozen
    /// blocks) while this one trains on the current batch; both submit their
    /// parallel work to the same rayon pool, so the cores are shared, not
    /// oversubscribed, and per-image seeds make the result independent of the
    /// overlap.
    fn train_epoch(&mut self, cbs: &mut [Box<dyn Callback + '_>]) -> Result<EpochStats> {
        let order = self.epoch_order();
        let (epoch, batches) = (self.epoch, self.batches());
        let FineTune { model, cfg, obs, opt, input: inp, stop, .. } = self;
        let (frozen, cfg): (&Classifier, &FineTuneConfig) = (model, cfg);
        let cached = (!inp.train_cache.is_empty()).then(|| &inp.train_cache[epoch % inp.train_cache.len()]);
        let mut dropout_rng = Rng::derive(inp.seed, 0xD209 ^ ((epoch as u64) << 16));
        let mut stats = EpochStats::default();
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(Tensor, Option<Mixed>)>>(1);
            if cached.is_none() {
                let (order, inp) = (&order, &*inp);
                scope.spawn(move || {
                    for (b, idx) in order.chunks(inp.batch_size).enumerate() {
                        // The trainer stopped early (cancel, divergence, error).
                        if tx.send(produce(frozen, inp, cfg, idx, epoch, b)).is_err() {
                            return;
                        }
                    }
                });
            } else {
                drop(tx);
            }
            for (b, idx) in order.chunks(inp.batch_size).enumerate() {
                let mut ctx = BatchCtx {
                    model: frozen,
                    obs: &mut **obs,
                    epoch,
                    batch: b,
                    batches,
                    lr: inp.schedule.lr(epoch, b, batches),
                    loss: 0.0,
                    stop: false,
                };
                if let Some(m) = inp.schedule.momentum(epoch, b, batches) {
                    opt.set_momentum(m);
                }
                cbs.iter_mut().try_for_each(|c| c.before_batch(&mut ctx))?;
                let (x, mixed) = match cached {
                    Some(features) => mix_if(features.rows(idx)?, cfg, inp.seed, epoch, b)?,
                    None => rx.recv().map_err(|_| Error::Internal("the input pipeline stopped"))??,
                };
                let labels = &inp.data.train.labels;
                let y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
                let mode = Mode::train(drop_path_noise(frozen, inp.seed, epoch, b));
                let logits = frozen.forward_from(&x, inp.k, mode, &mut dropout_rng)?;
                let loss = batch_loss(&logits, &y, cfg.label_smoothing, mixed, inp.class_weights.as_ref())?;
                ctx.loss = f64::from(loss.to_scalar::<f32>()?);
                cbs.iter_mut().try_for_each(|c| c.after_loss(&mut ctx))?;
                if !ctx.loss.is_finite() {
                    return Err(diverged(ctx.loss, epoch, b));
                }
                if ctx.stop {
                    *stop = Some(Stop::Completed);
                    break;
                }
                let mut grads = crate::util::profile::timed("backward", || loss.backward())?;
                cbs.iter_mut().try_for_each(|c| c.after_backward(&mut ctx, &mut grads))?;
                crate::util::profile::timed("optimizer", || opt.step(&grads, ctx.lr))?;
                cbs.iter_mut().try_for_each(|c| c.after_step(&mut ctx))?;
                stats.add(&logits, y, mixed, ctx.loss, ctx.lr)?;
                let (loss, acc) = (stats.loss_sum / stats.seen as f64, stats.correct as f64 / stats.seen as f64);
                cbs.iter_mut().try_for_each(|c| c.after_batch(&mut ctx, loss, acc))?;
                if ctx.obs.cancelled() {
                    *stop = Some(Stop::Cancelled);
                    break;
                }
                if ctx.stop {
                    *stop = Some(Stop::Completed);
                    break;
                }
            }
            Ok(())
        })?;
        Ok(stats)
    }
}

/// Whatever the callbacks, a fit whose loss is not a number has not
/// completed (NanGuard, when present, has already said so and restores the
/// weights).
fn diverged(loss: f64, epoch: usize, batch: usize) -> Error {
    Error::Diverged(format!("loss became {loss} at epoch {} batch {} (try a lower lr)", epoch + 1, batch + 1))
}

/// One training batch, ready for the trainable blocks: augmented, mixed
/// (seeded by epoch and batch) and through the frozen prefix.
fn produce(
    model: &Classifier,
    inp: &Inputs<'_>,
    cfg: &FineTuneConfig,
    idx: &[usize],
    epoch: usize,
    batch: usize,
) -> Result<(Tensor, Option<Mixed>)> {
    let pre = model.backbone.preprocess();
    let aug_seed = inp.seed ^ ((epoch as u64 + 1) << 32);
    let x = input(inp.data, &inp.data.train, idx, &pre, inp.aug.map(|a| (a, aug_seed)))?;
    let at_features = inp.k > 0 && cfg.mix.is_some_and(|m| m.at == MixAt::Features);
    if at_features {
        return mix_if(model.prefix(&x, inp.k)?, cfg, inp.seed, epoch, batch);
    }
    let (x, mixed) = mix_if(x, cfg, inp.seed, epoch, batch)?;
    let x = if inp.k > 0 { model.prefix(&x, inp.k)? } else { x };
    Ok((x, mixed))
}

/// `x` mixed as `cfg.mix` says (seeded by epoch and batch), or as it is.
fn mix_if(x: Tensor, cfg: &FineTuneConfig, seed: u64, epoch: usize, batch: usize) -> Result<(Tensor, Option<Mixed>)> {
    match &cfg.mix {
        Some(m) => {
            let mut rng = Rng::derive(seed ^ 0x313C, ((epoch as u64) << 32) | batch as u64);
            mix::mix_batch(&x, m, &mut rng)
        }
        None => Ok((x, None)),
    }
}

/// The batch's training loss: plain (smoothed) cross-entropy, or against
/// soft targets when the batch is mixed or classes are weighted.
fn batch_loss(
    logits: &Tensor,
    labels: &[usize],
    smoothing: f64,
    mixed: Option<Mixed>,
    class_weights: Option<&Tensor>,
) -> Result<Tensor> {
    if mixed.is_none() && class_weights.is_none() {
        let l: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        return cross_entropy(logits, &Tensor::from_vec(l, labels.len(), &Device::Cpu)?, smoothing);
    }
    let classes = logits.dim(1)?;
    let t = mix::targets(labels, classes, smoothing, mixed);
    let t = Tensor::from_vec(t, (labels.len(), classes), &Device::Cpu)?.to_dtype(logits.dtype())?;
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    match class_weights {
        // PyTorch's weighted mean: Σ w·t·(-log p) / Σ w·t.
        Some(w) => {
            let tw = t.broadcast_mul(&w.unsqueeze(0)?.to_dtype(logits.dtype())?)?;
            Ok(((tw.clone() * log_p)?.sum_all()?.neg()? / tw.sum_all()?)?)
        }
        None => Ok(((t * log_p)?.sum_all()?.neg()? / labels.len() as f64)?),
    }
}

/// The optimizer's parameter groups: one group at the full rate, or the
/// trainable blocks spread geometrically (`lr = [low, high]`, fastai's
/// `slice`) or by layer-wise decay (timm).
fn param_groups(model: &Classifier, cfg: &FineTuneConfig) -> Vec<ParamGroup> {
    let groups = model.trainable_groups();
    let g = groups.len();
    let scale = |i: usize| -> f64 {
        let from_head = (g - 1 - i) as f64;
        match (cfg.lr, cfg.layer_decay) {
            (Lr::Range { low, high }, _) if g > 1 => (low / high).powf(from_head / (g - 1) as f64),
            (_, Some(decay)) => decay.powf(from_head),
            _ => 1.0,
        }
    };
    groups.into_iter().enumerate().map(|(i, vars)| ParamGroup { vars, lr_scale: scale(i) }).collect()
}

/// Loss weight per class, `None` when every class weighs the same.
fn class_weights(data: &Dataset, cfg: &ClassWeights) -> Result<Option<Tensor>> {
    let classes = data.classes.len();
    let w: Vec<f32> = match cfg {
        ClassWeights::None => return Ok(None),
        ClassWeights::Balanced => {
            let mut counts = vec![0usize; classes];
            data.train.labels.iter().for_each(|&y| counts[y] += 1);
            let n = data.train.len() as f64;
            counts.iter().map(|&c| if c == 0 { 0.0 } else { (n / (classes as f64 * c as f64)) as f32 }).collect()
        }
        ClassWeights::Given(list) => {
            let mut w = vec![1f32; classes];
            for (name, weight) in list {
                let Some(i) = data.classes.iter().position(|c| c == name) else {
                    let names: Vec<&str> = data.classes.iter().map(String::as_str).collect();
                    let hint = crate::util::suggest::suggest(name, &names).map_or_else(
                        || format!("; the classes are: {}", names.join(", ")),
                        |s| format!("; did you mean \"{s}\"?"),
                    );
                    return Err(Error::UnknownClass { key: "class_weights", name: name.clone(), hint });
                };
                w[i] = *weight as f32;
            }
            w
        }
    };
    Ok(Some(Tensor::from_vec(w, classes, &Device::Cpu)?))
}

/// `n` draws with replacement, each class equally likely, then uniform
/// within the class (the class-balanced sampler).
fn balanced_draw(labels: &[usize], classes: usize, rng: &mut Rng) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &y) in labels.iter().enumerate() {
        by_class[y].push(i);
    }
    let present: Vec<&Vec<usize>> = by_class.iter().filter(|c| !c.is_empty()).collect();
    (0..labels.len())
        .map(|_| {
            let class = present[rng.below(present.len())];
            class[rng.below(class.len())]
        })
        .collect()
}

/// The callbacks' checkpoint state.
fn gather(cbs: &[Box<dyn Callback + '_>]) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for c in cbs {
        c.save(&mut out)?;
    }
    Ok(out)
}

/// `augment_views = "auto"`: one view per epoch, the same number of fresh
/// draws as live augmentation, each computed through the frozen blocks once
/// (and through the blocks a later step unfreezes, which that step then
/// reuses, as does a re-run of this step) — when the step runs a fixed number
/// of epochs (no early stopping or time limit, which may end it long before)
/// and the views fit the feature cache's memory. Otherwise 0: live.
fn auto_views(cfg: &FineTuneConfig, images: usize, item_bytes: u64, budget: u64) -> usize {
    let fixed = cfg.early_stopping.is_none() && cfg.time_limit_secs.is_none() && cfg.epochs <= 64;
    let bytes = (cfg.epochs * images) as u64 * item_bytes;
    if fixed && bytes <= budget {
        cfg.epochs
    } else {
        0
    }
}

/// The validation split's frozen features, and the training split's sets.
type CachedFeatures = (Option<Arc<Features>>, Vec<Arc<Features>>);

/// The frozen prefix's output for the validation split and, where the
/// training input does not change between epochs (no augmentation, or
/// `augment_views` precomputed views, and no mixing), for the training split.
fn frozen_features(model: &Classifier, setup: &mut Setup<'_>, obs: &mut dyn Observer) -> Result<CachedFeatures> {
    let Setup { data, aug, cfg, batch_size, view_seed, later_prefixes, ref mut cache, .. } = *setup;
    let k = model.constant_prefix();
    let t = Instant::now();
    let pass = PrefixPass::new(model, data, batch_size, later_prefixes);
    let valid = pass.features(cache, &data.valid, k, None, obs)?;
    let mut train = Vec::new();
    // Mixing the images needs them live; mixing the frozen features does not.
    let mixing = cfg.mix.is_some_and(|m| m.at == MixAt::Input);
    match aug {
        _ if mixing => {}
        None => train.push(pass.features(cache, &data.train, k, None, obs)?),
        Some(a) => {
            let item_bytes = valid.bytes() / valid.len().max(1) as u64 + pass.kept_item_bytes.get();
            let views =
                cfg.augment_views.unwrap_or_else(|| auto_views(cfg, data.train.len(), item_bytes, cache.budget()));
            for v in 0..views {
                let seed = Rng::derive(view_seed, 0x7_1E55 + v as u64).next_u64();
                train.push(pass.features(cache, &data.train, k, Some((a, seed, v)), obs)?);
            }
        }
    }
    let train_what = match (aug, train.len()) {
        _ if mixing => "split (mixup/cutmix runs live on the training split)",
        (None, _) => "and training splits",
        (Some(_), 0) => "split (augmentation runs live on the training split)",
        (Some(_), _) => "split and augmented training views",
    };
    let (computed, reused) = pass.counts.get();
    let kept = match later_prefixes.iter().filter(|&&j| j > 0 && j < k).max() {
        Some(j) if computed > 0 => format!("; the output after {j} block(s) kept for a later step"),
        _ => String::new(),
    };
    obs.event(Event::Log(format!(
        "frozen features of {k} block(s) for the validation {train_what}: {computed} computed, {reused} reused, {:.1}s{kept}",
        t.elapsed().as_secs_f64()
    )));
    Ok((Some(valid), train))
}

/// The stochastic-depth draws of batch `b` of `epoch`: from (seed, epoch,
/// batch), not from the dropout stream, which stays as it was for models
/// without `drop_path`.
fn drop_path_noise(model: &Classifier, seed: u64, epoch: usize, b: usize) -> u64 {
    if model.drop_path() > 0.0 {
        Rng::derive(seed ^ 0x5D0C_D3A7, (epoch as u64) << 32 | b as u64).next_u64()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_balanced_sampler_draws_every_class_equally_often() {
        // 90 / 9 / 1 images: shuffled, the rare class is 1 % of an epoch.
        let labels: Vec<usize> = (0..100)
            .map(|i| {
                if i < 90 {
                    0
                } else if i < 99 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let mut counts = [0usize; 3];
        for epoch in 0..50 {
            let draw = balanced_draw(&labels, 3, &mut Rng::derive(1, epoch));
            assert_eq!(draw.len(), labels.len());
            draw.iter().for_each(|&i| counts[labels[i]] += 1);
        }
        let total: usize = counts.iter().sum();
        for (class, &n) in counts.iter().enumerate() {
            let share = n as f64 / total as f64;
            assert!((share - 1.0 / 3.0).abs() < 0.03, "class {class}: {share:.3} of the draws");
        }
    }

    #[test]
    fn auto_views_are_one_per_epoch_unless_the_step_may_stop_early_or_they_do_not_fit() {
        let cfg = crate::recipe::fine_tune_for_test("epochs = 4");
        // 100 images × 4 views × 1 KiB each.
        assert_eq!(auto_views(&cfg, 100, 1024, 400 * 1024), 4);
        assert_eq!(auto_views(&cfg, 100, 1024, 400 * 1024 - 1), 0, "over the memory budget: live");
        let stopping = crate::recipe::fine_tune_for_test("epochs = 4\npatience = 2");
        assert_eq!(auto_views(&stopping, 100, 1024, u64::MAX), 0, "early stopping: live");
        let timed = crate::recipe::fine_tune_for_test("epochs = 4\ntime_limit = 60");
        assert_eq!(auto_views(&timed, 100, 1024, u64::MAX), 0, "time limit: live");
    }

    #[test]
    fn balanced_class_weights_are_inverse_to_the_counts() {
        let mut data = crate::present::preview::tests::tiny_dataset(4, 8);
        data.train.labels = vec![0, 0, 0, 1];
        let w = class_weights(&data, &ClassWeights::Balanced).unwrap().unwrap().to_vec1::<f32>().unwrap();
        // scikit-learn's "balanced": n / (classes · count) = 4 / (2·3), 4 / (2·1).
        assert!((w[0] - 4.0 / 6.0).abs() < 1e-6 && (w[1] - 2.0).abs() < 1e-6, "{w:?}");
        let given = ClassWeights::Given(vec![("b".into(), 3.0)]);
        assert_eq!(class_weights(&data, &given).unwrap().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 3.0]);
        let typo = ClassWeights::Given(vec![("bb".into(), 3.0)]);
        let err = class_weights(&data, &typo).unwrap_err().to_string();
        assert!(err.contains("\"bb\"") && err.contains("the classes are: a, b"), "{err}");
    }
}
