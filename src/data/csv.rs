//! Labels from a CSV file (Keras `flow_from_dataframe`, fastai
//! `ImageDataLoaders.from_csv`): a header with `path` and `label` columns and
//! optionally `split` (`train`, `valid` or `test`); paths relative to the
//! CSV's folder. Rows that name a missing file, an unknown class or an
//! unknown split are listed with their line and skipped, not fatal — unless
//! no training rows remain.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{cap, is_image_file, stratified_split, Listing};
use crate::error::{Error, Result};
use crate::recipe::DataConfig;

/// One usable row.
struct Row {
    path: PathBuf,
    label: String,
    split: Option<Which>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Train,
    Valid,
    Test,
}

/// Splits a CSV line into fields: commas separate, double quotes enclose
/// fields that contain commas (`""` is a quote inside one).
pub(crate) fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

/// The rows of `csv`, with every unusable one in `skipped`.
fn read_rows(csv: &Path, skipped: &mut Vec<(PathBuf, String)>) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(csv).map_err(|e| Error::io(csv, e))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) =
        lines.next().ok_or_else(|| Error::data(csv, "the CSV is empty (expected a header `path,label`)"))?;
    let header: Vec<String> = fields(header.trim_start_matches('\u{feff}')).iter().map(|h| h.to_lowercase()).collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(path_col), Some(label_col)) = (column("path"), column("label")) else {
        return Err(Error::data(
            csv,
            format!(
                "line 1: the header must name `path` and `label` columns (and optionally `split`), found `{}`",
                header.join(",")
            ),
        ));
    };
    let split_col = column("split");
    let base = csv.parent().unwrap_or(Path::new("."));
    let shown = crate::util::paths::shown(csv).display().to_string();
    let mut rows = Vec::new();
    for (i, line) in lines {
        let f = fields(line);
        let at = |what: String| {
            (base.join(f.get(path_col).map_or("", String::as_str)), format!("{shown}:{}: {what}", i + 1))
        };
        let (Some(path), Some(label)) = (f.get(path_col), f.get(label_col)) else {
            skipped.push(at(format!("{} field(s), the header has {}", f.len(), header.len())));
            continue;
        };
        let split = match split_col.and_then(|c| f.get(c)).map(|s| s.to_lowercase()) {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) if s == "train" => Some(Which::Train),
            Some(s) if s == "valid" || s == "validation" || s == "val" => Some(Which::Valid),
            Some(s) if s == "test" => Some(Which::Test),
            Some(s) => {
                skipped.push(at(format!("unknown split `{s}` (expected train, valid or test)")));
                continue;
            }
        };
        let full = base.join(path);
        if label.is_empty() {
            skipped.push(at("no label".into()));
        } else if !full.is_file() {
            skipped.push(at(format!("no such file {}", crate::util::paths::shown(&full).display())));
        } else if !is_image_file(&full) {
            skipped.push(at("not an image file".into()));
        } else {
            rows.push(Row { path: full, label: label.clone(), split });
        }
    }
    Ok(rows)
}

/// The listing a CSV gives: classes from its training rows; validation from
/// its `valid` rows, else the `valid` folder, else a stratified split.
pub(crate) fn list(csv: &Path, cfg: &DataConfig, seed: u64, skipped: &mut Vec<(PathBuf, String)>) -> Result<Listing> {
    let rows = read_rows(csv, skipped)?;
    let is_train = |r: &Row| matches!(r.split, None | Some(Which::Train));
    let classes: Vec<String> =
        rows.iter().filter(|r| is_train(r)).map(|r| r.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.is_empty() {
        let why = skipped.first().map(|(_, w)| format!("; first problem: {w}")).unwrap_or_default();
        return Err(Error::data(csv, format!("no usable training rows{why}")));
    }
    let mut list = Listing { classes, ..Default::default() };
    let label_of = |r: &Row, skipped: &mut Vec<(PathBuf, String)>| {
        let found = list.classes.iter().position(|c| *c == r.label);
        if found.is_none() {
            skipped.push((r.path.clone(), format!("class `{}` has no training rows", r.label)));
        }
        found
    };
    let mut per_class: Vec<Vec<PathBuf>> = vec![Vec::new(); list.classes.len()];
    let mut valid = Vec::new();
    let mut test = Vec::new();
    for r in &rows {
        let Some(label) = label_of(r, skipped) else { continue };
        match r.split {
            None | Some(Which::Train) => per_class[label].push(r.path.clone()),
            Some(Which::Valid) => valid.push((r.path.clone(), label)),
            Some(Which::Test) => test.push((r.path.clone(), label)),
        }
    }
    let per_class: Vec<Vec<PathBuf>> = per_class.into_iter().map(|f| cap(f, cfg.max_per_class)).collect();
    if !valid.is_empty() {
        list.train = per_class.into_iter().enumerate().flat_map(|(l, f)| f.into_iter().map(move |p| (p, l))).collect();
        list.valid = valid;
    } else if let Some(dir) = &cfg.valid {
        list.train = per_class.into_iter().enumerate().flat_map(|(l, f)| f.into_iter().map(move |p| (p, l))).collect();
        list.valid = super::labelled_folder(dir, &list.classes, csv, "validation", skipped)?;
    } else {
        (list.train, list.valid) = stratified_split(per_class, cfg.valid_split, seed);
    }
    list.test = test;
    if let Some(dir) = &cfg.test {
        list.test.extend(super::labelled_folder(dir, &list.classes, csv, "test", skipped)?);
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_on_commas_outside_quotes() {
        assert_eq!(fields("a.png, cat ,train"), ["a.png", "cat", "train"]);
        assert_eq!(fields("\"x, y.png\",\"say \"\"hi\"\"\""), ["x, y.png", "say \"hi\""]);
        assert_eq!(fields(""), [""]);
    }
}
