//! The confusion matrix as a heat-map (PNG, counts in the cells, class names
//! on both axes) beside an HTML table with the class names. Colour is the share of
//! the true class's images (row-normalised, i.e. recall), so classes with few
//! images stay readable.

use image::{Rgb, RgbImage};

use super::{escape, img_tag, Block, HEAD_STYLE, TABLE_STYLE};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::util::draw::{self, BLACK, DARK_GREY};

const CELL: i64 = 30;
/// Text scale of the class names and axis titles.
const LABEL: i64 = 2;
/// Longest class name drawn, in pixels; longer ones end in "…".
const MAX_LABEL: i64 = 120;
/// Room for an axis title.
const TITLE_BAND: i64 = 22;

/// A class name as drawn: folder names often use `_` for spaces.
fn label(class: &str) -> String {
    class.replace('_', " ")
}

/// Counts, rows = true class, columns = predicted class.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    pub classes: Vec<String>,
    pub counts: Vec<Vec<usize>>,
}

impl From<&Metrics> for ConfusionMatrix {
    fn from(m: &Metrics) -> Self {
        ConfusionMatrix { classes: m.classes.clone(), counts: m.confusion.clone() }
    }
}

/// White → dark blue.
fn shade(t: f64) -> Rgb<u8> {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    Rgb([mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0)])
}

impl ConfusionMatrix {
    fn n(&self) -> usize {
        self.classes.len()
    }

    /// Cell `(t, p)`, 0 where the matrix is ragged or short.
    pub fn count(&self, t: usize, p: usize) -> usize {
        self.counts.get(t).and_then(|r| r.get(p)).copied().unwrap_or(0)
    }

    /// `count / row total` (0 for an empty row).
    pub fn share(&self, t: usize, p: usize) -> f64 {
        let total: usize = (0..self.n()).map(|q| self.count(t, q)).sum();
        if total == 0 {
            0.0
        } else {
            self.count(t, p) as f64 / total as f64
        }
    }

    /// The `n` largest off-diagonal cells as `(count, true class, predicted
    /// class)`, largest first (ties: true class, then predicted, in class order).
    pub fn most_confused(&self, n: usize) -> Vec<(usize, String, String)> {
        crate::metrics::most_confused(&self.counts, &self.classes, n)
            .into_iter()
            .map(|c| (c.count, c.truth, c.predicted))
            .collect()
    }

    /// Where the cells start: `(left, top)`, room for the class names (rows
    /// on the left, columns turned upright on top) and the axis titles.
    fn origin(&self) -> (i64, i64) {
        let names = self.classes.iter().map(|c| draw::text_width(&label(c), LABEL)).max().unwrap_or(0);
        let margin = TITLE_BAND + names.min(MAX_LABEL) + 8;
        (margin, margin)
    }

    /// The heat-map: `n × n` cells of 30 px with the counts written in, the
    /// class names along the left (true) and the top (predicted, upright),
    /// each axis titled. Names longer than 120 px are cut with an ellipsis.
    pub fn to_png(&self) -> RgbImage {
        let n = self.n() as i64;
        let (left, top) = self.origin();
        let (w, h) = (left + n * CELL + 2, top + n * CELL + 2);
        let mut img = RgbImage::from_pixel(w.max(left + 2) as u32, h.max(top + 2) as u32, Rgb([255, 255, 255]));
        let title_h = draw::text_height(LABEL);
        draw::text(&mut img, left, (TITLE_BAND - title_h) / 2, "predicted", LABEL, BLACK);
        draw::text_vertical(&mut img, (TITLE_BAND - title_h) / 2, top, "true", LABEL, BLACK);
        for t in 0..self.n() {
            let name = draw::fit(&label(&self.classes[t]), LABEL, MAX_LABEL);
            let (lw, lh) = (draw::text_width(&name, LABEL), draw::text_height(LABEL));
            let centre = t as i64 * CELL + CELL / 2;
            // Row names end at the grid; column names stand on it.
            draw::text(&mut img, left - 6 - lw, top + centre - lh / 2, &name, LABEL, DARK_GREY);
            draw::text_vertical(&mut img, left + centre - lh / 2, top - 6 - lw, &name, LABEL, DARK_GREY);
            for p in 0..self.n() {
                let share = self.share(t, p);
                let (x, y) = (left + p as i64 * CELL, top + t as i64 * CELL);
                draw::rect(&mut img, x, y, CELL, CELL, shade(share));
                let count = self.count(t, p);
                if count > 0 {
                    let s = count.to_string();
                    // Shrink long counts to fit the cell.
                    let scale = if draw::text_width(&s, 2) <= CELL - 4 { 2 } else { 1 };
                    let colour = if share > 0.5 { Rgb([255, 255, 255]) } else { BLACK };
                    let (w, h) = (draw::text_width(&s, scale), draw::text_height(scale));
                    draw::text(&mut img, x + (CELL - w) / 2, y + (CELL - h) / 2, &s, scale, colour);
                }
            }
        }
        // Grid lines between cells.
        for k in 0..=n {
            let at = k * CELL;
            draw::line(&mut img, (left + at, top), (left + at, top + n * CELL), 1, draw::GREY);
            draw::line(&mut img, (left, top + at), (left + n * CELL, top + at), 1, draw::GREY);
        }
        img
    }

