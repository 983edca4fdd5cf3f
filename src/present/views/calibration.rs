//! The reliability diagram of an evaluation: per confidence bin, the
//! accuracy against the mean confidence, with the diagonal of perfect
//! calibration and the expected calibration error in the title.

use image::{Rgb, RgbImage};

use crate::metrics::{Calibration, Metrics};
use crate::util::draw::{self, BLACK, BLUE, DARK_GREY, GREY, ORANGE};

const SIDE: i64 = 300;
const LEFT: i64 = 48;
const TOP: i64 = 30;
const BOTTOM: i64 = 40;
const RIGHT: i64 = 16;
const SCALE: i64 = 2;

/// A reliability diagram.
#[derive(Debug, Clone, PartialEq)]
pub struct ReliabilityDiagram {
    pub calibration: Calibration,
}

impl From<&Metrics> for ReliabilityDiagram {
    fn from(m: &Metrics) -> Self {
        ReliabilityDiagram { calibration: m.calibration.clone() }
    }
}

impl ReliabilityDiagram {
    /// Blue bars: each bin's accuracy; orange ticks: its mean confidence; the
    /// grey diagonal is perfect calibration. Empty bins are left out.
    pub fn to_png(&self) -> RgbImage {
        let (w, h) = (LEFT + SIDE + RIGHT, TOP + SIDE + BOTTOM);
        let mut img = RgbImage::from_pixel(w as u32, h as u32, Rgb([255, 255, 255]));
        let x_of = |v: f64| LEFT + (v.clamp(0.0, 1.0) * (SIDE - 1) as f64) as i64;
        let y_of = |v: f64| TOP + SIDE - 1 - (v.clamp(0.0, 1.0) * (SIDE - 1) as f64) as i64;
        for t in 0..=4 {
            let v = t as f64 / 4.0;
            draw::line(&mut img, (LEFT, y_of(v)), (LEFT + SIDE - 1, y_of(v)), 1, GREY);
            let label = format!("{v:.2}");
            let lh = draw::text_height(1);
            draw::text(&mut img, LEFT - 6 - draw::text_width(&label, 1), y_of(v) - lh / 2, &label, 1, DARK_GREY);
            draw::text(&mut img, x_of(v) - draw::text_width(&label, 1) / 2, TOP + SIDE + 4, &label, 1, DARK_GREY);
        }
        for bin in self.calibration.bins.iter().filter(|b| b.count > 0) {
            let (x0, x1) = (x_of(bin.lo) + 1, x_of(bin.hi) - 1);
            let top = y_of(bin.accuracy);
            draw::rect(&mut img, x0, top, (x1 - x0).max(1), TOP + SIDE - top, BLUE);
            let y = y_of(bin.confidence);
            draw::rect(&mut img, x0, y - 1, (x1 - x0).max(1), 3, ORANGE);
        }
        draw::line(&mut img, (x_of(0.0), y_of(0.0)), (x_of(1.0), y_of(1.0)), 1, DARK_GREY);
        for (a, b) in [
            ((LEFT, TOP), (LEFT + SIDE - 1, TOP)),
            ((LEFT, TOP + SIDE - 1), (LEFT + SIDE - 1, TOP + SIDE - 1)),
            ((LEFT, TOP), (LEFT, TOP + SIDE - 1)),
            ((LEFT + SIDE - 1, TOP), (LEFT + SIDE - 1, TOP + SIDE - 1)),
        ] {
            draw::line(&mut img, a, b, 1, BLACK);
        }
        let title = format!("accuracy per confidence · ECE {:.3}", self.calibration.ece);
        draw::text(&mut img, LEFT, 6, &title, SCALE, BLACK);
        let caption = "confidence (top-1)";
        draw::text(&mut img, LEFT + (SIDE - draw::text_width(caption, 1)) / 2, TOP + SIDE + 20, caption, 1, DARK_GREY);
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stand_where_the_bins_are() {
        let cal = crate::metrics::calibration(&[0.95, 0.95, 0.35], &[true, false, true]);
        let png = ReliabilityDiagram { calibration: cal }.to_png();
        // A bar in the 0.93–1.0 bin (accuracy 0.5): blue just above the axis there.
        let x = (LEFT + (0.97 * (SIDE - 1) as f64) as i64) as u32;
        assert_eq!(png.get_pixel(x, (TOP + SIDE - 5) as u32), &BLUE);
        // None in an empty bin.
        let x = (LEFT + (0.6 * (SIDE - 1) as f64) as i64) as u32;
        assert_ne!(png.get_pixel(x, (TOP + SIDE - 5) as u32), &BLUE);
    }
}
