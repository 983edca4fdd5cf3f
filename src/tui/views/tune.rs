//! The `T` view: the running (or last) tune's leaderboard — each trial at
//! its highest rung with its score, time and values — its last lines, and
//! the best recipe so far against the one the tune started from.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table};
use ratatui::Frame;

use crate::tui::app::TuneView;

pub fn render(frame: &mut Frame, area: Rect, view: &TuneView) {
    let w = 120.min(area.width);
    let h = 30.min(area.height);
    let [_, mid, _] = Layout::vertical([Constraint::Fill(1), Constraint::Length(h), Constraint::Fill(1)]).areas(area);
    let [_, popup, _] =
        Layout::horizontal([Constraint::Fill(1), Constraint::Length(w), Constraint::Fill(1)]).areas(mid);
    frame.render_widget(Clear, popup);
    let title = match &view.ended {
        None => " tune: running (c cancels · T or Esc hides, the tune goes on) ".to_string(),
        Some(_) => " tune: ended (T or Esc closes) ".to_string(),
    };
    let block = Block::bordered().title(title).title_style(Style::new().add_modifier(Modifier::BOLD));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let board = crate::tools::tune::leaderboard(&view.rows);
    let table_h = (board.len() as u16 + 1).clamp(2, inner.height.saturating_sub(10).max(2));
    let [head, table_area, best_area] =
        Layout::vertical([Constraint::Length(5), Constraint::Length(table_h), Constraint::Min(1)]).areas(inner);
    frame.render_widget(Paragraph::new(status_lines(view)), head);
    let header: Vec<String> = ["trial", "rung", "epochs", "inner acc", "s"]
        .iter()
        .map(|s| s.to_string())
        .chain(view.keys.iter().cloned())
        .collect();
    let rows = board.iter().enumerate().map(|(i, r)| {
        let cells: Vec<String> = [
            (r.trial + 1).to_string(),
            r.rung.to_string(),
            r.share.clone(),
            format!("{:.4}", r.score),
            format!("{:.1}", r.seconds),
        ]
        .into_iter()
        .chain(r.values.iter().cloned())
        .collect();
        let row = Row::new(cells);
        if i == 0 {
            row.style(Style::new().fg(Color::Green).add_modifier(Modifier::BOLD))
        } else {
            row
        }
    });
    let mut widths = vec![
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    widths.extend(view.keys.iter().map(|k| Constraint::Length(k.len().clamp(8, 24) as u16)));
    let table = Table::new(rows, widths).header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)));
    frame.render_widget(table, table_area);
    frame.render_widget(Paragraph::new(best_lines(view, board.first().copied())), best_area);
}

/// What the tune is doing: trials run, time, its folder, its last lines.
fn status_lines(view: &TuneView) -> Vec<Line<'static>> {
    let trials = crate::tools::tune::leaderboard(&view.rows).len();
    let state = match &view.ended {
        None => format!("{:.0}s", view.started.elapsed().as_secs_f64()),
        Some(Ok(Some(a))) => format!("best.toml trained on all of train: accuracy {a:.4} on valid"),
        Some(Ok(None)) => "no trial finished".into(),
        Some(Err(e)) => e.clone(),
    };
    let dir = view.dir.as_ref().map(|d| crate::util::paths::shown(d).display().to_string()).unwrap_or_default();
    let mut lines = vec![
        Line::from(format!(
            "{trials} trial(s), {} trial-rung(s), scored on an inner split of train (valid unread) · {dir}",
            view.rows.len()
        )),
        Line::styled(state, Style::new().add_modifier(Modifier::BOLD)),
    ];
    lines.extend(view.lines.iter().map(|l| Line::styled(l.clone(), Style::new().fg(Color::DarkGray))));
    lines
}

/// The best recipe against the starting one: best.toml's key-by-key diff
/// once written, else the leading trial's values.
fn best_lines(view: &TuneView, leader: Option<&crate::tools::tune::Row>) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    if let Some(best) = &view.best {
        let mut lines = vec![Line::styled("best.toml against the recipe it started from:", bold)];
        let diff = crate::run::history::recipe_diff(&view.original, best);
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
        let changed: Vec<Line<'static>> = diff
            .iter()
            .filter(|c| !c.key.starts_with("tune.") && c.key != "tune")
            .map(|c| Line::from(format!("  {}: {} → {}", c.key, show(&c.before), show(&c.after))))
            .collect();
        if changed.is_empty() {
            lines.push(Line::from("  nothing changed: no trial beat the recipe as written beyond chance"));
        }
        lines.extend(changed);
        return lines;
    }
    let Some(r) = leader else { return vec![Line::from("waiting for the first trial…")] };
    let mut lines =
        vec![Line::styled(format!("leading: trial {} ({:.4} at rung {})", r.trial + 1, r.score, r.rung), bold)];
    lines.extend(view.keys.iter().zip(&r.values).map(|(k, v)| Line::from(format!("  {k} = {v}"))));
    lines
}
