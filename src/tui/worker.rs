//! The engine thread: owns the [`Lab`], runs steps on request and reports
//! through a channel, so the UI never waits on training.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use image::RgbImage;

use super::app::Command;
use crate::lab::{Lab, StepOutput, StepResult};
use crate::run::recorder::RunRecorder;
use crate::train::{Checkpoint, Event, Observer};

/// Messages from the engine thread to the UI.
pub enum FromWorker {
    Started(usize),
    Event(usize, Event),
    Done(Box<StepResult>),
    Failed(usize, String),
    /// The current command finished (or was cut short by a reload).
    Idle,
    /// Progress of a tune (`T`).
    Tune(crate::tools::tune::Progress),
    /// The tune ended: the final accuracy on valid or the error, and best.toml's text.
    TuneEnded {
        outcome: Result<Option<f64>, String>,
        best: Option<String>,
    },
    /// The data doctor's report on the recipe's data, for the backbone step's Data tab.
    Data {
        step: usize,
        lines: Vec<String>,
    },
    /// The label-issue probe's outcome for backbone step `step`'s Labels tab.
    LabelIssues {
        step: usize,
        status: String,
    },
    /// An image for a step's Preview, Mistakes or Labels tab.
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
    /// The training images whose label the probe doubts most.
    LabelIssues,
}

/// Forwards training events to the UI and to the session's run recorder
/// (log, batches, TensorBoard, epoch checkpoints), and relays cancels.
struct Forward<'a> {
    step: usize,
    tx: &'a dyn Fn(FromWorker),
    cancel: &'a AtomicBool,
    run: &'a mut RunRecorder,
}

impl Observer for Forward<'_> {
    fn event(&mut self, event: Event) {
        self.run.event(event.clone());
        (self.tx)(FromWorker::Event(self.step, event));
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
    fn checkpoint(&mut self, state: &Checkpoint<'_>) -> crate::Result<()> {
        self.run.checkpoint(state)
    }
}

/// Runs the worker loop until the command channel closes. The session's run
/// directory gets what `tlab run` leaves there (through the same
/// [`RunRecorder`]: log.txt, batches.csv, tb/, a checkpoint after every
/// epoch and, whenever a command finishes, the reports), so `tlab run
/// --resume DIR` continues a session; `tui.log` adds the session's own events.
pub fn run(lab: Lab, rx: Receiver<Command>, tx: impl Fn(FromWorker), cancel: Arc<AtomicBool>, run: RunRecorder) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(run.path().join("tui.log")).ok();
    let mut worker = Worker { lab, rx, tx: &tx, cancel, run, log, queue: Default::default() };
    while let Some(cmd) = worker.next() {
        if !worker.handle(cmd) {
            return;
        }
    }
}

struct Worker<'a> {
    lab: Lab,
    rx: Receiver<Command>,
    tx: &'a dyn Fn(FromWorker),
    cancel: Arc<AtomicBool>,
    run: RunRecorder,
    log: Option<std::fs::File>,
    /// Commands that arrived while steps ran, in order.
    queue: std::collections::VecDeque<Command>,
}

