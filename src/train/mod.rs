//! Fine-tuning and evaluation loops.
//!
//! Blocks that are frozen (and whose BatchNorm is not trainable) compute the
//! same function every epoch, so their output is computed once per image and
//! cached ([`cache`]) whenever their input does not change: always for the
//! validation split, for the training split when no augmentation is active,
//! and for `augment_views = K` precomputed augmented views. Only the
//! trainable tail then runs per batch.

pub mod cache;
pub mod optim;
pub mod schedule;

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::augment::{Augmenter, Rng};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::models::layers::Mode;
use crate::models::{Classifier, Preprocess};
use crate::recipe::{EvaluateConfig, FineTuneConfig, Monitor};
use cache::{FeatureCache, Features};

/// One epoch of a fine_tune step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub valid_loss: f64,
    pub valid_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Progress reported while a step runs (to progress bars, the TUI, a notebook).
#[derive(Debug, Clone)]
pub enum Event {
    Log(String),
    EpochStart { epoch: usize, epochs: usize, batches: usize },
    Batch { epoch: usize, batch: usize, batches: usize, loss: f64, accuracy: f64 },
    Epoch(EpochRecord),
}

/// Receives [`Event`]s and can ask the loop to stop after the current batch.
pub trait Observer {
    fn event(&mut self, event: Event);
    fn cancelled(&self) -> bool {
        false
    }
    /// Called after every completed epoch and when the step ends, so a front
    /// end can persist a resumable checkpoint. Default: nothing.
    fn checkpoint(&mut self, _state: &Checkpoint<'_>) -> Result<()> {
        Ok(())
    }
}

/// Where an interrupted fine_tune step picks up: the state after its last
/// completed epoch.
#[derive(Clone)]
pub struct Resume {
    /// Epochs already done (training continues with epoch `epochs_done + 1`).
    pub epochs_done: usize,
    pub history: Vec<EpochRecord>,
    pub optimizer_t: i32,
    pub optimizer: std::collections::HashMap<String, Tensor>,
    /// Early stopping: best score, its epoch and weights, epochs since.
    pub best: Option<(f64, usize, crate::models::Snapshot)>,
    pub since_best: usize,
}

/// The state after an epoch, handed to [`Observer::checkpoint`].
pub struct Checkpoint<'a> {
    pub model: &'a Classifier,
    pub optimizer: &'a optim::Optimizer,
    pub history: &'a [EpochRecord],
    pub best: Option<(f64, usize, &'a crate::models::Snapshot)>,
    pub since_best: usize,
    /// The step has ended (the weights are final, e.g. restored to the best epoch).
    pub finished: bool,
}

/// Observer that ignores everything.
pub struct Silent;
impl Observer for Silent {
    fn event(&mut self, _: Event) {}
}

/// Why a fine_tune step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stop {
    Completed,
    EarlyStopped,
    TimeLimit,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct FineTuneOutcome {
    pub history: Vec<EpochRecord>,
    pub stop: Stop,
    /// Epoch (1-based) whose weights the model holds at the end.
    pub best_epoch: Option<usize>,
    pub trainable_params: usize,
}

