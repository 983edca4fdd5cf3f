//! The TUI's state and its transitions. Every input (a key, a message from the
//! engine thread, a settled file change) is a [`Msg`]; [`App::update`] changes
//! the state and returns the [`Effect`]s the event loop carries out (commands
//! for the worker, the log, the watcher, the image cache). Pure (no terminal,
//! no threads, no files), so it is unit-tested.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::lab::{StepOutput, StepResult};
use crate::recipe::Recipe;
use crate::recipe::StepType;
use crate::train::{EpochRecord, Event};

/// What a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    RunToSelected,
    RunNext,
    RunAll,
    Rerun,
    Cancel,
    NextTab,
    PrevTab,
    Edit,
    Resample,
    ToggleAutorun,
    ToggleNormalised,
    ToggleGradCam,
    Runs,
    Tune,
    LabelIssues,
    CycleSort,
    Help,
    Quit,
}

impl Action {
    /// The action bound to `key` in [`KEY_MAP`] (Ctrl-C also quits).
    pub fn from_key(key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        KEY_MAP.iter().find(|b| b.keys.contains(&key.code)).map(|b| b.action)
    }
}

/// One key binding: the keys, how the help shows them, the action, what it
/// does, and its word in the status bar (for the most used ones).
pub struct Binding {
    pub keys: &'static [KeyCode],
    pub shown: &'static str,
    pub action: Action,
    pub help: &'static str,
    pub bar: Option<&'static str>,
}

const fn bind(
    keys: &'static [KeyCode],
    shown: &'static str,
    action: Action,
    help: &'static str,
    bar: Option<&'static str>,
) -> Binding {
    Binding { keys, shown, action, help, bar }
}

/// The key map: [`Action::from_key`] dispatches through it, and the `?`
/// help and the status bar are drawn from it, so they cannot drift apart.
pub const KEY_MAP: &[Binding] = {
    use Action::*;
    use KeyCode::{BackTab, Char, Down as ArrowDown, Enter, Esc, Tab, Up as ArrowUp};
    &[
        bind(&[Char('j'), ArrowDown], "j / ↓", Down, "select the next step", None),
        bind(&[Char('k'), ArrowUp], "k / ↑", Up, "select the previous step", None),
        bind(&[Enter], "Enter", RunToSelected, "run up to the selected step", Some("run")),
        bind(&[Char('n')], "n", RunNext, "run the next step", Some("next")),
        bind(&[Char('a')], "a", RunAll, "run all steps", Some("all")),
        bind(&[Char('r')], "r", Rerun, "re-run the selected step", None),
        bind(&[Char('c'), Esc], "c / Esc", Cancel, "cancel the running step (after the current batch)", Some("cancel")),
        bind(&[Tab], "Tab", NextTab, "next output tab", Some("tabs")),
        bind(&[BackTab], "Shift-Tab", PrevTab, "previous output tab", None),
        bind(&[Char('e')], "e", Edit, "edit the recipe in $EDITOR", Some("edit")),
        bind(&[Char('p')], "p", Resample, "re-sample the augmentation preview", None),
        bind(&[Char('w')], "w", ToggleAutorun, "toggle auto-run of stale steps", Some("auto")),
        bind(&[Char('v')], "v", ToggleNormalised, "confusion matrix: counts / row-normalised", None),
        bind(&[Char('g')], "g", ToggleGradCam, "mistakes: toggle the Grad-CAM overlay", None),
        bind(
            &[Char('R')],
            "R",
            Runs,
            "earlier runs of this recipe, and the recipe diff (j/k select, R/Esc close)",
            None,
        ),
        bind(
            &[Char('L')],
            "L",
            LabelIssues,
            "backbone step: rank the training images whose label a k-fold probe doubts (Labels tab)",
            None,
        ),
        bind(
            &[Char('T')],
            "T",
            Tune,
            "tune: search the recipe's [tune] keys on an inner split of train (T/Esc hide, c cancels)",
            Some("tune"),
        ),
        bind(&[Char('s')], "s", CycleSort, "report: cycle the sort column", None),
        bind(&[Char('?')], "?", Help, "this help", Some("help")),
        bind(&[Char('q')], "q / Ctrl-C", Quit, "quit (asks while a step runs)", Some("quit")),
    ]
};

/// The status bar's key hints, from [`KEY_MAP`]: `Enter run · n next · …`.
pub(crate) fn key_hints() -> String {
    KEY_MAP
        .iter()
        .filter_map(|b| b.bar.map(|word| format!("{} {word}", b.shown.split(" / ").next().unwrap_or(b.shown))))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Commands for the engine thread.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run these steps in order (stop at the first failure or a cancel).
    Run(Vec<usize>),
    SetRecipe(Box<Recipe>),
    /// A data folder or weights file changed on disk.
    InputChanged(crate::recipe::Input),
    Preview {
        step: usize,
        seed: u64,
    },
    /// Tune the recipe file (`tlab tune` with its `[tune]` settings).
    Tune(std::path::PathBuf),
    /// `tlab data --label-issues` on the recipe, for backbone step `step`'s Labels tab.
    LabelIssues(usize),
    Cancel,
}

