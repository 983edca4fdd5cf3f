//! Several runs' validation curves in one picture (`tlab compare`): loss
//! and accuracy per epoch, one colour per run, epochs numbered over all
//! fine_tune steps as in history.csv.

use image::{Rgb, RgbImage};

use crate::train::EpochRecord;
use crate::util::draw::{self, BLACK};

const PANEL_W: i64 = 360;
const PANEL_H: i64 = 220;
const LEFT: i64 = 48;
const TOP: i64 = 26;
const BOTTOM: i64 = 30;
const RIGHT: i64 = 14;
const SCALE: i64 = 2;

/// matplotlib's tab10, so run colours read as they do in most plots.
const COLOURS: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
];

/// The runs to overlay: a name and its epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareChart {
    pub runs: Vec<(String, Vec<EpochRecord>)>,
}

impl CompareChart {
    /// The colour run `k` is drawn in (also for tables that refer to it).
    pub fn colour(k: usize) -> Rgb<u8> {
        COLOURS[k % COLOURS.len()]
    }

    /// Valid loss (left) and valid accuracy (right), with a legend of run
    /// names underneath.
    pub fn to_png(&self) -> RgbImage {
        let legend_h = self.runs.len() as i64 * (draw::text_height(SCALE) + 4) + 8;
        let w = 2 * (LEFT + PANEL_W + RIGHT);
        let h = TOP + PANEL_H + BOTTOM + legend_h;
        let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
        let epochs = self.runs.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
        let values = |f: fn(&EpochRecord) -> f64| -> Vec<f64> {
            self.runs.iter().flat_map(|(_, r)| r.iter().map(f)).filter(|v| v.is_finite()).collect()
        };
        let lmax = values(|r| r.valid_loss).into_iter().fold(1e-3, f64::max);
        let amin = values(|r| r.valid_accuracy).into_iter().fold(1.0, f64::min);
        self.panel(&mut img, 0, "valid loss", |r| r.valid_loss, draw::nice_ticks(0.0, lmax, 5), epochs);
        let ticks = draw::nice_ticks(amin.min(0.9), 1.0, 5);
        self.panel(&mut img, LEFT + PANEL_W + RIGHT, "valid accuracy", |r| r.valid_accuracy, ticks, epochs);
        let mut y = TOP + PANEL_H + BOTTOM;
        for (k, (name, _)) in self.runs.iter().enumerate() {
            draw::rect(&mut img, LEFT, y + 4, 14, 8, Self::colour(k));
            draw::text(&mut img, LEFT + 20, y, name, SCALE, BLACK);
            y += draw::text_height(SCALE) + 4;
        }
        img
    }

    fn panel(
        &self,
        img: &mut RgbImage,
        x0: i64,
        title: &str,
        pick: fn(&EpochRecord) -> f64,
        (lo, hi, step): (f64, f64, f64),
        epochs: usize,
    ) {
        let axes = draw::Axes { x: x0 + LEFT, y: TOP, w: PANEL_W, h: PANEL_H, lo, hi, step, points: epochs };
        axes.draw(img, title, 4, SCALE);
        for (k, (_, records)) in self.runs.iter().enumerate() {
            let values: Vec<f64> = records.iter().map(pick).collect();
            axes.series(img, &values, Self::colour(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, loss: f64, acc: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: loss,
            train_accuracy: acc,
            valid_loss: loss,
            valid_accuracy: acc,
            lr: 1e-3,
            seconds: 1.0,
        }
    }

    #[test]
    fn each_run_has_its_colour_in_the_picture() {
        let chart = CompareChart {
            runs: vec![
                ("a".into(), vec![record(1, 1.0, 0.5), record(2, 0.5, 0.8)]),
                ("b".into(), vec![record(1, 0.9, 0.6), record(2, 0.4, 0.9), record(3, 0.3, 0.95)]),
            ],
        };
        let png = chart.to_png();
        for k in 0..2 {
            let c = CompareChart::colour(k);
            assert!(png.pixels().filter(|p| **p == c).count() > 50, "run {k} not drawn");
        }
        // No runs: an empty frame, no panic.
        let _ = CompareChart { runs: vec![] }.to_png();
    }
}
