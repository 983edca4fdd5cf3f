//! `tlab tune`: a budgeted, seeded search over a recipe's keys.
//!
//! - **Honest by construction.** Trials train on the recipe's training
//!   images minus an inner split (stratified, `inner_split` of each class)
//!   and are scored on that inner split; the `valid` (and `test`) images are
//!   never listed, let alone read, during the search. The winning values are
//!   then written into `best.toml`, which trains once on all the training
//!   data and is evaluated on `valid` like any run (`final/`).
//! - **Successive halving** (Jamieson & Talwalkar 2016; the synchronous form
//!   of ASHA, Li et al. 2018, for one worker): a bracket starts
//!   `eta^(rungs-1)` trials on `1/eta^(rungs-1)` of the recipe's epochs; the
//!   best `1/eta` go on to the next rung with `eta` times the epochs, up to
//!   the recipe's own epochs. Brackets repeat until the budget or the trial
//!   count is spent. The first trials are drawn at random, later ones by
//!   TPE ([`sampler`]).
//! - **Against the recipe as written.** The recipe itself is trained on the
//!   same inner split at full epochs first, and `best.toml` takes the best
//!   trial's values only when that trial beats it on the same images beyond
//!   chance ([`baseline`]); otherwise it keeps the recipe as written.
//! - **Every trial is a run directory** (`trials/t003-r1/`, made by the same
//!   [`RunRecorder`](crate::run::recorder::RunRecorder) as `tlab run`'s), and trials hand the frozen-feature
//!   cache on, so trials that share a frozen prefix and image size compute
//!   the frozen features once.
//! - **Crash-safe.** `tune.csv` gets a row per finished trial and rung
//!   (written atomically); `tlab tune --resume DIR` replays the seeded search,
//!   taking finished rows from the file instead of training them again.

pub mod baseline;
mod charts;
pub mod sampler;
pub mod space;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use toml_edit::{DocumentMut, Item, Value};

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::recipe::{self, StepKind};
use crate::run::files;
use baseline::{Baseline, Comparison};
use sampler::Sampler;
use space::{Coord, Space, Target};

/// What a tune is asked for on the command line (overriding `[tune]`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub budget: Option<Duration>,
    pub trials: Option<usize>,
    pub rungs: Option<usize>,
    pub eta: Option<usize>,
}

/// What a tune reports as it goes (to `tlab tune`'s lines, the TUI's Tune
/// view, a notebook).
#[derive(Debug, Clone)]
pub enum Progress {
    /// The searched keys and the tune directory, before the first trial.
    Started { keys: Vec<String>, dir: PathBuf },
    /// A line of progress: what `tlab tune` prints.
    Line(String),
    /// A trial finished a rung (after its line).
    Row(Row),
}

/// One finished trial at one rung: a row of `tune.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub trial: usize,
    pub rung: usize,
    /// The share of the recipe's epochs this rung trains, e.g. `1/9`.
    pub share: String,
    /// Accuracy on the inner split.
    pub score: f64,
    pub seconds: f64,
    /// The searched values, in the space's order, as TOML writes them.
    pub values: Vec<String>,
}

/// How a tune ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub dir: PathBuf,
    pub rows: Vec<Row>,
    /// The searched keys' names, in the order of [`Row::values`].
    pub keys: Vec<String>,
    /// The winning trial and its inner-split score at its highest rung.
    pub best: Option<(usize, f64)>,
    /// The recipe as written, scored on the inner split at full epochs.
    pub baseline: Option<Baseline>,
    /// The best trial against the recipe as written, image by image.
    pub comparison: Option<Comparison>,
    /// `best.toml`'s accuracy on `valid`, trained on all the training data.
    pub final_accuracy: Option<f64>,
    /// Interrupted (Ctrl-C): `--resume` continues.
    pub interrupted: bool,
    /// What was searched (for the pictures).
    pub space: Space,
    pub rungs: usize,
}

impl Outcome {
    /// The trial whose values `best.toml` holds: the best one, when it beat
    /// the recipe as written beyond chance (or `against_recipe = false`);
    /// `None` keeps the recipe as written.
    pub fn chosen(&self) -> Option<usize> {
        match self.space.settings.against_recipe {
            true => self.comparison.filter(Comparison::convincing).map(|c| c.trial),
            false => self.best.map(|(trial, _)| trial),
        }
    }

    /// The leaderboard as Markdown (tune.md's table and verdict).
    pub(crate) fn to_markdown(&self) -> String {
        summary_markdown(self)
    }

