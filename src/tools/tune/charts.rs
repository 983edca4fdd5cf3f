//! The tune's pictures: `scores.png` (the inner-split score against each
//! searched key, one panel per key, a dot per trial and rung) and
//! `trials.png` (each trial's score rung by rung: who was stopped early).
//! Both draw the recipe as written as a dashed line: the score to beat.

use image::{Rgb, RgbImage};

use super::space::{Domain, Space};
use super::{best_of, Outcome};
use crate::util::draw::{self, Axes, BLACK, BLUE, DARK_GREY, ORANGE};

const SCALE: i64 = 2;
const PANEL_W: i64 = 420;
const PANEL_H: i64 = 260;
/// Rung colours, lowest rung palest: the full-epoch scores stand out.
const RUNG: [Rgb<u8>; 4] = [Rgb([170, 200, 230]), Rgb([90, 150, 210]), BLUE, Rgb([10, 50, 120])];
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

fn rung_colour(rung: usize, rungs: usize) -> Rgb<u8> {
    // The top rung always gets the darkest colour.
    RUNG[(RUNG.len() - rungs.min(RUNG.len()) + rung).min(RUNG.len() - 1)]
}

/// The y axis shared by both pictures: the scores' range (the recipe as
/// written's included), padded.
fn score_axes(o: &Outcome, x: i64, y: i64, w: i64, h: i64, points: usize) -> Axes {
    let scores = || o.rows.iter().map(|r| r.score).chain(o.baseline.map(|b| b.score));
    let lo = scores().fold(f64::INFINITY, f64::min);
    let hi = scores().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi, step) = draw::nice_ticks((lo - 0.02).max(0.0), (hi + 0.02).min(1.0), 4);
    Axes { x, y, w, h, lo, hi, step, points }
}

/// `scores.png`.
pub(crate) fn scores_chart(o: &Outcome, space: &Space) -> RgbImage {
    let cols = space.params.len().clamp(1, 2) as i64;
    let rows = (space.params.len().div_ceil(cols as usize).max(1)) as i64;
    let (cell_w, cell_h) = (PANEL_W + 110, PANEL_H + 110);
    let mut img = RgbImage::from_pixel((cols * cell_w + 20) as u32, (rows * cell_h + 70) as u32, WHITE);
    draw::text(&mut img, 20, 12, "inner-split accuracy against each searched key", SCALE, BLACK);
    let rungs = o.rows.iter().map(|r| r.rung).max().unwrap_or(0) + 1;
    legend(&mut img, 20, 40, rungs);
    let best = best_of(&o.rows).map(|b| b.0);
    for (k, p) in space.params.iter().enumerate() {
        let (px, py) = (90 + (k as i64 % cols) * cell_w, 100 + (k as i64 / cols) * cell_h);
        let axes = score_axes(o, px, py, PANEL_W, PANEL_H, 2);
        axes.draw_frame(&mut img, &draw::fit(&p.name, SCALE, PANEL_W), py - 26, SCALE);
        baseline_line(&mut img, o, &axes);
        let (ticks, to_x) = x_scale(&p.domain);
        for (v, label) in ticks {
            let x = px + (to_x(v) * (PANEL_W - 1) as f64) as i64;
            draw::text(&mut img, x - draw::text_width(&label, SCALE) / 2, py + PANEL_H + 6, &label, SCALE, DARK_GREY);
        }
        for r in &o.rows {
            let Some(v) = r.values.get(k).and_then(|v| position(&p.domain, v)) else { continue };
            let (x, y) = (px + (to_x(v) * (PANEL_W - 1) as f64) as i64, axes.y_of(r.score));
            let c = rung_colour(r.rung, rungs);
            draw::rect(&mut img, x - 4, y - 4, 9, 9, c);
            if Some(r.trial) == best && r.rung + 1 == rungs {
                ring(&mut img, x, y, ORANGE);
            }
        }
    }
    img
}

