//! The engine thread: owns the [`Lab`], runs steps on request and reports
//! through a channel, so the UI never waits on training.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use image::RgbImage;

use super::app::Command;
use crate::lab::{Lab, StepOutput, StepResult};
use crate::train::{Event, Observer};

/// Messages from the engine thread to the UI.
pub enum FromWorker {
    Started(usize),
    Event(usize, Event),
    Done(Box<StepResult>),
    Failed(usize, String),
    /// The current command finished (or was cut short by a reload).
    Idle,
    /// An image for a step's Preview or Mistakes tab.
    Image {
        step: usize,
        kind: ImageKind,
        image: RgbImage,
        captions: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    Preview,
    Mistakes,
    /// The same mistakes with their Grad-CAM overlay (`g` toggles).
    MistakesGradCam,
}

/// Forwards training events to the UI (and the log file) and relays cancels.
struct Forward<'a> {
    step: usize,
    tx: &'a dyn Fn(FromWorker),
    cancel: &'a AtomicBool,
    log: &'a mut Option<std::fs::File>,
}

impl Observer for Forward<'_> {
    fn event(&mut self, event: Event) {
        if let Some(f) = self.log.as_mut() {
            match &event {
                Event::Log(s) => {
                    let _ = writeln!(f, "[step {}] {s}", self.step + 1);
                }
                Event::Epoch(r) => {
                    let _ = writeln!(f, "[step {}] epoch {} {:?}", self.step + 1, r.epoch, r);
                }
                _ => {}
            }
        }
        (self.tx)(FromWorker::Event(self.step, event));
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Runs the worker loop until the command channel closes.
pub fn run(mut lab: Lab, rx: Receiver<Command>, tx: impl Fn(FromWorker), cancel: Arc<AtomicBool>, log_path: PathBuf) {
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).ok();
    let mut queue: std::collections::VecDeque<Command> = Default::default();
    loop {
        let cmd = match queue.pop_front() {
            Some(c) => c,
            None => match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        match cmd {
            // Cancels act through the shared flag; a queued one is stale.
            Command::Cancel => {}
            Command::SetRecipe(recipe) => {
                if let Err(e) = lab.set_recipe(*recipe) {
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "reload failed: {e}");
                    }
                }
            }
            Command::InputChanged(input) => {
                let first = lab.input_changed(&input);
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(
                        f,
                        "{} changed on disk: stale from step {:?}",
                        crate::paths::shown(input.path()).display(),
                        first.map(|i| i + 1)
                    );
                }
            }
            Command::Preview { step, seed } => send_preview(&lab, step, seed, &tx),
            Command::Run(steps) => {
                cancel.store(false, Ordering::Relaxed);
                'steps: for step in steps {
                    // A reload or a changed input between steps aborts the rest
                    // of the list; the UI asks again for what is stale.
                    loop {
                        match rx.try_recv() {
                            Ok(Command::Cancel) => break 'steps,
                            Ok(c @ (Command::SetRecipe(_) | Command::InputChanged(_))) => {
                                queue.push_back(c);
                                break 'steps;
                            }
                            Ok(other) => queue.push_back(other),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => return,
                        }
                    }
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    tx(FromWorker::Started(step));
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "[step {}] started", step + 1);
                    }
                    let result = {
                        let mut obs = Forward { step, tx: &tx, cancel: &cancel, log: &mut log };
                        lab.run_step(step, &mut obs).cloned()
                    };
                    match result {
                        Ok(r) => {
                            let cancelled = cancel.load(Ordering::Relaxed);
                            if let Some(f) = log.as_mut() {
                                let _ = writeln!(f, "[step {}] done in {:.1}s", step + 1, r.seconds);
                            }
                            let is_augment = matches!(r.output, StepOutput::Augment { .. });
                            let mistakes = match &r.output {
                                StepOutput::Evaluate(e) => Some(e.mistakes.clone()),
                                _ => None,
                            };
                            tx(FromWorker::Done(Box::new(r)));
                            if is_augment {
                                send_preview(&lab, step, lab.recipe().seed, &tx);
                            }
                            if let Some(m) = mistakes {
                                send_mistakes(&lab, step, &m, &tx);
                            }
                            if cancelled {
                                break;
                            }
                        }
                        Err(e) => {
                            if let Some(f) = log.as_mut() {
                                let _ = writeln!(f, "[step {}] failed: {e}", step + 1);
                            }
                            tx(FromWorker::Failed(step, e.to_string()));
                            break;
                        }
                    }
                }
                tx(FromWorker::Idle);
            }
        }
    }
}

fn send_preview(lab: &Lab, step: usize, seed: u64, tx: &dyn Fn(FromWorker)) {
    let Some(data) = lab.data() else { return };
    let aug = lab.augmenter();
    let mix = crate::preview::mix_after(lab.recipe(), step);
    let (image, captions) = crate::preview::training_samples(data, aug.as_ref(), mix.as_ref(), seed, 16);
    tx(FromWorker::Image { step, kind: ImageKind::Preview, image, captions });
}

fn send_mistakes(lab: &Lab, step: usize, mistakes: &[crate::report::Prediction], tx: &dyn Fn(FromWorker)) {
    let Some(data) = lab.data() else { return };
    let shown: Vec<_> = mistakes.iter().take(12).collect();
    if shown.is_empty() {
        return;
    }
    let mut thumbs = Vec::new();
    let mut captions = Vec::new();
    for p in shown {
        let Some(i) = data.valid.paths.iter().position(|q| *q == p.path) else { continue };
        let Some(t) = crate::preview::thumbnail(&data.valid, data.size, i) else { continue };
        thumbs.push(t);
        captions.push(format!("{} → {} ({:.2})", data.classes[p.truth], data.classes[p.predicted], p.confidence));
    }
    let grid = crate::preview::tile(&thumbs, thumbs.len().min(4) as u32);
    tx(FromWorker::Image { step, kind: ImageKind::Mistakes, image: grid, captions: captions.clone() });
    // The Grad-CAM overlays of the same images, for the `g` toggle.
    let Some(model) = lab.model() else { return };
    let preprocess = model.backbone.preprocess();
    let overlays: Vec<_> = mistakes
        .iter()
        .take(12)
        .filter_map(|p| {
            let i = data.valid.paths.iter().position(|q| *q == p.path)?;
            let thumb = crate::preview::thumbnail(&data.valid, data.size, i)?;
            let px: Vec<f32> = data.valid.pixels[i].iter().map(|&v| f32::from(v)).collect();
            let s = data.size as usize;
            let x = preprocess.to_tensor(&px, 1, s, s).ok()?;
            let map = crate::explain::grad_cam(model, &x, p.predicted, None).ok()?;
            Some(map.overlay(&thumb))
        })
        .collect();
    if overlays.len() == thumbs.len() {
        let grid = crate::preview::tile(&overlays, overlays.len().min(4) as u32);
        tx(FromWorker::Image { step, kind: ImageKind::MistakesGradCam, image: grid, captions });
    }
}
