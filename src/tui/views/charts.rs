//! Charts tab: train/valid loss and accuracy per epoch, live while training.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::Span;
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph};
use ratatui::Frame;

use crate::lab::StepOutput;
use crate::train::lr_find::LrFindResult;
use crate::tui::app::Cell;

/// lr_find's smoothed loss against log10(lr), the suggestions in the title.
fn lr_find(frame: &mut Frame, area: Rect, found: &LrFindResult, stale: bool) {
    let points: Vec<(f64, f64)> = found.lrs.iter().zip(&found.losses).map(|(lr, l)| (lr.log10(), *l)).collect();
    let (x0, x1) = (points.first().map_or(-7.0, |p| p.0), points.last().map_or(1.0, |p| p.0));
    let first = points.first().map_or(1.0, |p| p.1);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = (first * 1.1).max(lo + 1e-6);
    let marks: Vec<Vec<(f64, f64)>> =
        found.suggestions.iter().map(|(_, lr)| vec![(lr.log10(), lo), (lr.log10(), hi)]).collect();
    let colours = [Color::Yellow, Color::Green, Color::Red];
    let mut datasets = vec![Dataset::default()
        .name("loss")
        .marker(Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(Color::Cyan))
        .data(&points)];
    for (((which, lr), data), colour) in found.suggestions.iter().zip(&marks).zip(colours) {
        datasets.push(
            Dataset::default()
                .name(format!("{} {lr:.1e}", which.name()))
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(colour))
                .data(data),
        );
    }
    let decades: Vec<Span> = (x0.ceil() as i64..=x1.floor() as i64).map(|d| Span::raw(format!("1e{d}"))).collect();
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(" lr_find: loss vs learning rate "))
        .style(super::output_style(stale))
        .x_axis(Axis::default().title("lr (log)").bounds([x0, x1]).labels(decades))
        .y_axis(
            Axis::default().bounds([lo, hi]).labels(vec![Span::raw(format!("{lo:.2}")), Span::raw(format!("{hi:.2}"))]),
        );
    frame.render_widget(chart, area);
}

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell) {
    if let Some(StepOutput::LrFind(found)) = cell.result.as_ref().map(|r| &r.output) {
        return lr_find(frame, area, found, cell.stale);
    }
    if cell.kind == crate::recipe::StepType::LrFind {
        frame.render_widget(Paragraph::new("the loss-vs-lr curve appears when the range test ends"), area);
        return;
    }
    if cell.history.is_empty() {
        frame.render_widget(Paragraph::new("charts appear after the first epoch"), area);
        return;
    }
    let [loss_area, acc_area] = Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let series = |f: fn(&crate::train::EpochRecord) -> f64| -> Vec<(f64, f64)> {
        cell.history.iter().map(|r| (r.epoch as f64, f(r))).collect()
    };
    let train_loss = series(|r| r.train_loss);
    let valid_loss = series(|r| r.valid_loss);
    let train_acc = series(|r| r.train_accuracy);
    let valid_acc = series(|r| r.valid_accuracy);
    let max_epoch = cell.history.len().max(cell.progress.epochs).max(2) as f64;
    let max_loss = train_loss.iter().chain(&valid_loss).map(|p| p.1).fold(0.0f64, f64::max).max(1e-6) * 1.1;
    let loss = Curves { title: " loss ", train: &train_loss, valid: &valid_loss, max_epoch, y: (0.0, max_loss) };
    chart(frame, loss_area, &loss, cell.stale);
    let acc = Curves { title: " accuracy ", train: &train_acc, valid: &valid_acc, max_epoch, y: (0.0, 1.0) };
    chart(frame, acc_area, &acc, cell.stale);
}

/// One chart's train and valid curves over epochs `1..=max_epoch`, on `y`.
struct Curves<'a> {
    title: &'a str,
    train: &'a [(f64, f64)],
    valid: &'a [(f64, f64)],
    max_epoch: f64,
    y: (f64, f64),
}

fn chart(frame: &mut Frame, area: Rect, c: &Curves<'_>, stale: bool) {
    let Curves { title, train, valid, max_epoch, y } = *c;
    let datasets = vec![
        Dataset::default()
            .name("train")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Cyan))
            .data(train),
        Dataset::default()
            .name("valid")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::new().fg(Color::Yellow))
            .data(valid),
    ];
    let chart = Chart::new(datasets)
        .block(Block::bordered().title(title))
        .style(super::output_style(stale))
        .x_axis(
            Axis::default()
                .title("epoch")
                .bounds([1.0, max_epoch])
                .labels(vec![Span::raw("1"), Span::raw(format!("{}", max_epoch as usize))]),
        )
        .y_axis(
            Axis::default()
                .bounds([y.0, y.1])
                .labels(vec![Span::raw(format!("{:.2}", y.0)), Span::raw(format!("{:.2}", y.1))]),
        );
    frame.render_widget(chart, area);
}