/// Mean cross-entropy with label smoothing ε: `(1-ε)·NLL + ε·mean(-log p)`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = log_p.gather(&labels.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if smoothing <= 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.mean(D::Minus1)?.neg()?.mean_all()?;
    Ok(((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// Normalised input tensor for images `idx` of `split`.
fn input(
    data: &Dataset,
    split: &Split,
    idx: &[usize],
    pre: &Preprocess,
    aug: Option<(&Augmenter, u64)>,
) -> Result<Tensor> {
    let s = data.size as usize;
    let px = data.batch_pixels(split, idx, aug);
    pre.to_tensor(&px, idx.len(), s, s)
}

fn labels_tensor(split: &Split, idx: &[usize]) -> Result<Tensor> {
    let l: Vec<u32> = idx.iter().map(|&i| split.labels[i] as u32).collect();
    Ok(Tensor::from_vec(l, idx.len(), &Device::Cpu)?)
}

/// Output of the model's first `blocks` (frozen) blocks for every image of
/// `split`, optionally augmented, from `cache` or computed into it.
#[allow(clippy::too_many_arguments)]
fn prefix_features(
    cache: &mut FeatureCache,
    model_key: &cache::KeyHasher,
    model: &Classifier,
    data: &Dataset,
    split: &Split,
    blocks: usize,
    batch: usize,
    view: Option<(&Augmenter, u64, usize)>,
    obs: &mut dyn Observer,
) -> Result<std::sync::Arc<Features>> {
    let pre = model.backbone.preprocess();
    let key = cache::split_key(model_key, split, data.size, view);
    let compute = |r: std::ops::Range<usize>| {
        let idx: Vec<usize> = r.collect();
        model.prefix(&input(data, split, &idx, &pre, view.map(|(a, seed, _)| (a, seed)))?, blocks)
    };
    let mut log = |s: String| obs.event(Event::Log(s));
    cache.get_or_compute(key, split.len(), batch, compute, &mut log)
}

/// Logits for every image of `split` in eval mode, reusing `cache` when given.
fn predict_split(
    model: &Classifier,
    data: &Dataset,
    split: &Split,
    cache: Option<(&Features, usize)>,
    batch: usize,
) -> Result<Vec<f32>> {
    let pre = model.backbone.preprocess();
    let mode = Mode { training: false };
    let mut rng = Rng::new(0);
    let mut out = Vec::with_capacity(split.len() * model.head.classes());
    let all: Vec<usize> = (0..split.len()).collect();
    for idx in all.chunks(batch) {
        let logits = match cache {
            Some((c, k)) => model.forward_from(&c.rows(idx)?, k, mode, &mut rng)?,
            None => model.forward_from(&input(data, split, idx, &pre, None)?, 0, mode, &mut rng)?,
        };
        out.extend(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Loss and accuracy of `split`, from logits.
fn loss_and_accuracy(logits: &[f32], labels: &[usize], classes: usize) -> (f64, f64) {
    let probs = metrics::softmax_rows(logits, classes);
    let n = labels.len().max(1) as f64;
    let mut loss = 0.0;
    let mut correct = 0usize;
    for (row, &y) in probs.chunks(classes).zip(labels) {
        loss -= f64::from(row[y].max(1e-12)).ln();
        correct += usize::from(metrics::argmax(row) == y);
    }
    (loss / n, correct as f64 / n)
}

/// Trains the model's trainable parameters on `data.train`, validating on
/// `data.valid` after each epoch.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    model: &mut Classifier,
    data: &Dataset,
    aug: Option<&Augmenter>,
    cfg: &FineTuneConfig,
    batch_size: usize,
    seed: u64,
    obs: &mut dyn Observer,
    resume: Option<Resume>,
    cache: &mut FeatureCache,
) -> Result<FineTuneOutcome> {
    let started = Instant::now();
    let pre = model.backbone.preprocess();
    let classes = data.classes.len();
    let aug = aug.filter(|a| !a.is_identity());
    let k = model.constant_prefix();
    let (mut valid_cache, mut train_cache) = (None, Vec::new());
    if k > 0 {
        let hits = cache.hits();
        let t = Instant::now();
        let key = cache::model_key(model, k)?;
        let valid = &data.valid;
        valid_cache = Some(prefix_features(cache, &key, model, data, valid, k, batch_size, None, obs)?);
        match aug {
            None => {
                train_cache.push(prefix_features(cache, &key, model, data, &data.train, k, batch_size, None, obs)?);
            }
            Some(a) => {
                for v in 0..cfg.augment_views {
                    let view_seed = Rng::derive(seed, 0x7_1E55 + v as u64).next_u64();
                    let view = Some((a, view_seed, v));
                    train_cache.push(prefix_features(cache, &key, model, data, &data.train, k, batch_size, view, obs)?);
                }
            }
        }
        let (train_what, views) = match (aug, cfg.augment_views) {
            (None, _) => ("and training splits", 1),
            (Some(_), 0) => ("split (augmentation runs live on the training split)", 0),
            (Some(_), v) => ("split and augmented training views", v),
        };
        let reused = cache.hits() - hits;
        obs.event(Event::Log(format!(
            "frozen features of {k} block(s) for the validation {train_what}: {} computed, {reused} reused, {:.1}s",
            1 + views - reused,
            t.elapsed().as_secs_f64()
        )));
    }
    let vars = model.trainable_vars();
    if vars.is_empty() {
        return Err(Error::Invalid("nothing to train: every parameter is frozen".into()));
    }
    let mut opt = optim::Optimizer::new(vars, cfg);
    let (first_epoch, mut history, mut best, mut since_best) = match resume {
        Some(r) => {
            opt.load_state(r.optimizer_t, &r.optimizer)?;
            obs.event(Event::Log(format!("resuming after epoch {}", r.epochs_done)));
            (r.epochs_done, r.history, r.best, r.since_best)
        }
        None => (0, Vec::new(), None, 0),
    };
    let trainable_params = opt.num_params();
    obs.event(Event::Log(format!("training {trainable_params} parameters on {} images", data.train.len())));
    let schedule = schedule::LrSchedule::new(cfg);
    let mut stop = Stop::Completed;
    let n = data.train.len();
    let batches = n.div_ceil(batch_size);
    'epochs: for epoch in first_epoch..cfg.epochs {
        // Per-epoch streams, so a resumed run draws what an uninterrupted one would.
        let mut dropout_rng = Rng::derive(seed, 0xD209 ^ ((epoch as u64) << 16));
        let t0 = Instant::now();
        obs.event(Event::EpochStart { epoch: epoch + 1, epochs: cfg.epochs, batches });
        let last_good = model.snapshot()?;
        let mut order: Vec<usize> = (0..n).collect();
        Rng::derive(seed, 0x0DE5 ^ (epoch as u64) << 8).shuffle(&mut order);
        let aug_seed = seed ^ ((epoch as u64 + 1) << 32);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        let mut lr = cfg.lr;
        // Cached features: the one unaugmented set, or augmented view `epoch mod K`.
        let cached = (!train_cache.is_empty()).then(|| &train_cache[epoch % train_cache.len()]);
        let frozen: &Classifier = model;
        // Without cached features, a producer thread prepares the next batch
        // (decode, augment, normalise, frozen blocks) while this one trains on
        // the current batch. Both submit their parallel work to the same rayon
        // pool, so the cores are shared, not oversubscribed; the producer runs
        // at most one batch ahead. Per-image seeds make the result independent
        // of the overlap.
        let diverged = std::thread::scope(|scope| -> Result<Option<(f64, usize)>> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Tensor>>(1);
            if cached.is_none() {
                let (order, pre) = (&order, &pre);
                scope.spawn(move || {
                    for idx in order.chunks(batch_size) {
                        let x = input(data, &data.train, idx, pre, aug.map(|a| (a, aug_seed))).and_then(|x| {
                            if k > 0 {
                                frozen.prefix(&x, k)
                            } else {
                                Ok(x)
                            }
                        });
                        // The trainer stopped early (cancel, divergence, error).
                        if tx.send(x).is_err() {
                            return;
                        }
                    }
                });
            } else {
                drop(tx);
            }
            for (b, idx) in order.chunks(batch_size).enumerate() {
                lr = schedule.lr(epoch, b, batches);
                let labels = labels_tensor(&data.train, idx)?;
                let mode = Mode { training: true };
                let x = match cached {
                    Some(features) => features.rows(idx)?,
                    None => rx.recv().map_err(|_| Error::Invalid("the input pipeline stopped".into()))??,
                };
                let logits = frozen.forward_from(&x, k, mode, &mut dropout_rng)?;
                let loss = cross_entropy(&logits, &labels, cfg.label_smoothing)?;
                let loss_value = f64::from(loss.to_scalar::<f32>()?);
                if !loss_value.is_finite() {
                    return Ok(Some((loss_value, b)));
                }
                let grads = loss.backward()?;
                opt.step(&grads, lr)?;
                let preds = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
                correct += preds.iter().zip(idx).filter(|(p, &i)| **p as usize == data.train.labels[i]).count();
                loss_sum += loss_value * idx.len() as f64;
                seen += idx.len();
                obs.event(Event::Batch {
                    epoch: epoch + 1,
                    batch: b + 1,
                    batches,
                    loss: loss_sum / seen as f64,
                    accuracy: correct as f64 / seen as f64,
                });
                if obs.cancelled() {
                    stop = Stop::Cancelled;
                    break;
                }
            }
            Ok(None)
        })?;
        if let Some((loss_value, b)) = diverged {
            model.restore(&last_good)?;
            return Err(Error::Diverged(format!(
                "loss became {loss_value} at epoch {} batch {}; weights restored to the start of that epoch (try a lower lr)",
                epoch + 1,
                b + 1
            )));
        }
        if stop == Stop::Cancelled && seen < n {
            // A partial epoch is not recorded; the weights so far are kept (or the best, below).
            break 'epochs;
        }
        let logits = predict_split(model, data, &data.valid, valid_cache.as_deref().map(|c| (c, k)), batch_size)?;
        let (valid_loss, valid_accuracy) = loss_and_accuracy(&logits, &data.valid.labels, classes);
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            valid_loss,
            valid_accuracy,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        obs.event(Event::Epoch(record.clone()));
        history.push(record);
        if let Some(es) = &cfg.early_stopping {
            let score = match es.monitor {
                Monitor::ValidLoss => -valid_loss,
                Monitor::ValidAccuracy => valid_accuracy,
            };
            if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                best = Some((score, epoch + 1, model.snapshot()?));
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= es.patience {
                    obs.event(Event::Log(format!("early stopping: no improvement for {} epoch(s)", es.patience)));
                    stop = Stop::EarlyStopped;
                    break;
                }
            }
        }
        // The last epoch and early stopping are followed by the final checkpoint below.
        let ending = epoch + 1 == cfg.epochs || stop == Stop::EarlyStopped;
        if !ending {
            obs.checkpoint(&Checkpoint {
                model,
                optimizer: &opt,
                history: &history,
                best: best.as_ref().map(|(s, e, snap)| (*s, *e, snap)),
                since_best,
                finished: false,
            })?;
        }
        if stop == Stop::Cancelled {
            break;
        }
        if cfg.time_limit_secs.is_some_and(|t| started.elapsed().as_secs_f64() > t) {
            obs.event(Event::Log("time limit reached".into()));
            stop = Stop::TimeLimit;
            break;
        }
    }
    let mut best_epoch = history.last().map(|r| r.epoch);
    if let (Some(es), Some((_, epoch, snap))) = (&cfg.early_stopping, &best) {
        if es.restore_best && Some(*epoch) != best_epoch {
            model.restore(snap)?;
            obs.event(Event::Log(format!("restored the best weights (epoch {epoch})")));
        }
        if es.restore_best {
            best_epoch = Some(*epoch);
        }
    }
    if stop != Stop::Cancelled {
        obs.checkpoint(&Checkpoint {
            model,
            optimizer: &opt,
            history: &history,
            best: best.as_ref().map(|(s, e, snap)| (*s, *e, snap)),
            since_best,
            finished: true,
        })?;
    }
    Ok(FineTuneOutcome { history, stop, best_epoch, trainable_params })
}

/// One validation image's outcome, for `predictions.csv` and the mistakes list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub path: std::path::PathBuf,
    pub truth: usize,
    pub predicted: usize,
    pub confidence: f32,
    /// Cross-entropy of the true class: mistakes are sorted by it, worst first.
    pub loss: f32,
}

/// Everything the evaluate step produces.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub metrics: Metrics,
    /// Every validation image, in split order.
    pub predictions: Vec<Prediction>,
    /// Misclassified images, worst (highest loss) first, at most `cfg.mistakes`.
    pub mistakes: Vec<Prediction>,
}

