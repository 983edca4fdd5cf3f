//! The frozen-feature cache inside real fine_tune steps: K augmented views
//! are computed once and reused when only a later setting changes; a disk
//! cache trains to exactly the same weights and metrics as the in-memory one.

mod common;

use std::path::Path;

use tlab::train::cache::{FeatureCache, Placement};
use tlab::train::{Event, Observer};
use tlab::Lab;

const RECIPE: &str = "name = \"cache\"\nseed = 5\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\nbatch_size = 4\n\
[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n\
[[step]]\nkind = \"freeze\"\nup_to = \"features.12\"\n\
[[step]]\nkind = \"augment\"\nhorizontal_flip = true\nrotation_range = 10\n\
[[step]]\nkind = \"fine_tune\"\nepochs = 3\nlr = 0.001\naugment_views = 2\n\
[[step]]\nkind = \"evaluate\"\n";

#[derive(Default)]
struct Logs(Vec<String>);
impl Observer for Logs {
    fn event(&mut self, e: Event) {
        if let Event::Log(s) = e {
            self.0.push(s);
        }
    }
}

fn feature_line(logs: &Logs) -> String {
    logs.0.iter().find(|l| l.starts_with("frozen features")).cloned().unwrap_or_else(|| panic!("{:?}", logs.0))
}

