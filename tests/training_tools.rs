//! The training tools of a fine_tune step, each shown to do what it says
//! (each assertion fails if the feature were a no-op): the lr_find range
//! test, discriminative rates, gradient clipping, EMA of the weights,
//! fastai's freeze_epochs shorthand, test-time augmentation and the head options.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use tlab::data::Dataset;
use tlab::lab::StepOutput;
use tlab::models::layers::ParamLoader;
use tlab::models::{build_backbone, Classifier, Head};
use tlab::recipe::{FineTuneConfig, Lr, Recipe, StepKind};
use tlab::train::cache::FeatureCache;
use tlab::train::{self, BatchCtx, Callback, FineTune, Setup, Silent};
use tlab::Lab;

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tlab-tools-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 11, 16, 8, 4);
    dir
}

const DATA: &str = "[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\nbatch_size = 8\n";

fn recipe(dir: &Path, steps: &str) -> Recipe {
    let text = format!("name = \"tools\"\nseed = 3\n{DATA}{steps}");
    let path = dir.join("r.toml");
    std::fs::write(&path, &text).unwrap();
    tlab::recipe::load(&path).unwrap()
}

fn fine_tune_config(r: &Recipe) -> FineTuneConfig {
    r.steps
        .iter()
        .find_map(|s| match &s.kind {
            StepKind::FineTune(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap()
}

/// A random-init MobileNetV2 with a fresh 3-class head, `frozen` blocks frozen.
fn classifier(frozen: usize) -> Classifier {
    let backbone = build_backbone("mobilenet_v2", &mut ParamLoader::random(5), false).unwrap();
    let cfg = tlab::recipe::HeadConfig {
        pooling: tlab::recipe::Pooling::Avg,
        hidden: Vec::new(),
        dropout: 0.0,
        batchnorm: false,
    };
    let head = Head::new(&cfg, backbone.feature_channels(), 3, 9).unwrap();
    let mut model = Classifier::new(backbone, head);
    model.freeze(frozen, false).unwrap();
    model
}

fn weights(model: &Classifier) -> Vec<(String, Vec<f32>)> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn fit(model: &mut Classifier, data: &Dataset, cfg: &FineTuneConfig, cbs: &mut [Box<dyn Callback + '_>]) {
    let mut cache = FeatureCache::default();
    let setup =
        Setup { data, aug: None, cfg, batch_size: 8, seed: 1, view_seed: 1, later_prefixes: &[], cache: &mut cache };
    FineTune::prepare(model, setup, &mut Silent, None).unwrap().run(cbs).unwrap();
}

#[test]
fn lr_find_suggests_restores_the_exact_weights_and_feeds_the_next_step() {
    let dir = workdir("lrfind");
    let weights_file = dir.join("w.safetensors");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), &weights_file).unwrap();
    let steps = "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\n\
                 [[step]]\nkind = \"freeze\"\nup_to = \"features.16\"\n\
                 [[step]]\nkind = \"lr_find\"\nnum_it = 30\n\
                 [[step]]\nkind = \"fine_tune\"\nepochs = 1\nlr = \"suggested\"\n";
    recipe(&dir, steps);
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_step(0, &mut Silent).unwrap();
    lab.run_step(1, &mut Silent).unwrap();
    let before = weights(lab.model().unwrap());
    lab.run_step(2, &mut Silent).unwrap();
    assert_eq!(weights(lab.model().unwrap()), before, "lr_find trained, then put every weight and statistic back");
    let StepOutput::LrFind(found) = &lab.result(2).unwrap().output else { panic!("not an lr_find result") };
    assert!(found.lrs.len() >= 5 && found.lrs.len() <= 30);
    assert!(found.lrs.windows(2).all(|w| w[1] > w[0]), "the rate rises exponentially");
    assert_eq!(found.suggestions.len(), 3);
    let valley = found.suggestion(tlab::recipe::LrSuggestion::Valley).unwrap();
    assert!(valley > found.lrs[0] && valley <= *found.lrs.last().unwrap(), "{valley:e}");
    lab.run_step(3, &mut Silent).unwrap();
    let lr = lab.history().last().unwrap().1.lr;
    assert!((lr - valley).abs() < 1e-12 * valley.max(1.0), "fine_tune trained at the valley: {lr:e} vs {valley:e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records every trainable weight after each optimizer step.
struct Trace {
    after_steps: Vec<Vec<Tensor>>,
}
impl Callback for Trace {
    fn after_step(&mut self, ctx: &mut BatchCtx<'_>) -> tlab::Result<()> {
        let mutable = ctx.model.mutable_named_vars();
        self.after_steps.push(mutable.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect());
        Ok(())
    }
}

#[test]
fn discriminative_rates_scale_each_groups_step_and_clipping_bounds_it() {
    let dir = workdir("disc");
    let r = recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"fine_tune\"\n\
                          epochs = 1\noptimizer = \"sgd\"\nmomentum = 0\nlr = [1e-4, 1e-2]\n",
    );
    let data = Dataset::load(&r.data, r.seed).unwrap();
    let disc = fine_tune_config(&r);
    let plain = FineTuneConfig { lr: Lr::Fixed(1e-2), ..disc.clone() };
    // One batch: every image, so both runs take the same single gradient step.
    let one_batch = |cfg: &FineTuneConfig| {
        let mut model = classifier(16);
        let start = weights(&model);
        let mut cache = FeatureCache::default();
        let setup = Setup {
            data: &data,
            aug: None,
            cfg,
            batch_size: data.train.len(),
            seed: 1,
            view_seed: 1,
            later_prefixes: &[],
            cache: &mut cache,
        };
        let mut cbs = train::callbacks::standard(cfg, None);
        FineTune::prepare(&mut model, setup, &mut Silent, None).unwrap().run(&mut cbs).unwrap();
        let groups = model.trainable_groups().len();
        let end = weights(&model);
        (start, end, groups)
    };
    let (start, end_disc, groups) = one_batch(&disc);
    let (_, end_plain, _) = one_batch(&plain);
    assert_eq!(groups, 4, "blocks features.16, features.17, features.18 and the head");
    let delta = |end: &[(String, Vec<f32>)], name: &str| -> f64 {
        let i = start.iter().position(|(n, _)| n == name).unwrap();
        start[i].1.iter().zip(&end[i].1).map(|(a, b)| f64::from((a - b).abs())).sum()
    };
    // Group g of G trains at lr · (low/high)^((G-1-g)/(G-1)).
    for (name, scale) in [
        ("features.16.conv.0.0.weight", 1e-2),
        ("features.18.0.weight", 1e-2f64.powf(1.0 / 3.0)),
        ("head.fc.weight", 1.0),
    ] {
        let ratio = delta(&end_disc, name) / delta(&end_plain, name);
        assert!((ratio / scale - 1.0).abs() < 1e-3, "{name}: step ratio {ratio} vs rate ratio {scale}");
    }
    // A tiny clip norm leaves the weights nearly where they were.
    let clipped = FineTuneConfig { clip_grad_norm: Some(1e-6), ..plain.clone() };
    let (_, end_clipped, _) = one_batch(&clipped);
    // Over the trained parameters (BatchNorm's running statistics move without gradients).
    let trained = ["features.16.conv.0.0.weight", "features.17.conv.2.weight", "head.fc.weight", "head.fc.bias"];
    let total = |end: &[(String, Vec<f32>)]| trained.iter().map(|n| delta(end, n)).sum::<f64>();
    assert!(total(&end_clipped) < 1e-3 * total(&end_plain), "{} vs {}", total(&end_clipped), total(&end_plain));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ema_weights_are_validated_and_kept_and_differ_from_the_raw_ones() {
    let dir = workdir("ema");
    let r = recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"fine_tune\"\n\
                          epochs = 2\nlr = 1e-2\nema = 0.9\n",
    );
    let data = Dataset::load(&r.data, r.seed).unwrap();
    let cfg = fine_tune_config(&r);
    let mut model = classifier(17);
    let start: Vec<Tensor> = model.mutable_named_vars().iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let mut trace = Trace { after_steps: Vec::new() };
    {
        let mut cbs = train::callbacks::standard(&cfg, None);
        cbs.insert(0, Box::new(&mut trace));
        fit(&mut model, &data, &cfg, &mut cbs);
    }
    // The EMA by hand, with timm's warm-up of the decay.
    let mut ema = start;
    for (n, raw) in trace.after_steps.iter().enumerate() {
        let d = 0.9f64.min((1.0 + n as f64) / (10.0 + n as f64));
        ema = ema.iter().zip(raw).map(|(e, w)| ((e * d).unwrap() + (w * (1.0 - d)).unwrap()).unwrap()).collect();
    }
    let last_raw = trace.after_steps.last().unwrap();
    let kept: Vec<Tensor> = model.mutable_named_vars().iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let max_diff = |a: &[Tensor], b: &[Tensor]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                (x - y).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
            })
            .fold(0f32, f32::max)
    };
    assert!(max_diff(&kept, &ema) < 1e-5, "the model ends with the EMA weights");
    assert!(max_diff(&kept, last_raw) > 1e-3, "which are not the raw weights");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn freeze_epochs_equals_the_two_phases_written_out() {
    let dir = workdir("phases");
    let r = recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"fine_tune\"\n\
                          epochs = 1\nfreeze_epochs = 1\nunfreeze_to = \"features.17\"\nlr = 2e-3\n",
    );
    let data = Dataset::load(&r.data, r.seed).unwrap();
    let cfg = fine_tune_config(&r);
    let mut shorthand = classifier(0);
    let mut cache = FeatureCache::default();
    let setup = Setup {
        data: &data,
        aug: None,
        cfg: &cfg,
        batch_size: 8,
        seed: 1,
        view_seed: 1,
        later_prefixes: &[],
        cache: &mut cache,
    };
    train::phases::freeze_then_unfreeze(&mut shorthand, setup, &mut Silent, None).unwrap();

    // Written out: freeze everything, train; unfreeze from features.17, train at lr/2 spread to lr/200.
    let (frozen, unfrozen) = train::phases::phase_configs(&cfg);
    assert_eq!(unfrozen.lr, Lr::Range { low: 1e-5, high: 1e-3 });
    let mut by_hand = classifier(0);
    let blocks = by_hand.backbone.num_blocks();
    for (freeze, cfg, seed) in [(blocks, &frozen, 1), (17, &unfrozen, train::phases::second_seed(1))] {
        by_hand.freeze(freeze, false).unwrap();
        let mut cache = FeatureCache::default();
        let setup = Setup {
            data: &data,
            aug: None,
            cfg,
            batch_size: 8,
            seed,
            view_seed: seed,
            later_prefixes: &[],
            cache: &mut cache,
        };
        train::fine_tune(&mut by_hand, setup, &mut Silent, None).unwrap();
    }
    assert_eq!(weights(&shorthand), weights(&by_hand));
    assert_ne!(weights(&shorthand), weights(&classifier(0)), "and it trained");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tta_averages_the_image_and_its_mirror() {
    let dir = workdir("tta");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), dir.join("w.safetensors")).unwrap();
    recipe(&dir, "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\n[[step]]\nkind = \"freeze\"\n\
                  [[step]]\nkind = \"fine_tune\"\nepochs = 1\n[[step]]\nkind = \"evaluate\"\n\
                  [[step]]\nkind = \"evaluate\"\ntta = true\n");
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    let eval = |i: usize| match &lab.result(i).unwrap().output {
        StepOutput::Evaluate(e) => e.clone(),
        _ => panic!("not an evaluation"),
    };
    let (plain, tta) = (eval(3), eval(4));
    assert_eq!(plain.metrics.accuracy_without_tta, None);
    assert_eq!(tta.metrics.accuracy_without_tta, Some(plain.metrics.accuracy));
    let changed = plain.predictions.iter().zip(&tta.predictions).filter(|(a, b)| a.confidence != b.confidence).count();
    assert!(changed > plain.predictions.len() / 2, "mirrored views change the confidences ({changed} changed)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tta_views_average_augmented_views_in_reproducibly() {
    let dir = workdir("ttaviews");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), dir.join("w.safetensors")).unwrap();
    recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\n\
         [[step]]\nkind = \"augment\"\nrotation_range = 30\nzoom_range = 0.3\n[[step]]\nkind = \"freeze\"\n\
         [[step]]\nkind = \"fine_tune\"\nepochs = 1\n[[step]]\nkind = \"evaluate\"\ntta = true\n\
         [[step]]\nkind = \"evaluate\"\ntta_views = 3\n[[step]]\nkind = \"evaluate\"\ntta_views = 3\n",
    );
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    let eval = |i: usize| match &lab.result(i).unwrap().output {
        StepOutput::Evaluate(e) => e.clone(),
        _ => panic!("not an evaluation"),
    };
    let (mirror, views, again) = (eval(4), eval(5), eval(6));
    // The same plain accuracy is reported "without"; the augmented views
    // change the averaged confidences, and the same seed draws the same views.
    assert_eq!(views.metrics.accuracy_without_tta, mirror.metrics.accuracy_without_tta);
    let changed =
        mirror.predictions.iter().zip(&views.predictions).filter(|(a, b)| a.confidence != b.confidence).count();
    assert!(changed > mirror.predictions.len() / 2, "augmented views change the confidences ({changed} changed)");
    assert_eq!(views.predictions, again.predictions);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concat_pooling_heads_train_and_predict_from_the_run_directory() {
    let dir = workdir("concat");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), dir.join("w.safetensors")).unwrap();
    recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\npooling = \"concat\"\n\
                  [[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 2\nlr = 3e-3\n\
                  [[step]]\nkind = \"evaluate\"\n",
    );
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    let fc = lab.model().unwrap().named_vars().into_iter().find(|(n, _)| n == "head.fc.weight").unwrap().1;
    assert_eq!(fc.dims(), &[3, 2 * 1280], "max ⊕ average of MobileNetV2's 1280 channels");
    let accuracy = lab.evaluation().ok().unwrap().metrics.accuracy;
    assert!(accuracy > 0.6, "three colours separate ({accuracy})");
    // The saved model reloads with the same head and gives the same predictions.
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let info = tlab::run::dir::RunInfo { complete: true, started: 0, seconds: 0.0 };
    tlab::run::dir::write_reports(&lab, &run, info).unwrap();
    let (model, card) = tlab::predict::load_run_model(&run).unwrap();
    assert_eq!(card.head.pooling, "concat");
    let names: Vec<String> = model.named_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"head.fc.weight".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batchnorm_head_learns_its_statistics_and_reloads_with_them() {
    let dir = workdir("bnhead");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), dir.join("w.safetensors")).unwrap();
    recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\n\
         head = { hidden = [16], batchnorm = true }\n[[step]]\nkind = \"freeze\"\n\
         [[step]]\nkind = \"fine_tune\"\nepochs = 2\nlr = 3e-3\n[[step]]\nkind = \"evaluate\"\n",
    );
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.run_rest(&mut Silent).unwrap();
    let trained = weights(lab.model().unwrap());
    let get = |name: &str| trained.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
    // One BatchNorm before each linear layer, sized to its input.
    assert_eq!(get("head.bn.0.running_mean").len(), 1280);
    assert_eq!(get("head.bn.1.running_var").len(), 16);
    // Training moved the statistics from their fresh 0 / 1 and the affine
    // parameters from 1 / 0.
    assert!(get("head.bn.0.running_mean").iter().any(|m| m.abs() > 1e-3));
    assert!(get("head.bn.1.running_var").iter().any(|v| (v - 1.0).abs() > 1e-3));
    assert!(get("head.bn.1.weight").iter().any(|w| (w - 1.0).abs() > 1e-4));
    let accuracy = lab.evaluation().ok().unwrap().metrics.accuracy;
    assert!(accuracy > 0.6, "three colours separate ({accuracy})");
    // The run directory's model reloads with the same head, statistics included.
    let run = dir.join("run");
    let written = lab.save_run(&run).unwrap();
    assert!(written.contains(&run.join("model.safetensors")) && written.contains(&run.join("report.html")));
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["complete"], true);
    let (model, card) = tlab::predict::load_run_model(&run).unwrap();
    assert!(card.head.batchnorm);
    assert_eq!(weights(&model), trained);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Makes the loss of one batch not a number, as a diverging run does.
