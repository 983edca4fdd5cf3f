//! The run directory: every file a run leaves behind, each written atomically
//! (temp file + fsync + rename), so a crash never leaves a half-written report.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::fs::csv_field;
use crate::metrics::Metrics;
use crate::train::{EpochRecord, Prediction};

/// `history.csv`: one row per epoch of every fine_tune step.
pub(crate) fn history_csv(rows: &[(usize, EpochRecord)]) -> String {
    let mut s = String::from("step,epoch,train_loss,train_accuracy,valid_loss,valid_accuracy,lr,seconds\n");
    for (step, r) in rows {
        s.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.8},{:.3}\n",
            step, r.epoch, r.train_loss, r.train_accuracy, r.valid_loss, r.valid_accuracy, r.lr, r.seconds
        ));
    }
    s
}

/// `predictions.csv`: `path,true,predicted,confidence` for every validation image.
pub fn predictions_csv(preds: &[Prediction], classes: &[String]) -> String {
    let mut s = String::from("path,true,predicted,confidence\n");
    for p in preds {
        s.push_str(&format!(
            "{},{},{},{:.6}\n",
            csv_field(&crate::util::paths::shown(&p.path).to_string_lossy()),
            csv_field(&classes[p.truth]),
            csv_field(&classes[p.predicted]),
            p.confidence
        ));
    }
    s
}

/// `metrics.json` as the spine specifies it.
pub fn metrics_json(m: &Metrics) -> Result<String> {
    serde_json::to_string_pretty(m).map_err(|source| Error::Json { what: "metrics.json", source })
}

/// `report.md`: a human-readable summary of the whole run.
pub(crate) fn report_markdown(
    name: &str,
    steps: &[String],
    history: &[(usize, EpochRecord)],
    metrics: Option<&Metrics>,
    mistakes: &[Prediction],
    classes: &[String],
) -> String {
    let mut s = format!("# tlab run `{name}`\n\n## Steps\n\n");
    for (i, step) in steps.iter().enumerate() {
        s.push_str(&format!("{}. {step}\n", i + 1));
    }
    if !history.is_empty() {
        s.push_str("\n## Training history\n\n");
        s.push_str(&crate::present::rows::history_table(history).markdown());
    }
    if let Some(m) = metrics {
        s.push_str("\n## Evaluation\n\n");
        s.push_str(&crate::present::rows::evaluation_markdown(m));
    }
    if !mistakes.is_empty() {
        s.push_str("\n## Worst mistakes\n\n");
        s.push_str(&crate::present::rows::mistakes_table(mistakes, classes).markdown());
    }
    s
}

/// `runs/<name>-<UTC timestamp>` next to the working directory.
pub fn default_run_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{}", utc_stamp(secs)))
}

/// `YYYY-MM-DD HH:MM` in UTC, for tables of runs.
pub(crate) fn utc_date_time(secs: u64) -> String {
    let s = utc_stamp(secs);
    format!("{}-{}-{} {}:{}", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13])
}

/// `YYYYMMDD-HHMMSS` in UTC (civil-from-days, H. Hinnant's algorithm).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_each_section_once_and_folded_paths() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let m = crate::metrics::compute(&[0.9, 0.1, 0.2, 0.8, 0.6, 0.4], &[0, 1, 1], &classes, 1);
        let wrong =
            Prediction { path: "recipes/../data/b/1.png".into(), truth: 1, predicted: 0, confidence: 0.6, loss: 0.9 };
        let md = report_markdown("r", &["freeze: all".into()], &[], Some(&m), &[wrong], &classes);
        for heading in ["## Steps", "## Evaluation", "## Worst mistakes"] {
            assert_eq!(md.matches(&format!("{heading}\n")).count(), 1, "{heading} in:\n{md}");
        }
        assert!(md.contains("| data/b/1.png | b | a |"), "{md}");
    }

    #[test]
    fn timestamp_is_civil_utc() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_795_876_496), "20261128-143456");
    }
}
