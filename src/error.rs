//! The library's error type. Every variant names the file, key or step it is
//! about, so the CLI can print one clear line (`anyhow` lives only in main.rs).

use std::path::PathBuf;

/// Errors raised by the tlab engine.
///
/// `Debug` prints the same one line as `Display` (as anyhow's errors do): a
/// notebook's `.expect("…")` and a top-level `?` in an evcxr cell show an
/// error through `Debug`, and a user reads a message there, not a dump.
#[derive(thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),

    // Paths as the user reads them (`data/x`, not `recipes/../data/x`).
    #[error("{}: {source}", crate::util::paths::shown(.path).display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A weights file that cannot be read as any supported format.
    #[error("{}: {message}", crate::util::paths::shown(.path).display())]
    Weights { path: PathBuf, message: String },

    /// Remote weights (`hf:…` or a URL) that could not be fetched.
    #[error("{source_name}: {message}")]
    Download { source_name: String, message: String },

    /// A weights file that was read but does not fit the architecture.
    #[error("{source_name}: {message}")]
    Mismatch { source_name: String, message: String },

    #[error("{}: {message}", crate::util::paths::shown(.path).display())]
    Data { path: PathBuf, message: String },

    #[error("unknown backbone `{name}`{hint}; expected one of: {known}")]
    UnknownBackbone { name: String, hint: String, known: String },

    /// A step that failed, with the error that stopped it as its source.
    #[error("step {step} ({kind}): {source}")]
    Step {
        step: usize,
        kind: &'static str,
        #[source]
        source: Box<Error>,
    },

    /// Something asked of the lab before the step it needs has run.
    #[error("{what} needs {needs} first")]
    NotYet { what: &'static str, needs: &'static str },

    /// A step number beyond the recipe's last step.
    #[error("the recipe has {steps} steps; there is no step {step}")]
    NoSuchStep { step: usize, steps: usize },

    /// A step's result asked for before the step has run.
    #[error("step {step} has not run yet")]
    NotRun { step: usize },

    /// An evaluation asked of a step that is not an evaluate step.
    #[error("step {step} is not an evaluate step")]
    NotEvaluate { step: usize },

    /// A block number outside the backbone (`what` says whose: a Grad-CAM
    /// layer, a freeze point).
    #[error("{what} {block}: the backbone has blocks 1 to {blocks}")]
    NoSuchBlock { what: &'static str, block: usize, blocks: usize },

    /// A class index outside the model's classes.
    #[error("class {class}: the model has {classes} classes")]
    NoSuchClass { class: usize, classes: usize },

    /// A fine_tune step with every parameter frozen.
    #[error("nothing to train: every parameter is frozen")]
    NothingToTrain,

    /// A picture that could not be encoded.
    #[error("cannot encode PNG: {source}")]
    Png {
        #[source]
        source: image::ImageError,
    },

    /// A zip archive (a .pth file) that could not be assembled in memory.
    #[error("cannot write {what}: {source}")]
    Zip {
        what: &'static str,
        #[source]
        source: zip::result::ZipError,
    },

    /// Worker threads the system would not start.
    #[error("cannot start {what} threads: {source}")]
    Threads {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A JSON file's contents that could not be produced.
    #[error("cannot write {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("training diverged: {0}")]
    Diverged(String),

    #[error("cancelled")]
    Cancelled,

    /// A run directory's checkpoint written by a different recipe.
    #[error("{}: the recipe changed since the checkpoint in {} was written; resume needs the same recipe", crate::util::paths::shown(.recipe).display(), crate::util::paths::shown(.run_dir).display())]
    StaleCheckpoint { recipe: PathBuf, run_dir: PathBuf },

    /// A checkpoint that names a step which is not a fine_tune step.
    #[error("checkpoint names step {step}, which is not a fine_tune step")]
    CheckpointStep { step: usize },

    /// A checkpoint tensor (weights or optimizer state) missing or of
    /// another shape than the model's.
    #[error("checkpoint tensor `{name}`: expected shape {expected:?}, {}", .found.as_ref().map_or("not in the checkpoint".to_string(), |f| format!("found {f:?}")))]
    CheckpointTensor { name: String, expected: Vec<usize>, found: Option<Vec<usize>> },

    /// `lr = "suggested"` without an lr_find step before it.
    #[error("`lr = \"suggested\"` needs an lr_find step before this fine_tune step")]
    NoLrFind,

    /// The range test's loss diverged before it had a curve.
    #[error("lr_find: the loss diverged after {batches} batch(es); lower start_lr (now {start_lr:e})")]
    LrFindDiverged { batches: usize, start_lr: f64 },

    /// An evaluate step on the test split of data without one.
    #[error("`split = \"test\"` needs a test split: `[data] test = \"folder\"` or CSV rows with split `test`")]
    NoTestSplit,

    /// A recipe key that names a class the data does not have.
    #[error("{key} names class \"{name}\", which the data does not have{hint}")]
    UnknownClass { key: &'static str, name: String, hint: String },

    /// A recipe key that names a block the backbone does not have.
    #[error("{key} = \"{name}\": no such block; {hint}blocks are {first} … {last}")]
    UnknownBlock { key: &'static str, name: String, hint: String, first: String, last: String },

    /// A Grad-CAM map that cannot be computed for this model or image.
    #[error("Grad-CAM: {0}")]
    GradCam(&'static str),

    /// A model that cannot be written in the asked format.
    #[error("cannot export: {0}")]
    Export(String),

    /// An ONNX model tlab cannot interpret.
    #[error("ONNX model: {0}")]
    OnnxModel(String),

    /// A model without the output a prediction needs.
    #[error("{0}")]
    NoOutput(&'static str),

    /// A model card (`model.json`) with a value tlab does not know.
    #[error("model.json: {0}")]
    ModelCard(String),

    /// A feature-cache file that was written but does not read back.
    #[error("feature cache {}: the file did not read back", .0.display())]
    FeatureCacheFile(PathBuf),

    /// Remote weights asked of a build without network access.
    #[error("weights source {0} needs network access, which this build does not have (the `hub` feature is off); download the file and give its path")]
    NoHub(String),

    /// An image size a Vision Transformer cannot cut into whole patches.
    #[error("{arch} cuts images into {patch}×{patch} patches: {height}×{width} is not a square whose side is a multiple of {patch}")]
    PatchSize { arch: &'static str, patch: usize, height: usize, width: usize },

    /// A broken invariant of tlab itself, not of the user's input.
    #[error("internal error: {0}")]
    Internal(&'static str),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn weights(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), message: message.into() }
    }
    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
