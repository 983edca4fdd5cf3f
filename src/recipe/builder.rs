//! Building a recipe in code, for notebooks and tests.
//!
//! The builder mirrors the TOML keys one to one and produces the recipe *text*,
//! which then goes through [`super::parse`] — so a built recipe is validated
//! exactly like a file (same defaults, ranges, step-order checks and messages),
//! and [`RecipeBuilder::to_toml`] shows the equivalent file to save.

use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use super::{Recipe, RecipeError};

/// A TOML value a builder key accepts: numbers, booleans, strings, paths and
/// arrays of them convert with `.into()`.
#[derive(Debug, Clone)]
pub struct Setting(Value);

macro_rules! setting_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Setting {
            fn from($v: $t) -> Self { Setting($e) }
        })*
    };
}
setting_from! {
    bool => |v| Value::from(v),
    i64 => |v| Value::from(v),
    i32 => |v| Value::from(i64::from(v)),
    u32 => |v| Value::from(i64::from(v)),
    // Values beyond i64 cannot be written as TOML integers; saturate and let
    // validation report the range.
    u64 => |v| Value::from(i64::try_from(v).unwrap_or(i64::MAX)),
    usize => |v| Value::from(i64::try_from(v).unwrap_or(i64::MAX)),
    f64 => |v| Value::from(v),
    f32 => |v| Value::from(f64::from(v)),
    &str => |v| Value::from(v),
    String => |v| Value::from(v),
    &Path => |v| Value::from(v.to_string_lossy().into_owned()),
    PathBuf => |v| Value::from(v.to_string_lossy().into_owned()),
    (f64, f64) => |v| Value::Array(Array::from_iter([v.0, v.1])),
    Vec<usize> => |v| Value::Array(v.into_iter().map(|x| i64::try_from(x).unwrap_or(i64::MAX)).collect()),
}

/// Keys of one table (`[data]` or a `[[step]]`), in insertion order.
#[derive(Debug, Clone, Default)]
pub struct Keys(Table);

impl Keys {
    pub(super) fn put(mut self, key: &str, v: impl Into<Setting>) -> Self {
        self.0.insert(key, Item::Value(v.into().0));
        self
    }

    /// Sets any key, for settings without a typed method; validation is the
    /// same as for a file.
    pub fn set(self, key: &str, v: impl Into<Setting>) -> Self {
        self.put(key, v)
    }
}

/// `set` for each builder; its typed setters are generated from the
/// schema's tables (schema.rs).
macro_rules! any_key {
    ($($builder:ident),*) => {
        $(impl $builder {
            /// Sets any key of this table (same validation as in a file).
            pub fn set(self, key: &str, v: impl Into<Setting>) -> Self { $builder(self.0.set(key, v)) }
        })*
    };
}
any_key!(DataBuilder, BackboneBuilder, AugmentBuilder, FineTuneBuilder, LrFindBuilder, EvaluateBuilder);

/// The `[data]` table.
#[derive(Debug, Clone, Default)]
pub struct DataBuilder(pub(super) Keys);

/// A `kind = "backbone"` step's extra keys.
#[derive(Debug, Clone, Default)]
pub struct BackboneBuilder(pub(super) Keys);

/// A `kind = "augment"` step.
#[derive(Debug, Clone, Default)]
pub struct AugmentBuilder(pub(super) Keys);

impl AugmentBuilder {
    /// `zoom_range = [lo, hi]`.
    pub fn zoom_between(self, lo: f64, hi: f64) -> Self {
        AugmentBuilder(self.0.put("zoom_range", (lo, hi)))
    }

    /// `random_resized_crop = { scale = [..], ratio = [..] }`.
    pub fn random_resized_crop_with(self, scale: (f64, f64), ratio: (f64, f64)) -> Self {
        let mut t = InlineTable::new();
        t.insert("scale", Setting::from(scale).0);
        t.insert("ratio", Setting::from(ratio).0);
        AugmentBuilder(Keys(insert(self.0 .0, "random_resized_crop", Value::InlineTable(t))))
    }