/// Every input the UI reacts to, as [`App::update`] takes it.
#[derive(Debug)]
pub enum Msg {
    /// A key bound in [`KEY_MAP`].
    Action(Action),
    /// A key with no binding: it closes the help or answers "no" to quitting.
    UnboundKey,
    /// The engine thread started step `i`.
    Started(usize),
    /// Progress of a running step.
    Event(usize, Event),
    Done(Box<StepResult>),
    Failed(usize, String),
    /// The engine finished its command (or cut it short for a reload).
    Idle,
    /// The recipe file, re-read once an edit settled, or why it did not parse;
    /// `took` is how long reading it took (for the log).
    RecipeRead {
        recipe: Result<Box<Recipe>, String>,
        took: Duration,
    },
    /// A data folder or weights file changed on disk.
    InputChanged(crate::recipe::Input),
    /// The earlier runs of the recipe, and the recipe file's current text.
    RunsLoaded {
        runs: Vec<crate::run::history::RunSummary>,
        current: String,
    },
    /// The data doctor's lines for the backbone step `step`'s Data tab.
    DataReport {
        step: usize,
        lines: Vec<String>,
    },
    /// What the label-issue probe of backbone step `step` found (or why not).
    LabelIssues {
        step: usize,
        status: String,
    },
    /// Progress of the running tune.
    Tune(crate::tools::tune::Progress),
    /// The tune ended: the final run's accuracy on valid (or why not), and
    /// the text of best.toml when one was written.
    TuneEnded {
        outcome: Result<Option<f64>, String>,
        best: Option<String>,
    },
}

impl From<Action> for Msg {
    fn from(action: Action) -> Msg {
        Msg::Action(action)
    }
}

/// Side effects the loop performs for an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Send(CommandKind),
    OpenEditor,
    /// Read the earlier runs of the recipe from disk (answered with [`Msg::RunsLoaded`]).
    LoadRuns,
    /// Forget the shown images of steps `from` on (their outputs changed).
    ClearImagesFrom(usize),
    /// Watch the inputs (data folders, weights files) of the current recipe.
    WatchInputs,
    /// A line for the session's `tui.log`.
    Log(String),
    Quit,
}

/// [`Command`] without its payload, which the loop takes from the [`App`]
/// (the recipe, the preview seed): for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    Run(Vec<usize>),
    Preview(usize),
    /// The app's current recipe.
    SetRecipe,
    InputChanged(crate::recipe::Input),
    Tune,
    LabelIssues(usize),
    Cancel,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Pending,
    Running { since: Instant },
    Done { seconds: f64, cancelled: bool },
    Failed(String),
}

/// The Runs popup's state: earlier runs (newest first) and the selection.
#[derive(Debug, Clone, PartialEq)]
pub struct RunsView {
    pub runs: Vec<crate::run::history::RunSummary>,
    pub selected: usize,
    /// The recipe file's current text, diffed against each run's.
    pub current: String,
}

/// The Tune view (`T`): the leaderboard of the running or last tune, and
/// the best recipe against the one it started from.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneView {
    /// Shown (`T` hides and shows it; the tune goes on either way).
    pub open: bool,
    pub keys: Vec<String>,
    pub rows: Vec<crate::tools::tune::Row>,
    /// The last progress lines.
    pub lines: Vec<String>,
    pub dir: Option<PathBuf>,
    /// The recipe file's text when the tune started.
    pub original: String,
    pub started: Instant,
    /// `None` while it runs; then the final accuracy on valid, or the error.
    pub ended: Option<Result<Option<f64>, String>>,
    /// best.toml's text, once written.
    pub best: Option<String>,
}

/// Live training progress of a fine_tune step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveProgress {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches: usize,
    pub loss: f64,
    pub accuracy: f64,
    pub epoch_started: Option<Instant>,
}

impl LiveProgress {
    /// Estimated time left in the step, from the pace of the current epoch.
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        let started = self.epoch_started?;
        if self.batch == 0 || self.batches == 0 {
            return None;
        }
        let per_batch = now.duration_since(started).as_secs_f64() / self.batch as f64;
        let left = (self.batches - self.batch) + (self.epochs - self.epoch) * self.batches;
        Some(Duration::from_secs_f64(per_batch * left as f64))
    }
}

/// One recipe step as a notebook cell.
#[derive(Debug, Clone)]
pub struct Cell {
    pub kind: StepType,
    pub summary: String,
    pub fingerprint: u64,
    pub status: Status,
    /// Outputs are from a recipe version that has since changed.
    pub stale: bool,
    pub log: Vec<String>,
    pub progress: LiveProgress,
    pub history: Vec<EpochRecord>,
    pub result: Option<StepResult>,
    /// The last good outputs while the step re-runs, put back if the re-run fails.
    pub previous: Option<Box<Cell>>,
    /// A backbone step's data doctor report (its Data tab), once examined.
    pub data_report: Option<Vec<String>>,
    /// The label-issue probe's state or summary (its Labels tab), once asked for.
    pub labels: Option<String>,
}

impl Cell {
    fn new(kind: StepType, summary: String, fingerprint: u64) -> Self {
        Cell {
            kind,
            summary,
            fingerprint,
            status: Status::Pending,
            stale: false,
            log: Vec::new(),
            progress: LiveProgress::default(),
            history: Vec::new(),
            result: None,
            previous: None,
            data_report: None,
            labels: None,
        }
    }

    pub fn tabs(&self) -> &'static [Tab] {
        match self.kind {
            StepType::Backbone => &[Tab::Data, Tab::Labels, Tab::Log],
            StepType::Augment => &[Tab::Preview, Tab::Log],
            StepType::FineTune | StepType::LrFind => &[Tab::Progress, Tab::Charts, Tab::Log],
            StepType::Evaluate => &[Tab::Confusion, Tab::Report, Tab::Mistakes, Tab::Log],
            _ => &[Tab::Log],
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.status, Status::Done { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Log,
    Progress,
    Charts,
    Preview,
    Confusion,
    Report,
    Mistakes,
    Data,
    Labels,
}

impl Tab {
    /// Where this tab is among `tabs` (0 when absent).
    fn index_in(self, tabs: &[Tab]) -> usize {
        tabs.iter().position(|t| *t == self).unwrap_or(0)
    }

    pub fn title(self) -> &'static str {
        match self {
            Tab::Log => "Log",
            Tab::Progress => "Progress",
            Tab::Charts => "Charts",
            Tab::Preview => "Preview",
            Tab::Confusion => "Confusion",
            Tab::Report => "Report",
            Tab::Mistakes => "Mistakes",
            Tab::Data => "Data",
            Tab::Labels => "Labels",
        }
    }
}

/// How the recipe file relates to what is shown.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadState {
    Watching,
    Reloaded {
        at: Instant,
        first_changed: Option<usize>,
    },
    /// The file does not parse (or is gone): the last good recipe stays.
    Error(String),
}

