//! How steps are described: one-line summaries for people, and content
//! fingerprints for hot reload.

use super::{
    AugmentConfig, BackboneStep, ClassWeights, FillMode, FineTuneConfig, FreezePoint, FreezeStep, Lr, Monitor,
    Optimizer, Pooling, Sampler, Schedule, StepKind, WeightsSource,
};

/// FNV-1a 64 of the step's `Debug` form. `Debug` covers every effective
/// setting (defaults included) and nothing about formatting, so equal
/// settings give equal fingerprints. FNV is used instead of `DefaultHasher`
/// because the latter may change between Rust releases, and fingerprints
/// should stay comparable across builds.
pub(super) fn fingerprint(kind: &StepKind) -> u64 {
    fnv1a64(format!("{kind:?}").as_bytes())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(PRIME))
}

pub(super) fn summary(kind: &StepKind) -> String {
    match kind {
        StepKind::Backbone(b) => backbone(b),
        StepKind::Freeze(f) => freeze(f),
        StepKind::Augment(a) => augment(a),
        StepKind::FineTune(t) => fine_tune(t),
        StepKind::LrFind(l) => format!("{:e} → {:e} over ≤ {} batches", l.start_lr, l.end_lr, l.num_it),
        StepKind::Evaluate(e) => {
            let top = e.top_k.map(|k| format!(" top-{k}")).unwrap_or_default();
            let tta = match (e.tta, e.tta_views) {
                (false, _) => String::new(),
                (true, 0) => " with TTA".to_string(),
                (true, n) => format!(" with TTA (mirror + {n} augmented views)"),
            };
            let split = if e.split == crate::recipe::EvalSplit::Test { " on test" } else { "" };
            format!("evaluate{split}{top}{tta}")
        }
    }
}

/// A number rounded to 4 decimals without trailing zeros (`0.9`, not
/// `0.8999999999999999`).
fn num(x: f64) -> String {
    let rounded = (x * 1e4).round() / 1e4;
    format!("{}", rounded + 0.0) // `+ 0.0` turns -0 into 0
}

fn backbone(b: &BackboneStep) -> String {
    let mut s = match &b.weights {
        None => format!("{} (random init)", b.arch),
        Some(WeightsSource::Path(p)) => format!("{} ← {}", b.arch, crate::util::paths::shown(p).display()),
        Some(WeightsSource::Hub { repo, file: None }) => format!("{} ← hf:{repo}", b.arch),
        Some(WeightsSource::Hub { repo, file: Some(file) }) => format!("{} ← hf:{repo}:{file}", b.arch),
        Some(WeightsSource::Url(url)) => format!("{} ← {url}", b.arch),
    };
    if !b.strict {
        s.push_str(", non-strict");
    }
    if b.drop_path > 0.0 {
        s.push_str(&format!(", drop_path {}", b.drop_path));
    }
    match b.head.pooling {
        Pooling::Avg => {}
        Pooling::Flatten => s.push_str(", flatten"),
        Pooling::Concat => s.push_str(", concat pooling"),
    }
    if b.head.batchnorm {
        s.push_str(", batchnorm head");
    }
    if !b.head.hidden.is_empty() {
        let sizes: Vec<String> = b.head.hidden.iter().map(usize::to_string).collect();
        s.push_str(&format!(", head {}", sizes.join("→")));
    }
    if b.head.dropout != super::schema::backbone::DROPOUT.spec.default {
        s.push_str(&format!(", dropout {}", num(b.head.dropout)));
    }
    s
}

fn freeze(f: &FreezeStep) -> String {
    let mut s = match &f.up_to {
        FreezePoint::All => "freeze all".to_string(),
        FreezePoint::None => "unfreeze all".to_string(),
        FreezePoint::Block(block) => format!("freeze up to {block}"),
        FreezePoint::Index(n) => format!("freeze first {n} blocks"),
    };
    if f.train_bn {
        s.push_str(" (train_bn)");
    }
    s
}