    /// `scores.png`: the inner-split score against each searched key.
    pub(crate) fn scores_png(&self) -> image::RgbImage {
        charts::scores_chart(self, &self.space)
    }

    /// `trials.png`: each trial's score rung by rung.
    pub(crate) fn trials_png(&self) -> image::RgbImage {
        charts::trials_chart(self, self.rungs)
    }

    /// A notebook cell's view: the leaderboard and both pictures.
    pub fn blocks(&self) -> Result<Vec<crate::present::views::Block>> {
        use crate::present::views::{escape, img_tag, Block};
        let mut html =
            String::from("<table><tr><th>trial</th><th>rung</th><th>share</th><th>inner accuracy</th><th>s</th>");
        for k in &self.keys {
            html += &format!("<th>{}</th>", escape(k));
        }
        html += "</tr>";
        for r in leaderboard(&self.rows) {
            html += &format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.1}</td>",
                r.trial + 1,
                r.rung,
                r.share,
                r.score,
                r.seconds
            );
            html += &r.values.iter().map(|v| format!("<td>{}</td>", escape(v))).collect::<String>();
            html += "</tr>";
        }
        html += "</table>";
        html += &format!("<p>{}</p>", escape(verdict(self).trim()));
        if !self.rows.is_empty() {
            html += &img_tag(&self.scores_png(), "score against each key")?;
            html += &img_tag(&self.trials_png(), "each trial rung by rung")?;
        }
        Ok(vec![Block::text(self.to_markdown()), Block::html(html)])
    }
}

crate::present::views::evcxr_display!(Outcome);

impl Lab {
    /// Tunes this lab's recipe (its file's `[tune]` table, else the default
    /// space) into `runs/<name>-tune-<timestamp>`, printing a line per trial
    /// and rung, as `tlab tune` does; the outcome shows its leaderboard and
    /// pictures in a notebook cell.
    pub fn tune(&self, opts: &Options) -> Result<Outcome> {
        let dir = files::default_run_dir(&format!("{}-tune", self.recipe().name));
        let path = self.recipe().path.clone();
        let mut print = |p: Progress| {
            if let Progress::Line(l) = p {
                println!("{l}");
            }
        };
        run(Some(&path), &dir, false, opts, Arc::new(AtomicBool::new(false)), &mut print)
    }
}

/// The settings a tune directory records, so `--resume` needs only the folder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Saved {
    recipe: PathBuf,
    budget_seconds: Option<f64>,
    trials: Option<usize>,
    rungs: usize,
    eta: usize,
}

/// A tune in progress.
struct Tune<'a> {
    dir: PathBuf,
    recipe_path: PathBuf,
    text: String,
    space: Space,
    rungs: usize,
    eta: usize,
    budget: Option<Duration>,
    max_trials: usize,
    /// Finished rows by (trial, rung), from tune.csv and this process.
    done: HashMap<(usize, usize), Row>,
    /// Points by trial id, as sampled.
    points: Vec<Vec<Coord>>,
    /// Seconds spent in trials, earlier processes' included.
    spent: f64,
    baseline: Option<Baseline>,
    features: crate::train::cache::FeatureCache,
    cancel: Arc<AtomicBool>,
    say: &'a mut dyn FnMut(Progress),
}

/// Starts a tune of the recipe at `recipe_path` in `dir` (or with `resume`
/// continues the one there); `say` gets the progress lines, `cancel` stops
/// it after the current batch.
pub fn run(
    recipe_path: Option<&Path>,
    dir: &Path,
    resume: bool,
    opts: &Options,
    cancel: Arc<AtomicBool>,
    say: &mut dyn FnMut(Progress),
) -> Result<Outcome> {
    let mut tune = Tune::open(recipe_path, dir, resume, opts, cancel, say)?;
    let keys = tune.space.params.iter().map(|p| p.name.clone()).collect();
    (tune.say)(Progress::Started { keys, dir: dir.to_path_buf() });
    tune.write_inner_split()?;
    let interrupted = !(tune.run_baseline()? && tune.search()?);
    let mut outcome = tune.outcome(interrupted);
    if !interrupted {
        outcome.comparison = tune.comparison(&outcome)?;
        outcome.final_accuracy = tune.final_run(&outcome)?;
    }
    tune.write_summary(&outcome)?;
    Ok(outcome)
}

/// Reads the `[tune]` table of a recipe file (what `tlab check` does).
pub fn check(recipe_path: &Path) -> std::result::Result<Space, recipe::RecipeError> {
    let text = std::fs::read_to_string(recipe_path)
        .map_err(|source| recipe::RecipeError::Io { path: recipe_path.to_path_buf(), source })?;
    space::parse(&text, recipe_path)
}

