//! What a run leaves on disk: the reports of a [`Lab`] written into its run
//! directory — numbers (metrics.json, predictions.csv, history.csv), the
//! Markdown and HTML reports, the pictures, the model and status.json.
//!
//! It sits above both the engine ([`crate::lab`]) and the views
//! ([`crate::present::views`]), which render the same rows for notebooks: the pictures
//! in a run directory are the notebook's pictures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::models::card::{HeadCard, ModelCard};
use crate::present::views::{self, ClassReport, ConfusionMatrix, HistoryChart, Samples};
use crate::recipe::{Recipe, StepKind};
use crate::run::files;
use crate::train::checkpoint::Earlier;
use crate::train::Checkpoint;

/// How many mistakes the pictures and report.html show.
const MISTAKES_SHOWN: usize = 24;
/// How many of the worst mistakes report.html explains with Grad-CAM.
const GRAD_CAM_SHOWN: usize = 6;
/// How many augmented samples `augment.png` shows.
const SAMPLES_SHOWN: usize = 16;

/// How a run went, for status.json.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunInfo {
    /// Every step finished.
    pub complete: bool,
    /// When the run started (seconds since the Unix epoch).
    pub started: u64,
    /// Wall time so far, in seconds.
    pub seconds: f64,
}

/// `status.json`: what a run directory holds and how its run went. Written
/// when the directory is created (so a run killed before its first
/// checkpoint names its recipe) and again with every set of reports.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Every step finished.
    pub complete: bool,
    /// How many steps the recipe has.
    pub steps: usize,
    /// The finished steps, 1-based.
    pub steps_done: Vec<usize>,
    /// The recipe's absolute path.
    pub recipe: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_hash: Option<String>,
    /// When the run started (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Wall time, over every process of a resumed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl Status {
    /// Reads `dir/status.json`; a clear error when it is missing or malformed.
    pub fn read(dir: &Path) -> Result<Status> {
        let path = dir.join("status.json");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::data(dir, "not a tlab run directory (no status.json)"),
            _ => Error::io(&path, e),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::data(&path, format!("invalid status: {e}")))
    }

    /// Writes `dir/status.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json { what: "status.json", source })?;
        crate::fs::atomic_write(&dir.join("status.json"), text.as_bytes())
    }
}

/// A run directory as `tlab run`, a TUI session and a notebook leave it:
/// status.json naming the recipe from the start (so a run killed before its
/// first checkpoint can still be resumed), checkpoints after every epoch, and
/// the reports. `tlab run --resume DIR` continues any of them.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
    recipe: Recipe,
    /// When the run started (seconds since the Unix epoch), kept across resumes.
    started_at: u64,
    /// Wall time of the earlier processes of a resumed run.
    earlier_seconds: f64,
    opened: Instant,
}

