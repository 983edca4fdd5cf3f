//! Smith's learning-rate range test (Smith 2017, "Cyclical Learning Rates
//! for Training Neural Networks"; fastai's `lr_find`): train on an
//! exponentially rising rate for a number of batches, record the smoothed
//! loss, stop when it diverges, then put the weights back.

use serde::{Deserialize, Serialize};

use super::callbacks::ProgressEvents;
use super::fit::{BatchCtx, Callback};
use super::fit::{FineTune, Setup};
use super::{Observer, Resume};
use crate::error::{Error, Result};
use crate::models::{Classifier, Snapshot};
use crate::recipe::{LrFindConfig, LrSuggestion};

/// The curve and the rates read off it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrFindResult {
    pub lrs: Vec<f64>,
    /// Exponentially smoothed (and bias-corrected) loss per batch.
    pub losses: Vec<f64>,
    /// `(suggestion, rate)`: valley, steep, minimum.
    pub suggestions: Vec<(LrSuggestion, f64)>,
    /// The loss diverged before the last rate.
    pub diverged: bool,
}

impl LrFindResult {
    pub fn suggestion(&self, which: LrSuggestion) -> Option<f64> {
        self.suggestions.iter().find(|(s, _)| *s == which).map(|(_, lr)| *lr)
    }
}

/// The range test as a callback: sets each batch's rate, records the loss,
/// stops on divergence, and restores the weights at the end.
struct LrFinder {
    cfg: LrFindConfig,
    lrs: Vec<f64>,
    losses: Vec<f64>,
    avg: f64,
    best: f64,
    diverged: bool,
    start: Option<Snapshot>,
}

/// fastai's smoothing of the recorded loss.
const BETA: f64 = 0.98;

impl Callback for LrFinder {
    fn before_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        self.start = Some(fit.model.snapshot()?);
        fit.validate = false;
        Ok(())
    }
    fn before_batch(&mut self, ctx: &mut BatchCtx<'_>) -> Result<()> {
        let i = self.lrs.len() as f64;
        let steps = (self.cfg.num_it.max(2) - 1) as f64;
        ctx.lr = self.cfg.start_lr * (self.cfg.end_lr / self.cfg.start_lr).powf(i / steps);
        Ok(())
    }
    fn after_loss(&mut self, ctx: &mut BatchCtx<'_>) -> Result<()> {
        let n = self.lrs.len() as i32 + 1;
        self.avg = BETA * self.avg + (1.0 - BETA) * ctx.loss;
        let smoothed = self.avg / (1.0 - BETA.powi(n));
        if !smoothed.is_finite() || (self.cfg.stop_div && smoothed > 4.0 * self.best) {
            self.diverged = true;
            ctx.stop = true;
            return Ok(());
        }
        self.best = self.best.min(smoothed);
        self.lrs.push(ctx.lr);
        self.losses.push(smoothed);
        if self.lrs.len() >= self.cfg.num_it {
            ctx.stop = true;
        }
        Ok(())
    }
    fn after_fit(&mut self, fit: &mut FineTune<'_>) -> Result<()> {
        match &self.start {
            Some(snap) => fit.model.restore(snap),
            None => Ok(()),
        }
    }
    fn on_error(&mut self, fit: &mut FineTune<'_>, _error: &Error) -> Result<()> {
        self.after_fit(fit)
    }
}

/// Runs the range test on the model's trainable parameters; the model's
/// weights (and BatchNorm statistics) are the same afterwards.
pub fn lr_find(
    model: &mut Classifier,
    setup: Setup<'_>,
    obs: &mut dyn Observer,
    cfg: &LrFindConfig,
) -> Result<LrFindResult> {
    let batches = setup.data.train.len().div_ceil(setup.batch_size).max(1);
    let mut train = setup.cfg.clone();
    train.epochs = cfg.num_it.div_ceil(batches);
    // The test may stop at divergence long before its last batch: views
    // computed up front could cost more than they save ("auto" is live here).
    train.augment_views = train.augment_views.or(Some(0));
    let setup = Setup { cfg: &train, ..setup };
    let finder = LrFinder {
        cfg: cfg.clone(),
        lrs: Vec::new(),
        losses: Vec::new(),
        avg: 0.0,
        best: f64::INFINITY,
        diverged: false,
        start: None,
    };
    let mut finder = finder;
    {
        let mut cbs: Vec<Box<dyn Callback + '_>> = vec![Box::new(ProgressEvents), Box::new(&mut finder)];
        FineTune::prepare(model, setup, obs, None::<Resume>)?.run(&mut cbs)?;
    }
    if finder.lrs.len() < 5 {
        return Err(Error::LrFindDiverged { batches: finder.lrs.len(), start_lr: cfg.start_lr });
    }
    let suggestions = suggest(&finder.lrs, &finder.losses);
    Ok(LrFindResult { lrs: finder.lrs, losses: finder.losses, suggestions, diverged: finder.diverged })
}

