//! Training history: loss and accuracy per epoch, train and validation, as a
//! two-panel PNG chart with a table underneath. Epochs of every fine_tune step
//! are numbered consecutively; a dashed line marks where a new step (phase)
//! begins, so a two-phase run reads at a glance.

use image::{Rgb, RgbImage};

use super::{img_tag, Block};
use crate::error::Result;
use crate::train::EpochRecord;
use crate::util::draw::{self, BLUE, DARK_GREY, ORANGE};

/// Panel size and margins, in pixels.
const PANEL_W: i64 = 330;
const PANEL_H: i64 = 220;
const LEFT: i64 = 44;
const TOP: i64 = 22;
const BOTTOM: i64 = 30;
const RIGHT: i64 = 12;
const SCALE: i64 = 2;

/// Epoch records with the (0-based) step each came from, as [`crate::lab::Lab::history`] holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryChart {
    pub rows: Vec<(usize, EpochRecord)>,
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
        let n = series.len();
        let axes = draw::Axes { x: x0 + LEFT, y: TOP, w: PANEL_W, h: PANEL_H, lo, hi, step, points: n };
        axes.draw(img, title, 2, SCALE);
        // Phase boundaries: where a new fine_tune step begins.
        for k in 1..n {
            if self.rows[k].0 != self.rows[k - 1].0 {
                let x = (axes.x_of(k - 1) + axes.x_of(k)) / 2;
                draw::dashed_vline(img, x, TOP, TOP + PANEL_H - 1, DARK_GREY);
            }
        }
        // Legend: a swatch per series with its name.
        let mut lx = axes.x + PANEL_W - 1;
        for (name, colour) in [("valid", ORANGE), ("train", BLUE)] {
            lx -= draw::text_width(name, SCALE);
            draw::text(img, lx, 2, name, SCALE, colour);
            lx -= 14;
            draw::rect(img, lx, 6, 10, 6, colour);
            lx -= 10;
        }
        let train: Vec<f64> = series.iter().map(|p| p.0).collect();
        let valid: Vec<f64> = series.iter().map(|p| p.1).collect();
        axes.series(img, &train, BLUE);
        axes.series(img, &valid, ORANGE);
    }

    /// The chart and a table of every epoch.
    pub fn to_html(&self) -> Result<String> {
        let mut s = String::from("<div>");
        if self.rows.is_empty() {
            s.push_str("<p><i>No epochs trained yet.</i></p></div>");
            return Ok(s);
        }
        s.push_str(&img_tag(&self.to_png(), "training history: loss and accuracy per epoch")?);
        s.push_str(&super::table_html(&crate::present::rows::history_table(&self.rows)));
        s.push_str("</div>");
        Ok(s)
    }

    /// The table as text, for consoles.
    pub(crate) fn to_text(&self) -> String {
        crate::present::rows::history_table(&self.rows).text()
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html()?)])
    }
}

super::evcxr_display!(HistoryChart);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::present::views::tests::first_png;

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
