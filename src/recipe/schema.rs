//! The recipe schema as data: every key of every table, what it holds, its
//! bounds and its default, declared once per table.
//!
//! Everything else about a key comes from its entry here:
//! - the key lists that unknown keys are checked against (and that `[tune]`
//!   may search), as each table's `KEYS`;
//! - the bounds and defaults the readers in `build.rs` apply, through the
//!   typed readers at the end of this file (a key's spec type says whether it
//!   has a default, so an optional key cannot be read as a required one);
//! - the defaults of the config types (`OptimizerParams::defaults`,
//!   `AugmentConfig::default`, …), which read these constants;
//! - the typed setters of the notebook builder (`RecipeBuilder`), generated
//!   by the `table!` macro for every entry that names a Rust type;
//! - the reference: a test holds docs/recipes.md to these tables, key by key
//!   and default by default.
//!
//! What cannot be a table entry stays code in `build.rs`: keys with several
//! forms (`lr = 1e-3 | [lo, hi] | "suggested"`), the rules that relate keys
//! (`warmup_epochs < epochs`) and the rules that relate steps.

use super::toml_reader::{Bounds, Field, Result, Section};

/// One key of a table: its name and what it holds (`S`).
#[derive(Debug)]
pub(crate) struct Key<S> {
    pub(crate) name: &'static str,
    pub(crate) spec: S,
}

/// An integer with a default.
#[derive(Debug)]
pub(crate) struct Int {
    pub(crate) bounds: Bounds<i64>,
    pub(crate) default: i64,
}

/// An integer that may be absent; what absence means is `shown` (as the
/// reference writes it).
#[derive(Debug)]
pub(crate) struct OptInt {
    pub(crate) bounds: Bounds<i64>,
    /// The reference's words for it; only the reference test reads them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) shown: &'static str,
}

/// A number with a default.
#[derive(Debug)]
pub(crate) struct Num {
    pub(crate) bounds: Bounds<f64>,
    pub(crate) default: f64,
}

/// A number that may be absent (see [`OptInt`]).
#[derive(Debug)]
pub(crate) struct OptNum {
    pub(crate) bounds: Bounds<f64>,
    /// The reference's words for it; only the reference test reads them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) shown: &'static str,
}

/// A boolean with a default.
#[derive(Debug)]
pub(crate) struct Flag {
    pub(crate) default: bool,
}

/// A boolean whose default depends on other keys (`shown` says how).
#[derive(Debug)]
pub(crate) struct OptFlag {
    /// The reference's words for it; only the reference test reads them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) shown: &'static str,
}

/// `[lo, hi]`, each within `each`, with a default.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) each: Bounds<f64>,
    pub(crate) default: (f64, f64),
}

/// `[lo, hi]` that may be absent.
#[derive(Debug)]
pub(crate) struct OptPair {
    pub(crate) each: Bounds<f64>,
}

/// One of `N` names; the reader maps them, in order, to `N` values.
#[derive(Debug)]
pub(crate) struct Choice<const N: usize> {
    pub(crate) names: [&'static str; N],
    pub(crate) default: &'static str,
}

impl<const N: usize> Key<Choice<N>> {
    /// `field` as the value `values[i]` of its `i`-th name, or the default's
    /// value when it is absent.
    pub(crate) fn read<T: Copy>(&self, field: Option<Field<'_>>, values: [T; N]) -> Result<T> {
        match field {
            Some(f) => f.choice(&self.spec.names.into_iter().zip(values).collect::<Vec<_>>()),
            None => Ok(self.default_of(values)),
        }
    }

