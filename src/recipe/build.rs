//! The recipe schema: walks the parsed TOML and builds a [`Recipe`], applying
//! defaults and reporting every problem found (the first per table).
//!
//! Within each table unknown keys are checked first (a misspelt key is the
//! likeliest cause of any later "missing key" error), then values in a fixed
//! order, then rules that relate several values.

use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, TomlError};

use super::schema::{self, augment as aug, backbone as bb, fine_tune as ft, names};
use super::summary::fingerprint;
use super::toml_reader::{suggest, Bounds, Field, Result, Section, Source};
use super::{
    AugmentConfig, BackboneStep, ClassWeights, ColorJitter, CropConfig, DataConfig, EarlyStopping, Erasing, EvalSplit,
    EvaluateConfig, FillMode, FineTuneConfig, FreezePoint, FreezeStep, HeadConfig, ImageCache, Lr, LrFindConfig,
    LrSuggestion, MixAt, MixConfig, Monitor, OneCycle, Optimizer, OptimizerParams, Pooling, Recipe, RecipeError,
    Sampler, Schedule, ScheduleParams, Step, StepKind, WeightsSource, KNOWN_ARCHS, STEP_KINDS,
};

/// The names a step of a kind with `keys` accepts: those and `kind`.
fn step_names(keys: &[&dyn schema::Describe]) -> Vec<&'static str> {
    std::iter::once("kind").chain(names(keys)).collect()
}

/// The document start: where errors about the document as a whole point.
const DOC_START: Option<std::ops::Range<usize>> = Some(0..0);

/// Parses `text` (from `path`) into a validated recipe, or every problem
/// found: like a compiler, the parts that do not depend on each other (the
/// top-level keys, `[data]`, each step) are all checked, so one pass over a
/// recipe reports all of its mistakes.
pub(super) fn build(text: &str, path: &Path) -> std::result::Result<Recipe, Vec<RecipeError>> {
    let src = Source { text, path };
    let doc = ImDocument::parse(text).map_err(|e| vec![syntax_error(src, &e)])?;
    let root = Section::new(src, doc.as_table(), DOC_START, "at top level");
    let mut errors = root.unknown_keys(&names(schema::top::KEYS));

    // A top-level key that is missing is most likely one of the misspelt
    // ones: say only the latter then.
    let misspelt = !errors.is_empty();
    let name = match root.key(&schema::top::NAME) {
        None if misspelt => None,
        _ => keep(&mut errors, root.require(schema::top::NAME.name).and_then(|f| run_name(&f))),
    };
    let seed = keep(&mut errors, root.int::<u64>(&schema::top::SEED));
    // Relative paths are anchored at the recipe's folder, as Cargo does.
    let base = path.parent().unwrap_or(Path::new(""));
    let data = match root.key(&schema::top::DATA) {
        None if misspelt => None,
        None => {
            keep(&mut errors, Err(src.error_at(&DOC_START, "missing table `[data]` (it must set at least `train`)")))
        }
        Some(f) => keep(&mut errors, data(src, &f, base)),
    };
    let steps = match root.key(&schema::top::STEP) {
        None if misspelt => None,
        None => keep(&mut errors, Err(src.error_at(&DOC_START, "recipe has no [[step]]"))),
        Some(f) => steps(src, &f, base, data.as_ref()).map_err(|e| errors.extend(e)).ok(),
    };
    match (name, seed, data, steps) {
        (Some(name), Some(seed), Some(data), Some(steps)) if errors.is_empty() => {
            Ok(Recipe { path: path.to_path_buf(), name, seed, data, steps })
        }
        _ => Err(errors),
    }
}

/// The value of `r`, or `None` with its error added to `errors`.
fn keep<T>(errors: &mut Vec<RecipeError>, r: Result<T>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// A TOML syntax error at the parser's position, its message on one line.
fn syntax_error(src: Source<'_>, e: &TomlError) -> RecipeError {
    let message = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let message = if message.is_empty() { "invalid TOML syntax".to_string() } else { message };
    src.error_at(&e.span(), message)
}

/// `base.join(p)`: relative paths become relative to the recipe's folder,
/// absolute ones are kept. No lexical `..` folding, which would be wrong
/// across symlinks.
fn resolve(base: &Path, p: &str) -> PathBuf {
    base.join(p)
}

/// The run name, restricted because it becomes a folder name.
fn run_name(f: &Field<'_>) -> Result<String> {
    let name = f.non_empty_str()?;
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(f.error(format!(
            "`name` may only contain letters, digits, `_`, `.` and `-` (it names the run folder), found {bad:?} in {}",
            f.found()
        )));
    }
    if name.chars().all(|c| c == '.') {
        return Err(f.error(format!("`name` cannot consist only of dots, found {}", f.found())));
    }
    Ok(name.to_string())
}

fn data(src: Source<'_>, f: &Field<'_>, base: &Path) -> Result<DataConfig> {
    let table = f.as_table().ok_or_else(|| f.type_error("a table ([data])"))?;
    let s = Section::new(src, table, f.span().clone(), "in [data]");
    s.check_keys(&names(schema::data::KEYS))?;
    let csv = s.key(&schema::data::CSV).map(|f| f.non_empty_str()).transpose()?.map(|v| resolve(base, v));
    let train = match (&csv, s.key(&schema::data::TRAIN)) {
        (_, Some(f)) => resolve(base, f.non_empty_str()?),
        // The images a CSV names live beside it.
        (Some(csv), None) => csv.parent().map(Path::to_path_buf).unwrap_or_default(),
        (None, None) => resolve(base, s.require(schema::data::TRAIN.name)?.non_empty_str()?),
    };
    let test = s.key(&schema::data::TEST).map(|f| f.non_empty_str()).transpose()?.map(|v| resolve(base, v));
    let valid = s.key(&schema::data::VALID).map(|f| f.non_empty_str()).transpose()?.map(|v| resolve(base, v));
    let valid_split = s.num(&schema::data::VALID_SPLIT)?;
    if let (Some(_), Some(split)) = (&valid, s.key(&schema::data::VALID_SPLIT)) {
        return Err(split.key_error(
            "`valid_split` cannot be combined with `valid`: the split only applies when there is no validation folder; remove one",
        ));
    }
    Ok(DataConfig {
        train,
        csv,
        test,
        valid,
        valid_split,
        image_size: s.int(&schema::data::IMAGE_SIZE)?,
        batch_size: s.int(&schema::data::BATCH_SIZE)?,
        max_per_class: s.opt_int(&schema::data::MAX_PER_CLASS)?,
        workers: s.opt_int(&schema::data::WORKERS)?,
        cache: s.pick(&schema::data::CACHE, ImageCache::ALL)?,
    })
}

