//! Preview and Mistakes tabs: images in the terminal through ratatui-image
//! (kitty, sixel, iTerm2 or half-blocks, detected at start-up). Resizing and
//! encoding run on a separate thread (`ThreadProtocol`), so a large image
//! never stalls a frame.

use std::collections::HashMap;
use std::sync::Arc;

use image::{DynamicImage, RgbImage};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;
use ratatui_image::picker::Picker;
use ratatui_image::thread::{ResizeRequest, ResizeResponse, ThreadProtocol};

/// Identifies an image: the step and the tab it belongs to.
pub(crate) type ImageKey = (usize, ImageKind);

/// Delivers a finished resize back to the UI loop.
pub(crate) type Deliver = Arc<dyn Fn(ImageKey, ResizeResponse) + Send + Sync>;
use ratatui_image::{Resize, StatefulImage};

pub use crate::tui::worker::ImageKind;

struct Shown {
    protocol: ThreadProtocol,
    captions: Vec<String>,
}

/// The images the UI currently holds, by step and tab.
pub struct Images {
    picker: Picker,
    deliver: Deliver,
    shown: HashMap<ImageKey, Shown>,
}

impl Images {
    pub fn new(picker: Picker, deliver: Deliver) -> Self {
        Images { picker, deliver, shown: HashMap::new() }
    }

    pub(crate) fn protocol_name(&self) -> String {
        format!("{:?}", self.picker.protocol_type()).to_lowercase()
    }

    /// Whether an image is held for `(step, kind)`.
    pub fn has(&self, step: usize, kind: ImageKind) -> bool {
        self.shown.contains_key(&(step, kind))
    }

    /// Shows `image` for `(step, kind)`. Each image gets its own encoder
    /// thread, which ends when the image is replaced (its channel closes).
    pub fn set(&mut self, step: usize, kind: ImageKind, image: RgbImage, captions: Vec<String>) {
        let key = (step, kind);
        let (tx, rx) = std::sync::mpsc::channel::<ResizeRequest>();
        let deliver = self.deliver.clone();
        std::thread::spawn(move || {
            while let Ok(request) = rx.recv() {
                if let Ok(done) = request.resize_encode() {
                    deliver(key, done);
                }
            }
        });
        let proto = self.picker.new_resize_protocol(DynamicImage::ImageRgb8(image));
        self.shown.insert(key, Shown { protocol: ThreadProtocol::new(tx, Some(proto)), captions });
    }

    /// A finished resize from an encoder thread.
    pub fn update(&mut self, key: ImageKey, response: ResizeResponse) {
        if let Some(s) = self.shown.get_mut(&key) {
            s.protocol.update_resized_protocol(response);
        }
    }

    /// Forgets images of steps from `first` on (after a reload re-runs them).
    pub(crate) fn clear_from(&mut self, first: usize) {
        self.shown.retain(|(s, _), _| *s < first);
    }

    pub fn render(&mut self, frame: &mut Frame, area: Rect, step: usize, kind: ImageKind, stale: bool) {
        let Some(shown) = self.shown.get_mut(&(step, kind)) else {
            let msg = match kind {
                ImageKind::Preview => "run the augment step to see augmented samples (p re-samples)",
                ImageKind::Mistakes => "run the evaluate step to see the misclassified images",
                ImageKind::MistakesGradCam => "run the evaluate step to see Grad-CAM of the misclassified images",
                ImageKind::LabelIssues => {
                    "L (on a backbone step that has run) ranks the training images whose label a k-fold probe doubts"
                }
            };
            frame.render_widget(Paragraph::new(msg), area);
            return;
        };
        let caption_w = 30.min(area.width / 3);
        let [img_area, text_area] =
            Layout::horizontal([Constraint::Min(10), Constraint::Length(caption_w)]).areas(area);
        frame.render_stateful_widget(StatefulImage::default().resize(Resize::Fit(None)), img_area, &mut shown.protocol);
        let mut lines: Vec<Line> = Vec::new();
        if stale {
            lines.push(Line::raw("(stale)"));
        }
        lines.extend(shown.captions.iter().enumerate().map(|(i, c)| Line::raw(format!("{:>2} {c}", i + 1))));
        frame.render_widget(
            Paragraph::new(lines).style(super::output_style(stale)).wrap(Wrap { trim: true }),
            text_area,
        );
    }
}
