//! The `tlab` command line. Library errors are typed; here at the edge they
//! become one or two readable lines and an exit code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use tlab::lab::{Lab, StepOutput};
use tlab::train::{Event, Observer};

#[derive(Parser)]
#[command(name = "tlab", version, about = "A transfer-learning lab for the terminal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every step of a recipe headless and write a run directory of reports.
    Run {
        /// The recipe (optional with --resume: the run directory remembers it).
        #[arg(required_unless_present = "resume")]
        recipe: Option<PathBuf>,
        /// Run directory (default: runs/<name>-<timestamp>).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue an interrupted run in DIR from its last completed epoch.
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
    },
    /// Step through a recipe in the terminal UI (hot-reloads the file on edit).
    #[cfg(feature = "tui")]
    Tui { recipe: PathBuf },
    /// Print a grid of augmented training samples and exit.
    Preview {
        recipe: PathBuf,
        /// Save the grid as a PNG instead of (as well as) printing it.
        #[arg(long)]
        png: Option<PathBuf>,
        /// Number of samples.
        #[arg(long, default_value_t = 16)]
        count: usize,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure throughput (random weights); prints one JSON line.
    Bench {
        #[command(subcommand)]
        case: BenchCase,
    },
    /// Validate a recipe without running it (exit 1 on errors).
    Check { recipes: Vec<PathBuf> },
    /// Convert weights (safetensors, .pth zip or legacy) to safetensors.
    Convert {
        input: PathBuf,
        output: PathBuf,
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
        dtype: String,
    },
    /// List the tensors of a weights file and the architectures it fits.
    Inspect { file: PathBuf },
    /// Classify images with a trained model (--model RUN_DIR) or an ImageNet checkpoint (--imagenet).
    Predict {
        /// Run directory written by `tlab run`.
        #[arg(long, conflicts_with = "imagenet")]
        model: Option<PathBuf>,
        /// Use an ImageNet checkpoint with its own classifier (default: the shipped MobileNetV2).
        #[arg(long)]
        imagenet: bool,
        #[arg(long, default_value = "mobilenet_v2")]
        backbone: String,
        /// ImageNet weights file (default: assets/weights/mobilenet_v2.safetensors).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Class names, one per line (default: assets/weights/imagenet_classes.txt).
        #[arg(long)]
        classes: Option<PathBuf>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

/// candle allocates a fresh buffer for every op. With glibc's defaults,
/// buffers over the (dynamic) mmap threshold are mmapped and page-faulted anew
/// on every op; keeping them on the heap and not trimming it makes inference
/// markedly faster (measured in issue 7: ResNet-18 1.57×, EfficientNet-B0 1.77×).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 * 1024 * 1024);
    }
}