/// All `[[step]]`s, in order, each checked against the steps before it;
/// every step is checked even after one fails.
fn steps(
    src: Source<'_>,
    f: &Field<'_>,
    base: &Path,
    data: Option<&DataConfig>,
) -> std::result::Result<Vec<Step>, Vec<RecipeError>> {
    let tables = f.tables("an array of tables ([[step]])").map_err(|e| vec![e])?;
    if tables.is_empty() {
        return Err(vec![f.error("recipe has no [[step]]")]);
    }
    let mut seen_backbone = false;
    let mut steps = Vec::with_capacity(tables.len());
    let mut errors = Vec::new();
    for (i, (table, span)) in tables.into_iter().enumerate() {
        let line = src.line_of(&span);
        let s = Section::new(src, table, span.clone(), format!("in step #{}", i + 1));
        match step(s, base, &mut seen_backbone) {
            Ok(kind) if conflict(&kind, &steps, data).is_some() => {
                let (key, message) = conflict(&kind, &steps, data).unwrap_or_default();
                let s = Section::new(src, table, span, format!("in step #{}", i + 1));
                errors.extend(s.field(key).map(|f| f.key_error(message)));
            }
            Ok(kind) => {
                let fingerprint = fingerprint(&kind);
                steps.push(Step { kind, line, fingerprint });
            }
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(steps)
    } else {
        Err(errors)
    }
}

/// What a step may not say given the steps before it and `[data]`: the key
/// at fault and why.
fn conflict(kind: &StepKind, before: &[Step], data: Option<&DataConfig>) -> Option<(&'static str, String)> {
    match kind {
        // Without a CSV (whose rows may name a test split) the test split is a folder.
        StepKind::Evaluate(e)
            if e.split == EvalSplit::Test && data.is_some_and(|d| d.test.is_none() && d.csv.is_none()) =>
        {
            Some(("split", "`split = \"test\"` needs a test split: add `test = \"folder\"` to [data]".into()))
        }
        StepKind::Evaluate(e) if e.tta_views > 0 && !before.iter().any(|s| matches!(s.kind, StepKind::Augment(_))) => {
            Some((
                "tta_views",
                "`tta_views` draws views with the recipe's augmentation: add an augment step before this evaluate"
                    .into(),
            ))
        }
        StepKind::Backbone(b) => {
            let patch = super::patch_size(&b.arch)?;
            let size = data?.image_size;
            (size % patch != 0).then(|| ("arch", not_whole_patches(&b.arch, patch, size, "[data] image_size")))
        }
        StepKind::FineTune(t) => {
            let size = t.image_size?;
            let arch = before.iter().rev().find_map(|s| match &s.kind {
                StepKind::Backbone(b) => Some(b.arch.as_str()),
                _ => None,
            });
            if let Some((arch, patch)) = arch.and_then(|a| Some((a, super::patch_size(a)?))) {
                if size % patch != 0 {
                    return Some(("image_size", not_whole_patches(arch, patch, size, "`image_size`")));
                }
            }
            let full = data?.image_size;
            if size > full {
                return Some((
                    "image_size",
                    format!(
                        "`image_size` = {size} is larger than [data] image_size = {full}: images are decoded once, at \
                         [data] image_size, so train smaller first and then at that size"
                    ),
                ));
            }
            let flatten = before.iter().rev().find_map(|s| match &s.kind {
                StepKind::Backbone(b) => Some(b.head.pooling == Pooling::Flatten),
                _ => None,
            })?;
            (flatten && size != full).then(|| {
                ("image_size", "a `pooling = \"flatten\"` head is sized for [data] image_size; use \"avg\" or \"concat\" pooling to train at another size".into())
            })
        }
        _ => None,
    }
}

/// Why a Vision Transformer cannot take `size`-px images, with the nearest
/// sizes it can.
fn not_whole_patches(arch: &str, patch: u32, size: u32, what: &str) -> String {
    let below = (size / patch).max(1) * patch;
    format!(
        "{arch} cuts images into {patch}×{patch} patches: {what} = {size} is not a multiple of {patch} (try {below} or {})",
        below + patch
    )
}

/// One step: its kind, then all of its unknown keys at once, then its values.
fn step(s: Section<'_>, base: &Path, seen_backbone: &mut bool) -> std::result::Result<StepKind, Vec<RecipeError>> {
    let kind_field = s.require("kind").map_err(|e| vec![e])?;
    let kind_name = kind_field.str().map_err(|e| vec![e])?;
    let Some(&kind_name) = STEP_KINDS.iter().find(|k| **k == kind_name) else {
        let hint = suggest(kind_name, STEP_KINDS).map(|k| format!(" did you mean `{k}`?")).unwrap_or_default();
        return Err(vec![kind_field
            .error(format!("unknown step kind `{kind_name}`;{hint} expected one of: {}", STEP_KINDS.join(", ")))]);
    };
    if kind_name == "backbone" {
        *seen_backbone = true;
    } else if !*seen_backbone && kind_name != "augment" {
        return Err(vec![kind_field.error(format!("{kind_name} step needs a backbone step before it"))]);
    }
    let s = s.with_context(format!("in {kind_name} step"));
    let unknown = s.unknown_keys(&step_names(schema::step_keys(kind_name)));
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let kind = match kind_name {
        "backbone" => backbone(&s, base).map(StepKind::Backbone),
        "freeze" => freeze(&s).map(StepKind::Freeze),
        "augment" => augment(&s).map(StepKind::Augment),
        "fine_tune" => fine_tune(&s).map(StepKind::FineTune),
        "lr_find" => lr_find(&s).map(StepKind::LrFind),
        _ => evaluate(&s).map(StepKind::Evaluate),
    };
    kind.map_err(|e| vec![e])
}

fn backbone(s: &Section<'_>, base: &Path) -> Result<BackboneStep> {
    s.check_keys(&step_names(bb::KEYS))?;
    let arch_field = s.require(bb::ARCH.name)?;
    let arch = arch_field.non_empty_str()?;
    if !KNOWN_ARCHS.contains(&arch) {
        let hint = suggest(arch, KNOWN_ARCHS).map(|a| format!(" did you mean `{a}`?")).unwrap_or_default();
        return Err(
            arch_field.error(format!("unknown arch `{arch}`;{hint} expected one of: {}", KNOWN_ARCHS.join(", ")))
        );
    }
    let weights = s.key(&bb::WEIGHTS).map(|f| weights(&f, base)).transpose()?;
    let strict = s.flag(&bb::STRICT)?;

    // Head settings may sit flat on the step (the natural form inside
    // [[step]]) or in a `head` table; saying the same thing twice is an error
    // rather than a silent precedence rule.
    let head = s.key(&bb::HEAD).map(|f| f.section(s.context())).transpose()?;
    if let Some(head) = &head {
        head.check_keys(&names(schema::HEAD_KEYS))?;
    }
    let pick = |key: &str| -> Result<Option<Field<'_>>> {
        match (s.field(key), head.as_ref().and_then(|h| h.field(key))) {
            (Some(_), Some(nested)) => Err(nested.key_error(format!(
                "`{}` repeats `{key}` set directly on the step; set it in one place only",
                nested.name()
            ))),
            (flat, nested) => Ok(flat.or(nested)),
        }
    };
    let pooling = bb::POOLING.read(pick(bb::POOLING.name)?, [Pooling::Avg, Pooling::Flatten, Pooling::Concat])?;
    let hidden = match pick(bb::HIDDEN.name)? {
        Some(f) => f
            .elements("an array of positive integers")?
            .iter()
            .map(|e| e.int_as::<usize>(Bounds::at_least(1)))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let dropout = match pick(bb::DROPOUT.name)? {
        Some(f) => f.number(bb::DROPOUT.spec.bounds)?,
        None => bb::DROPOUT.spec.default,
    };
    let batchnorm = pick(bb::BATCHNORM.name)?.map(|f| f.bool()).transpose()?.unwrap_or(bb::BATCHNORM.spec.default);
    let drop_path = match s.key(&bb::DROP_PATH) {
        Some(f) => {
            let rate = f.number(bb::DROP_PATH.spec.bounds)?;
            if rate > 0.0 && !super::has_drop_path(arch) {
                return Err(f.key_error(format!(
                    "`drop_path` (stochastic depth) drops residual branches of EfficientNet B/V2, ConvNeXt and the Vision Transformers, which {arch} is not"
                )));
            }
            rate
        }
        None => bb::DROP_PATH.spec.default,
    };
    Ok(BackboneStep {
        arch: arch.to_string(),
        weights,
        strict,
        drop_path,
        head: HeadConfig { pooling, hidden, dropout, batchnorm },
    })
}

/// `hf:ORG/REPO[:FILE]`, an http(s) URL, or a path relative to the recipe.
fn weights(f: &Field<'_>, base: &Path) -> Result<WeightsSource> {
    let s = f.str()?;
    if s.is_empty() {
        return Err(f.error("`weights` must not be empty; omit it for random initialisation"));
    }
    if let Some(rest) = s.strip_prefix("hf:") {
        let (repo, file) = match rest.split_once(':') {
            Some((repo, file)) => (repo, Some(file)),
            None => (rest, None),
        };
        let part_ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let repo_ok = repo.split_once('/').is_some_and(|(org, name)| part_ok(org) && part_ok(name));
        let file_ok = file.is_none_or(|f| !f.is_empty() && !f.chars().any(char::is_whitespace));
        if !repo_ok || !file_ok {
            return Err(f.error(format!(
                "`weights` hub reference must look like \"hf:ORG/REPO\" or \"hf:ORG/REPO:FILE\", found {}",
                f.found()
            )));
        }
    } else if let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) {
        if rest.is_empty() || rest.chars().any(char::is_whitespace) {
            return Err(f.error(format!("`weights` URL is malformed, found {}", f.found())));
        }
    } else if let Some((scheme, _)) = s.split_once("://") {
        return Err(f.error(format!(
            "`weights` URL scheme `{scheme}` is not supported; use http(s)://, hf:ORG/REPO[:FILE] or a file path"
        )));
    }
    Ok(super::weights_source(s, base))
}

fn freeze(s: &Section<'_>) -> Result<FreezeStep> {
    s.check_keys(&step_names(schema::freeze::KEYS))?;
    let up_to = match s.key(&schema::freeze::UP_TO) {
        None => FreezePoint::All,
        Some(f) => freeze_point(&f)?,
    };
    Ok(FreezeStep { up_to, train_bn: s.flag(&schema::freeze::TRAIN_BN)? })
}

fn freeze_point(f: &Field<'_>) -> Result<FreezePoint> {
    if f.as_integer().is_some() {
        return Ok(FreezePoint::Index(f.int_as(Bounds::at_least(0))?));
    }
    match f.str() {
        Ok("all") => Ok(FreezePoint::All),
        Ok("none") => Ok(FreezePoint::None),
        Ok(block) if !block.trim().is_empty() => Ok(FreezePoint::Block(block.to_string())),
        _ => {
            Err(f
                .type_error("\"all\", \"none\", a block name such as \"features.14\", or a block count (integer >= 0)"))
        }
    }
}

fn augment(s: &Section<'_>) -> Result<AugmentConfig> {
    s.check_keys(&step_names(aug::KEYS))?;
    let d = AugmentConfig::default();
    let zoom_range = match s.key(&aug::ZOOM_RANGE) {
        None => d.zoom_range,
        Some(f) if f.is_array() => f.pair(Bounds::above(0.0))?,
        Some(f) if f.is_number() => {
            let z = f.number(Bounds::closed_open(0.0, 1.0))?;
            (1.0 - z, 1.0 + z)
        }
        Some(f) => return Err(f.type_error("a number z (zoom 1-z..1+z) or a 2-element array [lo, hi]")),
    };
    Ok(AugmentConfig {
        rotation_range: s.num(&aug::ROTATION_RANGE)?,
        width_shift_range: s.num(&aug::WIDTH_SHIFT_RANGE)?,
        height_shift_range: s.num(&aug::HEIGHT_SHIFT_RANGE)?,
        shear_range: s.num(&aug::SHEAR_RANGE)?,
        zoom_range,
        horizontal_flip: s.flag(&aug::HORIZONTAL_FLIP)?,
        vertical_flip: s.flag(&aug::VERTICAL_FLIP)?,
        dihedral: s.flag(&aug::DIHEDRAL)?,
        trivial_augment: s.flag(&aug::TRIVIAL_AUGMENT)?,
        rand_augment: rand_augment(s)?,
        auto_augment: s.pick(&aug::AUTO_AUGMENT, [true, false])?,
        random_erasing: s.key(&aug::RANDOM_ERASING).map(|f| erasing(s, &f)).transpose()?.flatten(),
        fill_mode: s
            .pick(&aug::FILL_MODE, [FillMode::Nearest, FillMode::Reflect, FillMode::Wrap, FillMode::Constant])?,
        cval: s.num(&aug::CVAL)?,
        brightness_range: s.opt_pair(&aug::BRIGHTNESS_RANGE)?,
        random_resized_crop: s.key(&aug::RANDOM_RESIZED_CROP).map(|f| crop(s, &f)).transpose()?.flatten(),
        color_jitter: s.key(&aug::COLOR_JITTER).map(|f| color_jitter(s, &f)).transpose()?,
    })
}

