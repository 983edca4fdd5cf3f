//! `tlab tui RECIPE`: a notebook-like terminal UI whose cells are recipe steps.
//!
//! Threads and channels:
//! * the **engine** thread ([`worker`]) owns the `Lab` and runs steps;
//! * an **input** thread turns terminal events into messages;
//! * **notify** reports edits of the recipe file and changes to its data
//!   folders and weights files ([`watch`]);
//! * one **encoder** thread per shown image resizes and encodes it;
//! * the **UI** thread (here) owns the terminal: it receives every message on
//!   one channel, updates [`app::App`] and redraws. It never waits on work.
//!
//! Nothing is printed behind ratatui's back: the engine's messages go to the
//! cells and to `tui.log` in the run directory. A panic hook restores the
//! terminal before the panic message is printed.

pub mod app;
pub mod views;
pub mod watch;
pub mod worker;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::ExecutableCommand;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use ratatui_image::picker::Picker;
use ratatui_image::thread::ResizeResponse;

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::run::recorder::RunRecorder;
use app::{Action, App, Command, CommandKind, Effect, Msg};
use views::images::{ImageKey, Images};
use worker::FromWorker;

/// Everything the UI thread reacts to.
enum AppEvent {
    Input(TermEvent),
    Worker(FromWorker),
    FileChanged(watch::Changed),
    Resized(ImageKey, ResizeResponse),
}

/// How long the watcher waits for an editor's burst of writes to settle.
const DEBOUNCE: Duration = Duration::from_millis(150);

type Term = Terminal<CrosstermBackend<std::io::Stdout>>;

fn io_err(e: std::io::Error) -> Error {
    Error::io("terminal", e)
}

/// The terminal in raw mode on the alternate screen, for as long as this
/// lives: dropping it restores the shell's terminal on every way out (return,
/// error, unwinding). A panic hook restores it earlier still, so the panic
/// message prints on the normal screen.
struct Screen {
    term: Term,
}

impl Screen {
    fn enter() -> Result<Screen> {
        enable_raw_mode().map_err(io_err)?;
        let term = Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(|e| {
            leave_terminal();
            io_err(e)
        })?;
        // From here on, a failure leaves through `Drop`.
        let mut screen = Screen { term };
        std::io::stdout().execute(EnterAlternateScreen).map_err(io_err)?;
        screen.term.clear().map_err(io_err)?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        leave_terminal();
    }
}

fn leave_terminal() {
    let _ = disable_raw_mode();
    let _ = std::io::stdout().execute(LeaveAlternateScreen);
    let _ = std::io::stdout().execute(crossterm::cursor::Show);
}

/// Restores the terminal before the default panic message prints, so the
/// message is readable and the shell is usable afterwards.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        leave_terminal();
        default(info);
    }));
}

/// Runs the TUI on `recipe_path` until the user quits.
pub fn run(recipe_path: &Path) -> Result<()> {
    let recipe = crate::recipe::load(recipe_path)?;
    let run_dir =
        RunRecorder::open(&crate::run::files::default_run_dir(&format!("{}-tui", recipe.name)), &recipe, false)?;
    let log_path = run_dir.path().join("tui.log");
    let mut app = App::new(&recipe, log_path.clone());

    let (tx, rx) = mpsc::channel::<AppEvent>();
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let tx = tx.clone();
        let cancel = cancel.clone();
        let lab = Lab::new(recipe.clone());
        std::thread::Builder::new()
            .name("tlab-engine".into())
            .spawn(move || worker::run(lab, cmd_rx, move |m| drop(tx.send(AppEvent::Worker(m))), cancel, run_dir))
            .map_err(|e| Error::io("engine thread", e))?;
    }
    let watcher = {
        let tx = tx.clone();
        watch::Watch::new(&recipe, move |c| drop(tx.send(AppEvent::FileChanged(c))))
    };
    let mut log =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    if let Err(e) = &watcher {
        let _ = writeln!(log, "hot reload disabled: cannot watch {}: {e}", recipe.path.display());
    }
    let mut watcher = watcher.ok();

    install_panic_hook();
    let mut screen = Screen::enter()?;
    let picker = pick_image_protocol();
    let deliver_tx = tx.clone();
    let mut images =
        Images::new(picker, Arc::new(move |key, resp| drop(deliver_tx.send(AppEvent::Resized(key, resp)))));
    let _ = writeln!(log, "tui started on {} (images: {})", recipe.path.display(), images.protocol_name());

    let paused = Arc::new(AtomicBool::new(false));
    spawn_input(tx.clone(), paused.clone());

    let mut shell = Shell {
        terminal: &mut screen.term,
        rx: &rx,
        cmd_tx: &cmd_tx,
        cancel: &cancel,
        paused: &paused,
        log: &mut log,
        watcher: &mut watcher,
        reload_due: None,
        changed: Vec::new(),
    };
    let result = shell.event_loop(&mut app, &mut images);
    drop(screen);
    if let Some((median, max)) = app.frame_stats() {
        let _ = writeln!(
            log,
            "frames: {} drawn, median {:.2} ms, max {:.2} ms",
            app.frame_times.len(),
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    cancel.store(true, Ordering::Relaxed);
    drop(watcher);
    result
}

/// Chooses how images are drawn: kitty, sixel or iTerm2 when the terminal
/// answers ratatui-image's capability query, half-blocks otherwise.
///
/// The query runs on a helper thread that keeps reading stdin when a terminal
/// never answers (a detached tmux pane, the Linux console), swallowing the
/// user's next key. So it is only sent where an answer is expected;
/// `TLAB_IMAGES=query` forces it and `TLAB_IMAGES=halfblocks` skips it.
fn pick_image_protocol() -> Picker {
    let forced = std::env::var("TLAB_IMAGES").ok();
    let term = std::env::var("TERM").unwrap_or_default();
    let likely_silent = std::env::var_os("TMUX").is_some() || term.is_empty() || term == "dumb" || term == "linux";
    match forced.as_deref() {
        Some("halfblocks") => Picker::halfblocks(),
        Some("query") => Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks()),
        _ if likely_silent => Picker::halfblocks(),
        // In raw mode, before the input thread starts reading stdin.
        _ => Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks()),
    }
}

