//! The per-class classification report (scikit-learn's `classification_report`
//! layout) with the headline numbers of an evaluation.

use image::{Rgb, RgbImage};

use super::{escape, Block};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::present::rows;
use crate::util::draw;

/// Precision, recall, F1 and support per class, plus averages and accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    pub metrics: Metrics,
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
            "<div><b>Evaluation</b>: {} · loss {:.4} · ECE {:.4}",
            escape(&rows::headline(m)),
            m.loss,
            m.calibration.ece
        );
        s.push_str(&super::table_html(&rows::class_table(m)));
        if !m.most_confused.is_empty() {
            s.push_str(&format!("<p>Most confused (true → predicted): {}</p>", escape(&rows::confused_line(m, 5))));
        }
        s.push_str("</div>");
        s
    }

    /// Precision, recall and F1 of each class as horizontal bars (0–1), one
    /// group per class with its name and support, macro average last.
    pub fn to_png(&self) -> RgbImage {
        const BAR: i64 = 9;
        const BAR_W: i64 = 300;
        const SCALE: i64 = 2;
        let m = &self.metrics;
        let mut rows: Vec<(String, [f64; 3])> = m
            .per_class
            .iter()
            .map(|r| (format!("{} ({})", r.class.replace('_', " "), r.support), [r.precision, r.recall, r.f1]))
            .collect();
        rows.push(("macro avg".into(), [m.macro_avg.precision, m.macro_avg.recall, m.macro_avg.f1]));
        let names = rows.iter().map(|(n, _)| draw::text_width(n, SCALE)).max().unwrap_or(0).min(200);
        let left = names + 16;
        let group = 3 * BAR + 10;
        let top = draw::text_height(SCALE) + 12;
        let (w, h) = (left + BAR_W + 60, top + rows.len() as i64 * group + 24);
        let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
        let series = [("precision", draw::BLUE), ("recall", draw::ORANGE), ("F1", Rgb([44, 160, 44]))];
        let mut lx = left;
        for (name, colour) in series {
            draw::rect(&mut img, lx, 8, 10, 10, colour);
            draw::text(&mut img, lx + 14, 4, name, SCALE, draw::BLACK);
            lx += 14 + draw::text_width(name, SCALE) + 18;
        }
        for tick in 0..=4 {
            let x = left + tick * BAR_W / 4;
            draw::line(&mut img, (x, top), (x, top + rows.len() as i64 * group), 1, draw::GREY);
            let label = format!("{:.2}", tick as f64 / 4.0);
            let lw = draw::text_width(&label, 1);
            draw::text(&mut img, x - lw / 2, top + rows.len() as i64 * group + 4, &label, 1, draw::DARK_GREY);
        }
        for (k, (name, values)) in rows.iter().enumerate() {
            let y = top + k as i64 * group;
            let name = draw::fit(name, SCALE, 200);
            let th = draw::text_height(SCALE);
            draw::text(
                &mut img,
                left - 8 - draw::text_width(&name, SCALE),
                y + (3 * BAR - th) / 2,
                &name,
                SCALE,
                draw::BLACK,
            );
            for (j, (v, (_, colour))) in values.iter().zip(series).enumerate() {
                let len = (v.clamp(0.0, 1.0) * BAR_W as f64).round() as i64;
                draw::rect(&mut img, left, y + j as i64 * BAR, len, BAR - 1, colour);
            }
            let f1 = format!("{:.2}", values[2]);
            draw::text(&mut img, left + BAR_W + 6, y + (3 * BAR - draw::text_height(1)) / 2, &f1, 1, draw::DARK_GREY);
        }
        img
    }

    /// scikit-learn-like text report.
    pub(crate) fn to_text(&self) -> String {
        rows::class_table(&self.metrics).text()
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
        assert!(html.contains("accuracy 0.6667 on 3 images"), "{html}");
        // Class a: precision 1, recall 0.5; class b: precision 0.5, recall 1.
        assert!(html.contains("<th style=\"border:1px solid #ccc;padding:2px 6px;text-align:left;background:#f3f3f3\">a</th><td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right\">1.0000</td><td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right\">0.5000</td>"), "{html}");
        assert!(html.contains("b&amp;c") && html.contains("macro avg"));
        let text = r.to_text();
        assert!(text.contains("0.6667") && text.contains("weighted avg"), "{text}");
    }
}
