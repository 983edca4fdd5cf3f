//! One view per file: each renders a part of [`App`](super::app::App) into a
//! frame area and keeps no state of its own (state lives in the app).

pub mod charts;
pub mod confusion;
pub mod help;
pub mod images;
pub mod log;
pub mod progress;
pub mod report;
pub mod status;
pub mod steps;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Tabs};
use ratatui::Frame;

use super::app::{App, Tab};
use images::Images;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App, images: &mut Images) {
    let [banner, main, status_area] = Layout::vertical([
        Constraint::Length(u16::from(matches!(app.reload, super::app::ReloadState::Error(_)))),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    if let super::app::ReloadState::Error(msg) = &app.reload {
        let line = Line::from(vec![
            Span::styled(" reload failed ", Style::new().bg(Color::Red).fg(Color::White).add_modifier(Modifier::BOLD)),
            Span::raw(format!(" {msg} — keeping the last good recipe")),
        ]);
        frame.render_widget(Paragraph::new(line), banner);
    }
    let left_width = (main.width / 3).clamp(28, 48);
    let [left, right] = Layout::horizontal([Constraint::Length(left_width), Constraint::Min(10)]).areas(main);
    steps::render(frame, left, app);
    render_output(frame, right, app, images);
    status::render(frame, status_area, app);
    if app.help {
        help::render(frame, frame.area());
    }
}

fn render_output(frame: &mut Frame, area: Rect, app: &App, images: &mut Images) {
    let Some(cell) = app.selected_cell() else { return };
    let tabs = cell.tabs();
    let current = app.current_tab();
    let title = format!(" {}. {} ", app.selected + 1, cell.kind);
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [tab_bar, body] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
    let titles: Vec<&str> = tabs.iter().map(|t| t.title()).collect();
    let selected = tabs.iter().position(|t| *t == current).unwrap_or(0);
    frame.render_widget(
        Tabs::new(titles).select(selected).highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        tab_bar,
    );
    let dim = cell.stale;
    match current {
        Tab::Log => log::render(frame, body, cell),
        Tab::Progress => progress::render(frame, body, cell),
        Tab::Charts => charts::render(frame, body, cell),
        Tab::Preview => images.render(frame, body, app.selected, images::ImageKind::Preview, dim),
        Tab::Confusion => confusion::render(frame, body, cell, app.normalised),
        Tab::Report => report::render(frame, body, cell, app.sort),
        Tab::Mistakes => images.render(frame, body, app.selected, images::ImageKind::Mistakes, dim),
    }
}

/// Text style for a cell's outputs: dimmed when stale.
pub fn output_style(stale: bool) -> Style {
    if stale {
        Style::new().add_modifier(Modifier::DIM)
    } else {
        Style::new()
    }
}
