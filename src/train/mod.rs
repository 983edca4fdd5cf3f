//! Fine-tuning and evaluation loops.
//!
//! Blocks that are frozen (and whose BatchNorm is not trainable) compute the
//! same function every epoch, so their output is computed once per image and
//! cached ([`cache`]) whenever their input does not change: always for the
//! validation split, for the training split when no augmentation is active,
//! and for `augment_views = K` precomputed augmented views. Only the
//! trainable tail then runs per batch.

pub mod cache;
pub mod callbacks;
pub mod checkpoint;
pub mod fit;
pub mod lr_find;
pub mod mix;
pub mod optim;
pub mod phases;
pub mod schedule;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::augment::{Augmenter, Rng};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::models::layers::Mode;
use crate::models::{Classifier, Preprocess};
use crate::recipe::{EvalSplit, EvaluateConfig};
use cache::{FeatureCache, Features};
pub use fit::{BatchCtx, Callback};
pub use fit::{FineTune, Setup};

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
    EpochStart {
        epoch: usize,
        epochs: usize,
        batches: usize,
    },
    /// A trained batch: running means of the epoch so far, and the rate it trained at.
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
        accuracy: f64,
        lr: f64,
    },
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
    /// The callbacks' saved state (e.g. EMA weights), by name.
    pub extra: std::collections::HashMap<String, Tensor>,
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
    /// How it is ending (or would end now): the stop, the epoch whose
    /// weights the model holds (1-based) and the parameters trained.
    pub ended: Ended,
    /// The callbacks' state (see [`Callback::save`]).
    pub extra: &'a [(String, Tensor)],
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

/// How a finished fine_tune step ended, as a checkpoint keeps it: a resumed
/// run reports the step as it was, not made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub stop: Stop,
    pub best_epoch: Option<usize>,
    pub trainable_params: usize,
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

/// One augmented view of a split: the augmentation, its seed and the view number.
type View<'a> = Option<(&'a Augmenter, u64, usize)>;

/// Computes (or finds cached) what the model's frozen leading blocks give
/// for a split. `stops` are shorter prefixes that later steps will start
/// from (when a later step unfreezes more blocks): their outputs are cached
/// on the way, so those steps find their features ready instead of running
/// the same blocks over the same images again.
struct PrefixPass<'a> {
    model: &'a Classifier,
    data: &'a Dataset,
    batch: usize,
    stops: &'a [usize],
    /// Entries asked for through [`features`](Self::features): computed, reused.
    counts: std::cell::Cell<(usize, usize)>,
    /// Bytes per image of the kept shorter prefix last continued from.
    kept_item_bytes: std::cell::Cell<u64>,
    /// The model part of the keys by block count (hashing every weight of a
    /// VGG-16 prefix once per split and view would add up).
    model_keys: std::cell::RefCell<Vec<(usize, cache::KeyHasher)>>,
}

impl<'a> PrefixPass<'a> {
    fn new(model: &'a Classifier, data: &'a Dataset, batch: usize, stops: &'a [usize]) -> Self {
        PrefixPass {
            model,
            data,
            batch,
            stops,
            counts: Default::default(),
            kept_item_bytes: Default::default(),
            model_keys: Default::default(),
        }
    }

    fn model_key(&self, blocks: usize) -> Result<cache::KeyHasher> {
        if let Some((_, k)) = self.model_keys.borrow().iter().find(|(b, _)| *b == blocks) {
            return Ok(k.clone());
        }
        let k = cache::model_key(self.model, blocks)?;
        self.model_keys.borrow_mut().push((blocks, k.clone()));
        Ok(k)
    }

    /// Output of the first `blocks` (frozen) blocks for every image of
    /// `split`, optionally one augmented view of it.
    fn features(
        &self,
        cache: &mut FeatureCache,
        split: &Split,
        blocks: usize,
        view: View<'_>,
        obs: &mut dyn Observer,
    ) -> Result<std::sync::Arc<Features>> {
        let before = cache.computed();
        let f = self.entry(cache, split, blocks, view, obs)?;
        let (computed, reused) = self.counts.get();
        self.counts.set(if cache.computed() > before { (computed + 1, reused) } else { (computed, reused + 1) });
        Ok(f)
    }