impl<'a> Tune<'a> {
    fn open(
        recipe_path: Option<&Path>,
        dir: &Path,
        resume: bool,
        opts: &Options,
        cancel: Arc<AtomicBool>,
        say: &'a mut dyn FnMut(Progress),
    ) -> Result<Tune<'a>> {
        let saved: Option<Saved> = match resume {
            true => Some(read_json(&dir.join("tune.json"))?),
            false => None,
        };
        let recipe_path = match (recipe_path, &saved) {
            (Some(p), _) => crate::util::paths::absolute(p),
            (None, Some(s)) => s.recipe.clone(),
            (None, None) => return Err(Error::data(dir, "give a recipe to tune")),
        };
        let text = std::fs::read_to_string(&recipe_path).map_err(|e| Error::io(&recipe_path, e))?;
        let space = space::parse(&text, &recipe_path)?;
        let st = &space.settings;
        let eta = opts.eta.or(saved.as_ref().map(|s| s.eta)).unwrap_or(st.eta).max(2);
        let rungs = match opts.rungs.or(saved.as_ref().map(|s| s.rungs)).or(st.rungs) {
            Some(r) => r.max(1),
            None => space::default_rungs(&recipe::parse(&text, &recipe_path)?, eta),
        };
        let budget =
            opts.budget.or(saved.as_ref().and_then(|s| s.budget_seconds).map(Duration::from_secs_f64)).or(st.budget);
        let trials = opts.trials.or(saved.as_ref().and_then(|s| s.trials)).or(st.trials);
        // Neither a budget nor a count: one bracket.
        let max_trials = trials.unwrap_or(if budget.is_some() { usize::MAX } else { eta.pow(rungs as u32 - 1) });
        std::fs::create_dir_all(dir.join("trials")).map_err(|e| Error::io(dir, e))?;
        let record =
            Saved { recipe: recipe_path.clone(), budget_seconds: budget.map(|b| b.as_secs_f64()), trials, rungs, eta };
        let json = serde_json::to_string_pretty(&record).map_err(|source| Error::Json { what: "tune.json", source })?;
        crate::fs::atomic_write(&dir.join("tune.json"), json.as_bytes())?;
        let done = if resume { read_rows(&dir.join("tune.csv"))? } else { HashMap::new() };
        let baseline_file = dir.join("baseline.json");
        let baseline: Option<Baseline> = match resume && baseline_file.exists() {
            true => Some(read_json(&baseline_file)?),
            false => None,
        };
        let spent = done.values().map(|r| r.seconds).sum::<f64>() + baseline.map_or(0.0, |b| b.seconds);
        Ok(Tune {
            dir: dir.to_path_buf(),
            recipe_path,
            text,
            space,
            rungs,
            eta,
            budget,
            max_trials,
            done,
            points: Vec::new(),
            spent,
            baseline,
            features: crate::train::cache::FeatureCache::from_env(),
            cancel,
            say,
        })
    }

    /// `inner.csv`: the training images split into the trials' training and
    /// scoring parts (stratified, seeded by the recipe's seed).
    fn write_inner_split(&self) -> Result<()> {
        let recipe = recipe::parse(&self.text, &self.recipe_path)?;
        let (classes, train) = crate::data::training_listing(&recipe.data, recipe.seed)?;
        let mut per_class = vec![Vec::new(); classes.len()];
        for (path, label) in train {
            per_class[label].push(path);
        }
        let fraction = self.space.settings.inner_split;
        let (fit, score) = crate::data::stratified_split(per_class, fraction, recipe.seed ^ 0x1_7E5E);
        let mut csv = String::from("path,label,split\n");
        for (rows, split) in [(fit, "train"), (score, "valid")] {
            for (path, label) in rows {
                let path = crate::util::paths::absolute(&path).display().to_string();
                csv += &format!("{},{},{split}\n", crate::fs::csv_field(&path), crate::fs::csv_field(&classes[label]));
            }
        }
        crate::fs::atomic_write(&self.dir.join("inner.csv"), csv.as_bytes())
    }

    /// Runs brackets until the budget or the trial count is spent; `false`
    /// when cancelled.
    fn search(&mut self) -> Result<bool> {
        let started = Instant::now();
        let before = self.spent;
        let mut sampler = Sampler::new(self.seed(), self.space.params.len());
        let per_bracket = self.eta.pow(self.rungs as u32 - 1);
        while self.points.len() < self.max_trials {
            let n = per_bracket.min(self.max_trials - self.points.len());
            let first = self.points.len();
            for _ in 0..n {
                let scored = self.scored(sampler.startup, first);
                let point = sampler.next(&self.space.params, &scored);
                self.points.push(point);
            }
            let mut alive: Vec<usize> = (first..first + n).collect();
            for rung in 0..self.rungs {
                for &trial in &alive {
                    let elapsed = before + started.elapsed().as_secs_f64();
                    if !self.done.contains_key(&(trial, rung)) && self.over_budget(elapsed, rung) {
                        (self.say)(Progress::Line(format!("budget spent after {elapsed:.0}s: the search stops")));
                        return Ok(true);
                    }
                    if !self.trial(trial, rung)? {
                        return Ok(false);
                    }
                }
                alive = self.promoted(&alive, rung);
            }
        }
        Ok(true)
    }

    fn seed(&self) -> u64 {
        recipe::parse(&self.text, &self.recipe_path).map_or(0, |r| r.seed)
    }

    /// Whether a trial at `rung` would end past the budget, judged by the
    /// trials that ran at that rung (or at rung 0, times the epoch ratio).
    fn over_budget(&self, elapsed: f64, rung: usize) -> bool {
        let Some(budget) = self.budget else { return false };
        let mean = |r: usize| {
            let s: Vec<f64> = self.done.values().filter(|row| row.rung == r).map(|row| row.seconds).collect();
            (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64)
        };
        let estimate = mean(rung).or_else(|| mean(0).map(|m| m * (self.eta.pow(rung as u32)) as f64)).unwrap_or(0.0);
        elapsed + estimate > budget.as_secs_f64()
    }

    /// The best `1/eta` of `alive` by their score at `rung` (at least one).
    fn promoted(&self, alive: &[usize], rung: usize) -> Vec<usize> {
        let mut ranked: Vec<(usize, f64)> =
            alive.iter().filter_map(|&t| self.done.get(&(t, rung)).map(|r| (t, r.score))).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let keep = alive.len().div_ceil(self.eta).max(1);
        ranked.into_iter().take(keep).map(|(t, _)| t).collect()
    }

    /// The points with scores TPE learns from: those of the trials before
    /// `before` (the brackets that have ended, so a resumed tune draws the
    /// same points) at the highest rung with enough of them, else rung 0.
    fn scored(&self, enough: usize, before: usize) -> Vec<(Vec<Coord>, f64)> {
        let at = |rung: usize| -> Vec<(Vec<Coord>, f64)> {
            let mut rows: Vec<&Row> = self.done.values().filter(|r| r.rung == rung && r.trial < before).collect();
            rows.sort_by_key(|r| r.trial);
            rows.iter().filter_map(|r| self.points.get(r.trial).map(|p| (p.clone(), r.score))).collect()
        };
        (0..self.rungs).rev().map(at).find(|s| s.len() >= enough).unwrap_or_else(|| at(0))
    }

    /// Runs `trial` at `rung` (or takes its row from an earlier process);
    /// `false` when cancelled.
    fn trial(&mut self, trial: usize, rung: usize) -> Result<bool> {
        if let Some(row) = self.done.get(&(trial, rung)) {
            let (line, row) = (format!("{}  (done before)", self.row_line(row)), row.clone());
            (self.say)(Progress::Line(line));
            (self.say)(Progress::Row(row));
            return Ok(true);
        }
        let run_dir = self.trial_dir(trial, rung);
        let doc = self.with_values(trial)?;
        let Some((score, seconds)) = self.train(doc, rung, &run_dir)? else { return Ok(false) };
        let values = self.space.params.iter().zip(&self.points[trial]).map(|(p, c)| p.shown(c)).collect();
        let row = Row { trial, rung, share: self.share(rung), score, seconds, values };
        // The row is on disk before it is shown: a kill after the line
        // never loses the trial.
        let line = self.row_line(&row);
        self.done.insert((trial, rung), row.clone());
        self.write_rows()?;
        (self.say)(Progress::Line(line));
        (self.say)(Progress::Row(row));
        Ok(true)
    }

    /// The run directory of the recipe as written.
    fn recipe_dir(&self) -> PathBuf {
        self.dir.join("trials").join("recipe")
    }

    fn trial_dir(&self, trial: usize, rung: usize) -> PathBuf {
        self.dir.join("trials").join(format!("t{:03}-r{rung}", trial + 1))
    }

    /// Trains `doc` as an inner-split run at `rung` in `run_dir` (from
    /// scratch: a run cut short by a crash starts again): its inner score
    /// and seconds, `None` when cancelled.
    fn train(&mut self, doc: DocumentMut, rung: usize, run_dir: &Path) -> Result<Option<(f64, f64)>> {
        let _ = std::fs::remove_dir_all(run_dir);
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let text = self.inner_text(doc, rung, run_dir)?;
        let path = run_dir.join("recipe.toml");
        crate::fs::atomic_write(&path, text.as_bytes())?;
        let recipe = recipe::parse(&text, &path)?;
        let started = Instant::now();
        let mut lab = Lab::new(recipe);
        lab.set_feature_cache(std::mem::take(&mut self.features));
        lab.record_to(run_dir)?;
        let outcome = lab.run_rest(&mut Quiet(&self.cancel));
        self.features = lab.take_feature_cache();
        let cancelled = self.cancel.load(Ordering::Relaxed);
        lab.save_run(run_dir)?;
        if cancelled {
            return Ok(None);
        }
        outcome?;
        // A finished trial is never resumed (a cut-short one starts over), so
        // its per-epoch checkpoint (weights and optimizer state, about 35 MB
        // for MobileNetV2) only filled the disk: 1.6 GB of a 45-trial tune.
        let _ = std::fs::remove_dir_all(run_dir.join("checkpoint"));
        let score = lab.evaluation()?.metrics.accuracy;
        let seconds = started.elapsed().as_secs_f64();
        self.spent += seconds;
        Ok(Some((score, seconds)))
    }

    /// Trains the recipe as written on the inner split at full epochs into
    /// `trials/recipe/` (or takes `baseline.json` from an earlier process);
    /// `false` when cancelled.
    fn run_baseline(&mut self) -> Result<bool> {
        if !self.space.settings.against_recipe {
            return Ok(true);
        }
        let b = match self.baseline {
            Some(b) => b,
            None => {
                let run_dir = self.recipe_dir();
                let rung = self.rungs - 1;
                let Some((score, seconds)) = self.train(self.document()?, rung, &run_dir)? else { return Ok(false) };
                let b = Baseline { score, seconds };
                let json =
                    serde_json::to_string_pretty(&b).map_err(|source| Error::Json { what: "baseline.json", source })?;
                crate::fs::atomic_write(&self.dir.join("baseline.json"), json.as_bytes())?;
                self.baseline = Some(b);
                b
            }
        };
        (self.say)(Progress::Line(format!(
            "the recipe as written (all the epochs): inner accuracy {:.4}  {:>5.1}s",
            b.score, b.seconds
        )));
        Ok(true)
    }

    /// The best trial against the recipe as written, image by image.
    fn comparison(&mut self, outcome: &Outcome) -> Result<Option<Comparison>> {
        let (Some((trial, _)), Some(_)) = (outcome.best, self.baseline) else { return Ok(None) };
        let top = outcome.rows.iter().filter(|r| r.trial == trial).map(|r| r.rung).max().unwrap_or(0);
        let c = baseline::compare(&self.recipe_dir(), &self.trial_dir(trial, top), trial)?;
        (self.say)(Progress::Line(c.describe()));
        Ok(Some(c))
    }

    /// `1/9`, `1/3`, `1`: the share of the recipe's epochs at `rung`.
    fn share(&self, rung: usize) -> String {
        match self.eta.pow((self.rungs - 1 - rung) as u32) {
            1 => "1".into(),
            d => format!("1/{d}"),
        }
    }

    fn row_line(&self, r: &Row) -> String {
        let values: Vec<String> =
            self.space.params.iter().zip(&r.values).map(|(p, v)| format!("{}={v}", p.name)).collect();
        format!(
            "t{:03} rung {} ({} of the epochs)  inner accuracy {:.4}  {:>5.1}s  {}",
            r.trial + 1,
            r.rung,
            r.share,
            r.score,
            r.seconds,
            values.join(" ")
        )
    }

    /// The recipe an inner-split run trains: `doc` (the searched values
    /// set) with the data replaced by the inner split, evaluation on it,
    /// epochs scaled to the rung, and paths rebased into `run_dir`.
    fn inner_text(&self, mut doc: DocumentMut, rung: usize, run_dir: &Path) -> Result<String> {
        let label = run_dir.file_name().map_or("trial".into(), |n| n.to_string_lossy().into_owned());
        let base = self.recipe_path.parent().unwrap_or(Path::new(""));
        space::rebase_paths(&mut doc, base, run_dir);
        let name = doc.get("name").and_then(Item::as_str).unwrap_or("tune").to_string();
        doc["name"] = toml_edit::value(format!("{name}-{label}"));
        let data = doc.get_mut("data").and_then(Item::as_table_like_mut).ok_or_else(|| self.bad("no [data] table"))?;
        for key in ["train", "valid", "valid_split", "test", "csv", "max_per_class"] {
            data.remove(key);
        }
        data.insert(
            "csv",
            Item::Value(Value::from(crate::util::paths::absolute(&self.dir.join("inner.csv")).display().to_string())),
        );
        for i in 0.. {
            let Some(step) = space::step_mut(&mut doc, i) else { break };
            if step.get("kind").and_then(Item::as_str) == Some("evaluate") {
                step.remove("split");
            }
        }
        let text = doc.to_string();
        let parsed = recipe::parse(&text, &run_dir.join("recipe.toml"))?;
        let mut text = text;
        if !matches!(parsed.steps.last().map(|s| &s.kind), Some(StepKind::Evaluate(_))) {
            text.push_str(
                "\n[[step]]\nkind = \"evaluate\"   # added by tlab tune: trials are scored on the inner split\n",
            );
        }
        self.scaled(&text, rung, run_dir)
    }

    /// `text` with every fine_tune step's epochs scaled to `rung`'s share.
    fn scaled(&self, text: &str, rung: usize, run_dir: &Path) -> Result<String> {
        let divisor = self.eta.pow((self.rungs - 1 - rung) as u32) as f64;
        if divisor == 1.0 {
            return Ok(text.to_string());
        }
        let parsed = recipe::parse(text, &run_dir.join("recipe.toml"))?;
        let mut doc: DocumentMut = text.parse().map_err(|e| self.bad(&format!("{e}")))?;
        for (i, step) in parsed.steps.iter().enumerate() {
            let StepKind::FineTune(c) = &step.kind else { continue };
            let scale = |n: usize| ((n as f64 / divisor).round() as i64).max(1);
            let epochs = scale(c.epochs);
            let t = space::step_mut(&mut doc, i).ok_or_else(|| self.bad("a step table is missing"))?;
            t.insert("epochs", Item::Value(Value::from(epochs)));
            if c.freeze_epochs > 0 {
                t.insert("freeze_epochs", Item::Value(Value::from(scale(c.freeze_epochs))));
            }
            if c.schedule.warmup_epochs > 0 {
                let warmup = ((c.schedule.warmup_epochs as f64 / divisor).floor() as i64).min(epochs - 1).max(0);
                t.insert("warmup_epochs", Item::Value(Value::from(warmup)));
            }
        }
        let out = doc.to_string();
        recipe::parse(&out, &run_dir.join("recipe.toml"))?;
        Ok(out)
    }

    /// The recipe's document as written, `[tune]` removed.
    fn document(&self) -> Result<DocumentMut> {
        let mut doc: DocumentMut = self.text.parse().map_err(|e| self.bad(&format!("{e}")))?;
        doc.remove("tune");
        Ok(doc)
    }

    /// The recipe's document with `trial`'s values set, `[tune]` removed.
    fn with_values(&self, trial: usize) -> Result<DocumentMut> {
        let mut doc = self.document()?;
        for (p, c) in self.space.params.iter().zip(&self.points[trial]) {
            space::set(&mut doc, &p.target, p.value(c)).map_err(|m| self.bad(&m))?;
        }
        Ok(doc)
    }

    fn bad(&self, message: &str) -> Error {
        Error::data(&self.recipe_path, message.to_string())
    }

    fn write_rows(&self) -> Result<()> {
        let mut rows: Vec<&Row> = self.done.values().collect();
        rows.sort_by_key(|r| (r.trial, r.rung));
        let names: Vec<String> = self.space.params.iter().map(|p| crate::fs::csv_field(&p.name)).collect();
        let mut csv = format!("trial,rung,share,score,seconds,{}\n", names.join(","));
        for r in rows {
            let values: Vec<String> = r.values.iter().map(|v| crate::fs::csv_field(v)).collect();
            csv += &format!(
                "{},{},{},{:.6},{:.2},{}\n",
                r.trial + 1,
                r.rung,
                r.share,
                r.score,
                r.seconds,
                values.join(",")
            );
        }
        crate::fs::atomic_write(&self.dir.join("tune.csv"), csv.as_bytes())
    }

    fn outcome(&self, interrupted: bool) -> Outcome {
        let (space, rungs) = (self.space.clone(), self.rungs);
        let mut rows: Vec<Row> = self.done.values().cloned().collect();
        rows.sort_by_key(|r| (r.trial, r.rung));
        let best = best_of(&rows);
        Outcome {
            dir: self.dir.clone(),
            rows,
            keys: self.space.params.iter().map(|p| p.name.clone()).collect(),
            best,
            baseline: self.baseline,
            comparison: None,
            final_accuracy: None,
            interrupted,
            space,
            rungs,
        }
    }

    /// Writes `best.toml` (the recipe with the winning values, commented,
    /// paths rebased) and runs it on all the training data into `final/`:
    /// its accuracy on `valid`.
    fn final_run(&mut self, outcome: &Outcome) -> Result<Option<f64>> {
        let recipe_shown = crate::util::paths::shown(&self.recipe_path).display().to_string();
        let (mut doc, header) = match (outcome.chosen(), outcome.best, outcome.baseline) {
            (Some(trial), Some((_, score)), _) => {
                let mut doc = self.with_values(trial)?;
                let original = self.document()?;
                for p in &self.space.params {
                    let was = lookup(&original, &p.target).map_or("unset".to_string(), |v| space::shown(&v));
                    if let Some(v) = lookup_mut(&mut doc, &p.target) {
                        v.decor_mut().set_suffix(format!("  # tuned (was {was})"));
                    }
                }
                let checked = match outcome.comparison {
                    Some(c) => format!("# {}.\n", c.describe()),
                    None => "# (`against_recipe = false`: not checked against the recipe as written.)\n".into(),
                };
                let header = format!(
                    "# Written by `tlab tune` from {recipe_shown}: trial {} scored {score:.4} on the inner split\n# (never on valid).\n{checked}# `final/` is this recipe trained on all the training data.\n",
                    trial + 1
                );
                (doc, header)
            }
            (None, _, Some(b)) => {
                let why = match outcome.comparison {
                    Some(c) => format!("# {}.\n", c.describe()),
                    None => "# No trial finished.\n".into(),
                };
                let header = format!(
                    "# Written by `tlab tune` from {recipe_shown}: the recipe as written (inner accuracy {:.4}).\n{why}# `final/` is this recipe trained on all the training data.\n",
                    b.score
                );
                (self.document()?, header)
            }
            _ => return Ok(None),
        };
        let base = self.recipe_path.parent().unwrap_or(Path::new(""));
        space::rebase_paths(&mut doc, base, &self.dir);
        let text = header + &doc.to_string();
        let best = self.dir.join("best.toml");
        crate::fs::atomic_write(&best, text.as_bytes())?;
        let what = match outcome.chosen() {
            Some(t) => format!("trial {}'s values", t + 1),
            None => "the recipe as written".into(),
        };
        (self.say)(Progress::Line(format!("best.toml: {what} → {}", best.display())));
        let recipe = recipe::parse(&text, &best)?;
        let mut lab = Lab::new(recipe);
        lab.set_feature_cache(std::mem::take(&mut self.features));
        let final_dir = self.dir.join("final");
        let _ = std::fs::remove_dir_all(&final_dir);
        lab.record_to(&final_dir)?;
        let outcome = lab.run_rest(&mut Quiet(&self.cancel));
        lab.save_run(&final_dir)?;
        outcome?;
        let accuracy = lab.evaluation().ok().map(|e| e.metrics.accuracy);
        if let Some(a) = accuracy {
            (self.say)(Progress::Line(format!(
                "final: best.toml trained on all the training data: accuracy {a:.4} on valid"
            )));
        }
        Ok(accuracy)
    }

    fn write_summary(&self, outcome: &Outcome) -> Result<()> {
        crate::fs::atomic_write(&self.dir.join("tune.md"), outcome.to_markdown().as_bytes())?;
        if !outcome.rows.is_empty() {
            crate::fs::atomic_write(
                &self.dir.join("scores.png"),
                &crate::present::views::png_bytes(&outcome.scores_png())?,
            )?;
            crate::fs::atomic_write(
                &self.dir.join("trials.png"),
                &crate::present::views::png_bytes(&outcome.trials_png())?,
            )?;
        }
        Ok(())
    }
}