/// `random_resized_crop = true | false | { scale = [..], ratio = [..] }`.
fn crop(parent: &Section<'_>, f: &Field<'_>) -> Result<Option<CropConfig>> {
    if f.as_table().is_none() {
        return f
            .bool()
            .map(|on| on.then(CropConfig::default))
            .map_err(|_| f.type_error("true, false or a table { scale = [lo, hi], ratio = [lo, hi] }"));
    }
    let s = f.section(parent.context())?;
    s.check_keys(&names(schema::crop::KEYS))?;
    Ok(Some(CropConfig { scale: s.pair_of(&schema::crop::SCALE)?, ratio: s.pair_of(&schema::crop::RATIO)? }))
}

/// `random_erasing = true | false | { p, scale = [..], ratio = [..], value = 0..255 | "random" }`.
fn erasing(parent: &Section<'_>, f: &Field<'_>) -> Result<Option<Erasing>> {
    if f.as_table().is_none() {
        return f.bool().map(|on| on.then(Erasing::default)).map_err(|_| {
            f.type_error(
                "true, false or a table { p, scale = [lo, hi], ratio = [lo, hi], value = 0..255 or \"random\" }",
            )
        });
    }
    let s = f.section(parent.context())?;
    s.check_keys(&names(schema::erasing::KEYS))?;
    let value = match s.key(&schema::erasing::VALUE) {
        None => Erasing::default().value,
        Some(v) if v.is_number() => Some(v.number(schema::augment::CVAL.spec.bounds)?),
        Some(v) => match v.str() {
            Ok("random") => None,
            _ => return Err(v.type_error("a level 0..255 or \"random\"")),
        },
    };
    Ok(Some(Erasing {
        p: s.num(&schema::erasing::P)?,
        scale: s.pair_of(&schema::erasing::SCALE)?,
        ratio: s.pair_of(&schema::erasing::RATIO)?,
        value,
    }))
}

/// `color_jitter = { brightness, contrast, saturation, hue }`, missing = 0.
fn color_jitter(parent: &Section<'_>, f: &Field<'_>) -> Result<ColorJitter> {
    if f.as_table().is_none() {
        return Err(f.type_error("a table such as { brightness = 0.2, contrast = 0.2, saturation = 0.2, hue = 0.05 }"));
    }
    let s = f.section(parent.context())?;
    s.check_keys(&names(schema::jitter::KEYS))?;
    Ok(ColorJitter {
        brightness: s.num(&schema::jitter::BRIGHTNESS)?,
        contrast: s.num(&schema::jitter::CONTRAST)?,
        saturation: s.num(&schema::jitter::SATURATION)?,
        hue: s.num(&schema::jitter::HUE)?,
    })
}

/// `rand_augment = true` (torchvision's defaults: 2 ops at magnitude 9) or
/// `{ num_ops = N, magnitude = M }` (M of 0..=30).
fn rand_augment(s: &Section<'_>) -> Result<Option<(usize, usize)>> {
    use schema::rand_augment::{MAGNITUDE, NUM_OPS};
    let Some(f) = s.key(&aug::RAND_AUGMENT) else { return Ok(None) };
    if let Ok(on) = f.bool() {
        return Ok(on.then_some((NUM_OPS.spec.default as usize, MAGNITUDE.spec.default as usize)));
    }
    let t = f.section("in rand_augment").map_err(|_| f.type_error("true, false or { num_ops = N, magnitude = M }"))?;
    t.check_keys(&names(schema::rand_augment::KEYS))?;
    Ok(Some((t.int(&NUM_OPS)?, t.int(&MAGNITUDE)?)))
}

fn fine_tune(s: &Section<'_>) -> Result<FineTuneConfig> {
    s.check_keys(&step_names(ft::KEYS))?;
    fine_tune_settings(s)
}

/// The fine_tune settings present in `s` (lr_find reads its optimizer keys here too).
fn fine_tune_settings(s: &Section<'_>) -> Result<FineTuneConfig> {
    let mut cfg = optimizer_and_schedule(s)?;
    check_relations(s, &cfg)?;
    cfg.early_stopping = early_stopping(s)?;
    cfg.time_limit_secs = s.opt_num(&ft::TIME_LIMIT)?;
    cfg.augment_views = augment_views(s)?;
    training_tools(s, &mut cfg)?;
    Ok(cfg)
}

/// `augment_views = K` (0: live) or `"auto"` (`None`, also the default).
fn augment_views(s: &Section<'_>) -> Result<Option<usize>> {
    match s.key(&ft::AUGMENT_VIEWS) {
        Some(f) if !f.is_number() => match f.str() {
            Ok("auto") => Ok(None),
            _ => Err(f.type_error("a number of views (0: augment live) or \"auto\"")),
        },
        _ => s.opt_int(&ft::AUGMENT_VIEWS),
    }
}

/// The optimizer, the rate and its schedule.
fn optimizer_and_schedule(s: &Section<'_>) -> Result<FineTuneConfig> {
    let epochs = s.int(&ft::EPOCHS)?;
    Ok(FineTuneConfig {
        epochs,
        optimizer: optimizer(s)?,
        lr: learning_rate(s)?,
        batch_size: s.opt_int(&ft::BATCH_SIZE)?,
        image_size: s.opt_int(&ft::IMAGE_SIZE)?,
        label_smoothing: s.num(&ft::LABEL_SMOOTHING)?,
        schedule: schedule(s, epochs)?,
        ..FineTuneConfig::default()
    })
}

/// The optimizer keys, each defaulting to the chosen optimizer's default.
fn optimizer(s: &Section<'_>) -> Result<OptimizerParams> {
    let kind = s.pick(&ft::OPTIMIZER, [Optimizer::Sgd, Optimizer::Adam, Optimizer::AdamW])?;
    let d = OptimizerParams::defaults(kind);
    // AdamW's weight decay differs from the table's default (see `defaults`).
    let weight_decay = s.key(&ft::WEIGHT_DECAY).map(|f| f.number(ft::WEIGHT_DECAY.spec.bounds)).transpose()?;
    Ok(OptimizerParams {
        kind,
        momentum: s.num(&ft::MOMENTUM)?,
        nesterov: s.flag(&ft::NESTEROV)?,
        weight_decay: weight_decay.unwrap_or(d.weight_decay),
        beta1: s.num(&ft::BETA1)?,
        beta2: s.num(&ft::BETA2)?,
        no_decay_bn_bias: s.opt_flag(&ft::NO_DECAY_BN_BIAS)?.unwrap_or(d.no_decay_bn_bias),
    })
}

/// The schedule keys, defaulting as [`ScheduleParams::defaults`] for `epochs`.
fn schedule(s: &Section<'_>, epochs: usize) -> Result<ScheduleParams> {
    let d = ScheduleParams::defaults(epochs);
    let kinds = [Schedule::Constant, Schedule::Step, Schedule::Cosine, Schedule::OneCycle, Schedule::CosineRestarts];
    Ok(ScheduleParams {
        kind: s.pick(&ft::SCHEDULE, kinds)?,
        warmup_epochs: s.int(&ft::WARMUP_EPOCHS)?,
        step_size: s.opt_int(&ft::STEP_SIZE)?.unwrap_or(d.step_size),
        gamma: s.num(&ft::GAMMA)?,
        min_lr: s.num(&ft::MIN_LR)?,
        one_cycle: one_cycle(s)?,
        restart_epochs: s.opt_int(&ft::RESTART_EPOCHS)?.unwrap_or(d.restart_epochs),
        restart_mult: s.int(&ft::RESTART_MULT)?,
    })
}

/// Rules that relate several settings, reported at the setting that would
/// most likely be edited to fix them.
fn check_relations(s: &Section<'_>, c: &FineTuneConfig) -> Result<()> {
    if let Some(f) = s.key(&ft::NESTEROV).filter(|_| c.optimizer.nesterov) {
        if c.optimizer.kind != Optimizer::Sgd {
            return Err(f.error("`nesterov = true` requires optimizer = \"sgd\""));
        }
        if c.optimizer.momentum == 0.0 {
            return Err(f.error("`nesterov = true` requires momentum > 0"));
        }
    }
    let warmup = c.schedule.warmup_epochs;
    if let Some(f) = s.key(&ft::WARMUP_EPOCHS).filter(|_| warmup >= c.epochs) {
        return Err(f.error(format!("`warmup_epochs` must be < epochs ({}), found {warmup}", c.epochs)));
    }
    let min_lr = c.schedule.min_lr;
    if let (Some(f), Some(lr)) = (s.key(&ft::MIN_LR), c.lr.peak().filter(|&lr| min_lr >= lr)) {
        return Err(f.error(format!("`min_lr` must be < lr ({lr:e}), found {min_lr:e}")));
    }
    Ok(())
}

/// `patience` (with `monitor`, `restore_best`) enables early stopping.
fn early_stopping(s: &Section<'_>) -> Result<Option<EarlyStopping>> {
    let patience = s.opt_int(&ft::PATIENCE)?;
    let monitor = s.pick(&ft::MONITOR, [Monitor::ValidLoss, Monitor::ValidAccuracy])?;
    let restore_best = s.flag(&ft::RESTORE_BEST)?;
    if patience.is_none() {
        if let Some(f) = s.key(&ft::MONITOR).or_else(|| s.key(&ft::RESTORE_BEST)) {
            return Err(
                f.key_error(format!("`{}` only applies to early stopping; add `patience = N` to enable it", f.name()))
            );
        }
    }
    Ok(patience.map(|patience| EarlyStopping { patience, monitor, restore_best }))
}