/// Reads terminal events on its own thread; `paused` lets an external editor have stdin.
fn spawn_input(tx: Sender<AppEvent>, paused: Arc<AtomicBool>) {
    std::thread::spawn(move || loop {
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(30));
            continue;
        }
        match event::poll(Duration::from_millis(50)) {
            Ok(true) => match event::read() {
                Ok(ev) => {
                    if tx.send(AppEvent::Input(ev)).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            Ok(false) => {}
            Err(_) => return,
        }
    });
}

/// The TUI's side of the world: the terminal, the engine's channels and
/// flags, the log and the file watcher. [`App`] decides; this carries out
/// what it decides (its [`Effect`]s) and feeds it every event.
struct Shell<'a> {
    terminal: &'a mut Term,
    rx: &'a mpsc::Receiver<AppEvent>,
    cmd_tx: &'a Sender<Command>,
    cancel: &'a AtomicBool,
    paused: &'a AtomicBool,
    log: &'a mut std::fs::File,
    watcher: &'a mut Option<watch::Watch>,
    /// When the debounced reload is due, and what changed since its timer started.
    reload_due: Option<Instant>,
    changed: Vec<watch::Changed>,
}

impl Shell<'_> {
    /// Draw, wait for events, handle them, carry out the effects; until quit.
    fn event_loop(&mut self, app: &mut App, images: &mut Images) -> Result<()> {
        loop {
            let t0 = Instant::now();
            self.terminal.draw(|f| views::draw(f, app, images)).map_err(io_err)?;
            app.record_frame(t0.elapsed());
            let mut effects = Vec::new();
            if !self.receive(app, images, &mut effects) {
                return Ok(());
            }
            self.reload_if_due(app, &mut effects);
            for effect in effects {
                if self.apply(effect, app, images)? {
                    return Ok(());
                }
            }
            if app.should_quit {
                return Ok(());
            }
        }
    }

    /// Waits for an event (ticking for spinners and the reload debounce),
    /// then handles it and whatever else is queued before the next redraw.
    /// False when the senders are gone.
    fn receive(&mut self, app: &mut App, images: &mut Images, effects: &mut Vec<Effect>) -> bool {
        let timeout =
            self.reload_due.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_millis(100));
        let rx = self.rx;
        match rx.recv_timeout(timeout) {
            Ok(ev) => {
                self.handle(ev, app, images, effects);
                while let Ok(ev) = rx.try_recv() {
                    self.handle(ev, app, images, effects);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Turns an event into the app's [`Msg`], except what only the shell
    /// keeps: images for the image cache, and file changes until the debounce
    /// has passed.
    fn handle(&mut self, ev: AppEvent, app: &mut App, images: &mut Images, effects: &mut Vec<Effect>) {
        let msg = match ev {
            AppEvent::Input(TermEvent::Key(k)) if k.kind == KeyEventKind::Press => match Action::from_key(k) {
                Some(action) => Msg::Action(action),
                None => Msg::UnboundKey,
            },
            AppEvent::Input(_) => return,
            AppEvent::Worker(m) => match m {
                FromWorker::Started(i) => Msg::Started(i),
                FromWorker::Event(i, e) => Msg::Event(i, e),
                FromWorker::Done(r) => Msg::Done(r),
                FromWorker::Failed(i, message) => Msg::Failed(i, message),
                FromWorker::Idle => Msg::Idle,
                FromWorker::Tune(p) => Msg::Tune(p),
                FromWorker::TuneEnded { outcome, best } => Msg::TuneEnded { outcome, best },
                FromWorker::Data { step, lines } => Msg::DataReport { step, lines },
                FromWorker::LabelIssues { step, status } => Msg::LabelIssues { step, status },
                FromWorker::Image { step, kind, image, captions } => return images.set(step, kind, image, captions),
            },
            AppEvent::FileChanged(c) => {
                if !self.changed.contains(&c) {
                    self.changed.push(c);
                }
                self.reload_due = Some(Instant::now() + DEBOUNCE);
                return;
            }
            AppEvent::Resized(key, resp) => return images.update(key, resp),
        };
        effects.extend(app.update(msg));
    }

    /// Once the debounce has passed: re-reads the recipe, or tells the app
    /// which input changed.
    fn reload_if_due(&mut self, app: &mut App, effects: &mut Vec<Effect>) {
        if self.reload_due.is_none_or(|d| Instant::now() < d) {
            return;
        }
        self.reload_due = None;
        for c in std::mem::take(&mut self.changed) {
            let msg = match c {
                watch::Changed::Recipe => {
                    let t0 = Instant::now();
                    // A recipe that does not parse (or a deleted file) shows a
                    // banner; the app keeps the last good recipe and state.
                    let recipe = crate::recipe::load(&app.recipe_path).map(Box::new).map_err(|e| e.to_string());
                    Msg::RecipeRead { recipe, took: t0.elapsed() }
                }
                watch::Changed::Input(input) => Msg::InputChanged(input),
            };
            effects.extend(app.update(msg));
        }
    }

    /// Carries out one effect; true to quit.
    fn apply(&mut self, effect: Effect, app: &mut App, images: &mut Images) -> Result<bool> {
        match effect {
            Effect::Send(CommandKind::Run(steps)) => {
                let _ = writeln!(self.log, "run steps {:?}", steps.iter().map(|s| s + 1).collect::<Vec<_>>());
                let _ = self.cmd_tx.send(Command::Run(steps));
            }
            Effect::Send(CommandKind::Preview(step)) => {
                let _ = self.cmd_tx.send(Command::Preview { step, seed: app.preview_seed });
            }
            Effect::Send(CommandKind::SetRecipe) => {
                let _ = self.cmd_tx.send(Command::SetRecipe(Box::new(app.recipe.clone())));
            }
            Effect::Send(CommandKind::InputChanged(input)) => {
                let _ = self.cmd_tx.send(Command::InputChanged(input));
            }
            Effect::Send(CommandKind::Tune) => {
                let _ = writeln!(self.log, "tune {}", app.recipe_path.display());
                let _ = self.cmd_tx.send(Command::Tune(app.recipe_path.clone()));
            }
            Effect::Send(CommandKind::LabelIssues(step)) => {
                let _ = self.cmd_tx.send(Command::LabelIssues(step));
            }
            Effect::Send(CommandKind::Cancel) => self.cancel.store(true, Ordering::Relaxed),
            Effect::OpenEditor => open_editor(self.terminal, &app.recipe_path, self.paused, self.log)?,
            Effect::LoadRuns => {
                // A few small files per run; the popup opens at once.
                let runs = crate::run::history::list(std::path::Path::new("runs")).unwrap_or_default();
                let current = std::fs::read_to_string(&app.recipe_path).unwrap_or_default();
                for effect in app.update(Msg::RunsLoaded { runs, current }) {
                    if self.apply(effect, app, images)? {
                        return Ok(true);
                    }
                }
            }
            Effect::ClearImagesFrom(step) => images.clear_from(step),
            Effect::WatchInputs => {
                if let Some(w) = self.watcher.as_mut() {
                    if let Err(e) = w.retarget(&app.recipe) {
                        let _ = writeln!(self.log, "cannot watch the recipe's inputs: {e}");
                    }
                }
            }
            Effect::Log(line) => {
                let _ = writeln!(self.log, "{line}");
            }
            Effect::Quit => return Ok(true),
        }
        Ok(false)
    }
}

/// Suspends the TUI, runs `$EDITOR` (or `vi`) on the recipe, and resumes.
fn open_editor(terminal: &mut Term, path: &PathBuf, paused: &AtomicBool, log: &mut std::fs::File) -> Result<()> {
    paused.store(true, Ordering::Relaxed);
    // Let the input thread finish its current poll before the editor takes stdin.
    std::thread::sleep(Duration::from_millis(60));
    leave_terminal();
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let mut parts = editor.split_whitespace();
    let program = parts.next().unwrap_or("vi");
    let status = std::process::Command::new(program).args(parts).arg(path).status();
    if let Err(e) = &status {
        let _ = writeln!(log, "cannot start editor `{editor}`: {e}");
    }
    enable_raw_mode().map_err(io_err)?;
    std::io::stdout().execute(EnterAlternateScreen).map_err(io_err)?;
    terminal.clear().map_err(io_err)?;
    paused.store(false, Ordering::Relaxed);
    Ok(())
}
