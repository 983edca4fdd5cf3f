//! Epoch checkpoints in the run directory, so `tlab run --resume DIR`
//! continues an interrupted run from its last completed epoch.
//!
//! Layout: `DIR/checkpoint/state.json` names the current generation `N`,
//! whose tensors are `model-N.safetensors`, `optim-N.safetensors` and (with
//! early stopping) `best-N.safetensors`, and the callbacks' state (EMA
//! weights) in `extra-N.safetensors`. Every file is written atomically and
//! `state.json` last, so a crash at any moment leaves either the previous
//! generation or the new one complete; older generations are removed after.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::Snapshot;
use crate::recipe::Recipe;
use crate::train::lr_find::LrFindResult;
use crate::train::{Checkpoint, Ended, EpochRecord, Resume};

/// What the steps before a checkpointed one produced that a resume cannot
/// recompute: their epochs, and their lr_find curves (replayed on other
/// weights, a range test could suggest another rate).
#[derive(Debug, Clone, Default)]
pub struct Earlier {
    pub history: Vec<(usize, EpochRecord)>,
    pub lr_finds: Vec<(usize, LrFindResult)>,
    /// How each finished fine_tune step ended, `(step, ended)`.
    pub ended: Vec<(usize, Ended)>,
}

/// `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub generation: u64,
    pub recipe: PathBuf,
    /// Step fingerprints of the recipe that made the checkpoint: a resumed
    /// run must use the same recipe.
    pub fingerprints: Vec<u64>,
    pub seed: u64,
    /// The fine_tune step (0-based) and whether it had ended.
    pub step: usize,
    pub finished: bool,
    pub epochs_done: usize,
    /// Every epoch of every fine_tune step so far, `(step, record)`.
    pub history: Vec<(usize, EpochRecord)>,
    pub optimizer_t: i32,
    pub best: Option<BestState>,
    pub since_best: usize,
    /// The lr_find results of the steps before `step`, `(step, result)`
    /// (absent in checkpoints written before they were kept).
    #[serde(default)]
    pub lr_finds: Vec<(usize, LrFindResult)>,
    /// How each finished fine_tune step ended (this one too, once
    /// `finished`), `(step, ended)`; absent in older checkpoints.
    #[serde(default)]
    pub ended: Vec<(usize, Ended)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BestState {
    pub score: f64,
    pub epoch: usize,
    pub frozen_blocks: usize,
    pub train_bn: bool,
}

fn folder(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}

/// Writes a new generation for `step` and removes the previous one.
/// `earlier` holds what the steps before `step` produced.
pub fn write(run_dir: &Path, recipe: &Recipe, step: usize, earlier: &Earlier, c: &Checkpoint<'_>) -> Result<()> {
    let dir = folder(run_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let previous = read_state(run_dir).ok().flatten().map(|s| s.generation);
    let generation = previous.map_or(1, |g| g + 1);
    let model: Vec<(String, Tensor)> =
        c.model.named_vars().into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect();
    crate::formats::weights::save_safetensors(
        &model,
        DType::F32,
        &dir.join(format!("model-{generation}.safetensors")),
    )?;
    let (optimizer_t, optim) = c.optimizer.state();
    crate::formats::weights::save_safetensors(
        &optim,
        DType::F32,
        &dir.join(format!("optim-{generation}.safetensors")),
    )?;
    if !c.extra.is_empty() {
        crate::formats::weights::save_safetensors(
            c.extra,
            DType::F32,
            &dir.join(format!("extra-{generation}.safetensors")),
        )?;
    }
    let best = match c.best {
        Some((score, epoch, snap)) => {
            crate::formats::weights::save_safetensors(
                &snap.tensors,
                DType::F32,
                &dir.join(format!("best-{generation}.safetensors")),
            )?;
            Some(BestState { score, epoch, frozen_blocks: snap.frozen_blocks, train_bn: snap.train_bn })
        }
        None => None,
    };
    let mut history = earlier.history.clone();
    history.extend(c.history.iter().cloned().map(|r| (step, r)));
    let state = State {
        generation,
        recipe: recipe.path.clone(),
        fingerprints: recipe.steps.iter().map(|s| s.fingerprint).collect(),
        seed: recipe.seed,
        step,
        finished: c.finished,
        epochs_done: c.history.len(),
        history,
        optimizer_t,
        best,
        since_best: c.since_best,
        lr_finds: earlier.lr_finds.clone(),
        ended: earlier.ended.iter().copied().chain(c.finished.then_some((step, c.ended))).collect(),
    };
    let json = serde_json::to_string_pretty(&state).map_err(|source| Error::Json { what: "state.json", source })?;
    crate::fs::atomic_write(&dir.join("state.json"), json.as_bytes())?;
    if let Some(old) = previous {
        for kind in ["model", "optim", "best", "extra"] {
            let _ = std::fs::remove_file(dir.join(format!("{kind}-{old}.safetensors")));
        }
    }
    Ok(())
}

/// The checkpoint state of `run_dir`, or `None` when it has none.
pub fn read_state(run_dir: &Path) -> Result<Option<State>> {
    let path = folder(run_dir).join("state.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::data(&path, format!("unreadable checkpoint state: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Everything needed to resume: the model's weights and the fine_tune state.
pub struct Saved {
    pub state: State,
    pub weights: HashMap<String, Tensor>,
    pub resume: Resume,
}

/// Loads the current generation and checks it was made by `recipe`.
pub fn load(run_dir: &Path, state: State, recipe: &Recipe) -> Result<Saved> {
    let fingerprints: Vec<u64> = recipe.steps.iter().map(|s| s.fingerprint).collect();
    if fingerprints != state.fingerprints || recipe.seed != state.seed {
        return Err(Error::StaleCheckpoint { recipe: recipe.path.clone(), run_dir: run_dir.to_path_buf() });
    }
    let dir = folder(run_dir);
    let g = state.generation;
    let weights = crate::formats::weights::load(&dir.join(format!("model-{g}.safetensors")))?;
    let optimizer = crate::formats::weights::load(&dir.join(format!("optim-{g}.safetensors")))?;
    let best = match &state.best {
        Some(b) => {
            let tensors = crate::formats::weights::load_ordered(&dir.join(format!("best-{g}.safetensors")))?;
            Some((b.score, b.epoch, Snapshot { tensors, frozen_blocks: b.frozen_blocks, train_bn: b.train_bn }))
        }
        None => None,
    };
    let extra_path = dir.join(format!("extra-{g}.safetensors"));
    let extra = if extra_path.exists() { crate::formats::weights::load(&extra_path)? } else { HashMap::new() };
    let resume = Resume {
        epochs_done: state.epochs_done,
        history: state.history.iter().filter(|(s, _)| *s == state.step).map(|(_, r)| r.clone()).collect(),
        optimizer_t: state.optimizer_t,
        optimizer,
        best,
        since_best: state.since_best,
        extra,
    };
    Ok(Saved { state, weights, resume })
}