impl Worker<'_> {
    /// The next command: queued ones first; `None` once the UI is gone.
    fn next(&mut self) -> Option<Command> {
        self.queue.pop_front().or_else(|| self.rx.recv().ok())
    }

    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        if let Some(f) = self.log.as_mut() {
            let _ = f.write_fmt(line);
            let _ = f.write_all(b"\n");
        }
    }

    /// Carries out one command; `false` when the UI is gone.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            // Cancels act through the shared flag; a queued one is stale.
            Command::Cancel => {}
            Command::SetRecipe(recipe) => {
                match self.lab.set_recipe(*recipe) {
                    // Checkpoints from now on name the recipe the lab runs.
                    Ok(_) => self.run.set_recipe(self.lab.recipe()),
                    Err(e) => self.log(format_args!("reload failed: {e}")),
                }
            }
            Command::InputChanged(input) => {
                let first = self.lab.input_changed(&input);
                let shown = crate::util::paths::shown(input.path()).display().to_string();
                self.log(format_args!("{shown} changed on disk: stale from step {:?}", first.map(|i| i + 1)));
            }
            Command::Preview { step, seed } => send_preview(&self.lab, step, seed, self.tx),
            Command::Tune(recipe) => {
                self.tune(&recipe);
                (self.tx)(FromWorker::Idle);
            }
            Command::LabelIssues(step) => {
                self.label_issues(step);
                (self.tx)(FromWorker::Idle);
            }
            Command::Run(steps) => {
                let open = self.run_steps(steps);
                (self.tx)(FromWorker::Idle);
                // After Idle: the UI need not wait for the files, and a
                // command sent meanwhile simply queues.
                self.write_reports();
                return open;
            }
        }
        true
    }

    /// Runs `steps` in order until one fails, a cancel, or a reload or
    /// changed input arrives (the UI then asks again for what is stale);
    /// `false` when the UI is gone.
    fn run_steps(&mut self, steps: Vec<usize>) -> bool {
        self.cancel.store(false, Ordering::Relaxed);
        for step in steps {
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Cancel) => return true,
                    Ok(c @ (Command::SetRecipe(_) | Command::InputChanged(_))) => {
                        self.queue.push_back(c);
                        return true;
                    }
                    Ok(other) => self.queue.push_back(other),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return false,
                }
            }
            if self.cancel.load(Ordering::Relaxed) || !self.run_step(step) {
                break;
            }
        }
        true
    }

    /// Runs one step and sends its result and pictures; `false` to stop the list.
    fn run_step(&mut self, step: usize) -> bool {
        (self.tx)(FromWorker::Started(step));
        self.log(format_args!("[step {}] started", step + 1));
        self.run.begin_step(&self.lab, step);
        let result = {
            let mut obs = Forward { step, tx: self.tx, cancel: &self.cancel, run: &mut self.run };
            self.lab.run_step(step, &mut obs)
        };
        self.run.end_step(result.as_ref());
        match result {
            Ok(r) => {
                let cancelled = self.cancel.load(Ordering::Relaxed);
                self.log(format_args!("[step {}] done in {:.1}s", step + 1, r.seconds));
                let is_augment = matches!(r.output, StepOutput::Augment { .. });
                let is_backbone = matches!(r.output, StepOutput::Backbone { .. });
                let mistakes = match &r.output {
                    StepOutput::Evaluate(e) => Some(e.mistakes.clone()),
                    _ => None,
                };
                (self.tx)(FromWorker::Done(Box::new(r)));
                if is_augment {
                    send_preview(&self.lab, step, self.lab.recipe().seed, self.tx);
                }
                if is_backbone {
                    (self.tx)(FromWorker::Data { step, lines: data_report(&self.lab.recipe().data) });
                }
                if let Some(m) = mistakes {
                    send_mistakes(&self.lab, step, &m, self.tx);
                }
                !cancelled
            }
            Err(e) => {
                self.log(format_args!("[step {}] failed: {e}", step + 1));
                (self.tx)(FromWorker::Failed(step, e.to_string()));
                false
            }
        }
    }

    /// Runs `tlab tune` on the recipe file into `runs/<name>-tune-<time>`,
    /// reporting each line and row; the shared cancel flag stops it.
    fn tune(&mut self, recipe: &std::path::Path) {
        self.cancel.store(false, Ordering::Relaxed);
        let name = &self.lab.recipe().name;
        let dir = crate::run::files::default_run_dir(&format!("{name}-tune"));
        self.log(format_args!("tune {} → {}", recipe.display(), dir.display()));
        let tx = self.tx;
        let mut send = |p: crate::tools::tune::Progress| tx(FromWorker::Tune(p));
        let opts = crate::tools::tune::Options::default();
        let outcome = crate::tools::tune::run(Some(recipe), &dir, false, &opts, self.cancel.clone(), &mut send);
        let best = std::fs::read_to_string(dir.join("best.toml")).ok();
        let outcome = match outcome {
            Ok(o) if o.interrupted => Err(format!("cancelled: `tlab tune --resume {}` continues", dir.display())),
            Ok(o) => Ok(o.final_accuracy),
            Err(e) => Err(e.to_string()),
        };
        self.log(format_args!("tune ended: {outcome:?}"));
        (self.tx)(FromWorker::TuneEnded { outcome, best });
    }

    /// `tlab data --label-issues` on the recipe (a fresh lab: the probe
    /// needs the pretrained backbone, not one fine-tuned on these labels),
    /// written into the session's run directory and sent to the Labels tab.
    fn label_issues(&mut self, step: usize) {
        use crate::tools::doctor::labels;
        let recipe = self.lab.recipe().clone();
        let cfg = labels::ProbeConfig { seed: recipe.seed, ..Default::default() };
        let tx = self.tx;
        let mut log = |line: String| tx(FromWorker::LabelIssues { step, status: format!("probing: {line}") });
        let status = match labels::find(recipe, &cfg, &mut log) {
            Ok(found) => {
                let dir = self.run.path().to_path_buf();
                let written = match found.write(&dir) {
                    Ok(()) => format!("label_issues.csv and .png in {}", crate::util::paths::shown(&dir).display()),
                    Err(e) => format!("not written: {e}"),
                };
                let shown = 40;
                let captions = found
                    .issues
                    .iter()
                    .take(shown)
                    .map(|i| {
                        let file = i.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                        format!("{file}: {} → {}", i.given, i.suggested)
                    })
                    .collect();
                tx(FromWorker::Image { step, kind: ImageKind::LabelIssues, image: found.mosaic(shown), captions });
                format!(
                    "{} of {} training images doubted (probe agrees with {:.1} % of the labels); {written}",
                    found.issues.len(),
                    found.examined,
                    100.0 * found.probe_accuracy
                )
            }
            Err(e) => format!("cannot look for label issues: {e}"),
        };
        self.log(format_args!("label issues: {status}"));
        tx(FromWorker::LabelIssues { step, status });
    }

    /// The reports of the steps run so far, as `tlab run` writes them
    /// (complete once every step has a result).
    fn write_reports(&mut self) {
        let complete = self.lab.results().count() == self.lab.recipe().steps.len();
        if let Err(e) = self.run.write(&self.lab, complete) {
            let dir = self.run.path().display().to_string();
            self.log(format_args!("writing the reports to {dir} failed: {e}"));
        }
    }
}

