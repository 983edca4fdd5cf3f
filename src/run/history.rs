//! Earlier runs, read back from their run directories: `tlab runs` lists
//! them, `tlab compare` puts two or more side by side — metrics with their
//! differences, the recipes diffed key by key, the curves overlaid.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::present::rows::{Align, Table};
use crate::train::EpochRecord;

/// What a run directory says about its run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub dir: PathBuf,
    /// The folder name (`quickstart-20261201-162450`).
    pub name: String,
    /// Seconds since the Unix epoch, when recorded.
    pub started: Option<u64>,
    pub complete: bool,
    pub seconds: Option<f64>,
    pub recipe_hash: Option<String>,
    /// The recipe as run (`recipe.toml`), when the run saved it.
    pub recipe: Option<String>,
    pub metrics: Option<Metrics>,
    /// Every epoch: `(step, record)`, steps 0-based as in the lab.
    pub history: Vec<(usize, EpochRecord)>,
}

impl RunSummary {
    /// Reads `dir`; it must hold a `status.json`.
    pub fn read(dir: &Path) -> Result<RunSummary> {
        let status = crate::run::dir::Status::read(dir)?;
        let metrics = match std::fs::read_to_string(dir.join("metrics.json")) {
            Ok(t) => Some(
                serde_json::from_str(&t)
                    .map_err(|e| Error::data(dir.join("metrics.json"), format!("invalid metrics: {e}")))?,
            ),
            Err(_) => None,
        };
        let history = match std::fs::read_to_string(dir.join("history.csv")) {
            Ok(t) => parse_history(&t).map_err(|m| Error::data(dir.join("history.csv"), m))?,
            Err(_) => Vec::new(),
        };
        Ok(RunSummary {
            dir: dir.to_path_buf(),
            name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            started: status.started,
            complete: status.complete,
            seconds: status.seconds,
            recipe_hash: status.recipe_hash,
            recipe: std::fs::read_to_string(dir.join("recipe.toml")).ok(),
            metrics,
            history,
        })
    }

    /// The start time as `YYYY-MM-DD HH:MM` UTC.
    pub(crate) fn started_text(&self) -> String {
        self.started.map(crate::run::files::utc_date_time).unwrap_or_else(|| "?".into())
    }
}

/// Every run directory directly under `root`, newest first.
pub fn list(root: &Path) -> Result<Vec<RunSummary>> {
    let entries = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut runs: Vec<RunSummary> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("status.json").is_file())
        .filter_map(|p| RunSummary::read(&p).ok())
        .collect();
    // Runs without a recorded start (older tlab) sort by folder name, whose
    // suffix is the start time.
    runs.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.name.cmp(&a.name)));
    Ok(runs)
}

fn parse_history(text: &str) -> std::result::Result<Vec<(usize, EpochRecord)>, String> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        if f.len() != 8 {
            return Err(format!("line {}: expected 8 columns, found {}", i + 1, f.len()));
        }
        let record = EpochRecord {
            epoch: f[1] as usize,
            train_loss: f[2],
            train_accuracy: f[3],
            valid_loss: f[4],
            valid_accuracy: f[5],
            lr: f[6],
            seconds: f[7],
        };
        rows.push((f[0] as usize, record));
    }
    Ok(rows)
}

