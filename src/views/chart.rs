//! Training history: loss and accuracy per epoch, train and validation, as a
//! two-panel PNG chart with a table underneath. Epochs of every fine_tune step
//! are numbered consecutively; a dashed line marks where a new step (phase)
//! begins, so a two-phase run reads at a glance.

use image::{Rgb, RgbImage};

use super::{escape, img_tag, Block, CELL_STYLE, HEAD_STYLE, TABLE_STYLE};
use crate::draw::{self, BLACK, BLUE, DARK_GREY, GREY, ORANGE};
use crate::error::Result;
use crate::lab::Lab;
use crate::train::EpochRecord;

/// Panel size and margins, in pixels.
const PANEL_W: i64 = 330;
const PANEL_H: i64 = 220;
const LEFT: i64 = 44;
const TOP: i64 = 22;
const BOTTOM: i64 = 30;
const RIGHT: i64 = 12;
const SCALE: i64 = 2;

/// Epoch records with the (0-based) step each came from, as [`Lab::history`] holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryChart {
    pub rows: Vec<(usize, EpochRecord)>,
}

impl Lab {
    /// The training history so far as a chart.
    pub fn history_chart(&self) -> HistoryChart {
        HistoryChart { rows: self.history().to_vec() }
    }
}

impl HistoryChart {
    pub fn new(rows: Vec<(usize, EpochRecord)>) -> Self {
        HistoryChart { rows }
    }

    /// Loss (left) and accuracy (right) against the epoch number.
    pub fn to_png(&self) -> RgbImage {
        let w = 2 * (LEFT + PANEL_W + RIGHT);
        let h = TOP + PANEL_H + BOTTOM;
        let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
        let losses: Vec<(f64, f64)> = self.rows.iter().map(|(_, r)| (r.train_loss, r.valid_loss)).collect();
        let accs: Vec<(f64, f64)> = self.rows.iter().map(|(_, r)| (r.train_accuracy, r.valid_accuracy)).collect();
        let finite =
            |v: &[(f64, f64)]| v.iter().flat_map(|&(a, b)| [a, b]).filter(|x| x.is_finite()).collect::<Vec<_>>();
        let lmax = finite(&losses).into_iter().fold(0.0f64, f64::max);
        let amin = finite(&accs).into_iter().fold(1.0f64, f64::min);
        self.panel(&mut img, 0, "loss", &losses, draw::nice_ticks(0.0, lmax.max(1e-3), 5));
        self.panel(&mut img, LEFT + PANEL_W + RIGHT, "accuracy", &accs, draw::nice_ticks(amin.min(0.9), 1.0, 5));
        img
    }

