//! Results rendered as pictures (PNG) and HTML: the one presentation layer
//! behind the run directory's pictures, `report.html` and the notebooks'
//! rich display.
//!
//! In notebooks (feature `notebook`, where this module is also
//! `tlab::notebook`), evcxr shows a cell's final value by calling its inherent
//! `evcxr_display(&self)` method when it has one; the method prints blocks
//!
//! ```text
//! EVCXR_BEGIN_CONTENT text/html
//! …
//! EVCXR_END_CONTENT
//! ```
//!
//! on stdout (binary types such as `image/png` base64-encoded). evcxr keeps
//! only the last block of each MIME type per cell, so every view prints *one*
//! combined block per type: a `text/html` that holds everything (images are
//! embedded as `data:` URIs, which Jupyter and GitHub both render), plus a
//! `text/plain` fallback for consoles ([`Block::png`] makes an `image/png`
//! block for views that want one).
//!
//! Views (one file each): [`HistoryChart`], [`ConfusionMatrix`],
//! [`ClassReport`], [`Mistakes`], [`Samples`], [`ReliabilityDiagram`],
//! [`CompareChart`] and the lr_find plot. They are functions of results
//! (an evaluation, a history, the data), not of a lab: `Lab`'s own views
//! (`lab.confusion()`, …) and the step list (`Steps`) live in `crate::lab`.
//! Charts are drawn directly onto an [`image::RgbImage`] with a built-in
//! bitmap font, so nothing depends on system fonts or network access.
//!
//! Every view has `to_html()` (and `to_png()` where it is a picture) for use
//! outside evcxr, e.g. to save a report.

mod calibration;
mod chart;
mod compare;
mod confusion;
mod lr_find;
mod mistakes;
mod report;
mod samples;

use std::io::Write as _;

use image::RgbImage;

pub use calibration::ReliabilityDiagram;
pub use chart::HistoryChart;
pub use compare::CompareChart;
pub use confusion::ConfusionMatrix;
pub use mistakes::{Mistake, Mistakes};
pub use report::ClassReport;
pub use samples::Samples;

use crate::error::{Error, Result};

/// One display block: a MIME type and its content (text, or base64 for binary types).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub mime: &'static str,
    pub content: String,
}

impl Block {
    pub fn html(content: String) -> Self {
        Block { mime: "text/html", content }
    }
    pub fn text(content: String) -> Self {
        Block { mime: "text/plain", content }
    }
    pub fn png(img: &RgbImage) -> Result<Self> {
        Ok(Block { mime: "image/png", content: base64(&png_bytes(img)?) })
    }
}

/// The evcxr protocol text for `blocks`.
pub fn protocol(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        s.push_str("EVCXR_BEGIN_CONTENT ");
        s.push_str(b.mime);
        s.push('\n');
        s.push_str(&b.content);
        if !b.content.ends_with('\n') {
            s.push('\n');
        }
        s.push_str("EVCXR_END_CONTENT\n");
    }
    s
}

