//! Recipes: the TOML files that describe a transfer-learning run.
//!
//! A recipe names the run, points at the data and lists `[[step]]`s
//! (backbone → freeze → augment → fine_tune → evaluate). This module turns
//! the file into a fully validated [`Recipe`] with every default filled in,
//! so the rest of the program never re-checks a setting. Every mistake is
//! reported as `FILE:LINE:COL: message` pointing at the offending key or value,
//! because a recipe is hand-edited and often hot-reloaded: the user should be
//! able to jump straight to the problem.
//!
//! ```toml
//! name = "quickstart"
//! seed = 42
//! [data]
//! train = "../data/train"
//! [[step]]
//! kind = "backbone"
//! arch = "mobilenet_v2"
//! [[step]]
//! kind = "fine_tune"
//! epochs = 8
//! ```

mod build;
mod builder;
mod error;
mod schema;
mod summary;
mod toml_reader;

use std::path::{Path, PathBuf};

pub use builder::{
    AugmentBuilder, BackboneBuilder, DataBuilder, EvaluateBuilder, FineTuneBuilder, RecipeBuilder, Setting,
};
pub(crate) use error::line_col;
pub use error::RecipeError;
pub(crate) use schema::{data::KEYS as DATA_KEYS, has as has_key, step_keys};
pub use summary::augment_settings;

/// Architectures a backbone step may name. Checked at parse time so a typo is
/// caught with a suggestion before any weights are downloaded or loaded.
pub const KNOWN_ARCHS: &[&str] = &[
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "inception_v3",
    "convnext_tiny",
    "convnext_small",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "vgg16",
    "vgg19",
    "vit_b_16",
    "deit_small_patch16_224",
    "vit_small_patch14_dinov2",
];

/// The Vision Transformers among [`KNOWN_ARCHS`] and their patch sides: an
/// image size must be a multiple of it, which the recipe checks before
/// anything loads.
const PATCH_SIDES: &[(&str, u32)] =
    &[("vit_b_16", 16), ("deit_small_patch16_224", 16), ("vit_small_patch14_dinov2", 14)];

/// The patch side of a Vision Transformer `arch` (`None` for a CNN).
pub(crate) fn patch_size(arch: &str) -> Option<u32> {
    PATCH_SIDES.iter().find(|(a, _)| *a == arch).map(|(_, p)| *p)
}

/// Whether `arch` has residual branches that stochastic depth drops (its
/// reference trains with it): EfficientNet B/V2, ConvNeXt, the ViTs.
pub(crate) fn has_drop_path(arch: &str) -> bool {
    ["efficientnet_b", "efficientnet_v2", "convnext"].iter().any(|f| arch.starts_with(f)) || patch_size(arch).is_some()
}

/// The valid values of a step's `kind`, in the order they usually appear.
pub const STEP_KINDS: &[&str] = &["backbone", "freeze", "augment", "lr_find", "fine_tune", "evaluate"];

/// Reads and parses the recipe at `path`; the first problem if it has any.
pub fn load(path: impl AsRef<Path>) -> Result<Recipe, RecipeError> {
    load_all(path.as_ref()).map_err(first)
}

/// Reads and parses the recipe at `path`, or every problem found in it
/// (what `tlab check` lists).
pub(crate) fn load_all(path: &Path) -> Result<Recipe, Vec<RecipeError>> {
    let text =
        std::fs::read_to_string(path).map_err(|source| vec![RecipeError::Io { path: path.to_path_buf(), source }])?;
    parse_all(&text, path)
}

/// Parses recipe `text`. `path` is used in error messages and as the anchor
/// for relative paths inside the recipe (resolved against its folder, like
/// Cargo does for `Cargo.toml`), so a recipe works from any current directory.
pub fn parse(text: &str, path: &Path) -> Result<Recipe, RecipeError> {
    parse_all(text, path).map_err(first)
}

/// [`parse`], reporting every problem. Within a table unknown keys come
/// first (a misspelt key is the likeliest cause of a later "missing key").
pub(crate) fn parse_all(text: &str, path: &Path) -> Result<Recipe, Vec<RecipeError>> {
    build::build(text, path)
}

