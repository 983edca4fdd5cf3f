//! Report tab: per-class precision, recall, F1, top-k recall and support with macro and
//! weighted rows; `s` cycles the sort column. Underneath: the calibration
//! error (ECE) and the most-confused pairs.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;

use crate::lab::StepOutput;
use crate::metrics::ClassScores;
use crate::tui::app::{Cell, SortBy};

/// The per-class rows in the requested order (metrics descending, classes ascending).
pub fn sorted(rows: &[ClassScores], by: SortBy) -> Vec<ClassScores> {
    let mut v = rows.to_vec();
    match by {
        SortBy::Class => v.sort_by(|a, b| a.class.cmp(&b.class)),
        SortBy::Precision => v.sort_by(|a, b| b.precision.total_cmp(&a.precision)),
        SortBy::Recall => v.sort_by(|a, b| b.recall.total_cmp(&a.recall)),
        SortBy::F1 => v.sort_by(|a, b| b.f1.total_cmp(&a.f1)),
        SortBy::Support => v.sort_by_key(|c| std::cmp::Reverse(c.support)),
    }
    v
}

pub fn render(frame: &mut Frame, area: Rect, cell: &Cell, sort: SortBy) {
    let Some(StepOutput::Evaluate(eval)) = cell.result.as_ref().map(|r| &r.output) else {
        frame.render_widget(Paragraph::new("run the evaluate step to see the classification report"), area);
        return;
    };
    let m = &eval.metrics;
    // Top-k recall of a class, by name (the table may be sorted).
    let top_k = |class: &str| {
        m.classes.iter().position(|c| c == class).and_then(|i| m.per_class_top_k.get(i)).map(|v| format!("{v:.4}"))
    };
    let row = |name: &str, p: f64, r: f64, f: f64, k: Option<String>, s: usize| {
        Row::new(vec![
            name.to_string(),
            format!("{p:.4}"),
            format!("{r:.4}"),
            format!("{f:.4}"),
            k.unwrap_or_default(),
            s.to_string(),
        ])
    };
    let mut rows: Vec<Row> = sorted(&m.per_class, sort)
        .iter()
        .map(|c| row(&c.class, c.precision, c.recall, c.f1, top_k(&c.class), c.support))
        .collect();
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let (ma, wa) = (&m.macro_avg, &m.weighted);
    rows.push(row("macro avg", ma.precision, ma.recall, ma.f1, None, ma.support).style(bold));
    rows.push(row("weighted avg", wa.precision, wa.recall, wa.f1, None, wa.support).style(bold));
    let k_title = format!("top-{}", m.top_k);
    let header = Row::new(vec!["class", "precision", "recall", "f1", k_title.as_str(), "support"]).style(bold);
    let table = Table::new(
        rows,
        [
            Constraint::Min(14),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(header)
    .block(Block::default().title(format!(" sorted by {} (s cycles) ", sort.title())))
    .style(super::output_style(cell.stale));
    // Under the table: calibration and the pairs the model mixes up most.
    let [table_area, notes_area] = Layout::vertical([Constraint::Min(3), Constraint::Length(2)]).areas(area);
    frame.render_widget(table, table_area);
    let confused: Vec<String> =
        m.most_confused.iter().take(4).map(|c| format!("{} → {} {}", c.truth, c.predicted, c.count)).collect();
    let notes = vec![
        Line::from(format!("ECE {:.4} (calibration: 0 = confidence matches accuracy)", m.calibration.ece)),
        Line::from(format!(
            "most confused: {}",
            if confused.is_empty() { "none".into() } else { confused.join(" · ") }
        )),
    ];
    frame.render_widget(Paragraph::new(notes).style(super::output_style(cell.stale)), notes_area);
}
