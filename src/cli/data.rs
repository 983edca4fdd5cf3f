//! The data commands: `tlab new`, `tlab tui` (from a data folder), the data
//! doctor and label issues (`tlab data`), `tlab embed` and `tlab preview`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

pub fn new_recipe(data: &Path, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let out = output.unwrap_or_else(|| tlab::tools::starter::default_path(data));
    let survey = tlab::tools::starter::write_new(data, &out, &tlab::predict::shipped_imagenet_weights())?;
    let (w, h) = survey.median_size;
    println!(
        "{}: {} classes, {} training images, typical {w}x{h} px, {}; largest class {:.1}x the smallest",
        tlab::util::paths::shown(data).display(),
        survey.classes.len(),
        survey.train_images(),
        if survey.greyscale { "greyscale" } else { "colour" },
        survey.imbalance()
    );
    println!("wrote {} (check it: tlab check {0}; run it: tlab run {0})", tlab::util::paths::shown(&out).display());
    Ok(ExitCode::SUCCESS)
}

/// `tlab tui RECIPE`, or `tlab tui DATA_DIR`: the starter recipe of the
/// folder, written first unless it is there from an earlier `tlab new`.
#[cfg(feature = "tui")]
pub fn tui(path: &Path) -> anyhow::Result<ExitCode> {
    let recipe = if path.is_dir() {
        let out = tlab::tools::starter::default_path(path);
        if !out.exists() {
            tlab::tools::starter::write_new(path, &out, &tlab::predict::shipped_imagenet_weights())?;
        }
        out
    } else {
        path.to_path_buf()
    };
    tlab::tui::run(&recipe)?;
    Ok(ExitCode::SUCCESS)
}

/// `tlab data DIR`: the diagnosis printed (or as JSON) and written to `out`.
pub fn data_doctor(dir: &Path, json: bool, near_bits: u32, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let d = tlab::tools::doctor::diagnose(dir, near_bits)?;
    let name =
        tlab::util::paths::absolute(dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = out.unwrap_or_else(|| tlab::run::files::default_run_dir(&format!("data-{name}")));
    d.write(&out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        for line in d.lines() {
            println!("{line}");
        }
        println!("wrote report.md, report.json, issues.csv and {} mosaic(s) to {}", d.classes.len(), out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `tlab data --label-issues RUN_OR_RECIPE`.
pub fn label_issues(run: &Path, folds: usize, json: bool, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let recipe = tlab::tools::doctor::labels::recipe_of(run)?;
    let out = match out {
        Some(o) => o,
        None if run.is_dir() => run.to_path_buf(),
        None => tlab::run::files::default_run_dir(&format!("{}-label-issues", recipe.name)),
    };
    let cfg = tlab::tools::doctor::labels::ProbeConfig { folds, seed: recipe.seed, ..Default::default() };
    let mut log = |line: String| {
        if !json {
            println!("  {line}");
        }
    };
    let found = tlab::tools::doctor::labels::find(recipe, &cfg, &mut log)?;
    found.write(&out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for line in found.lines(20) {
            println!("{line}");
        }
        println!("wrote label_issues.csv and label_issues.png to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn embed(
    embedder: &tlab::tools::embed::Embedder,
    dir: &Path,
    batch: usize,
    output: &Path,
) -> anyhow::Result<ExitCode> {
    let paths: Vec<PathBuf> =
        tlab::predict::expand_inputs(&[dir.to_path_buf()], &[])?.into_iter().map(|(p, _)| p).collect();
    let bar = indicatif::ProgressBar::new(paths.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images, {per_sec}, ETA {eta}")?);
    let started = std::time::Instant::now();
    let e = embedder.embed(&paths, batch.max(1), &mut |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    for (path, why) in &e.skipped {
        eprintln!("warning: skipped {}: {why}", tlab::util::paths::shown(path).display());
    }
    let index = e.save(output, dir)?;
    let (n, c) = e.features.dims2()?;
    println!(
        "{n} images × {c} features (after {}) in {:.1}s → {} and {}",
        embedder.layer,
        started.elapsed().as_secs_f64(),
        output.display(),
        index.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tlab preview RECIPE`: the recipe's training samples in the terminal
/// (half-blocks via viuer) and/or as PNG.
pub fn preview(recipe_path: &Path, png: Option<PathBuf>, count: usize, seed: Option<u64>) -> anyhow::Result<ExitCode> {
    let recipe = match tlab::recipe::load(recipe_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let seed = seed.unwrap_or(recipe.seed);
    let (grid, names) = tlab::present::preview::recipe_preview(&recipe, count, seed)?;
    if let Some(p) = &png {
        tlab::fs::atomic_write(p, &tlab::present::views::png_bytes(&grid)?)?;
        println!("wrote {} ({}×{}, {} samples)", p.display(), grid.width(), grid.height(), names.len());
    }
    if png.is_none() || std::io::stdout().is_terminal() {
        let conf = viuer::Config { absolute_offset: false, width: Some(64), ..Default::default() };
        viuer::print(&image::DynamicImage::ImageRgb8(grid), &conf).context("printing the preview")?;
        println!("{}", names.join(" · "));
    }
    Ok(ExitCode::SUCCESS)
}