/// `tlab data` on the recipe's split folders (a CSV listing has none to examine).
fn data_report(data: &crate::recipe::DataConfig) -> Vec<String> {
    if let Some(csv) = &data.csv {
        return vec![format!(
            "the images are listed by {}: `tlab data FOLDER` examines a folder of class folders",
            crate::util::paths::shown(csv).display()
        )];
    }
    let root = data.train.parent().unwrap_or(&data.train);
    match crate::tools::doctor::diagnose_splits(
        root,
        &data.train,
        data.valid.as_deref(),
        data.test.as_deref(),
        crate::tools::doctor::NEAR_BITS,
    ) {
        Ok(d) => d.lines(),
        Err(e) => vec![format!("cannot examine the data: {e}")],
    }
}

fn send_preview(lab: &Lab, step: usize, seed: u64, tx: &dyn Fn(FromWorker)) {
    let Some(data) = lab.data_ref() else { return };
    let aug = lab.augmenter();
    let mix = crate::present::preview::mix_after(lab.recipe(), step);
    let (image, captions) = crate::present::preview::training_samples(data, aug.as_ref(), mix.as_ref(), seed, 16);
    tx(FromWorker::Image { step, kind: ImageKind::Preview, image, captions });
}

fn send_mistakes(lab: &Lab, step: usize, mistakes: &[crate::train::Prediction], tx: &dyn Fn(FromWorker)) {
    let Some(data) = lab.data_ref() else { return };
    let shown: Vec<_> = mistakes.iter().take(12).collect();
    if shown.is_empty() {
        return;
    }
    let mut thumbs = Vec::new();
    let mut captions = Vec::new();
    for p in shown {
        let Some(i) = data.valid.paths.iter().position(|q| *q == p.path) else { continue };
        let Some(t) = crate::present::preview::thumbnail(&data.valid, data.size, i) else { continue };
        thumbs.push(t);
        captions.push(format!("{} → {} ({:.2})", data.classes[p.truth], data.classes[p.predicted], p.confidence));
    }
    let grid = crate::present::preview::tile(&thumbs, thumbs.len().min(4) as u32);
    tx(FromWorker::Image { step, kind: ImageKind::Mistakes, image: grid, captions: captions.clone() });
    // The Grad-CAM overlays of the same images, for the `g` toggle.
    let Some(model) = lab.model() else { return };
    let preprocess = model.backbone.preprocess();
    let overlays: Vec<_> = mistakes
        .iter()
        .take(12)
        .filter_map(|p| {
            let i = data.valid.paths.iter().position(|q| *q == p.path)?;
            let thumb = crate::present::preview::thumbnail(&data.valid, data.size, i)?;
            let px: Vec<f32> = data.valid.pixels.get(i)?.iter().map(|&v| f32::from(v)).collect();
            let s = data.size as usize;
            let x = preprocess.to_tensor(&px, 1, s, s).ok()?;
            let map = crate::explain::grad_cam(model, &x, p.predicted, None).ok()?;
            Some(map.overlay(&thumb))
        })
        .collect();
    if overlays.len() == thumbs.len() {
        let grid = crate::present::preview::tile(&overlays, overlays.len().min(4) as u32);
        tx(FromWorker::Image { step, kind: ImageKind::MistakesGradCam, image: grid, captions });
    }
}
