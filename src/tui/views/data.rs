//! Data tab of the backbone step: the data doctor's report on the recipe's
//! data (`tlab data`'s lines: classes per split, sizes, CleanVision's issue
//! types, leakage across splits), scrolled to its start.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::app::{Cell, Status};

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell) {
    let lines: Vec<Line> = match (&cell.data_report, &cell.status) {
        (Some(report), _) => report
            .iter()
            .map(|l| {
                // Leakage is the finding that changes what the accuracy means.
                if l.starts_with("LEAKAGE") {
                    Line::styled(l.as_str(), Style::new().fg(Color::Red))
                } else {
                    Line::raw(l.as_str())
                }
            })
            .collect(),
        (None, Status::Pending) => vec![Line::raw("not run yet — the data is examined when the backbone step runs")],
        (None, _) => vec![Line::raw("examining the data folders…")],
    };
    let p = Paragraph::new(lines).style(super::output_style(cell.stale)).wrap(Wrap { trim: false });
    frame.render_widget(p, area);
}