    fn entry(
        &self,
        cache: &mut FeatureCache,
        split: &Split,
        blocks: usize,
        view: View<'_>,
        obs: &mut dyn Observer,
    ) -> Result<std::sync::Arc<Features>> {
        let key = cache::split_key(&self.model_key(blocks)?, split, self.data.size, view);
        if let Some(f) = cache.get(key, split.len(), &mut |s| obs.event(Event::Log(s))) {
            return Ok(f);
        }
        let eval = Mode::EVAL;
        // The longest kept prefix below `blocks` is computed (or found) first and continued from.
        let stop = self.stops.iter().copied().filter(|&j| j > 0 && j < blocks).max();
        let start = match stop {
            Some(j) => {
                let f = self.entry(cache, split, j, view, obs)?;
                self.kept_item_bytes.set(f.bytes() / f.len().max(1) as u64);
                Some((j, f))
            }
            None => None,
        };
        let pre = self.model.backbone.preprocess();
        let compute = |r: std::ops::Range<usize>| {
            let idx: Vec<usize> = r.collect();
            match &start {
                Some((j, f)) => Ok(self.model.backbone.forward_blocks(&f.rows(&idx)?, *j..blocks, eval)?.detach()),
                None => {
                    let x = input(self.data, split, &idx, &pre, view.map(|(a, seed, _)| (a, seed)))?;
                    self.model.prefix(&x, blocks)
                }
            }
        };
        cache.get_or_compute(key, split.len(), self.batch, compute, &mut |s| obs.event(Event::Log(s)))
    }
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
    let mode = Mode::EVAL;
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

/// Logits of every image of `split` mirrored left to right (test-time
/// augmentation; the frozen-feature cache holds unmirrored images only).
/// A test-time view of every image of a split.
#[derive(Clone, Copy)]
enum TtaView<'a> {
    /// The horizontal mirror.
    Mirror,
    /// Augmented view number `.1`, drawn with `.0`.
    Augmented(TtaViews<'a>, usize),
}

/// The model's logits on one test-time view of `split` (the whole network,
/// since the view changes the pixels every block sees).
fn predict_view(
    model: &Classifier,
    data: &Dataset,
    split: &Split,
    batch: usize,
    view: TtaView<'_>,
) -> Result<Vec<f32>> {
    let pre = model.backbone.preprocess();
    let mut rng = Rng::new(0);
    let mut out = Vec::with_capacity(split.len() * model.head.classes());
    let all: Vec<usize> = (0..split.len()).collect();
    for idx in all.chunks(batch) {
        let x = match view {
            TtaView::Mirror => {
                let x = input(data, split, idx, &pre, None)?;
                let reversed: Vec<u32> = (0..x.dim(3)? as u32).rev().collect();
                x.index_select(&Tensor::new(reversed.as_slice(), x.device())?, 3)?
            }
            TtaView::Augmented(TtaViews { augmenter, seed }, v) => {
                input(data, split, idx, &pre, Some((augmenter, Rng::derive(seed, v as u64).next_u64())))?
            }
        };
        let logits = model.forward_from(&x, 0, Mode::EVAL, &mut rng)?;
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
        loss += metrics::nll(row[y]);
        correct += usize::from(metrics::argmax(row) == y);
    }
    (loss / n, correct as f64 / n)
}

/// Trains the model's trainable parameters on `data.train`, validating on
/// `data.valid` after each epoch, with the standard callbacks for `setup.cfg`.
pub fn fine_tune(
    model: &mut Classifier,
    setup: Setup<'_>,
    obs: &mut dyn Observer,
    resume: Option<Resume>,
) -> Result<FineTuneOutcome> {
    let extra = resume.as_ref().map(|r| r.extra.clone());
    let mut cbs = callbacks::standard(setup.cfg, extra.as_ref());
    FineTune::prepare(model, setup, obs, resume)?.run(&mut cbs)
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

/// The augmentation that draws `tta_views` views, and the seed they are drawn from.
#[derive(Clone, Copy)]
pub struct TtaViews<'a> {
    pub augmenter: &'a Augmenter,
    pub seed: u64,
}

/// Evaluates the model on the validation split, taking the frozen blocks'
/// output from `cache` when it holds it (e.g. from the fine_tune step before).
/// `views` draws the augmented test-time views when `cfg.tta_views > 0`.
pub fn evaluate(
    model: &Classifier,
    data: &Dataset,
    cfg: &EvaluateConfig,
    batch_size: usize,
    cache: Option<&mut FeatureCache>,
    views: Option<TtaViews<'_>>,
) -> Result<Evaluation> {
    let classes = data.classes.len();
    let split = match cfg.split {
        EvalSplit::Valid => &data.valid,
        EvalSplit::Test => data.test.as_ref().ok_or(Error::NoTestSplit)?,
    };
    let k = model.constant_prefix();
    let features = match cache {
        Some(c) if k > 0 => {
            let pass = PrefixPass::new(model, data, batch_size, &[]);
            Some(pass.features(c, split, k, None, &mut Silent)?)
        }
        _ => None,
    };
    let logits = predict_split(model, data, split, features.as_deref().map(|f| (f, k)), batch_size)?;
    let mut probs = metrics::softmax_rows(&logits, classes);
    let top_k = cfg.top_k.unwrap_or(5).min(classes);
    let mut without_tta = None;
    if cfg.tta {
        without_tta = Some(metrics::compute(&probs, &split.labels, &data.classes, top_k).accuracy);
        let mut sum = probs.clone();
        let mut add = |logits: Vec<f32>| {
            let p = metrics::softmax_rows(&logits, classes);
            sum.iter_mut().zip(&p).for_each(|(s, p)| *s += p);
        };
        add(predict_view(model, data, split, batch_size, TtaView::Mirror)?);
        if cfg.tta_views > 0 {
            // The views are drawn with the recipe's augmentation.
            let views =
                views.ok_or(Error::NotYet { what: "`tta_views`", needs: "an augment step before this evaluate" })?;
            for v in 0..cfg.tta_views {
                add(predict_view(model, data, split, batch_size, TtaView::Augmented(views, v))?);
            }
        }
        let n = (2 + cfg.tta_views) as f32;
        probs.iter_mut().zip(&sum).for_each(|(p, s)| *p = s / n);
    }
    let mut m = metrics::compute(&probs, &split.labels, &data.classes, top_k);
    m.accuracy_without_tta = without_tta;
    let predictions: Vec<Prediction> = probs
        .chunks(classes)
        .enumerate()
        .map(|(i, row)| {
            let predicted = metrics::argmax(row);
            let truth = split.labels[i];
            Prediction {
                path: split.paths[i].clone(),
                truth,
                predicted,
                confidence: row[predicted],
                loss: metrics::nll(row[truth]) as f32,
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
    use candle_core::Device;

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