/// Discriminative rates, clipping, EMA, mixing, phases, class balance.
fn training_tools(s: &Section<'_>, cfg: &mut FineTuneConfig) -> Result<()> {
    cfg.layer_decay = s.opt_num(&ft::LAYER_DECAY)?;
    if let (Some(f), Lr::Range { .. }) = (s.key(&ft::LAYER_DECAY), cfg.lr) {
        return Err(f.key_error("`layer_decay` and `lr = [low, high]` both spread the rate; use one"));
    }
    cfg.clip_grad_norm = s.opt_num(&ft::CLIP_GRAD_NORM)?;
    cfg.ema = s.opt_num(&ft::EMA)?;
    cfg.mix = mix(s)?;
    cfg.freeze_epochs = s.int(&ft::FREEZE_EPOCHS)?;
    cfg.unfreeze_to = match s.key(&ft::UNFREEZE_TO) {
        None => FreezePoint::None,
        Some(f) if cfg.freeze_epochs == 0 => {
            return Err(f.key_error("`unfreeze_to` only applies with `freeze_epochs = N`"))
        }
        Some(f) => freeze_point(&f)?,
    };
    cfg.class_weights = class_weights(s)?;
    cfg.sampler = s.pick(&ft::SAMPLER, [Sampler::Shuffle, Sampler::Balanced])?;
    Ok(())
}

/// `lr`: a number, `[low, high]` (discriminative), or the name of an
/// `lr_find` suggestion.
fn learning_rate(s: &Section<'_>) -> Result<Lr> {
    let bounds = ft::LR.spec.bounds;
    let Some(f) = s.key(&ft::LR) else { return Ok(Lr::Fixed(ft::LR.spec.default)) };
    if f.is_array() {
        let (low, high) = f.pair(bounds)?;
        if low > high {
            return Err(f.error(format!("`lr = [low, high]` needs low <= high, found [{low:e}, {high:e}]")));
        }
        return Ok(Lr::Range { low, high });
    }
    if f.is_number() {
        return Ok(Lr::Fixed(f.number(bounds)?));
    }
    let expected = "a number, [low, high], or \"suggested\" (after an lr_find step)";
    match f.str().ok().and_then(|name| LrSuggestion::ALL.iter().find(|(n, _)| *n == name)) {
        Some((_, suggestion)) => Ok(Lr::Suggested(*suggestion)),
        None => Err(f.type_error(expected)),
    }
}

fn one_cycle(s: &Section<'_>) -> Result<OneCycle> {
    let c = OneCycle {
        pct_start: s.num(&ft::PCT_START)?,
        div_factor: s.num(&ft::DIV_FACTOR)?,
        final_div_factor: s.num(&ft::FINAL_DIV_FACTOR)?,
        cycle_momentum: s.flag(&ft::CYCLE_MOMENTUM)?,
        base_momentum: s.num(&ft::BASE_MOMENTUM)?,
        max_momentum: s.num(&ft::MAX_MOMENTUM)?,
    };
    if let Some(f) = s.key(&ft::BASE_MOMENTUM).filter(|_| c.base_momentum > c.max_momentum) {
        return Err(f.error(format!("`base_momentum` must be <= max_momentum ({})", c.max_momentum)));
    }
    Ok(c)
}

fn mix(s: &Section<'_>) -> Result<Option<MixConfig>> {
    let mixup_alpha = s.num(&ft::MIXUP)?;
    let cutmix_alpha = s.num(&ft::CUTMIX)?;
    let prob = s.num(&ft::MIX_PROB)?;
    let switch_prob = s.num(&ft::MIX_SWITCH_PROB)?;
    let at = s.pick(&ft::MIX_AT, [MixAt::Input, MixAt::Features])?;
    if mixup_alpha == 0.0 && cutmix_alpha == 0.0 {
        let needs_mix = s.key(&ft::MIX_PROB).or_else(|| s.key(&ft::MIX_SWITCH_PROB)).or_else(|| s.key(&ft::MIX_AT));
        if let Some(f) = needs_mix {
            return Err(f.key_error(format!("`{}` needs `mixup = α` or `cutmix = α`", f.name())));
        }
        return Ok(None);
    }
    Ok(Some(MixConfig { mixup_alpha, cutmix_alpha, prob, switch_prob, at }))
}

fn class_weights(s: &Section<'_>) -> Result<ClassWeights> {
    let Some(f) = s.key(&ft::CLASS_WEIGHTS) else { return Ok(ClassWeights::None) };
    if let Some(table) = f.as_table() {
        let mut out = Vec::new();
        for (name, item) in table.iter() {
            let w = item.as_float().or_else(|| item.as_integer().map(|i| i as f64));
            match w {
                Some(w) if w >= 0.0 && w.is_finite() => out.push((name.to_string(), w)),
                _ => return Err(f.error(format!("`class_weights.{name}` must be a number >= 0"))),
            }
        }
        return Ok(ClassWeights::Given(out));
    }
    match f.str() {
        Ok("balanced") => Ok(ClassWeights::Balanced),
        Ok("none") => Ok(ClassWeights::None),
        _ => Err(f.type_error("\"balanced\", \"none\", or a table { class = weight, … }")),
    }
}

fn evaluate(s: &Section<'_>) -> Result<EvaluateConfig> {
    use schema::evaluate as ev;
    s.check_keys(&step_names(ev::KEYS))?;
    let tta_views = s.int(&ev::TTA_VIEWS)?;
    // Views without TTA would be computed for nothing; say so rather than
    // silently turning TTA on or ignoring them.
    let tta = match s.bool(ev::TTA.name)? {
        Some(false) if tta_views > 0 => match s.key(&ev::TTA_VIEWS) {
            Some(f) => return Err(f.key_error("`tta_views` needs `tta = true`, but this step sets `tta = false`")),
            None => false,
        },
        Some(t) => t,
        None => ev::TTA.spec.default || tta_views > 0,
    };
    Ok(EvaluateConfig {
        top_k: s.opt_int(&ev::TOP_K)?,
        mistakes: s.int(&ev::MISTAKES)?,
        tta,
        tta_views,
        split: s.pick(&ev::SPLIT, [EvalSplit::Valid, EvalSplit::Test])?,
    })
}

