//! Progress on the terminal for `tlab run`: bars when stdout is a
//! terminal, plain lines otherwise. The run directory's files come from the
//! `RunRecorder` every event and line also goes to.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use tlab::run::recorder::RunRecorder;
use tlab::train::{Event, Observer};

/// Progress bars on a terminal, plain lines otherwise; the run directory's
/// files come from the [`RunRecorder`] every event and line also goes to.
pub struct Progress {
    pub bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    pub step_label: String,
    /// Set by SIGINT/SIGTERM: stop after the current batch.
    pub interrupted: Arc<AtomicBool>,
    pub recorder: RunRecorder,
}

impl Progress {
    pub fn new(recorder: RunRecorder) -> Self {
        let bars = std::io::stdout().is_terminal().then(|| {
            let multi = MultiProgress::new();
            let epoch = multi.add(ProgressBar::new(0));
            epoch.set_style(
                ProgressStyle::with_template("{prefix:>12} epoch {pos}/{len} [{bar:30}] {msg}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            let batch = multi.add(ProgressBar::new(0));
            batch.set_style(
                ProgressStyle::with_template("{prefix:>12} batch {pos}/{len} [{bar:30}] eta {eta} {msg}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            (multi, epoch, batch)
        });
        Progress { bars, step_label: String::new(), interrupted: Arc::new(AtomicBool::new(false)), recorder }
    }

    /// Shows `s` (the recorder has already logged it).
    pub fn show(&self, s: &str) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(s);
            }
            None => println!("{s}"),
        }
    }

    /// Shows and logs `s`.
    pub fn line(&mut self, s: String) {
        self.show(&s);
        self.recorder.line(s);
    }
}

impl Observer for Progress {
    fn cancelled(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    fn checkpoint(&mut self, state: &tlab::train::Checkpoint<'_>) -> tlab::Result<()> {
        self.recorder.checkpoint(state)
    }

    fn event(&mut self, event: Event) {
        if let Some(line) = tlab::run::recorder::event_line(&event) {
            self.show(&line);
        }
        match &event {
            Event::EpochStart { epoch, epochs, batches } => {
                if let Some((_, e, b)) = &self.bars {
                    e.set_length(*epochs as u64);
                    e.set_position(*epoch as u64 - 1);
                    e.set_prefix(self.step_label.clone());
                    b.set_length(*batches as u64);
                    b.set_position(0);
                    b.reset_eta();
                }
            }
            Event::Batch { batch, loss, accuracy, .. } => {
                if let Some((_, _, b)) = &self.bars {
                    b.set_position(*batch as u64);
                    b.set_message(format!("loss {loss:.4} acc {accuracy:.3}"));
                }
            }
            Event::Epoch(r) => {
                if let Some((_, e, _)) = &self.bars {
                    e.set_position(r.epoch as u64);
                    e.set_message(format!("valid acc {:.3}", r.valid_accuracy));
                }
            }
            Event::Log(_) => {}
        }
        self.recorder.event(event);
    }
}
