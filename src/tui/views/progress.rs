//! Progress tab: epoch and batch gauges with ETA, current loss and accuracy.

use std::time::Instant;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::widgets::{Gauge, Paragraph};
use ratatui::Frame;

use crate::tui::app::{Cell, Status};

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell) {
    let p = &cell.progress;
    let [epoch_area, batch_area, info] =
        Layout::vertical([Constraint::Length(3), Constraint::Length(3), Constraint::Min(1)]).areas(area);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { (a as f64 / b as f64).clamp(0.0, 1.0) };
    let done_epochs = if matches!(cell.status, Status::Running { .. }) { p.epoch.saturating_sub(1) } else { p.epoch };
    frame.render_widget(
        Gauge::default()
            .block(ratatui::widgets::Block::bordered().title(" epoch "))
            .gauge_style(Style::new().fg(Color::Cyan))
            .ratio(ratio(done_epochs, p.epochs))
            .label(format!("{} / {}", p.epoch, p.epochs)),
        epoch_area,
    );
    frame.render_widget(
        Gauge::default()
            .block(ratatui::widgets::Block::bordered().title(" batch "))
            .gauge_style(Style::new().fg(Color::Blue))
            .ratio(ratio(p.batch, p.batches))
            .label(format!("{} / {}", p.batch, p.batches)),
        batch_area,
    );
    let eta = match cell.status {
        Status::Running { .. } => {
            p.eta(Instant::now()).map(|d| format!("{}s", d.as_secs())).unwrap_or_else(|| "…".into())
        }
        _ => "—".into(),
    };
    let text = if p.epochs == 0 {
        "no training yet".to_string()
    } else {
        format!("loss {:.4}   accuracy {:.4}   ETA {eta}", p.loss, p.accuracy)
    };
    frame.render_widget(Paragraph::new(text).style(super::output_style(cell.stale)), info);
}