fn lr_find(s: &Section<'_>) -> Result<LrFindConfig> {
    use schema::lr_find as lf;
    s.check_keys(&step_names(lf::KEYS))?;
    let start_lr = s.num(&lf::START_LR)?;
    let end_lr = s.num(&lf::END_LR)?;
    if let Some(f) = s.key(&lf::END_LR).or_else(|| s.key(&lf::START_LR)).filter(|_| end_lr <= start_lr) {
        return Err(f.error(format!("`end_lr` ({end_lr:e}) must be above `start_lr` ({start_lr:e})")));
    }
    let num_it = s.int(&lf::NUM_IT)?;
    let stop_div = s.flag(&lf::STOP_DIV)?;
    // The optimizer keys mean what they mean in fine_tune.
    let train = fine_tune_settings(s)?;
    Ok(LrFindConfig { start_lr, end_lr, num_it, stop_div, train })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::parse;

    const PATH: &str = "/x/y/recipe.toml";
    /// Lines 1-3: a minimal valid preamble.
    const HEAD: &str = "name = \"t\"\n[data]\ntrain = \"d\"\n";
    /// Lines 4-6: a backbone step, so later steps may follow it.
    const BACKBONE: &str = "[[step]]\nkind = \"backbone\"\narch = \"resnet18\"\n";

    fn ok(text: &str) -> Recipe {
        parse(text, Path::new(PATH)).unwrap_or_else(|e| panic!("expected success, got: {e}"))
    }

    /// `(line, col, message)` of the error `text` must produce.
    fn err(text: &str) -> (usize, usize, String) {
        match parse(text, Path::new(PATH)) {
            Ok(r) => panic!("expected an error, parsed: {r:?}"),
            Err(RecipeError::Invalid { path, line, col, message }) => {
                assert_eq!(path, Path::new(PATH));
                (line, col, message)
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    /// A recipe with the preamble, a backbone and then `step` (from line 7).
    fn with_step(step: &str) -> String {
        format!("{HEAD}{BACKBONE}{step}")
    }

    /// The single step after the backbone.
    fn second_step(step: &str) -> StepKind {
        ok(&with_step(step)).steps.swap_remove(1).kind
    }

    fn tune(body: &str) -> FineTuneConfig {
        match second_step(&format!("[[step]]\nkind = \"fine_tune\"\n{body}")) {
            StepKind::FineTune(t) => t,
            other => panic!("not fine_tune: {other:?}"),
        }
    }

    #[test]
    fn tta_views_imply_tta_and_need_an_augment_step() {
        let aug = "[[step]]\nkind = \"augment\"\nhorizontal_flip = true\n";
        let eval = |body: &str| match ok(&with_step(&format!("{aug}[[step]]\nkind = \"evaluate\"\n{body}")))
            .steps
            .swap_remove(2)
            .kind
        {
            StepKind::Evaluate(e) => (e.tta, e.tta_views),
            other => panic!("not evaluate: {other:?}"),
        };
        assert_eq!(eval(""), (false, 0));
        assert_eq!(eval("tta = true"), (true, 0));
        assert_eq!(eval("tta_views = 4"), (true, 4));
        assert_eq!(eval("tta = true\ntta_views = 4"), (true, 4));
        let (line, _, msg) =
            err(&with_step(&format!("{aug}[[step]]\nkind = \"evaluate\"\ntta = false\ntta_views = 2\n")));
        assert_eq!((line, msg.as_str()), (13, "`tta_views` needs `tta = true`, but this step sets `tta = false`"));
        let (line, _, msg) = err(&with_step("[[step]]\nkind = \"evaluate\"\ntta_views = 2\n"));
        assert_eq!(line, 9);
        assert!(msg.starts_with("`tta_views` draws views with the recipe's augmentation"), "{msg}");
    }

    #[test]
    fn evaluating_the_test_split_needs_one_in_data() {
        let (line, _, msg) = err(&with_step("[[step]]\nkind = \"evaluate\"\nsplit = \"test\"\n"));
        assert_eq!(line, 9);
        assert!(msg.starts_with("`split = \"test\"` needs a test split"), "{msg}");
        let with_test = with_step("[[step]]\nkind = \"evaluate\"\nsplit = \"test\"\n")
            .replace("train = \"d\"\n", "train = \"d\"\ntest = \"t\"\n");
        assert!(matches!(&ok(&with_test).steps[1].kind, StepKind::Evaluate(e) if e.split == EvalSplit::Test));
    }

    #[test]
    fn drop_path_is_for_the_families_that_have_residual_branches_to_drop() {
        let text = |arch: &str, rate: &str| {
            format!("name = \"t\"\n[data]\ntrain = \"d\"\n[[step]]\nkind = \"backbone\"\narch = \"{arch}\"\ndrop_path = {rate}\n")
        };
        assert!(
            matches!(&ok(&text("convnext_tiny", "0.1")).steps[0].kind, StepKind::Backbone(b) if b.drop_path == 0.1)
        );
        assert!(matches!(&ok(&text("resnet18", "0.0")).steps[0].kind, StepKind::Backbone(b) if b.drop_path == 0.0));
        let (line, _, msg) = err(&text("resnet18", "0.1"));
        assert_eq!(line, 7);
        assert!(
            msg.starts_with("`drop_path` (stochastic depth) drops residual branches of EfficientNet B/V2"),
            "{msg}"
        );
        assert!(msg.ends_with("which resnet18 is not"), "{msg}");
        let (line, _, msg) = err(&text("vit_b_16", "1.0"));
        assert_eq!(line, 7, "{msg}");
    }

    #[test]
    fn a_vision_transformer_needs_whole_patches() {
        let text = |data: u32, tune: u32| {
            format!(
                "name = \"t\"\n[data]\ntrain = \"d\"\nimage_size = {data}\n[[step]]\nkind = \"backbone\"\n\
                 arch = \"vit_small_patch14_dinov2\"\n[[step]]\nkind = \"fine_tune\"\nimage_size = {tune}\n"
            )
        };
        assert!(matches!(&ok(&text(98, 56)).steps[1].kind, StepKind::FineTune(t) if t.image_size == Some(56)));
        let (line, _, msg) = err(&text(96, 56));
        assert_eq!(line, 7, "the arch line");
        assert_eq!(
            msg,
            "vit_small_patch14_dinov2 cuts images into 14×14 patches: [data] image_size = 96 is not a multiple of 14 (try 84 or 98)"
        );
        let (line, _, msg) = err(&text(98, 64));
        assert_eq!(line, 10, "the fine_tune's image_size line");
        assert!(msg.contains("`image_size` = 64 is not a multiple of 14 (try 56 or 70)"), "{msg}");
    }

    #[test]
    fn a_fine_tune_step_may_train_smaller_than_the_data() {
        let text = |pooling: &str, size: u32| {
            format!(
                "name = \"t\"\n[data]\ntrain = \"d\"\nimage_size = 96\n[[step]]\nkind = \"backbone\"\narch = \"resnet18\"\n\
                 pooling = \"{pooling}\"\n[[step]]\nkind = \"fine_tune\"\nimage_size = {size}\n"
            )
        };
        match &ok(&text("avg", 64)).steps[1].kind {
            StepKind::FineTune(t) => assert_eq!(t.image_size, Some(64)),
            other => panic!("not fine_tune: {other:?}"),
        }
        assert_eq!(tune("").image_size, None);
        let (line, col, msg) = err(&text("avg", 128));
        assert_eq!((line, col), (11, 1));
        assert!(msg.starts_with("`image_size` = 128 is larger than [data] image_size = 96"), "{msg}");
        let (line, _, msg) = err(&text("flatten", 64));
        assert_eq!(line, 11);
        assert!(msg.starts_with("a `pooling = \"flatten\"` head is sized for [data] image_size"), "{msg}");
        ok(&text("flatten", 96));
    }

    #[test]
    fn mix_at_is_input_or_features_and_needs_a_mix() {
        assert_eq!(tune("mixup = 0.2").mix.map(|m| m.at), Some(MixAt::Input));
        assert_eq!(tune("mixup = 0.2\nmix_at = \"features\"").mix.map(|m| m.at), Some(MixAt::Features));
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nmix_at = \"features\"\n"));
        assert_eq!(msg, "`mix_at` needs `mixup = α` or `cutmix = α`");
    }

    #[test]
    fn augmentation_policies_parse() {
        assert!(aug("auto_augment = \"imagenet\"").auto_augment);
        assert!(!aug("auto_augment = \"none\"").auto_augment);
        assert_eq!(aug("rand_augment = true").rand_augment, Some((2, 9)));
        assert_eq!(aug("rand_augment = { magnitude = 15 }").rand_augment, Some((2, 15)));
        let (line, _, msg) = err(&with_step("[[step]]\nkind = \"augment\"\nauto_augment = \"cifar10\"\n"));
        assert_eq!(line, 9);
        assert_eq!(msg, "`auto_augment` must be one of \"imagenet\", \"none\", found string \"cifar10\"");
    }

    #[test]
    fn augment_views_is_a_count_or_auto() {
        assert_eq!(tune("").augment_views, None);
        assert_eq!(tune("augment_views = \"auto\"").augment_views, None);
        assert_eq!(tune("augment_views = 0").augment_views, Some(0));
        assert_eq!(tune("augment_views = 3").augment_views, Some(3));
        let (line, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\naugment_views = \"many\"\n"));
        assert_eq!(line, 9);
        assert!(msg.contains("augment_views") && msg.contains("\"auto\""), "{msg}");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\naugment_views = 65\n"));
        assert!(msg.contains("augment_views"), "{msg}");
    }

    fn aug(body: &str) -> AugmentConfig {
        match second_step(&format!("[[step]]\nkind = \"augment\"\n{body}")) {
            StepKind::Augment(a) => a,
            other => panic!("not augment: {other:?}"),
        }
    }

    fn backbone_step(body: &str) -> BackboneStep {
        let text = format!("{HEAD}[[step]]\nkind = \"backbone\"\n{body}");
        match ok(&text).steps.swap_remove(0).kind {
            StepKind::Backbone(b) => b,
            other => panic!("not backbone: {other:?}"),
        }
    }

    const QUICKSTART: &str = r#"name = "quickstart"      # required
seed = 42
[data]
train = "../data/fashion-mnist-mini/train"
valid = "../data/fashion-mnist-mini/valid"
image_size = 96
batch_size = 32
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
weights = "../assets/weights/mobilenet_v2.safetensors"
[[step]]
kind = "freeze"
[[step]]
kind = "augment"
horizontal_flip = true
rotation_range = 10
[[step]]
kind = "fine_tune"
epochs = 8
lr = 1e-3
[[step]]
kind = "evaluate"
"#;

    #[test]
    fn quickstart_parses_with_defaults() {
        let r = ok(QUICKSTART);
        assert_eq!(r.path, Path::new(PATH));
        assert_eq!(r.name, "quickstart");
        assert_eq!(r.seed, 42);
        assert_eq!(
            r.data,
            DataConfig {
                csv: None,
                test: None,
                train: PathBuf::from("/x/y/../data/fashion-mnist-mini/train"),
                valid: Some(PathBuf::from("/x/y/../data/fashion-mnist-mini/valid")),
                valid_split: 0.2,
                image_size: 96,
                batch_size: 32,
                max_per_class: None,
                workers: None,
                cache: ImageCache::Auto,
            }
        );
        let kinds: Vec<_> = r.steps.iter().map(|s| s.kind.name()).collect();
        assert_eq!(kinds, ["backbone", "freeze", "augment", "fine_tune", "evaluate"]);
        let lines: Vec<_> = r.steps.iter().map(|s| s.line).collect();
        assert_eq!(lines, [8, 12, 14, 18, 22]);
        assert_eq!(
            r.steps[0].kind,
            StepKind::Backbone(BackboneStep {
                arch: "mobilenet_v2".into(),
                weights: Some(WeightsSource::Path(PathBuf::from("/x/y/../assets/weights/mobilenet_v2.safetensors"))),
                strict: true,
                drop_path: 0.0,
                head: HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.2, batchnorm: false },
            })
        );
        assert_eq!(r.steps[1].kind, StepKind::Freeze(FreezeStep { up_to: FreezePoint::All, train_bn: false }));
        assert_eq!(
            r.steps[2].kind,
            StepKind::Augment(AugmentConfig {
                horizontal_flip: true,
                rotation_range: 10.0,
                ..AugmentConfig::default()
            })
        );
        assert_eq!(
            r.steps[3].kind,
            StepKind::FineTune(FineTuneConfig {
                epochs: 8,
                optimizer: OptimizerParams {
                    kind: Optimizer::Adam,
                    momentum: 0.9,
                    nesterov: false,
                    weight_decay: 0.0,
                    beta1: 0.9,
                    beta2: 0.999,
                    no_decay_bn_bias: false,
                },
                lr: Lr::Fixed(1e-3),
                batch_size: None,
                image_size: None,
                label_smoothing: 0.0,
                schedule: ScheduleParams {
                    kind: Schedule::Constant,
                    warmup_epochs: 0,
                    step_size: 2,
                    gamma: 0.1,
                    min_lr: 0.0,
                    one_cycle: OneCycle::default(),
                    restart_epochs: 8,
                    restart_mult: 1,
                },
                early_stopping: None,
                time_limit_secs: None,
                augment_views: None,
                ..FineTuneConfig::default()
            })
        );
        assert_eq!(
            r.steps[4].kind,
            StepKind::Evaluate(EvaluateConfig {
                top_k: None,
                mistakes: 25,
                tta: false,
                tta_views: 0,
                split: EvalSplit::Valid
            })
        );
    }

    #[test]
    fn data_defaults() {
        let r = ok(&format!("{HEAD}{BACKBONE}"));
        assert_eq!(r.seed, 0);
        assert_eq!(r.data.train, PathBuf::from("/x/y/d"));
        assert_eq!(r.data.valid, None);
        assert_eq!(r.data.valid_split, 0.2);
        assert_eq!(r.data.image_size, 224);
        assert_eq!(r.data.batch_size, 32);
    }

    #[test]
    fn data_settings_and_path_resolution() {
        let text = format!(
            "name = \"a.b-c_1\"\n[data]\ntrain = \"/abs/train\"\nvalid_split = 0.25\nmax_per_class = 10\nworkers = 3\n{BACKBONE}"
        );
        let r = ok(&text);
        assert_eq!(r.name, "a.b-c_1");
        assert_eq!(r.data.train, PathBuf::from("/abs/train"));
        assert_eq!(r.data.valid_split, 0.25);
        assert_eq!(r.data.max_per_class, Some(10));
        assert_eq!(r.data.workers, Some(3));
        // A bare file name resolves against the current directory.
        let r = parse(&format!("{HEAD}{BACKBONE}"), Path::new("recipe.toml")).expect("valid");
        assert_eq!(r.data.train, PathBuf::from("d"));
    }

    #[test]
    fn data_inline_table_is_accepted() {
        let r = ok(&format!("name = \"t\"\ndata = {{ train = \"d\", image_size = 64 }}\n{BACKBONE}"));
        assert_eq!(r.data.image_size, 64);
    }

    #[test]
    fn malformed_toml_points_at_parser_position() {
        assert_eq!(err("name = \"t\"\nseed = [1,\n"), (3, 1, "invalid array; expected `]`".into()));
        let (line, col, msg) = err("name = \"t\"\nname = \"u\"\n");
        assert_eq!((line, col), (2, 1));
        assert!(msg.contains("duplicate key `name`"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(err("a = "), (1, 5, "invalid TOML syntax".into()));
    }

    #[test]
    fn unknown_keys_suggest_or_list() {
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"augment\"\nrotaton_range = 10\n"));
        assert_eq!((line, col), (9, 1));
        assert_eq!(msg, "unknown key `rotaton_range` in augment step; did you mean `rotation_range`?");
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"evaluate\"\n  bogus = 1\n"));
        assert_eq!((line, col), (9, 3));
        assert_eq!(
            msg,
            "unknown key `bogus` in evaluate step; expected one of: kind, top_k, mistakes, split, tta, tta_views"
        );
        let (line, col, msg) = err(&format!("nmae = \"x\"\n{HEAD}"));
        assert_eq!((line, col), (1, 1));
        assert_eq!(msg, "unknown key `nmae` at top level; did you mean `name`?");
        let (line, col, msg) = err(&format!("{HEAD}image_sise = 64\n{BACKBONE}"));
        assert_eq!((line, col), (4, 1));
        assert_eq!(msg, "unknown key `image_sise` in [data]; did you mean `image_size`?");
        let (_, _, msg) = err(&format!(
            "{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\nhead = {{ pooling = \"avg\", hiden = [1] }}\n"
        ));
        assert_eq!(msg, "unknown key `head.hiden` in backbone step; did you mean `head.hidden`?");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"augment\"\ncolor_jitter = { hues = 0.1 }\n"));
        assert_eq!(msg, "unknown key `color_jitter.hues` in augment step; did you mean `color_jitter.hue`?");
    }

    #[test]
    fn wrong_types_point_at_the_value() {
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nlr = \"fast\"\n"));
        assert_eq!((line, col), (9, 6));
        assert_eq!(
            msg,
            "`lr` must be a number, [low, high], or \"suggested\" (after an lr_find step), found string \"fast\""
        );
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nepochs = 8.0\n"));
        assert_eq!((line, col), (9, 10));
        assert_eq!(msg, "`epochs` must be an integer, found float 8.0");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"augment\"\nhorizontal_flip = \"yes\"\n"));
        assert_eq!(msg, "`horizontal_flip` must be a boolean (true or false), found string \"yes\"");
        let (line, col, msg) = err("name = 3\n");
        assert_eq!((line, col), (1, 8));
        assert_eq!(msg, "`name` must be a string, found integer 3");
        let (_, _, msg) = err(&format!("{HEAD}batch_size = [32]\n{BACKBONE}"));
        assert_eq!(msg, "`batch_size` must be an integer, found array [32]");
        let (_, _, msg) = err("name = \"t\"\ndata = 1\n");
        assert_eq!(msg, "`data` must be a table ([data]), found integer 1");
        let (_, _, msg) = err(&format!("step = 1\n{HEAD}"));
        assert_eq!(msg, "`step` must be an array of tables ([[step]]), found integer 1");
        let (_, _, msg) = err(&format!("step = [1]\n{HEAD}"));
        assert_eq!(msg, "`step[0]` must be a table, found integer 1");
    }

    #[test]
    fn out_of_range_values() {
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nlr = -0.1\n"));
        assert_eq!((line, col), (9, 6));
        assert_eq!(msg, "`lr` must be > 0, found -0.1");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nlr = 50\n"));
        assert_eq!(msg, "`lr` must be <= 10, found 50");
        let (line, col, msg) = err(&format!("{HEAD}valid_split = 1.5\n{BACKBONE}"));
        assert_eq!((line, col), (4, 15));
        assert_eq!(msg, "`valid_split` must be in (0, 1), found 1.5");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"augment\"\nrotation_range = 400\n"));
        assert_eq!(msg, "`rotation_range` must be within 0..=360, found 400");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nepochs = 0\n"));
        assert_eq!(msg, "`epochs` must be >= 1, found 0");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nepochs = 1000000\n"));
        assert_eq!(msg, "`epochs` must be <= 100000, found 1000000");
        let (_, _, msg) = err(&format!("{HEAD}image_size = 8\n{BACKBONE}"));
        assert_eq!(msg, "`image_size` must be within 16..=1024, found 8");
        let (_, _, msg) = err(&format!("seed = -1\n{HEAD}"));
        assert_eq!(msg, "`seed` must be >= 0, found -1");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"fine_tune\"\nlr = inf\n"));
        assert_eq!(msg, "`lr` must be a finite number, found inf");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"augment\"\ncolor_jitter = { hue = 0.6 }\n"));
        assert_eq!(msg, "`color_jitter.hue` must be within 0..=0.5, found 0.6");
        let (_, _, msg) = err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\nhidden = [128, 0]\n"));
        assert_eq!(msg, "`hidden[1]` must be >= 1, found 0");
        let (_, _, msg) = err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\ndropout = 1\n"));
        assert_eq!(msg, "`dropout` must be in [0, 1), found 1");
    }

    #[test]
    fn missing_required_keys() {
        assert_eq!(err("seed = 1\n"), (1, 1, "missing key `name` at top level".into()));
        assert_eq!(err("name = \"t\"\n"), (1, 1, "missing table `[data]` (it must set at least `train`)".into()));
        assert_eq!(err("name = \"t\"\n\n[data]\nvalid = \"v\"\n"), (3, 1, "missing key `train` in [data]".into()));
        let (line, col, msg) = err(&format!("{HEAD}\n[[step]]\nkind = \"backbone\"\n"));
        assert_eq!((line, col), (5, 1));
        assert_eq!(msg, "missing key `arch` in backbone step");
        let (line, col, msg) = err(&with_step("[[step]]\nepochs = 3\n"));
        assert_eq!((line, col), (7, 1));
        assert_eq!(msg, "missing key `kind` in step #2");
    }

    #[test]
    fn missing_or_empty_steps() {
        assert_eq!(err(HEAD), (1, 1, "recipe has no [[step]]".into()));
        assert_eq!(err("name = \"t\"\nstep = []\n[data]\ntrain = \"d\"\n"), (2, 8, "recipe has no [[step]]".into()));
    }

    #[test]
    fn unknown_step_kind() {
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"finetune\"\n"));
        assert_eq!((line, col), (8, 8));
        assert_eq!(
            msg,
            "unknown step kind `finetune`; did you mean `fine_tune`? expected one of: backbone, freeze, augment, lr_find, fine_tune, evaluate"
        );
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"zzz\"\n"));
        assert_eq!(
            msg,
            "unknown step kind `zzz`; expected one of: backbone, freeze, augment, lr_find, fine_tune, evaluate"
        );
    }

    #[test]
    fn steps_before_backbone_are_rejected() {
        for kind in ["freeze", "fine_tune", "evaluate"] {
            let (line, col, msg) = err(&format!("{HEAD}[[step]]\nkind = \"{kind}\"\n{BACKBONE}"));
            assert_eq!((line, col), (5, 8), "{kind}");
            assert_eq!(msg, format!("{kind} step needs a backbone step before it"));
        }
        // Augmentation is about data, not the model, so it may come first;
        // evaluating without fine-tuning is allowed too.
        let r = ok(&format!("{HEAD}[[step]]\nkind = \"augment\"\n{BACKBONE}[[step]]\nkind = \"evaluate\"\n"));
        assert_eq!(r.steps.len(), 3);
    }

    #[test]
    fn inline_array_of_step_tables() {
        let r = ok(&format!(
            "step = [{{ kind = \"backbone\", arch = \"vgg19\" }}, {{ kind = \"evaluate\", top_k = 3 }}]\n{HEAD}"
        ));
        assert_eq!(r.steps.len(), 2);
        assert_eq!(
            r.steps[1].kind,
            StepKind::Evaluate(EvaluateConfig {
                top_k: Some(3),
                mistakes: 25,
                tta: false,
                tta_views: 0,
                split: EvalSplit::Valid
            })
        );
    }

    #[test]
    fn run_name_rules() {
        let (line, col, msg) = err("name = \"my run\"\n");
        assert_eq!((line, col), (1, 8));
        assert!(msg.starts_with("`name` may only contain letters, digits"), "{msg}");
        assert_eq!(err("name = \"\"\n").2, "`name` must not be empty");
        assert_eq!(err("name = \"..\"\n").2, "`name` cannot consist only of dots, found string \"..\"");
    }

    #[test]
    fn valid_and_valid_split_conflict() {
        let (line, col, msg) = err(&format!("{HEAD}valid = \"v\"\nvalid_split = 0.1\n{BACKBONE}"));
        assert_eq!((line, col), (5, 1));
        assert!(msg.starts_with("`valid_split` cannot be combined with `valid`"), "{msg}");
    }

    #[test]
    fn backbone_arch_and_weights() {
        let (line, col, msg) = err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"mobilenetv2\"\n"));
        assert_eq!((line, col), (6, 8));
        assert!(
            msg.starts_with("unknown arch `mobilenetv2`; did you mean `mobilenet_v2`? expected one of: mobilenet_v2,"),
            "{msg}"
        );
        let b = backbone_step("arch = \"resnet50\"\nweights = \"hf:timm/resnet50.a1_in1k\"\nstrict = false\n");
        assert_eq!(b.weights, Some(WeightsSource::Hub { repo: "timm/resnet50.a1_in1k".into(), file: None }));
        assert!(!b.strict);
        let b = backbone_step("arch = \"resnet50\"\nweights = \"hf:org/repo:model.safetensors\"\n");
        assert_eq!(
            b.weights,
            Some(WeightsSource::Hub { repo: "org/repo".into(), file: Some("model.safetensors".into()) })
        );
        let b = backbone_step("arch = \"resnet50\"\nweights = \"https://example.com/w.safetensors\"\n");
        assert_eq!(b.weights, Some(WeightsSource::Url("https://example.com/w.safetensors".into())));
        let b = backbone_step("arch = \"resnet50\"\nweights = \"w/r50.safetensors\"\n");
        assert_eq!(b.weights, Some(WeightsSource::Path(PathBuf::from("/x/y/w/r50.safetensors"))));
        assert_eq!(backbone_step("arch = \"resnet50\"\n").weights, None);
        for bad in ["hf:", "hf:org", "hf:/repo", "hf:org/", "hf:a/b/c", "hf:org/repo:"] {
            let (line, col, msg) =
                err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\nweights = \"{bad}\"\n"));
            assert_eq!((line, col), (7, 11), "{bad}");
            assert!(msg.starts_with("`weights` hub reference must look like"), "{bad}: {msg}");
        }
        let (_, _, msg) =
            err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\nweights = \"s3://b/w\"\n"));
        assert!(msg.starts_with("`weights` URL scheme `s3` is not supported"), "{msg}");
        let (_, _, msg) = err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\nweights = \"\"\n"));
        assert!(msg.starts_with("`weights` must not be empty"), "{msg}");
    }

    #[test]
    fn backbone_head_flat_or_nested() {
        let b = backbone_step("arch = \"vgg16\"\npooling = \"flatten\"\nhidden = [256, 128]\ndropout = 0.5\n");
        assert_eq!(
            b.head,
            HeadConfig { pooling: Pooling::Flatten, hidden: vec![256, 128], dropout: 0.5, batchnorm: false }
        );
        let b = backbone_step("arch = \"vgg16\"\nhead = { pooling = \"flatten\", hidden = [64] }\n");
        assert_eq!(b.head, HeadConfig { pooling: Pooling::Flatten, hidden: vec![64], dropout: 0.2, batchnorm: false });
        let b = backbone_step("arch = \"vgg16\"\n[step.head]\ndropout = 0\n");
        assert_eq!(b.head.dropout, 0.0);
        let (line, col, msg) = err(&format!(
            "{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\ndropout = 0.1\nhead = {{ dropout = 0.3 }}\n"
        ));
        assert_eq!((line, col), (8, 10));
        assert_eq!(msg, "`head.dropout` repeats `dropout` set directly on the step; set it in one place only");
        let (_, _, msg) = err(&format!("{HEAD}[[step]]\nkind = \"backbone\"\narch = \"vgg16\"\npooling = \"max\"\n"));
        assert_eq!(msg, "`pooling` must be one of \"avg\", \"flatten\", \"concat\", found string \"max\"");
    }

    #[test]
    fn freeze_variants() {
        let up_to = |body: &str| match second_step(&format!("[[step]]\nkind = \"freeze\"\n{body}")) {
            StepKind::Freeze(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(up_to("up_to = \"none\"\n").up_to, FreezePoint::None);
        assert_eq!(up_to("up_to = \"all\"\ntrain_bn = true\n"), FreezeStep { up_to: FreezePoint::All, train_bn: true });
        assert_eq!(up_to("up_to = \"features.14\"\n").up_to, FreezePoint::Block("features.14".into()));
        assert_eq!(up_to("up_to = 0\n").up_to, FreezePoint::Index(0));
        assert_eq!(up_to("up_to = 7\n").up_to, FreezePoint::Index(7));
        let (line, col, msg) = err(&with_step("[[step]]\nkind = \"freeze\"\nup_to = -1\n"));
        assert_eq!((line, col), (9, 9));
        assert_eq!(msg, "`up_to` must be >= 0, found -1");
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"freeze\"\nup_to = 1.5\n"));
        assert!(msg.starts_with("`up_to` must be \"all\", \"none\", a block name"), "{msg}");
        assert!(msg.ends_with("found float 1.5"), "{msg}");
    }

    #[test]
    fn augment_defaults_and_settings() {
        assert_eq!(aug(""), AugmentConfig::default());
        assert_eq!(aug("").zoom_range, (1.0, 1.0));
        let a = aug("width_shift_range = 0.1\nheight_shift_range = 0.2\nshear_range = 10\nzoom_range = 0.25\n\
             vertical_flip = true\nfill_mode = \"constant\"\ncval = 255\nbrightness_range = [0.5, 1.5]\n\
             random_resized_crop = true\ncolor_jitter = { brightness = 0.2, hue = 0.05 }\n");
        assert_eq!(a.width_shift_range, 0.1);
        assert_eq!(a.height_shift_range, 0.2);
        assert_eq!(a.shear_range, 10.0);
        assert_eq!(a.zoom_range, (0.75, 1.25));
        assert!(a.vertical_flip);
        assert_eq!(a.fill_mode, FillMode::Constant);
        assert_eq!(a.cval, 255.0);
        assert_eq!(a.brightness_range, Some((0.5, 1.5)));
        assert_eq!(a.random_resized_crop, Some(CropConfig { scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0) }));
        assert_eq!(a.color_jitter, Some(ColorJitter { brightness: 0.2, contrast: 0.0, saturation: 0.0, hue: 0.05 }));
        assert_eq!(aug("zoom_range = [0.8, 1.2]\n").zoom_range, (0.8, 1.2));
        assert_eq!(aug("random_resized_crop = false\n").random_resized_crop, None);
        assert_eq!(
            aug("random_resized_crop = { scale = [0.5, 1] }\n").random_resized_crop,
            Some(CropConfig { scale: (0.5, 1.0), ratio: (0.75, 4.0 / 3.0) })
        );
        assert_eq!(
            aug("[step.random_resized_crop]\nratio = [1, 1]\n").random_resized_crop,
            Some(CropConfig { scale: (0.08, 1.0), ratio: (1.0, 1.0) })
        );
    }

    #[test]
    fn augment_errors() {
        let e = |body: &str| err(&with_step(&format!("[[step]]\nkind = \"augment\"\n{body}")));
        assert_eq!(
            e("zoom_range = [1.2, 0.8]\n"),
            (9, 14, "`zoom_range` must satisfy lo <= hi, found [1.2, 0.8]".into())
        );
        assert_eq!(e("zoom_range = [0, 1]\n"), (9, 15, "`zoom_range[0]` must be > 0, found 0".into()));
        assert_eq!(e("zoom_range = 1\n").2, "`zoom_range` must be in [0, 1), found 1");
        assert_eq!(
            e("zoom_range = \"big\"\n").2,
            "`zoom_range` must be a number z (zoom 1-z..1+z) or a 2-element array [lo, hi], found string \"big\""
        );
        assert_eq!(e("shear_range = 91\n").2, "`shear_range` must be within 0..=90, found 91");
        assert_eq!(e("width_shift_range = 1.1\n").2, "`width_shift_range` must be within 0..=1, found 1.1");
        assert_eq!(e("cval = 256\n").2, "`cval` must be within 0..=255, found 256");
        assert_eq!(
            e("fill_mode = \"reflct\"\n").2,
            "`fill_mode` must be one of \"nearest\", \"reflect\", \"wrap\", \"constant\", found string \"reflct\"; did you mean \"reflect\"?"
        );
        assert_eq!(
            e("brightness_range = [1.5, 0.5]\n").2,
            "`brightness_range` must satisfy lo <= hi, found [1.5, 0.5]"
        );
        assert_eq!(e("brightness_range = [-1, 0.5]\n").2, "`brightness_range[0]` must be >= 0, found -1");
        assert_eq!(
            e("random_resized_crop = { scale = [0.5, 1.5] }\n").2,
            "`random_resized_crop.scale[1]` must be in (0, 1], found 1.5"
        );
        assert!(e("random_resized_crop = 1\n").2.starts_with("`random_resized_crop` must be true, false or a table"));
        assert!(e("color_jitter = true\n").2.starts_with("`color_jitter` must be a table such as"));
        assert_eq!(e("color_jitter = { contrast = -0.1 }\n").2, "`color_jitter.contrast` must be >= 0, found -0.1");
    }

    #[test]
    fn fine_tune_settings_and_defaults() {
        let t = tune("optimizer = \"adamw\"\nepochs = 12\nschedule = \"cosine\"\nmin_lr = 1e-6\nwarmup_epochs = 2\n");
        assert_eq!(t.optimizer.kind, Optimizer::AdamW);
        assert_eq!(t.optimizer.weight_decay, 0.01);
        assert_eq!(t.schedule.kind, Schedule::Cosine);
        assert_eq!(t.schedule.step_size, 4);
        assert_eq!(t.schedule.min_lr, 1e-6);
        assert_eq!(t.schedule.warmup_epochs, 2);
        let t = tune("optimizer = \"sgd\"\nmomentum = 0.8\nnesterov = true\nweight_decay = 5e-4\nbatch_size = 16\n");
        let o = t.optimizer;
        assert_eq!((o.kind, o.momentum, o.nesterov, o.weight_decay), (Optimizer::Sgd, 0.8, true, 5e-4));
        assert_eq!(t.batch_size, Some(16));
        let t = tune("epochs = 1\nschedule = \"step\"\ngamma = 0.5\n");
        assert_eq!((t.schedule.step_size, t.schedule.gamma), (1, 0.5));
        let t = tune("patience = 3\n");
        assert_eq!(
            t.early_stopping,
            Some(EarlyStopping { patience: 3, monitor: Monitor::ValidLoss, restore_best: true })
        );
        let t = tune("patience = 2\nmonitor = \"valid_accuracy\"\nrestore_best = false\ntime_limit = 90\nlabel_smoothing = 0.1\n");
        assert_eq!(
            t.early_stopping,
            Some(EarlyStopping { patience: 2, monitor: Monitor::ValidAccuracy, restore_best: false })
        );
        assert_eq!(t.time_limit_secs, Some(90.0));
        assert_eq!(t.label_smoothing, 0.1);
        assert_eq!(tune("").early_stopping, None);
    }

    #[test]
    fn fine_tune_cross_field_rules() {
        let e = |body: &str| err(&with_step(&format!("[[step]]\nkind = \"fine_tune\"\n{body}")));
        assert_eq!(e("nesterov = true\n"), (9, 12, "`nesterov = true` requires optimizer = \"sgd\"".into()));
        assert_eq!(
            e("optimizer = \"sgd\"\nmomentum = 0\nnesterov = true\n"),
            (11, 12, "`nesterov = true` requires momentum > 0".into())
        );
        assert_eq!(
            e("epochs = 3\nwarmup_epochs = 3\n"),
            (10, 17, "`warmup_epochs` must be < epochs (3), found 3".into())
        );
        assert_eq!(e("lr = 1e-3\nmin_lr = 1e-2\n"), (10, 10, "`min_lr` must be < lr (1e-3), found 1e-2".into()));
        assert_eq!(
            e("monitor = \"valid_loss\"\n"),
            (9, 1, "`monitor` only applies to early stopping; add `patience = N` to enable it".into())
        );
        assert_eq!(
            e("restore_best = true\n").2,
            "`restore_best` only applies to early stopping; add `patience = N` to enable it"
        );
        assert_eq!(e("gamma = 0\n").2, "`gamma` must be in (0, 1], found 0");
        assert_eq!(e("time_limit = 0\n").2, "`time_limit` must be > 0, found 0");
        assert_eq!(e("beta2 = 1\n").2, "`beta2` must be in [0, 1), found 1");
        assert_eq!(
            e("optimizer = \"Adam\"\n").2,
            "`optimizer` must be one of \"sgd\", \"adam\", \"adamw\", found string \"Adam\"; did you mean \"adam\"?"
        );
    }

    #[test]
    fn evaluate_settings() {
        assert_eq!(
            second_step("[[step]]\nkind = \"evaluate\"\ntop_k = 3\nmistakes = 0\n"),
            StepKind::Evaluate(EvaluateConfig {
                top_k: Some(3),
                mistakes: 0,
                tta: false,
                tta_views: 0,
                split: EvalSplit::Valid
            })
        );
        let (_, _, msg) = err(&with_step("[[step]]\nkind = \"evaluate\"\ntop_k = 0\n"));
        assert_eq!(msg, "`top_k` must be >= 1, found 0");
    }

    #[test]
    fn columns_count_characters() {
        // The two-byte "é" in the comment must count as one column.
        let (line, col, _) = err(&with_step("[[step]]\nkind = \"fine_tune\"\n\"é\" = 1\n"));
        assert_eq!((line, col), (9, 1));
        let (line, col, _) = err(&with_step("[[step]]\nkind = \"fine_tune\"\n  lr = \"é\" \n"));
        assert_eq!((line, col), (9, 8));
        let (line, col, _) = err("name = \"t\" # é é é\nseed = \"x\"\n");
        assert_eq!((line, col), (2, 8));
        let (_, col, _) = err("name = \"t\"\nseed = \"é\"; x\n");
        assert_eq!(col, 11);
    }

    #[test]
    fn fingerprints_ignore_formatting_but_not_values() {
        let a = ok(QUICKSTART);
        let reformatted = QUICKSTART
            .replace("kind = \"fine_tune\"\nepochs = 8\nlr = 1e-3", "lr=0.001   # same\nkind='fine_tune'\n\n  epochs=8")
            .replace("rotation_range = 10", "rotation_range = 10.0")
            .replace("seed = 42", "seed = 42 # comment");
        let b = ok(&reformatted);
        assert_ne!(a.steps[4].line, b.steps[4].line);
        for (x, y) in a.steps.iter().zip(&b.steps) {
            assert_eq!(x.fingerprint, y.fingerprint, "{}", x.kind.name());
        }
        // Spelling out a default changes nothing either.
        let c = ok(&QUICKSTART.replace("kind = \"freeze\"", "kind = \"freeze\"\nup_to = \"all\"\ntrain_bn = false"));
        assert_eq!(a.steps[1].fingerprint, c.steps[1].fingerprint);
        let d = ok(&QUICKSTART.replace("epochs = 8", "epochs = 9"));
        assert_ne!(a.steps[3].fingerprint, d.steps[3].fingerprint);
        assert_eq!(a.steps[2].fingerprint, d.steps[2].fingerprint);
    }

    #[test]
    fn first_change_detection() {
        let a = ok(QUICKSTART);
        assert_eq!(a.step_index_of_first_change(&ok(&QUICKSTART.replace("seed = 42", "seed=42"))), None);
        assert_eq!(a.step_index_of_first_change(&ok(&QUICKSTART.replace("lr = 1e-3", "lr = 2e-3"))), Some(3));
        assert_eq!(a.step_index_of_first_change(&ok(&QUICKSTART.replace("rotation_range = 10", ""))), Some(2));
        assert_eq!(a.step_index_of_first_change(&ok(&QUICKSTART.replace("seed = 42", "seed = 1"))), Some(0));
        assert_eq!(a.step_index_of_first_change(&ok(&QUICKSTART.replace("image_size = 96", ""))), Some(0));
        assert_eq!(a.step_index_of_first_change(&ok(&QUICKSTART.replace("\"quickstart\"", "\"other\""))), Some(0));
        let longer = ok(&format!("{QUICKSTART}[[step]]\nkind = \"evaluate\"\ntop_k = 1\n"));
        assert_eq!(a.step_index_of_first_change(&longer), Some(5));
        assert_eq!(longer.step_index_of_first_change(&a), Some(5));
        let shorter = ok(QUICKSTART.trim_end().trim_end_matches("[[step]]\nkind = \"evaluate\""));
        assert_eq!(a.step_index_of_first_change(&shorter), Some(4));
    }

    /// Pseudo-random TOML-ish text must produce `Ok` or `Err`, never a panic.
    /// Half the inputs are raw fragment soup (mostly syntax errors); the other
    /// half are well-formed `key = value` lines under random headers, which
    /// reach the schema checks with every kind of wrong value.
    #[test]
    fn garbage_never_panics() {
        #[rustfmt::skip]
        const KEYS: &[&str] = &[
            "name", "seed", "data", "step", "train", "valid", "valid_split", "image_size", "batch_size",
            "max_per_class", "workers", "kind", "arch", "weights", "strict", "pooling", "hidden", "dropout",
            "head", "up_to", "train_bn", "rotation_range", "zoom_range", "fill_mode", "cval",
            "brightness_range", "random_resized_crop", "color_jitter", "epochs", "optimizer", "lr",
            "momentum", "nesterov", "schedule", "warmup_epochs", "min_lr", "patience", "monitor",
            "restore_best", "time_limit", "top_k", "mistakes", "head.dropout", "\"é\"", "rotaton_range",
        ];
        #[rustfmt::skip]
        const VALUES: &[&str] = &[
            "\"t\"", "\"\"", "\"backbone\"", "\"fine_tune\"", "\"augment\"", "\"freeze\"", "\"evaluate\"",
            "\"vgg16\"", "\"hf:\"", "\"hf:a/b:c\"", "\"https://\"", "\"x://y\"", "\"all\"", "\"sgd\"",
            "\"cosine\"", "1", "0", "-1", "9223372036854775807", "1e308", "-0.0", "nan", "inf", "0.5",
            "true", "[]", "[1]", "[1, 2]", "[2, 1]", "[0.5, \"x\"]", "[[1], [2]]", "{}",
            "{ scale = [2, 1] }", "{ hue = 0.6 }", "{ kind = \"backbone\" }", "1979-05-27", "'''é'''",
        ];
        #[rustfmt::skip]
        const FRAGMENTS: &[&str] = &[
            "=", "[data]", "[[step]]", "[step.head]", "\n", " ", "#", "[", "]", "{", "}", ",", ".", "'",
            "\"\"\"", "é", "\u{0}", "\r\n", "name", "\"t\"", "kind", "\"backbone\"", "1e309", "[1, 2]",
        ];
        const HEADERS: &[&str] = &["[data]", "[[step]]", "[step.head]", "[step.color_jitter]", "[other]"];

        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            // Knuth's MMIX LCG; the high bits are the good ones.
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n
        };
        let valid_prefix = format!("{HEAD}{BACKBONE}");
        let (mut oks, mut well_formed) = (0, 0);
        for i in 0..800 {
            let mut text = if next(2) == 0 { String::new() } else { valid_prefix.clone() };
            for _ in 0..next(30) {
                if i % 2 == 0 {
                    text.push_str(FRAGMENTS[next(FRAGMENTS.len())]);
                } else if next(6) == 0 {
                    text.push_str(HEADERS[next(HEADERS.len())]);
                    text.push('\n');
                } else {
                    let line = format!("{} = {}\n", KEYS[next(KEYS.len())], VALUES[next(VALUES.len())]);
                    text.push_str(&line);
                }
            }
            if ImDocument::parse(text.as_str()).is_ok() {
                well_formed += 1;
            }
            match parse(&text, Path::new(PATH)) {
                Ok(_) => oks += 1,
                Err(e) => {
                    let (line, col) = e.line_col().expect("parse errors carry a position");
                    assert!(line >= 1 && col >= 1);
                    assert!(line <= text.lines().count().max(1) + 1, "line {line} past the end of {text:?}");
                    let message = e.to_string();
                    assert!(!message.contains('\n'), "multi-line message for {text:?}: {message}");
                }
            }
        }
        // The generator must actually reach past the TOML parser.
        assert!(oks > 10 && well_formed > 100, "ok {oks}, well-formed {well_formed}");
    }
}