/// The trial with the best score at the highest rung any trial reached.
pub(crate) fn best_of(rows: &[Row]) -> Option<(usize, f64)> {
    let top = rows.iter().map(|r| r.rung).max()?;
    rows.iter()
        .filter(|r| r.rung == top)
        .fold(None, |best: Option<&Row>, r| match best {
            Some(b) if b.score >= r.score => Some(b),
            _ => Some(r),
        })
        .map(|r| (r.trial, r.score))
}

/// The leaderboard: each trial at its highest rung, best first.
pub fn leaderboard(rows: &[Row]) -> Vec<&Row> {
    let mut top: HashMap<usize, &Row> = HashMap::new();
    for r in rows {
        if top.get(&r.trial).is_none_or(|t| t.rung < r.rung) {
            top.insert(r.trial, r);
        }
    }
    let mut out: Vec<&Row> = top.into_values().collect();
    out.sort_by(|a, b| b.rung.cmp(&a.rung).then(b.score.total_cmp(&a.score)).then(a.trial.cmp(&b.trial)));
    out
}

fn summary_markdown(o: &Outcome) -> String {
    let mut md = String::from("# tlab tune\n\n");
    md += &format!(
        "Successive halving: {} rung(s); {} trial(s), {} trial-rung(s) run. Scores are accuracy on an inner split of the training data ({:.0} % of each class): `valid` was not read during the search.\n\n",
        o.rungs,
        leaderboard(&o.rows).len(),
        o.rows.len(),
        o.space.settings.inner_split * 100.0
    );
    if o.space.default {
        md += "The recipe had no `[tune]` keys: the default space was searched.\n\n";
    }
    md += &format!("| trial | rung | share of epochs | inner accuracy | seconds | {} |\n", o.keys.join(" | "));
    md += &format!("|---|---|---|---|---|{}\n", "---|".repeat(o.keys.len()));
    for r in leaderboard(&o.rows) {
        md += &format!(
            "| {} | {} | {} | {:.4} | {:.1} | {} |\n",
            r.trial + 1,
            r.rung,
            r.share,
            r.score,
            r.seconds,
            r.values.join(" | ")
        );
    }
    md + &verdict(o)
}