#[derive(Subcommand)]
enum BenchCase {
    /// Forward pass of the whole backbone (frozen, eval mode).
    Forward {
        #[arg(long, default_value = "mobilenet_v2")]
        backbone: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// One optimizer update of every parameter of the backbone and a 10-class
    /// head (gradients from one backward pass, reused): the optimizer's own cost.
    OptimizerStep {
        #[arg(long, default_value = "resnet18")]
        backbone: String,
        /// sgd, adam or adamw (weight decay 0.01; momentum 0.9 for sgd).
        #[arg(long, default_value = "adamw")]
        optimizer: String,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// One training step: forward, backward and Adam update, blocks before --freeze frozen.
    TrainStep {
        #[arg(long, default_value = "mobilenet_v2")]
        backbone: String,
        /// Freeze point: all, none, a block name or a block count.
        #[arg(long, default_value = "all")]
        freeze: String,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(long, default_value_t = 224)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
}

fn main() -> ExitCode {
    // `tlab inspect FILE | head` should end quietly, not panic on EPIPE.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal at startup,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { recipe, out, resume } => run(recipe, out, resume),
        Command::Check { recipes } => check(&recipes),
        Command::Bench { case } => bench(case),
        #[cfg(feature = "tui")]
        Command::Tui { recipe } => tlab::tui::run(&recipe).map(|_| ExitCode::SUCCESS).map_err(Into::into),
        Command::Preview { recipe, png, count, seed } => preview(&recipe, png, count, seed),
        Command::Convert { input, output, dtype } => convert(&input, &output, &dtype),
        Command::Inspect { file } => inspect(&file),
        Command::Predict { model, imagenet, backbone, weights, classes, top, images } => {
            predict(model, imagenet, &backbone, weights, classes, top, &images)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The chain on one line; a backtrace only when asked for.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", dedup_chain(&chain).join(": "));
            if std::env::var_os("RUST_BACKTRACE").is_some() {
                eprintln!("{}", e.backtrace());
            }
            ExitCode::from(1)
        }
    }
}

/// Drops chain links already contained in the previous one (thiserror
/// messages often embed their source).
fn dedup_chain(chain: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in chain {
        if !out.last().is_some_and(|prev| prev.contains(c.as_str())) {
            out.push(c.clone());
        }
    }
    out
}

fn check(recipes: &[PathBuf]) -> anyhow::Result<ExitCode> {
    if recipes.is_empty() {
        bail!("give at least one recipe file");
    }
    let mut failed = false;
    for path in recipes {
        match tlab::recipe::load(path) {
            Ok(r) => println!("{}: ok ({} steps)", path.display(), r.steps.len()),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Progress bars on a terminal, plain lines otherwise; every line also goes to the run log.
struct Progress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    log: Vec<String>,
    step_label: String,
    /// Set by SIGINT/SIGTERM: stop after the current batch.
    interrupted: Arc<AtomicBool>,
    /// Where epoch checkpoints go, with what they need: the recipe, the
    /// running step and the history of the steps before it.
    checkpoints: Option<(PathBuf, tlab::recipe::Recipe)>,
    step: usize,
    earlier: Vec<(usize, tlab::train::EpochRecord)>,
}

impl Progress {
    fn new() -> Self {
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
        Progress {
            bars,
            log: Vec::new(),
            step_label: String::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
            checkpoints: None,
            step: 0,
            earlier: Vec::new(),
        }
    }

    fn line(&mut self, s: String) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(&s);
            }
            None => println!("{s}"),
        }
        self.log.push(s);
    }
}

impl Observer for Progress {
    fn cancelled(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    fn checkpoint(&mut self, state: &tlab::train::Checkpoint<'_>) -> tlab::Result<()> {
        match &self.checkpoints {
            Some((dir, recipe)) => tlab::checkpoint::write(dir, recipe, self.step, &self.earlier, state),
            None => Ok(()),
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Log(s) => self.line(format!("  {s}")),
            Event::EpochStart { epoch, epochs, batches } => {
                if let Some((_, e, b)) = &self.bars {
                    e.set_length(epochs as u64);
                    e.set_position(epoch as u64 - 1);
                    e.set_prefix(self.step_label.clone());
                    b.set_length(batches as u64);
                    b.set_position(0);
                    b.reset_eta();
                }
            }
            Event::Batch { batch, loss, accuracy, .. } => {
                if let Some((_, _, b)) = &self.bars {
                    b.set_position(batch as u64);
                    b.set_message(format!("loss {loss:.4} acc {accuracy:.3}"));
                }
            }
            Event::Epoch(r) => {
                if let Some((_, e, _)) = &self.bars {
                    e.set_position(r.epoch as u64);
                    e.set_message(format!("valid acc {:.3}", r.valid_accuracy));
                }
                self.line(format!(
                    "  epoch {:>3}  train loss {:.4} acc {:.4}  valid loss {:.4} acc {:.4}  lr {:.2e}  {:.1}s",
                    r.epoch, r.train_loss, r.train_accuracy, r.valid_loss, r.valid_accuracy, r.lr, r.seconds
                ));
            }
        }
    }
}

fn run(recipe_path: Option<PathBuf>, out: Option<PathBuf>, resume: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // With --resume, the run directory says which recipe it ran.
    let saved_state = match &resume {
        Some(dir) => tlab::checkpoint::read_state(dir)?,
        None => None,
    };
    let recipe_path = match (recipe_path, &saved_state, &resume) {
        (Some(p), _, _) => p,
        (None, Some(s), _) => s.recipe.clone(),
        (None, None, Some(dir)) => {
            let status = dir.join("status.json");
            let text = std::fs::read_to_string(&status).with_context(|| {
                format!("{} is not a tlab run directory (no checkpoint, no status.json)", dir.display())
            })?;
            let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}", status.display()))?;
            PathBuf::from(v["recipe"].as_str().context("status.json names no recipe")?)
        }
        (None, None, None) => bail!("give a recipe"),
    };
    let recipe_path = recipe_path.as_path();
    let recipe = match tlab::recipe::load(recipe_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let dir = resume.clone().or(out).unwrap_or_else(|| tlab::report::default_run_dir(&recipe.name));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
    // A process killed mid-write leaves its temp file; never its target.
    tlab::report::remove_stale_temps(&dir);
    // Name the recipe at once, so a run killed before its first checkpoint
    // can still be resumed (it starts over).
    if !dir.join("status.json").exists() {
        let status = serde_json::json!({
            "complete": false,
            "steps": recipe.steps.len(),
            "steps_done": [],
            "recipe": std::fs::canonicalize(&recipe.path).unwrap_or(recipe.path.clone()).display().to_string(),
        });
        tlab::report::atomic_write(&dir.join("status.json"), serde_json::to_string_pretty(&status)?.as_bytes())?;
    }
    let mut lab = Lab::new(recipe.clone());
    let mut progress = Progress::new();
    progress.checkpoints = Some((dir.clone(), recipe.clone()));
    let mut first_step = 0;
    if let Some(state) = saved_state {
        let saved = tlab::checkpoint::load(&dir, state, &recipe)?;
        let (step, finished) = (saved.state.step, saved.state.finished);
        progress.line(format!(
            "resuming {} at step {} after epoch {}",
            dir.display(),
            step + 1,
            saved.state.epochs_done
        ));
        lab.resume_from(step, finished, saved.state.history.clone(), &saved.weights, saved.resume, &mut progress)?;
        first_step = if finished { step + 1 } else { step };
    }
    // First Ctrl-C (or SIGTERM): finish the current batch, write the reports
    // marked incomplete, exit 130. A second one exits at once.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, progress.interrupted.clone())?;
        signal_hook::flag::register(sig, progress.interrupted.clone())?;
    }
    progress.line(format!("tlab run {} → {}", recipe_path.display(), dir.display()));
    let steps = lab.recipe().steps.len();
    let mut failure = None;
    for i in first_step..steps {
        if progress.interrupted.load(Ordering::Relaxed) {
            break;
        }
        progress.step = i;
        progress.earlier = lab.history().to_vec();
        let step = &lab.recipe().steps[i];
        progress.step_label = format!("[{}/{steps}] {}", i + 1, step.kind.name());
        progress.line(format!("[{}/{steps}] {}: {}", i + 1, step.kind.name(), step.kind.summary()));
        match lab.run_step(i, &mut progress) {
            Ok(result) => {
                let text = describe(&result.output);
                let secs = result.seconds;
                for l in text {
                    progress.line(format!("  {l}"));
                }
                progress.line(format!("  ✓ {:.1}s", secs));
            }
            Err(e) => {
                progress.line(format!("  ✗ {e}"));
                failure = Some(e);
                break;
            }
        }
    }
    if let Some((multi, e, b)) = &progress.bars {
        e.finish_and_clear();
        b.finish_and_clear();
        let _ = multi.clear();
    }
    let interrupted = progress.interrupted.load(Ordering::Relaxed);
    if interrupted {
        progress.line("interrupted: stopped after the current batch; the reports below are incomplete".into());
    }
    let written = lab.write_reports(&dir, !interrupted && failure.is_none()).context("writing reports")?;
    progress.line(format!(
        "wrote {} files to {} in {:.1}s total",
        written.len() + 1,
        dir.display(),
        started.elapsed().as_secs_f64()
    ));
    tlab::report::atomic_write(&dir.join("log.txt"), (progress.log.join("\n") + "\n").as_bytes())?;
    if interrupted {
        eprintln!("interrupted: partial reports in {}", dir.display());
        return Ok(ExitCode::from(130));
    }
    match failure {
        Some(e) => Err(e.into()),
        None => {
            if let Some(eval) = lab.last_evaluation() {
                println!(
                    "accuracy {:.4}  top-{} {:.4}",
                    eval.metrics.accuracy, eval.metrics.top_k, eval.metrics.top_k_accuracy
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A few lines about a finished step for the log.
fn describe(output: &StepOutput) -> Vec<String> {
    match output {
        StepOutput::Backbone { arch, source, blocks, classes, train_images, valid_images, skipped } => vec![
            format!("{arch} ({blocks} blocks) from {source}"),
            format!("{} classes, {train_images} train / {valid_images} valid images, {skipped} skipped", classes.len()),
        ],
        StepOutput::Freeze { frozen_blocks, total_blocks, trainable_params } => {
            vec![format!("{frozen_blocks}/{total_blocks} blocks frozen, {trainable_params} trainable parameters")]
        }
        StepOutput::Augment { .. } => vec![],
        StepOutput::Restored { note } => vec![note.clone()],
        StepOutput::FineTune(o) => {
            let mut v = vec![format!("stopped: {:?} after {} epoch(s)", o.stop, o.history.len())];
            if let Some(b) = o.best_epoch {
                v.push(format!("weights from epoch {b}"));
            }
            v
        }
        StepOutput::Evaluate(e) => {
            let m = &e.metrics;
            vec![format!(
                "accuracy {:.4}, top-{} {:.4}, macro F1 {:.4}, {} mistakes of {}",
                m.accuracy,
                m.top_k,
                m.top_k_accuracy,
                m.macro_avg.f1,
                e.predictions.iter().filter(|p| p.truth != p.predicted).count(),
                m.count
            )]
        }
    }
}

/// Loads the data, applies every augment step up to the first fine_tune, and
/// shows a grid of samples: in the terminal (half-blocks via viuer) and/or as PNG.
fn preview(recipe_path: &Path, png: Option<PathBuf>, count: usize, seed: Option<u64>) -> anyhow::Result<ExitCode> {
    let recipe = match tlab::recipe::load(recipe_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let seed = seed.unwrap_or(recipe.seed);
    let augment = recipe
        .steps
        .iter()
        .take_while(|s| !matches!(s.kind, tlab::recipe::StepKind::FineTune(_)))
        .filter_map(|s| match &s.kind {
            tlab::recipe::StepKind::Augment(a) => Some(a.clone()),
            _ => None,
        })
        .last();
    let data = tlab::data::Dataset::load(&recipe.data, recipe.seed)?;
    let aug = augment.map(tlab::augment::Augmenter::new);
    let (grid, tiles) = tlab::preview::labelled_grid(&data, aug.as_ref(), seed, count);
    if let Some(p) = &png {
        let mut bytes = Vec::new();
        grid.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
        tlab::report::atomic_write(p, &bytes)?;
        println!("wrote {} ({}×{}, {} samples)", p.display(), grid.width(), grid.height(), tiles.len());
    }
    if png.is_none() || std::io::stdout().is_terminal() {
        let conf = viuer::Config { absolute_offset: false, width: Some(64), ..Default::default() };
        viuer::print(&image::DynamicImage::ImageRgb8(grid), &conf).context("printing the preview")?;
        let names: Vec<String> = tiles.iter().map(|t| t.class.clone()).collect();
        println!("{}", names.join(" · "));
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(case: BenchCase) -> anyhow::Result<ExitCode> {
    let result = match case {
        BenchCase::Forward { backbone, batch, size, iters, warmup } => {
            tlab::bench::forward(&backbone, batch, size, iters.max(1), warmup)?
        }
        BenchCase::TrainStep { backbone, freeze, batch, size, iters, warmup } => {
            tlab::bench::train_step(&backbone, &freeze, batch, size, iters.max(1), warmup)?
        }
        BenchCase::OptimizerStep { backbone, optimizer, iters, warmup } => {
            tlab::bench::optimizer_step(&backbone, &optimizer, iters.max(1), warmup)?
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(ExitCode::SUCCESS)
}

fn convert(input: &Path, output: &Path, dtype: &str) -> anyhow::Result<ExitCode> {
    let dtype = if dtype == "f16" { candle_core::DType::F16 } else { candle_core::DType::F32 };
    let tensors = tlab::weights::load_ordered(input)?;
    tlab::weights::save_safetensors(&tensors, dtype, output)?;
    let params: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!("{} → {}: {} tensors, {} values", input.display(), output.display(), tensors.len(), params);
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let format = tlab::weights::detect(file)?;
    let tensors = tlab::weights::load_ordered(file)?;
    println!("{}: {} with {} tensors", file.display(), format.name(), tensors.len());
    let mut total = 0usize;
    for (name, t) in &tensors {
        println!(
            "  {name:<50} {:<5} {:<20} {}",
            format!("{:?}", t.dtype()).to_lowercase(),
            format!("{:?}", t.dims()),
            t.elem_count()
        );
        total += t.elem_count();
    }
    println!("total {total} values");
    let map: std::collections::HashMap<_, _> = tensors.into_iter().collect();
    let mut fits = Vec::new();
    for arch in tlab::models::ARCHITECTURES {
        for with_classifier in [true, false] {
            let mut p = tlab::models::layers::ParamLoader::from_tensors(file.display().to_string(), map.clone());
            if let Ok(b) = tlab::models::build_backbone(arch, &mut p, with_classifier) {
                if !with_classifier {
                    p.skip_prefix(b.classifier_prefix());
                }
                if p.finish(true, None).is_ok() {
                    fits.push(format!(
                        "{arch}{}",
                        if with_classifier { " (with ImageNet classifier)" } else { " (backbone only)" }
                    ));
                    break;
                }
            }
        }
    }
    if fits.is_empty() {
        println!("fits no known architecture ({})", tlab::models::ARCHITECTURES.join(", "));
    } else {
        println!("fits: {}", fits.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(
    model: Option<PathBuf>,
    imagenet: bool,
    backbone: &str,
    weights: Option<PathBuf>,
    classes: Option<PathBuf>,
    top: usize,
    images: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let predictor = match (model, imagenet) {
        (Some(dir), false) => tlab::predict::Predictor::from_run_dir(&dir)?,
        (None, true) => {
            let weights = weights.unwrap_or_else(tlab::predict::shipped_imagenet_weights);
            let classes = classes.unwrap_or_else(tlab::predict::shipped_imagenet_classes);
            tlab::predict::Predictor::imagenet(backbone, &weights, &classes)?
        }
        _ => bail!("give either --model RUN_DIR or --imagenet"),
    };
    for ranked in predictor.top_k(images, top)? {
        println!("{}", ranked.path.display());
        for (class, p) in ranked.top {
            println!("  {p:>7.4}  {class}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