/// What a `weights` value names, with a relative path anchored at `base`
/// (the recipe's folder). No validation: [`parse`] does that.
pub(crate) fn weights_source(value: &str, base: &Path) -> WeightsSource {
    if let Some(rest) = value.strip_prefix("hf:") {
        let (repo, file) = match rest.split_once(':') {
            Some((repo, file)) => (repo, Some(file.to_string())),
            None => (rest, None),
        };
        WeightsSource::Hub { repo: repo.to_string(), file }
    } else if value.starts_with("https://") || value.starts_with("http://") {
        WeightsSource::Url(value.to_string())
    } else {
        WeightsSource::Path(base.join(value))
    }
}

/// The first of a non-empty list of problems.
fn first(errors: Vec<RecipeError>) -> RecipeError {
    errors.into_iter().next().unwrap_or_else(|| RecipeError::Invalid {
        path: PathBuf::new(),
        line: 1,
        col: 1,
        message: "invalid recipe".into(),
    })
}

/// A fully validated recipe with all defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The file it came from.
    pub path: PathBuf,
    /// Run name; only `[A-Za-z0-9_.-]` because it becomes a folder name.
    pub name: String,
    /// Seed for every random choice (splits, init, augmentation, shuffling).
    pub seed: u64,
    pub data: DataConfig,
    pub steps: Vec<Step>,
}

impl Recipe {
    /// The files and folders on disk a run of this recipe reads, besides the
    /// recipe itself: the data folders and local weights files. The TUI
    /// watches them so a change on disk marks the steps that read them stale.
    pub fn inputs(&self) -> Vec<Input> {
        let mut out = vec![Input::Data(self.data.train.clone())];
        out.extend(self.data.valid.iter().cloned().map(Input::Data));
        for step in &self.steps {
            if let StepKind::Backbone(BackboneStep { weights: Some(WeightsSource::Path(p)), .. }) = &step.kind {
                if !out.iter().any(|i| matches!(i, Input::Weights(q) if q == p)) {
                    out.push(Input::Weights(p.clone()));
                }
            }
        }
        out
    }

    /// The first step whose result depends on `input`: for data, the first
    /// step that reads images (backbone, fine_tune, evaluate); for a weights
    /// file, the first backbone step that loads it. `None` if no step does.
    pub(crate) fn first_step_using(&self, input: &Input) -> Option<usize> {
        self.steps.iter().position(|s| match (input, &s.kind) {
            (
                Input::Data(_),
                StepKind::Backbone(_) | StepKind::LrFind(_) | StepKind::FineTune(_) | StepKind::Evaluate(_),
            ) => true,
            (Input::Weights(p), StepKind::Backbone(b)) => b.weights == Some(WeightsSource::Path(p.clone())),
            _ => false,
        })
    }

    /// The index of the first step whose result may differ between `self` and
    /// `other`, for hot reload: everything before it can be reused.
    ///
    /// A change to the name, seed or data invalidates everything (`Some(0)`).
    /// Otherwise steps are compared by fingerprint in order; a step added or
    /// removed at the end counts as a change at that index. `None` means the
    /// recipes are equivalent (formatting, comments and key order are ignored).
    pub(crate) fn step_index_of_first_change(&self, other: &Recipe) -> Option<usize> {
        if self.name != other.name || self.seed != other.seed || self.data != other.data {
            return Some(0);
        }
        let common = self.steps.len().min(other.steps.len());
        (0..common)
            .find(|&i| self.steps[i].fingerprint != other.steps[i].fingerprint)
            .or_else(|| (self.steps.len() != other.steps.len()).then_some(common))
    }
}

/// Something on disk that a recipe reads (see [`Recipe::inputs`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A data folder (train or valid), read recursively.
    Data(PathBuf),
    /// A local weights file.
    Weights(PathBuf),
}

impl Input {
    pub fn path(&self) -> &Path {
        match self {
            Input::Data(p) | Input::Weights(p) => p,
        }
    }
}