fn augment(a: &AugmentConfig) -> String {
    let parts: Vec<String> = augment_settings(a).into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "no augmentation".to_string()
    } else {
        parts.join(", ")
    }
}

/// The augmentation's active settings as `(setting, value)` rows, in the
/// order they apply: the one-line summary joins them, the notebook shows
/// them as a table. Empty when nothing is active.
pub fn augment_settings(a: &AugmentConfig) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    match (a.horizontal_flip, a.vertical_flip) {
        (true, true) => rows.push(("flip", "h+v".to_string())),
        (true, false) => rows.push(("flip", "h".to_string())),
        (false, true) => rows.push(("flip", "v".to_string())),
        (false, false) => {}
    }
    if a.dihedral {
        rows.push(("dihedral", "8 flips/turns".to_string()));
    }
    if a.trivial_augment {
        rows.push(("trivial_augment", "1 op, random magnitude".to_string()));
    }
    if let Some((ops, magnitude)) = a.rand_augment {
        rows.push(("rand_augment", format!("{ops} ops at {magnitude}/30")));
    }
    if a.auto_augment {
        rows.push(("auto_augment", "ImageNet policy".to_string()));
    }
    if let Some(e) = &a.random_erasing {
        rows.push(("random_erasing", format!("p {}, {}–{} of the area", num(e.p), num(e.scale.0), num(e.scale.1))));
    }
    if a.rotation_range > 0.0 {
        rows.push(("rotate", format!("±{}°", num(a.rotation_range))));
    }
    if a.width_shift_range > 0.0 || a.height_shift_range > 0.0 {
        rows.push(("shift", format!("{}×{}", num(a.width_shift_range), num(a.height_shift_range))));
    }
    if a.shear_range > 0.0 {
        rows.push(("shear", format!("{}°", num(a.shear_range))));
    }
    if a.zoom_range != (1.0, 1.0) {
        rows.push(("zoom", format!("{}–{}", num(a.zoom_range.0), num(a.zoom_range.1))));
    }
    if let Some((lo, hi)) = a.brightness_range {
        rows.push(("brightness", format!("{}–{}", num(lo), num(hi))));
    }
    if let Some(crop) = &a.random_resized_crop {
        rows.push(("crop", format!("{}–{}", num(crop.scale.0), num(crop.scale.1))));
    }
    if let Some(j) = &a.color_jitter {
        rows.push((
            "jitter",
            format!("{}/{}/{}/{}", num(j.brightness), num(j.contrast), num(j.saturation), num(j.hue)),
        ));
    }
    match a.fill_mode {
        FillMode::Nearest => {}
        FillMode::Reflect => rows.push(("fill", "reflect".to_string())),
        FillMode::Wrap => rows.push(("fill", "wrap".to_string())),
        FillMode::Constant => rows.push(("fill", num(a.cval))),
    }
    rows
}