/// Report table sort column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    #[default]
    Class,
    Precision,
    Recall,
    F1,
    Support,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Class => SortBy::Precision,
            SortBy::Precision => SortBy::Recall,
            SortBy::Recall => SortBy::F1,
            SortBy::F1 => SortBy::Support,
            SortBy::Support => SortBy::Class,
        }
    }
    /// The column of [`crate::present::rows::class_table`] this sorts by.
    pub fn column(self) -> usize {
        match self {
            SortBy::Class => 0,
            SortBy::Precision => 1,
            SortBy::Recall => 2,
            SortBy::F1 => 3,
            SortBy::Support => 5,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            SortBy::Class => "class",
            SortBy::Precision => "precision",
            SortBy::Recall => "recall",
            SortBy::F1 => "F1",
            SortBy::Support => "support",
        }
    }
}

pub struct App {
    /// The last recipe that parsed: what the cells show.
    pub recipe: Recipe,
    pub recipe_path: PathBuf,
    pub log_path: PathBuf,
    pub cells: Vec<Cell>,
    pub selected: usize,
    pub tab: usize,
    pub autorun: bool,
    pub normalised: bool,
    /// The Mistakes tab shows the Grad-CAM overlays.
    pub gradcam: bool,
    /// The Runs popup (`R`): earlier runs of this recipe and the selected one.
    pub runs: Option<RunsView>,
    /// The Tune view (`T`), from the first tune of the session on.
    pub tune: Option<TuneView>,
    pub sort: SortBy,
    pub help: bool,
    pub confirm_quit: bool,
    pub reload: ReloadState,
    /// A warning banner: inputs changed on disk, or a re-run failed and the
    /// last good outputs are shown instead.
    pub notice: Option<String>,
    pub running: Option<usize>,
    /// A run was requested and the worker has not reported idle since.
    pub pending: bool,
    pub preview_seed: u64,
    /// Redraw durations, for the status bar and the log.
    pub frame_times: Vec<Duration>,
    pub should_quit: bool,
}

impl App {
    pub fn new(recipe: &Recipe, log_path: PathBuf) -> Self {
        App {
            recipe: recipe.clone(),
            recipe_path: recipe.path.clone(),
            log_path,
            cells: recipe
                .steps
                .iter()
                .map(|s| Cell::new(s.kind.step_type(), s.kind.summary(), s.fingerprint))
                .collect(),
            selected: 0,
            tab: 0,
            autorun: false,
            normalised: false,
            gradcam: false,
            runs: None,
            tune: None,
            sort: SortBy::default(),
            help: false,
            confirm_quit: false,
            reload: ReloadState::Watching,
            notice: None,
            running: None,
            pending: false,
            preview_seed: recipe.seed,
            frame_times: Vec::new(),
            should_quit: false,
        }
    }

    pub(crate) fn selected_cell(&self) -> Option<&Cell> {
        self.cells.get(self.selected)
    }

    pub(crate) fn current_tab(&self) -> Tab {
        let tabs = self.cells.get(self.selected).map(Cell::tabs).unwrap_or(&[Tab::Log]);
        tabs[self.tab.min(tabs.len() - 1)]
    }

    /// Steps still to run to reach `target`, in order.
    fn pending_through(&self, target: usize) -> Vec<usize> {
        (0..=target.min(self.cells.len().saturating_sub(1)))
            .filter(|&i| !self.cells[i].is_done() || self.cells[i].stale)
            .collect()
    }

    /// Applies one input; returns what the loop must do.
    pub fn update(&mut self, msg: impl Into<Msg>) -> Vec<Effect> {
        match msg.into() {
            Msg::Action(action) => return self.act(action),
            Msg::UnboundKey => {
                self.help = false;
                self.confirm_quit = false;
            }
            Msg::Started(step) => self.on_step_started(step),
            Msg::Event(step, event) => self.on_event(step, event),
            Msg::Done(result) => self.on_step_done(*result),
            Msg::Failed(step, message) => self.on_step_failed(step, message),
            Msg::Idle => return self.on_idle(),
            Msg::RecipeRead { recipe: Ok(recipe), took } => return self.on_recipe_read(*recipe, took),
            Msg::RecipeRead { recipe: Err(message), .. } => {
                self.on_recipe_error(message.clone());
                return vec![Effect::Log(format!("reload failed: {message}"))];
            }
            Msg::InputChanged(input) => return self.on_input_changed(input),
            Msg::RunsLoaded { runs, current } => self.on_runs_loaded(runs, current),
            Msg::Tune(progress) => self.on_tune_progress(progress),
            Msg::LabelIssues { step, status } => {
                if let Some(cell) = self.cells.get_mut(step) {
                    cell.labels = Some(status);
                }
            }
            Msg::DataReport { step, lines } => {
                if let Some(cell) = self.cells.get_mut(step) {
                    cell.data_report = Some(lines);
                }
            }
            Msg::TuneEnded { outcome, best } => {
                if let Some(view) = &mut self.tune {
                    view.ended = Some(outcome);
                    view.best = best;
                }
            }
        }
        vec![]
    }

