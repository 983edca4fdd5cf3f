//! The per-class classification report (scikit-learn's `classification_report`
//! layout) with the headline numbers of an evaluation.

use super::{escape, Block, CELL_STYLE, HEAD_STYLE, TABLE_STYLE};
use crate::error::Result;
use crate::lab::Lab;
use crate::metrics::Metrics;

/// Precision, recall, F1 and support per class, plus averages and accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    pub metrics: Metrics,
}

impl Lab {
    /// The classification report of the last evaluation.
    pub fn class_report(&self) -> Result<ClassReport> {
        Ok(ClassReport { metrics: self.evaluation()?.metrics })
    }
}

impl From<&Metrics> for ClassReport {
    fn from(m: &Metrics) -> Self {
        ClassReport { metrics: m.clone() }
    }
}

impl ClassReport {
    pub fn to_html(&self) -> String {
        let m = &self.metrics;
        let mut s = format!(
            "<div><b>Evaluation</b> on {} images: accuracy <b>{:.4}</b>, top-{} accuracy {:.4}, loss {:.4}\
             <table style=\"{TABLE_STYLE}\"><tr>",
            m.count, m.accuracy, m.top_k, m.top_k_accuracy, m.loss
        );
        for h in ["class", "precision", "recall", "f1", "support"] {
            s.push_str(&format!("<th style=\"{HEAD_STYLE}\">{h}</th>"));
        }
        s.push_str("</tr>");
        let mut row = |name: String, p: f64, r: f64, f: f64, support: usize, bold: bool| {
            let (b0, b1) = if bold { ("<b>", "</b>") } else { ("", "") };
            s.push_str(&format!(
                "<tr><th style=\"{HEAD_STYLE}\">{b0}{name}{b1}</th><td style=\"{c}\">{p:.4}</td>\
                 <td style=\"{c}\">{r:.4}</td><td style=\"{c}\">{f:.4}</td><td style=\"{c}\">{support}</td></tr>",
                c = CELL_STYLE
            ));
        };
        for r in &m.per_class {
            row(escape(&r.class), r.precision, r.recall, r.f1, r.support, false);
        }
        for (name, a) in [("macro avg", &m.macro_avg), ("weighted avg", &m.weighted)] {
            row(name.to_string(), a.precision, a.recall, a.f1, a.support, true);
        }
        s.push_str("</table></div>");
        s
    }

    /// scikit-learn-like text report.
    pub fn to_text(&self) -> String {
        let m = &self.metrics;
        let width = m.per_class.iter().map(|r| r.class.chars().count()).max().unwrap_or(0).max(12);
        let mut s = format!("{:>width$}  precision    recall  f1-score   support\n\n", "");
        for r in &m.per_class {
            s.push_str(&format!(
                "{:>width$}  {:>9.4} {:>9.4} {:>9.4} {:>9}\n",
                r.class, r.precision, r.recall, r.f1, r.support
            ));
        }
        s.push_str(&format!("\n{:>width$}  {:>9} {:>9} {:>9.4} {:>9}\n", "accuracy", "", "", m.accuracy, m.count));
        for (name, a) in [("macro avg", &m.macro_avg), ("weighted avg", &m.weighted)] {
            s.push_str(&format!(
                "{:>width$}  {:>9.4} {:>9.4} {:>9.4} {:>9}\n",
                name, a.precision, a.recall, a.f1, a.support
            ));
        }
        s
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html())])
    }
}

super::evcxr_display!(ClassReport);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::compute;

    #[test]
    fn report_holds_every_number() {
        let classes = vec!["a".to_string(), "b&c".to_string()];
        // Three rows: a→a, a→b, b→b.
        let probs = [0.9f32, 0.1, 0.2, 0.8, 0.3, 0.7];
        let m = compute(&probs, &[0, 0, 1], &classes, 1);
        let r = ClassReport::from(&m);
        let html = r.to_html();
        assert!(html.contains("accuracy <b>0.6667</b>"), "{html}");
        // Class a: precision 1, recall 0.5; class b: precision 0.5, recall 1.
        assert!(html.contains("<th style=\"border:1px solid #ccc;padding:2px 6px;text-align:left;background:#f3f3f3\">a</th><td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right\">1.0000</td><td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right\">0.5000</td>"), "{html}");
        assert!(html.contains("b&amp;c") && html.contains("macro avg"));
        let text = r.to_text();
        assert!(text.contains("0.6667") && text.contains("weighted avg"), "{text}");
    }
}