/// Where the images come from and how they are batched.
#[derive(Debug, Clone, PartialEq)]
pub struct DataConfig {
    /// Folder of class sub-folders; resolved against the recipe's folder.
    /// With `csv` and no `train` key: the CSV's folder (where its images are).
    pub train: PathBuf,
    /// `path,label[,split]` rows (Keras `flow_from_dataframe`, fastai
    /// `ImageDataLoaders.from_csv`), paths relative to the CSV's folder.
    pub csv: Option<PathBuf>,
    /// A held-out test folder (class sub-folders), evaluated by
    /// `evaluate` with `split = "test"`; with `csv`, rows whose split is `test`.
    pub test: Option<PathBuf>,
    /// Optional separate validation folder; resolved likewise.
    pub valid: Option<PathBuf>,
    /// Fraction of `train` held out when `valid` is `None`; in (0, 1).
    pub valid_split: f64,
    /// Side of the square network input, 16..=1024.
    pub image_size: u32,
    /// 1..=4096.
    pub batch_size: usize,
    /// Optional cap of images per class (>= 1), for quick experiments.
    pub max_per_class: Option<usize>,
    /// Optional number of decode threads (>= 1).
    pub workers: Option<usize>,
    /// Whether decoded images are kept in memory or streamed from disk.
    pub cache: ImageCache,
}

/// Where decoded images live (`[data] cache`; see `data::pixels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageCache {
    /// In memory while the decoded set fits the memory budget, else streamed.
    Auto,
    /// Always in memory: a set over the budget is an error.
    Memory,
    /// Streamed from one file per split of images decoded once (kept for
    /// later runs), instead of decoding them every epoch.
    Disk,
    /// Always streamed, decoding every image each time a batch needs it.
    None,
}

impl ImageCache {
    /// The values in the schema's order.
    pub(crate) const ALL: [ImageCache; 4] = [ImageCache::Auto, ImageCache::Memory, ImageCache::Disk, ImageCache::None];
}

impl DataConfig {
    /// The `[data]` defaults, in one place for the reader and `tlab check`.
    pub const VALID_SPLIT: f64 = schema::data::VALID_SPLIT.spec.default;
    pub const IMAGE_SIZE: u32 = schema::data::IMAGE_SIZE.spec.default as u32;
    pub const BATCH_SIZE: usize = schema::data::BATCH_SIZE.spec.default as usize;

    /// Images from `train` with every other key at its default.
    pub fn defaults(train: PathBuf) -> Self {
        DataConfig {
            train,
            csv: None,
            test: None,
            valid: None,
            valid_split: Self::VALID_SPLIT,
            image_size: Self::IMAGE_SIZE,
            batch_size: Self::BATCH_SIZE,
            max_per_class: None,
            workers: None,
            cache: schema::data::CACHE.default_of(ImageCache::ALL),
        }
    }
}

/// One `[[step]]` of the recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    /// 1-based line of the step's header, for messages.
    pub line: usize,
    /// FNV-1a 64 of the step's effective settings (see [`StepKind`]'s
    /// `Debug`), so formatting-only edits keep it and any real change alters it.
    pub fingerprint: u64,
}

/// What a step does, with all its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Backbone(BackboneStep),
    Freeze(FreezeStep),
    Augment(AugmentConfig),
    LrFind(LrFindConfig),
    FineTune(FineTuneConfig),
    Evaluate(EvaluateConfig),
}

/// Which kind of step, without its settings: what results, front ends and
/// the TUI's cells carry and match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepType {
    Backbone,
    Freeze,
    Augment,
    LrFind,
    FineTune,
    Evaluate,
}

impl StepType {
    /// The `kind` string that selects this step in a recipe.
    pub fn name(self) -> &'static str {
        match self {
            StepType::Backbone => "backbone",
            StepType::Freeze => "freeze",
            StepType::Augment => "augment",
            StepType::LrFind => "lr_find",
            StepType::FineTune => "fine_tune",
            StepType::Evaluate => "evaluate",
        }
    }
}

impl std::fmt::Display for StepType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl StepKind {
    /// Which kind of step this is.
    pub(crate) fn step_type(&self) -> StepType {
        match self {
            StepKind::Backbone(_) => StepType::Backbone,
            StepKind::Freeze(_) => StepType::Freeze,
            StepKind::Augment(_) => StepType::Augment,
            StepKind::LrFind(_) => StepType::LrFind,
            StepKind::FineTune(_) => StepType::FineTune,
            StepKind::Evaluate(_) => StepType::Evaluate,
        }
    }

    /// The `kind` string that selects this step in a recipe.
    pub fn name(&self) -> &'static str {
        self.step_type().name()
    }

    /// A one-line human description, e.g. `adamw lr 1e-3 × 8 epochs, cosine`.
    pub fn summary(&self) -> String {
        summary::summary(self)
    }
}