/// Prints `blocks` for evcxr. If building them failed, prints the error as
/// text instead (on stderr too, so a notebook runner notices): a display
/// method cannot return an error, and a view must never panic in a cell.
#[cfg_attr(not(feature = "notebook"), allow(dead_code))]
pub(crate) fn emit(blocks: Result<Vec<Block>>) {
    let text = match blocks {
        Ok(b) => protocol(&b),
        Err(e) => {
            eprintln!("Error: cannot display: {e}");
            protocol(&[Block::text(format!("cannot display: {e}"))])
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Implements the inherent `evcxr_display` that evcxr looks for, from a
/// `blocks(&self) -> Result<Vec<Block>>` method (feature `notebook` only:
/// the rest of the views are for every front end).
#[cfg(feature = "notebook")]
macro_rules! evcxr_display {
    ($($t:ty),*) => {$(
        impl $t {
            /// Shows this value in a notebook cell (called by evcxr).
            pub fn evcxr_display(&self) {
                $crate::present::views::emit(self.blocks());
            }
        }
    )*};
}
#[cfg(not(feature = "notebook"))]
macro_rules! evcxr_display {
    ($($t:ty),*) => {};
}
pub(crate) use evcxr_display;

/// PNG file bytes of `img`.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .map_err(|source| Error::Png { source })?;
    Ok(buf)
}

/// An `<img>` tag holding `img` as a PNG `data:` URI.
pub(crate) fn img_tag(img: &RgbImage, alt: &str) -> Result<String> {
    Ok(format!(
        r#"<img alt="{}" width="{}" height="{}" src="data:image/png;base64,{}"/>"#,
        escape(alt),
        img.width(),
        img.height(),
        base64(&png_bytes(img)?)
    ))
}

/// Standard base64 with padding (RFC 4648), as data URIs and evcxr expect.
/// Written out because it is 20 lines and saves a dependency in `:dep` builds.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Shared table styling: Jupyter's default table CSS right-aligns and strips
/// borders inconsistently across front ends, so views state what they need.
pub(crate) const TABLE_STYLE: &str = "border-collapse:collapse;font-family:monospace;font-size:12px";
pub(crate) const CELL_STYLE: &str = "border:1px solid #ccc;padding:2px 6px;text-align:right";
pub(crate) const HEAD_STYLE: &str = "border:1px solid #ccc;padding:2px 6px;text-align:left;background:#f3f3f3";

/// A [`crate::present::rows::Table`] as an HTML table: the first column as row
/// headings, summary rows in bold.
pub(crate) fn table_html(table: &crate::present::rows::Table) -> String {
    let mut s = format!("<table style=\"{TABLE_STYLE}\"><tr>");
    for (title, _) in &table.columns {
        s.push_str(&format!("<th style=\"{HEAD_STYLE}\">{}</th>", escape(title)));
    }
    s.push_str("</tr>");
    for row in &table.rows {
        s.push_str("<tr>");
        for (j, cell) in row.cells.iter().enumerate() {
            let (tag, style) = if j == 0 { ("th", HEAD_STYLE) } else { ("td", CELL_STYLE) };
            match row.summary && !cell.is_empty() {
                true => s.push_str(&format!("<{tag} style=\"{style}\"><b>{}</b></{tag}>", escape(cell))),
                false => s.push_str(&format!("<{tag} style=\"{style}\">{}</{tag}>", escape(cell))),
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn protocol_wraps_each_block() {
        let p = protocol(&[Block::text("a".into()), Block::html("<b>x</b>\n".into())]);
        assert_eq!(
            p,
            "EVCXR_BEGIN_CONTENT text/plain\na\nEVCXR_END_CONTENT\nEVCXR_BEGIN_CONTENT text/html\n<b>x</b>\nEVCXR_END_CONTENT\n"
        );
    }

    #[test]
    fn escape_handles_markup() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    /// Decodes the first `data:image/png;base64,` URI in `html`.
    pub(crate) fn first_png(html: &str) -> RgbImage {
        let start = html.find("data:image/png;base64,").expect("an embedded PNG") + "data:image/png;base64,".len();
        let end = start + html[start..].find('"').expect("closing quote");
        image::load_from_memory(&decode_base64(&html[start..end])).expect("valid PNG").to_rgb8()
    }

    /// Test-only decoder, to check that what we encode decodes.
    pub(crate) fn decode_base64(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c}"),
        };
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(4) {
            let pad = chunk.iter().filter(|&&c| c == b'=').count();
            let n =
                chunk.iter().take(4 - pad).enumerate().fold(0u32, |n, (k, &c)| n | u32::from(val(c)) << (18 - 6 * k));
            out.extend(n.to_be_bytes()[1..4 - pad].iter().copied());
        }
        out
    }

    #[test]
    fn png_round_trips_through_base64() {
        let img = RgbImage::from_fn(7, 3, |x, y| image::Rgb([x as u8 * 30, y as u8 * 80, 5]));
        let html = img_tag(&img, "t").unwrap();
        assert!(html.contains(r#"width="7" height="3""#));
        assert_eq!(first_png(&html), img);
    }
}