    /// A bound key's action.
    fn act(&mut self, action: Action) -> Vec<Effect> {
        if let Some(effects) = self.modal(action) {
            return effects;
        }
        let last = self.cells.len().saturating_sub(1);
        match action {
            Action::Up => {
                self.selected = self.selected.saturating_sub(1);
                self.tab = 0;
            }
            Action::Down => {
                self.selected = (self.selected + 1).min(last);
                self.tab = 0;
            }
            Action::NextTab => {
                let n = self.selected_cell().map(|c| c.tabs().len()).unwrap_or(1);
                self.tab = (self.tab + 1) % n;
            }
            Action::PrevTab => {
                let n = self.selected_cell().map(|c| c.tabs().len()).unwrap_or(1);
                self.tab = (self.tab + n - 1) % n;
            }
            Action::RunToSelected | Action::RunAll | Action::RunNext | Action::Rerun => return self.run_action(action),
            Action::Cancel => {
                if self.running.is_some() || self.tune.as_ref().is_some_and(|v| v.ended.is_none()) {
                    return vec![Effect::Send(CommandKind::Cancel)];
                }
            }
            Action::Edit => return vec![Effect::OpenEditor],
            Action::Resample => {
                self.preview_seed = self.preview_seed.wrapping_add(1);
                if let Some(i) = self.preview_step() {
                    return vec![Effect::Send(CommandKind::Preview(i))];
                }
            }
            Action::ToggleAutorun => {
                self.autorun = !self.autorun;
                if self.autorun {
                    return self.autorun_effects();
                }
            }
            Action::ToggleNormalised => self.normalised = !self.normalised,
            Action::ToggleGradCam => self.gradcam = !self.gradcam,
            Action::Runs => return vec![Effect::LoadRuns],
            Action::Tune => return self.start_tune(),
            Action::LabelIssues => return self.start_label_issues(),
            Action::CycleSort => self.sort = self.sort.next(),
            Action::Help => self.help = true,
            Action::Quit => {
                if self.running.is_some() {
                    self.confirm_quit = true;
                } else {
                    self.should_quit = true;
                    return vec![Effect::Quit];
                }
            }
        }
        vec![]
    }

    /// An action while a question, the runs popup or the help is open: what
    /// it does there (`Some`), or `None` when it goes on to the main view.
    fn modal(&mut self, action: Action) -> Option<Vec<Effect>> {
        if self.confirm_quit {
            self.confirm_quit = false;
            if action == Action::Quit {
                self.should_quit = true;
                return Some(vec![Effect::Send(CommandKind::Cancel), Effect::Quit]);
            }
            return Some(vec![]);
        }
        if let Some(view) = self.tune.as_mut().filter(|v| v.open) {
            match action {
                Action::Cancel if view.ended.is_none() => return Some(vec![Effect::Send(CommandKind::Cancel)]),
                Action::Quit => {}
                _ => {
                    view.open = false;
                    return Some(vec![]);
                }
            }
        }
        if let Some(view) = &mut self.runs {
            match action {
                Action::Up => view.selected = view.selected.saturating_sub(1),
                Action::Down => view.selected = (view.selected + 1).min(view.runs.len().saturating_sub(1)),
                // Quit closes the popup and then quits as usual.
                _ => self.runs = None,
            }
            if action != Action::Quit {
                return Some(vec![]);
            }
        }
        if self.help && action != Action::Quit {
            self.help = false;
            if action == Action::Help {
                return Some(vec![]);
            }
        }
        None
    }

    /// The run actions: the steps each one runs (stale ones included).
    fn run_action(&mut self, action: Action) -> Vec<Effect> {
        let last = self.cells.len().saturating_sub(1);
        let steps = match action {
            Action::RunToSelected => self.pending_through(self.selected),
            Action::RunAll => self.pending_through(last),
            Action::RunNext => match self.cells.iter().position(|c| !c.is_done() || c.stale) {
                Some(i) => self.pending_through(i),
                None => return vec![],
            },
            _ => {
                let mut steps = self.pending_through(self.selected);
                if !steps.contains(&self.selected) {
                    steps.push(self.selected);
                }
                steps
            }
        };
        self.run(steps)
    }

    /// The earlier runs of this recipe arrived (`runs` from the runs
    /// folder, newest first; `current` the recipe file's text): open the popup.
    fn on_runs_loaded(&mut self, runs: Vec<crate::run::history::RunSummary>, current: String) {
        let name = self.recipe.name.clone();
        let mine: Vec<_> = runs
            .into_iter()
            .filter(|r| {
                let stem = r.name.rsplitn(3, '-').nth(2).unwrap_or_default();
                stem == name || stem == format!("{name}-tui")
            })
            .collect();
        self.runs = Some(RunsView { runs: mine, selected: 0, current });
    }

    /// `T`: shows the tune view again while a tune runs, else starts one
    /// (when the engine is free) on the recipe file as it is on disk.
    fn start_tune(&mut self) -> Vec<Effect> {
        if let Some(view) = self.tune.as_mut().filter(|v| v.ended.is_none()) {
            view.open = true;
            return vec![];
        }
        if self.running.is_some() || self.pending {
            self.notice = Some("a step is running: tune once it ends (or c cancels it)".into());
            return vec![];
        }
        self.pending = true;
        self.tune = Some(TuneView {
            open: true,
            keys: Vec::new(),
            rows: Vec::new(),
            lines: Vec::new(),
            dir: None,
            original: std::fs::read_to_string(&self.recipe_path).unwrap_or_default(),
            started: Instant::now(),
            ended: None,
            best: None,
        });
        vec![Effect::Send(CommandKind::Tune), Effect::Log("tune started".into())]
    }