/// Load a pretrained network and put a new classification head on it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneStep {
    /// One of [`KNOWN_ARCHS`].
    pub arch: String,
    /// `None` means random initialisation.
    pub weights: Option<WeightsSource>,
    /// Whether every weight tensor must be present and match (default true).
    pub strict: bool,
    /// Stochastic depth while training: the deepest residual branch's drop
    /// rate (default 0, as timm's `drop_path_rate` when fine-tuning).
    pub drop_path: f64,
    pub head: HeadConfig,
}

/// Where backbone weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    /// A local file, resolved against the recipe's folder.
    Path(PathBuf),
    /// `hf:ORG/REPO` or `hf:ORG/REPO:FILE`.
    Hub { repo: String, file: Option<String> },
    /// An `http://` or `https://` URL.
    Url(String),
}

/// The new classifier head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    pub pooling: Pooling,
    /// Sizes of hidden layers between the features and the output layer.
    pub hidden: Vec<usize>,
    /// Dropout before each head layer, in [0, 1).
    pub dropout: f64,
    /// BatchNorm1d on the input of every linear layer (fastai's head).
    pub batchnorm: bool,
}

/// How backbone feature maps are reduced to a vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pooling {
    Avg,
    Flatten,
    /// fastai's `AdaptiveConcatPool2d`: global max ⊕ global average (twice the channels).
    Concat,
}

/// Freeze part of the backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct FreezeStep {
    pub up_to: FreezePoint,
    /// Keep batch-norm layers trainable inside the frozen part.
    pub train_bn: bool,
}

/// How much of the backbone to freeze.
#[derive(Debug, Clone, PartialEq)]
pub enum FreezePoint {
    /// The whole backbone (the head stays trainable).
    All,
    /// Nothing: unfreeze everything.
    None,
    /// Every block up to and including the named one, e.g. `features.14`.
    Block(String),
    /// The first N blocks, like Keras `layers[:N]`.
    Index(usize),
}

/// Training-time augmentation, named after Keras' `ImageDataGenerator`
/// (plus two torchvision favourites). The default is no augmentation.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentConfig {
    /// Degrees, 0..=360.
    pub rotation_range: f64,
    /// Fraction of width, 0..=1.
    pub width_shift_range: f64,
    /// Fraction of height, 0..=1.
    pub height_shift_range: f64,
    /// Degrees, 0..=90.
    pub shear_range: f64,
    /// Scale factor range; `(1, 1)` means no zoom.
    pub zoom_range: (f64, f64),
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    /// One of the 8 flips and quarter turns, uniformly (fastai's `Dihedral`):
    /// for images whose orientation carries no meaning.
    pub dihedral: bool,
    /// TrivialAugmentWide: one op of torchvision's list at a random magnitude per image.
    pub trivial_augment: bool,
    /// RandAugment: `(num_ops, magnitude)`, torchvision's ops and ranges, magnitude of 31 bins.
    pub rand_augment: Option<(usize, usize)>,
    /// AutoAugment with its ImageNet policy (`auto_augment = "imagenet"`).
    pub auto_augment: bool,
    /// torchvision `RandomErasing`, applied last.
    pub random_erasing: Option<Erasing>,
    pub fill_mode: FillMode,
    /// Fill value for `FillMode::Constant`, 0..=255.
    pub cval: f64,
    pub brightness_range: Option<(f64, f64)>,
    pub random_resized_crop: Option<CropConfig>,
    pub color_jitter: Option<ColorJitter>,
}

impl Default for AugmentConfig {
    /// No augmentation: what an augment step without keys means. Written by
    /// hand because a derived default would zoom by 0, not 1.
    fn default() -> Self {
        use schema::augment as a;
        Self {
            rotation_range: a::ROTATION_RANGE.spec.default,
            width_shift_range: a::WIDTH_SHIFT_RANGE.spec.default,
            height_shift_range: a::HEIGHT_SHIFT_RANGE.spec.default,
            shear_range: a::SHEAR_RANGE.spec.default,
            zoom_range: (1.0, 1.0),
            horizontal_flip: a::HORIZONTAL_FLIP.spec.default,
            vertical_flip: a::VERTICAL_FLIP.spec.default,
            dihedral: a::DIHEDRAL.spec.default,
            trivial_augment: a::TRIVIAL_AUGMENT.spec.default,
            rand_augment: None,
            auto_augment: a::AUTO_AUGMENT.default_of([true, false]),
            random_erasing: None,
            fill_mode: a::FILL_MODE.default_of([
                FillMode::Nearest,
                FillMode::Reflect,
                FillMode::Wrap,
                FillMode::Constant,
            ]),
            cval: a::CVAL.spec.default,
            brightness_range: None,
            random_resized_crop: None,
            color_jitter: None,
        }
    }
}

