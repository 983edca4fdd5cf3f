//! One view per file: each renders a part of [`App`] into a
//! frame area and keeps no state of its own (state lives in the app).

pub mod charts;
pub mod confusion;
pub mod data;
pub mod help;
pub mod images;
pub mod log;
pub mod progress;
pub mod report;
pub mod runs;
pub mod status;
pub mod steps;
pub mod tune;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Tabs, Wrap};
use ratatui::Frame;

use super::app::{App, Tab};
use images::Images;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App, images: &mut Images) {
    let [banner, main, status_area] = Layout::vertical([
        Constraint::Length(
            u16::from(matches!(app.reload, super::app::ReloadState::Error(_))) + u16::from(app.notice.is_some()),
        ),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let mut lines = Vec::new();
    if let super::app::ReloadState::Error(msg) = &app.reload {
        lines.push(Line::from(vec![
            Span::styled(" reload failed ", Style::new().bg(Color::Red).fg(Color::White).add_modifier(Modifier::BOLD)),
            Span::raw(format!(" {msg} — keeping the last good recipe")),
        ]));
    }
    if let Some(notice) = &app.notice {
        lines.push(Line::from(vec![
            Span::styled(" changed ", Style::new().bg(Color::Yellow).fg(Color::Black).add_modifier(Modifier::BOLD)),
            Span::raw(format!(" {notice}")),
        ]));
    }
    frame.render_widget(Paragraph::new(lines), banner);
    let left_width = (main.width / 3).clamp(28, 48);
    let [left, right] = Layout::horizontal([Constraint::Length(left_width), Constraint::Min(10)]).areas(main);
    steps::render(frame, left, app);
    render_output(frame, right, app, images);
    status::render(frame, status_area, app);
    if let Some(view) = &app.runs {
        runs::render(frame, frame.area(), view);
    }
    if let Some(view) = app.tune.as_ref().filter(|v| v.open) {
        tune::render(frame, frame.area(), view);
    }
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
        Tab::Data => data::render(frame, body, cell),
        Tab::Labels => {
            // The probe's state or summary above the doubted images.
            let status = cell.labels.as_deref().unwrap_or("");
            let [line, rest] = Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(body);
            frame.render_widget(Paragraph::new(status).wrap(Wrap { trim: true }), line);
            images.render(frame, rest, app.selected, images::ImageKind::LabelIssues, dim)
        }
        Tab::Progress => progress::render(frame, body, cell),
        Tab::Charts => charts::render(frame, body, cell),
        Tab::Preview => images.render(frame, body, app.selected, images::ImageKind::Preview, dim),
        Tab::Confusion => confusion::render(frame, body, cell, app.normalised),
        Tab::Report => report::render(frame, body, cell, app.sort),
        Tab::Mistakes => {
            let kind = if app.gradcam { images::ImageKind::MistakesGradCam } else { images::ImageKind::Mistakes };
            images.render(frame, body, app.selected, kind, dim)
        }
    }
}

/// Text style for a cell's outputs: dimmed when stale.
pub(crate) fn output_style(stale: bool) -> Style {
    if stale {
        Style::new().add_modifier(Modifier::DIM)
    } else {
        Style::new()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use ratatui_image::picker::Picker;

    use super::*;
    use crate::lab::{StepOutput, StepResult};
    use crate::metrics;
    use crate::recipe::StepType;
    use crate::train::{Evaluation, Event};
    use crate::tui::app::{Action, CommandKind, Effect, Msg};

    const RECIPE: &str = "name = \"t\"\n[data]\ntrain = \"d\"\n[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 2\n[[step]]\nkind = \"evaluate\"\n";

    fn app() -> App {
        let r = crate::recipe::parse(RECIPE, Path::new("/tmp/r.toml")).unwrap();
        App::new(&r, "/tmp/log".into())
    }

    fn render(app: &App, w: u16, h: u16) -> String {
        let mut images = Images::new(Picker::halfblocks(), Arc::new(|_, _| {}));
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app, &mut images)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>() + "\n").collect()
    }

    fn evaluation() -> StepResult {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let probs = [0.9f32, 0.1, 0.2, 0.8, 0.6, 0.4];
        let m = metrics::compute(&probs, &[0, 1, 1], &classes, 2);
        let eval = Evaluation { metrics: m, predictions: vec![], mistakes: vec![] };
        StepResult {
            index: 2,
            kind: StepType::Evaluate,
            summary: "evaluate".into(),
            seconds: 0.5,
            output: StepOutput::Evaluate(std::sync::Arc::new(eval)),
        }
    }

    #[test]
    fn steps_show_status_marks_at_80x24() {
        let mut a = app();
        a.update(Msg::Started(0));
        a.update(Msg::Done(Box::new(StepResult {
            index: 0,
            kind: StepType::Backbone,
            summary: "mobilenet_v2".into(),
            seconds: 1.25,
            output: StepOutput::Augment { config: Default::default() },
        })));
        a.update(Msg::Started(1));
        let screen = render(&a, 80, 24);
        assert!(screen.contains("1. backbone  ✓ 1.2s") || screen.contains("1. backbone  ✓ 1.3s"), "{screen}");
        assert!(screen.contains("2. fine_tune"), "{screen}");
        assert!(screen.contains("watching"), "{screen}");
    }

    #[test]
    fn the_backbone_step_shows_the_data_doctor_report() {
        let mut a = app();
        assert!(render(&a, 100, 24).contains("the data is examined when the backbone step runs"));
        a.update(Msg::Started(0));
        assert!(render(&a, 100, 24).contains("examining the data folders"));
        let lines = vec![
            "data: 20 images, 2 classes".to_string(),
            "LEAKAGE: 1 duplicate set(s) span splits (the same image in train and valid/test):".to_string(),
        ];
        a.update(Msg::DataReport { step: 0, lines });
        let screen = render(&a, 100, 24);
        assert!(screen.contains("Data") && screen.contains("LEAKAGE: 1 duplicate set(s)"), "{screen}");
        a.update(Action::NextTab);
        assert!(!render(&a, 100, 24).contains("LEAKAGE"), "the Log tab is the second");
    }

    #[test]
    fn confusion_and_report_tabs_show_the_numbers() {
        let mut a = app();
        a.update(Msg::Started(2));
        a.update(Msg::Done(Box::new(evaluation())));
        a.selected = 2;
        let screen = render(&a, 100, 24);
        assert!(screen.contains("true \\ pred"), "{screen}");
        assert!(screen.contains("accuracy 0.6667"), "{screen}");
        a.update(Action::ToggleNormalised);
        assert!(render(&a, 100, 24).contains("0.50"), "row-normalised");
        a.update(Action::NextTab);
        let screen = render(&a, 100, 24);
        assert!(screen.contains("macro avg") && screen.contains("weighted avg"), "{screen}");
    }

    #[test]
    fn charts_progress_help_and_error_banner() {
        let mut a = app();
        a.update(Msg::Started(1));
        a.update(Msg::Event(1, Event::EpochStart { epoch: 1, epochs: 2, batches: 4 }));
        a.update(Msg::Event(1, Event::Batch { epoch: 1, batch: 2, batches: 4, loss: 0.7, accuracy: 0.5, lr: 1e-3 }));
        a.selected = 1;
        let screen = render(&a, 100, 30);
        assert!(screen.contains("1 / 2") && screen.contains("2 / 4") && screen.contains("loss 0.7000"), "{screen}");
        a.update(Msg::Event(
            1,
            Event::Epoch(crate::train::EpochRecord {
                epoch: 1,
                train_loss: 0.7,
                train_accuracy: 0.5,
                valid_loss: 0.6,
                valid_accuracy: 0.6,
                lr: 1e-3,
                seconds: 1.0,
            }),
        ));
        a.update(Action::NextTab);
        assert!(render(&a, 100, 30).contains("accuracy"));
        a.update(Action::Help);
        assert!(render(&a, 100, 30).contains("re-run the selected step"));
        a.update(Msg::RecipeRead {
            recipe: Err("/tmp/r.toml:3:1: unknown key".into()),
            took: std::time::Duration::ZERO,
        });
        let screen = render(&a, 100, 30);
        assert!(screen.contains("reload failed") && screen.contains("3:1"), "{screen}");
    }

    #[test]
    fn runs_popup_lists_this_recipes_runs_and_diffs_the_selected_one() {
        let mut a = app();
        let name = a.recipe.name.clone();
        let run = |dir: &str, lr: &str, accuracy: f64| crate::run::history::RunSummary {
            dir: dir.into(),
            name: dir.into(),
            started: Some(1_796_142_154),
            complete: true,
            seconds: Some(60.0),
            recipe_hash: None,
            recipe: Some(format!("name = \"{name}\"\n[[step]]\nkind = \"fine_tune\"\nlr = {lr}\n")),
            metrics: Some(crate::metrics::Metrics { accuracy, ..crate::metrics::compute(&[], &[], &[], 1) }),
            history: vec![],
        };
        let current = format!("name = \"{name}\"\n[[step]]\nkind = \"fine_tune\"\nlr = 3e-4\n");
        let runs = vec![
            run(&format!("{name}-20261201-163040"), "1e-3", 0.8467),
            run(&format!("{name}-20261201-162931"), "3e-4", 0.84),
            run("other-20261201-162931", "3e-4", 0.5),
        ];
        assert_eq!(a.update(Action::Runs), vec![Effect::LoadRuns]);
        a.update(Msg::RunsLoaded { runs, current });
        let screen = render(&a, 120, 30);
        assert!(screen.contains("20261201-163040") && screen.contains("0.8467"), "{screen}");
        assert!(!screen.contains("other-"), "another recipe's run is listed:\n{screen}");
        assert!(screen.contains("step 1 (fine_tune).lr: 1e-3 → 3e-4"), "{screen}");
        a.update(Action::Down);
        assert!(render(&a, 120, 30).contains("same recipe"));
        a.update(Action::Cancel);
        assert!(a.runs.is_none(), "Esc closes the popup");
    }

    #[test]
    fn tune_view_shows_the_leaderboard_live_and_the_best_recipes_diff() {
        use crate::tools::tune::{Progress, Row};
        let mut a = app();
        assert_eq!(a.update(Action::Tune)[0], Effect::Send(CommandKind::Tune));
        assert!(a.pending, "no step runs while the tune does");
        let keys = vec!["step4.lr".to_string(), "step1.dropout".to_string()];
        a.update(Msg::Tune(Progress::Started { keys, dir: "runs/t-tune-1".into() }));
        let row = |trial: usize, rung: usize, score: f64, lr: &str| Row {
            trial,
            rung,
            share: if rung == 0 { "1/3".into() } else { "1".into() },
            score,
            seconds: 2.5,
            values: vec![lr.into(), "0.2".into()],
        };
        for r in [row(0, 0, 0.80, "0.001"), row(1, 0, 0.85, "0.0003"), row(1, 1, 0.875, "0.0003")] {
            a.update(Msg::Tune(Progress::Line(format!("t{:03} rung {}", r.trial + 1, r.rung))));
            a.update(Msg::Tune(Progress::Row(r)));
        }
        let screen = render(&a, 130, 32);
        assert!(screen.contains("2 trial(s), 3 trial-rung(s)") && screen.contains("0.8750"), "{screen}");
        assert!(screen.contains("leading: trial 2") && screen.contains("step4.lr = 0.0003"), "{screen}");
        // Esc hides it (the tune goes on), T shows it again, c cancels it.
        a.update(Action::Cancel);
        assert_eq!(a.update(Action::Help), vec![]);
        a.update(Action::Help);
        assert!(!a.tune.as_ref().unwrap().open);
        a.update(Action::Tune);
        assert!(a.tune.as_ref().unwrap().open);
        assert_eq!(a.update(Action::Cancel), vec![Effect::Send(CommandKind::Cancel)]);
        let best = a.tune.as_ref().unwrap().original.clone() + "# tuned\n";
        a.update(Msg::TuneEnded { outcome: Ok(Some(0.8633)), best: Some(best) });
        a.update(Msg::Idle);
        let screen = render(&a, 130, 32);
        assert!(screen.contains("accuracy 0.8633 on valid") && screen.contains("best.toml against"), "{screen}");
        // best.toml is the recipe as written (no trial beat it): said so.
        assert!(screen.contains("nothing changed: no trial beat the recipe"), "{screen}");
        // Ended: T closes it, and a second T starts a new tune.
        a.update(Action::Tune);
        assert!(!a.tune.as_ref().unwrap().open);
        assert_eq!(a.update(Action::Tune)[0], Effect::Send(CommandKind::Tune));
    }

    #[test]
    fn renders_at_tiny_sizes_without_panicking() {
        let mut a = app();
        a.update(Msg::Done(Box::new(evaluation())));
        for (w, h) in [(20, 5), (80, 24), (40, 10), (200, 60)] {
            for s in 0..3 {
                a.selected = s;
                let _ = render(&a, w, h);
            }
        }
    }
}