    /// `L` on a backbone step that has run: the label-issue probe, shown
    /// in its Labels tab; refused while a step or tune runs.
    fn start_label_issues(&mut self) -> Vec<Effect> {
        let step = self.selected;
        let ready = self.cells.get(step).is_some_and(|c| c.kind == StepType::Backbone && c.is_done());
        if !ready {
            self.notice = Some("L: select a backbone step that has run".into());
            return vec![];
        }
        if self.running.is_some() || self.pending {
            self.notice = Some("a step is running: look for label issues once it ends (or c cancels it)".into());
            return vec![];
        }
        self.pending = true;
        let folds = crate::tools::doctor::labels::ProbeConfig::default().folds;
        self.cells[step].labels = Some(format!("probing: a {folds}-fold linear probe on the frozen features…"));
        self.tab = Tab::Labels.index_in(self.cells[step].tabs());
        vec![Effect::Send(CommandKind::LabelIssues(step)), Effect::Log("label issues started".into())]
    }

    fn on_tune_progress(&mut self, progress: crate::tools::tune::Progress) {
        let Some(view) = &mut self.tune else { return };
        match progress {
            crate::tools::tune::Progress::Started { keys, dir } => {
                view.keys = keys;
                view.dir = Some(dir);
            }
            crate::tools::tune::Progress::Line(line) => {
                view.lines.push(line);
                let extra = view.lines.len().saturating_sub(3);
                view.lines.drain(..extra);
            }
            crate::tools::tune::Progress::Row(row) => view.rows.push(row),
        }
    }

    fn run(&mut self, steps: Vec<usize>) -> Vec<Effect> {
        if steps.is_empty() || self.running.is_some() || self.pending {
            return vec![];
        }
        self.pending = true;
        vec![Effect::Send(CommandKind::Run(steps))]
    }

    /// The augment step whose preview is shown: the selected one, else the
    /// last done augment step.
    fn preview_step(&self) -> Option<usize> {
        if self.cells.get(self.selected).is_some_and(|c| c.kind == StepType::Augment && c.is_done()) {
            return Some(self.selected);
        }
        self.cells.iter().rposition(|c| c.kind == StepType::Augment && c.is_done())
    }

    /// With auto-run on: re-run stale steps (up to the last stale one).
    /// A step that failed since its inputs last changed is not retried by
    /// itself (that would loop); the next edit or file change makes it stale.
    fn autorun_effects(&mut self) -> Vec<Effect> {
        let Some(last) = self.cells.iter().rposition(|c| c.stale) else { return vec![] };
        let steps = self.pending_through(last);
        let blocked = steps.iter().any(|&i| matches!(self.cells[i].status, Status::Failed(_)) && !self.cells[i].stale);
        if self.running.is_some() || blocked {
            return vec![];
        }
        self.run(steps)
    }

    /// A step started on the worker.
    fn on_step_started(&mut self, step: usize) {
        self.running = Some(step);
        if let Some(c) = self.cells.get_mut(step) {
            c.previous = c.result.is_some().then(|| Box::new(Cell { previous: None, ..c.clone() }));
            c.status = Status::Running { since: Instant::now() };
            c.stale = false;
            c.log.clear();
            c.progress = LiveProgress::default();
            c.history.clear();
            c.result = None;
        }
    }

    /// A progress event from the worker.
    fn on_event(&mut self, step: usize, event: Event) {
        let Some(c) = self.cells.get_mut(step) else { return };
        match event {
            Event::Log(s) => c.log.push(s),
            Event::EpochStart { epoch, epochs, batches } => {
                c.progress = LiveProgress {
                    epoch,
                    epochs,
                    batch: 0,
                    batches,
                    epoch_started: Some(Instant::now()),
                    ..c.progress.clone()
                };
            }
            Event::Batch { epoch, batch, batches, loss, accuracy, .. } => {
                c.progress.epoch = epoch;
                c.progress.batch = batch;
                c.progress.batches = batches;
                c.progress.loss = loss;
                c.progress.accuracy = accuracy;
            }
            Event::Epoch(r) => {
                c.log.push(crate::present::rows::epoch_line(&r));
                c.history.push(r);
            }
        }
    }

    fn on_step_done(&mut self, result: StepResult) {
        let i = result.index;
        self.running = None;
        if let Some(c) = self.cells.get_mut(i) {
            let cancelled =
                matches!(&result.output, StepOutput::FineTune(o) if o.stop == crate::train::Stop::Cancelled);
            c.status = Status::Done { seconds: result.seconds, cancelled };
            c.stale = false;
            c.previous = None;
            c.summary = result.summary.clone();
            c.result = Some(result);
        }
        if !self.cells.iter().any(|c| c.stale || matches!(c.status, Status::Failed(_))) {
            self.notice = None;
        }
    }

    fn on_step_failed(&mut self, step: usize, message: String) {
        self.running = None;
        let Some(c) = self.cells.get_mut(step) else { return };
        match c.previous.take() {
            // A failed re-run: show the last good outputs again (stale) with
            // the error in the log and a banner. The engine kept that state too.
            Some(previous) => {
                let attempt = std::mem::take(&mut c.log);
                *c = Cell { status: Status::Failed(message.clone()), stale: false, ..*previous };
                c.log.push(format!(
                    "── re-run failed ({} lines of its log below); last good outputs shown ──",
                    attempt.len()
                ));
                c.log.extend(attempt);
                c.log.push(format!("✗ {message}"));
                self.notice =
                    Some(format!("step {} failed on re-run: {message} — showing its last good result", step + 1));
            }
            None => {
                c.log.push(format!("✗ {message}"));
                c.status = Status::Failed(message);
            }
        }
    }

