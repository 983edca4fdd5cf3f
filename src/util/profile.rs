//! Where a run's time goes: `tlab run --profile` (or `TLAB_PROFILE=1`)
//! times named phases — decoding, augmentation, the frozen features, the
//! forward pass block by block, backward, the optimizer, validation,
//! evaluation, lr_find, the reports — and writes `profile.json`.
//!
//! Off by default, a scope costs one relaxed atomic load. When on, times
//! are summed per phase over every thread (the input pipeline decodes and
//! augments beside training, so the phases can add up to more than the wall
//! time), and the training forward pass runs one block at a time so each
//! block's time is its own. Phases nest: validation, evaluate and lr_find
//! include their forward passes (and lr_find its training batches).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<String, (Duration, u64)>>> = Mutex::new(None);

/// Turns profiling on for the rest of the process (also `TLAB_PROFILE=1`).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether phases are being timed: [`enable`] was called or `TLAB_PROFILE`
/// is set to anything but `0`.
pub fn enabled() -> bool {
    static FROM_ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ENABLED.load(Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| std::env::var_os("TLAB_PROFILE").is_some_and(|v| v != "0" && !v.is_empty()))
}

/// Times the rest of the enclosing block as `phase` (when profiling is on).
#[must_use = "the phase is timed until the scope is dropped"]
pub fn scope(phase: &str) -> Scope {
    Scope { phase: enabled().then(|| (phase.to_string(), Instant::now())) }
}

/// Runs `f`, timed as `phase`.
pub fn timed<T>(phase: &str, f: impl FnOnce() -> T) -> T {
    let _t = scope(phase);
    f()
}

/// A running phase; its time is added when dropped.
pub struct Scope {
    phase: Option<(String, Instant)>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((phase, start)) = self.phase.take() {
            add(phase, start.elapsed());
        }
    }
}

fn add(phase: String, d: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let e = totals.get_or_insert_with(HashMap::new).entry(phase).or_default();
    e.0 += d;
    e.1 += 1;
}

/// One phase's total.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct PhaseTime {
    pub phase: String,
    pub seconds: f64,
    pub calls: u64,
}

/// Every phase timed so far, longest first.
pub(crate) fn totals() -> Vec<PhaseTime> {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<PhaseTime> = totals
        .iter()
        .flatten()
        .map(|(p, (d, n))| PhaseTime { phase: p.clone(), seconds: d.as_secs_f64(), calls: *n })
        .collect();
    out.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.phase.cmp(&b.phase)));
    out
}

/// `profile.json`: the wall time and every phase with its share of it.
pub fn to_json(wall_seconds: f64) -> String {
    let phases: Vec<serde_json::Value> = totals()
        .iter()
        .map(|p| {
            serde_json::json!({
                "phase": p.phase,
                "seconds": p.seconds,
                "calls": p.calls,
                "share_of_wall": p.seconds / wall_seconds.max(1e-9),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "wall_seconds": wall_seconds,
        "note": "seconds summed over threads: the input pipeline runs beside training",
        "phases": phases,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The table `tlab run --profile` prints: the longest phases first.
pub fn table(wall_seconds: f64) -> Vec<String> {
    let mut lines = vec![format!("{:<40} {:>9} {:>7} {:>9}", "phase", "seconds", "share", "calls")];
    for p in totals() {
        let share = 100.0 * p.seconds / wall_seconds.max(1e-9);
        lines.push(format!("{:<40} {:>9.2} {:>6.1}% {:>9}", p.phase, p.seconds, share, p.calls));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_add_up_per_phase() {
        enable();
        for _ in 0..3 {
            let _t = scope("test: sleep");
            std::thread::sleep(Duration::from_millis(2));
        }
        let p = totals().into_iter().find(|p| p.phase == "test: sleep").unwrap();
        assert_eq!(p.calls, 3);
        assert!(p.seconds >= 0.006, "{}", p.seconds);
        let json: serde_json::Value = serde_json::from_str(&to_json(1.0)).unwrap();
        assert!(json["phases"].as_array().unwrap().iter().any(|p| p["phase"] == "test: sleep"));
    }
}
