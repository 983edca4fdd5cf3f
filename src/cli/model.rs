//! The model commands: `tlab predict`, `tlab explain`, `tlab export`,
//! `tlab convert`, `tlab inspect` and `tlab bench`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use tlab::predict::{Predictor, Ranked};

/// What `tlab export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// An ONNX graph with the model card in its metadata.
    Onnx,
    /// A PyTorch state dict for the torchvision model (zip .pth).
    Torchvision,
    /// The weights with tlab's (torchvision-style) names.
    Safetensors,
}

/// The element type `tlab convert` stores.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F16,
}

/// The options of `tlab predict`.
pub struct PredictArgs {
    pub model: Option<PathBuf>,
    pub imagenet: bool,
    pub backbone: String,
    pub weights: Option<PathBuf>,
    pub classes: Option<PathBuf>,
    pub top: usize,
    pub npy: Option<PathBuf>,
    pub csv: Option<PathBuf>,
    pub json: bool,
    pub out: Option<PathBuf>,
    pub batch: usize,
}

fn open_predictor(args: &PredictArgs) -> anyhow::Result<Predictor> {
    Ok(match (&args.model, args.imagenet) {
        // A tlab `.onnx` export stands in for its run directory.
        (Some(file), false) if file.is_file() && file.extension().is_some_and(|e| e == "onnx") => {
            Predictor::from_onnx(file)?
        }
        (Some(dir), false) => Predictor::from_run_dir(dir)?,
        (None, true) => {
            let weights = args.weights.clone().unwrap_or_else(tlab::predict::shipped_imagenet_weights);
            let classes = args.classes.clone().unwrap_or_else(tlab::predict::shipped_imagenet_classes);
            Predictor::imagenet(&args.backbone, &weights, &classes)?
        }
        _ => bail!("give either --model RUN_DIR or --imagenet"),
    })
}

/// The predictions as JSON lines, as text (few images, nothing else asked)
/// and as `--csv`.
fn show_predictions(args: &PredictArgs, ranked: &[Ranked]) -> anyhow::Result<()> {
    if args.json {
        for r in ranked {
            println!("{}", r.json());
        }
    }
    let quiet = args.json || args.csv.is_some() || args.out.is_some() || ranked.len() > 50;
    if !quiet {
        for r in ranked {
            println!("{}", tlab::util::paths::shown(&r.path).display());
            for (class, p) in &r.top {
                println!("  {p:>7.4}  {class}");
            }
        }
    }
    if let Some(file) = &args.csv {
        tlab::fs::atomic_write(file, tlab::predict::ranked_csv(ranked).as_bytes())?;
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
    let (metrics, predictions) = tlab::predict::score(paths, probs, labels, classes, args.top);
    let line = tlab::present::rows::headline(&metrics);
    // With --json, stdout holds only the JSON lines.
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    let Some(dir) = &args.out else { return Ok(()) };
    tlab::fs::atomic_write(&dir.join("metrics.json"), tlab::run::files::metrics_json(&metrics)?.as_bytes())?;
    tlab::fs::atomic_write(
        &dir.join("predictions.csv"),
        tlab::run::files::predictions_csv(&predictions, classes).as_bytes(),
    )?;
    Ok(())
}

pub fn predict(args: PredictArgs, images: &[PathBuf]) -> anyhow::Result<ExitCode> {
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
    let ranked: Vec<Ranked> = paths.iter().zip(&probs).map(|(p, pr)| Ranked::new(p, pr, classes, args.top)).collect();
    show_predictions(&args, &ranked)?;
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
        predictor.write_npy(prefix, &paths, &probs)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `tlab explain RUN IMAGE…`: a Grad-CAM picture per image.
pub fn explain(
    run: &Path,
    images: &[PathBuf],
    output: Option<PathBuf>,
    layer: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let predictor = Predictor::from_run_dir_for_gradients(run)?;
    let out = output.unwrap_or_else(|| run.join("explain"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let classes = predictor.classes();
    for path in tlab::predict::expand_inputs(images, classes)?.into_iter().map(|(p, _)| p) {
        let e = tlab::explain::explain_file(&predictor, &path, layer)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file = out.join(format!("{stem}-gradcam.png"));
        tlab::fs::atomic_write(&file, &tlab::present::views::png_bytes(&e.picture)?)?;
        println!(
            "{} → {} ({:.3}){}  {}",
            tlab::util::paths::shown(&path).display(),
            classes[e.predicted],
            e.confidence,
            e.truth.map(|t| format!(", true {}", classes[t])).unwrap_or_default(),
            tlab::util::paths::shown(&file).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(
    run: &Path,
    format: ExportFormat,
    output: Option<&Path>,
    opts: &tlab::tools::export::OnnxOptions,
) -> anyhow::Result<ExitCode> {
    match format {
        ExportFormat::Onnx => {
            let (path, bytes) = tlab::tools::export::export_onnx(run, output, opts)?;
            println!(
                "wrote {} ({:.1} MB, opset {}, input `input`, outputs `logits` and `probabilities`)",
                tlab::util::paths::shown(&path).display(),
                bytes as f64 / 1e6,
                opts.opset
            );
        }
        ExportFormat::Torchvision => {
            let e = tlab::tools::export::export_torchvision(run, output)?;
            println!(
                "wrote {} ({} tensors); load it in PyTorch with:",
                tlab::util::paths::shown(&e.path).display(),
                e.tensors
            );
            println!("import torch, torchvision\n{}", e.load.trim_end());
        }
        ExportFormat::Safetensors => {
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

pub fn convert(input: &Path, output: &Path, dtype: Dtype) -> anyhow::Result<ExitCode> {
    let dtype = match dtype {
        Dtype::F16 => candle_core::DType::F16,
        Dtype::F32 => candle_core::DType::F32,
    };
    let tensors = tlab::formats::weights::load_ordered(input)?;
    tlab::formats::weights::save_safetensors(&tensors, dtype, output)?;
    let params: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    println!("{} → {}: {} tensors, {} values", input.display(), output.display(), tensors.len(), params);
    Ok(ExitCode::SUCCESS)
}

/// `tlab inspect FILE`.
pub fn inspect(file: &Path) -> anyhow::Result<ExitCode> {
    for line in tlab::tools::inspect::inspect(file)?.lines(file) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
