//! `tlab run`, `tlab tune` and `tlab check`: a recipe run headless (the run
//! directory from the library's `RunRecorder`, progress bars here), a
//! search over it, or its preflight.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use tlab::lab::Lab;
use tlab::run::recorder::RunRecorder;

use super::progress::Progress;

/// `--profile`: where the time went, printed and in profile.json.
fn show_profile(dir: &Path, wall: f64) -> anyhow::Result<()> {
    println!("where the time went (seconds summed over threads; phases nest):");
    for line in tlab::util::profile::table(wall) {
        println!("  {line}");
    }
    tlab::fs::atomic_write(&dir.join("profile.json"), tlab::util::profile::to_json(wall).as_bytes())?;
    Ok(())
}

/// The recipe a run uses: the one given, or with `--resume` the one the run
/// directory names (in its checkpoint, else its status.json).
fn run_recipe_path(
    given: Option<PathBuf>,
    saved: Option<&tlab::train::checkpoint::State>,
    resume: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    Ok(match (given, saved, resume) {
        (Some(p), _, _) => p,
        (None, Some(s), _) => s.recipe.clone(),
        (None, None, Some(dir)) => tlab::run::dir::Status::read(dir)?.recipe,
        (None, None, None) => bail!("give a recipe"),
    })
}

/// Runs steps `first..`, printing each; the error that stopped them, if any.
fn run_steps(lab: &mut Lab, progress: &mut Progress, first: usize) -> Option<tlab::Error> {
    let steps = lab.recipe().steps.len();
    for i in first..steps {
        if progress.interrupted.load(Ordering::Relaxed) {
            break;
        }
        progress.step_label = format!("[{}/{steps}] {}", i + 1, lab.recipe().steps[i].kind.name());
        let header = progress.recorder.begin_step(lab, i);
        progress.show(&header);
        let result = lab.run_step(i, progress);
        for line in progress.recorder.end_step(result.as_ref()) {
            progress.show(&line);
        }
        if let Err(e) = result {
            return Some(e);
        }
    }
    None
}

pub fn run(recipe_path: Option<PathBuf>, out: Option<PathBuf>, resume: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // With --resume, the run directory says which recipe it ran.
    let saved_state = match &resume {
        Some(dir) => tlab::train::checkpoint::read_state(dir)?,
        None => None,
    };
    let recipe_path = run_recipe_path(recipe_path, saved_state.as_ref(), resume.as_deref())?;
    let recipe_path = recipe_path.as_path();
    let recipe = match tlab::recipe::load(recipe_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let dir = resume.clone().or(out).unwrap_or_else(|| tlab::run::files::default_run_dir(&recipe.name));
    let recorder = RunRecorder::open(&dir, &recipe, resume.is_some())
        .with_context(|| format!("cannot create run directory {}", dir.display()))?;
    let mut lab = Lab::new(recipe.clone());
    let mut progress = Progress::new(recorder);
    let mut first_step = 0;
    if let Some(state) = saved_state {
        let saved = tlab::train::checkpoint::load(&dir, state, &recipe)?;
        let (step, finished, epochs) = (saved.state.step, saved.state.finished, saved.state.history.len());
        progress.line(format!(
            "resuming {} at step {} after epoch {}",
            dir.display(),
            step + 1,
            saved.state.epochs_done
        ));
        lab.resume_from(saved, &mut progress)?;
        progress.recorder.resumed(epochs);
        first_step = if finished { step + 1 } else { step };
    }
    // First Ctrl-C (or SIGTERM): finish the current batch, write the reports
    // marked incomplete, exit 130. A second one exits at once.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, progress.interrupted.clone())?;
        signal_hook::flag::register(sig, progress.interrupted.clone())?;
    }
    progress.line(format!("tlab run {} → {}", recipe_path.display(), dir.display()));
    let failure = run_steps(&mut lab, &mut progress, first_step);
    if let Some((multi, e, b)) = &progress.bars {
        e.finish_and_clear();
        b.finish_and_clear();
        let _ = multi.clear();
    }
    let interrupted = progress.interrupted.load(Ordering::Relaxed);
    if interrupted {
        progress.line("interrupted: stopped after the current batch; the reports below are incomplete".into());
    }
    let written = progress.recorder.write(&lab, !interrupted && failure.is_none()).context("writing reports")?;
    progress.show(&format!(
        "wrote {} files to {} in {:.1}s total",
        written.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    ));
    if tlab::util::profile::enabled() {
        show_profile(&dir, started.elapsed().as_secs_f64())?;
    }
    if interrupted {
        eprintln!("interrupted: partial reports in {}", dir.display());
        return Ok(ExitCode::from(130));
    }
    match failure {
        Some(e) => Err(e.into()),
        None => {
            if let Ok(eval) = lab.evaluation() {
                println!("{}", tlab::present::rows::headline(&eval.metrics));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `tlab tune`'s `--budget`: `20m`, `90s`, `1h30m`.
pub fn parse_budget(text: &str) -> Result<std::time::Duration, String> {
    tlab::tools::tune::space::budget_text(text)
}

pub fn tune(
    recipe: Option<&Path>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    opts: &tlab::tools::tune::Options,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = recipe {
        // The same checks as `tlab check`, before any trial trains.
        let report = tlab::tools::preflight::check(path, false);
        if !report.ok() {
            for l in report.problems() {
                eprintln!("{l}");
            }
            return Ok(ExitCode::from(1));
        }
    }
    let dir = match (&resume, out, recipe) {
        (Some(d), _, _) => d.clone(),
        (None, Some(o), _) => o,
        (None, None, Some(p)) => tlab::run::files::default_run_dir(&format!("{}-tune", tlab::recipe::load(p)?.name)),
        (None, None, None) => bail!("give a recipe"),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, cancel.clone())?;
        signal_hook::flag::register(sig, cancel.clone())?;
    }
    println!("tlab tune → {}", dir.display());
    let mut print = |p: tlab::tools::tune::Progress| {
        if let tlab::tools::tune::Progress::Line(l) = p {
            println!("{l}");
        }
    };
    let outcome = tlab::tools::tune::run(recipe, &dir, resume.is_some(), opts, cancel, &mut print)?;
    println!("wrote tune.csv, tune.md, scores.png, trials.png to {}", dir.display());
    if outcome.interrupted {
        eprintln!("interrupted: `tlab tune --resume {}` continues", dir.display());
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn check(recipes: &[PathBuf], syntax_only: bool, json: bool) -> anyhow::Result<ExitCode> {
    if recipes.is_empty() {
        bail!("give at least one recipe file");
    }
    let reports: Vec<_> = recipes.iter().map(|p| tlab::tools::preflight::check(p, syntax_only)).collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            for l in report.problems() {
                eprintln!("{l}");
            }
            for l in report.summary() {
                println!("{l}");
            }
        }
    }
    Ok(if reports.iter().all(|r| r.ok()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
