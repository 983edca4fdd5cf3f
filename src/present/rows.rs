//! The presentation layer: results become lines and tables here, once.
//!
//! The CLI log, notebook progress and the TUI's cell log print
//! [`epoch_line`]; every front end heads an evaluation with [`headline`]; report.md, the notebook HTML, the console text and the
//! TUI's Report tab render the same [`Table`]s ([`class_table`],
//! [`history_table`], [`summary_table`], [`confusion_table`],
//! [`confused_table`], [`mistakes_table`]). Renderers only lay cells out: Markdown and aligned
//! text here, HTML in the views module (`table_html`), ratatui rows in the TUI. A number
//! formatted differently in two front ends is a bug this module prevents.

use crate::metrics::Metrics;
use crate::train::{EpochRecord, Prediction};

/// How a column's cells align.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One row: its cells, and whether it is a summary (an average, a total),
/// which renderers set in bold.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub cells: Vec<String>,
    pub summary: bool,
}

/// A table of formatted cells with column titles and alignment.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<(String, Align)>,
    pub rows: Vec<Row>,
}

impl Table {
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table { columns: columns.iter().map(|&(t, a)| (t.to_string(), a)).collect(), rows: Vec::new() }
    }

    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(Row { cells, summary: false });
    }

    fn push_summary(&mut self, cells: Vec<String>) {
        self.rows.push(Row { cells, summary: true });
    }

    /// Sorts the rows that are not summaries by column `column`: a number
    /// column (right-aligned) descending, best first; a text column
    /// ascending. Summary rows stay last.
    pub fn sort_by(&mut self, column: usize) {
        let numeric = self.columns.get(column).is_some_and(|(_, a)| *a == Align::Right);
        let (mut body, summaries): (Vec<Row>, Vec<Row>) = self.rows.drain(..).partition(|r| !r.summary);
        let key = |r: &Row| r.cells.get(column).cloned().unwrap_or_default();
        let number = |r: &Row| key(r).parse::<f64>().unwrap_or(f64::NEG_INFINITY);
        match numeric {
            true => body.sort_by(|a, b| number(b).total_cmp(&number(a))),
            false => body.sort_by_key(key),
        }
        self.rows = body.into_iter().chain(summaries).collect();
    }

    /// GitHub Markdown, summary rows in bold; `|` in a cell is escaped.
    pub fn markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut s = String::from("|");
        for (title, _) in &self.columns {
            s.push_str(&format!(" {} |", cell(title)));
        }
        s.push_str("\n|");
        for (_, align) in &self.columns {
            s.push_str(if *align == Align::Right { "---:|" } else { "---|" });
        }
        s.push('\n');
        for row in &self.rows {
            s.push('|');
            for c in &row.cells {
                match (row.summary, c.is_empty()) {
                    (true, false) => s.push_str(&format!(" **{}** |", cell(c))),
                    _ => s.push_str(&format!(" {} |", cell(c))),
                }
            }
            s.push('\n');
        }
        s
    }

    /// Columns padded to their widest cell, for consoles and notebooks'
    /// plain-text output; a blank line before the summary rows.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|j| {
                let cells = self.rows.iter().filter_map(|r| r.cells.get(j));
                cells.chain([&self.columns[j].0]).map(|c| c.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .zip(&self.columns)
                .map(|((c, &w), (_, align))| match align {
                    Align::Left => format!("{c:<w$}"),
                    Align::Right => format!("{c:>w$}"),
                })
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        let mut s = line(self.columns.iter().map(|(t, _)| t.as_str()).collect());
        let mut in_summary = false;
        for row in &self.rows {
            if row.summary && !in_summary {
                s.push('\n');
            }
            in_summary = row.summary;
            s.push_str(&line(row.cells.iter().map(String::as_str).collect()));
        }
        s
    }
}

/// An evaluation in one line, as every front end heads it: `accuracy
/// 0.8633 on 300 images · top-5 0.9967 · macro F1 0.8632`.
pub fn headline(m: &Metrics) -> String {
    format!(
        "accuracy {:.4} on {} images · top-{} {:.4} · macro F1 {:.4}",
        m.accuracy, m.count, m.top_k, m.top_k_accuracy, m.macro_avg.f1
    )
}

/// One finished epoch as the logs print it.
pub fn epoch_line(r: &EpochRecord) -> String {
    format!(
        "epoch {:>3}  train loss {:.4} acc {:.4}  valid loss {:.4} acc {:.4}  lr {:.2e}  {:.1}s",
        r.epoch, r.train_loss, r.train_accuracy, r.valid_loss, r.valid_accuracy, r.lr, r.seconds
    )
}

