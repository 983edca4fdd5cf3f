//! `tlab check`: everything short of training, quickly, so a recipe that
//! cannot run is caught before a long run (or in a user's CI).
//!
//! Besides the recipe's own validation (every error, like a compiler), it
//! looks at the disk the way a run would: the data folders with their classes
//! and image counts, the decoded size against the memory budget, and each
//! backbone's weights — a local file is read and fitted to its architecture
//! with the same code and message as `tlab run`; `hf:` and URL weights are
//! only looked up in their cache (no download).
//!
//! The disk checks read the raw TOML, not the validated [`crate::recipe::Recipe`], so they
//! run even when the recipe has mistakes: one `check` lists a misspelt key and
//! a missing data folder together, each at its `FILE:LINE:COL`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::{ImDocument, Item, TableLike};

use crate::recipe::{DataConfig, RecipeError};

/// How bad a finding is: errors make `check` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, at a position in the recipe where it has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// A class with its image counts in each split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCount {
    pub class: String,
    pub train: usize,
    pub valid: usize,
}

/// A backbone's weights as `check` found them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightsFinding {
    pub step: usize,
    pub source: String,
    /// The local file (for remote weights: the cache file, when cached).
    pub file: Option<PathBuf>,
    /// Read and fitted to the architecture.
    pub fits: bool,
}

/// The outcome of checking one recipe file.
#[derive(Debug, Clone, Serialize)]
pub struct Preflight {
    pub file: PathBuf,
    /// The number of steps, when the recipe is valid.
    pub steps: Option<usize>,
    pub findings: Vec<Finding>,
    pub classes: Vec<ClassCount>,
    /// Files in the data folders that are not images.
    pub skipped: Vec<PathBuf>,
    pub decoded_mib: Option<f64>,
    pub budget_mib: Option<f64>,
    pub weights: Vec<WeightsFinding>,
}

impl Preflight {
    /// True when nothing stands in the way of `tlab run`.
    pub fn ok(&self) -> bool {
        self.steps.is_some() && !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The findings as `FILE:LINE:COL: message` lines (warnings marked), in
    /// file order.
    pub fn problems(&self) -> Vec<String> {
        let file = crate::util::paths::shown(&self.file);
        self.findings
            .iter()
            .map(|f| {
                let tag = if f.severity == Severity::Warning { "warning: " } else { "" };
                format!("{}:{}:{}: {tag}{}", file.display(), f.line, f.col, f.message)
            })
            .collect()
    }

    /// A summary line and what was found on disk.
    pub fn summary(&self) -> Vec<String> {
        let file = crate::util::paths::shown(&self.file);
        let file = file.display();
        let mut out = Vec::new();
        let errors = self.findings.iter().filter(|f| f.severity == Severity::Error).count();
        out.push(match (self.ok(), self.steps) {
            (true, Some(n)) => format!("{file}: ok ({n} steps)"),
            _ => format!("{file}: {errors} error(s)"),
        });
        if !self.classes.is_empty() {
            let (train, valid): (usize, usize) =
                self.classes.iter().fold((0, 0), |(t, v), c| (t + c.train, v + c.valid));
            out.push(format!(
                "  data: {} classes, {train} train / {valid} valid images, {} other file(s) skipped",
                self.classes.len(),
                self.skipped.len()
            ));
            let per: Vec<String> =
                self.classes.iter().map(|c| format!("{} {}/{}", c.class, c.train, c.valid)).collect();
            out.push(format!("    {}", per.join(", ")));
        }
        if let Some(mib) = self.decoded_mib {
            let budget = self.budget_mib.map(|b| format!(" of a {b:.0} MiB budget")).unwrap_or_default();
            out.push(format!("  memory: {mib:.0} MiB of decoded images{budget}"));
        }
        for w in &self.weights {
            let state = match (&w.file, w.fits) {
                (Some(f), true) => format!("{} fits", crate::util::paths::shown(f).display()),
                (Some(f), false) => format!("{} does not fit", crate::util::paths::shown(f).display()),
                (None, _) => "not checked (not on disk)".into(),
            };
            out.push(format!("  weights (step {}): {} → {state}", w.step, w.source));
        }
        out
    }
}

/// Checks the recipe at `path`: its validation only with `syntax_only`,
/// else the data folders, the memory estimate and the weights too.
pub fn check(path: &Path, syntax_only: bool) -> Preflight {
    let mut report = Preflight {
        file: path.to_path_buf(),
        steps: None,
        findings: Vec::new(),
        classes: Vec::new(),
        skipped: Vec::new(),
        decoded_mib: None,
        budget_mib: None,
        weights: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.findings.push(error_at(1, 1, format!("cannot read recipe: {e}")));
            return report;
        }
    };
    match crate::recipe::parse_all(&text, path) {
        Ok(recipe) => {
            report.steps = Some(recipe.steps.len());
            // The `[tune]` table's keys, ranges and values, checked against
            // the recipe schema before any trial trains.
            if let Err(e) = crate::tools::tune::space::parse(&text, path) {
                report.findings.push(finding(e));
            }
        }
        Err(errors) => report.findings.extend(errors.into_iter().map(finding)),
    }
    if !syntax_only {
        if let Ok(doc) = ImDocument::parse(text.as_str()) {
            let disk = Disk { text: &text, base: path.parent().unwrap_or(Path::new("")) };
            disk.data(&doc, &mut report);
            disk.weights(&doc, &mut report);
        }
    }
    report.findings.sort_by_key(|f| (f.line, f.col));
    report
}