/// Which numbers were tuned on what: the best trial's inner-split score and
/// the final run's accuracy on valid.
fn verdict(o: &Outcome) -> String {
    let mut md = String::new();
    if let Some(b) = o.baseline {
        md += &format!("\nThe recipe as written, on the same inner split with all its epochs: {:.4}.\n", b.score);
    }
    match (o.best, o.final_accuracy) {
        (Some((t, s)), Some(a)) => {
            md += &format!("\nBest: trial {} ({s:.4} on the inner split).", t + 1);
            if let Some(c) = o.comparison {
                md += &format!(" Against the recipe as written, image by image: {}.", c.details());
            }
            let what = match o.chosen() {
                Some(t) => format!("trial {}'s values", t + 1),
                None => "the recipe as written".into(),
            };
            md += &format!(
                " `best.toml` ({what}) trained on all the training data (`final/`): **accuracy {a:.4} on valid**.\n"
            );
        }
        _ if o.interrupted => md += "\nInterrupted: `tlab tune --resume DIR` continues.\n",
        _ => {}
    }
    md
}

/// Passes cancellation to a trial; prints nothing.
struct Quiet<'a>(&'a AtomicBool);

impl crate::train::Observer for Quiet<'_> {
    fn event(&mut self, _event: crate::train::Event) {}
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

