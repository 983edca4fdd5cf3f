//! Confusion tab: the matrix as a heat-map with counts (rows = true class);
//! `v` toggles row-normalised values.

use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell as TableCell, Paragraph, Row, Table};
use ratatui::Frame;

use crate::lab::StepOutput;
use crate::tui::app::Cell;

/// Short column labels: class names get truncated to fit the width.
fn label(s: &str, width: usize) -> String {
    s.chars().take(width).collect()
}

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell, normalised: bool) {
    let Some(StepOutput::Evaluate(eval)) = cell.result.as_ref().map(|r| &r.output) else {
        frame.render_widget(Paragraph::new("run the evaluate step to see the confusion matrix"), area);
        return;
    };
    let m = &eval.metrics;
    let n = m.classes.len();
    let name_w = m.classes.iter().map(|c| c.chars().count()).max().unwrap_or(4).min(14) as u16;
    let col_w = ((area.width.saturating_sub(name_w + 2)) / n.max(1) as u16).clamp(4, 8);
    let header = Row::new(
        std::iter::once(TableCell::from("true \\ pred"))
            .chain(m.classes.iter().map(|c| TableCell::from(label(c, col_w as usize)))),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = m.confusion.iter().enumerate().map(|(i, row)| {
        let total: usize = row.iter().sum();
        let cells = row.iter().enumerate().map(|(j, &v)| {
            let frac = if total == 0 { 0.0 } else { v as f64 / total as f64 };
            let text = if normalised { format!("{frac:.2}") } else { v.to_string() };
            // Heat: diagonal green, off-diagonal red, brighter for larger row fractions.
            let level = (40.0 + 215.0 * frac) as u8;
            let bg = if frac == 0.0 {
                Color::Reset
            } else if i == j {
                Color::Rgb(0, level, 0)
            } else {
                Color::Rgb(level, 0, 0)
            };
            let fg = if frac > 0.5 { Color::Black } else { Color::White };
            TableCell::from(text).style(Style::new().bg(bg).fg(fg))
        });
        Row::new(std::iter::once(TableCell::from(label(&m.classes[i], name_w as usize))).chain(cells))
    });
    let widths: Vec<Constraint> =
        std::iter::once(Constraint::Length(name_w.max(11))).chain((0..n).map(|_| Constraint::Length(col_w))).collect();
    let shown = if normalised { "row-normalised" } else { "counts" };
    let title = format!(" {} · {shown} (v toggles) ", crate::present::rows::headline(m));
    let table = Table::new(rows, widths)
        .header(header)
        .block(ratatui::widgets::Block::default().title(Line::from(title)))
        .style(super::output_style(cell.stale));
    frame.render_widget(table, area);
}
