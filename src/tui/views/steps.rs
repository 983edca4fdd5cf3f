//! The left column: recipe steps as notebook cells with their status.

use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState};
use ratatui::Frame;

use crate::tui::app::{App, Status};

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let width = area.width.saturating_sub(4) as usize;
    let items: Vec<ListItem> = app
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (mark, style) = match &c.status {
                Status::Pending => ("·".to_string(), Style::new().fg(Color::DarkGray)),
                Status::Running { since } => {
                    let k = (since.elapsed().as_millis() / 100) as usize % SPINNER.len();
                    (SPINNER[k].to_string(), Style::new().fg(Color::Yellow))
                }
                Status::Done { seconds, cancelled: false } => {
                    (format!("✓ {}", secs(*seconds)), Style::new().fg(Color::Green))
                }
                Status::Done { seconds, cancelled: true } => {
                    (format!("✓ {} (cancelled)", secs(*seconds)), Style::new().fg(Color::Yellow))
                }
                Status::Failed(_) => ("✗".to_string(), Style::new().fg(Color::Red)),
            };
            let (mark, style) =
                if c.stale { (format!("~ stale ({mark})"), Style::new().fg(Color::Magenta)) } else { (mark, style) };
            let head = Line::from(vec![
                Span::styled(format!("{:>2}. {:<9} ", i + 1, c.kind), Style::new().add_modifier(Modifier::BOLD)),
                Span::styled(mark, style),
            ]);
            let mut summary: String = c.summary.chars().take(width.saturating_sub(4)).collect();
            if summary.chars().count() < c.summary.chars().count() {
                summary.push('…');
            }
            let body = Line::styled(format!("    {summary}"), crate::tui::views::output_style(c.stale).fg(Color::Gray));
            ListItem::new(vec![head, body])
        })
        .collect();
    let list = List::new(items)
        .block(Block::bordered().title(" steps "))
        .highlight_style(Style::new().bg(Color::DarkGray))
        .highlight_symbol("▶");
    let mut state = ListState::default().with_selected(Some(app.selected));
    frame.render_stateful_widget(list, area, &mut state);
}

fn secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}
