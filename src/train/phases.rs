//! fastai's `fine_tune(epochs, base_lr, freeze_epochs)` as one step: train
//! the head with the backbone frozen for `freeze_epochs`, then unfreeze (to
//! `unfreeze_to`) and train `epochs` more at `lr / 2`, spread down to
//! `lr / 200` over the blocks. The same as writing the two phases out as
//! freeze / fine_tune / freeze / fine_tune steps with these settings.

use super::fit::Setup;
use super::{fine_tune, Checkpoint, EpochRecord, Event, FineTuneOutcome, Observer, Resume};
use crate::error::Result;
use crate::models::{self, Classifier};
use crate::recipe::{FineTuneConfig, FreezePoint, Lr};

/// The two phases' settings: `(frozen, unfrozen)`.
pub fn phase_configs(cfg: &FineTuneConfig) -> (FineTuneConfig, FineTuneConfig) {
    let base = FineTuneConfig { freeze_epochs: 0, unfreeze_to: FreezePoint::None, ..cfg.clone() };
    // The head alone trains at the peak rate; a suggestion stays one until
    // the lab resolves it.
    let frozen_lr = cfg.lr.peak().map_or(cfg.lr, Lr::Fixed);
    let frozen = FineTuneConfig { epochs: cfg.freeze_epochs, lr: frozen_lr, layer_decay: None, ..base.clone() };
    let lr = match (cfg.lr, cfg.layer_decay) {
        (Lr::Range { low, high }, _) => Lr::Range { low: low / 2.0, high: high / 2.0 },
        (Lr::Fixed(lr), Some(_)) => Lr::Fixed(lr / 2.0),
        (Lr::Fixed(lr), None) => Lr::Range { low: lr / 200.0, high: lr / 2.0 },
        (suggested, _) => suggested,
    };
    let mut schedule = cfg.schedule;
    if let Some(peak) = lr.peak() {
        schedule.min_lr = schedule.min_lr.min(peak / 10.0);
    }
    let unfrozen = FineTuneConfig { lr, schedule, ..base };
    (frozen, unfrozen)
}

/// The seed of the second phase's streams (the first uses the step's).
pub fn second_seed(seed: u64) -> u64 {
    seed ^ 0x2F_A5E2
}

/// How many blocks stay frozen in the second phase.
fn unfreeze_count(model: &Classifier, cfg: &FineTuneConfig) -> Result<usize> {
    models::frozen_block_count(&cfg.unfreeze_to, &model.backbone.block_names())
}

/// Runs both phases; `resume` continues whichever phase the checkpoint was in.
pub fn freeze_then_unfreeze(
    model: &mut Classifier,
    setup: Setup<'_>,
    obs: &mut dyn Observer,
    resume: Option<Resume>,
) -> Result<FineTuneOutcome> {
    let (frozen_cfg, unfrozen_cfg) = phase_configs(setup.cfg);
    let n = frozen_cfg.epochs;
    let in_second = resume.as_ref().is_some_and(|r| r.epochs_done >= n);
    let (first, resume) = if in_second {
        let r = resume.expect("checked above");
        let first = FineTuneOutcome {
            history: r.history[..n].to_vec(),
            stop: super::Stop::Completed,
            best_epoch: Some(n),
            trainable_params: 0,
        };
        // At the boundary the saved optimizer state is the first phase's: start the second afresh.
        let rest = (r.epochs_done > n).then(|| Resume {
            epochs_done: r.epochs_done - n,
            history: r.history[n..].to_vec(),
            ..r
        });
        (first, rest)
    } else {
        let blocks = model.backbone.num_blocks();
        model.freeze(blocks, false)?;
        obs.event(Event::Log(format!("phase 1: backbone frozen for {n} epoch(s)")));
        // The second phase trains from `unfreeze_to`: keep the frozen blocks' output there.
        let mut later = setup.later_prefixes.to_vec();
        later.extend(unfreeze_count(model, setup.cfg).ok());
        let s = Setup { cfg: &frozen_cfg, cache: &mut *setup.cache, later_prefixes: &later, ..setup };
        let first = fine_tune(model, s, &mut Phase { inner: obs, before: &[], total: n + setup.cfg.epochs }, resume)?;
        if first.stop == super::Stop::Cancelled {
            return Ok(first);
        }
        (first, None)
    };
    let names = model.backbone.block_names();
    let to = unfreeze_count(model, setup.cfg)?;
    model.freeze(to, false)?;
    obs.event(Event::Log(format!(
        "phase 2: unfrozen from block {} at lr {:.2e}",
        names.get(to).map_or("-", String::as_str),
        unfrozen_cfg.lr.peak().unwrap_or(f64::NAN)
    )));
    let seed = second_seed(setup.seed);
    let s = Setup { cfg: &unfrozen_cfg, seed, ..setup };
    let total = n + unfrozen_cfg.epochs;
    let second = fine_tune(model, s, &mut Phase { inner: obs, before: &first.history, total }, resume)?;
    let mut history = first.history;
    history.extend(second.history.into_iter().map(|r| EpochRecord { epoch: r.epoch + n, ..r }));
    Ok(FineTuneOutcome {
        history,
        stop: second.stop,
        best_epoch: second.best_epoch.map(|e| e + n),
        trainable_params: second.trainable_params,
    })
}

/// Shows a phase's epochs numbered within the whole step, and checkpoints
/// the whole step's history (so `--resume` knows which phase it was in).
struct Phase<'o> {
    inner: &'o mut dyn Observer,
    before: &'o [EpochRecord],
    total: usize,
}

impl Phase<'_> {
    fn shift(&self, r: &EpochRecord) -> EpochRecord {
        EpochRecord { epoch: r.epoch + self.before.len(), ..r.clone() }
    }
}

impl Observer for Phase<'_> {
    fn event(&mut self, event: Event) {
        let done = self.before.len();
        let event = match event {
            Event::EpochStart { epoch, batches, .. } => {
                Event::EpochStart { epoch: epoch + done, epochs: self.total, batches }
            }
            Event::Batch { epoch, batch, batches, loss, accuracy, lr } => {
                Event::Batch { epoch: epoch + done, batch, batches, loss, accuracy, lr }
            }
            Event::Epoch(r) => Event::Epoch(self.shift(&r)),
            other => other,
        };
        self.inner.event(event);
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
    fn checkpoint(&mut self, c: &Checkpoint<'_>) -> Result<()> {
        let mut history = self.before.to_vec();
        history.extend(c.history.iter().map(|r| self.shift(r)));
        // The step is finished only when the second phase is.
        let finished = c.finished && !self.before.is_empty();
        let best_epoch = c.ended.best_epoch.map(|e| e + self.before.len());
        let ended = super::Ended { best_epoch, ..c.ended };
        self.inner.checkpoint(&Checkpoint { history: &history, finished, ended, ..*c })
    }
}
