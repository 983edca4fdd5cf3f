//! The `tlab` command line: the arguments (clap), and a call into `cli`
//! per command. Library errors are typed; here at the edge they become one
//! or two readable lines and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod cli;

use cli::model::{Dtype, ExportFormat, PredictArgs};

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
        #[arg(long, value_parser = cli::run::parse_budget)]
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
        #[arg(long, value_enum, default_value_t = Dtype::F32)]
        dtype: Dtype,
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
        #[arg(long, value_enum)]
        format: ExportFormat,
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

/// The optimizers `tlab bench optimizer-step` measures.
#[derive(Clone, Copy, ValueEnum)]
enum Optimizer {
    Sgd,
    Adam,
    Adamw,
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
        /// Weight decay 0.01; momentum 0.9 for sgd.
        #[arg(long, value_enum, default_value_t = Optimizer::Adamw)]
        optimizer: Optimizer,
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
            cli::run::run(recipe, out, resume)
        }
        Command::Check { recipes, syntax_only, json } => cli::run::check(&recipes, syntax_only, json),
        Command::Tune { recipe, budget, trials, rungs, eta, out, resume } => {
            let opts = tlab::tools::tune::Options {
                budget,
                trials,
                rungs: rungs.map(|r| r as usize),
                eta: eta.map(|e| e as usize),
            };
            cli::run::tune(recipe.as_deref(), out, resume, &opts)
        }
        Command::Bench { case } => bench(case),
        #[cfg(feature = "tui")]
        Command::Tui { recipe } => cli::data::tui(&recipe),
        Command::New { data, output } => cli::data::new_recipe(&data, output),
        Command::Embed { dir, backbone, weights, layer, size, batch, output } => {
            let weights = weights.unwrap_or_else(|| tlab::predict::shipped_imagenet_weights().display().to_string());
            match tlab::tools::embed::Embedder::new(&backbone, &weights, layer.as_deref(), size) {
                Ok(embedder) => cli::data::embed(&embedder, &dir, batch, &output),
                Err(e) => Err(e.into()),
            }
        }
        Command::Data { dir: Some(dir), json, near_bits, out, .. } => {
            cli::data::data_doctor(&dir, json, near_bits, out)
        }
        Command::Data { label_issues: Some(run), folds, json, out, .. } => {
            cli::data::label_issues(&run, folds as usize, json, out)
        }
        Command::Data { .. } => Err(anyhow::anyhow!("give a data folder or --label-issues RUN")),
        Command::Preview { recipe, png, count, seed } => cli::data::preview(&recipe, png, count, seed),
        Command::Convert { input, output, dtype } => cli::model::convert(&input, &output, dtype),
        Command::Inspect { file } => cli::model::inspect(&file),
        Command::Predict { model, imagenet, backbone, weights, classes, top, npy, csv, json, out, batch, images } => {
            cli::model::predict(
                PredictArgs { model, imagenet, backbone, weights, classes, top, npy, csv, json, out, batch },
                &images,
            )
        }
        Command::Runs { dir } => cli::runs::runs(&dir),
        Command::Explain { run, images, output, layer } => cli::model::explain(&run, &images, output, layer.as_deref()),
        Command::Compare { runs, output } => cli::runs::compare(&runs, &output),
        Command::Export { run, format, output, opset, dynamic_batch, fp16, with_preprocessing } => {
            let opts = tlab::tools::export::OnnxOptions { opset, dynamic_batch, fp16, with_preprocessing };
            cli::model::export(&run, format, output.as_deref(), &opts)
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

fn bench(case: BenchCase) -> anyhow::Result<ExitCode> {
    let result = match case {
        BenchCase::Forward { backbone, batch, size, iters, warmup } => {
            tlab::tools::bench::forward(&backbone, batch, size, iters.max(1), warmup)?
        }
        BenchCase::TrainStep { backbone, freeze, batch, size, iters, warmup } => {
            tlab::tools::bench::train_step(&backbone, &freeze, batch, size, iters.max(1), warmup)?
        }
        BenchCase::OptimizerStep { backbone, optimizer, iters, warmup } => {
            let name = optimizer.to_possible_value().expect("no variant is skipped");
            tlab::tools::bench::optimizer_step(&backbone, name.get_name(), iters.max(1), warmup)?
        }
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(ExitCode::SUCCESS)
}
