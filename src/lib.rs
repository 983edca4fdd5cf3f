//! tlab — a transfer-learning lab for the terminal.
//!
//! Adapt a pretrained CNN to your own folders of images from a recipe file:
//! load a backbone, freeze, augment, fine-tune, evaluate. The same engine
//! ([`lab::Lab`]) drives the headless runner (`tlab run`), the terminal UI
//! and notebooks.
//!
//! Start from the [`prelude`]: `use tlab::prelude::*;` brings in what a
//! notebook or an embedding program needs (a [`Lab`] from a recipe file or a
//! [`RecipeBuilder`](recipe::RecipeBuilder), running steps with progress,
//! their results, the pictures, predicting, saving the run).
//!
//! Where things live, by layer (`docs/architecture.md` draws the graph):
//! - the engine: [`recipe`] (the TOML format and its validation), [`data`]
//!   (folder-per-class and CSV images), [`augment`] (seeded augmentation),
//!   [`models`] (architectures, the head, freezing, the model card),
//!   [`train`] (the fit loop, callbacks, optimisers, schedules, epoch
//!   checkpoints), [`metrics`], [`predict`] and [`explain`] (classifying,
//!   Grad-CAM);
//! - [`formats`]: weights (safetensors, PyTorch checkpoints, the Hub) and ONNX;
//! - [`present`]: results as rows, pictures and HTML, once for every front
//!   end, as functions of results; with feature `notebook` the views also
//!   display in Jupyter's evcxr kernel, as `tlab::notebook`;
//! - [`lab`]: the [`Lab`] every front end drives, its views for notebooks
//!   and the step-by-step notebook API ([`lab::cells`]);
//! - [`run`]: the run directory — the one recorder every front end uses, the
//!   reports it writes, TensorBoard files, reading runs back;
//! - [`tools`]: `tlab tune`, the data doctor, export, embed, `tlab new`;
//! - the front ends: the `tlab` binary and (hidden from these pages) `tui`.
//!
//! Below them all: [`Error`], `fs` (whole-file writes) and `util` (paths,
//! suggestions, the profiler, drawing), which are plumbing, not API.

/// What notebooks and embedding programs use, in one import.
///
/// ```no_run
/// use tlab::prelude::*;
///
/// let mut lab = Lab::open("recipes/quickstart.toml")?;
/// lab.run_rest(&mut Progress::new())?;
/// println!("accuracy {:.4}", lab.evaluation()?.metrics.accuracy);
/// lab.save_run("runs/mine")?;
/// // A search over the recipe's [tune] keys, scored on an inner split:
/// let tuned = lab.tune(&TuneOptions { trials: Some(9), ..Default::default() })?;
/// # Ok::<(), tlab::Error>(())
/// ```
pub mod prelude {
    pub use crate::lab::cells::{Progress, StepStatus};
    // Not `Result`: a glob import of it would shadow std's two-parameter one.
    pub use crate::error::Error;
    pub use crate::lab::{Lab, StepOutput, StepResult};
    pub use crate::metrics::Metrics;
    pub use crate::predict::Predictor;
    pub use crate::present::views::{ClassReport, ConfusionMatrix, HistoryChart, Mistakes, Samples};
    pub use crate::recipe::{Recipe, RecipeBuilder, StepType};
    pub use crate::run::dir::RunDir;
    pub use crate::tools::tune::Options as TuneOptions;
    pub use crate::train::{Evaluation, Event, Observer, Silent};
}

// The engine: a recipe's steps on candle, from the data to the evaluation.
pub mod augment;
pub mod data;
pub mod explain;
#[doc(hidden)]
pub mod kernels;
pub mod lab;
pub mod metrics;
pub mod models;
pub mod predict;
pub mod recipe;
pub mod train;

// Below the engine: errors, whole-file writes, small shared helpers.
mod error;
#[doc(hidden)]
pub mod fs;
#[doc(hidden)]
pub mod util;

// Files tlab reads and writes for other programs.
pub mod formats;
// Results as rows, pictures and HTML, and the notebook API over a Lab.
pub mod present;
// The run directory: recording, reading back, comparing.
pub mod run;
// Commands built on the engine: tune, the data doctor, export, embed, new, check, bench.
pub mod tools;
// The terminal UI, one of the front ends (the CLI is the binary's).
#[cfg(feature = "tui")]
#[doc(hidden)]
pub mod tui;

/// The views under the name notebooks have always used.
#[cfg(feature = "notebook")]
pub use present::views as notebook;

pub use error::{Error, Result};
pub use lab::Lab;