    /// A data folder or weights file changed on disk: the worker hears of it
    /// (a running step that reads it stops after its batch), steps from the
    /// first that reads it on turn stale (kept, dimmed) and auto-run re-runs them.
    fn on_input_changed(&mut self, input: crate::recipe::Input) -> Vec<Effect> {
        let first = self.recipe.first_step_using(&input);
        let what = match &input {
            crate::recipe::Input::Data(p) => format!("data folder {}", crate::util::paths::shown(p).display()),
            crate::recipe::Input::Weights(p) => format!("weights file {}", crate::util::paths::shown(p).display()),
        };
        let mut effects =
            vec![Effect::Log(format!("{what} changed on disk: stale from step {:?}", first.map(|f| f + 1)))];
        let Some(first) = first else { return effects };
        if self.running.is_some_and(|r| r >= first) {
            effects.push(Effect::Send(CommandKind::Cancel));
        }
        effects.push(Effect::Send(CommandKind::InputChanged(input)));
        for c in self.cells.iter_mut().skip(first) {
            if !matches!(c.status, Status::Pending) {
                c.stale = true;
            }
        }
        let how = if self.autorun { "re-running" } else { "press a to re-run" };
        self.notice =
            Some(format!("{what} changed on disk: steps {}–{} are stale ({how})", first + 1, self.cells.len()));
        if self.autorun && self.running.is_none() {
            effects.extend(self.autorun_effects());
        }
        effects
    }

    /// The recipe file parsed after an edit: the worker gets the new recipe
    /// when a step changed (a running step from it on stops after its
    /// batch), the changed steps' images go, and the watcher follows the
    /// recipe's inputs.
    fn on_recipe_read(&mut self, recipe: Recipe, took: Duration) -> Vec<Effect> {
        let running = self.running;
        let (first, autorun) = self.on_recipe_changed(&recipe);
        let mut effects = vec![Effect::Log(format!(
            "reloaded in {:.1} ms: first changed step {:?}",
            took.as_secs_f64() * 1e3,
            first.map(|f| f + 1)
        ))];
        if let Some(first) = first {
            effects.push(Effect::ClearImagesFrom(first));
            if running.is_some_and(|r| r >= first) {
                effects.push(Effect::Send(CommandKind::Cancel));
            }
            effects.push(Effect::Send(CommandKind::SetRecipe));
        }
        effects.extend(autorun);
        effects.push(Effect::WatchInputs);
        effects
    }

    /// The worker finished a command (or aborted it for a reload).
    fn on_idle(&mut self) -> Vec<Effect> {
        self.running = None;
        self.pending = false;
        if self.autorun {
            self.autorun_effects()
        } else {
            vec![]
        }
    }

    /// A new version of the recipe parsed: cells from the first changed one
    /// on turn stale (their outputs stay, dimmed); added steps are pending.
    fn on_recipe_changed(&mut self, recipe: &Recipe) -> (Option<usize>, Vec<Effect>) {
        let first = self.recipe.step_index_of_first_change(recipe);
        self.recipe = recipe.clone();
        self.reload = ReloadState::Reloaded { at: Instant::now(), first_changed: first };
        self.recipe_path = recipe.path.clone();
        let Some(first) = first else { return (None, vec![]) };
        let mut cells: Vec<Cell> = Vec::with_capacity(recipe.steps.len());
        for (i, step) in recipe.steps.iter().enumerate() {
            let fresh = Cell::new(step.kind.step_type(), step.kind.summary(), step.fingerprint);
            match self.cells.get(i) {
                Some(old) if i < first => cells.push(old.clone()),
                Some(old) if old.kind == fresh.kind => {
                    // Same kind: keep the old outputs to show (dimmed) until re-run.
                    let had_output = !matches!(old.status, Status::Pending);
                    cells.push(Cell {
                        summary: fresh.summary,
                        fingerprint: fresh.fingerprint,
                        stale: had_output,
                        ..old.clone()
                    });
                }
                _ => cells.push(fresh),
            }
        }
        self.cells = cells;
        self.selected = self.selected.min(self.cells.len().saturating_sub(1));
        let effects = if self.autorun && self.running.is_none() { self.autorun_effects() } else { vec![] };
        (Some(first), effects)
    }

    fn on_recipe_error(&mut self, message: String) {
        self.reload = ReloadState::Error(message);
    }

    pub(crate) fn record_frame(&mut self, d: Duration) {
        if self.frame_times.len() >= 10_000 {
            self.frame_times.remove(0);
        }
        self.frame_times.push(d);
    }