impl RunDir {
    /// Creates `path` for a new run of `recipe`, or with `resuming` reopens
    /// it, keeping its start time and the seconds it had run. Temp files left
    /// by a killed process are removed.
    pub fn open(path: &Path, recipe: &Recipe, resuming: bool) -> Result<RunDir> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let previous = Status::read(path).ok().filter(|_| resuming).unwrap_or_default();
        let started_at = previous.started.unwrap_or(now);
        let earlier_seconds = previous.seconds.unwrap_or(0.0);
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        // A process killed mid-write leaves its temp file; never its target.
        crate::fs::remove_stale_temps(path);
        if !path.join("status.json").exists() {
            let status = Status {
                steps: recipe.steps.len(),
                recipe: crate::util::paths::absolute(&recipe.path),
                ..Status::default()
            };
            status.write(path)?;
        }
        Ok(RunDir {
            path: path.to_path_buf(),
            recipe: recipe.clone(),
            started_at,
            earlier_seconds,
            opened: Instant::now(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recipe checkpoints are written for (a TUI session's recipe
    /// changes when its file is edited).
    pub fn set_recipe(&mut self, recipe: &Recipe) {
        self.recipe = recipe.clone();
    }

    /// Saves a fine_tune step's state after an epoch (`earlier`: what the
    /// the steps before it), atomically, next to the reports.
    pub fn checkpoint(&self, step: usize, earlier: &Earlier, state: &Checkpoint<'_>) -> Result<()> {
        crate::train::checkpoint::write(&self.path, &self.recipe, step, earlier, state)
    }

    /// How the run went so far: wall time includes earlier processes.
    pub fn info(&self, complete: bool) -> RunInfo {
        RunInfo {
            complete,
            started: self.started_at,
            seconds: self.earlier_seconds + self.opened.elapsed().as_secs_f64(),
        }
    }

    /// Writes every report of `lab` (see [`write_reports`]).
    pub fn write_reports(&self, lab: &Lab, complete: bool) -> Result<Vec<PathBuf>> {
        write_reports(lab, &self.path, self.info(complete))
    }
}

/// Writes every report of `lab` into `dir` (created if needed): status.json
/// saying whether every step completed (with the start, the wall time and a
/// hash of the recipe), recipe.toml (the recipe as run), metrics.json and predictions.csv
/// (from the last evaluate step), history.csv, report.md, report.html, the
/// pictures (curves.png, confusion.png, per_class.png, mistakes.png,
/// augment.png — each where there is something to draw), and
/// model.safetensors + model.json. Every file is written atomically.
pub fn write_reports(lab: &Lab, dir: &Path, info: RunInfo) -> Result<Vec<PathBuf>> {
    let _t = crate::util::profile::scope("reports (files, pictures, Grad-CAM)");
    let complete = info.complete;
    let mut written = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = dir.join(name);
        crate::fs::atomic_write(&p, bytes)?;
        written.push(p);
        Ok(())
    };
    let recipe = lab.recipe();
    let classes: Vec<String> = lab.data_ref().map(|d| d.classes.clone()).unwrap_or_default();
    let done: Vec<usize> = lab.results().map(|r| r.index + 1).collect();
    let text = std::fs::read_to_string(&recipe.path).unwrap_or_default();
    let status = Status {
        complete,
        steps: recipe.steps.len(),
        steps_done: done,
        recipe: crate::util::paths::absolute(&recipe.path),
        recipe_hash: Some(recipe_hash(&text)),
        started: Some(info.started),
        seconds: Some(info.seconds),
    };
    put("status.json", serde_json::to_string_pretty(&status).unwrap_or_default().as_bytes())?;
    put("recipe.toml", text.as_bytes())?;
    let eval = lab.evaluation_ref();
    if let Some(eval) = eval {
        put("metrics.json", files::metrics_json(&eval.metrics)?.as_bytes())?;
        put("predictions.csv", files::predictions_csv(&eval.predictions, &classes).as_bytes())?;
    }
    put("history.csv", files::history_csv(lab.history_ref()).as_bytes())?;
    if let Some(found) = last_lr_find(lab) {
        put("lr_find.csv", found.to_csv().as_bytes())?;
    }
    let steps: Vec<String> = recipe.steps.iter().map(|s| format!("{}: {}", s.kind.name(), s.kind.summary())).collect();
    let mut md = String::new();
    if !complete {
        md.push_str("> **Incomplete run**: not every step finished (see status.json and log.txt).\n\n");
    }
    md += &files::report_markdown(
        &recipe.name,
        &steps,
        lab.history_ref(),
        eval.map(|e| &e.metrics),
        eval.map(|e| e.mistakes.as_slice()).unwrap_or(&[]),
        &classes,
    );
    put("report.md", md.as_bytes())?;
    let pictures = pictures(lab);
    for (name, picture) in &pictures {
        put(name, &views::png_bytes(picture)?)?;
    }
    put("report.html", report_html(lab, complete, &pictures)?.as_bytes())?;
    written.extend(write_model(lab, dir)?);
    Ok(written)
}

/// A short, stable fingerprint of a recipe's text (FNV-1a, 64 bits, hex):
/// runs of the same recipe share it in `tlab runs`.
pub(crate) fn recipe_hash(text: &str) -> String {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")[..12].to_string()
}

/// The file names [`pictures`] can produce.
pub(crate) const PICTURES: &[&str] = &[
    "curves.png",
    "lr_find.png",
    "confusion.png",
    "per_class.png",
    "reliability.png",
    "gradcam.png",
    "mistakes.png",
    "augment.png",
];

/// The last lr_find step's result, if any ran.
fn last_lr_find(lab: &Lab) -> Option<&crate::train::lr_find::LrFindResult> {
    lab.results()
        .filter_map(|r| match &r.output {
            crate::lab::StepOutput::LrFind(found) => Some(found),
            _ => None,
        })
        .last()
}

/// The run's pictures by file name, each only where there is something to draw.
pub fn pictures(lab: &Lab) -> Vec<(&'static str, image::RgbImage)> {
    let mut out = Vec::new();
    if !lab.history_ref().is_empty() {
        out.push(("curves.png", lab.history_chart().to_png()));
    }
    if let Some(found) = last_lr_find(lab) {
        out.push(("lr_find.png", found.to_png()));
    }
    if let Some(eval) = lab.evaluation_ref() {
        out.push(("confusion.png", ConfusionMatrix::from(&eval.metrics).to_png()));
        if let Ok(Some(picture)) = grad_cam_of_mistakes(lab, GRAD_CAM_SHOWN) {
            out.push(("gradcam.png", picture));
        }
        out.push(("per_class.png", ClassReport::from(&eval.metrics).to_png()));
        out.push(("reliability.png", views::ReliabilityDiagram::from(&eval.metrics).to_png()));
        if let Ok(m) = lab.mistakes(MISTAKES_SHOWN) {
            if !m.items.is_empty() {
                out.push(("mistakes.png", m.to_png()));
            }
        }
    }
    if let (Some(data), Some(aug)) = (lab.data_ref(), lab.augmenter()) {
        out.push(("augment.png", Samples::labelled(data, Some(&aug), lab.recipe().seed, SAMPLES_SHOWN).image));
    }
    out
}

/// `report.html`: one self-contained page (pictures embedded as `data:` URIs,
/// no script, no network) with the recipe, the steps, the history, the
/// evaluation and `pictures` (as [`pictures`] made them, not drawn again).
pub(crate) fn report_html(lab: &Lab, complete: bool, pictures: &[(&str, image::RgbImage)]) -> Result<String> {
    let picture = |name: &str| pictures.iter().find(|(n, _)| *n == name).map(|(_, p)| p);
    let recipe = lab.recipe();
    let esc = views::escape;
    let mut body = String::new();
    let headline = match lab.evaluation_ref() {
        Some(e) => esc(&crate::present::rows::headline(&e.metrics)),
        None => "no evaluation yet".into(),
    };
    let state = if complete { "complete" } else { "<span class=\"bad\">incomplete</span>" };
    body.push_str(&format!("<h1>tlab run <code>{}</code></h1><p>{state} · {headline}</p>", esc(&recipe.name)));
    section(&mut body, "Steps", &lab.steps().to_html());
    if !lab.history_ref().is_empty() {
        section(&mut body, "Training history", &HistoryChart::new(lab.history()).to_html()?);
    }
    if let Some(found) = last_lr_find(lab) {
        let caption = format!("<p>{}</p>", views::escape(&found.to_text()));
        let chart = match picture("lr_find.png") {
            Some(p) => views::img_tag(p, "lr_find: loss against learning rate")?,
            None => String::new(),
        };
        section(&mut body, "Learning-rate finder", &format!("{caption}{chart}"));
    }
    if let Some(eval) = lab.evaluation_ref() {
        evaluation_sections(&mut body, lab, eval, pictures)?;
    }
    if let Some(p) = picture("augment.png") {
        let caption = format!("{SAMPLES_SHOWN} augmented training images (seed {})", recipe.seed);
        section(
            &mut body,
            "Augmentation",
            &format!("<figure>{}<figcaption>{caption}</figcaption></figure>", views::img_tag(p, &caption)?),
        );
    }
    let text = std::fs::read_to_string(&recipe.path).unwrap_or_default();
    section(
        &mut body,
        "Recipe",
        &format!(
            "<p><code>{}</code></p><pre>{}</pre>",
            esc(&crate::util::paths::shown(&recipe.path).display().to_string()),
            esc(&text)
        ),
    );
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>tlab run {name}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n",
        name = esc(&recipe.name)
    ))
}

/// The report's sections on the last evaluation: per-class metrics,
/// calibration, confusion, worst mistakes and their Grad-CAM.
fn evaluation_sections(
    body: &mut String,
    lab: &Lab,
    eval: &crate::train::Evaluation,
    pictures: &[(&str, image::RgbImage)],
) -> Result<()> {
    let picture = |name: &str| pictures.iter().find(|(n, _)| *n == name).map(|(_, p)| p);
    let report = ClassReport::from(&eval.metrics);
    let per_class = match picture("per_class.png") {
        Some(p) => views::img_tag(p, "precision, recall and F1 per class")?,
        None => String::new(),
    };
    section(body, "Evaluation", &format!("{}{per_class}", report.to_html()));
    let calibration = format!(
        "<p>Expected calibration error (ECE, {} bins): <b>{:.4}</b>, how far the model's confidence is from its \
             accuracy. Bars: accuracy per confidence bin; orange: the bin's mean confidence; diagonal: perfect.</p>{}",
        crate::metrics::CALIBRATION_BINS,
        eval.metrics.calibration.ece,
        match picture("reliability.png") {
            Some(p) => views::img_tag(p, "reliability diagram")?,
            None => String::new(),
        }
    );
    section(body, "Calibration", &calibration);
    let confusion = ConfusionMatrix::from(&eval.metrics);
    section(body, "Confusion matrix", &confusion.to_html()?);
    if let Ok(m) = lab.mistakes(MISTAKES_SHOWN) {
        section(body, "Worst mistakes", &m.to_html()?);
    }
    if let Some(picture) = picture("gradcam.png") {
        let caption = "<p>Grad-CAM (Selvaraju et al. 2017) at the last block: where the evidence for the \
                           predicted class (red caption) and for the true class lies, for the worst mistakes.</p>";
        section(
            body,
            "Why: Grad-CAM",
            &format!("{caption}{}", views::img_tag(picture, "Grad-CAM of the worst mistakes")?),
        );
    }
    Ok(())
}

/// Grad-CAM of the `n` worst mistakes of the last evaluation, one row each
/// (image, predicted class's map, true class's map); `None` without any.
pub(crate) fn grad_cam_of_mistakes(lab: &Lab, n: usize) -> Result<Option<image::RgbImage>> {
    let (Some(eval), Some(model), Some(data)) = (lab.evaluation_ref(), lab.model(), lab.data_ref()) else {
        return Ok(None);
    };
    let preprocess = model.backbone.preprocess();
    let mut rows = Vec::new();
    for p in eval.mistakes.iter().take(n) {
        let Some(i) = data.valid.paths.iter().position(|q| *q == p.path) else { continue };
        let Some(pixels) = data.valid.pixels.get(i) else { continue };
        let e = crate::explain::explain_pixels(model, &preprocess, &pixels, &data.classes, Some(p.truth), None)?;
        rows.push(e.picture);
    }
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(crate::present::preview::tile(&rows, 2)))
}