fn finding(e: RecipeError) -> Finding {
    match e {
        RecipeError::Invalid { line, col, message, .. } => error_at(line, col, message),
        RecipeError::Io { source, .. } => error_at(1, 1, format!("cannot read recipe: {source}")),
    }
}

fn error_at(line: usize, col: usize, message: String) -> Finding {
    Finding { severity: Severity::Error, line, col, message }
}

/// The raw recipe and the folder its relative paths are anchored at.
struct Disk<'a> {
    text: &'a str,
    base: &'a Path,
}

impl Disk<'_> {
    fn at(&self, item: &Item, severity: Severity, message: String) -> Finding {
        let offset = item.span().map_or(0, |s| s.start);
        let (line, col) = crate::recipe::line_col(self.text, offset);
        Finding { severity, line, col, message }
    }

    /// A CSV's listing: class counts, and each unusable row as a warning.
    fn csv_data(
        &self,
        data: &dyn toml_edit::TableLike,
        item: &Item,
        csv: PathBuf,
        valid: Option<PathBuf>,
        report: &mut Preflight,
    ) {
        let defaults = DataConfig::defaults(csv.parent().map(Path::to_path_buf).unwrap_or_default());
        let cfg = DataConfig {
            csv: Some(csv.clone()),
            valid,
            valid_split: data.get("valid_split").and_then(Item::as_float).unwrap_or(DataConfig::VALID_SPLIT),
            max_per_class: data.get("max_per_class").and_then(Item::as_integer).map(|m| m.max(1) as usize),
            ..defaults
        };
        let mut skipped = Vec::new();
        match crate::data::csv::list(&csv, &cfg, 0, &mut skipped) {
            Ok(list) => {
                report.classes = list
                    .classes
                    .iter()
                    .enumerate()
                    .map(|(label, class)| ClassCount {
                        class: class.clone(),
                        train: list.train.iter().filter(|(_, l)| *l == label).count(),
                        valid: list.valid.iter().filter(|(_, l)| *l == label).count(),
                    })
                    .collect();
            }
            Err(e) => report.findings.push(self.at(item, Severity::Error, e.to_string())),
        }
        for (_, why) in &skipped {
            report.findings.push(self.at(item, Severity::Warning, format!("skipped {why}")));
        }
        report.skipped = skipped.into_iter().map(|(p, _)| p).collect();
    }

    /// The data folders: classes, counts, skipped files, memory.
    fn data(&self, doc: &ImDocument<&str>, report: &mut Preflight) {
        let Some(data) = doc.get("data").and_then(Item::as_table_like) else { return };
        let folder = |key: &str| data.get(key).and_then(|i| Some((i, self.base.join(i.as_str()?))));
        if let Some((csv_item, csv)) = folder("csv") {
            return self.csv_data(data, csv_item, csv, folder("valid").map(|(_, d)| d), report);
        }
        let Some((train_item, train_dir)) = folder("train") else { return };
        let valid = folder("valid");
        let mut skipped = Vec::new();
        let scan = |item: &Item, dir: &Path, skipped: &mut Vec<(PathBuf, String)>| {
            if !dir.exists() {
                let key = if std::ptr::eq(item, train_item) { "train" } else { "valid" };
                return Err(self.at(
                    item,
                    Severity::Error,
                    format!("data.{key}: folder {} does not exist", crate::util::paths::shown(dir).display()),
                ));
            }
            crate::data::scan(dir, skipped).map_err(|e| self.at(item, Severity::Error, e.to_string()))
        };
        let train = match scan(train_item, &train_dir, &mut skipped) {
            Ok(t) => t,
            Err(f) => {
                report.findings.push(f);
                return;
            }
        };
        let max = data.get("max_per_class").and_then(Item::as_integer).map(|m| m.max(1) as usize);
        let capped = |n: usize| max.map_or(n, |m| n.min(m));
        match valid {
            Some((valid_item, valid_dir)) => {
                let valid = match scan(valid_item, &valid_dir, &mut skipped) {
                    Ok(v) => v,
                    Err(f) => {
                        report.findings.push(f);
                        Vec::new()
                    }
                };
                for (class, _) in valid.iter().filter(|(c, _)| !train.iter().any(|(t, _)| t == c)) {
                    report.findings.push(self.at(
                        valid_item,
                        Severity::Error,
                        format!(
                            "class `{class}` is in the validation folder but not in the training folder {}",
                            crate::util::paths::shown(&train_dir).display()
                        ),
                    ));
                }
                self.leakage(&train, &valid, valid_item, report);
                report.classes = train
                    .iter()
                    .map(|(class, files)| ClassCount {
                        class: class.clone(),
                        train: capped(files.len()),
                        valid: valid.iter().find(|(c, _)| c == class).map_or(0, |(_, f)| f.len()),
                    })
                    .collect();
            }
            None => {
                let split = data.get("valid_split").and_then(Item::as_float).unwrap_or(DataConfig::VALID_SPLIT);
                report.classes = train
                    .iter()
                    .map(|(class, files)| {
                        let n = capped(files.len());
                        let valid = crate::data::valid_count(n, split);
                        ClassCount { class: class.clone(), train: n - valid, valid }
                    })
                    .collect();
            }
        }
        report.skipped = skipped.into_iter().map(|(p, _)| p).collect();
        self.memory(data, train_item, report);
    }

    /// Validation files that are byte-for-byte copies of training files: a
    /// warning, since they inflate the accuracy a run reports.
    fn leakage(
        &self,
        train: &[(String, Vec<PathBuf>)],
        valid: &[(String, Vec<PathBuf>)],
        item: &Item,
        report: &mut Preflight,
    ) {
        let files =
            |split: &[(String, Vec<PathBuf>)]| split.iter().flat_map(|(_, f)| f.iter().cloned()).collect::<Vec<_>>();
        let copies = crate::data::leakage::identical_files(&files(train), &files(valid));
        if let Some((copy, original)) = copies.first() {
            let shown = |p: &Path| crate::util::paths::shown(p).display().to_string();
            report.findings.push(self.at(
                item,
                Severity::Warning,
                format!(
                    "{} validation file(s) are copies of training files (leakage: they inflate accuracy), e.g. {} = {}; `tlab data` lists them and near copies",
                    copies.len(),
                    shown(copy),
                    shown(original)
                ),
            ));
        }
    }

    /// The decoded size of the images counted so far, against the memory budget.
    fn memory(&self, data: &dyn TableLike, train_item: &Item, report: &mut Preflight) {
        let size =
            data.get("image_size").and_then(Item::as_integer).unwrap_or(DataConfig::IMAGE_SIZE.into()).max(1) as u64;
        let images: usize = report.classes.iter().map(|c| c.train + c.valid).sum();
        let bytes = crate::data::decoded_bytes(images, size as u32);
        report.decoded_mib = Some(bytes as f64 / (1024.0 * 1024.0));
        if let Some((budget, source)) = crate::data::memory_budget() {
            report.budget_mib = Some(budget as f64 / (1024.0 * 1024.0));
            // Over the budget, `cache = "auto"` (the default) streams the
            // images from disk; only `"memory"` cannot run.
            let cache = data.get("cache").and_then(Item::as_str).unwrap_or("auto");
            if bytes > budget && !matches!(cache, "none" | "disk") {
                let item = data.get("image_size").unwrap_or(train_item);
                let need = format!(
                    "{images} images at {size}×{size} need {} MiB decoded, over the memory budget of {} MiB ({source})",
                    bytes.div_ceil(1024 * 1024),
                    budget / (1024 * 1024)
                );
                report.findings.push(match cache {
                    "memory" => self.at(
                        item,
                        Severity::Error,
                        format!("{need}; with `cache = \"memory\"` they must fit: use `cache = \"auto\"` to stream them, lower image_size or set max_per_class"),
                    ),
                    _ => self.at(
                        item,
                        Severity::Warning,
                        format!("{need}: they will be streamed from disk, decoded batch by batch (slower epochs; set max_per_class or lower image_size to keep them in memory)"),
                    ),
                });
            }
        }
    }

    /// Each backbone step's weights: read and fitted, or looked up in the cache.
    fn weights(&self, doc: &ImDocument<&str>, report: &mut Preflight) {
        let Some(steps) = doc.get("step").and_then(Item::as_array_of_tables) else { return };
        for (i, step) in steps.iter().enumerate() {
            if step.get("kind").and_then(Item::as_str) != Some("backbone") {
                continue;
            }
            let Some(item) = step.get("weights") else { continue };
            let Some(text) = item.as_str() else { continue };
            let arch = step.get("arch").and_then(Item::as_str).filter(|a| crate::models::ARCHITECTURES.contains(a));
            let strict = step.get("strict").and_then(Item::as_bool).unwrap_or(true);
            let mut found = WeightsFinding { step: i + 1, source: text.to_owned(), file: None, fits: false };
            let file = match crate::recipe::weights_source(text, self.base) {
                crate::recipe::WeightsSource::Path(p) => {
                    if !p.is_file() {
                        report.findings.push(self.at(
                            item,
                            Severity::Error,
                            format!("weights file {} does not exist", crate::util::paths::shown(&p).display()),
                        ));
                        report.weights.push(found);
                        continue;
                    }
                    p
                }
                remote => match cached(&remote) {
                    Ok(path) => path,
                    Err(message) => {
                        report.findings.push(self.at(item, Severity::Warning, message));
                        report.weights.push(found);
                        continue;
                    }
                },
            };
            found.file = Some(file.clone());
            let fitted = crate::formats::weights::load(&file).and_then(|tensors| match arch {
                Some(arch) => crate::models::backbone_from_tensors(
                    arch,
                    crate::util::paths::shown(&file).display().to_string(),
                    tensors,
                    strict,
                )
                .map(drop),
                None => Ok(()),
            });
            match fitted {
                Ok(()) => found.fits = arch.is_some(),
                Err(e) => report.findings.push(self.at(item, Severity::Error, e.to_string())),
            }
            report.weights.push(found);
        }
    }
}

/// The cache file of remote weights, or why there is none (no download here).
fn cached(source: &crate::recipe::WeightsSource) -> Result<PathBuf, String> {
    #[cfg(feature = "hub")]
    {
        let opts = crate::formats::weights::hub::FetchOptions::from_env();
        match crate::formats::weights::hub::cached(source, &opts) {
            Some((path, true)) => Ok(path),
            Some((cache, false)) => Err(format!(
                "not in the cache yet ({}): `tlab run` downloads it once (check does not)",
                crate::util::paths::shown(&cache).display()
            )),
            None => Err("not a remote source".into()),
        }
    }
    #[cfg(not(feature = "hub"))]
    {
        let _ = source;
        Err("remote weights need the `hub` feature, which this build does not have".into())
    }
}