/// How pixels outside the source image are filled after a transform.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FillMode {
    #[default]
    Nearest,
    Reflect,
    Wrap,
    Constant,
}

/// torchvision `RandomErasing` (Zhong et al. 2020) parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasing {
    /// Probability that an image gets a rectangle erased.
    pub p: f64,
    /// Fraction of the image area, 0 < lo <= hi < 1.
    pub scale: (f64, f64),
    /// Aspect ratio range, 0 < lo <= hi.
    pub ratio: (f64, f64),
    /// Fill level 0–255, or `None` for random noise per pixel (timm's `pixel` mode).
    pub value: Option<f64>,
}

impl Default for Erasing {
    /// torchvision's defaults, with noise rather than black.
    fn default() -> Self {
        use schema::erasing as e;
        Self { p: e::P.spec.default, scale: e::SCALE.spec.default, ratio: e::RATIO.spec.default, value: None }
    }
}

/// torchvision `RandomResizedCrop` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CropConfig {
    /// Fraction of the image area, 0 < lo <= hi <= 1.
    pub scale: (f64, f64),
    /// Aspect ratio range, 0 < lo <= hi.
    pub ratio: (f64, f64),
}

impl Default for CropConfig {
    /// torchvision's defaults.
    fn default() -> Self {
        Self { scale: schema::crop::SCALE.spec.default, ratio: schema::crop::RATIO.spec.default }
    }
}

/// torchvision `ColorJitter` strengths (0 = off).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    /// In [0, 0.5].
    pub hue: f64,
}

/// Train the unfrozen parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneConfig {
    pub epochs: usize,
    pub optimizer: OptimizerParams,
    pub lr: Lr,
    /// Overrides `data.batch_size` for this step.
    pub batch_size: Option<usize>,
    /// Trains and validates this step at this size, at most `data.image_size`
    /// (fastai's progressive resizing: small first, then full size).
    pub image_size: Option<u32>,
    pub label_smoothing: f64,
    pub schedule: ScheduleParams,
    pub early_stopping: Option<EarlyStopping>,
    /// Stop after the epoch in which this many seconds have passed.
    pub time_limit_secs: Option<f64>,
    /// With augmentation and a frozen prefix: precompute this many augmented
    /// views of every training image through the frozen blocks and cycle
    /// through them (epoch `e` uses view `e mod K`); 0 augments live; `None`
    /// (`"auto"`, the default) one view per epoch where they fit in memory
    /// (see `train::fit`).
    pub augment_views: Option<usize>,
    /// timm's layer-wise decay: block group `g` of `G` trains at
    /// `lr · layer_decay^(G-1-g)` (the head at `lr`).
    pub layer_decay: Option<f64>,
    /// Rescale the gradients when their global L2 norm exceeds this.
    pub clip_grad_norm: Option<f64>,
    /// Exponential moving average of the weights (timm `--model-ema`): the
    /// averaged weights are validated and kept at the end.
    pub ema: Option<f64>,
    /// Mixup / CutMix on the training batches.
    pub mix: Option<MixConfig>,
    /// fastai's `fine_tune(freeze_epochs=N)`: first N epochs with the whole
    /// backbone frozen, then unfreeze to `unfreeze_to` and train `epochs`
    /// more at `lr / 2` spread down to `lr / 200`.
    pub freeze_epochs: usize,
    pub unfreeze_to: FreezePoint,
    /// Per-class loss weights.
    pub class_weights: ClassWeights,
    pub sampler: Sampler,
}