    /// `color_jitter = { brightness, contrast, saturation, hue }`.
    pub fn color_jitter(self, brightness: f64, contrast: f64, saturation: f64, hue: f64) -> Self {
        let mut t = InlineTable::new();
        for (k, v) in [("brightness", brightness), ("contrast", contrast), ("saturation", saturation), ("hue", hue)] {
            t.insert(k, Value::from(v));
        }
        AugmentBuilder(Keys(insert(self.0 .0, "color_jitter", Value::InlineTable(t))))
    }
}

fn insert(mut t: Table, key: &str, v: Value) -> Table {
    t.insert(key, Item::Value(v));
    t
}

/// A `kind = "fine_tune"` step.
#[derive(Debug, Clone, Default)]
pub struct FineTuneBuilder(pub(super) Keys);

impl FineTuneBuilder {
    /// `lr = "suggested"` (or `"valley"`, `"steep"`, `"minimum"`): from the last lr_find step.
    pub fn lr_suggested(self, which: &str) -> Self {
        self.set("lr", which)
    }
}

/// A `kind = "lr_find"` step.
#[derive(Debug, Clone, Default)]
pub struct LrFindBuilder(pub(super) Keys);

impl LrFindBuilder {
    /// The optimizer the test trains with (fine_tune's key).
    pub fn optimizer(self, v: &str) -> Self {
        Self(self.0.put("optimizer", v))
    }

    /// Its weight decay (fine_tune's key).
    pub fn weight_decay(self, v: f64) -> Self {
        Self(self.0.put("weight_decay", v))
    }
}

/// A `kind = "evaluate"` step.
#[derive(Debug, Clone, Default)]
pub struct EvaluateBuilder(pub(super) Keys);

/// Builds a recipe in code. Its methods mirror the TOML keys; [`build`](Self::build)
/// validates the generated text exactly as a file, and [`to_toml`](Self::to_toml)
/// shows that text.
///
/// ```
/// use tlab::recipe::RecipeBuilder;
/// let recipe = RecipeBuilder::new("nb")
///     .base_dir(env!("CARGO_MANIFEST_DIR"))
///     .seed(42)
///     .data(|d| d.train("data/fashion-mnist-mini/train").valid("data/fashion-mnist-mini/valid").image_size(96))
///     .backbone("mobilenet_v2", "assets/weights/mobilenet_v2.safetensors")
///     .freeze_all()
///     .augment(|a| a.horizontal_flip(true))
///     .fine_tune(|f| f.epochs(2).lr(1e-3))
///     .evaluate()
///     .build()?;
/// assert_eq!(recipe.steps.len(), 5);
/// # Ok::<(), tlab::recipe::RecipeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RecipeBuilder {
    name: String,
    seed: Option<u64>,
    base_dir: Option<PathBuf>,
    data: DataBuilder,
    steps: Vec<Table>,
}

impl RecipeBuilder {
    pub fn new(name: &str) -> Self {
        RecipeBuilder {
            name: name.to_string(),
            seed: None,
            base_dir: None,
            data: DataBuilder::default(),
            steps: vec![],
        }
    }