    fn panel(&self, img: &mut RgbImage, x0: i64, title: &str, series: &[(f64, f64)], ticks: (f64, f64, f64)) {
        let (lo, hi, step) = ticks;
        let (px, py) = (x0 + LEFT, TOP);
        let n = series.len();
        // Epoch k (0-based) at x; a single epoch sits in the middle.
        let x_of = |k: usize| px + if n <= 1 { PANEL_W / 2 } else { k as i64 * (PANEL_W - 1) / (n as i64 - 1) };
        let y_of = |v: f64| py + PANEL_H - 1 - (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * (PANEL_H - 1) as f64) as i64;
        // Grid and y ticks.
        let mut v = lo;
        while v <= hi + step * 1e-6 {
            let y = y_of(v);
            draw::line(img, (px, y), (px + PANEL_W - 1, y), 1, GREY);
            let label = draw::tick_label(v, step);
            draw::text(
                img,
                px - 4 - draw::text_width(&label, SCALE),
                y - draw::text_height(SCALE) / 2,
                &label,
                SCALE,
                DARK_GREY,
            );
            v += step;
        }
        // Phase boundaries, then x ticks (epoch numbers, thinned to fit).
        for k in 1..n {
            if self.rows[k].0 != self.rows[k - 1].0 {
                let x = (x_of(k - 1) + x_of(k)) / 2;
                draw::dashed_vline(img, x, py, py + PANEL_H - 1, DARK_GREY);
            }
        }
        let every = n.div_ceil(12).max(1);
        for k in (0..n).filter(|k| (k + 1) % every == 0 || *k == 0) {
            let label = (k + 1).to_string();
            let x = x_of(k) - draw::text_width(&label, SCALE) / 2;
            draw::text(img, x, py + PANEL_H + 6, &label, SCALE, DARK_GREY);
        }
        // Frame and title.
        for (a, b) in [
            ((px, py), (px + PANEL_W - 1, py)),
            ((px, py + PANEL_H - 1), (px + PANEL_W - 1, py + PANEL_H - 1)),
            ((px, py), (px, py + PANEL_H - 1)),
            ((px + PANEL_W - 1, py), (px + PANEL_W - 1, py + PANEL_H - 1)),
        ] {
            draw::line(img, a, b, 1, BLACK);
        }
        draw::text(img, px, 2, title, SCALE, BLACK);
        // Legend: a swatch per series with its name.
        let mut lx = px + PANEL_W - 1;
        for (name, colour) in [("valid", ORANGE), ("train", BLUE)] {
            lx -= draw::text_width(name, SCALE);
            draw::text(img, lx, 2, name, SCALE, colour);
            lx -= 14;
            draw::rect(img, lx, 6, 10, 6, colour);
            lx -= 10;
        }
        // Series: lines between finite points, a dot on each.
        for (pick, colour) in [(0usize, BLUE), (1, ORANGE)] {
            let pts: Vec<Option<(i64, i64)>> = series
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let v = if pick == 0 { p.0 } else { p.1 };
                    v.is_finite().then(|| (x_of(k), y_of(v)))
                })
                .collect();
            for w in pts.windows(2) {
                if let [Some(a), Some(b)] = w {
                    draw::line(img, *a, *b, 2, colour);
                }
            }
            for (x, y) in pts.into_iter().flatten() {
                draw::rect(img, x - 3, y - 3, 7, 7, colour);
            }
        }
    }

    /// The chart and a table of every epoch.
    pub fn to_html(&self) -> Result<String> {
        let mut s = String::from("<div>");
        if self.rows.is_empty() {
            s.push_str("<p><i>No epochs trained yet.</i></p></div>");
            return Ok(s);
        }
        s.push_str(&img_tag(&self.to_png(), "training history: loss and accuracy per epoch")?);
        s.push_str(&format!("<table style=\"{TABLE_STYLE}\"><tr>"));
        for h in ["#", "step", "epoch", "train loss", "train acc", "valid loss", "valid acc", "lr", "s"] {
            s.push_str(&format!("<th style=\"{HEAD_STYLE}\">{}</th>", escape(h)));
        }
        s.push_str("</tr>");
        for (k, (step, r)) in self.rows.iter().enumerate() {
            s.push_str(&format!(
                "<tr><td style=\"{c}\">{}</td><td style=\"{c}\">{}</td><td style=\"{c}\">{}</td>\
                 <td style=\"{c}\">{:.4}</td><td style=\"{c}\">{:.4}</td><td style=\"{c}\">{:.4}</td>\
                 <td style=\"{c}\">{:.4}</td><td style=\"{c}\">{:.2e}</td><td style=\"{c}\">{:.1}</td></tr>",
                k + 1,
                step + 1,
                r.epoch,
                r.train_loss,
                r.train_accuracy,
                r.valid_loss,
                r.valid_accuracy,
                r.lr,
                r.seconds,
                c = CELL_STYLE
            ));
        }
        s.push_str("</table></div>");
        Ok(s)
    }

    /// The table as text, for consoles.
    pub fn to_text(&self) -> String {
        let mut s = String::from("step epoch  train loss  train acc  valid loss  valid acc\n");
        for (step, r) in &self.rows {
            s.push_str(&format!(
                "{:>4} {:>5}  {:>10.4}  {:>9.4}  {:>10.4}  {:>9.4}\n",
                step + 1,
                r.epoch,
                r.train_loss,
                r.train_accuracy,
                r.valid_loss,
                r.valid_accuracy
            ));
        }
        s
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html()?)])
    }
}

super::evcxr_display!(HistoryChart);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::first_png;

    pub(crate) fn record(epoch: usize, loss: f64, acc: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: loss,
            train_accuracy: acc,
            valid_loss: loss * 1.1,
            valid_accuracy: acc * 0.9,
            lr: 1e-3,
            seconds: 1.5,
        }
    }

    #[test]
    fn chart_png_decodes_to_its_size_and_draws_both_series() {
        let chart =
            HistoryChart::new(vec![(3, record(1, 1.2, 0.5)), (3, record(2, 0.8, 0.7)), (5, record(1, 0.5, 0.8))]);
        let html = chart.to_html().unwrap();
        let png = first_png(&html);
        assert_eq!(png.dimensions(), (2 * (LEFT + PANEL_W + RIGHT) as u32, (TOP + PANEL_H + BOTTOM) as u32));
        assert!(png.pixels().any(|p| *p == BLUE) && png.pixels().any(|p| *p == ORANGE));
        assert_eq!(png, chart.to_png());
        // The table holds the numbers, steps 1-based.
        assert!(html.contains("<td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right\">0.8800</td>"));
        assert!(html.contains(">6</td>"), "step 5 shows as 6");
    }

    #[test]
    fn empty_and_non_finite_histories_do_not_panic() {
        assert!(HistoryChart::new(vec![]).to_html().unwrap().contains("No epochs"));
        let _ = HistoryChart::new(vec![]).to_png();
        let chart = HistoryChart::new(vec![(0, record(1, f64::NAN, f64::INFINITY)), (0, record(2, 0.5, 0.5))]);
        let _ = chart.to_png();
        assert!(chart.to_text().contains("NaN"));
    }
}