/// The three suggestions, over the curve without its first tenth (where the
/// smoothed loss is still settling: a dip there is noise, not a rate that
/// trains) and its last few (diverging) points, as fastai trims it.
pub fn suggest(lrs: &[f64], losses: &[f64]) -> Vec<(LrSuggestion, f64)> {
    let (first, end) = if losses.len() > 10 { (losses.len() / 10, losses.len() - 5) } else { (0, losses.len()) };
    let (lrs, losses) = (&lrs[first..end], &losses[first..end]);
    let n = losses.len();
    let min_at = (0..n).min_by(|&a, &b| losses[a].total_cmp(&losses[b])).unwrap_or(0);
    // Steepest descent of the loss against log10(lr) (central differences).
    let logs: Vec<f64> = lrs.iter().map(|l| l.log10()).collect();
    let slope = |i: usize| {
        let (a, b) = (i.saturating_sub(1), (i + 1).min(n - 1));
        (losses[b] - losses[a]) / (logs[b] - logs[a]).max(1e-12)
    };
    let steep = (0..n).min_by(|&a, &b| slope(a).total_cmp(&slope(b))).unwrap_or(0);
    vec![
        (LrSuggestion::Valley, lrs[valley(losses)]),
        (LrSuggestion::Steep, lrs[steep]),
        (LrSuggestion::Minimum, lrs[min_at] / 10.0),
    ]
}

/// fastai's "valley": the longest stretch over which the loss keeps falling
/// (a longest decreasing subsequence), and the point two thirds of the way
/// down it — late enough to be fast, early enough to be safe.
fn valley(losses: &[f64]) -> usize {
    let n = losses.len();
    let mut run = vec![1usize; n];
    let (mut start, mut end) = (0, 0);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && run[i] < run[j] + 1 {
                run[i] = run[j] + 1;
            }
        }
        if run[end] < run[i] {
            end = i;
            start = end + 1 - run[end];
        }
    }
    let third = (end - start) / 3;
    (start + third + third / 2).min(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_sit_on_the_falling_part_of_a_textbook_curve() {
        // Flat, then falling steeply around 1e-3, a minimum near 1e-1, then diverging.
        let lrs: Vec<f64> = (0..100).map(|i| 1e-7 * 1e8f64.powf(i as f64 / 99.0)).collect();
        // Measured curves are noisy where the rate is too small to matter.
        let losses: Vec<f64> = lrs
            .iter()
            .enumerate()
            .map(|(i, &lr)| {
                let x = lr.log10();
                let noise = if x < -4.5 { 0.03 * (i as f64 * 2.3).sin() } else { 0.0 };
                2.3 - 2.0 / (1.0 + (-(x + 3.0) * 3.0).exp())
                    + if x > -1.0 { (x + 1.0).powi(2) * 4.0 } else { 0.0 }
                    + noise
            })
            .collect();
        let s = suggest(&lrs, &losses);
        let get = |w| s.iter().find(|(k, _)| *k == w).unwrap().1;
        let steep = get(LrSuggestion::Steep);
        assert!((steep.log10() + 3.0).abs() < 0.2, "steepest at 1e-3, got {steep:e}");
        let min = get(LrSuggestion::Minimum);
        assert!((-2.6..=-1.8).contains(&min.log10()), "a tenth of the minimum's rate, got {min:e}");
        let valley = get(LrSuggestion::Valley);
        assert!((1e-4..1e-1).contains(&valley), "valley on the descent, got {valley:e}");
        // A drop in the first points (the smoothed loss settling, as with a
        // BatchNorm head) is not the steepest descent.
        let mut settling = losses.clone();
        settling[0] += 3.0;
        settling[1] += 1.5;
        let s = suggest(&lrs, &settling);
        let steep = s.iter().find(|(k, _)| *k == LrSuggestion::Steep).unwrap().1;
        assert!((steep.log10() + 3.0).abs() < 0.2, "steepest still at 1e-3, got {steep:e}");
    }
}