/// A fine_tune step's learning rate (`lr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lr {
    /// One rate (`lr = 1e-3`).
    Fixed(f64),
    /// Discriminative rates (`lr = [low, high]`, fastai's `slice`): the head
    /// at `high`, the earliest trainable block at `low`, geometric between.
    Range { low: f64, high: f64 },
    /// A suggestion of the latest `lr_find` step (`lr = "suggested"`),
    /// resolved to a `Fixed` rate when the step runs.
    Suggested(LrSuggestion),
}

impl Lr {
    /// The head's (highest) rate; `None` until a suggestion is resolved.
    pub fn peak(self) -> Option<f64> {
        match self {
            Lr::Fixed(lr) | Lr::Range { high: lr, .. } => Some(lr),
            Lr::Suggested(_) => None,
        }
    }
}

/// The optimizer and its settings, with PyTorch's update rules and
/// defaults: what the optimizer is built from (as candle's `ParamsAdamW`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerParams {
    pub kind: Optimizer,
    /// SGD's momentum.
    pub momentum: f64,
    /// Nesterov momentum (SGD only).
    pub nesterov: bool,
    /// L2 for SGD and Adam, decoupled for AdamW.
    pub weight_decay: f64,
    /// Adam's moment decays.
    pub beta1: f64,
    pub beta2: f64,
    /// No weight decay on biases and normalisation weights (1-D parameters).
    pub no_decay_bn_bias: bool,
}

impl OptimizerParams {
    /// The defaults of `kind`: AdamW decays weights by 0.01 and not 1-D
    /// parameters (timm's), the others not at all; the rest are the schema's.
    pub fn defaults(kind: Optimizer) -> Self {
        use schema::fine_tune as ft;
        let adamw = kind == Optimizer::AdamW;
        OptimizerParams {
            kind,
            momentum: ft::MOMENTUM.spec.default,
            nesterov: ft::NESTEROV.spec.default,
            weight_decay: if adamw { 0.01 } else { ft::WEIGHT_DECAY.spec.default },
            beta1: ft::BETA1.spec.default,
            beta2: ft::BETA2.spec.default,
            no_decay_bn_bias: adamw,
        }
    }

    /// The optimizer a step without `optimizer` trains with.
    fn default_kind() -> Optimizer {
        schema::fine_tune::OPTIMIZER.default_of([Optimizer::Sgd, Optimizer::Adam, Optimizer::AdamW])
    }
}

impl Default for OptimizerParams {
    fn default() -> Self {
        OptimizerParams::defaults(OptimizerParams::default_kind())
    }
}

/// The learning-rate schedule of a fine_tune step and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleParams {
    pub kind: Schedule,
    /// Linear warm-up, per batch, over this many epochs.
    pub warmup_epochs: usize,
    /// Epochs between decays for `Schedule::Step`.
    pub step_size: usize,
    /// Decay factor for `Schedule::Step`.
    pub gamma: f64,
    /// Floor for `Schedule::Cosine`.
    pub min_lr: f64,
    /// One-cycle settings (used when `kind` is `Schedule::OneCycle`).
    pub one_cycle: OneCycle,
    /// SGDR: the first cycle's length in epochs and each next one's factor
    /// (used when `kind` is `Schedule::CosineRestarts`).
    pub restart_epochs: usize,
    pub restart_mult: usize,
}

impl ScheduleParams {
    /// The defaults for a step of `epochs` epochs: constant; a step decay
    /// every third of them; one restart cycle as long as the step.
    pub fn defaults(epochs: usize) -> Self {
        use schema::fine_tune as ft;
        let kinds =
            [Schedule::Constant, Schedule::Step, Schedule::Cosine, Schedule::OneCycle, Schedule::CosineRestarts];
        ScheduleParams {
            kind: ft::SCHEDULE.default_of(kinds),
            warmup_epochs: ft::WARMUP_EPOCHS.spec.default as usize,
            step_size: (epochs / 3).max(1),
            gamma: ft::GAMMA.spec.default,
            min_lr: ft::MIN_LR.spec.default,
            one_cycle: OneCycle::default(),
            restart_epochs: epochs.max(1),
            restart_mult: ft::RESTART_MULT.spec.default as usize,
        }
    }
}

/// The split an evaluate step reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalSplit {
    #[default]
    Valid,
    Test,
}

