//! The engine behind every front end: a [`Lab`] holds a recipe and the state
//! its steps build up (data, model, augmentation, history), runs steps one at
//! a time, and keeps each step's result. `tlab run`, the TUI and notebooks all
//! drive this same type.

pub mod cells;
mod steps;
mod views;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::augment::Augmenter;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::layers::ParamLoader;
use crate::models::{self, Classifier, Head, Snapshot};
use crate::recipe::{
    self, AugmentConfig, BackboneStep, EvaluateConfig, FineTuneConfig, LrFindConfig, LrSuggestion, Recipe, StepKind,
    WeightsSource,
};
use crate::train::lr_find::LrFindResult;
use crate::train::{self, EpochRecord, Evaluation, FineTuneOutcome, Observer};

/// What one step produced.
#[derive(Debug, Clone)]
pub enum StepOutput {
    Backbone {
        arch: String,
        source: String,
        blocks: usize,
        classes: Vec<String>,
        train_images: usize,
        valid_images: usize,
        skipped: usize,
    },
    Freeze {
        frozen_blocks: usize,
        total_blocks: usize,
        trainable_params: usize,
    },
    Augment {
        config: AugmentConfig,
    },
    LrFind(LrFindResult),
    FineTune(FineTuneOutcome),
    /// Shared: a notebook keeps it across cells without copying the predictions.
    Evaluate(Arc<Evaluation>),
    /// A step taken over from an interrupted run (`tlab run --resume`).
    Restored {
        note: String,
    },
}

/// A finished step.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub index: usize,
    pub kind: crate::recipe::StepType,
    pub summary: String,
    pub seconds: f64,
    pub output: StepOutput,
}

/// State after a step, so a later step can be re-run without redoing earlier ones.
#[derive(Clone)]
struct State {
    model: Option<Snapshot>,
    augment: Option<AugmentConfig>,
    history_len: usize,
}

pub struct Lab {
    recipe: Recipe,
    data: Option<Arc<Dataset>>,
    /// The data folders changed on disk since `data` was decoded: the next
    /// step that reads images decodes them again (keeping `data` if that fails).
    data_changed: bool,
    /// `data` at the other sizes fine_tune steps train at, derived from it.
    resized: Vec<Arc<Dataset>>,
    model: Option<Classifier>,
    /// Frozen-block outputs, kept across steps (keyed, never stale).
    features: train::cache::FeatureCache,
    augment: Option<AugmentConfig>,
    history: Vec<(usize, EpochRecord)>,
    results: Vec<Option<StepResult>>,
    states: Vec<Option<State>>,
    /// A fine_tune step to continue from a checkpoint instead of starting afresh.
    pending_resume: Option<(usize, train::Resume)>,
    /// Follows every step this lab runs (a notebook's run directory, see
    /// the run recorder).
    recorder: Option<Box<dyn StepRecorder>>,
}

/// Something that follows every step a [`Lab`] runs, whoever asks for it:
/// it sees the step begin, its events and how it ended. A notebook's run
/// directory is kept this way (`Lab::record_to`).
pub(crate) trait StepRecorder: Observer + Send {
    fn begin_step(&mut self, lab: &Lab, index: usize);
    fn end_step(&mut self, result: std::result::Result<&StepResult, &Error>);
    /// For finding out which recorder is attached.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
}

/// A fine_tune step's result restored from a checkpoint: its epochs, and
/// how it ended (a checkpoint from before that was kept says what it can:
/// completed at its last epoch, the parameter count unknown).
fn restored_fine_tune(rows: Vec<EpochRecord>, ended: Option<train::Ended>) -> StepOutput {
    let e = ended.unwrap_or(train::Ended {
        stop: train::Stop::Completed,
        best_epoch: rows.last().map(|r| r.epoch),
        trainable_params: 0,
    });
    StepOutput::FineTune(train::FineTuneOutcome {
        best_epoch: e.best_epoch,
        history: rows,
        stop: e.stop,
        trainable_params: e.trainable_params,
    })
}

/// Sends every event to two observers; the first one's cancel counts.
struct Tee<'a> {
    first: &'a mut dyn Observer,
    second: &'a mut dyn Observer,
}

