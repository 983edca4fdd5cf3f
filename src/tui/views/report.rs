//! Report tab: per-class precision, recall, F1, top-k recall and support with macro and
//! weighted rows; `s` cycles the sort column. Underneath: the calibration
//! error (ECE) and the most-confused pairs.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use crate::lab::StepOutput;
use crate::present::rows;
use crate::tui::app::{Cell, SortBy};

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell, sort: SortBy) {
    let Some(StepOutput::Evaluate(eval)) = cell.result.as_ref().map(|r| &r.output) else {
        frame.render_widget(Paragraph::new("run the evaluate step to see the classification report"), area);
        return;
    };
    let m = &eval.metrics;
    let mut table = rows::class_table(m);
    table.sort_by(sort.column());
    let bold = Style::new().add_modifier(Modifier::BOLD);
    // Each cell aligned as its column says (numbers to the right).
    let aligned = |cells: Vec<String>| {
        Row::new(cells.into_iter().zip(&table.columns).map(|(text, (_, align))| {
            let line = Line::from(text);
            ratatui::widgets::Cell::from(match align {
                rows::Align::Left => line,
                rows::Align::Right => line.alignment(Alignment::Right),
            })
        }))
    };
    let body: Vec<Row> = table
        .rows
        .iter()
        .map(|r| {
            let row = aligned(r.cells.clone());
            if r.summary {
                row.style(bold)
            } else {
                row
            }
        })
        .collect();
    let header = aligned(table.columns.iter().map(|(t, _)| t.clone()).collect()).style(bold);
    let table = Table::new(
        body,
        [
            Constraint::Min(14),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(8),
        ],
    )
    .header(header)
    .block(Block::default().title(format!(" sorted by {} (s cycles) ", sort.title())))
    .style(super::output_style(cell.stale));
    // Under the table: calibration and the pairs the model mixes up most.
    let [table_area, notes_area] = Layout::vertical([Constraint::Min(3), Constraint::Length(2)]).areas(area);
    frame.render_widget(table, table_area);
    let notes = vec![
        Line::from(format!("ECE {:.4} (calibration: 0 = confidence matches accuracy)", m.calibration.ece)),
        Line::from(format!("most confused: {}", rows::confused_line(m, 4))),
    ];
    frame.render_widget(Paragraph::new(notes).style(super::output_style(cell.stale)), notes_area);
}
