//! The `?` popup: every key.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::widgets::{Block, Clear, Row, Table};
use ratatui::Frame;

use crate::tui::app::KEY_MAP;

pub fn render(frame: &mut Frame, area: Rect) {
    let h = (KEY_MAP.len() as u16 + 2).min(area.height);
    // Wide enough for the longest line: keys column, gap, text, borders.
    let longest = KEY_MAP.iter().map(|b| b.help.chars().count()).max().unwrap_or(0);
    let w = (18 + 1 + longest as u16 + 2).min(area.width);
    let [_, mid, _] = Layout::vertical([Constraint::Fill(1), Constraint::Length(h), Constraint::Fill(1)]).areas(area);
    let [_, popup, _] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(w), Constraint::Fill(1)]).areas(mid);
    frame.render_widget(Clear, popup);
    let rows = KEY_MAP.iter().map(|b| Row::new(vec![b.shown, b.help]));
    let table = Table::new(rows, [Constraint::Length(18), Constraint::Min(10)]).block(
        Block::bordered().title(" keys (any key closes) ").title_style(Style::new().add_modifier(Modifier::BOLD)),
    );
    frame.render_widget(table, popup);
}