struct Poison;
impl Callback for Poison {
    fn after_loss(&mut self, ctx: &mut BatchCtx<'_>) -> tlab::Result<()> {
        if ctx.epoch == 1 && ctx.batch == 2 {
            ctx.loss = f64::NAN;
        }
        Ok(())
    }
}

/// A loss that is not a number ends the fit with an error whatever the
/// callbacks: here a custom list without NanGuard.
#[test]
fn a_diverged_fit_is_an_error_without_nan_guard() {
    let dir = workdir("diverge");
    let r = recipe(
        &dir,
        "[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 3\n",
    );
    let data = Dataset::load(&r.data, r.seed).unwrap();
    let cfg = fine_tune_config(&r);
    let mut model = classifier(16);
    let mut cache = FeatureCache::default();
    let setup = Setup {
        data: &data,
        aug: None,
        cfg: &cfg,
        batch_size: 4,
        seed: 1,
        view_seed: 1,
        later_prefixes: &[],
        cache: &mut cache,
    };
    let mut cbs: Vec<Box<dyn Callback>> = vec![Box::new(Poison)];
    let outcome = FineTune::prepare(&mut model, setup, &mut Silent, None).unwrap().run(&mut cbs);
    match outcome {
        Err(tlab::Error::Diverged(m)) => assert_eq!(m, "loss became NaN at epoch 2 batch 3 (try a lower lr)"),
        Err(e) => panic!("another error: {e}"),
        Ok(o) => panic!("ended as {:?} after {} epoch(s)", o.stop, o.history.len()),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What guards an epoch (NanGuard, early stopping's best weights) copies
/// the trainable blocks and the head, not the frozen backbone, and puts the
/// model back exactly.
#[test]
fn epoch_guards_copy_only_what_trains() {
    let mut model = classifier(16);
    let (part, full) = (model.snapshot_trainable().unwrap(), model.snapshot().unwrap());
    let size = |s: &tlab::models::Snapshot| s.tensors.iter().map(|(_, t)| t.elem_count()).sum::<usize>();
    assert!(size(&part) * 10 < size(&full) * 6, "{} of {} values", size(&part), size(&full));
    let trains = ["features.16.", "features.17.", "features.18.", "head."];
    assert!(part.tensors.iter().all(|(n, _)| trains.iter().any(|p| n.starts_with(p))));
    let before = weights(&model);
    for (_, v) in model.mutable_named_vars() {
        v.set(&v.as_tensor().affine(2.0, 1.0).unwrap()).unwrap();
    }
    assert_ne!(weights(&model), before);
    model.restore(&part).unwrap();
    assert_eq!(weights(&model), before);
}
