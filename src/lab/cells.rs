//! A [`Lab`] API made for notebook cells (and any other step-by-step front end).
//!
//! One name per operation, and every run or look-up returns an **owned**
//! value: evcxr keeps a cell's top-level `let` only if the value borrows
//! nothing, so `let e = lab.evaluation()?;` in one cell and
//! `e.metrics.accuracy` in the next must work while the lab runs on. Large
//! parts (an evaluation's predictions, the data set) are shared behind `Arc`,
//! so keeping a result copies no image and no prediction. The methods are
//! small wrappers over [`Lab::run_step`], [`Lab::next_step`] and
//! [`Lab::result`], so the CLI, the TUI and notebooks keep sharing one engine.
//!
//! ```no_run
//! use tlab::prelude::*;
//! let mut lab = Lab::open("recipes/quickstart.toml")?;
//! println!("{}", lab.steps());                 // what will run
//! let backbone = lab.run_next(&mut Progress::new())?;
//! let rest = lab.run_rest(&mut Progress::new().time_limit(std::time::Duration::from_secs(120)))?;
//! let e = lab.evaluation()?;                   // kept: the lab can run on
//! lab.run_step(0, &mut Silent)?;
//! println!("{:.4}", e.metrics.accuracy);
//! # Ok::<(), tlab::Error>(())
//! ```

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::lab::{Lab, StepOutput, StepResult};
use crate::recipe::{Recipe, StepKind};
use crate::train::lr_find::LrFindResult;
use crate::train::{Evaluation, Event, Observer};

/// Whether a step has run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepStatus {
    Pending,
    /// Finished, in this many seconds.
    Done {
        seconds: f64,
    },
}

/// One recipe step as a front end lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// 0-based, as [`Lab::run_step`] takes it.
    pub index: usize,
    pub kind: crate::recipe::StepType,
    /// The step's settings in one line (`epochs=4 lr=0.001 …`).
    pub summary: String,
    pub status: StepStatus,
    /// The result's headline (`valid acc 0.853`, `12 of 19 blocks frozen`), once done.
    pub outcome: Option<String>,
}

/// Every step of a lab's recipe, in order (see [`Lab::steps`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Steps {
    pub recipe: String,
    pub steps: Vec<StepInfo>,
}

impl Steps {
    /// Index of the first step that has not run.
    pub fn next(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.status == StepStatus::Pending)
    }
}