/// Evaluates the model on the validation split, taking the frozen blocks'
/// output from `cache` when it holds it (e.g. from the fine_tune step before).
pub fn evaluate(
    model: &Classifier,
    data: &Dataset,
    cfg: &EvaluateConfig,
    batch_size: usize,
    cache: Option<&mut FeatureCache>,
) -> Result<Evaluation> {
    let classes = data.classes.len();
    let k = model.constant_prefix();
    let features = match cache {
        Some(c) if k > 0 => {
            let key = cache::model_key(model, k)?;
            Some(prefix_features(c, &key, model, data, &data.valid, k, batch_size, None, &mut Silent)?)
        }
        _ => None,
    };
    let logits = predict_split(model, data, &data.valid, features.as_deref().map(|f| (f, k)), batch_size)?;
    let probs = metrics::softmax_rows(&logits, classes);
    let top_k = cfg.top_k.unwrap_or(5).min(classes);
    let m = metrics::compute(&probs, &data.valid.labels, &data.classes, top_k);
    let predictions: Vec<Prediction> = probs
        .chunks(classes)
        .enumerate()
        .map(|(i, row)| {
            let predicted = metrics::argmax(row);
            let truth = data.valid.labels[i];
            Prediction {
                path: data.valid.paths[i].clone(),
                truth,
                predicted,
                confidence: row[predicted],
                loss: -row[truth].max(1e-12).ln(),
            }
        })
        .collect();
    let mut mistakes: Vec<Prediction> = predictions.iter().filter(|p| p.truth != p.predicted).cloned().collect();
    mistakes.sort_by(|a, b| b.loss.total_cmp(&a.loss));
    mistakes.truncate(cfg.mistakes);
    Ok(Evaluation { metrics: m, predictions, mistakes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let logits = Tensor::new(&[[2.0f32, 0.0, -1.0], [0.5, 0.5, 0.5]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let ce = cross_entropy(&logits, &labels, 0.0).unwrap().to_scalar::<f32>().unwrap();
        let lse0 = (2f32.exp() + 1.0 + (-1f32).exp()).ln();
        let expected = ((lse0 - 2.0) + 3f32.ln()) / 2.0;
        assert!((ce - expected).abs() < 1e-5);
        // Smoothing ε=1 is the mean over all classes of -log p.
        let s = cross_entropy(&logits, &labels, 1.0).unwrap().to_scalar::<f32>().unwrap();
        let row0 = (3.0 * lse0 - (2.0 + 0.0 - 1.0)) / 3.0;
        let expected = (row0 + 3f32.ln()) / 2.0;
        assert!((s - expected).abs() < 1e-5);
    }
}
