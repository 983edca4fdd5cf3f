//! Learning-rate (and momentum) schedules, evaluated per batch like timm's
//! per-update schedulers, so warm-up is smooth even for short runs.

use std::f64::consts::PI;

use crate::recipe::{OneCycle, Schedule, ScheduleParams};

#[derive(Debug, Clone)]
pub(crate) struct LrSchedule {
    base: f64,
    min_lr: f64,
    kind: Schedule,
    warmup_epochs: usize,
    epochs: usize,
    step_size: usize,
    gamma: f64,
    one_cycle: OneCycle,
    restart_epochs: usize,
    restart_mult: usize,
}

/// Cosine interpolation from `start` (at `pct = 0`) to `end` (at 1).
fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * (1.0 + (PI * pct).cos())
}

impl LrSchedule {
    /// The schedule of `cfg` over `epochs` epochs peaking at `base`.
    pub fn new(base: f64, epochs: usize, cfg: &ScheduleParams) -> Self {
        LrSchedule {
            base,
            min_lr: cfg.min_lr,
            kind: cfg.kind,
            warmup_epochs: cfg.warmup_epochs,
            epochs,
            step_size: cfg.step_size.max(1),
            gamma: cfg.gamma,
            one_cycle: cfg.one_cycle,
            restart_epochs: cfg.restart_epochs.max(1),
            restart_mult: cfg.restart_mult.max(1),
        }
    }

    /// The rate for batch `batch` of `batches` in `epoch` (0-based).
    pub fn lr(&self, epoch: usize, batch: usize, batches: usize) -> f64 {
        let batches = batches.max(1);
        if self.kind == Schedule::OneCycle {
            return self.one_cycle_at(epoch * batches + batch, self.epochs * batches).0;
        }
        let t = epoch as f64 + batch as f64 / batches as f64;
        let warm = self.warmup_epochs as f64;
        if t < warm {
            // Linear warm-up from base/batches to base.
            return self.base * (t + 1.0 / batches as f64) / (warm + 1.0 / batches as f64);
        }
        match self.kind {
            Schedule::Constant => self.base,
            Schedule::Step => self.base * self.gamma.powi((epoch / self.step_size) as i32),
            Schedule::Cosine => {
                let span = (self.epochs as f64 - warm).max(1e-9);
                cos_anneal(self.base, self.min_lr, ((t - warm) / span).clamp(0.0, 1.0))
            }
            Schedule::CosineRestarts => {
                // PyTorch's CosineAnnealingWarmRestarts stepped with a fractional epoch.
                let (mut t_cur, mut t_i) = (t - warm, self.restart_epochs as f64);
                while t_cur >= t_i {
                    t_cur -= t_i;
                    t_i *= self.restart_mult as f64;
                }
                cos_anneal(self.base, self.min_lr, t_cur / t_i)
            }
            Schedule::OneCycle => unreachable!("handled above"),
        }
    }

    /// The momentum (SGD) or beta1 (Adam) for that batch, when the schedule
    /// cycles it; `None` leaves the optimizer's own.
    pub fn momentum(&self, epoch: usize, batch: usize, batches: usize) -> Option<f64> {
        let batches = batches.max(1);
        (self.kind == Schedule::OneCycle && self.one_cycle.cycle_momentum)
            .then(|| self.one_cycle_at(epoch * batches + batch, self.epochs * batches).1)
    }

    /// PyTorch `OneCycleLR` (two phases, cosine annealing) at step `step` of
    /// `total`: `(lr, momentum)`.
    fn one_cycle_at(&self, step: usize, total: usize) -> (f64, f64) {
        let c = &self.one_cycle;
        let initial = self.base / c.div_factor;
        let last = initial / c.final_div_factor;
        let up_end = c.pct_start * total as f64 - 1.0;
        let down_end = total as f64 - 1.0;
        let s = step as f64;
        if s <= up_end {
            let pct = if up_end > 0.0 { s / up_end } else { 1.0 };
            (cos_anneal(initial, self.base, pct), cos_anneal(c.max_momentum, c.base_momentum, pct))
        } else {
            let pct = ((s - up_end) / (down_end - up_end).max(1e-12)).min(1.0);
            (cos_anneal(self.base, last, pct), cos_anneal(c.base_momentum, c.max_momentum, pct))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(extra: &str) -> LrSchedule {
        let cfg = crate::recipe::fine_tune_for_test(extra);
        LrSchedule::new(cfg.lr.peak().unwrap(), cfg.epochs, &cfg.schedule)
    }

    /// `tests/fixtures/schedules.json`, written by `scripts/schedule-fixture.py`
    /// from PyTorch's own schedulers: per-step lr (and momentum / beta1).
    #[test]
    fn schedules_match_pytorch() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedules.json");
        let text = std::fs::read_to_string(path).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = cases.as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let recipe = case["recipe"].as_str().unwrap();
            let s = schedule(recipe);
            let batches = case["batches"].as_u64().unwrap() as usize;
            let lrs = case["lr"].as_array().unwrap();
            let moms = case["momentum"].as_array();
            for (i, want) in lrs.iter().enumerate() {
                let (e, b) = (i / batches, i % batches);
                let want = want.as_f64().unwrap();
                let got = s.lr(e, b, batches);
                assert!((got - want).abs() <= 1e-9 + 1e-6 * want.abs(), "{recipe}: step {i}: lr {got} vs {want}");
                if let Some(m) = moms {
                    let want = m[i].as_f64().unwrap();
                    let got = s.momentum(e, b, batches).unwrap();
                    assert!((got - want).abs() < 1e-9, "{recipe}: step {i}: momentum {got} vs {want}");
                }
            }
        }
    }
}