/// `trials.png`.
pub(crate) fn trials_chart(o: &Outcome, rungs: usize) -> RgbImage {
    let (w, h) = (PANEL_W + 200, PANEL_H + 60);
    let mut img = RgbImage::from_pixel((w + 140) as u32, (h + 150) as u32, WHITE);
    let axes = score_axes(o, 90, 60, w, h, rungs);
    axes.draw_frame(&mut img, "inner-split accuracy of each trial, rung by rung", 16, SCALE);
    baseline_line(&mut img, o, &axes);
    for k in 0..rungs {
        let label = format!("rung {k}");
        draw::text(&mut img, axes.x_of(k) - draw::text_width(&label, SCALE) / 2, 60 + h + 6, &label, SCALE, DARK_GREY);
    }
    let best = best_of(&o.rows).map(|b| b.0);
    let trials = o.rows.iter().map(|r| r.trial).max().map_or(0, |t| t + 1);
    for t in 0..trials {
        let mut values = vec![f64::NAN; rungs];
        for r in o.rows.iter().filter(|r| r.trial == t && r.rung < rungs) {
            values[r.rung] = r.score;
        }
        let colour = if Some(t) == best { ORANGE } else { Rgb([150, 170, 200]) };
        if Some(t) != best {
            axes.series(&mut img, &values, colour);
        }
    }
    if let Some(t) = best {
        let mut values = vec![f64::NAN; rungs];
        for r in o.rows.iter().filter(|r| r.trial == t && r.rung < rungs) {
            values[r.rung] = r.score;
        }
        axes.series(&mut img, &values, ORANGE);
        draw::text(&mut img, 90, 60 + h + 34, &format!("orange: the best, trial {}", t + 1), SCALE, BLACK);
    }
    if o.baseline.is_some() {
        draw::text(&mut img, 90, 60 + h + 58, "dashed: the recipe as written, all its epochs", SCALE, BLACK);
    }
    img
}

/// The recipe as written's inner score across a panel, dashed.
fn baseline_line(img: &mut RgbImage, o: &Outcome, axes: &Axes) {
    if let Some(b) = o.baseline {
        draw::dashed_hline(img, axes.y_of(b.score), axes.x, axes.x + axes.w - 1, DARK_GREY);
    }
}

fn legend(img: &mut RgbImage, x: i64, y: i64, rungs: usize) {
    let mut at = x;
    for r in 0..rungs {
        draw::rect(img, at, y + 4, 12, 12, rung_colour(r, rungs));
        let label = format!("rung {r}");
        draw::text(img, at + 18, y, &label, SCALE, BLACK);
        at += 40 + draw::text_width(&label, SCALE);
    }
    ring(img, at + 6, y + 10, ORANGE);
    draw::text(img, at + 18, y, "best", SCALE, BLACK);
    at += 60 + draw::text_width("best", SCALE);
    draw::dashed_hline(img, y + 9, at, at + 24, DARK_GREY);
    draw::text(img, at + 32, y, "the recipe as written", SCALE, BLACK);
}

fn ring(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    for (a, b) in [((-7, -7), (7, -7)), ((7, -7), (7, 7)), ((7, 7), (-7, 7)), ((-7, 7), (-7, -7))] {
        draw::line(img, (x + a.0, y + a.1), (x + b.0, y + b.1), 2, c);
    }
}

/// Tick positions with labels, and the map from a value's position to
/// `[0, 1]` across the panel.
type XScale = (Vec<(f64, String)>, Box<dyn Fn(f64) -> f64>);

fn x_scale(d: &Domain) -> XScale {
    match d {
        Domain::Choice(v) => {
            let n = v.len().max(1) as f64;
            let ticks =
                v.iter().enumerate().map(|(i, v)| (i as f64, draw::fit(&super::space::shown(v), SCALE, 120))).collect();
            (ticks, Box::new(move |i| (i + 0.5) / n))
        }
        Domain::Log { lo, hi } => {
            let (a, b) = (lo.ln(), hi.ln());
            let ticks =
                [0.0, 0.5, 1.0].iter().map(|f| (a + f * (b - a), format!("{:.1e}", (a + f * (b - a)).exp()))).collect();
            (ticks, Box::new(move |v| (v - a) / (b - a)))
        }
        Domain::Range { lo, hi, .. } => {
            let (a, b) = (*lo, *hi);
            let ticks = [0.0, 0.5, 1.0].iter().map(|f| (a + f * (b - a), format!("{:.3}", a + f * (b - a)))).collect();
            (ticks, Box::new(move |v| (v - a) / (b - a)))
        }
    }
}

/// Where a value (as tune.csv writes it) sits on its key's x scale.
fn position(d: &Domain, text: &str) -> Option<f64> {
    match d {
        Domain::Choice(v) => v.iter().position(|c| super::space::shown(c) == text).map(|i| i as f64),
        Domain::Log { .. } => text.parse::<f64>().ok().filter(|v| *v > 0.0).map(f64::ln),
        Domain::Range { .. } => text.parse::<f64>().ok(),
    }
}
