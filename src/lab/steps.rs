//! Step summaries: the list of a lab's steps with their status, and one
//! step's result (a fine_tune step shows its history chart, an evaluate step
//! its report and confusion matrix).

use crate::error::Result;
use crate::lab::cells::{outcome_line, StepResults, StepStatus, Steps};
use crate::lab::{StepOutput, StepResult};
use crate::present::views::{
    escape, Block, ClassReport, ConfusionMatrix, HistoryChart, CELL_STYLE, HEAD_STYLE, TABLE_STYLE,
};
use crate::train::Evaluation;

impl Steps {
    pub fn to_html(&self) -> String {
        let next = self.next();
        let mut s =
            format!("<div><b>Recipe <code>{}</code></b><table style=\"{TABLE_STYLE}\"><tr>", escape(&self.recipe));
        for h in ["", "#", "kind", "settings", "status"] {
            s.push_str(&format!("<th style=\"{HEAD_STYLE}\">{h}</th>"));
        }
        s.push_str("</tr>");
        let left = CELL_STYLE.replace("text-align:right", "text-align:left");
        for step in &self.steps {
            let (mark, status) = match step.status {
                StepStatus::Done { seconds } => (
                    "✓",
                    format!(
                        "done in {seconds:.1}s{}",
                        step.outcome.as_ref().map(|o| format!(": {o}")).unwrap_or_default()
                    ),
                ),
                StepStatus::Pending if Some(step.index) == next => ("▶", "next".to_string()),
                StepStatus::Pending => ("", "pending".to_string()),
            };
            s.push_str(&format!(
                "<tr><td style=\"{left}\">{mark}</td><td style=\"{CELL_STYLE}\">{}</td><td style=\"{left}\">{}</td>\
                 <td style=\"{left}\">{}</td><td style=\"{left}\">{}</td></tr>",
                step.index + 1,
                step.kind,
                escape(&step.summary),
                escape(&status)
            ));
        }
        s.push_str("</table></div>");
        s
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_string()), Block::html(self.to_html())])
    }
}

impl Evaluation {
    /// Report, confusion matrix and the worst mistakes (names only).
    pub fn to_html(&self) -> Result<String> {
        let mut s = ClassReport::from(&self.metrics).to_html();
        s.push_str(&ConfusionMatrix::from(&self.metrics).to_html()?);
        s.push_str(&crate::present::views::Mistakes::without_images(self, 10).to_html()?);
        Ok(s)
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        let text = ClassReport::from(&self.metrics).to_text() + "\n" + &ConfusionMatrix::from(&self.metrics).to_text();
        Ok(vec![Block::text(text), Block::html(self.to_html()?)])
    }
}

impl StepResult {
    /// Heading, headline and the step's own view.
    pub fn to_html(&self) -> Result<String> {
        let mut s = format!(
            "<div><b>Step {} · {}</b> <code>{}</code> — {:.1}s<br/>{}",
            self.index + 1,
            self.kind,
            escape(&self.summary),
            self.seconds,
            escape(&outcome_line(self))
        );
        match &self.output {
            StepOutput::Backbone { source, classes, skipped, .. } => {
                s.push_str(&format!(
                    "<br/>weights: <code>{}</code><br/>classes: {}",
                    escape(source),
                    escape(&classes.join(", "))
                ));
                if *skipped > 0 {
                    s.push_str(&format!("<br/>{skipped} file(s) skipped"));
                }
            }
            StepOutput::Augment { config } => {
                let rows = crate::recipe::augment_settings(config);
                if rows.is_empty() {
                    s.push_str("<br/>no augmentation");
                } else {
                    s.push_str(&format!("<table style=\"{TABLE_STYLE}\"><tr><th style=\"{HEAD_STYLE}\">setting</th><th style=\"{HEAD_STYLE}\">value</th></tr>"));
                    for (k, v) in rows {
                        s.push_str(&format!(
                            "<tr><td style=\"{CELL_STYLE}\">{}</td><td style=\"{CELL_STYLE}\">{}</td></tr>",
                            escape(k),
                            escape(&v)
                        ));
                    }
                    s.push_str("</table>");
                }
            }
            StepOutput::FineTune(o) => {
                let rows = o.history.iter().cloned().map(|r| (self.index, r)).collect();
                s.push_str(&format!(
                    "<br/>stopped: {:?}; best epoch: {}; trainable parameters: {}",
                    o.stop,
                    o.best_epoch.map_or("-".to_string(), |e| e.to_string()),
                    o.trainable_params
                ));
                s.push_str(&HistoryChart::new(rows).to_html()?);
            }
            StepOutput::Evaluate(e) => s.push_str(&e.to_html()?),
            StepOutput::LrFind(found) => s.push_str(&found.to_html()?),
            StepOutput::Freeze { .. } | StepOutput::Restored { .. } => {}
        }
        s.push_str("</div>");
        Ok(s)
    }

