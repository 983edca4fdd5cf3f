//! The learning-rate range test: smoothed loss against the rate on a log
//! axis, with the suggested rates marked, and the curve as CSV rows.

use image::{Rgb, RgbImage};

use super::{escape, img_tag, Block, CELL_STYLE, HEAD_STYLE, TABLE_STYLE};
use crate::error::Result;
use crate::recipe::LrSuggestion;
use crate::train::lr_find::LrFindResult;
use crate::util::draw::{self, BLACK, BLUE, DARK_GREY, GREY, ORANGE};

const LEFT: i64 = 56;
const TOP: i64 = 24;
const W: i64 = 560;
const H: i64 = 260;
const BOTTOM: i64 = 40;
const RIGHT: i64 = 16;
const SCALE: i64 = 2;

/// Marker colour of each suggestion.
fn colour(s: LrSuggestion) -> Rgb<u8> {
    match s {
        LrSuggestion::Valley => ORANGE,
        LrSuggestion::Steep => Rgb([44, 160, 44]),
        LrSuggestion::Minimum => Rgb([214, 39, 40]),
    }
}

impl LrFindResult {
    /// `lr,loss` rows, one per batch.
    pub(crate) fn to_csv(&self) -> String {
        let mut s = String::from("lr,loss\n");
        for (lr, loss) in self.lrs.iter().zip(&self.losses) {
            s.push_str(&format!("{lr:e},{loss}\n"));
        }
        s
    }

    /// Loss against log10(lr), decades labelled, suggestions as dashed lines.
    pub fn to_png(&self) -> RgbImage {
        let mut img = RgbImage::from_pixel((LEFT + W + RIGHT) as u32, (TOP + H + BOTTOM) as u32, Rgb([255, 255, 255]));
        let logs: Vec<f64> = self.lrs.iter().map(|l| l.log10()).collect();
        let (x_lo, x_hi) = (logs.first().copied().unwrap_or(-7.0), logs.last().copied().unwrap_or(1.0));
        let span = (x_hi - x_lo).max(1e-9);
        let finite: Vec<f64> = self.losses.iter().copied().filter(|v| v.is_finite()).collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        // The start of the curve sets the scale; divergence at the end is cut off.
        let first = finite.first().copied().unwrap_or(1.0);
        let (lo, hi, step) = draw::nice_ticks(lo.min(first), first.max(lo) * 1.1 + 1e-6, 5);
        let axes = draw::Axes { x: LEFT, y: TOP, w: W, h: H, lo, hi, step, points: 2 };
        axes.draw_frame(&mut img, "lr_find: loss vs learning rate", 2, SCALE);
        let x_of = |log: f64| LEFT + (((log - x_lo) / span).clamp(0.0, 1.0) * (W - 1) as f64) as i64;
        for decade in (x_lo.ceil() as i64)..=(x_hi.floor() as i64) {
            let x = x_of(decade as f64);
            draw::line(&mut img, (x, TOP), (x, TOP + H - 1), 1, GREY);
            let label = format!("1e{decade}");
            draw::text(&mut img, x - draw::text_width(&label, SCALE) / 2, TOP + H + 6, &label, SCALE, DARK_GREY);
        }
        let label = "learning rate (log scale)";
        draw::text(&mut img, LEFT + W - draw::text_width(label, SCALE), TOP + H + 22, label, SCALE, BLACK);
        let pts: Vec<(i64, i64)> = logs.iter().zip(&self.losses).map(|(&x, &y)| (x_of(x), axes.y_of(y))).collect();
        for w in pts.windows(2) {
            draw::line(&mut img, w[0], w[1], 2, BLUE);
        }
        let mut lx = LEFT + W - 1;
        for (s, lr) in self.suggestions.iter().rev() {
            let x = x_of(lr.log10());
            draw::dashed_vline(&mut img, x, TOP, TOP + H - 1, colour(*s));
            let name = format!("{} {lr:.1e}", s.name());
            lx -= draw::text_width(&name, SCALE);
            draw::text(&mut img, lx, TOP + 4, &name, SCALE, colour(*s));
            lx -= 14;
        }
        img
    }

    /// The chart and the suggestions as a table.
    pub fn to_html(&self) -> Result<String> {
        let mut s = String::from("<div>");
        s.push_str(&img_tag(&self.to_png(), "lr_find: loss against learning rate")?);
        s.push_str(&format!(
            "<table style=\"{TABLE_STYLE}\"><tr><th style=\"{HEAD_STYLE}\">suggestion</th><th style=\"{HEAD_STYLE}\">lr</th></tr>"
        ));
        for (which, lr) in &self.suggestions {
            s.push_str(&format!(
                "<tr><td style=\"{CELL_STYLE}\">{}</td><td style=\"{CELL_STYLE}\">{lr:.2e}</td></tr>",
                escape(which.name())
            ));
        }
        s.push_str("</table></div>");
        Ok(s)
    }

    pub(crate) fn to_text(&self) -> String {
        let list: Vec<String> = self.suggestions.iter().map(|(s, lr)| format!("{} {lr:.2e}", s.name())).collect();
        let end = if self.diverged { ", stopped at divergence" } else { "" };
        format!("lr_find over {} batches{end}: {}", self.lrs.len(), list.join(", "))
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html()?)])
    }
}

super::evcxr_display!(LrFindResult);