fn fine_tune(t: &FineTuneConfig) -> String {
    let optimizer = match t.optimizer.kind {
        Optimizer::Sgd if t.optimizer.nesterov => "sgd+nesterov",
        Optimizer::Sgd => "sgd",
        Optimizer::Adam => "adam",
        Optimizer::AdamW => "adamw",
    };
    let unit = if t.epochs == 1 { "epoch" } else { "epochs" };
    let lr = match t.lr {
        Lr::Suggested(sug) => format!("lr_find {}", sug.name()),
        Lr::Range { low, high } => format!("{low:e}…{high:e}"),
        Lr::Fixed(lr) => format!("{lr:e}"),
    };
    let mut s = format!("{optimizer} lr {lr} × {} {unit}", t.epochs);
    if t.freeze_epochs > 0 {
        s = format!("{optimizer} lr {lr} × {} frozen + {} {unit}", t.freeze_epochs, t.epochs);
    }
    let sched = &t.schedule;
    match sched.kind {
        Schedule::Constant => {}
        Schedule::Step => s.push_str(&format!(", step ×{} every {}", num(sched.gamma), sched.step_size)),
        Schedule::Cosine => s.push_str(", cosine"),
        Schedule::OneCycle => s.push_str(", one-cycle"),
        Schedule::CosineRestarts => s.push_str(&format!(", cosine restarts every {}", sched.restart_epochs)),
    }
    if let Some(px) = t.image_size {
        s.push_str(&format!(", at {px}px"));
    }
    if let Some(d) = t.layer_decay {
        s.push_str(&format!(", layer decay {}", num(d)));
    }
    if let Some(c) = t.clip_grad_norm {
        s.push_str(&format!(", clip {}", num(c)));
    }
    if let Some(e) = t.ema {
        s.push_str(&format!(", ema {}", num(e)));
    }
    if let Some(m) = &t.mix {
        let parts: Vec<String> = [("mixup", m.mixup_alpha), ("cutmix", m.cutmix_alpha)]
            .iter()
            .filter(|(_, a)| *a > 0.0)
            .map(|(n, a)| format!("{n} {}", num(*a)))
            .collect();
        s.push_str(&format!(", {}", parts.join("/")));
        if m.at == crate::recipe::MixAt::Features {
            s.push_str(" at features");
        }
    }
    if t.class_weights != ClassWeights::None {
        s.push_str(", class weights");
    }
    if t.sampler == Sampler::Balanced {
        s.push_str(", balanced sampler");
    }
    if sched.warmup_epochs > 0 {
        s.push_str(&format!(", warmup {}", sched.warmup_epochs));
    }
    if let Some(es) = &t.early_stopping {
        let monitor = match es.monitor {
            Monitor::ValidLoss => "valid_loss",
            Monitor::ValidAccuracy => "valid_accuracy",
        };
        s.push_str(&format!(", patience {} on {monitor}", es.patience));
    }
    if let Some(secs) = t.time_limit_secs {
        s.push_str(&format!(", ≤ {}s", num(secs)));
    }
    match t.augment_views {
        Some(0) => s.push_str(", live augmentation"),
        Some(k) => s.push_str(&format!(", {k} cached views")),
        None => {}
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{ColorJitter, CropConfig, EarlyStopping, EvaluateConfig, HeadConfig};
    use crate::recipe::{OptimizerParams, ScheduleParams};
    use std::path::PathBuf;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    fn tune() -> FineTuneConfig {
        FineTuneConfig {
            epochs: 8,
            optimizer: OptimizerParams { no_decay_bn_bias: false, ..OptimizerParams::defaults(Optimizer::AdamW) },
            lr: Lr::Fixed(1e-3),
            batch_size: None,
            image_size: None,
            label_smoothing: 0.0,
            schedule: ScheduleParams { kind: Schedule::Cosine, step_size: 2, ..ScheduleParams::defaults(8) },
            early_stopping: None,
            time_limit_secs: None,
            augment_views: None,
            ..FineTuneConfig::default()
        }
    }

    #[test]
    fn summaries_match_documented_examples() {
        let backbone = StepKind::Backbone(BackboneStep {
            arch: "mobilenet_v2".into(),
            weights: Some(WeightsSource::Path(PathBuf::from("assets/weights/mobilenet_v2.safetensors"))),
            strict: true,
            drop_path: 0.0,
            head: HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.2, batchnorm: false },
        });
        assert_eq!(backbone.summary(), "mobilenet_v2 ← assets/weights/mobilenet_v2.safetensors");
        let freeze = StepKind::Freeze(FreezeStep { up_to: FreezePoint::Block("features.14".into()), train_bn: true });
        assert_eq!(freeze.summary(), "freeze up to features.14 (train_bn)");
        let augment = StepKind::Augment(AugmentConfig {
            horizontal_flip: true,
            rotation_range: 15.0,
            zoom_range: (1.0 - 0.1, 1.0 + 0.1),
            ..AugmentConfig::default()
        });
        assert_eq!(augment.summary(), "flip h, rotate ±15°, zoom 0.9–1.1");
        assert_eq!(StepKind::FineTune(tune()).summary(), "adamw lr 1e-3 × 8 epochs, cosine");
        let eval = StepKind::Evaluate(EvaluateConfig {
            top_k: Some(5),
            mistakes: 25,
            tta: false,
            tta_views: 0,
            split: crate::recipe::EvalSplit::Valid,
        });
        assert_eq!(eval.summary(), "evaluate top-5");
    }

    #[test]
    fn summaries_of_other_variants() {
        let backbone = StepKind::Backbone(BackboneStep {
            arch: "resnet18".into(),
            weights: Some(WeightsSource::Hub { repo: "timm/resnet18".into(), file: Some("m.safetensors".into()) }),
            strict: false,
            drop_path: 0.0,
            head: HeadConfig { pooling: Pooling::Flatten, hidden: vec![256, 64], dropout: 0.5, batchnorm: false },
        });
        assert_eq!(
            backbone.summary(),
            "resnet18 ← hf:timm/resnet18:m.safetensors, non-strict, flatten, head 256→64, dropout 0.5"
        );
        let random = StepKind::Backbone(BackboneStep {
            arch: "vgg16".into(),
            weights: None,
            strict: true,
            drop_path: 0.0,
            head: HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.2, batchnorm: false },
        });
        assert_eq!(random.summary(), "vgg16 (random init)");
        assert_eq!(
            StepKind::Freeze(FreezeStep { up_to: FreezePoint::Index(3), train_bn: false }).summary(),
            "freeze first 3 blocks"
        );
        assert_eq!(
            StepKind::Freeze(FreezeStep { up_to: FreezePoint::None, train_bn: false }).summary(),
            "unfreeze all"
        );
        assert_eq!(StepKind::Augment(AugmentConfig::default()).summary(), "no augmentation");
        let busy = AugmentConfig {
            vertical_flip: true,
            width_shift_range: 0.1,
            shear_range: 5.0,
            brightness_range: Some((0.8, 1.2)),
            random_resized_crop: Some(CropConfig::default()),
            color_jitter: Some(ColorJitter { brightness: 0.2, ..ColorJitter::default() }),
            fill_mode: FillMode::Constant,
            cval: 128.0,
            ..AugmentConfig::default()
        };
        assert_eq!(
            StepKind::Augment(busy).summary(),
            "flip v, shift 0.1×0, shear 5°, brightness 0.8–1.2, crop 0.08–1, jitter 0.2/0/0/0, fill 128"
        );
        let sgd = FineTuneConfig {
            optimizer: OptimizerParams { nesterov: true, ..OptimizerParams::defaults(Optimizer::Sgd) },
            epochs: 1,
            lr: Lr::Fixed(0.01),
            schedule: ScheduleParams { kind: Schedule::Step, step_size: 2, ..ScheduleParams::defaults(8) },
            early_stopping: Some(EarlyStopping { patience: 3, monitor: Monitor::ValidAccuracy, restore_best: true }),
            time_limit_secs: Some(60.0),
            augment_views: None,
            ..tune()
        };
        assert_eq!(
            StepKind::FineTune(sgd).summary(),
            "sgd+nesterov lr 1e-2 × 1 epoch, step ×0.1 every 2, patience 3 on valid_accuracy, ≤ 60s"
        );
        assert_eq!(
            StepKind::Evaluate(EvaluateConfig {
                top_k: None,
                mistakes: 25,
                tta: false,
                tta_views: 0,
                split: crate::recipe::EvalSplit::Valid
            })
            .summary(),
            "evaluate"
        );
    }

    #[test]
    fn fingerprint_follows_settings() {
        let a = StepKind::FineTune(tune());
        let b = StepKind::FineTune(FineTuneConfig { epochs: 9, ..tune() });
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