/// The learning-rate range test (fastai `lr_find`).
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindConfig {
    pub start_lr: f64,
    pub end_lr: f64,
    /// Batches to ramp over (at most; the test stops when the loss diverges).
    pub num_it: usize,
    /// Stop when the smoothed loss exceeds 4× its minimum.
    pub stop_div: bool,
    /// The optimizer the test trains with (`optimizer`, `weight_decay`, …).
    pub train: FineTuneConfig,
}

/// Which of `lr_find`'s suggestions a fine_tune step takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSuggestion {
    /// fastai's default: two thirds down the longest descending stretch.
    Valley,
    /// The steepest descent of the loss.
    Steep,
    /// One tenth of the rate at the loss minimum.
    Minimum,
}

impl LrSuggestion {
    pub const ALL: [(&'static str, LrSuggestion); 4] = [
        ("suggested", LrSuggestion::Valley),
        ("valley", LrSuggestion::Valley),
        ("steep", LrSuggestion::Steep),
        ("minimum", LrSuggestion::Minimum),
    ];
    pub fn name(self) -> &'static str {
        match self {
            LrSuggestion::Valley => "valley",
            LrSuggestion::Steep => "steep",
            LrSuggestion::Minimum => "minimum",
        }
    }
}

/// PyTorch `OneCycleLR` (cosine annealing, two phases).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    /// Fraction of the steps spent rising to the peak.
    pub pct_start: f64,
    /// The start rate is `lr / div_factor`.
    pub div_factor: f64,
    /// The final rate is the start rate `/ final_div_factor`.
    pub final_div_factor: f64,
    /// Cycle SGD's momentum or Adam's beta1 inversely to the rate.
    pub cycle_momentum: bool,
    pub base_momentum: f64,
    pub max_momentum: f64,
}

impl Default for OneCycle {
    fn default() -> Self {
        use schema::fine_tune as ft;
        OneCycle {
            pct_start: ft::PCT_START.spec.default,
            div_factor: ft::DIV_FACTOR.spec.default,
            final_div_factor: ft::FINAL_DIV_FACTOR.spec.default,
            cycle_momentum: ft::CYCLE_MOMENTUM.spec.default,
            base_momentum: ft::BASE_MOMENTUM.spec.default,
            max_momentum: ft::MAX_MOMENTUM.spec.default,
        }
    }
}

/// Where a batch is mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MixAt {
    /// The images (timm, fastai).
    #[default]
    Input,
    /// The frozen blocks' output (Manifold Mixup, Verma et al. 2019, at the
    /// frozen boundary): the frozen features stay cacheable, so mixing costs
    /// nothing extra; with no frozen blocks it is the input.
    Features,
}

/// timm's mixup/cutmix settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixConfig {
    /// Beta(α, α) for mixup's weight; 0 disables mixup.
    pub mixup_alpha: f64,
    /// Beta(α, α) for CutMix's box area; 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability that a batch is mixed at all.
    pub prob: f64,
    /// With both enabled: probability of CutMix rather than mixup.
    pub switch_prob: f64,
    pub at: MixAt,
}

/// Loss weight per class.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ClassWeights {
    #[default]
    None,
    /// `n / (classes · count_c)`, scikit-learn's "balanced".
    Balanced,
    /// By class name; classes not named weigh 1.
    Given(Vec<(String, f64)>),
}

/// How training batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampler {
    /// Every image once per epoch, shuffled.
    #[default]
    Shuffle,
    /// Images drawn with probability inversely proportional to their class
    /// size (with replacement), so each class is seen equally often.
    Balanced,
}

