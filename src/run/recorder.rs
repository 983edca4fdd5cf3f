//! The one observer that fills a run directory as a run goes, whichever
//! front end drives the [`Lab`]: `tlab run`, `tlab tui`, `tlab tune`'s
//! trials and a notebook all leave the same files — `log.txt`,
//! `batches.csv`, the TensorBoard log under `tb/`, a checkpoint after every
//! epoch, and (from [`crate::run::dir::write_reports`]) the reports.
//!
//! A front end shows what it likes of the run (progress bars, the TUI's
//! cells) and forwards every [`Event`] here; the lines this recorder logs are
//! the ones `tlab run` prints, made by [`event_line`] and [`step_lines`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::lab::{Lab, StepRecorder, StepResult};
use crate::run::dir::{RunDir, PICTURES};
use crate::run::tensorboard::EventWriter;
use crate::train::checkpoint::Earlier;
use crate::train::{Checkpoint, Event, Observer};

/// Records a run into its directory (see the module docs).
pub struct RunRecorder {
    dir: RunDir,
    /// Every line of `log.txt`, earlier processes' first on a resumed run.
    log: Vec<String>,
    /// `step,epoch,batch,lr,loss` rows of `batches.csv`, with the header.
    batches: String,
    /// The TensorBoard log; dropped (with a logged warning) if writing fails,
    /// because a full disk must not stop training.
    tb: Option<EventWriter>,
    /// The running step (0-based) and the epochs of the steps before it,
    /// which a checkpoint needs.
    step: usize,
    earlier: Earlier,
}