/// One key whose value differs between two recipes (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyChange {
    /// `data.image_size`, `step 6 (fine_tune).lr`.
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The recipes `a` and `b` compared key by key (formatting, comments and
/// key order ignored). Steps are matched by position. Unparsable text
/// compares as a whole.
pub(crate) fn recipe_diff(a: &str, b: &str) -> Vec<KeyChange> {
    let (Some(ka), Some(kb)) = (flatten(a), flatten(b)) else {
        return if a == b {
            vec![]
        } else {
            vec![KeyChange { key: "(recipe)".into(), before: Some("…".into()), after: Some("…".into()) }]
        };
    };
    let mut keys: Vec<&String> = ka.iter().map(|(k, _)| k).chain(kb.iter().map(|(k, _)| k)).collect();
    keys.dedup();
    let mut seen = std::collections::HashSet::new();
    let get = |list: &[(String, String)], k: &str| list.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    keys.into_iter()
        .filter(|k| seen.insert((*k).clone()))
        .filter_map(|k| {
            let (before, after) = (get(&ka, k), get(&kb, k));
            (before != after).then(|| KeyChange { key: k.clone(), before, after })
        })
        .collect()
}

/// `(dotted key, value as written)` for every leaf of a recipe, in file order.
fn flatten(text: &str) -> Option<Vec<(String, String)>> {
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(text).ok()?;
    let mut out = Vec::new();
    for (key, item) in doc.as_table().iter() {
        match item {
            toml_edit::Item::ArrayOfTables(steps) if key == "step" => {
                for (i, step) in steps.iter().enumerate() {
                    let kind = step.get("kind").and_then(toml_edit::Item::as_str).unwrap_or("?");
                    leaves(text, &format!("step {} ({kind})", i + 1), step, &mut out);
                }
            }
            toml_edit::Item::Table(t) => leaves(text, key, t, &mut out),
            other => out.push((key.to_string(), value_text(text, other))),
        }
    }
    Some(out)
}

fn leaves(text: &str, prefix: &str, table: &toml_edit::Table, out: &mut Vec<(String, String)>) {
    for (key, item) in table.iter() {
        match item {
            toml_edit::Item::Table(t) => leaves(text, &format!("{prefix}.{key}"), t, out),
            other => out.push((format!("{prefix}.{key}"), value_text(text, other))),
        }
    }
}

/// The value as the file spells it (`3e-4` stays `3e-4`), whitespace and
/// comments trimmed; values compare by this text.
fn value_text(text: &str, item: &toml_edit::Item) -> String {
    item.span()
        .and_then(|s| text.get(s))
        .map(|raw| raw.trim().to_string())
        .unwrap_or_else(|| item.to_string().trim().to_string())
}

/// The rows of a comparison: `(metric, decimals to show, value per run)`,
/// the first run the baseline the others are measured against.
pub(crate) fn metric_rows(runs: &[RunSummary]) -> Vec<(&'static str, usize, Vec<Option<f64>>)> {
    let m = |f: fn(&Metrics) -> f64| runs.iter().map(|r| r.metrics.as_ref().map(f)).collect::<Vec<_>>();
    vec![
        ("accuracy", 4, m(|m| m.accuracy)),
        ("top-k accuracy", 4, m(|m| m.top_k_accuracy)),
        ("macro F1", 4, m(|m| m.macro_avg.f1)),
        ("weighted F1", 4, m(|m| m.weighted.f1)),
        ("valid loss", 4, m(|m| m.loss)),
        ("epochs", 0, runs.iter().map(|r| Some(r.history.len() as f64)).collect()),
        ("wall time (s)", 1, runs.iter().map(|r| r.seconds).collect()),
    ]
}

/// `tlab runs` and the TUI's runs popup: one row per run.
pub fn runs_table(runs: &[RunSummary]) -> Table {
    let mut t = Table::new(&[
        ("run", Align::Left),
        ("started (UTC)", Align::Left),
        ("status", Align::Left),
        ("accuracy", Align::Right),
        ("macro F1", Align::Right),
        ("time", Align::Right),
        ("recipe", Align::Left),
    ]);
    let num = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    for r in runs {
        t.push(vec![
            r.name.clone(),
            r.started_text(),
            if r.complete { "complete" } else { "incomplete" }.into(),
            num(r.metrics.as_ref().map(|m| m.accuracy)),
            num(r.metrics.as_ref().map(|m| m.macro_avg.f1)),
            r.seconds.map_or("–".to_string(), |s| format!("{s:.0}s")),
            r.recipe_hash.clone().unwrap_or_else(|| "–".into()),
        ]);
    }
    t
}

/// `tlab compare`'s metrics: a column per run, each later run's value with
/// its difference from the first's.
pub fn compare_table(runs: &[RunSummary]) -> Table {
    let columns: Vec<(&str, Align)> =
        std::iter::once(("", Align::Left)).chain(runs.iter().map(|r| (r.name.as_str(), Align::Right))).collect();
    let mut t = Table::new(&columns);
    for (name, p, values) in metric_rows(runs) {
        let cells = values.iter().enumerate().map(|(k, v)| match (v, values[0]) {
            (Some(v), Some(base)) if k > 0 => format!("{v:.p$} ({:+.p$})", v - base),
            (Some(v), _) => format!("{v:.p$}"),
            (None, _) => "–".into(),
        });
        t.push(std::iter::once(name.to_string()).chain(cells).collect());
    }
    t
}

/// Recipe `after` diffed against `before` key by key (`None`: a run saved
/// no recipe.toml); a table with no rows is the same recipe.
pub fn diff_table(before: Option<&str>, after: Option<&str>) -> Option<Table> {
    let mut t = Table::new(&[("key", Align::Left), ("before", Align::Left), ("after", Align::Left)]);
    let show = |v: Option<String>| v.unwrap_or_else(|| "(absent)".into());
    for c in recipe_diff(before?, after?) {
        t.push(vec![c.key, show(c.before), show(c.after)]);
    }
    Some(t)
}

/// What a missing recipe diff says, wherever it is shown.
pub const NO_RECIPE: &str = "(a run without recipe.toml: made by an older tlab)";

/// `compare.html`: the metrics side by side with differences from the first
/// run, each later run's recipe diffed against the first, and `chart` (the
/// overlaid curves) embedded.
pub fn compare_html(runs: &[RunSummary], chart: &image::RgbImage) -> Result<String> {
    use crate::present::views::{escape, table_html};
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>tlab compare</title>\
         <style>body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px}</style>\
         </head><body>\n<h1>tlab compare</h1>",
    );
    s.push_str(&table_html(&compare_table(runs)));
    s.push_str("\n<h2>Curves</h2>");
    s.push_str(&crate::present::views::img_tag(chart, "validation loss and accuracy per epoch, one colour per run")?);
    for r in &runs[1..] {
        s.push_str(&format!("<h2>Recipe: {} → {}</h2>", escape(&runs[0].name), escape(&r.name)));
        match diff_table(runs[0].recipe.as_deref(), r.recipe.as_deref()) {
            Some(t) if t.rows.is_empty() => s.push_str("<p>same recipe</p>"),
            Some(t) => s.push_str(&table_html(&t)),
            None => s.push_str(&format!("<p>{}</p>", escape(NO_RECIPE))),
        }
    }
    s.push_str("\n</body></html>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_diff_key_by_key_ignoring_formatting() {
        let a = "name = \"q\"\n[data]\nimage_size = 96\n[[step]]\nkind = \"fine_tune\"\nlr = 1e-3 # fast\n";
        let b = "name=\"q\"\n\n[data]\nimage_size   = 96\n[[step]]\nkind = \"fine_tune\"\nlr = 3e-4\nepochs = 2\n";
        let d = recipe_diff(a, b);
        assert_eq!(
            d,
            vec![
                KeyChange {
                    key: "step 1 (fine_tune).lr".into(),
                    before: Some("1e-3".into()),
                    after: Some("3e-4".into())
                },
                KeyChange { key: "step 1 (fine_tune).epochs".into(), before: None, after: Some("2".into()) },
            ]
        );
        assert!(recipe_diff(a, a).is_empty());
    }

    #[test]
    fn history_reads_back_what_history_csv_writes() {
        let r = EpochRecord {
            epoch: 2,
            train_loss: 0.5,
            train_accuracy: 0.75,
            valid_loss: 0.625,
            valid_accuracy: 0.8,
            lr: 1e-3,
            seconds: 1.5,
        };
        let text = crate::run::files::history_csv(&[(3, r.clone())]);
        assert_eq!(parse_history(&text).unwrap(), vec![(3, r)]);
        assert!(parse_history("h\n1,2,x\n").unwrap_err().contains("line 2"));
    }
}
