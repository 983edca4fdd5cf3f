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

use tlab::lab::Lab;
use tlab::run::recorder::RunRecorder;
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
        /// Time every phase (decode, augment, each block's forward, backward,
        /// optimizer, validation, reports): a table at the end and
        /// profile.json in the run directory (also TLAB_PROFILE=1).
        #[arg(long)]
        profile: bool,
    },
    /// Search the recipe's `[tune]` keys (or a default space) by successive
    /// halving, scoring trials on an inner split of the training data; then
    /// train the best recipe (best.toml) on all of it and evaluate on valid.
    Tune {
        /// The recipe (optional with --resume: the tune directory remembers it).
        #[arg(required_unless_present = "resume")]
        recipe: Option<PathBuf>,
        /// Stop starting trials after this long: 20m, 90s, 1h30m.
        #[arg(long, value_parser = parse_budget)]
        budget: Option<std::time::Duration>,
        /// At most this many trials.
        #[arg(long)]
        trials: Option<usize>,
        /// Successive-halving rungs: a trial at the first rung trains
        /// 1/eta^(rungs-1) of the recipe's epochs (default: as many as give
        /// every rung more epochs than the one below, at most 3).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=6))]
        rungs: Option<u32>,
        /// The halving factor (default 3): the best 1/eta go on.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=8))]
        eta: Option<u32>,
        /// Tune directory (default: runs/<name>-tune-<timestamp>).
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue an interrupted tune in DIR without redoing finished trials.
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
    },
    /// The data doctor: classes and splits, formats and sizes, and
    /// CleanVision's issue types (duplicates within and across splits,
    /// dark, light, low information, blurry, odd aspect or size, greyscale),
    /// unreadable and tiny files; report.md, report.json, issues.csv and a
    /// mosaic per class in the output folder.
    Data {
        /// A folder with train/ (and valid/, test/) class folders, or class folders alone.
        #[arg(required_unless_present = "label_issues")]
        dir: Option<PathBuf>,
        /// Instead: rank the training images of a run (or a recipe) whose
        /// given label a k-fold linear probe on the frozen backbone most
        /// doubts (cleanlab's confident learning); writes label_issues.csv
        /// and label_issues.png into the run (or --out).
        #[arg(long, value_name = "RUN_OR_RECIPE", conflicts_with = "dir")]
        label_issues: Option<PathBuf>,
        /// Folds of the out-of-sample probe (with --label-issues).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=20))]
        folds: u64,
        /// Print the diagnosis as JSON.
        #[arg(long)]
        json: bool,
        /// Near duplicates' perceptual hashes may differ in this many of 64
        /// bits (0: equal, CleanVision's rule).
        #[arg(long, value_name = "N", default_value_t = tlab::tools::doctor::NEAR_BITS)]
        near_bits: u32,
        /// Where the reports go (default: runs/data-<folder>-<timestamp>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A frozen backbone's pooled features for every image under a folder
    /// (searched recursively): FILE.safetensors (`features`, images ×
    /// channels) and FILE.csv (`index,path,class`), for scikit-learn,
    /// nearest neighbours or a notebook.
    Embed {
        /// The folder of images (class sub-folders name each image's class in the CSV).
        dir: PathBuf,
        /// The architecture (`tlab inspect` lists them).
        #[arg(long, default_value = "mobilenet_v2")]
        backbone: String,
        /// Weights: a file, `hf:owner/repo[/file]` or a URL (default: the shipped MobileNetV2).
        #[arg(long)]
        weights: Option<String>,
        /// Pool the output of this block instead of the last one.
        #[arg(long, value_name = "BLOCK")]
        layer: Option<String>,
        /// Input size in pixels (default: the architecture's).
        #[arg(long)]
        size: Option<u32>,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Output file.
        #[arg(short, long, default_value = "features.safetensors")]
        output: PathBuf,
    },
    /// Write a commented starter recipe from a data folder (classes, counts,
    /// colour, typical size, imbalance), with lr_find in front.
    New {
        /// A folder with train/ (and valid/, test/) class folders, or class folders alone.
        data: PathBuf,
        /// The recipe file (default: <data folder name>.toml here; never overwritten).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Step through a recipe in the terminal UI (hot-reloads the file on edit).
    /// Given a data folder, writes its starter recipe first (as `tlab new`)
    /// or opens the one written before.
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
    /// Preflight recipes without training: every error of the file, the data
    /// folders, the memory estimate and the weights (exit 1 on errors).
    Check {
        recipes: Vec<PathBuf>,
        /// Only validate the recipe files (no disk checks).
        #[arg(long)]
        syntax_only: bool,
        /// One JSON object per recipe, as an array on stdout (for editors and CI).
        #[arg(long)]
        json: bool,
    },
    /// Convert weights (safetensors, .pth zip or legacy) to safetensors.
    Convert {
        input: PathBuf,
        output: PathBuf,
        #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
        dtype: String,
    },
    /// List the tensors of a weights file and the architectures it fits.
    Inspect { file: PathBuf },
    /// Grad-CAM: where in each image the evidence for the predicted (and the
    /// true) class lies, as IMAGE-gradcam.png files.
    Explain {
        /// Run directory written by `tlab run`.
        run: PathBuf,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Output folder (default: RUN/explain).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The block whose output is explained (default: the last whose map is at
        /// least 2×2), e.g. features.14 or layer3.
        #[arg(long)]
        layer: Option<String>,
    },
    /// List the runs in DIR (default: runs), newest first.
    Runs {
        #[arg(default_value = "runs")]
        dir: PathBuf,
    },
    /// Compare runs: metrics side by side with differences, the recipes
    /// diffed key by key, and compare.png / compare.html with the curves overlaid.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<PathBuf>,
        /// Where compare.png and compare.html go.
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
    },
    /// Export a trained model (a run directory) for use outside tlab.
    Export {
        /// Run directory written by `tlab run` (holds model.json + model.safetensors).
        run: PathBuf,
        /// onnx: an ONNX graph with the model card in its metadata;
        /// torchvision: a PyTorch state dict for the torchvision model (zip .pth);
        /// safetensors: the weights with tlab's (torchvision-style) names.
        #[arg(long, value_parser = ["onnx", "torchvision", "safetensors"])]
        format: String,
        /// Output file (default: RUN/model.onnx, RUN/export.safetensors).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// ONNX opset (13–21).
        #[arg(long, default_value_t = tlab::formats::onnx::DEFAULT_OPSET)]
        opset: i64,
        /// A batch size chosen at run time instead of 1.
        #[arg(long)]
        dynamic_batch: bool,
        /// Store the weights as float16 (half the size).
        #[arg(long)]
        fp16: bool,
        /// Take uint8 NHWC RGB at the trained size and normalise inside the graph.
        #[arg(long)]
        with_preprocessing: bool,
    },
    /// Classify images with a trained model (--model RUN_DIR) or an ImageNet checkpoint (--imagenet).
    Predict {
        /// Run directory written by `tlab run`, or an `.onnx` file exported by `tlab export`.
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
        /// Also write PREFIX-inputs.npy (the normalised input tensors, N×3×S×S)
        /// and PREFIX-probs.npy (N×classes): to check an exported model
        /// against tlab on exactly the same inputs.
        #[arg(long, value_name = "PREFIX")]
        npy: Option<PathBuf>,
        /// Write `path,predicted,confidence,top_k` for every image to FILE.
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// Print one JSON object per image on stdout (`path`, `predicted`,
        /// `confidence`, `top` as `[class, probability]` pairs) instead of text.
        #[arg(long)]
        json: bool,
        /// With a folder of class sub-folders: write metrics.json and
        /// predictions.csv (as `evaluate` does) into DIR.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

/// candle allocates a fresh buffer for every op. With glibc's defaults,
/// buffers over the (dynamic) mmap threshold are mmapped and page-faulted anew
/// on every op; keeping them on the heap and not trimming it makes inference
/// markedly faster (measured in issue 7: ResNet-18 1.57×, EfficientNet-B0 1.77×).
/// The heap is never trimmed (the largest threshold mallopt takes): memory
/// handed back and grown again comes back as untouched pages, and candle's
/// backward reads zero-filled gradient buffers before anything writes them,
/// which maps the kernel's shared zero page; the write into the reused
/// memory is then a copy-on-write fault with a TLB flush on every core, per
/// page. That was about a fifth of a whole-network MobileNetV2 step at 224
/// px. The peak RSS is the same; the process keeps its peak until it exits.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
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
    tlab::kernels::keep_candle_pool_off();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { recipe, out, resume, profile } => {
            if profile {
                tlab::util::profile::enable();
            }
            run(recipe, out, resume)
        }
        Command::Check { recipes, syntax_only, json } => check(&recipes, syntax_only, json),
        Command::Tune { recipe, budget, trials, rungs, eta, out, resume } => {
            let opts = tlab::tools::tune::Options {
                budget,
                trials,
                rungs: rungs.map(|r| r as usize),
                eta: eta.map(|e| e as usize),
            };
            tune(recipe.as_deref(), out, resume, &opts)
        }
        Command::Bench { case } => bench(case),
        #[cfg(feature = "tui")]
        Command::Tui { recipe } => tui(&recipe),
        Command::New { data, output } => new_recipe(&data, output),
        Command::Embed { dir, backbone, weights, layer, size, batch, output } => {
            let weights = weights.unwrap_or_else(|| tlab::predict::shipped_imagenet_weights().display().to_string());
            match tlab::tools::embed::Embedder::new(&backbone, &weights, layer.as_deref(), size) {
                Ok(embedder) => embed(&embedder, &dir, batch, &output),
                Err(e) => Err(e.into()),
            }
        }
        Command::Data { dir: Some(dir), json, near_bits, out, .. } => data_doctor(&dir, json, near_bits, out),
        Command::Data { label_issues: Some(run), folds, json, out, .. } => {
            label_issues(&run, folds as usize, json, out)
        }
        Command::Data { .. } => Err(anyhow::anyhow!("give a data folder or --label-issues RUN")),
        Command::Preview { recipe, png, count, seed } => preview(&recipe, png, count, seed),
        Command::Convert { input, output, dtype } => convert(&input, &output, &dtype),
        Command::Inspect { file } => inspect(&file),
        Command::Predict { model, imagenet, backbone, weights, classes, top, npy, csv, json, out, batch, images } => {
            predict(
                PredictArgs { model, imagenet, backbone, weights, classes, top, npy, csv, json, out, batch },
                &images,
            )
        }
        Command::Runs { dir } => runs(&dir),
        Command::Explain { run, images, output, layer } => explain(&run, &images, output, layer.as_deref()),
        Command::Compare { runs, output } => compare(&runs, &output),
        Command::Export { run, format, output, opset, dynamic_batch, fp16, with_preprocessing } => {
            let opts = tlab::tools::export::OnnxOptions { opset, dynamic_batch, fp16, with_preprocessing };
            export(&run, &format, output.as_deref(), &opts)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // A user's mistake is one line with its causes, never a backtrace
            // (even with RUST_BACKTRACE set): backtraces are for panics, i.e. bugs.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", dedup_chain(&chain).join(": "));
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

fn new_recipe(data: &Path, output: Option<PathBuf>) -> anyhow::Result<ExitCode> {
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
fn tui(path: &Path) -> anyhow::Result<ExitCode> {
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

fn data_doctor(dir: &Path, json: bool, near_bits: u32, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let d = tlab::tools::doctor::diagnose(dir, near_bits)?;
    let name =
        tlab::util::paths::absolute(dir).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let out = out.unwrap_or_else(|| tlab::run::files::default_run_dir(&format!("data-{name}")));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let text = serde_json::to_string_pretty(&d)?;
    tlab::fs::atomic_write(&out.join("report.json"), text.as_bytes())?;
    tlab::fs::atomic_write(&out.join("report.md"), (d.lines().join("\n") + "\n").as_bytes())?;
    let mut csv = String::from("path,split,class,issues\n");
    for im in d.images.iter().filter(|i| !i.issues.is_empty()) {
        let path = tlab::fs::csv_field(&im.path.display().to_string());
        csv += &format!("{path},{},{},{}\n", im.split, tlab::fs::csv_field(&im.class), im.issues.join(" "));
    }
    tlab::fs::atomic_write(&out.join("issues.csv"), csv.as_bytes())?;
    for c in &d.classes {
        let png = tlab::present::views::png_bytes(&d.mosaic(&c.class, 32))?;
        tlab::fs::atomic_write(&out.join(format!("mosaic-{}.png", c.class)), &png)?;
    }
    if json {
        println!("{text}");
    } else {
        for line in d.lines() {
            println!("{line}");
        }
        println!("wrote report.md, report.json, issues.csv and {} mosaic(s) to {}", d.classes.len(), out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn label_issues(run: &Path, folds: usize, json: bool, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
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
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    tlab::fs::atomic_write(&out.join("label_issues.csv"), found.csv().as_bytes())?;
    tlab::fs::atomic_write(&out.join("label_issues.png"), &tlab::present::views::png_bytes(&found.mosaic(48))?)?;
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

fn embed(embedder: &tlab::tools::embed::Embedder, dir: &Path, batch: usize, output: &Path) -> anyhow::Result<ExitCode> {
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

fn parse_budget(text: &str) -> Result<std::time::Duration, String> {
    tlab::tools::tune::space::budget_text(text)
}

fn tune(
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

fn check(recipes: &[PathBuf], syntax_only: bool, json: bool) -> anyhow::Result<ExitCode> {
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

/// Progress bars on a terminal, plain lines otherwise; the run directory's
/// files come from the [`RunRecorder`] every event and line also goes to.
struct Progress {
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    step_label: String,
    /// Set by SIGINT/SIGTERM: stop after the current batch.
    interrupted: Arc<AtomicBool>,
    recorder: RunRecorder,
}

impl Progress {
    fn new(recorder: RunRecorder) -> Self {
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
    fn show(&self, s: &str) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(s);
            }
            None => println!("{s}"),
        }
    }

    /// Shows and logs `s`.
    fn line(&mut self, s: String) {
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

fn run(recipe_path: Option<PathBuf>, out: Option<PathBuf>, resume: Option<PathBuf>) -> anyhow::Result<ExitCode> {
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
                println!(
                    "accuracy {:.4}  top-{} {:.4}",
                    eval.metrics.accuracy, eval.metrics.top_k, eval.metrics.top_k_accuracy
                );
            }
            Ok(ExitCode::SUCCESS)
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
    // With mixup/CutMix in the first fine_tune, show what it trains on: mixed images.
    let (grid, names) = match tlab::present::preview::mix_after(&recipe, 0) {
        Some(mix) => {
            let samples = tlab::present::preview::mixed_samples(&data, aug.as_ref(), &mix, seed, count);
            let captions: Vec<String> = samples.iter().map(|(_, c)| c.clone()).collect();
            // Two lines per tile: the weight and class of each image.
            let tiles: Vec<tlab::util::draw::Captioned> = samples
                .into_iter()
                .map(|(img, c)| {
                    let lines = c.split(" + ").map(|l| (l.to_string(), tlab::util::draw::BLACK)).collect();
                    (img, lines)
                })
                .collect();
            let cols = (tiles.len() as f64).sqrt().ceil() as usize;
            (tlab::util::draw::gallery(&tiles, cols.max(1), 128), captions)
        }
        None => {
            let (grid, tiles) = tlab::present::preview::labelled_grid(&data, aug.as_ref(), seed, count);
            (grid, tiles.into_iter().map(|t| t.class).collect())
        }
    };
    if let Some(p) = &png {
        let mut bytes = Vec::new();
        grid.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
        tlab::fs::atomic_write(p, &bytes)?;
        println!("wrote {} ({}×{}, {} samples)", p.display(), grid.width(), grid.height(), names.len());
    }
    if png.is_none() || std::io::stdout().is_terminal() {
        let conf = viuer::Config { absolute_offset: false, width: Some(64), ..Default::default() };
        viuer::print(&image::DynamicImage::ImageRgb8(grid), &conf).context("printing the preview")?;
        println!("{}", names.join(" · "));
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(case: BenchCase) -> anyhow::Result<ExitCode> {
    let result = match case {
        BenchCase::Forward { backbone, batch, size, iters, warmup } => {
            tlab::tools::bench::forward(&backbone, batch, size, iters.max(1), warmup)?
        }
        BenchCase::TrainStep { backbone, freeze, batch, size, iters, warmup } => {
            tlab::tools::bench::train_step(&backbone, &freeze, batch, size, iters.max(1), warmup)?
        }
        BenchCase::OptimizerStep { backbone, optimizer, iters, warmup } => {
            tlab::tools::bench::optimizer_step(&backbone, &optimizer, iters.max(1), warmup)?
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(ExitCode::SUCCESS)
}

fn convert(input: &Path, output: &Path, dtype: &str) -> anyhow::Result<ExitCode> {
    let dtype = if dtype == "f16" { candle_core::DType::F16 } else { candle_core::DType::F32 };
    let tensors = tlab::formats::weights::load_ordered(input)?;
    tlab::formats::weights::save_safetensors(&tensors, dtype, output)?;
    let params: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!("{} → {}: {} tensors, {} values", input.display(), output.display(), tensors.len(), params);
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    let format = tlab::formats::weights::detect(file)?;
    let tensors = tlab::formats::weights::load_ordered(file)?;
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
        let (renamed, naming) = tlab::models::naming::to_reference(arch, map.clone())?;
        for with_classifier in [true, false] {
            let mut p = tlab::models::layers::ParamLoader::from_tensors(file.display().to_string(), renamed.clone());
            if let Ok(b) = tlab::models::build_backbone(arch, &mut p, with_classifier) {
                if !with_classifier {
                    p.skip_prefix(b.classifier_prefix());
                }
                if p.finish(true, None).is_ok() {
                    let part = if with_classifier { "with ImageNet classifier" } else { "backbone only" };
                    fits.push(format!("{arch} ({part}, {})", naming.name()));
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

/// The options of `tlab predict`.
struct PredictArgs {
    model: Option<PathBuf>,
    imagenet: bool,
    backbone: String,
    weights: Option<PathBuf>,
    classes: Option<PathBuf>,
    top: usize,
    npy: Option<PathBuf>,
    csv: Option<PathBuf>,
    json: bool,
    out: Option<PathBuf>,
    batch: usize,
}

fn open_predictor(args: &PredictArgs) -> anyhow::Result<tlab::predict::Predictor> {
    Ok(match (&args.model, args.imagenet) {
        // A tlab `.onnx` export stands in for its run directory.
        (Some(file), false) if file.is_file() && file.extension().is_some_and(|e| e == "onnx") => {
            tlab::predict::Predictor::from_onnx(file)?
        }
        (Some(dir), false) => tlab::predict::Predictor::from_run_dir(dir)?,
        (None, true) => {
            let weights = args.weights.clone().unwrap_or_else(tlab::predict::shipped_imagenet_weights);
            let classes = args.classes.clone().unwrap_or_else(tlab::predict::shipped_imagenet_classes);
            tlab::predict::Predictor::imagenet(&args.backbone, &weights, &classes)?
        }
        _ => bail!("give either --model RUN_DIR or --imagenet"),
    })
}

/// Class indices of `p`, most probable first, the first `top`.
fn ranked(p: &[f32], top: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(top.max(1));
    order
}

/// The predictions as JSON lines, as text (few images, nothing else asked)
/// and as `--csv`.
fn show_predictions(
    args: &PredictArgs,
    paths: &[PathBuf],
    probs: &[Vec<f32>],
    classes: &[String],
) -> anyhow::Result<()> {
    let quiet = args.json || args.csv.is_some() || args.out.is_some() || paths.len() > 50;
    if args.json {
        for (path, p) in paths.iter().zip(probs) {
            let top: Vec<(String, f32)> = ranked(p, args.top).into_iter().map(|i| (classes[i].clone(), p[i])).collect();
            let line = serde_json::json!({
                "path": tlab::util::paths::shown(path).display().to_string(),
                "predicted": top[0].0,
                "confidence": top[0].1,
                "top": top,
            });
            println!("{line}");
        }
    }
    if !quiet {
        for (path, p) in paths.iter().zip(probs) {
            println!("{}", tlab::util::paths::shown(path).display());
            for i in ranked(p, args.top) {
                println!("  {:>7.4}  {}", p[i], classes[i]);
            }
        }
    }
    if let Some(file) = &args.csv {
        let mut text = String::from("path,predicted,confidence,top_k\n");
        for (path, p) in paths.iter().zip(probs) {
            let order = ranked(p, args.top);
            let top: Vec<String> = order.iter().map(|&i| format!("{}:{:.4}", classes[i], p[i])).collect();
            text.push_str(&format!(
                "{},{},{:.6},{}\n",
                tlab::fs::csv_field(&tlab::util::paths::shown(path).display().to_string()),
                tlab::fs::csv_field(&classes[order[0]]),
                p[order[0]],
                tlab::fs::csv_field(&top.join(" "))
            ));
        }
        tlab::fs::atomic_write(file, text.as_bytes())?;
    }
    Ok(())
}

/// Images in class folders: the accuracy, and with `--out` the metrics and
/// predictions files of a run directory.
fn score(
    args: &PredictArgs,
    paths: &[PathBuf],
    probs: &[Vec<f32>],
    labels: &[usize],
    classes: &[String],
) -> anyhow::Result<()> {
    let flat: Vec<f32> = probs.concat();
    let metrics = tlab::metrics::compute(&flat, labels, classes, args.top.min(classes.len()).max(1));
    let line = format!(
        "accuracy {:.4} on {} images (top-{} {:.4})",
        metrics.accuracy, metrics.count, metrics.top_k, metrics.top_k_accuracy
    );
    // With --json, stdout holds only the JSON lines.
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    let Some(dir) = &args.out else { return Ok(()) };
    let predictions: Vec<tlab::train::Prediction> = paths
        .iter()
        .zip(probs)
        .zip(labels)
        .map(|((path, p), &truth)| {
            let predicted = ranked(p, 1)[0];
            tlab::train::Prediction {
                path: path.clone(),
                truth,
                predicted,
                confidence: p[predicted],
                loss: tlab::metrics::nll(p[truth]) as f32,
            }
        })
        .collect();
    tlab::fs::atomic_write(&dir.join("metrics.json"), tlab::run::files::metrics_json(&metrics)?.as_bytes())?;
    tlab::fs::atomic_write(
        &dir.join("predictions.csv"),
        tlab::run::files::predictions_csv(&predictions, classes).as_bytes(),
    )?;
    Ok(())
}

/// `--npy PREFIX`: the exact model inputs and the probabilities as NumPy files.
fn write_npy(
    prefix: &Path,
    predictor: &tlab::predict::Predictor,
    paths: &[PathBuf],
    probs: &[Vec<f32>],
) -> anyhow::Result<()> {
    let tensors: Vec<candle_core::Tensor> = paths.iter().map(|p| predictor.input(p)).collect::<tlab::Result<_>>()?;
    let stacked = candle_core::Tensor::cat(&tensors, 0)?;
    let shape: Vec<usize> = stacked.dims().to_vec();
    let values = stacked.flatten_all()?.to_vec1::<f32>()?;
    let name = |suffix: &str| {
        let mut p = prefix.to_path_buf().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    tlab::fs::atomic_write(&name("-inputs.npy"), &npy(&shape, &values))?;
    let classes = predictor.classes().len();
    tlab::fs::atomic_write(&name("-probs.npy"), &npy(&[paths.len(), classes], &probs.concat()))?;
    Ok(())
}

fn predict(args: PredictArgs, images: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let predictor = open_predictor(&args)?;
    let inputs = tlab::predict::expand_inputs(images, predictor.classes())?;
    let paths: Vec<PathBuf> = inputs.iter().map(|(p, _)| p.clone()).collect();
    let bar = (std::io::stderr().is_terminal() && paths.len() > args.batch).then(|| {
        let bar = ProgressBar::new(paths.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("predict [{bar:30}] {pos}/{len} {per_sec} eta {eta}").expect("template"),
        );
        bar
    });
    let started = Instant::now();
    let probs = predictor.probabilities_batched(&paths, args.batch, |done| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let classes = predictor.classes();
    show_predictions(&args, &paths, &probs, classes)?;
    let labelled: Vec<usize> = inputs.iter().filter_map(|(_, l)| *l).collect();
    if labelled.len() == inputs.len() && !labelled.is_empty() {
        score(&args, &paths, &probs, &labelled, classes)?;
    } else if args.out.is_some() {
        bail!("--out needs folders with one sub-folder per class of the model ({})", classes.join(", "));
    }
    eprintln!(
        "{} images in {seconds:.2}s ({:.0} img/s, batch {})",
        paths.len(),
        paths.len() as f64 / seconds.max(1e-9),
        args.batch
    );
    if let Some(prefix) = &args.npy {
        write_npy(prefix, &predictor, &paths, &probs)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(run: &Path, images: &[PathBuf], output: Option<PathBuf>, layer: Option<&str>) -> anyhow::Result<ExitCode> {
    let predictor = tlab::predict::Predictor::from_run_dir_for_gradients(run)?;
    let model = predictor.classifier().context("not a trained model")?;
    let names = model.backbone.block_names();
    let layer = match layer {
        None => None,
        Some(name) => Some(
            names
                .iter()
                .position(|n| n == name)
                .map(|i| i + 1)
                .with_context(|| format!("--layer {name}: no such block; the blocks are {}", names.join(", ")))?,
        ),
    };
    let out = output.unwrap_or_else(|| run.join("explain"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let (size, preprocess) = predictor.input_spec();
    let classes = predictor.classes();
    for path in tlab::predict::expand_inputs(images, classes)?.into_iter().map(|(p, _)| p) {
        let pixels = tlab::data::decode(&path, size).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let truth = tlab::predict::class_of(&path, classes);
        let e = match layer {
            None => tlab::explain::explain_pixels(model, preprocess, &pixels, size, classes, truth)?,
            Some(l) => {
                let s = size as usize;
                let as_f32: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
                let x = preprocess.to_tensor(&as_f32, 1, s, s)?;
                let probs = predictor.probabilities(&path)?;
                let predicted = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                let map = tlab::explain::grad_cam(model, &x, predicted, Some(l))?;
                let image = image::RgbImage::from_raw(size, size, pixels.clone()).context("image size")?;
                let picture = tlab::util::draw::gallery(
                    &[
                        (image.clone(), vec![("image".into(), tlab::util::draw::BLACK)]),
                        (map.overlay(&image), vec![(format!("pred {}", classes[predicted]), tlab::util::draw::BLACK)]),
                    ],
                    2,
                    160,
                );
                tlab::explain::Explanation { picture, predicted, confidence: probs[predicted], peak: map.peak(), map }
            }
        };
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file = out.join(format!("{stem}-gradcam.png"));
        tlab::fs::atomic_write(&file, &tlab::present::views::png_bytes(&e.picture)?)?;
        println!(
            "{} → {} ({:.3}){}  {}",
            tlab::util::paths::shown(&path).display(),
            classes[e.predicted],
            e.confidence,
            truth.map(|t| format!(", true {}", classes[t])).unwrap_or_default(),
            tlab::util::paths::shown(&file).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn runs(dir: &Path) -> anyhow::Result<ExitCode> {
    let runs = tlab::run::history::list(dir)?;
    if runs.is_empty() {
        println!("no runs in {}", tlab::util::paths::shown(dir).display());
        return Ok(ExitCode::SUCCESS);
    }
    let width = runs.iter().map(|r| r.name.chars().count()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<16}  {:<10}  {:>8}  {:>8}  {:>8}  recipe",
        "run", "started (UTC)", "status", "accuracy", "macro F1", "time"
    );
    for r in &runs {
        let num = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
        println!(
            "{:<width$}  {:<16}  {:<10}  {:>8}  {:>8}  {:>8}  {}",
            r.name,
            r.started_text(),
            if r.complete { "complete" } else { "incomplete" },
            num(r.metrics.as_ref().map(|m| m.accuracy)),
            num(r.metrics.as_ref().map(|m| m.macro_avg.f1)),
            r.seconds.map_or("–".to_string(), |s| format!("{s:.0}s")),
            r.recipe_hash.as_deref().unwrap_or("–"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn compare(dirs: &[PathBuf], output: &Path) -> anyhow::Result<ExitCode> {
    let runs: Vec<tlab::run::history::RunSummary> =
        dirs.iter().map(|d| tlab::run::history::RunSummary::read(d)).collect::<tlab::Result<_>>()?;
    let width = runs.iter().map(|r| r.name.chars().count()).max().unwrap_or(8).max(18);
    print!("{:<16}", "");
    for r in &runs {
        print!("  {:>width$}", r.name);
    }
    println!();
    for (name, p, values) in tlab::run::history::metric_rows(&runs) {
        print!("{name:<16}");
        for (k, v) in values.iter().enumerate() {
            let cell = match (v, values[0]) {
                (Some(v), Some(base)) if k > 0 => format!("{v:.p$} ({:+.p$})", v - base),
                (Some(v), _) => format!("{v:.p$}"),
                (None, _) => "–".into(),
            };
            print!("  {cell:>width$}");
        }
        println!();
    }
    for r in &runs[1..] {
        println!("\nrecipe {} → {}:", runs[0].name, r.name);
        match (&runs[0].recipe, &r.recipe) {
            (Some(a), Some(b)) => {
                let diff = tlab::run::history::recipe_diff(a, b);
                if diff.is_empty() {
                    println!("  same recipe");
                }
                for c in diff {
                    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
                    println!("  {}: {} → {}", c.key, show(&c.before), show(&c.after));
                }
            }
            _ => println!("  (a run without recipe.toml: made by an older tlab)"),
        }
    }
    let chart = tlab::present::views::CompareChart {
        runs: runs.iter().map(|r| (r.name.clone(), r.history.iter().map(|(_, e)| e.clone()).collect())).collect(),
    };
    let png = chart.to_png();
    if !output.is_dir() {
        bail!("{}: the output folder does not exist", tlab::util::paths::shown(output).display());
    }
    tlab::fs::atomic_write(&output.join("compare.png"), &tlab::present::views::png_bytes(&png)?)?;
    tlab::fs::atomic_write(&output.join("compare.html"), tlab::run::history::compare_html(&runs, &png)?.as_bytes())?;
    println!(
        "\nwrote {} and {}",
        tlab::util::paths::shown(&output.join("compare.png")).display(),
        tlab::util::paths::shown(&output.join("compare.html")).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A NumPy `.npy` file (format 1.0) of little-endian float32 values.
fn npy(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

fn export(
    run: &Path,
    format: &str,
    output: Option<&Path>,
    opts: &tlab::tools::export::OnnxOptions,
) -> anyhow::Result<ExitCode> {
    match format {
        "onnx" => {
            let (path, bytes) = tlab::tools::export::export_onnx(run, output, opts)?;
            println!(
                "wrote {} ({:.1} MB, opset {}, input `input`, outputs `logits` and `probabilities`)",
                tlab::util::paths::shown(&path).display(),
                bytes as f64 / 1e6,
                opts.opset
            );
        }
        "torchvision" => {
            let e = tlab::tools::export::export_torchvision(run, output)?;
            println!(
                "wrote {} ({} tensors); load it in PyTorch with:",
                tlab::util::paths::shown(&e.path).display(),
                e.tensors
            );
            println!("import torch, torchvision\n{}", e.load.trim_end());
        }
        _ => {
            // The weights as tlab saved them: torchvision's names for the
            // backbone (`features.0.0.weight`, …), `head.*` for the new head.
            let from = run.join("model.safetensors");
            if !from.is_file() {
                bail!(
                    "{}: no model.safetensors (is it a finished run directory?)",
                    tlab::util::paths::shown(run).display()
                );
            }
            let to = output.map_or_else(|| run.join("export.safetensors"), Path::to_path_buf);
            let bytes = std::fs::read(&from).with_context(|| format!("{}", from.display()))?;
            tlab::fs::atomic_write(&to, &bytes)?;
            println!("wrote {}", tlab::util::paths::shown(&to).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