impl Default for FineTuneConfig {
    /// The settings a `fine_tune` step with no keys gets.
    fn default() -> Self {
        use schema::fine_tune as ft;
        let epochs = ft::EPOCHS.spec.default as usize;
        FineTuneConfig {
            epochs,
            optimizer: OptimizerParams::default(),
            lr: Lr::Fixed(ft::LR.spec.default),
            batch_size: None,
            image_size: None,
            label_smoothing: ft::LABEL_SMOOTHING.spec.default,
            schedule: ScheduleParams::defaults(epochs),
            early_stopping: None,
            time_limit_secs: None,
            augment_views: None,
            layer_decay: None,
            clip_grad_norm: None,
            ema: None,
            mix: None,
            freeze_epochs: ft::FREEZE_EPOCHS.spec.default as usize,
            unfreeze_to: FreezePoint::None,
            class_weights: ClassWeights::None,
            sampler: ft::SAMPLER.default_of([Sampler::Shuffle, Sampler::Balanced]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    Sgd,
    Adam,
    AdamW,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant,
    Step,
    Cosine,
    /// Smith's one-cycle policy, as PyTorch's `OneCycleLR`.
    OneCycle,
    /// Cosine with warm restarts (SGDR), as PyTorch's `CosineAnnealingWarmRestarts`.
    CosineRestarts,
}

/// Stop when the monitored metric has not improved for `patience` epochs.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    pub patience: usize,
    pub monitor: Monitor,
    /// Restore the best epoch's weights when stopping.
    pub restore_best: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Monitor {
    ValidLoss,
    ValidAccuracy,
}

/// Evaluate on the validation set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluateConfig {
    /// `None`: decided later as min(5, number of classes).
    pub top_k: Option<usize>,
    /// How many misclassified images to list.
    pub mistakes: usize,
    /// Which split to evaluate.
    pub split: EvalSplit,
    /// Test-time augmentation: average the prediction over the image and
    /// its horizontal flip (metrics are reported with and without).
    pub tta: bool,
    /// With `tta`: this many more views drawn with the recipe's
    /// augmentation, averaged in with the image and its mirror.
    pub tta_views: usize,
}

/// The fine_tune step's settings for `keys` (one per line) in a minimal
/// recipe: what the optimizer and schedule tests start from.
#[cfg(test)]
pub(crate) fn fine_tune_for_test(keys: &str) -> FineTuneConfig {
    let text = format!(
        "name = \"t\"\n[data]\ntrain = \".\"\n[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n\
         [[step]]\nkind = \"fine_tune\"\n{keys}\n"
    );
    let recipe = parse(&text, Path::new("t.toml")).expect("a valid test recipe");
    recipe
        .steps
        .into_iter()
        .find_map(|s| match s.kind {
            StepKind::FineTune(c) => Some(c),
            _ => None,
        })
        .expect("a fine_tune step")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FineTuneConfig::default()` says what an empty fine_tune step gets:
    /// it must not drift from what the parser gives.
    #[test]
    fn default_fine_tune_equals_an_empty_step() {
        assert_eq!(fine_tune_for_test(""), FineTuneConfig::default());
    }

    #[test]
    fn load_reports_unreadable_files() {
        let path = std::env::temp_dir().join("tlab-recipe-test-does-not-exist/recipe.toml");
        let err = load(&path).expect_err("missing file");
        assert!(matches!(err, RecipeError::Io { .. }));
        assert!(err.to_string().starts_with(&format!("{}: cannot read recipe: ", path.display())));
        assert_eq!(err.line_col(), None);
    }

    #[test]
    fn load_reads_and_resolves_against_the_file() {
        let dir = std::env::temp_dir().join(format!("tlab-recipe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("r.toml");
        let text = "name = \"t\"\n[data]\ntrain = \"imgs\"\n[[step]]\nkind = \"backbone\"\narch = \"resnet34\"\n";
        std::fs::write(&path, text).expect("write recipe");
        let loaded = load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let recipe = loaded.expect("valid recipe");
        assert_eq!(recipe.path, path);
        assert_eq!(recipe.data.train, dir.join("imgs"));
        assert_eq!(recipe.steps[0].kind.name(), "backbone");
    }

    #[test]
    fn errors_render_as_file_line_col() {
        let err = parse("name = \"t\"\nseed = \"x\"\n", Path::new("cfg/r.toml")).expect_err("bad seed");
        assert_eq!(err.to_string(), "cfg/r.toml:2:8: `seed` must be an integer, found string \"x\"");
        assert_eq!(err.line_col(), Some((2, 8)));
    }

    #[test]
    fn step_names_match_kinds() {
        let kinds = [
            StepKind::Evaluate(EvaluateConfig {
                top_k: None,
                mistakes: 25,
                tta: false,
                tta_views: 0,
                split: crate::recipe::EvalSplit::Valid,
            }),
            StepKind::Augment(AugmentConfig::default()),
            StepKind::Freeze(FreezeStep { up_to: FreezePoint::All, train_bn: false }),
        ];
        for kind in kinds {
            assert!(STEP_KINDS.contains(&kind.name()));
        }
    }
}