fn section(body: &mut String, title: &str, content: &str) {
    body.push_str(&format!("<section><h2>{}</h2>{content}</section>\n", views::escape(title)));
}

/// The page's look: readable on its own, no external resources.
const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;\
padding:0 16px;color:#222}h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;\
margin-top:28px}pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px}table{margin:6px 0}\
img{max-width:100%;height:auto}.bad{color:#c00;font-weight:bold}";

/// model.safetensors and model.json, when a backbone has been built.
fn write_model(lab: &Lab, dir: &Path) -> Result<Vec<PathBuf>> {
    let (Some(model), Some(data)) = (lab.model(), lab.data_ref()) else { return Ok(vec![]) };
    let backbone_step = lab.recipe().steps.iter().find_map(|s| match &s.kind {
        StepKind::Backbone(b) => Some(b.clone()),
        _ => None,
    });
    let Some(b) = backbone_step else { return Ok(vec![]) };
    let card = ModelCard {
        backbone: b.arch.clone(),
        classes: data.classes.clone(),
        image_size: data.size,
        preprocess: model.backbone.preprocess(),
        head: HeadCard::from(&b.head),
        recipe: crate::util::paths::absolute(&lab.recipe().path).display().to_string(),
    };
    let tensors: Vec<_> = model.named_vars().into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect();
    let weights = dir.join("model.safetensors");
    crate::formats::weights::save_safetensors(&tensors, candle_core::DType::F32, &weights)?;
    let json = serde_json::to_string_pretty(&card).map_err(|source| Error::Json { what: "model.json", source })?;
    let card_path = dir.join("model.json");
    crate::fs::atomic_write(&card_path, json.as_bytes())?;
    Ok(vec![weights, card_path])
}