impl Observer for Tee<'_> {
    fn event(&mut self, event: crate::train::Event) {
        self.second.event(event.clone());
        self.first.event(event);
    }
    fn cancelled(&self) -> bool {
        self.first.cancelled()
    }
    fn checkpoint(&mut self, state: &crate::train::Checkpoint<'_>) -> Result<()> {
        self.first.checkpoint(state)?;
        self.second.checkpoint(state)
    }
}

impl Lab {
    /// Opens a recipe file (validating it fully).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(recipe::load(path.as_ref())?))
    }

    pub fn new(recipe: Recipe) -> Self {
        crate::kernels::keep_candle_pool_off();
        let n = recipe.steps.len();
        Lab {
            recipe,
            data: None,
            data_changed: false,
            resized: Vec::new(),
            model: None,
            features: train::cache::FeatureCache::from_env(),
            augment: None,
            history: Vec::new(),
            results: vec![None; n],
            states: vec![None; n],
            pending_resume: None,
            recorder: None,
        }
    }

    /// Attaches `recorder` to follow every step from now on (replacing any).
    pub(crate) fn set_recorder(&mut self, recorder: Option<Box<dyn StepRecorder>>) {
        self.recorder = recorder;
    }

    /// Detaches the recorder, if one is attached.
    pub(crate) fn take_recorder(&mut self) -> Option<Box<dyn StepRecorder>> {
        self.recorder.take()
    }

    /// Takes the frozen-feature cache out, leaving an empty one: a tune hands
    /// it from one trial's lab to the next.
    pub(crate) fn take_feature_cache(&mut self) -> train::cache::FeatureCache {
        std::mem::take(&mut self.features)
    }

    /// Replaces the frozen-feature cache (by default configured from the
    /// environment, see [`train::cache`]), e.g. to put it on disk elsewhere.
    pub fn set_feature_cache(&mut self, cache: train::cache::FeatureCache) {
        self.features = cache;
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// The backbone's output for every image of `split` (from [`data`](Self::data)),
    /// averaged over its positions: `[images, channels]`, computed `batch`
    /// images at a time with the model as it stands (after the backbone
    /// step, the pretrained one) — for a nearest-neighbour search, a
    /// scikit-learn model or a label check (`tlab data --label-issues`).
    pub fn embeddings(&self, split: &crate::data::Split, batch: usize) -> Result<candle_core::Tensor> {
        let model = self.model.as_ref().ok_or(Error::NotYet { what: "embeddings", needs: "a backbone step" })?;
        let data = self.data.as_ref().ok_or(Error::NotYet { what: "embeddings", needs: "a backbone step" })?;
        let pre = model.backbone.preprocess();
        let blocks = model.backbone.num_blocks();
        let s = data.size as usize;
        let mut parts = Vec::new();
        for start in (0..split.len()).step_by(batch.max(1)) {
            let idx: Vec<usize> = (start..(start + batch.max(1)).min(split.len())).collect();
            let x = pre.to_tensor(&data.batch_pixels(split, &idx, None), idx.len(), s, s)?;
            let f = model.prefix(&x, blocks)?;
            parts.push(models::mean_over_positions(f)?.detach());
        }
        Ok(candle_core::Tensor::cat(&parts, 0)?)
    }

    /// The decoded data set, once the backbone step has loaded it (shared:
    /// cheap to keep), or an error naming that step.
    pub fn data(&self) -> Result<Arc<Dataset>> {
        self.data.clone().ok_or(Error::NotYet { what: "the data", needs: "the backbone step (it loads the data)" })
    }

    pub(crate) fn data_ref(&self) -> Option<&Dataset> {
        self.data.as_deref()
    }

    pub fn model(&self) -> Option<&Classifier> {
        self.model.as_ref()
    }

    pub fn augmenter(&self) -> Option<Augmenter> {
        self.augment.clone().map(Augmenter::new)
    }

    /// What the steps run so far produced that a checkpoint of the next one
    /// keeps: their epochs and lr_find curves.
    pub fn earlier(&self) -> crate::train::checkpoint::Earlier {
        let lr_finds = self
            .results()
            .filter_map(|r| match &r.output {
                StepOutput::LrFind(found) => Some((r.index, found.clone())),
                _ => None,
            })
            .collect();
        let ended = self
            .results()
            .filter_map(|r| match &r.output {
                StepOutput::FineTune(o) => Some((
                    r.index,
                    train::Ended { stop: o.stop, best_epoch: o.best_epoch, trainable_params: o.trainable_params },
                )),
                _ => None,
            })
            .collect();
        crate::train::checkpoint::Earlier { history: self.history.clone(), lr_finds, ended }
    }

    /// Every epoch trained so far, with the 0-based step that trained it.
    pub fn history(&self) -> Vec<(usize, EpochRecord)> {
        self.history.clone()
    }

    /// The epochs, borrowed (for the engine's own writers).
    pub(crate) fn history_ref(&self) -> &[(usize, EpochRecord)] {
        &self.history
    }

    /// Step `step`'s result (0-based), once it has run: an owned copy, so a
    /// notebook cell can keep it while the lab runs on (its large parts, an
    /// evaluation's predictions, are shared, not copied).
    pub fn result(&self, step: usize) -> Result<StepResult> {
        self.check_step(step)?;
        self.result_ref(step).cloned().ok_or(Error::NotRun { step: step + 1 })
    }

    pub(crate) fn result_ref(&self, step: usize) -> Option<&StepResult> {
        self.results.get(step).and_then(Option::as_ref)
    }

    pub fn results(&self) -> impl Iterator<Item = &StepResult> {
        self.results.iter().flatten()
    }

    /// Index of the first step that has not run (or all steps ran: `None`).
    pub fn next_step(&self) -> Option<usize> {
        self.results.iter().position(Option::is_none)
    }

    /// The evaluations made so far, the last in recipe order first.
    pub(crate) fn evaluations(&self) -> impl Iterator<Item = &Arc<Evaluation>> {
        self.results.iter().rev().flatten().filter_map(|r| match &r.output {
            StepOutput::Evaluate(e) => Some(e),
            _ => None,
        })
    }

    /// The last evaluation, borrowed (for the engine's own writers).
    pub(crate) fn evaluation_ref(&self) -> Option<&Evaluation> {
        self.evaluations().next().map(|e| e.as_ref())
    }

    /// An error unless the recipe has a step `index` (0-based).
    pub(crate) fn check_step(&self, index: usize) -> Result<()> {
        let steps = self.recipe.steps.len();
        if index >= steps {
            return Err(Error::NoSuchStep { step: index + 1, steps });
        }
        Ok(())
    }

    /// Runs step `index` (0-based), first running any earlier step that has
    /// not run. A step that ran already runs again from the state the step
    /// before it left, and the results after it are forgotten.
    ///
    /// The result comes back owned (see [`Lab::result`]).
    pub fn run_step(&mut self, index: usize, obs: &mut dyn Observer) -> Result<StepResult> {
        self.check_step(index)?;
        for i in 0..index {
            if self.results[i].is_none() {
                self.run_one(i, obs)?;
            }
        }
        // Re-running a step starts from the state the previous step left. If
        // the re-run fails (a weights file replaced by a broken one, a data
        // folder emptied), everything is put back as it was: never lose work.
        if self.results[index].is_some() {
            let results = self.results.clone();
            let states = self.states.clone();
            let history = self.history.clone();
            let augment = self.augment.clone();
            // Shares what the last state already holds: the rollback copies
            // only what changed since, not the frozen backbone.
            let last = self.states.iter().rev().find_map(|s| s.as_ref()).and_then(|s| s.model.as_ref());
            let snapshot = self.model.as_ref().map(|m| m.snapshot_sharing(last)).transpose()?;
            // Keep the model object itself: rewinding to the start drops it.
            let parked = if index == 0 { self.model.take() } else { None };
            let outcome = self.rewind_to(index).and_then(|_| self.run_one(index, obs));
            if let Err(e) = outcome {
                self.results = results;
                self.states = states;
                self.history = history;
                self.augment = augment;
                if parked.is_some() {
                    self.model = parked;
                }
                if let (Some(model), Some(snap)) = (self.model.as_mut(), snapshot) {
                    model.restore(&snap)?;
                }
                return Err(e);
            }
        } else {
            self.run_one(index, obs)?;
        }
        Ok(self.results[index].clone().expect("just set"))
    }

    /// Prepares to continue an interrupted run from a checkpoint taken in
    /// fine_tune step `step`: replays the cheap steps before it (backbone,
    /// freeze, augment), takes finished fine_tune steps' histories from
    /// the checkpoint's history without training, skips earlier evaluate
    /// steps, loads the checkpoint's weights, and arms its optimizer state for
    /// step `step`. When the checkpoint says `finished`, step `step` itself is
    /// complete and the run continues after it.
    pub fn resume_from(&mut self, saved: crate::train::checkpoint::Saved, obs: &mut dyn Observer) -> Result<()> {
        let crate::train::checkpoint::Saved { state, weights, resume } = saved;
        let (step, finished, history, lr_finds) = (state.step, state.finished, state.history, state.lr_finds);
        let ended = state.ended;
        if !matches!(self.recipe.steps.get(step).map(|s| &s.kind), Some(StepKind::FineTune(_))) {
            return Err(Error::CheckpointStep { step: step + 1 });
        }
        let upto = if finished { step + 1 } else { step };
        for i in 0..upto {
            match &self.recipe.steps[i].kind {
                StepKind::FineTune(_) | StepKind::Evaluate(_) => {
                    let is_fine_tune = matches!(self.recipe.steps[i].kind, StepKind::FineTune(_));
                    let rows: Vec<EpochRecord> =
                        history.iter().filter(|(s, _)| *s == i).map(|(_, r)| r.clone()).collect();
                    self.history.extend(rows.iter().cloned().map(|r| (i, r)));
                    let output = if is_fine_tune {
                        restored_fine_tune(rows, ended.iter().find(|(s, _)| *s == i).map(|(_, e)| *e))
                    } else {
                        StepOutput::Restored { note: "evaluated before the interruption; not repeated".into() }
                    };
                    self.results[i] = Some(StepResult {
                        index: i,
                        kind: self.recipe.steps[i].kind.step_type(),
                        summary: self.recipe.steps[i].kind.summary(),
                        seconds: 0.0,
                        output,
                    });
                }
                // The curve the run found, not one replayed on other weights.
                StepKind::LrFind(_) if lr_finds.iter().any(|(s, _)| *s == i) => {
                    let found = lr_finds.iter().find(|(s, _)| *s == i).map(|(_, r)| r.clone());
                    self.results[i] = found.map(|r| StepResult {
                        index: i,
                        kind: self.recipe.steps[i].kind.step_type(),
                        summary: self.recipe.steps[i].kind.summary(),
                        seconds: 0.0,
                        output: StepOutput::LrFind(r),
                    });
                }
                _ => self.run_one(i, obs)?,
            }
        }
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| Error::NotYet { what: "resuming a checkpoint", needs: "a backbone step" })?;
        let snap = model.snapshot()?;
        let tensors = snap
            .tensors
            .iter()
            .map(|(name, t)| match weights.get(name) {
                Some(w) if w.dims() == t.dims() => Ok((name.clone(), w.clone())),
                w => Err(Error::CheckpointTensor {
                    name: name.clone(),
                    expected: t.dims().to_vec(),
                    found: w.map(|w| w.dims().to_vec()),
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        model.restore(&Snapshot { tensors, ..snap })?;
        // Later steps start from these weights.
        if let Some(last) = upto.checked_sub(1) {
            self.states[last] = Some(State {
                model: Some(model.snapshot()?),
                augment: self.augment.clone(),
                history_len: self.history.len(),
            });
        }
        if !finished {
            self.pending_resume = Some((step, resume));
        }
        Ok(())
    }

    /// Replaces the recipe after an edit. Steps before the first changed one
    /// keep their results and state; that step and all after it are reset
    /// (and the data is reloaded if `[data]`, `name` or `seed` changed).
    /// Returns the first changed step, or `None` when nothing changed.
    pub fn set_recipe(&mut self, recipe: Recipe) -> Result<Option<usize>> {
        let Some(first) = self.recipe.step_index_of_first_change(&recipe) else {
            self.recipe = recipe;
            return Ok(None);
        };
        let data_changed = self.recipe.data != recipe.data || self.recipe.seed != recipe.seed;
        let n = recipe.steps.len();
        // Reset from `first` with the old bookkeeping, then resize to the new step count.
        let keep = first.min(self.results.len());
        self.rewind_to(keep)?;
        self.results.resize(n, None);
        self.states.resize(n, None);
        self.results.truncate(n);
        self.states.truncate(n);
        if data_changed {
            self.data = None;
        }
        self.recipe = recipe;
        Ok(Some(first))
    }

    /// Something the recipe reads changed on disk (a data folder, a weights
    /// file). Results are kept (the last good state) until the affected
    /// steps are re-run; returns the first of them, if any step reads `input`.
    pub fn input_changed(&mut self, input: &recipe::Input) -> Option<usize> {
        if matches!(input, recipe::Input::Data(_)) {
            self.data_changed = true;
        }
        self.recipe.first_step_using(input)
    }

    /// Forgets the results of `index` and later, restoring the state the
    /// step before `index` left behind.
    pub(crate) fn rewind_to(&mut self, index: usize) -> Result<()> {
        for r in &mut self.results[index..] {
            *r = None;
        }
        for s in &mut self.states[index..] {
            *s = None;
        }
        match index.checked_sub(1).and_then(|i| self.states[i].clone()) {
            Some(state) => {
                self.augment = state.augment;
                self.history.truncate(state.history_len);
                match (state.model, &mut self.model) {
                    (Some(snap), Some(model)) => model.restore(&snap)?,
                    (None, _) => self.model = None,
                    (Some(_), None) => return Err(Error::Internal("a snapshot without a model")),
                }
            }
            None => {
                self.model = None;
                self.augment = None;
                self.history.clear();
            }
        }
        Ok(())
    }

    fn step_error(&self, index: usize, source: Error) -> Error {
        Error::Step { step: index + 1, kind: self.recipe.steps[index].kind.name(), source: Box::new(source) }
    }

    fn run_one(&mut self, index: usize, obs: &mut dyn Observer) -> Result<()> {
        let Some(mut recorder) = self.recorder.take() else { return self.run_one_step(index, obs) };
        recorder.begin_step(self, index);
        let outcome = self.run_one_step(index, &mut Tee { first: obs, second: recorder.as_mut() });
        match &outcome {
            Ok(()) => recorder.end_step(self.results[index].as_ref().ok_or(&Error::NotRun { step: index + 1 })),
            Err(e) => recorder.end_step(Err(e)),
        }
        self.recorder = Some(recorder);
        outcome
    }

    fn run_one_step(&mut self, index: usize, obs: &mut dyn Observer) -> Result<()> {
        let step = self.recipe.steps[index].clone();
        let started = Instant::now();
        let output = match &step.kind {
            StepKind::Backbone(b) => self.run_backbone(index, b, obs)?,
            StepKind::Freeze(f) => {
                let model =
                    self.model.as_mut().ok_or_else(|| Error::NotYet { what: "freeze", needs: "a backbone step" })?;
                let names = model.backbone.block_names();
                let n = models::frozen_block_count(&f.up_to, &names)?;
                model.freeze(n, f.train_bn)?;
                let trainable_params = model.trainable_vars().iter().map(|v| v.elem_count()).sum();
                StepOutput::Freeze { frozen_blocks: n, total_blocks: names.len(), trainable_params }
            }
            StepKind::Augment(a) => {
                self.augment = Some(a.clone());
                StepOutput::Augment { config: a.clone() }
            }
            StepKind::LrFind(cfg) => StepOutput::LrFind(self.run_lr_find(index, cfg, obs)?),
            StepKind::FineTune(cfg) => {
                let outcome = self.run_fine_tune(index, cfg, obs).map_err(|e| match e {
                    Error::Step { .. } => e,
                    other => self.step_error(index, other),
                })?;
                self.history.extend(outcome.history.iter().cloned().map(|r| (index, r)));
                StepOutput::FineTune(outcome)
            }
            StepKind::Evaluate(cfg) => StepOutput::Evaluate(Arc::new(self.run_evaluate(cfg, obs)?)),
        };
        // Shares the tensors this step left unchanged with the state before it.
        let previous = self.states[..index].iter().rev().find_map(|s| s.as_ref()).and_then(|s| s.model.as_ref());
        self.states[index] = Some(State {
            model: self.model.as_ref().map(|m| m.snapshot_sharing(previous)).transpose()?,
            augment: self.augment.clone(),
            history_len: self.history.len(),
        });
        self.results[index] = Some(StepResult {
            index,
            kind: step.kind.step_type(),
            summary: step.kind.summary(),
            seconds: started.elapsed().as_secs_f64(),
            output,
        });
        Ok(())
    }

    /// Builds the backbone (weights from a file, the hub or random) with a
    /// fresh head sized to the classes found.
    fn run_backbone(&mut self, index: usize, b: &BackboneStep, obs: &mut dyn Observer) -> Result<StepOutput> {
        let data = self.load_data(obs)?;
        let (tensors, source) = match &b.weights {
            None => (None, "random init".to_string()),
            Some(WeightsSource::Path(p)) => {
                let shown = crate::util::paths::shown(p).display().to_string();
                obs.event(train::Event::Log(format!("loading {shown}")));
                (Some(crate::formats::weights::load(p)?), shown)
            }
            Some(remote) => {
                let name = match remote {
                    WeightsSource::Hub { repo, file } => {
                        format!("hf:{repo}:{}", file.as_deref().unwrap_or("model.safetensors"))
                    }
                    WeightsSource::Url(url) => url.clone(),
                    WeightsSource::Path(p) => crate::util::paths::shown(p).display().to_string(),
                };
                obs.event(train::Event::Log(format!("fetching {name} (cached after the first time)")));
                let path = crate::formats::weights::resolve_source(remote).map_err(|e| self.step_error(index, e))?;
                obs.event(train::Event::Log(format!("loading {}", path.display())));
                (Some(crate::formats::weights::load(&path)?), name)
            }
        };
        let backbone = match tensors {
            None => models::build_backbone(&b.arch, &mut ParamLoader::random(self.recipe.seed), false)?,
            Some(t) => models::backbone_from_tensors(&b.arch, source.clone(), t, b.strict)?,
        };
        let in_features = head_inputs(backbone.as_ref(), &b.head, data.size)?;
        let head = Head::new(&b.head, in_features, data.classes.len(), self.recipe.seed)?;
        let blocks = backbone.num_blocks();
        let mut model = Classifier::new(backbone, head);
        model.set_drop_path(b.drop_path as f32);
        self.model = Some(model);
        Ok(StepOutput::Backbone {
            arch: b.arch.clone(),
            source,
            blocks,
            classes: data.classes.clone(),
            train_images: data.train.len(),
            valid_images: data.valid.len(),
            skipped: data.skipped.len(),
        })
    }

    fn run_evaluate(&mut self, cfg: &EvaluateConfig, obs: &mut dyn Observer) -> Result<Evaluation> {
        let _t = crate::util::profile::scope("evaluate");
        let data = self.load_data(obs)?;
        let model = self.model.as_ref().ok_or_else(|| Error::NotYet { what: "evaluate", needs: "a backbone step" })?;
        // Test-time views are drawn with the augmentation in force, if any.
        let augmenter = self.augment.clone().map(crate::augment::Augmenter::new).filter(|a| !a.is_identity());
        let views = augmenter.as_ref().map(|augmenter| train::TtaViews { augmenter, seed: self.recipe.seed });
        train::evaluate(model, &data, cfg, self.recipe.data.batch_size, Some(&mut self.features), views)
    }

    /// The seed of step `index`'s training streams.
    fn step_seed(&self, index: usize) -> u64 {
        self.recipe.seed.wrapping_add(index as u64 * 7919)
    }

    /// Frozen block counts that steps after `index` will train from (a later
    /// `freeze` step, or a fine_tune's `unfreeze_to`), up to the next backbone
    /// step: the frozen-feature pass keeps those outputs on its way.
    fn later_prefixes(&self, index: usize, size: u32) -> Vec<usize> {
        let Some(model) = &self.model else { return Vec::new() };
        let names = model.backbone.block_names();
        let later = &self.recipe.steps[(index + 1).min(self.recipe.steps.len())..];
        // Outputs at this step's size serve only a step that trains at it.
        let trains_at = |t: &FineTuneConfig| t.image_size.unwrap_or(self.recipe.data.image_size) == size;
        let mut out = Vec::new();
        for (i, step) in later.iter().enumerate() {
            let point = match &step.kind {
                StepKind::Backbone(_) => break,
                StepKind::Freeze(f) if !f.train_bn => {
                    let next = later[i + 1..].iter().find_map(|s| match &s.kind {
                        StepKind::FineTune(t) => Some(t),
                        _ => None,
                    });
                    if !next.is_some_and(trains_at) {
                        continue;
                    }
                    &f.up_to
                }
                StepKind::FineTune(t) if t.freeze_epochs > 0 && trains_at(t) => &t.unfreeze_to,
                _ => continue,
            };
            out.extend(models::frozen_block_count(point, &names).ok());
        }
        out
    }

    fn run_lr_find(&mut self, index: usize, cfg: &LrFindConfig, obs: &mut dyn Observer) -> Result<LrFindResult> {
        let _t = crate::util::profile::scope("lr_find");
        let data = self.load_data(obs)?;
        let batch_size = cfg.train.batch_size.unwrap_or(self.recipe.data.batch_size);
        let (aug, seed) = (self.augmenter(), self.step_seed(index));
        let later = self.later_prefixes(index, data.size);
        let model = self.model.as_mut().ok_or_else(|| Error::NotYet { what: "lr_find", needs: "a backbone step" })?;
        let setup = train::Setup {
            data: &data,
            aug: aug.as_ref(),
            cfg: &cfg.train,
            batch_size,
            seed,
            view_seed: self.recipe.seed,
            later_prefixes: &later,
            cache: &mut self.features,
        };
        train::lr_find::lr_find(model, setup, obs, cfg)
    }

    /// The rate a fine_tune step with `lr = "suggested"` takes: from the
    /// latest lr_find step before it.
    fn suggested_lr(&self, index: usize, which: LrSuggestion) -> Result<f64> {
        self.results[..index]
            .iter()
            .rev()
            .flatten()
            .find_map(|r| match &r.output {
                StepOutput::LrFind(found) => found.suggestion(which),
                _ => None,
            })
            .ok_or(Error::NoLrFind)
    }

    fn run_fine_tune(&mut self, index: usize, cfg: &FineTuneConfig, obs: &mut dyn Observer) -> Result<FineTuneOutcome> {
        let data = self.data_at(cfg.image_size, obs)?;
        let mut cfg = cfg.clone();
        if let crate::recipe::Lr::Suggested(which) = cfg.lr {
            let lr = self.suggested_lr(index, which)?;
            cfg.lr = crate::recipe::Lr::Fixed(lr);
            obs.event(train::Event::Log(format!("lr {lr:.2e} ({} suggestion of lr_find)", which.name())));
        }
        let batch_size = cfg.batch_size.unwrap_or(self.recipe.data.batch_size);
        let (aug, seed) = (self.augmenter(), self.step_seed(index));
        let resume = match self.pending_resume.take() {
            Some((step, r)) if step == index => Some(r),
            other => {
                self.pending_resume = other;
                None
            }
        };
        let later = self.later_prefixes(index, data.size);
        let model = self.model.as_mut().ok_or_else(|| Error::NotYet { what: "fine_tune", needs: "a backbone step" })?;
        let setup = train::Setup {
            data: &data,
            aug: aug.as_ref(),
            cfg: &cfg,
            batch_size,
            seed,
            view_seed: self.recipe.seed,
            later_prefixes: &later,
            cache: &mut self.features,
        };
        if cfg.freeze_epochs == 0 {
            return train::fine_tune(model, setup, obs, resume);
        }
        train::phases::freeze_then_unfreeze(model, setup, obs, resume)
    }

    fn load_data(&mut self, obs: &mut dyn Observer) -> Result<Arc<Dataset>> {
        if let Some(d) = self.data.as_ref().filter(|_| !self.data_changed) {
            return Ok(d.clone());
        }
        let t = Instant::now();
        let data = Arc::new(Dataset::load(&self.recipe.data, self.recipe.seed)?);
        let test = data.test.as_ref().map(|t| format!(" + {} test", t.len())).unwrap_or_default();
        let (verb, how) = match data.train.pixels.stream() {
            None => ("decoded", String::new()),
            Some(s) => ("listed", streaming_note(self.recipe.data.cache, s)),
        };
        obs.event(train::Event::Log(format!(
            "{verb} {} train + {} valid{test} images of {} classes at {}px in {:.1}s ({} skipped){how}",
            data.train.len(),
            data.valid.len(),
            data.classes.len(),
            data.size,
            t.elapsed().as_secs_f64(),
            data.skipped.len()
        )));
        if let Some(warning) = data.train.pixels.stream().and_then(|s| s.disk_warning()) {
            obs.event(train::Event::Log(warning.to_string()));
        }
        obs.event(train::Event::Log(format!(
            "images per class (train/valid{}): {}",
            if test.is_empty() { "" } else { "/test" },
            class_counts(&data)
        )));
        for (path, why) in data.skipped.iter().filter(|(_, why)| why != "not an image file").take(20) {
            obs.event(train::Event::Log(format!(
                "warning: skipped {}: {why}",
                crate::util::paths::shown(path).display()
            )));
        }
        leakage_warnings(&data, obs);
        self.data = Some(data.clone());
        self.resized.clear();
        self.data_changed = false;
        Ok(data)
    }

    /// The data at `size` (a fine_tune step's own `image_size`), resized once
    /// from the decoded images and kept for later steps at the same size.
    fn data_at(&mut self, size: Option<u32>, obs: &mut dyn Observer) -> Result<Arc<Dataset>> {
        let data = self.load_data(obs)?;
        let Some(size) = size.filter(|&s| s != data.size) else { return Ok(data) };
        if let Some(d) = self.resized.iter().find(|d| d.size == size) {
            return Ok(d.clone());
        }
        let t = Instant::now();
        let resized = Arc::new(data.resized(size));
        obs.event(train::Event::Log(format!(
            "images resized from {}px to {size}px for this step in {:.1}s",
            data.size,
            t.elapsed().as_secs_f64()
        )));
        self.resized.push(resized.clone());
        Ok(resized)
    }
}

/// Width of the head's input: channels for average pooling, the whole
/// feature map for flatten (found with one forward pass at the data's size).
fn head_inputs(backbone: &dyn models::Backbone, head: &recipe::HeadConfig, size: u32) -> Result<usize> {
    models::head_inputs(backbone, head.pooling, size)
}

/// Validation and test images that are pixel for pixel copies of training
/// images (the same photo in two splits inflates the accuracy reported).
fn leakage_warnings(data: &Dataset, obs: &mut dyn Observer) {
    let others = [("validation", Some(&data.valid)), ("test", data.test.as_ref())];
    for (name, split) in others {
        let Some(split) = split else { continue };
        let copies = crate::data::leakage::copies_of_training(&data.train, split);
        if let Some((copy, original)) = copies.first() {
            obs.event(train::Event::Log(format!(
                "warning: {} {name} image(s) are copies of training images (leakage: they inflate accuracy), e.g. {} = {}; `tlab data` lists them",
                copies.len(),
                crate::util::paths::shown(copy).display(),
                crate::util::paths::shown(original).display()
            )));
        }
    }
}

/// Why and how a run streams its images, for the load line of the log.
fn streaming_note(cache: crate::recipe::ImageCache, stream: &crate::data::pixels::Stream) -> String {
    if let Some(file) = stream.disk_path() {
        let dir = file.parent().unwrap_or(file);
        return format!("; reading them from the image cache in {} ([data] cache = \"disk\")", dir.display());
    }
    let why = match cache {
        crate::recipe::ImageCache::None => "[data] cache = \"none\"".to_string(),
        _ => match crate::data::memory_budget() {
            Some((budget, source)) => format!("over the memory budget of {} MiB, {source}", budget >> 20),
            None => "over the memory budget".to_string(),
        },
    };
    format!("; streaming them from disk ({why}): decoded batch by batch, ahead of training")
}

/// `class train/valid[/test]` for every class, for the log.
fn class_counts(data: &Dataset) -> String {
    let count = |split: &crate::data::Split, label: usize| split.labels.iter().filter(|&&l| l == label).count();
    data.classes
        .iter()
        .enumerate()
        .map(|(label, class)| {
            let test = data.test.as_ref().map(|t| format!("/{}", count(t, label))).unwrap_or_default();
            format!("{class} {}/{}{test}", count(&data.train, label), count(&data.valid, label))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