    /// (median, max) redraw time over the session.
    pub(crate) fn frame_stats(&self) -> Option<(Duration, Duration)> {
        if self.frame_times.is_empty() {
            return None;
        }
        let mut v = self.frame_times.clone();
        v.sort();
        Some((v[v.len() / 2], *v.last().expect("non-empty")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_key_map_dispatches_every_key_it_shows_and_covers_every_action() {
        for b in KEY_MAP {
            for &code in b.keys {
                let key = KeyEvent::new(code, KeyModifiers::NONE);
                assert_eq!(Action::from_key(key), Some(b.action), "{code:?} ({})", b.shown);
            }
        }
        let every = [
            Action::Up,
            Action::Down,
            Action::RunToSelected,
            Action::RunNext,
            Action::RunAll,
            Action::Rerun,
            Action::Cancel,
            Action::NextTab,
            Action::PrevTab,
            Action::Edit,
            Action::Resample,
            Action::ToggleAutorun,
            Action::ToggleNormalised,
            Action::ToggleGradCam,
            Action::Runs,
            Action::Tune,
            Action::LabelIssues,
            Action::CycleSort,
            Action::Help,
            Action::Quit,
        ];
        for a in every {
            // Exhaustive: a new action fails to compile here until it is listed.
            match a {
                Action::Up | Action::Down | Action::RunToSelected | Action::RunNext | Action::RunAll => {}
                Action::Rerun | Action::Cancel | Action::NextTab | Action::PrevTab | Action::Edit => {}
                Action::Resample | Action::ToggleAutorun | Action::ToggleNormalised | Action::ToggleGradCam => {}
                Action::Runs | Action::Tune | Action::LabelIssues | Action::CycleSort | Action::Help => {}
                Action::Quit => {}
            }
            assert!(KEY_MAP.iter().any(|b| b.action == a), "{a:?} has no key");
        }
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(Action::from_key(ctrl_c), Some(Action::Quit));
        assert_eq!(Action::from_key(KeyEvent::new(KeyCode::Char('z'), KeyModifiers::NONE)), None);
        assert_eq!(
            key_hints(),
            "Enter run · n next · a all · c cancel · Tab tabs · e edit · w auto · T tune · ? help · q quit"
        );
    }

    const RECIPE: &str = r#"
name = "t"
[data]
train = "d"
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
[[step]]
kind = "freeze"
[[step]]
kind = "augment"
horizontal_flip = true
[[step]]
kind = "fine_tune"
epochs = 2
[[step]]
kind = "evaluate"
"#;

    fn recipe(text: &str) -> Recipe {
        crate::recipe::parse(text, Path::new("/tmp/r.toml")).unwrap()
    }

    fn key(c: char) -> Action {
        Action::from_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)).unwrap()
    }

    fn read(recipe: Recipe) -> Msg {
        Msg::RecipeRead { recipe: Ok(Box::new(recipe)), took: Duration::from_millis(2) }
    }

    fn done(app: &mut App, i: usize) {
        app.update(Msg::Started(i));
        let kind = app.cells[i].kind;
        let output = crate::lab::StepOutput::Augment { config: Default::default() };
        app.update(Msg::Done(Box::new(StepResult { index: i, kind, summary: "s".into(), seconds: 1.0, output })));
    }

    #[test]
    fn label_issues_wait_for_the_backbone_step_and_show_in_its_labels_tab() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        assert!(app.update(key('L')).is_empty(), "the backbone step has not run");
        assert!(app.notice.as_deref().is_some_and(|n| n.contains("backbone step that has run")));
        done(&mut app, 0);
        app.update(Msg::Idle);
        assert_eq!(
            app.update(key('L')),
            vec![Effect::Send(CommandKind::LabelIssues(0)), Effect::Log("label issues started".into())]
        );
        let cell = &app.cells[0];
        assert_eq!(cell.tabs()[app.tab], Tab::Labels);
        assert!(cell.labels.as_deref().is_some_and(|l| l.starts_with("probing")));
        assert!(app.update(key('n')).is_empty(), "no step runs while the probe does");
        app.update(Msg::LabelIssues { step: 0, status: "3 of 500 training images doubted".into() });
        app.update(Msg::Idle);
        assert_eq!(app.cells[0].labels.as_deref(), Some("3 of 500 training images doubted"));
        assert_eq!(app.update(key('n')), vec![Effect::Send(CommandKind::Run(vec![1]))]);
    }