    /// The default's value among `values` (mapped to the names in order).
    pub(crate) fn default_of<T: Copy>(&self, values: [T; N]) -> T {
        // The tables' test checks that every default is one of the names.
        let i = self.spec.names.iter().position(|n| *n == self.spec.default).unwrap_or(0);
        values[i]
    }
}

/// A key with several forms or a table of its own, read by hand in
/// `build.rs`; its default as the reference writes it.
#[derive(Debug)]
pub(crate) struct Custom {
    /// The reference's words for it; only the reference test reads them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) shown: &'static str,
}

/// What every entry says about itself, whatever it holds: what the key
/// lists and the reference test need.
pub(crate) trait Describe: Sync {
    fn name(&self) -> &'static str;
    /// Whether `cell`, the reference's default column for this key, states
    /// this key's default: the same value for a typed default (the first
    /// `code` span of the cell, read as TOML), the same text otherwise.
    #[cfg(test)]
    fn documents_default(&self, cell: &str) -> bool;
    /// Whether the entry agrees with itself (a choice's default is one of
    /// its names).
    #[cfg(test)]
    fn consistent(&self) -> bool {
        true
    }
}

#[cfg(test)]
/// The first `` `code` `` span of a reference cell, read as a TOML value.
fn documented_value(cell: &str) -> Option<toml_edit::Value> {
    let code = cell.split('`').nth(1)?;
    code.parse::<toml_edit::Value>().ok()
}

#[cfg(test)]
fn documents_number(cell: &str, default: f64) -> bool {
    match documented_value(cell) {
        Some(toml_edit::Value::Float(f)) => *f.value() == default,
        Some(toml_edit::Value::Integer(i)) => *i.value() as f64 == default,
        _ => false,
    }
}

macro_rules! describe {
    ($spec:ty, |$s:ident, $cell:ident| $body:expr) => {
        impl Describe for Key<$spec> {
            fn name(&self) -> &'static str {
                self.name
            }
            #[cfg(test)]
            fn documents_default(&self, $cell: &str) -> bool {
                let $s = &self.spec;
                $body
            }
        }
    };
}
describe!(Int, |s, cell| documents_number(cell, s.default as f64));
describe!(OptInt, |s, cell| cell == s.shown);
describe!(Num, |s, cell| documents_number(cell, s.default));
describe!(OptNum, |s, cell| cell == s.shown);
describe!(
    Flag,
    |s, cell| matches!(documented_value(cell), Some(toml_edit::Value::Boolean(b)) if *b.value() == s.default)
);
describe!(OptFlag, |s, cell| cell == s.shown);
describe!(Pair, |s, cell| cell == format!("`[{}, {}]`", s.default.0, s.default.1));
describe!(OptPair, |_s, cell| cell == "none");
describe!(Custom, |s, cell| cell == s.shown);

impl<const N: usize> Describe for Key<Choice<N>> {
    fn name(&self) -> &'static str {
        self.name
    }
    #[cfg(test)]
    fn documents_default(&self, cell: &str) -> bool {
        matches!(documented_value(cell), Some(toml_edit::Value::String(v)) if v.value() == self.spec.default)
    }
    #[cfg(test)]
    fn consistent(&self) -> bool {
        self.spec.names.contains(&self.spec.default)
    }
}