    /// The table alone: class names, counts, cells shaded like the heat-map.
    pub(crate) fn table_html(&self) -> String {
        let mut s = format!("<table style=\"{TABLE_STYLE}\"><tr><th style=\"{HEAD_STYLE}\">true \\ predicted</th>");
        for (p, c) in self.classes.iter().enumerate() {
            s.push_str(&format!("<th style=\"{HEAD_STYLE}\">{p}: {}</th>", escape(c)));
        }
        s.push_str("</tr>");
        for (t, c) in self.classes.iter().enumerate() {
            s.push_str(&format!("<tr><th style=\"{HEAD_STYLE}\">{t}: {}</th>", escape(c)));
            for p in 0..self.n() {
                let share = self.share(t, p);
                let Rgb([r, g, b]) = shade(share);
                let fg = if share > 0.5 { "#fff" } else { "#000" };
                s.push_str(&format!(
                    "<td style=\"border:1px solid #ccc;padding:2px 6px;text-align:right;background:rgb({r},{g},{b});color:{fg}\">{}</td>",
                    self.count(t, p)
                ));
            }
            s.push_str("</tr>");
        }
        s.push_str("</table>");
        s
    }

    /// Heat-map and table side by side.
    pub fn to_html(&self) -> Result<String> {
        Ok(format!(
            "<div><b>Confusion matrix</b> (rows = true class, columns = predicted; colour = share of the row)\
             <div style=\"display:flex;gap:16px;align-items:flex-start\">{}{}</div></div>",
            img_tag(&self.to_png(), "confusion matrix heat-map")?,
            self.table_html()
        ))
    }

    /// Plain-text matrix for consoles: the rows layer's table.
    pub(crate) fn to_text(&self) -> String {
        let table = crate::present::rows::confusion_table(&self.classes, &self.counts);
        format!("confusion (rows = true, columns = predicted)\n{}", table.text())
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(vec![Block::text(self.to_text()), Block::html(self.to_html()?)])
    }
}

super::evcxr_display!(ConfusionMatrix);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::present::views::tests::first_png;

    fn matrix() -> ConfusionMatrix {
        ConfusionMatrix {
            classes: vec!["cat".into(), "dog".into(), "<fox>".into()],
            counts: vec![vec![8, 2, 0], vec![1, 9, 0], vec![0, 0, 123]],
        }
    }

    #[test]
    fn html_has_counts_names_and_a_heat_map_of_the_right_size() {
        let m = matrix();
        let html = m.to_html().unwrap();
        for needle in [">8</td>", ">9</td>", ">123</td>", "0: cat", "2: &lt;fox&gt;"] {
            assert!(html.contains(needle), "{needle} missing");
        }
        let png = first_png(&html);
        let (left, top) = m.origin();
        assert_eq!(png.dimensions(), ((left + 3 * CELL + 2) as u32, (top + 3 * CELL + 2) as u32));
        // The names take room: more than the widest, "<fox>", at label size.
        assert!(left > TITLE_BAND + draw::text_width("<fox>", LABEL));
        // A full row share is the darkest colour; an empty cell is white.
        let centre = |t: i64, p: i64| ((left + p * CELL + 3) as u32, (top + t * CELL + 3) as u32);
        let (x, y) = centre(2, 2);
        assert_eq!(png.get_pixel(x, y), &shade(1.0));
        let (x, y) = centre(2, 0);
        assert_eq!(png.get_pixel(x, y), &shade(0.0));
        assert!((m.share(0, 1) - 0.2).abs() < 1e-12);
        assert_eq!(m.most_confused(5), vec![(2, "cat".into(), "dog".into()), (1, "dog".into(), "cat".into())]);
        assert_eq!(m.most_confused(1).len(), 1);
    }

    #[test]
    fn ragged_and_empty_matrices_do_not_panic() {
        let m = ConfusionMatrix { classes: vec!["a".into(), "b".into()], counts: vec![vec![1]] };
        assert_eq!(m.count(1, 1), 0);
        assert_eq!(m.share(1, 0), 0.0);
        let _ = m.to_html().unwrap();
        let empty = ConfusionMatrix { classes: vec![], counts: vec![] };
        let _ = empty.to_png();
        // A very long name is cut, not allowed to push the grid away.
        let long = ConfusionMatrix { classes: vec!["x".repeat(200), "b".into()], counts: vec![vec![1, 0], vec![0, 1]] };
        assert!(long.origin().0 <= TITLE_BAND + MAX_LABEL + 8);
        assert!(draw::fit(&"x".repeat(200), LABEL, MAX_LABEL).ends_with('…'));
        assert!(empty.to_text().starts_with("confusion"));
    }

    #[test]
    fn text_is_the_rows_table_with_counts_right_aligned() {
        let text = matrix().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("cat") && lines[1].contains("<fox>"), "{text}");
        let fox = lines.iter().rfind(|l| l.starts_with("<fox>")).unwrap();
        let cat = lines.iter().find(|l| l.starts_with("cat")).unwrap();
        // The last column's counts end at the same place.
        assert!(fox.ends_with("123") && cat.ends_with("  0") && fox.len() == cat.len(), "{text}");
    }
}