fn lookup(doc: &DocumentMut, target: &Target) -> Option<Value> {
    let mut doc = doc.clone();
    lookup_mut(&mut doc, target).map(|v| v.clone())
}

fn lookup_mut<'d>(doc: &'d mut DocumentMut, target: &Target) -> Option<&'d mut Value> {
    let (table, key) = match target {
        Target::Data(k) => (doc.get_mut("data")?.as_table_like_mut()?, k),
        Target::Step { index, key } => (space::step_mut(doc, *index)?, key),
    };
    table.get_mut(key)?.as_value_mut()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::data(path, "not a tune directory (no tune.json)"),
        _ => Error::io(path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, format!("invalid: {e}")))
}

/// The rows of an earlier process's `tune.csv` (none if it has no file yet).
fn read_rows(path: &Path) -> Result<HashMap<(usize, usize), Row>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f = crate::data::csv::fields(line);
        let bad = || Error::data(path, format!("line {}: expected trial,rung,share,score,seconds,…", n + 1));
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).ok_or_else(bad);
        let trial = (num(0)? as usize).checked_sub(1).ok_or_else(bad)?;
        let rung = num(1)? as usize;
        let share = f.get(2).cloned().ok_or_else(bad)?;
        let row = Row { trial, rung, share, score: num(3)?, seconds: num(4)?, values: f[5.min(f.len())..].to_vec() };
        out.insert((trial, rung), row);
    }
    Ok(out)
}
