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
    let num = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.4}"));
    let rows = view.runs.iter().enumerate().map(|(i, r)| {
        let row = Row::new(vec![
            r.name.clone(),
            r.started_text(),
            if r.complete { "complete".into() } else { "incomplete".into() },
            num(r.metrics.as_ref().map(|m| m.accuracy)),
            num(r.metrics.as_ref().map(|m| m.macro_avg.f1)),
        ]);
        if i == view.selected {
            row.style(Style::new().bg(Color::Blue).fg(Color::White))
        } else {
            row
        }
    });
    let header = Row::new(vec!["run", "started (UTC)", "status", "accuracy", "macro F1"])
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
    match &run.recipe {
        None => lines.push(Line::from("(this run saved no recipe.toml)")),
        Some(old) => {
            let diff = crate::run::history::recipe_diff(old, &view.current);
            if diff.is_empty() {
                lines.push(Line::from("same recipe"));
            }
            for c in diff {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
                lines.push(Line::from(format!("  {}: {} → {}", c.key, show(&c.before), show(&c.after))));
            }
        }
    }
    frame.render_widget(Paragraph::new(lines), diff_area);
}