    pub(crate) fn to_text(&self) -> String {
        format!(
            "step {} ({}): {} [{:.1}s]\n{}\n",
            self.index + 1,
            self.kind,
            self.summary,
            self.seconds,
            outcome_line(self)
        )
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html()?)])
    }
}

crate::present::views::evcxr_display!(Steps, StepResult, Evaluation);

impl StepResults {
    pub fn to_html(&self) -> Result<String> {
        self.0.iter().map(StepResult::to_html).collect::<Result<Vec<_>>>().map(|v| v.join("<hr/>"))
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        let text: String = self.0.iter().map(StepResult::to_text).collect();
        Ok(vec![Block::text(text), Block::html(self.to_html()?)])
    }
}

crate::present::views::evcxr_display!(StepResults);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::cells::StepInfo;
    use crate::recipe::StepType;
    use crate::train::{EpochRecord, FineTuneOutcome, Stop};

    #[test]
    fn steps_table_marks_done_and_next() {
        let steps = Steps {
            recipe: "r".into(),
            steps: vec![
                StepInfo {
                    index: 0,
                    kind: StepType::Backbone,
                    summary: "mobilenet_v2".into(),
                    status: StepStatus::Done { seconds: 1.25 },
                    outcome: Some("ok".into()),
                },
                StepInfo {
                    index: 1,
                    kind: StepType::Freeze,
                    summary: "all".into(),
                    status: StepStatus::Pending,
                    outcome: None,
                },
                StepInfo {
                    index: 2,
                    kind: StepType::Evaluate,
                    summary: "".into(),
                    status: StepStatus::Pending,
                    outcome: None,
                },
            ],
        };
        let html = steps.to_html();
        assert!(html.contains("done in 1.2s: ok") || html.contains("done in 1.3s: ok"), "{html}");
        assert!(html.contains(">next<") && html.contains(">pending<"));
        let text = steps.to_string();
        assert!(text.contains("✓  1. backbone") && text.contains("▶  2. freeze"), "{text}");
    }

    #[test]
    fn fine_tune_result_shows_its_chart() {
        let r = EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            train_accuracy: 0.75,
            valid_loss: 0.625,
            valid_accuracy: 0.5,
            lr: 1e-3,
            seconds: 2.0,
        };
        let result = StepResult {
            index: 3,
            kind: StepType::FineTune,
            summary: "epochs=1".into(),
            seconds: 2.0,
            output: StepOutput::FineTune(FineTuneOutcome {
                history: vec![r],
                stop: Stop::Completed,
                best_epoch: Some(1),
                trainable_params: 12810,
            }),
        };
        let html = result.to_html().unwrap();
        assert!(html.contains("Step 4 · fine_tune") && html.contains("12810") && html.contains("0.6250"), "{html}");
        assert!(html.contains("data:image/png;base64,"));
        let both = StepResults(vec![result.clone(), result]).to_html().unwrap();
        assert_eq!(both.matches("Step 4").count(), 2);
    }
}