/// Every epoch trained, numbered in order, with the (1-based) step it belongs to.
pub fn history_table(history: &[(usize, EpochRecord)]) -> Table {
    use Align::Right;
    let mut t = Table::new(&[
        ("#", Right),
        ("step", Right),
        ("epoch", Right),
        ("train loss", Right),
        ("train acc", Right),
        ("valid loss", Right),
        ("valid acc", Right),
        ("lr", Right),
        ("s", Right),
    ]);
    for (k, (step, r)) in history.iter().enumerate() {
        t.push(vec![
            (k + 1).to_string(),
            (step + 1).to_string(),
            r.epoch.to_string(),
            format!("{:.4}", r.train_loss),
            format!("{:.4}", r.train_accuracy),
            format!("{:.4}", r.valid_loss),
            format!("{:.4}", r.valid_accuracy),
            format!("{:.2e}", r.lr),
            format!("{:.1}", r.seconds),
        ]);
    }
    t
}

/// scikit-learn's `classification_report`: precision, recall, F1, top-k
/// recall and support per class, then accuracy and the macro and weighted
/// averages as summary rows.
pub fn class_table(m: &Metrics) -> Table {
    use Align::{Left, Right};
    let top_k = format!("top-{} recall", m.top_k);
    let mut t = Table::new(&[
        ("class", Left),
        ("precision", Right),
        ("recall", Right),
        ("f1", Right),
        (top_k.as_str(), Right),
        ("support", Right),
    ]);
    let f = |v: f64| format!("{v:.4}");
    for (i, r) in m.per_class.iter().enumerate() {
        let k = m.per_class_top_k.get(i).map_or(String::new(), |&k| f(k));
        t.push(vec![r.class.clone(), f(r.precision), f(r.recall), f(r.f1), k, r.support.to_string()]);
    }
    t.push_summary(vec![
        "accuracy".into(),
        String::new(),
        String::new(),
        f(m.accuracy),
        String::new(),
        m.count.to_string(),
    ]);
    for (name, a) in [("macro avg", &m.macro_avg), ("weighted avg", &m.weighted)] {
        t.push_summary(vec![name.into(), f(a.precision), f(a.recall), f(a.f1), String::new(), a.support.to_string()]);
    }
    t
}

/// The headline numbers of an evaluation, one per row.
pub fn summary_table(m: &Metrics) -> Table {
    let mut t = Table::new(&[("metric", Align::Left), ("value", Align::Right)]);
    t.push(vec!["samples".into(), m.count.to_string()]);
    t.push(vec!["accuracy".into(), format!("{:.4}", m.accuracy)]);
    if let Some(a) = m.accuracy_without_tta {
        t.push(vec!["accuracy without TTA".into(), format!("{a:.4}")]);
    }
    t.push(vec![format!("top-{} accuracy", m.top_k), format!("{:.4}", m.top_k_accuracy)]);
    t.push(vec!["loss (cross-entropy)".into(), format!("{:.4}", m.loss)]);
    t.push(vec!["expected calibration error".into(), format!("{:.4}", m.calibration.ece)]);
    t
}

/// The confusion matrix as counts: rows are the true classes.
pub fn confusion_table(classes: &[String], confusion: &[Vec<usize>]) -> Table {
    let mut columns = vec![("true \\ pred", Align::Left)];
    columns.extend(classes.iter().map(|c| (c.as_str(), Align::Right)));
    let mut t = Table::new(&columns);
    for (i, c) in classes.iter().enumerate() {
        let counts = (0..classes.len()).map(|j| confusion.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0));
        t.push([c.clone()].into_iter().chain(counts.map(|v| v.to_string())).collect());
    }
    t
}

/// The pairs the model mixes up most (fastai's `most_confused`).
pub fn confused_table(m: &Metrics) -> Table {
    let mut t = Table::new(&[("true", Align::Left), ("predicted", Align::Left), ("count", Align::Right)]);
    for c in &m.most_confused {
        t.push(vec![c.truth.clone(), c.predicted.clone(), c.count.to_string()]);
    }
    t
}

/// Misclassified images: the file as the user reads its path, the true and
/// predicted classes, and the model's confidence in its prediction.
pub fn mistakes_table(mistakes: &[Prediction], classes: &[String]) -> Table {
    use Align::{Left, Right};
    let mut t = Table::new(&[("image", Left), ("true", Left), ("predicted", Left), ("confidence", Right)]);
    let class = |i: usize| classes.get(i).cloned().unwrap_or_else(|| format!("class {i}"));
    for p in mistakes {
        t.push(vec![
            crate::util::paths::shown(&p.path).display().to_string(),
            class(p.truth),
            class(p.predicted),
            format!("{:.3}", p.confidence),
        ]);
    }
    t
}

