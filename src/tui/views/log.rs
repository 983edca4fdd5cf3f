//! Log tab: the step's messages, newest at the bottom.

use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use crate::tui::app::{Cell, Status};

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell) {
    let mut lines: Vec<Line> = cell.log.iter().map(|l| Line::raw(l.as_str())).collect();
    if let Status::Failed(msg) = &cell.status {
        if !cell.log.iter().any(|l| l.contains(msg.as_str())) {
            lines.push(Line::raw(format!("✗ {msg}")));
        }
    }
    if lines.is_empty() {
        lines.push(Line::raw(match cell.status {
            Status::Pending => "not run yet — Enter runs up to here, n runs the next step",
            _ => "no messages",
        }));
    }
    let visible = area.height as usize;
    let start = lines.len().saturating_sub(visible);
    let p = Paragraph::new(lines[start..].to_vec()).style(super::output_style(cell.stale)).wrap(Wrap { trim: false });
    frame.render_widget(p, area);
}