/// Declares one table: a module of key constants, its `KEYS` (plus keys
/// shared with another table), and — with `=> Builder` — a typed builder
/// setter for each entry that names a Rust type after `=>`.
macro_rules! table {
    (
        $(#[$doc:meta])* $table:ident $(=> $builder:ident)? {
            $( $(#[$m:meta])* $konst:ident $key:ident : $spec:ident $({ $($field:ident : $value:expr),* $(,)? })? $(=> $t:ty)? ; )*
        }
        $(shared [$($shared:path),* $(,)?])?
    ) => {
        $(#[$doc])*
        pub(crate) mod $table {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$m])* pub(crate) const $konst: Key<$spec> = Key { name: stringify!($key), spec: $spec $({ $($field: $value),* })? }; )*
            /// Every key of the table, in the reference's order.
            pub(crate) const KEYS: &[&dyn Describe] = &[$(&$konst,)* $($(&$shared,)*)?];
        }
        builder_setters!($($builder)?; $( [$(#[$m])*] $key $(=> $t)? ; )*);
    };
}

macro_rules! builder_setters {
    (; $($rest:tt)*) => {};
    ($builder:ident; $( [$(#[$m:meta])*] $key:ident $(=> $t:ty)? ; )*) => {
        impl super::builder::$builder {
            $( builder_setter!([$(#[$m])*] $key $(=> $t)?); )*
        }
    };
}

macro_rules! builder_setter {
    ([$(#[$m:meta])*] $key:ident => $t:ty) => {
        $(#[$m])*
        pub fn $key(self, v: $t) -> Self {
            Self(self.0.put(stringify!($key), v))
        }
    };
    ([$(#[$m:meta])*] $key:ident) => {};
}

// Spec types with a `[T; N]` name list cannot go through `$spec:ident`
// generically, so the choices get their own aliases.
pub(crate) type Choice2 = Choice<2>;
pub(crate) type Choice3 = Choice<3>;
pub(crate) type Choice4 = Choice<4>;
pub(crate) type Choice5 = Choice<5>;

/// Shorthand for the bounds in the tables below.
type B<T> = Bounds<T>;

table! {
    /// The top level: `name`, `seed` and the three tables.
    top {
        NAME name: Custom { shown: "required" };
        SEED seed: Int { bounds: B::at_least(0), default: 0 };
        DATA data: Custom { shown: "" };
        STEP step: Custom { shown: "" };
        TUNE tune: Custom { shown: "" };
    }
}

table! {
    /// `[data]`.
    data => DataBuilder {
        /// Training folder (relative: against the builder's base dir).
        TRAIN train: Custom { shown: "required (unless `csv`)" } => impl Into<super::builder::Setting>;
        /// `path,label[,split]` CSV (relative: against the builder's base dir).
        CSV csv: Custom { shown: "none" } => impl Into<super::builder::Setting>;
        /// Test folder.
        TEST test: Custom { shown: "none" } => impl Into<super::builder::Setting>;
        /// Validation folder.
        VALID valid: Custom { shown: "none" } => impl Into<super::builder::Setting>;
        /// Without `valid`: the stratified fraction of `train` held out.
        VALID_SPLIT valid_split: Num { bounds: B::open(0.0, 1.0), default: 0.2 } => f64;
        /// The square size images are resized to.
        IMAGE_SIZE image_size: Int { bounds: B::within(16, 1024), default: 224 } => u32;
        BATCH_SIZE batch_size: Int { bounds: B::within(1, 4096), default: 32 } => usize;
        MAX_PER_CLASS max_per_class: OptInt { bounds: B::at_least(1), shown: "none" } => usize;
        /// Decoding threads.
        WORKERS workers: OptInt { bounds: B::at_least(1), shown: "all cores" } => usize;
        /// `"auto"`, `"memory"`, `"disk"` or `"none"`: where decoded images live.
        CACHE cache: Choice4 { names: ["auto", "memory", "disk", "none"], default: "auto" } => &str;
    }
}

table! {
    /// `kind = "backbone"`; the head's keys may also sit in `head = { … }`.
    backbone => BackboneBuilder {
        ARCH arch: Custom { shown: "required" };
        WEIGHTS weights: Custom { shown: "none (random init)" };
        STRICT strict: Flag { default: true } => bool;
        /// Stochastic depth while training.
        DROP_PATH drop_path: Num { bounds: B::closed_open(0.0, 1.0), default: 0.0 } => f64;
        /// `"avg"`, `"concat"` or `"flatten"`.
        POOLING pooling: Choice3 { names: ["avg", "flatten", "concat"], default: "avg" } => &str;
        /// Hidden dense layers before the output layer.
        HIDDEN hidden: Custom { shown: "`[]`" } => Vec<usize>;
        DROPOUT dropout: Num { bounds: B::closed_open(0.0, 1.0), default: 0.2 } => f64;
        HEAD head: Custom { shown: "none" };
        /// fastai's head: BatchNorm1d before every linear layer.
        BATCHNORM batchnorm: Flag { default: false } => bool;
    }
}

/// The keys a backbone step's `head = { … }` table takes.
pub(crate) const HEAD_KEYS: &[&dyn Describe] =
    &[&backbone::POOLING, &backbone::HIDDEN, &backbone::DROPOUT, &backbone::BATCHNORM];

table! {
    /// `kind = "freeze"`.
    freeze {
        UP_TO up_to: Custom { shown: "`\"all\"`" };
        TRAIN_BN train_bn: Flag { default: false };
    }
}

table! {
    /// `kind = "augment"`: Keras' `ImageDataGenerator` keys and torchvision's policies.
    augment => AugmentBuilder {
        ROTATION_RANGE rotation_range: Num { bounds: B::within(0.0, 360.0), default: 0.0 } => f64;
        WIDTH_SHIFT_RANGE width_shift_range: Num { bounds: B::within(0.0, 1.0), default: 0.0 } => f64;
        HEIGHT_SHIFT_RANGE height_shift_range: Num { bounds: B::within(0.0, 1.0), default: 0.0 } => f64;
        SHEAR_RANGE shear_range: Num { bounds: B::within(0.0, 90.0), default: 0.0 } => f64;
        /// `z` → zoom in [1−z, 1+z]; use [`AugmentBuilder::zoom_between`](super::AugmentBuilder::zoom_between) for explicit bounds.
        ZOOM_RANGE zoom_range: Custom { shown: "`1` (none)" } => f64;
        HORIZONTAL_FLIP horizontal_flip: Flag { default: false } => bool;
        VERTICAL_FLIP vertical_flip: Flag { default: false } => bool;
        /// TrivialAugmentWide.
        TRIVIAL_AUGMENT trivial_augment: Flag { default: false } => bool;
        RAND_AUGMENT rand_augment: Custom { shown: "none" };
        /// `"imagenet"`: AutoAugment's ImageNet policy.
        AUTO_AUGMENT auto_augment: Choice2 { names: ["imagenet", "none"], default: "none" } => &str;
        RANDOM_ERASING random_erasing: Custom { shown: "none" };
        /// The 8 flips and quarter turns.
        DIHEDRAL dihedral: Flag { default: false } => bool;
        FILL_MODE fill_mode: Choice4 { names: ["nearest", "reflect", "wrap", "constant"], default: "nearest" } => &str;
        CVAL cval: Num { bounds: B::within(0.0, 255.0), default: 0.0 } => f64;
        BRIGHTNESS_RANGE brightness_range: OptPair { each: B::at_least(0.0) } => (f64, f64);
        /// `true`: torchvision's default scale and ratio.
        RANDOM_RESIZED_CROP random_resized_crop: Custom { shown: "none" } => bool;
        COLOR_JITTER color_jitter: Custom { shown: "none" };
    }
}

table! {
    /// `random_resized_crop = { … }`: torchvision's `RandomResizedCrop`.
    crop {
        SCALE scale: Pair { each: B::open_closed(0.0, 1.0), default: (0.08, 1.0) };
        RATIO ratio: Pair { each: B::above(0.0), default: (3.0 / 4.0, 4.0 / 3.0) };
    }
}

table! {
    /// `random_erasing = { … }`: torchvision's `RandomErasing`, with noise
    /// rather than black by default.
    erasing {
        P p: Num { bounds: B::within(0.0, 1.0), default: 0.5 };
        SCALE scale: Pair { each: B::open(0.0, 1.0), default: (0.02, 0.33) };
        RATIO ratio: Pair { each: B::above(0.0), default: (0.3, 3.3) };
        VALUE value: Custom { shown: "`\"random\"`" };
    }
}

table! {
    /// `color_jitter = { … }`: torchvision's `ColorJitter` strengths.
    jitter {
        BRIGHTNESS brightness: Num { bounds: B::at_least(0.0), default: 0.0 };
        CONTRAST contrast: Num { bounds: B::at_least(0.0), default: 0.0 };
        SATURATION saturation: Num { bounds: B::at_least(0.0), default: 0.0 };
        HUE hue: Num { bounds: B::within(0.0, 0.5), default: 0.0 };
    }
}

table! {
    /// `rand_augment = { … }`: torchvision's `RandAugment` defaults.
    rand_augment {
        NUM_OPS num_ops: Int { bounds: B::within(1, 10), default: 2 };
        MAGNITUDE magnitude: Int { bounds: B::within(0, 30), default: 9 };
    }
}

table! {
    /// `kind = "fine_tune"`.
    fine_tune => FineTuneBuilder {
        EPOCHS epochs: Int { bounds: B::at_least(1).at_most(100_000), default: 5 } => usize;
        OPTIMIZER optimizer: Choice3 { names: ["sgd", "adam", "adamw"], default: "adam" } => &str;
        /// A fixed rate; see `lr_suggested` and `set("lr", …)` for the other forms.
        LR lr: Num { bounds: B::above(0.0).at_most(10.0), default: 1e-3 } => f64;
        MOMENTUM momentum: Num { bounds: B::closed_open(0.0, 1.0), default: 0.9 } => f64;
        NESTEROV nesterov: Flag { default: false } => bool;
        /// AdamW's default is 0.01 (`OptimizerParams::defaults`).
        WEIGHT_DECAY weight_decay: Num { bounds: B::at_least(0.0), default: 0.0 } => f64;
        BETA1 beta1: Num { bounds: B::closed_open(0.0, 1.0), default: 0.9 } => f64;
        BETA2 beta2: Num { bounds: B::closed_open(0.0, 1.0), default: 0.999 } => f64;
        BATCH_SIZE batch_size: OptInt { bounds: B::at_least(1), shown: "`data.batch_size`" } => usize;
        /// Progressive resizing: train and validate this step at this size.
        IMAGE_SIZE image_size: OptInt { bounds: B::within(16, 1024), shown: "`data.image_size`" } => u32;
        LABEL_SMOOTHING label_smoothing: Num { bounds: B::closed_open(0.0, 1.0), default: 0.0 } => f64;
        LAYER_DECAY layer_decay: OptNum { bounds: B::open_closed(0.0, 1.0), shown: "none" } => f64;
        NO_DECAY_BN_BIAS no_decay_bn_bias: OptFlag { shown: "`true` for adamw, else `false`" } => bool;
        SCHEDULE schedule: Choice5 { names: ["constant", "step", "cosine", "one_cycle", "cosine_restarts"], default: "constant" } => &str;
        PCT_START pct_start: Num { bounds: B::open(0.0, 1.0), default: 0.25 } => f64;
        DIV_FACTOR div_factor: Num { bounds: B::at_least(1.0), default: 25.0 } => f64;
        FINAL_DIV_FACTOR final_div_factor: Num { bounds: B::at_least(1.0), default: 1e5 } => f64;
        CYCLE_MOMENTUM cycle_momentum: Flag { default: true } => bool;
        BASE_MOMENTUM base_momentum: Num { bounds: B::closed_open(0.0, 1.0), default: 0.85 } => f64;
        MAX_MOMENTUM max_momentum: Num { bounds: B::closed_open(0.0, 1.0), default: 0.95 } => f64;
        RESTART_EPOCHS restart_epochs: OptInt { bounds: B::at_least(1), shown: "`epochs`" } => usize;
        RESTART_MULT restart_mult: Int { bounds: B::at_least(1).at_most(10), default: 1 } => usize;
        CLIP_GRAD_NORM clip_grad_norm: OptNum { bounds: B::above(0.0), shown: "none" } => f64;
        EMA ema: OptNum { bounds: B::open(0.0, 1.0), shown: "none" } => f64;
        MIXUP mixup: Num { bounds: B::at_least(0.0).at_most(10.0), default: 0.0 } => f64;
        CUTMIX cutmix: Num { bounds: B::at_least(0.0).at_most(10.0), default: 0.0 } => f64;
        MIX_PROB mix_prob: Num { bounds: B::within(0.0, 1.0), default: 1.0 } => f64;
        MIX_SWITCH_PROB mix_switch_prob: Num { bounds: B::within(0.0, 1.0), default: 0.5 } => f64;
        MIX_AT mix_at: Choice2 { names: ["input", "features"], default: "input" } => &str;
        FREEZE_EPOCHS freeze_epochs: Int { bounds: B::at_least(0).at_most(100_000), default: 0 } => usize;
        UNFREEZE_TO unfreeze_to: Custom { shown: "`\"none\"` (everything)" } => &str;
        CLASS_WEIGHTS class_weights: Custom { shown: "none" };
        SAMPLER sampler: Choice2 { names: ["shuffle", "balanced"], default: "shuffle" } => &str;
        WARMUP_EPOCHS warmup_epochs: Int { bounds: B::at_least(0), default: 0 } => usize;
        STEP_SIZE step_size: OptInt { bounds: B::at_least(1), shown: "`epochs/3`" } => usize;
        GAMMA gamma: Num { bounds: B::open_closed(0.0, 1.0), default: 0.1 } => f64;
        MIN_LR min_lr: Num { bounds: B::at_least(0.0), default: 0.0 } => f64;
        PATIENCE patience: OptInt { bounds: B::at_least(1), shown: "none" } => usize;
        MONITOR monitor: Choice2 { names: ["valid_loss", "valid_accuracy"], default: "valid_loss" } => &str;
        RESTORE_BEST restore_best: Flag { default: true } => bool;
        /// Seconds; stop after the epoch that exceeds it.
        TIME_LIMIT time_limit: OptNum { bounds: B::above(0.0), shown: "none" } => f64;
        /// A number of views (0: augment live) or `"auto"`.
        AUGMENT_VIEWS augment_views: OptInt { bounds: B::at_least(0).at_most(64), shown: "`\"auto\"`" } => impl Into<super::builder::Setting>;
    }
}

table! {
    /// `kind = "evaluate"`.
    evaluate => EvaluateBuilder {
        TOP_K top_k: OptInt { bounds: B::at_least(1), shown: "`min(5, classes)`" } => usize;
        MISTAKES mistakes: Int { bounds: B::at_least(0), default: 25 } => usize;
        SPLIT split: Choice2 { names: ["valid", "test"], default: "valid" } => &str;
        /// Average over each image and its mirror (implied by `tta_views`).
        TTA tta: Flag { default: false } => bool;
        TTA_VIEWS tta_views: Int { bounds: B::at_least(0), default: 0 } => usize;
    }
}

table! {
    /// `kind = "lr_find"`; its optimizer keys mean what they mean in fine_tune.
    lr_find => LrFindBuilder {
        START_LR start_lr: Num { bounds: B::above(0.0).at_most(10.0), default: 1e-7 } => f64;
        END_LR end_lr: Num { bounds: B::above(0.0).at_most(100.0), default: 10.0 } => f64;
        NUM_IT num_it: Int { bounds: B::at_least(5).at_most(100_000), default: 100 } => usize;
        STOP_DIV stop_div: Flag { default: true } => bool;
    }
    shared [
        fine_tune::OPTIMIZER,
        fine_tune::WEIGHT_DECAY,
        fine_tune::MOMENTUM,
        fine_tune::BETA1,
        fine_tune::BETA2,
        fine_tune::BATCH_SIZE,
        fine_tune::LABEL_SMOOTHING,
    ]
}

/// The keys a step of `kind` takes besides `kind` (none for an unknown kind).
pub(crate) fn step_keys(kind: &str) -> &'static [&'static dyn Describe] {
    match kind {
        "backbone" => backbone::KEYS,
        "freeze" => freeze::KEYS,
        "augment" => augment::KEYS,
        "lr_find" => lr_find::KEYS,
        "fine_tune" => fine_tune::KEYS,
        "evaluate" => evaluate::KEYS,
        _ => &[],
    }
}

/// The names of `keys`, for messages and suggestions.
pub(crate) fn names(keys: &[&dyn Describe]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name()).collect()
}

/// Whether `keys` has a key called `name`.
pub(crate) fn has(keys: &[&dyn Describe], name: &str) -> bool {
    keys.iter().any(|k| k.name() == name)
}

/// Reading a key through its entry: the bounds and the default come from
/// the table, the type from the entry's spec.
impl<'a> Section<'a> {
    /// An integer key, or its default.
    pub(crate) fn int<T: TryFrom<i64>>(&self, key: &Key<Int>) -> Result<T> {
        match self.field(key.name) {
            Some(f) => f.int_as(key.spec.bounds),
            // Every default fits its key's type (the tables' test reads each).
            None => T::try_from(key.spec.default).or_else(|_| self.require(key.name).and_then(|f| f.int_as(B::any()))),
        }
    }

    /// An optional integer key.
    pub(crate) fn opt_int<T: TryFrom<i64>>(&self, key: &Key<OptInt>) -> Result<Option<T>> {
        self.field(key.name).map(|f| f.int_as(key.spec.bounds)).transpose()
    }

    /// A number key, or its default.
    pub(crate) fn num(&self, key: &Key<Num>) -> Result<f64> {
        Ok(self.field(key.name).map(|f| f.number(key.spec.bounds)).transpose()?.unwrap_or(key.spec.default))
    }

    /// An optional number key.
    pub(crate) fn opt_num(&self, key: &Key<OptNum>) -> Result<Option<f64>> {
        self.field(key.name).map(|f| f.number(key.spec.bounds)).transpose()
    }

    /// A boolean key, or its default.
    pub(crate) fn flag(&self, key: &Key<Flag>) -> Result<bool> {
        Ok(self.bool(key.name)?.unwrap_or(key.spec.default))
    }

    /// A boolean key whose default the caller works out.
    pub(crate) fn opt_flag(&self, key: &Key<OptFlag>) -> Result<Option<bool>> {
        self.bool(key.name)
    }

    /// A `[lo, hi]` key, or its default.
    pub(crate) fn pair_of(&self, key: &Key<Pair>) -> Result<(f64, f64)> {
        Ok(self.pair(key.name, key.spec.each)?.unwrap_or(key.spec.default))
    }

    /// An optional `[lo, hi]` key.
    pub(crate) fn opt_pair(&self, key: &Key<OptPair>) -> Result<Option<(f64, f64)>> {
        self.pair(key.name, key.spec.each)
    }

    /// A choice key as the value `values[i]` of its `i`-th name, or the
    /// default's value.
    pub(crate) fn pick<T: Copy, const N: usize>(&self, key: &Key<Choice<N>>, values: [T; N]) -> Result<T> {
        key.read(self.field(key.name), values)
    }

    /// A present key of any kind, for the keys read by hand.
    pub(crate) fn key<S>(&self, key: &Key<S>) -> Option<Field<'a>> {
        self.field(key.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every table, by the name of its section in docs/recipes.md.
    const SECTIONS: [(&str, &[&dyn Describe]); 8] = [
        ("top", top::KEYS),
        ("data", data::KEYS),
        ("backbone", backbone::KEYS),
        ("freeze", freeze::KEYS),
        ("augment", augment::KEYS),
        ("lr_find", lr_find::KEYS),
        ("fine_tune", fine_tune::KEYS),
        ("evaluate", evaluate::KEYS),
    ];

    /// docs/recipes.md's key tables: per section, each key with its
    /// default cell (a row naming several keys splits its cell at ", " when
    /// it has one part per key, and otherwise gives the cell to each).
    fn reference() -> BTreeMap<String, BTreeMap<String, String>> {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/recipes.md")).unwrap();
        let mut listed: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                section = match heading.trim_matches('`') {
                    "Top level" => "top".to_string(),
                    h if h.starts_with("kind = ") => h.trim_start_matches("kind = ").trim_matches('"').to_string(),
                    h => h.trim_matches(['[', ']']).to_string(),
                };
                listed.entry(section.clone()).or_default();
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(first), Some(default)) = (cells.get(1), cells.get(2)) else { continue };
            if !first.starts_with('`') || default.is_empty() {
                continue; // not a key row, or a continuation such as "`lr` (other forms)"
            }
            let keys: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
            let parts: Vec<&str> = default.split(", ").collect();
            for (i, key) in keys.iter().enumerate() {
                let cell = if parts.len() == keys.len() && keys.len() > 1 { parts[i] } else { default };
                listed.entry(section.clone()).or_default().insert(key.to_string(), cell.to_string());
            }
        }
        listed
    }

    /// docs/recipes.md is the reference users read: every key a section
    /// lists is accepted there, every accepted key is listed, and each
    /// listed default is the table's.
    #[test]
    fn the_reference_lists_exactly_the_tables_keys_and_defaults() {
        let reference = reference();
        assert!(reference.contains_key("tune"), "docs/recipes.md has no [tune] section");
        for (section, keys) in SECTIONS {
            let listed = &reference[section];
            // The tables are sections of their own.
            let expected: Vec<&str> =
                names(keys).into_iter().filter(|k| section != "top" || !["data", "step", "tune"].contains(k)).collect();
            let mut missing: Vec<&str> = expected.iter().copied().filter(|k| !listed.contains_key(*k)).collect();
            missing.sort_unstable();
            assert!(missing.is_empty(), "[{section}] keys missing from docs/recipes.md: {missing:?}");
            let unknown: Vec<&String> = listed.keys().filter(|k| !expected.contains(&k.as_str())).collect();
            assert!(unknown.is_empty(), "[{section}] docs/recipes.md lists keys the schema lacks: {unknown:?}");
            for key in keys.iter().filter(|k| expected.contains(&k.name())) {
                let cell = &listed[key.name()];
                if cell == "as fine_tune" {
                    assert!(has(fine_tune::KEYS, key.name()), "[{section}] `{}` is not a fine_tune key", key.name());
                    continue;
                }
                assert!(key.documents_default(cell), "[{section}] `{}`: docs/recipes.md says {cell}", key.name());
            }
        }
    }

    /// The reference test above would pass a table whose default were not
    /// one of its own names; this one would not.
    #[test]
    fn every_choice_default_is_one_of_its_names() {
        let subtables: [&[&dyn Describe]; 4] = [crop::KEYS, erasing::KEYS, jitter::KEYS, rand_augment::KEYS];
        for keys in SECTIONS.iter().map(|(_, k)| *k).chain(subtables) {
            for key in keys {
                assert!(key.consistent(), "`{}`", key.name());
            }
        }
        let bad = Key { name: "x", spec: Choice2 { names: ["a", "b"], default: "c" } };
        assert!(!bad.consistent());
    }

    /// A typed default is compared by value, so `1e-3` and `0.001` agree and
    /// `1e-4` does not; text defaults compare as text.
    #[test]
    fn defaults_compare_by_value() {
        assert!(fine_tune::LR.documents_default("`1e-3`"));
        assert!(fine_tune::LR.documents_default("`0.001`"));
        assert!(!fine_tune::LR.documents_default("`1e-4`"));
        assert!(fine_tune::EPOCHS.documents_default("`5`"));
        assert!(!fine_tune::EPOCHS.documents_default("five"));
        assert!(fine_tune::SCHEDULE.documents_default("`\"constant\"`"));
        assert!(!fine_tune::SCHEDULE.documents_default("`\"cosine\"`"));
        assert!(fine_tune::PATIENCE.documents_default("none"));
        assert!(!fine_tune::PATIENCE.documents_default("`3`"));
    }

    /// The builder's generated setters write the table's key names.
    #[test]
    fn generated_setters_write_the_tables_keys() {
        let b = super::super::RecipeBuilder::new("t")
            .data(|d| d.train("d").image_size(64))
            .random_backbone("resnet18")
            .fine_tune(|t| t.epochs(2).cycle_momentum(false).mix_at("features").mixup(0.2));
        let toml = b.to_toml();
        for line in ["image_size = 64", "epochs = 2", "cycle_momentum = false", "mix_at = \"features\"", "mixup = 0.2"]
        {
            assert!(toml.contains(line), "{line} not in:\n{toml}");
        }
        assert!(b.build().is_ok());
    }
}