/// The first `n` most-confused pairs on one line: `a → b (3) · …`, or "none".
pub(crate) fn confused_line(m: &Metrics, n: usize) -> String {
    let pairs: Vec<String> =
        m.most_confused.iter().take(n).map(|c| format!("{} → {} ({})", c.truth, c.predicted, c.count)).collect();
    if pairs.is_empty() {
        "none".into()
    } else {
        pairs.join(" · ")
    }
}

/// An evaluation in Markdown: the headline numbers, the classification
/// report, the confusion matrix and the most-confused pairs.
pub(crate) fn evaluation_markdown(m: &Metrics) -> String {
    let mut s = summary_table(m).markdown();
    s.push_str("\n### Per class\n\n");
    s.push_str(&class_table(m).markdown());
    s.push_str("\n### Confusion matrix (rows = true, columns = predicted)\n\n");
    s.push_str(&confusion_table(&m.classes, &m.confusion).markdown());
    if !m.most_confused.is_empty() {
        s.push_str("\n### Most confused\n\n");
        s.push_str(&confused_table(m).markdown());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::compute;

    fn metrics() -> Metrics {
        let classes: Vec<String> = ["a|x", "b", "c"].iter().map(|s| s.to_string()).collect();
        // Probabilities for 5 images whose truths are 0, 0, 1, 2, 2.
        #[rustfmt::skip]
        let probs = [
            0.8, 0.1, 0.1,
            0.2, 0.7, 0.1,
            0.1, 0.8, 0.1,
            0.1, 0.2, 0.7,
            0.6, 0.3, 0.1,
        ];
        compute(&probs, &[0, 0, 1, 2, 2], &classes, 2)
    }

    #[test]
    fn the_class_table_is_sklearns_layout_in_every_rendering() {
        let m = metrics();
        let t = class_table(&m);
        assert_eq!(t.rows.len(), 3 + 3);
        assert_eq!(t.rows[3].cells[..4], ["accuracy", "", "", "0.6000"]);
        assert!(t.rows[..3].iter().all(|r| !r.summary) && t.rows[3..].iter().all(|r| r.summary));
        let md = t.markdown();
        assert!(md.starts_with("| class | precision | recall | f1 | top-2 recall | support |\n|---|---:|"), "{md}");
        assert!(md.contains("| a\\|x | 0.5000 | 0.5000 | 0.5000 | 1.0000 | 2 |"), "{md}");
        assert!(md.contains("| **macro avg** |"), "{md}");
        let text = t.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "class         precision  recall      f1  top-2 recall  support");
        assert_eq!(lines[4], "", "a blank line before the summaries: {text}");
        assert_eq!(lines[5].split_whitespace().collect::<Vec<_>>(), ["accuracy", "0.6000", "5"], "{text}");
    }

    #[test]
    fn sorting_keeps_summaries_last_and_puts_the_best_first() {
        let mut t = class_table(&metrics());
        t.sort_by(3);
        let f1: Vec<&str> = t.rows.iter().map(|r| r.cells[3].as_str()).collect();
        assert_eq!(f1[..3], ["0.6667", "0.6667", "0.5000"]);
        assert_eq!(t.rows[3].cells[0], "accuracy");
        t.sort_by(0);
        assert_eq!(t.rows[0].cells[0], "a|x");
    }

    #[test]
    fn history_and_epoch_lines_format_each_number_once() {
        let r = EpochRecord {
            epoch: 3,
            train_loss: 1.0,
            train_accuracy: 0.5,
            valid_loss: 0.75,
            valid_accuracy: 0.625,
            lr: 1e-3,
            seconds: 2.25,
        };
        assert_eq!(
            epoch_line(&r),
            "epoch   3  train loss 1.0000 acc 0.5000  valid loss 0.7500 acc 0.6250  lr 1.00e-3  2.2s"
        );
        let t = history_table(&[(0, r.clone()), (2, r)]);
        assert_eq!(t.rows[1].cells, ["2", "3", "3", "1.0000", "0.5000", "0.7500", "0.6250", "1.00e-3", "2.2"]);
        let md = evaluation_markdown(&metrics());
        assert!(md.contains("| true \\ pred | a\\|x | b | c |"), "{md}");
        assert!(md.contains("### Most confused") && md.contains("| c | a\\|x | 1 |"), "{md}");
        let wrong = Prediction { path: "d/c/7.png".into(), truth: 2, predicted: 9, confidence: 0.8125, loss: 2.0 };
        let t = mistakes_table(&[wrong], &metrics().classes);
        assert_eq!(t.rows[0].cells, ["d/c/7.png", "c", "class 9", "0.812"], "an unknown index is named, not a panic");
        // An empty evaluation renders without panicking.
        let empty = compute(&[], &[], &[], 1);
        assert!(evaluation_markdown(&empty).contains("| samples | 0 |"));
    }
}
