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
//! Where things live:
//! - [`recipe`]: the TOML recipe format and its validation;
//! - [`data`]: folder-per-class image loading;
//! - [`augment`]: seeded image augmentation (Keras `ImageDataGenerator` parity);
//! - [`models`]: architectures, the new head, freezing;
//! - [`weights`]: safetensors and PyTorch checkpoint reading/writing;
//! - [`train`]: fine-tuning and evaluation loops, optimisers, schedules;
//! - [`metrics`]: accuracy, confusion matrix, per-class report;
//! - [`report`]: the run directory's file formats; [`rundir`]: writing a run
//!   directory (reports, pictures, report.html, the model); [`runs`]: reading
//!   earlier runs back (`tlab runs`, `tlab compare`);
//! - [`recorder`]: the one observer that fills a run directory as a run goes
//!   (`tlab run`, the TUI, `tlab tune`'s trials, `Lab::record_to`);
//! - [`starter`]: `tlab new`, a commented starter recipe surveyed from a data folder;
//! - [`tune`]: `tlab tune` and `Lab::tune`, successive halving over a recipe's keys;
//! - [`cells`]: an owned, step-by-step API over [`lab::Lab`] for notebook cells;
//! - [`preview`]: grids of (augmented) sample images;
//! - [`predict`]: classifying images with a trained or ImageNet model;
//! - [`explain`]: Grad-CAM heat-maps (`tlab explain`, report.html, notebooks);
//! - [`tensorboard`]: TensorBoard event files (`tb/` in a run directory);
//! - [`views`]: results as PNG pictures and HTML (run directories, report.html,
//!   notebooks); with feature `notebook` also rich display in Jupyter's evcxr
//!   kernel, as `tlab::notebook`;
//!
//! Modules the `tlab` binary shares with the library but that are no API
//! (hidden from these pages): `kernels` (the CPU convolution kernels),
//! `bench` (`tlab bench`), `preflight` (`tlab check`), `tui`, `draw`, `paths`.

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
    pub use crate::cells::{Progress, StepStatus};
    // Not `Result`: a glob import of it would shadow std's two-parameter one.
    pub use crate::error::Error;
    pub use crate::lab::{Lab, StepOutput, StepResult};
    pub use crate::metrics::Metrics;
    pub use crate::predict::Predictor;
    pub use crate::recipe::{Recipe, RecipeBuilder};
    pub use crate::rundir::RunDir;
    pub use crate::train::{Evaluation, Event, Observer, Silent};
    pub use crate::tune::Options as TuneOptions;
    pub use crate::views::{ClassReport, ConfusionMatrix, HistoryChart, Mistakes, Samples};
}

pub mod augment;
#[doc(hidden)]
pub mod bench;
pub mod cells;
pub mod checkpoint;
pub mod data;
pub mod doctor;
// Plumbing the binary shares with the library, not an API.
#[doc(hidden)]
pub mod draw;
pub mod embed;
mod error;
pub mod explain;
pub mod export;
pub(crate) mod fs;
#[doc(hidden)]
pub mod kernels;
pub mod lab;
pub mod metrics;
pub mod models;
pub mod onnx;
/// The views under the name notebooks have always used.
#[cfg(feature = "notebook")]
pub use views as notebook;
#[doc(hidden)]
pub mod paths;
pub mod predict;
#[doc(hidden)]
pub mod preflight;
pub mod preview;
pub mod profile;
pub mod recipe;
pub mod recorder;
pub mod report;
pub mod rows;
pub mod rundir;
pub mod runs;
pub mod starter;
pub(crate) mod suggest;
pub mod tensorboard;
pub mod train;
#[cfg(feature = "tui")]
#[doc(hidden)]
pub mod tui;
pub mod tune;
pub mod views;
pub mod weights;

pub use error::{Error, Result};
pub use lab::Lab;