    /// `seed = …`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The folder relative paths resolve against, as a recipe file's folder
    /// does. Default: none, so relative paths stay relative and are used from
    /// the current directory (a notebook's own folder under Jupyter) — which
    /// also keeps machine-specific absolute paths out of saved outputs.
    pub fn base_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.base_dir = Some(dir.into());
        self
    }

    /// The `[data]` table.
    pub fn data(mut self, f: impl FnOnce(DataBuilder) -> DataBuilder) -> Self {
        self.data = f(std::mem::take(&mut self.data));
        self
    }

    fn step(mut self, kind: &str, keys: Keys) -> Self {
        let mut t = Table::new();
        t.insert("kind", toml_edit::value(kind));
        for (k, v) in keys.0.iter() {
            t.insert(k, v.clone());
        }
        self.steps.push(t);
        self
    }

    /// `kind = "backbone"` with a weights file (relative: against the base dir).
    pub fn backbone(self, arch: &str, weights: impl Into<Setting>) -> Self {
        self.backbone_with(arch, weights, |b| b)
    }

    /// A backbone step with head settings (`dropout`, `hidden`, `pooling`, `batchnorm`, `strict`).
    pub fn backbone_with(
        self,
        arch: &str,
        weights: impl Into<Setting>,
        f: impl FnOnce(BackboneBuilder) -> BackboneBuilder,
    ) -> Self {
        let keys = Keys::default().put("arch", arch).put("weights", weights);
        let keys = f(BackboneBuilder(keys)).0;
        self.step("backbone", keys)
    }

    /// A randomly initialised backbone (no weights file).
    pub fn random_backbone(self, arch: &str) -> Self {
        self.step("backbone", Keys::default().put("arch", arch))
    }

    /// `kind = "freeze"`: the whole backbone.
    pub fn freeze_all(self) -> Self {
        self.step("freeze", Keys::default())
    }

    /// `kind = "freeze"`, `up_to = "<block>"`: every block before `block` stays
    /// frozen, `block` and later ones train.
    pub fn freeze_up_to(self, block: &str) -> Self {
        self.step("freeze", Keys::default().put("up_to", block))
    }

    /// `kind = "freeze"`, `up_to = N`: the first `n` blocks.
    pub fn freeze_first(self, n: usize) -> Self {
        self.step("freeze", Keys::default().put("up_to", n))
    }

    /// `kind = "freeze"`, `up_to = "none"`: everything trains.
    pub fn unfreeze_all(self) -> Self {
        self.step("freeze", Keys::default().put("up_to", "none"))
    }

    /// A freeze step with `train_bn = true` (BatchNorm of frozen blocks trains).
    pub fn freeze_with_bn(self, up_to: impl Into<Setting>) -> Self {
        self.step("freeze", Keys::default().put("up_to", up_to).put("train_bn", true))
    }

    /// `kind = "augment"`.
    pub fn augment(self, f: impl FnOnce(AugmentBuilder) -> AugmentBuilder) -> Self {
        let keys = f(AugmentBuilder::default()).0;
        self.step("augment", keys)
    }

    /// `kind = "lr_find"`: the learning-rate range test.
    pub fn lr_find(self, f: impl FnOnce(LrFindBuilder) -> LrFindBuilder) -> Self {
        let keys = f(LrFindBuilder::default()).0;
        self.step("lr_find", keys)
    }

    /// `kind = "fine_tune"`.
    pub fn fine_tune(self, f: impl FnOnce(FineTuneBuilder) -> FineTuneBuilder) -> Self {
        let keys = f(FineTuneBuilder::default()).0;
        self.step("fine_tune", keys)
    }

    /// `kind = "evaluate"` with the defaults.
    pub fn evaluate(self) -> Self {
        self.step("evaluate", Keys::default())
    }

    /// `kind = "evaluate"` with `top_k` / `mistakes`.
    pub fn evaluate_with(self, f: impl FnOnce(EvaluateBuilder) -> EvaluateBuilder) -> Self {
        let keys = f(EvaluateBuilder::default()).0;
        self.step("evaluate", keys)
    }

    /// The recipe as TOML text (what a file with the same content holds).
    pub fn to_toml(&self) -> String {
        let mut doc = DocumentMut::new();
        doc.insert("name", toml_edit::value(self.name.as_str()));
        if let Some(seed) = self.seed {
            doc.insert("seed", Item::Value(Setting::from(seed).0));
        }
        let mut data = self.data.0 .0.clone();
        data.set_implicit(false);
        doc.insert("data", Item::Table(data));
        let mut steps = ArrayOfTables::new();
        for s in &self.steps {
            steps.push(s.clone());
        }
        if !steps.is_empty() {
            doc.insert("step", Item::ArrayOfTables(steps));
        }
        doc.to_string()
    }

    /// The path a built recipe reports in errors and resolves paths against:
    /// `<base dir>/<name>.toml`, or `<name>.toml` without a base dir (no file
    /// is written).
    pub fn virtual_path(&self) -> PathBuf {
        let file = format!("{}.toml", self.name);
        match &self.base_dir {
            Some(d) => d.join(file),
            None => PathBuf::from(file),
        }
    }

    /// Validates the recipe exactly as a file with [`to_toml`](Self::to_toml)'s
    /// text at [`virtual_path`](Self::virtual_path) would be.
    pub fn build(&self) -> Result<Recipe, RecipeError> {
        super::parse(&self.to_toml(), &self.virtual_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Lr;
    use crate::recipe::{FreezePoint, StepKind};

    fn quickstart_like() -> RecipeBuilder {
        RecipeBuilder::new("nb")
            .base_dir("/base")
            .seed(7)
            .data(|d| d.train("train").valid("../valid").image_size(64).batch_size(8).max_per_class(3))
            .backbone_with("mobilenet_v2", "w.safetensors", |b| b.dropout(0.3).hidden(vec![16]))
            .freeze_all()
            .augment(|a| a.horizontal_flip(true).zoom_between(0.9, 1.2).color_jitter(0.1, 0.1, 0.0, 0.05))
            .fine_tune(|f| f.epochs(2).lr(1e-3).time_limit(30.0))
            .freeze_up_to("features.14")
            .fine_tune(|f| f.epochs(1).optimizer("adamw").schedule("cosine"))
            .evaluate_with(|e| e.top_k(3).mistakes(4))
    }

    #[test]
    fn builds_the_same_recipe_as_the_file() {
        let b = quickstart_like();
        let r = b.build().expect("valid");
        assert_eq!(r.seed, 7);
        assert_eq!(r.data.train, PathBuf::from("/base/train"));
        assert_eq!(r.data.valid, Some(PathBuf::from("/base/../valid")));
        assert_eq!((r.data.image_size, r.data.batch_size, r.data.max_per_class), (64, 8, Some(3)));
        assert_eq!(r.steps.len(), 7);
        match &r.steps[3].kind {
            StepKind::FineTune(f) => {
                assert_eq!((f.epochs, f.lr, f.time_limit_secs), (2, Lr::Fixed(1e-3), Some(30.0)));
            }
            other => panic!("step 4 is {other:?}"),
        }
        assert!(matches!(&r.steps[4].kind, StepKind::Freeze(f) if f.up_to == FreezePoint::Block("features.14".into())));
        // The text round-trips through the file parser to the same recipe.
        let again = crate::recipe::parse(&b.to_toml(), Path::new("/base/nb.toml")).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn errors_point_into_the_generated_text() {
        let err = RecipeBuilder::new("bad")
            .base_dir("/b")
            .data(|d| d.train("t").image_size(8))
            .random_backbone("mobilenet_v2")
            .fine_tune(|f| f.set("epoch", 3usize))
            .build()
            .expect_err("two mistakes");
        let msg = err.to_string();
        assert!(msg.starts_with("/b/bad.toml:"), "{msg}");
        assert!(msg.contains("image_size"), "{msg}");
    }

    #[test]
    fn misspelt_keys_get_suggestions() {
        let msg = RecipeBuilder::new("bad")
            .base_dir("/b")
            .data(|d| d.train("t"))
            .random_backbone("mobilenet_v2")
            .fine_tune(|f| f.set("epoch", 3usize))
            .build()
            .expect_err("unknown key")
            .to_string();
        assert!(msg.contains("did you mean `epochs`"), "{msg}");
    }

    #[test]
    fn without_a_base_dir_paths_stay_relative() {
        let r = RecipeBuilder::new("rel").data(|d| d.train("../data/train")).random_backbone("mobilenet_v2").build();
        let r = r.expect("valid");
        assert_eq!(r.data.train, PathBuf::from("../data/train"));
        assert_eq!(r.path, PathBuf::from("rel.toml"));
    }

    #[test]
    fn order_is_checked() {
        let msg = RecipeBuilder::new("bad")
            .data(|d| d.train("t"))
            .fine_tune(|f| f.epochs(1))
            .build()
            .expect_err("no backbone")
            .to_string();
        assert!(msg.contains("needs a backbone step before it"), "{msg}");
    }
}