impl fmt::Display for Steps {
    /// A plain-text table, one line per step (`✓` done, `·` pending, `▶` next).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recipe `{}`", self.recipe)?;
        let next = self.next();
        for s in &self.steps {
            let mark = match s.status {
                StepStatus::Done { .. } => "✓",
                StepStatus::Pending if Some(s.index) == next => "▶",
                StepStatus::Pending => "·",
            };
            write!(f, "{mark} {:>2}. {:<9} {}", s.index + 1, s.kind, s.summary)?;
            if let StepStatus::Done { seconds } = s.status {
                write!(f, "  [{seconds:.1}s")?;
                if let Some(o) = &s.outcome {
                    write!(f, "; {o}")?;
                }
                write!(f, "]")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Results of several steps (what [`Lab::run_to`] and [`Lab::run_rest`]
/// return), in order. A newtype so notebooks can display it (evcxr looks for an
/// inherent method, and `Vec` is foreign).
#[derive(Debug, Clone, Default)]
pub struct StepResults(pub Vec<StepResult>);

impl StepResults {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> std::slice::Iter<'_, StepResult> {
        self.0.iter()
    }
}

/// A one-line headline of a step's result: its [`outcome_lines`] joined.
pub(crate) fn outcome_line(result: &StepResult) -> String {
    outcome_lines(&result.output).join("; ")
}

/// What a finished step produced, as the lines `tlab run` logs under it (and
/// joined, the headline the steps table, notebooks and the TUI show).
pub(crate) fn outcome_lines(output: &StepOutput) -> Vec<String> {
    match output {
        StepOutput::Backbone { arch, source, blocks, classes, train_images, valid_images, skipped } => vec![
            format!("{arch} ({blocks} blocks) from {source}"),
            format!("{} classes, {train_images} train / {valid_images} valid images, {skipped} skipped", classes.len()),
        ],
        StepOutput::Freeze { frozen_blocks, total_blocks, trainable_params } => {
            vec![format!("{frozen_blocks} of {total_blocks} blocks frozen, {trainable_params} trainable parameters")]
        }
        StepOutput::Augment { .. } => vec!["augmentation set".to_string()],
        StepOutput::Restored { note } => vec![note.clone()],
        StepOutput::LrFind(found) => vec![found.to_text()],
        StepOutput::FineTune(o) => {
            let mut v = vec![match o.history.last() {
                Some(r) => format!(
                    "{} epoch(s), {:?}; valid loss {:.4}, valid acc {:.4}",
                    o.history.len(),
                    o.stop,
                    r.valid_loss,
                    r.valid_accuracy
                ),
                None => format!("no complete epoch ({:?})", o.stop),
            }];
            v.extend(o.best_epoch.map(|b| format!("weights from epoch {b}")));
            v
        }
        StepOutput::Evaluate(e) => {
            let m = &e.metrics;
            let tta = m.accuracy_without_tta.map(|a| format!("with TTA ({a:.4} without)"));
            tta.into_iter()
                .chain([format!(
                    "{}, {} mistakes",
                    crate::present::rows::headline(m),
                    e.predictions.iter().filter(|p| p.truth != p.predicted).count()
                )])
                .collect()
        }
    }
}

/// Explicit budgets for quick runs (notebooks, CI, smoke tests): each caps a
/// recipe's settings without raising any of them.
impl Recipe {
    /// Every fine_tune step trains at most `epochs` epochs (at least 1).
    pub fn limit_epochs(mut self, epochs: usize) -> Self {
        for step in &mut self.steps {
            if let StepKind::FineTune(f) = &mut step.kind {
                f.epochs = f.epochs.min(epochs.max(1));
                // Keep the recipe valid: warm-up must stay shorter than training.
                f.schedule.warmup_epochs = f.schedule.warmup_epochs.min(f.epochs - 1);
            }
        }
        self
    }

    /// At most `n` training images per class (at least 1).
    pub fn limit_images(mut self, n: usize) -> Self {
        let n = n.max(1);
        self.data.max_per_class = Some(self.data.max_per_class.map_or(n, |m| m.min(n)));
        self
    }

    /// Every fine_tune step stops after the epoch in which `seconds` have passed.
    pub fn limit_time(mut self, seconds: f64) -> Self {
        for step in &mut self.steps {
            if let StepKind::FineTune(f) = &mut step.kind {
                f.time_limit_secs = Some(f.time_limit_secs.map_or(seconds, |t| t.min(seconds)));
            }
        }
        self
    }
}

impl Lab {
    /// Every step with its status and, once run, its headline.
    pub fn steps(&self) -> Steps {
        let steps = self
            .recipe()
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let result = self.result_ref(index);
                StepInfo {
                    index,
                    kind: step.kind.step_type(),
                    summary: step.kind.summary(),
                    status: result.map_or(StepStatus::Pending, |r| StepStatus::Done { seconds: r.seconds }),
                    outcome: result.map(outcome_line),
                }
            })
            .collect();
        Steps { recipe: self.recipe().name.clone(), steps }
    }

    /// Runs the first step that has not run and returns its result. Errors
    /// when every step has run already.
    pub fn run_next(&mut self, obs: &mut dyn Observer) -> Result<StepResult> {
        let next = self.next_step().ok_or(Error::NotYet {
            what: "run_next",
            needs: "a step that has not run (use `run_step(index)` to run one again, or `rewind_to(index)`)",
        })?;
        self.run_step(next, obs)
    }

    /// Runs every step that has not run up to and including `index` (0-based),
    /// returning their results in order. Steps that already ran are kept.
    pub fn run_to(&mut self, index: usize, obs: &mut dyn Observer) -> Result<StepResults> {
        self.check_step(index)?;
        let mut out = Vec::new();
        while let Some(next) = self.next_step().filter(|&i| i <= index) {
            out.push(self.run_step(next, obs)?);
        }
        Ok(StepResults(out))
    }

    /// Runs every remaining step, returning their results in order.
    pub fn run_rest(&mut self, obs: &mut dyn Observer) -> Result<StepResults> {
        match self.recipe().steps.len() {
            0 => Ok(StepResults::default()),
            n => self.run_to(n - 1, obs),
        }
    }

    /// The last evaluation (in recipe order), or an error naming what to run
    /// first. Shared, not borrowed: keep it in a variable across cells.
    pub fn evaluation(&self) -> Result<Arc<Evaluation>> {
        self.evaluations().next().cloned().ok_or(Error::NotYet { what: "an evaluation", needs: "an evaluate step" })
    }

    /// The last lr_find step's curve and suggestions (in recipe order), or an
    /// error naming what to run first. Owned: keep it across cells.
    pub fn lr_find(&self) -> Result<LrFindResult> {
        self.results()
            .filter_map(|r| match &r.output {
                StepOutput::LrFind(found) => Some(found.clone()),
                _ => None,
            })
            .last()
            .ok_or(Error::NotYet { what: "an lr_find curve", needs: "an lr_find step" })
    }

    /// The evaluation made by step `index`, or an error if that step is not a
    /// finished evaluate step. Shared, like [`Lab::evaluation`].
    pub fn evaluation_of(&self, index: usize) -> Result<Arc<Evaluation>> {
        self.check_step(index)?;
        match self.result_ref(index).map(|r| &r.output) {
            Some(StepOutput::Evaluate(e)) => Ok(Arc::clone(e)),
            Some(_) => Err(Error::NotEvaluate { step: index + 1 }),
            None => Err(Error::NotRun { step: index + 1 }),
        }
    }
}

/// An [`Observer`] for notebooks and logs: prints progress as plain lines on
/// stdout as training runs (evcxr streams a cell's stdout live), and can
/// enforce a wall-clock budget by cancelling after the current batch.
///
/// A cancelled fine_tune step still succeeds: it keeps the weights trained so
/// far and reports `Stop::Cancelled` (the partial epoch is not recorded).
#[derive(Debug, Clone)]
pub struct Progress {
    every: usize,
    deadline: Option<Instant>,
    budget: Option<Duration>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Prints logs, every epoch, and the running loss every 10 batches.
    pub fn new() -> Self {
        Progress { every: 10, deadline: None, budget: None }
    }