impl RunRecorder {
    /// Opens the run directory `path` for `recipe` (see [`RunDir::open`]);
    /// with `resuming`, the earlier processes' log and batches are kept.
    pub fn open(path: &Path, recipe: &crate::recipe::Recipe, resuming: bool) -> Result<RunRecorder> {
        let dir = RunDir::open(path, recipe, resuming)?;
        let kept = |name: &str| if resuming { std::fs::read_to_string(path.join(name)).ok() } else { None };
        let log = kept("log.txt").map(|t| t.lines().map(str::to_owned).collect()).unwrap_or_default();
        let batches = kept("batches.csv").unwrap_or_else(|| String::from("step,epoch,batch,lr,loss\n"));
        let tb = Some(EventWriter::create(&path.join("tb"))?);
        Ok(RunRecorder { dir, log, batches, tb, step: 0, earlier: Earlier::default() })
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The recipe the checkpoints name from now on (a TUI session's recipe
    /// changes when its file is edited).
    pub fn set_recipe(&mut self, recipe: &crate::recipe::Recipe) {
        self.dir.set_recipe(recipe);
    }

    /// After resuming from a checkpoint holding `epochs` epochs: the
    /// TensorBoard curves continue after them.
    pub fn resumed(&mut self, epochs: usize) {
        if let Some(tb) = &mut self.tb {
            tb.skip_epochs(epochs);
        }
    }

    /// Adds a line to `log.txt`.
    pub fn line(&mut self, s: impl Into<String>) {
        self.log.push(s.into());
    }

    /// Marks the start of step `index` of `lab`: checkpoints from now on are
    /// for it. The header line, logged and returned for display.
    pub fn begin_step(&mut self, lab: &Lab, index: usize) -> String {
        self.step = index;
        self.earlier = lab.earlier();
        let steps = lab.recipe().steps.len();
        let kind = &lab.recipe().steps[index].kind;
        let line = format!("[{}/{steps}] {}: {}", index + 1, kind.name(), kind.summary());
        self.line(line.clone());
        line
    }

    /// Logs how a step ended; the lines, for display.
    pub fn end_step(&mut self, result: std::result::Result<&StepResult, &Error>) -> Vec<String> {
        let lines = step_lines(result);
        self.log.extend(lines.iter().cloned());
        lines
    }

    /// Writes the reports of `lab` (complete or not), `batches.csv`, the end
    /// of the TensorBoard log (when the run is complete) and `log.txt`: the
    /// files written, `log.txt` last so it can say how many there were.
    pub fn write(&mut self, lab: &Lab, complete: bool) -> Result<Vec<PathBuf>> {
        let dir = self.dir.path().to_path_buf();
        let mut written = crate::run::dir::write_reports(lab, &dir, self.dir.info(complete))?;
        crate::fs::atomic_write(&dir.join("batches.csv"), self.batches.as_bytes())?;
        written.push(dir.join("batches.csv"));
        if let Some(tb) = &mut self.tb {
            // The recipe, pictures and headline once the run is complete (a
            // TUI session that runs again adds them again, at its new step).
            if complete {
                finish_tensorboard(tb, lab, &dir)?;
            } else {
                tb.flush()?;
            }
            written.push(dir.join("tb"));
        }
        written.push(dir.join("log.txt"));
        self.line(format!("wrote {} files to {}", written.len(), dir.display()));
        crate::fs::atomic_write(&dir.join("log.txt"), (self.log.join("\n") + "\n").as_bytes())?;
        Ok(written)
    }
}

impl StepRecorder for RunRecorder {
    fn begin_step(&mut self, lab: &Lab, index: usize) {
        RunRecorder::begin_step(self, lab, index);
    }
    fn end_step(&mut self, result: std::result::Result<&StepResult, &Error>) {
        RunRecorder::end_step(self, result);
    }
    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Lab {
    /// Keeps this lab's run in `dir` from now on, as `tlab run` keeps its
    /// run directory: every step's lines in log.txt, every batch in
    /// batches.csv, the TensorBoard log, a checkpoint after every epoch
    /// (`tlab run --resume DIR` continues it). [`Lab::save_run`] writes the
    /// reports.
    pub fn record_to(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let recorder = RunRecorder::open(dir.as_ref(), self.recipe(), false)?;
        self.set_recorder(Some(Box::new(recorder)));
        Ok(())
    }

    /// Leaves this lab's run in `dir` as `tlab run` would: the reports, the
    /// pictures, the model, status.json, log.txt, batches.csv and tb/ (with
    /// what [`Lab::record_to`] recorded when it was called with this `dir`).
    /// Complete when every step has a result.
    pub fn save_run(&mut self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let complete = self.results().count() == self.recipe().steps.len();
        let mut attached = self.take_recorder();
        let recorded = attached
            .as_mut()
            .and_then(|r| r.as_any().downcast_mut::<RunRecorder>())
            .filter(|r| r.path() == dir.as_ref());
        let written = match recorded {
            Some(r) => r.write(self, complete),
            None => RunRecorder::open(dir.as_ref(), self.recipe(), false).and_then(|mut r| r.write(self, complete)),
        };
        self.set_recorder(attached);
        written
    }
}

impl Observer for RunRecorder {
    fn event(&mut self, event: Event) {
        if let Some(tb) = &mut self.tb {
            if let Err(e) = tb.observe(&event) {
                self.tb = None;
                self.line(format!("  warning: TensorBoard log stopped: {e}"));
            }
        }
        if let Event::Batch { epoch, batch, loss, lr, .. } = &event {
            self.batches.push_str(&format!("{},{epoch},{batch},{lr:e},{loss}\n", self.step + 1));
        }
        if let Some(line) = event_line(&event) {
            self.line(line);
        }
    }

    fn checkpoint(&mut self, state: &Checkpoint<'_>) -> Result<()> {
        self.dir.checkpoint(self.step, &self.earlier, state)
    }
}

/// The log line of an event, if it has one: messages and epoch rows.
pub fn event_line(event: &Event) -> Option<String> {
    match event {
        Event::Log(s) => Some(format!("  {s}")),
        Event::Epoch(r) => Some(format!("  {}", crate::present::rows::epoch_line(r))),
        _ => None,
    }
}

/// The lines that say how a step ended: its outcome and time, or its error.
pub fn step_lines(result: std::result::Result<&StepResult, &Error>) -> Vec<String> {
    match result {
        Ok(r) => {
            let mut lines: Vec<String> =
                crate::lab::cells::outcome_lines(&r.output).into_iter().map(|l| format!("  {l}")).collect();
            lines.push(format!("  ✓ {:.1}s", r.seconds));
            lines
        }
        Err(e) => vec![format!("  ✗ {e}")],
    }
}

/// The end of a run in TensorBoard: the recipe as text, the pictures, and
/// the evaluation's headline numbers.
fn finish_tensorboard(tb: &mut EventWriter, lab: &Lab, dir: &Path) -> Result<()> {
    let step = lab.history_ref().len() as i64;
    let recipe = std::fs::read_to_string(&lab.recipe().path).unwrap_or_default();
    // Indented: TensorBoard renders text as Markdown, and TOML is code.
    let block: String = recipe.lines().map(|l| format!("    {l}\n")).collect();
    tb.text("recipe", 0, &block)?;
    // The pictures write_reports just wrote, read back rather than drawn again.
    for name in PICTURES {
        let Ok(png) = std::fs::read(dir.join(name)) else { continue };
        let Ok((w, h)) = image::ImageReader::new(std::io::Cursor::new(&png))
            .with_guessed_format()
            .map_err(drop)
            .and_then(|r| r.into_dimensions().map_err(drop))
        else {
            continue;
        };
        tb.image(name.trim_end_matches(".png"), step, png, w, h)?;
    }
    if let Some(eval) = lab.evaluation_ref() {
        tb.scalar("evaluate/accuracy", step, eval.metrics.accuracy)?;
        tb.scalar("evaluate/macro_f1", step, eval.metrics.macro_avg.f1)?;
        tb.scalar("evaluate/ece", step, eval.metrics.calibration.ece)?;
    }
    tb.flush()
}
