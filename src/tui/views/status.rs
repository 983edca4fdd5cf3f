//! The status bar: recipe path, reload state, device, auto-run and keys.

use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::tui::app::{App, ReloadState};

pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let reload = match &app.reload {
        ReloadState::Watching => Span::styled("watching", Style::new().fg(Color::Green)),
        ReloadState::Reloaded { at, first_changed: Some(i) } => Span::styled(
            format!("reloaded {}s ago (from step {})", at.elapsed().as_secs(), i + 1),
            Style::new().fg(Color::Cyan),
        ),
        ReloadState::Reloaded { at, first_changed: None } => {
            Span::styled(format!("reloaded {}s ago (no change)", at.elapsed().as_secs()), Style::new().fg(Color::Green))
        }
        ReloadState::Error(_) => Span::styled("reload error", Style::new().fg(Color::Red)),
    };
    let frame_ms = app.frame_stats().map(|(med, _)| format!("{:.1}ms", med.as_secs_f64() * 1e3)).unwrap_or_default();
    let quit = if app.confirm_quit { " a step is running: q again quits, any other key stays " } else { "" };
    let line = Line::from(vec![
        Span::styled(format!(" {} ", app.recipe_path.display()), Style::new().bg(Color::Blue).fg(Color::White)),
        Span::raw(" "),
        reload,
        Span::raw(format!(
            " · cpu ({} threads) · auto-run {} · frame {frame_ms} · ",
            rayon::current_num_threads(),
            if app.autorun { "on" } else { "off" }
        )),
        Span::styled(quit, Style::new().bg(Color::Red).fg(Color::White)),
        Span::styled(crate::tui::app::key_hints(), Style::new().fg(Color::DarkGray)),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}