    /// Prints the running loss every `n` batches (`0`: never).
    pub fn every(mut self, n: usize) -> Self {
        self.every = n;
        self
    }

    /// Stops training once `budget` has passed since this call (after the
    /// current batch). The budget covers everything run with this observer.
    pub fn time_limit(mut self, budget: Duration) -> Self {
        self.deadline = Some(Instant::now() + budget);
        self.budget = Some(budget);
        self
    }

    fn line(&self, s: String) {
        let mut out = std::io::stdout().lock();
        // A closed stdout is no reason to stop training.
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    /// The text line an event prints, if any (separate for testing).
    pub fn format(&self, event: &Event) -> Option<String> {
        match event {
            Event::Log(s) => Some(s.clone()),
            Event::EpochStart { epoch, epochs, batches } => Some(format!("epoch {epoch}/{epochs} ({batches} batches)")),
            Event::Batch { batch, batches, loss, accuracy, .. } => (self.every > 0
                && (batch % self.every == 0 || batch == batches))
                .then(|| format!("  batch {batch:>4}/{batches}  loss {loss:.4}  acc {accuracy:.3}")),
            Event::Epoch(r) => Some(crate::present::rows::epoch_line(r)),
        }
    }
}

impl Observer for Progress {
    fn event(&mut self, event: Event) {
        if let Some(s) = self.format(&event) {
            self.line(s);
        }
    }

    fn cancelled(&self) -> bool {
        let over = self.deadline.is_some_and(|d| Instant::now() >= d);
        if over {
            if let Some(b) = self.budget {
                self.line(format!("time budget of {:.0}s used up: stopping after this batch", b.as_secs_f64()));
            }
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::EpochRecord;

    #[test]
    fn progress_formats_epochs_and_thins_batches() {
        let p = Progress::new().every(5);
        let batch = |batch| Event::Batch { epoch: 1, batch, batches: 12, loss: 0.5, accuracy: 0.25, lr: 1e-3 };
        assert!(p.format(&batch(3)).is_none());
        assert_eq!(p.format(&batch(5)).unwrap(), "  batch    5/12  loss 0.5000  acc 0.250");
        assert!(p.format(&batch(12)).is_some(), "the last batch always prints");
        assert!(Progress::new().every(0).format(&batch(12)).is_none());
        let r = EpochRecord {
            epoch: 2,
            train_loss: 1.0,
            train_accuracy: 0.5,
            valid_loss: 0.75,
            valid_accuracy: 0.625,
            lr: 1e-3,
            seconds: 3.25,
        };
        let line = p.format(&Event::Epoch(r)).unwrap();
        assert!(line.contains("valid loss 0.7500 acc 0.6250") && line.contains("1.00e-3"), "{line}");
    }

    #[test]
    fn budgets_only_lower_settings() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/quickstart.toml");
        let r = crate::recipe::load(&path).unwrap().limit_epochs(2).limit_images(10).limit_time(60.0);
        let epochs: Vec<usize> = r
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::FineTune(f) => {
                    assert_eq!(f.time_limit_secs, Some(60.0));
                    Some(f.epochs)
                }
                _ => None,
            })
            .collect();
        assert_eq!(epochs, vec![2, 2]);
        assert_eq!(r.data.max_per_class, Some(10));
        let r = r.limit_epochs(100).limit_images(1000).limit_time(1e9);
        assert_eq!(r.data.max_per_class, Some(10), "never raised");
        assert!(r.steps.iter().all(|s| match &s.kind {
            StepKind::FineTune(f) => f.epochs == 2 && f.time_limit_secs == Some(60.0),
            _ => true,
        }));
    }

    #[test]
    fn time_budget_cancels() {
        assert!(!Progress::new().cancelled());
        assert!(!Progress::new().time_limit(Duration::from_secs(3600)).cancelled());
        assert!(Progress::new().time_limit(Duration::ZERO).cancelled());
    }
}
