//! The `R` popup: earlier runs of the open recipe (newest first) with their
//! accuracy, and the current recipe diffed key by key against the selected
//! run's.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table};
use ratatui::Frame;

use crate::tui::app::RunsView;

pub fn render(frame: &mut Frame, area: Rect, view: &RunsView) {
    let w = 100.min(area.width);
    let h = 24.min(area.height);
    let [_, mid, _] = Layout::vertical([Constraint::Fill(1), Constraint::Length(h), Constraint::Fill(1)]).areas(area);
    let [_, popup, _] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(w), Constraint::Fill(1)]).areas(mid);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" earlier runs of this recipe (j/k select, R or Esc closes) ")
        .title_style(Style::new().add_modifier(Modifier::BOLD));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    if view.runs.is_empty() {
        frame.render_widget(Paragraph::new("no runs of this recipe under runs/ yet (tlab run writes them)"), inner);
        return;
    }
    let table_h = (view.runs.len() as u16 + 1).min(inner.height / 2).max(2);
    let [table_area, diff_area] = Layout::vertical([Constraint::Length(table_h), Constraint::Min(1)]).areas(inner);
    // The columns `tlab runs` prints, up to the macro F1 (the popup is narrow).
    let table = crate::run::history::runs_table(&view.runs);
    let rows = table.rows.iter().enumerate().map(|(i, r)| {
        let row = Row::new(r.cells.iter().take(5).cloned());
        if i == view.selected {
            row.style(Style::new().bg(Color::Blue).fg(Color::White))
        } else {
            row
        }
    });
    let header = Row::new(table.columns.iter().take(5).map(|(title, _)| title.clone()))
        .style(Style::new().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Min(24),
        Constraint::Length(16),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    frame.render_widget(Table::new(rows, widths).header(header), table_area);
    let Some(run) = view.runs.get(view.selected) else { return };
    let mut lines =
        vec![Line::styled(format!("recipe now vs {}:", run.name), Style::new().add_modifier(Modifier::BOLD))];
    match crate::run::history::diff_table(run.recipe.as_deref(), Some(&view.current)) {
        None => lines.push(Line::from("(this run saved no recipe.toml)")),
        Some(t) if t.rows.is_empty() => lines.push(Line::from("same recipe")),
        Some(t) => lines
            .extend(t.rows.iter().map(|r| Line::from(format!("  {}: {} → {}", r.cells[0], r.cells[1], r.cells[2])))),
    }
    frame.render_widget(Paragraph::new(lines), diff_area);
}