    #[test]
    fn run_keys_ask_for_the_right_steps() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        assert_eq!(app.update(key('n')), vec![Effect::Send(CommandKind::Run(vec![0]))]);
        assert!(app.update(key('a')).is_empty(), "one run at a time");
        app.update(Msg::Idle);
        app.update(key('j'));
        app.update(key('j'));
        assert_eq!(app.update(Action::RunToSelected), vec![Effect::Send(CommandKind::Run(vec![0, 1, 2]))]);
        app.update(Msg::Idle);
        assert_eq!(app.update(key('a')), vec![Effect::Send(CommandKind::Run(vec![0, 1, 2, 3, 4]))]);
        app.update(Msg::Idle);
        done(&mut app, 0);
        done(&mut app, 1);
        assert_eq!(app.update(key('a')), vec![Effect::Send(CommandKind::Run(vec![2, 3, 4]))]);
        app.update(Msg::Idle);
        // Re-running a done step runs just it.
        app.selected = 1;
        assert_eq!(app.update(key('r')), vec![Effect::Send(CommandKind::Run(vec![1]))]);
    }

    #[test]
    fn nothing_new_starts_while_running_and_quit_asks() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        app.update(Msg::Started(0));
        assert!(app.update(key('a')).is_empty());
        assert_eq!(app.update(Action::Cancel), vec![Effect::Send(CommandKind::Cancel)]);
        assert!(app.update(key('q')).is_empty());
        assert!(app.confirm_quit && !app.should_quit);
        assert_eq!(app.update(key('q')), vec![Effect::Send(CommandKind::Cancel), Effect::Quit]);
        assert!(app.should_quit);
    }

    #[test]
    fn tabs_fit_the_step_and_wrap() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        app.selected = 4;
        assert_eq!(app.current_tab(), Tab::Confusion);
        app.update(Action::NextTab);
        assert_eq!(app.current_tab(), Tab::Report);
        app.update(Action::PrevTab);
        app.update(Action::PrevTab);
        assert_eq!(app.current_tab(), Tab::Log);
        app.update(key('k'));
        assert_eq!(app.current_tab(), Tab::Progress, "selecting another step resets the tab");
    }

    #[test]
    fn editing_augment_makes_it_and_later_steps_stale_and_autorun_reruns() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        for i in 0..5 {
            done(&mut app, i);
        }
        app.update(key('w'));
        assert!(app.autorun);
        let edited = recipe(&RECIPE.replace("horizontal_flip = true", "horizontal_flip = true\nrotation_range = 10"));
        let effects = app.update(read(edited));
        let stale: Vec<bool> = app.cells.iter().map(|c| c.stale).collect();
        assert_eq!(stale, vec![false, false, true, true, true]);
        assert!(app.cells[3].result.is_some(), "stale outputs are kept");
        assert_eq!(
            effects[1..],
            [
                Effect::ClearImagesFrom(2),
                Effect::Send(CommandKind::SetRecipe),
                Effect::Send(CommandKind::Run(vec![2, 3, 4])),
                Effect::WatchInputs
            ]
        );
        assert!(matches!(&effects[0], Effect::Log(l) if l.contains("first changed step Some(3)")), "{effects:?}");
    }

    #[test]
    fn an_edit_of_the_running_step_cancels_it_and_an_edit_after_it_does_not() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        done(&mut app, 0);
        app.update(Msg::Started(1));
        let later = recipe(&RECIPE.replace("epochs = 2", "epochs = 3"));
        let effects = app.update(read(later));
        assert!(!effects.contains(&Effect::Send(CommandKind::Cancel)), "step 4 changed, step 2 runs on");
        assert!(effects.contains(&Effect::Send(CommandKind::SetRecipe)));
        let freeze = recipe(&RECIPE.replace("kind = \"freeze\"", "kind = \"freeze\"\nup_to = 3"));
        let effects = app.update(read(freeze));
        assert!(effects.contains(&Effect::Send(CommandKind::Cancel)), "the running step changed: {effects:?}");
        assert!(app.cells[1].stale || matches!(app.cells[1].status, Status::Running { .. }));
    }

    #[test]
    fn unchanged_reload_and_errors_keep_state() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        done(&mut app, 0);
        let reformatted = recipe(&RECIPE.replace("epochs = 2", "epochs   =   2   # same"));
        let effects = app.update(read(reformatted));
        assert_eq!(effects.len(), 2, "a log line and the watcher, no command: {effects:?}");
        assert!(app.cells.iter().all(|c| !c.stale));
        app.update(Msg::RecipeRead { recipe: Err("r.toml:3:1: bad".into()), took: Duration::ZERO });
        assert!(matches!(app.reload, ReloadState::Error(_)));
        assert!(app.cells[0].is_done());
    }

    #[test]
    fn a_changed_input_marks_steps_stale_and_a_failed_rerun_shows_the_last_good_outputs() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        for i in 0..5 {
            done(&mut app, i);
        }
        app.update(key('w'));
        let weights = crate::recipe::Input::Weights("w.safetensors".into());
        let first = app.recipe.first_step_using(&crate::recipe::Input::Data("d".into()));
        assert_eq!(first, Some(0), "the backbone step reads the data");
        assert_eq!(app.recipe.first_step_using(&weights), None, "this recipe loads no weights file");
        assert!(matches!(app.update(Msg::InputChanged(weights))[..], [Effect::Log(_)]), "nothing reads it");
        let data = crate::recipe::Input::Data("d".into());
        let effects = app.update(Msg::InputChanged(data.clone()));
        assert!(app.cells.iter().all(|c| c.stale && c.result.is_some()));
        assert!(app.notice.as_deref().unwrap().contains("data folder d changed on disk"));
        assert_eq!(
            effects[1..],
            [
                Effect::Send(CommandKind::InputChanged(data.clone())),
                Effect::Send(CommandKind::Run(vec![0, 1, 2, 3, 4]))
            ]
        );

        // The re-run of step 1 fails: its last good outputs come back, with the error.
        app.update(Msg::Started(0));
        assert!(app.cells[0].result.is_none());
        app.update(Msg::Event(0, Event::Log("decoding".into())));
        app.update(Msg::Failed(0, "data/train/cat: no images".into()));
        let c = &app.cells[0];
        assert!(c.result.is_some() && matches!(c.status, Status::Failed(_)));
        assert!(c.log.last().unwrap().contains("no images") && c.log.iter().any(|l| l == "decoding"));
        assert!(app.notice.as_deref().unwrap().contains("step 1 failed on re-run"));
        // Auto-run does not retry the failed step by itself (no loop) …
        assert!(app.update(Msg::Idle).is_empty());
        // … until the input changes again; then a good re-run clears the banner.
        assert_eq!(app.update(Msg::InputChanged(data)).len(), 3, "log, tell the worker, re-run");
        for i in 0..5 {
            done(&mut app, i);
        }
        assert!(app.notice.is_none());
    }

    #[test]
    fn epoch_events_build_history_and_eta() {
        let mut app = App::new(&recipe(RECIPE), "/tmp/log".into());
        app.update(Msg::Started(3));
        app.update(Msg::Event(3, Event::EpochStart { epoch: 1, epochs: 2, batches: 10 }));
        app.update(Msg::Event(3, Event::Batch { epoch: 1, batch: 5, batches: 10, loss: 0.5, accuracy: 0.8, lr: 1e-3 }));
        assert!(app.cells[3].progress.eta(Instant::now() + Duration::from_secs(5)).unwrap() >= Duration::from_secs(14));
        let r = EpochRecord {
            epoch: 1,
            train_loss: 1.0,
            train_accuracy: 0.5,
            valid_loss: 0.9,
            valid_accuracy: 0.6,
            lr: 1e-3,
            seconds: 2.0,
        };
        app.update(Msg::Event(3, Event::Epoch(r)));
        assert_eq!(app.cells[3].history.len(), 1);
    }
}
