//! Learning-rate schedules, evaluated per batch (like timm's per-update
//! schedulers), so warm-up is smooth even for short runs.

use crate::recipe::{FineTuneConfig, Schedule};

#[derive(Debug, Clone)]
pub struct LrSchedule {
    base: f64,
    min_lr: f64,
    kind: Schedule,
    warmup_epochs: usize,
    epochs: usize,
    step_size: usize,
    gamma: f64,
}

impl LrSchedule {
    pub fn new(cfg: &FineTuneConfig) -> Self {
        LrSchedule {
            base: cfg.lr,
            min_lr: cfg.min_lr,
            kind: cfg.schedule,
            warmup_epochs: cfg.warmup_epochs,
            epochs: cfg.epochs,
            step_size: cfg.step_size.max(1),
            gamma: cfg.gamma,
        }
    }

    /// The rate for batch `batch` of `batches` in `epoch` (0-based).
    pub fn lr(&self, epoch: usize, batch: usize, batches: usize) -> f64 {
        let batches = batches.max(1);
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
                let progress = ((t - warm) / span).clamp(0.0, 1.0);
                self.min_lr + 0.5 * (self.base - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