fn weights(lab: &Lab) -> Vec<f32> {
    let mut out = Vec::new();
    for (_, v) in lab.model().unwrap().named_vars() {
        out.extend(v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    out
}

fn run(dir: &Path, cache: FeatureCache) -> (Lab, Logs) {
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.set_feature_cache(cache);
    let mut logs = Logs::default();
    lab.run_rest(&mut logs).unwrap();
    (lab, logs)
}

#[test]
fn augmented_views_are_cached_reused_and_equal_on_disk() {
    let dir = std::env::temp_dir().join(format!("tlab-featcache-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 3, 16, 6, 3);
    std::fs::write(dir.join("r.toml"), RECIPE).unwrap();

    let (mut lab, logs) = run(&dir, FeatureCache::new(u64::MAX, Placement::Auto, dir.join("unused")));
    let line = feature_line(&logs);
    assert!(line.contains("augmented training views: 3 computed, 0 reused"), "{line}");

    // Only the learning rate changes: fine_tune re-runs on the cached views.
    let edited = RECIPE.replace("lr = 0.001", "lr = 0.002");
    std::fs::write(dir.join("r.toml"), &edited).unwrap();
    assert_eq!(lab.set_recipe(tlab::recipe::load(dir.join("r.toml")).unwrap()).unwrap(), Some(3));
    let mut logs = Logs::default();
    lab.run_step(3, &mut logs).unwrap();
    let line = feature_line(&logs);
    assert!(line.contains("0 computed, 3 reused"), "{line}");
    lab.run_step(4, &mut logs).unwrap();
    let in_memory = (weights(&lab), lab.evaluation().ok().unwrap().metrics.accuracy);

    // The same recipe with every entry on disk: the same training, bit for bit.
    let disk = dir.join("features");
    let (lab, logs) = run(&dir, FeatureCache::new(u64::MAX, Placement::Disk, disk.clone()));
    assert!(logs.0.iter().any(|l| l.contains("streaming them to")), "{:?}", logs.0);
    assert_eq!((weights(&lab), lab.evaluation().ok().unwrap().metrics.accuracy), in_memory);
    let names: Vec<String> =
        std::fs::read_dir(&disk).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".features")).count(), 3, "valid + 2 views: {names:?}");
    // Beside each file only its lock (see train::cache), no temporary file.
    assert!(names.iter().all(|n| n.ends_with(".features") || n.ends_with(".features.lock")), "{names:?}");

    // Another process (a fresh cache object) reuses the files.
    let (lab, logs) = run(&dir, FeatureCache::new(u64::MAX, Placement::Auto, disk));
    assert!(feature_line(&logs).contains("0 computed, 3 reused"), "{:?}", logs.0);
    assert_eq!(weights(&lab), in_memory.0);

    // A different augmentation is a different key: nothing stale is used.
    std::fs::write(dir.join("r.toml"), edited.replace("rotation_range = 10", "rotation_range = 20")).unwrap();
    let (_, logs) = run(&dir, FeatureCache::new(u64::MAX, Placement::Auto, dir.join("features")));
    assert!(feature_line(&logs).contains("2 computed, 1 reused"), "only the validation features carry over");
    let _ = std::fs::remove_dir_all(&dir);
}

const TWO_PHASE: &str = "name = \"stash\"\nseed = 7\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\nbatch_size = 4\n\
[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n\
[[step]]\nkind = \"freeze\"\nup_to = \"features.16\"\n\
[[step]]\nkind = \"augment\"\nhorizontal_flip = true\nrotation_range = 10\n\
[[step]]\nkind = \"fine_tune\"\nepochs = 2\nlr = 0.001\n\
[[step]]\nkind = \"freeze\"\nup_to = \"features.12\"\n\
[[step]]\nkind = \"fine_tune\"\nepochs = 2\nlr = 0.0005\n\
[[step]]\nkind = \"evaluate\"\n";

#[test]
fn a_later_step_trains_from_the_outputs_the_earlier_one_kept() {
    let dir = std::env::temp_dir().join(format!("tlab-featcache-stash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 3, 16, 6, 3);
    std::fs::write(dir.join("r.toml"), TWO_PHASE).unwrap();
    let memory = || FeatureCache::new(u64::MAX, Placement::Auto, dir.join("unused"));

    // "auto" views: one per epoch; the first step also keeps what features.0–11 give.
    let (lab, logs) = run(&dir, memory());
    let lines: Vec<&String> = logs.0.iter().filter(|l| l.starts_with("frozen features")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("augmented training views: 3 computed") && lines[0].contains("after 12 block(s) kept"));
    assert!(lines[1].starts_with("frozen features of 12 block(s)") && lines[1].contains("0 computed, 3 reused"));
    let kept = (weights(&lab), lab.evaluation().ok().unwrap().metrics.accuracy);

    // The second step computing its features from the images itself trains to the same weights.
    let mut lab = Lab::open(dir.join("r.toml")).unwrap();
    lab.set_feature_cache(memory());
    let mut logs = Logs::default();
    for i in 0..4 {
        lab.run_step(i, &mut logs).unwrap();
    }
    lab.set_feature_cache(memory());
    for i in 4..7 {
        lab.run_step(i, &mut logs).unwrap();
    }
    let line = logs.0.iter().rfind(|l| l.starts_with("frozen features")).unwrap();
    assert!(line.contains("3 computed, 0 reused"), "{line}");
    assert_eq!((weights(&lab), lab.evaluation().ok().unwrap().metrics.accuracy), kept);

    // With early stopping the step may end long before: "auto" augments live.
    let stopping = TWO_PHASE.replace("epochs = 2\nlr = 0.001\n", "epochs = 2\nlr = 0.001\npatience = 1\n");
    std::fs::write(dir.join("r.toml"), stopping).unwrap();
    let (_, logs) = run(&dir, memory());
    assert!(feature_line(&logs).contains("augmentation runs live"), "{:?}", logs.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Progressive resizing: a fine_tune step with its own `image_size` trains
/// and validates on the decoded images resized once (no second decode), and
/// the next step at the full size trains from features at that size.
#[test]
fn a_step_at_its_own_image_size_trains_on_resized_images() {
    let dir = std::env::temp_dir().join(format!("tlab-progressive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 4, 32, 8, 4);
    let recipe = "name = \"progressive\"\nseed = 2\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\nbatch_size = 8\n\
        [[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"w.safetensors\"\n\
        [[step]]\nkind = \"freeze\"\n\
        [[step]]\nkind = \"fine_tune\"\nepochs = 2\nlr = 0.003\nimage_size = 16\n\
        [[step]]\nkind = \"fine_tune\"\nepochs = 2\nlr = 0.003\nimage_size = 16\n\
        [[step]]\nkind = \"fine_tune\"\nepochs = 1\nlr = 0.001\n\
        [[step]]\nkind = \"evaluate\"\n";
    std::fs::write(dir.join("r.toml"), recipe).unwrap();
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), dir.join("w.safetensors")).unwrap();
    let (lab, logs) = run(&dir, FeatureCache::new(u64::MAX, Placement::Auto, dir.join("unused")));
    let count = |prefix: &str| logs.0.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("decoded "), 1, "{:?}", logs.0);
    // Resized once, kept for the second step at the same size.
    assert_eq!(count("images resized from 32px to 16px"), 1, "{:?}", logs.0);
    let features: Vec<&String> = logs.0.iter().filter(|l| l.starts_with("frozen features")).collect();
    assert_eq!(features.len(), 3, "{features:?}");
    // The second 16px step reuses the first one's 16px features; the 32px
    // step computes its own.
    assert!(features[1].contains(" 0 computed"), "{}", features[1]);
    assert!(!features[2].contains(" 0 computed"), "{}", features[2]);
    let accuracy = lab.evaluation().ok().unwrap().metrics.accuracy;
    assert!(accuracy > 0.6, "three colours separate after training at 16px and then 32px ({accuracy})");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mix_at = "features"` mixes the frozen blocks' output, so the training
/// views stay cached (mixing the images would force live augmentation), and
/// the mixing still changes what is learnt.
#[test]
fn mixing_at_the_features_keeps_the_views_cached() {
    let dir = std::env::temp_dir().join(format!("tlab-mixfeat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 3, 16, 6, 3);
    let with = |mix: &str| RECIPE.replace("augment_views = 2\n", &format!("augment_views = 2\n{mix}"));
    let run_with = |mix: &str| {
        std::fs::write(dir.join("r.toml"), with(mix)).unwrap();
        run(&dir, FeatureCache::new(u64::MAX, Placement::Auto, dir.join("unused")))
    };
    let (plain, _) = run_with("");
    let (features, logs) = run_with("mixup = 0.4\nmix_at = \"features\"\n");
    let line = feature_line(&logs);
    assert!(line.contains("split and augmented training views: 3 computed"), "{line}");
    let (again, _) = run_with("mixup = 0.4\nmix_at = \"features\"\n");
    let (input, logs) = run_with("mixup = 0.4\n");
    assert!(feature_line(&logs).contains("mixup/cutmix runs live"), "{}", feature_line(&logs));
    assert_ne!(weights(&features), weights(&plain), "mixing changes the training");
    assert_ne!(weights(&features), weights(&input), "mixing features is not mixing images");
    assert_eq!(weights(&features), weights(&again), "seeded");
    let _ = std::fs::remove_dir_all(&dir);
}
