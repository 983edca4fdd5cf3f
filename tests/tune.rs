//! `tlab tune` as a user runs it: a tiny search on the shipped data, killed
//! with SIGKILL after its first trial and resumed; and a search that must not
//! read `valid` (its images replaced by unreadable files).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn tlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlab"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A small recipe on the shipped Fashion-MNIST subset, with a `[tune]` table.
fn recipe(dir: &Path, valid: &Path) -> PathBuf {
    let data = repo().join("data/fashion-mnist-mini");
    let weights = repo().join("assets/weights/mobilenet_v2.safetensors");
    let text = format!(
        r#"name = "tiny"
seed = 5
[data]
train = "{train}"
valid = "{valid}"
image_size = 32
batch_size = 16
max_per_class = 12
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
weights = "{weights}"
[[step]]
kind = "freeze"
[[step]]
kind = "fine_tune"
epochs = 3
lr = 0.001
[[step]]
kind = "evaluate"
[tune]
lr = {{ log = [1e-4, 1e-2] }}
dropout = [0.0, 0.3]
"#,
        train = data.join("train").display(),
        valid = valid.display(),
        weights = weights.display()
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tlab-tune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rows(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("tune.csv")).unwrap().lines().skip(1).map(str::to_owned).collect()
}

#[test]
fn a_killed_tune_resumes_without_running_a_trial_twice() {
    let dir = temp("resume");
    let recipe = recipe(&dir, &repo().join("data/fashion-mnist-mini/valid"));
    let out = dir.join("tune");
    let mut child = tlab()
        .args(["tune", recipe.to_str().unwrap(), "--trials", "3", "--rungs", "2", "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && !line.starts_with("t001 rung 0") {
        line.clear();
    }
    assert!(line.starts_with("t001 rung 0"), "the first trial's line");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert_eq!(rows(&out).len(), 1, "one finished trial before the kill");
    let first = std::fs::read(out.join("trials/t001-r0/status.json")).unwrap();
    // The recipe as written ran first, at full epochs, on the same inner split.
    let recipe_run = std::fs::read(out.join("trials/recipe/status.json")).unwrap();
    assert!(out.join("baseline.json").is_file());

    let resumed = tlab().args(["tune", "--resume", out.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{text}{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(text.contains("t001 rung 0") && text.contains("(done before)"), "{text}");
    assert_eq!(text.matches("(done before)").count(), 1, "{text}");
    assert!(text.contains("the recipe as written (all the epochs): inner accuracy"), "{text}");
    // Neither the finished trial nor the recipe as written ran again: their
    // run directories are untouched.
    assert_eq!(std::fs::read(out.join("trials/t001-r0/status.json")).unwrap(), first);
    assert_eq!(std::fs::read(out.join("trials/recipe/status.json")).unwrap(), recipe_run);
    // Finished trials keep their reports but not their resume checkpoints.
    assert!(out.join("trials/t001-r0/model.safetensors").is_file());
    assert!(!out.join("trials/t001-r0/checkpoint").exists());
    // Three trials at rung 0, the best one at rung 1: four rows, none twice.
    let all = rows(&out);
    let mut keys: Vec<String> = all.iter().map(|r| r.split(',').take(2).collect::<Vec<_>>().join(",")).collect();
    keys.sort();
    keys.dedup();
    assert_eq!((all.len(), keys.len()), (4, 4), "{all:?}");
    // best.toml is a recipe that passes `tlab check`: the winner's values
    // when the winner beat the recipe as written beyond chance, else the
    // recipe as written, and its header and tune.md say which and why.
    let best = out.join("best.toml");
    let check = tlab().args(["check", best.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let best_text = std::fs::read_to_string(&best).unwrap();
    let md = std::fs::read_to_string(out.join("tune.md")).unwrap();
    assert!(text.contains("against the recipe as written on the inner split:"), "{text}");
    if best_text.contains("beyond chance") {
        assert!(best_text.contains("# tuned (was 0.001)"), "{best_text}");
        assert!(md.contains("trained on all the training data") && md.contains("'s values"), "{md}");
    } else {
        assert!(best_text.contains("best.toml keeps the recipe as written"), "{best_text}");
        assert!(!best_text.contains("# tuned"), "{best_text}");
        assert!(md.contains("`best.toml` (the recipe as written)"), "{md}");
    }
    for f in ["tune.md", "scores.png", "trials.png", "final/metrics.json", "final/report.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Every trial is a run directory `tlab runs` lists.
    let runs = tlab().args(["runs", out.join("trials").to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&runs.stdout).matches("complete").count(), 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_search_never_reads_valid() {
    let dir = temp("honest");
    // The validation folder: the right classes, every file unreadable.
    let valid = dir.join("valid");
    for class in std::fs::read_dir(repo().join("data/fashion-mnist-mini/train")).unwrap() {
        let class = valid.join(class.unwrap().file_name());
        std::fs::create_dir_all(&class).unwrap();
        for i in 0..3 {
            std::fs::write(class.join(format!("{i}.png")), b"not a picture").unwrap();
        }
    }
    let recipe = recipe(&dir, &valid);
    let out = dir.join("tune");
    let run = tlab()
        .args(["tune", recipe.to_str().unwrap(), "--trials", "2", "--rungs", "1", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    // Both trials and the recipe as written scored on the inner split ...
    assert_eq!(rows(&out).len(), 2, "{stderr}");
    for t in ["recipe", "t001-r0", "t002-r0"] {
        let text = std::fs::read_to_string(out.join("trials").join(t).join("recipe.toml")).unwrap();
        assert!(!text.contains(valid.to_str().unwrap()), "a trial names valid:\n{text}");
    }
    // ... and only the final run, on all of train, reads valid and says so.
    assert!(!run.status.success());
    assert!(stderr.contains("no validation images"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tune_tables_fail_at_check() {
    let dir = temp("check");
    let recipe = recipe(&dir, &repo().join("data/fashion-mnist-mini/valid"));
    let text = std::fs::read_to_string(&recipe).unwrap();
    for (tune, expected) in [
        ("colour = [1, 2]", "`[tune] colour`: `colour` is not a key of [data] or of any step"),
        ("lr = { log = [1e-2, 1e-4] }", "an empty range"),
        ("image_size = [32, 5000]", "the recipe does not accept 5000"),
    ] {
        let bad = text.replace("lr = { log = [1e-4, 1e-2] }", tune);
        std::fs::write(&recipe, bad).unwrap();
        let check = tlab().args(["check", recipe.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success() && stderr.contains(expected), "{tune}: {stderr}");
        assert!(stderr.contains("tiny.toml:22:1:"), "points at the [tune] line: {stderr}");
        // `tlab tune` refuses it the same way, before anything trains.
        let tune_run =
            tlab().args(["tune", recipe.to_str().unwrap(), "--out", dir.join("t").to_str().unwrap()]).output().unwrap();
        assert!(!tune_run.status.success() && String::from_utf8_lossy(&tune_run.stderr).contains(expected));
        assert!(!dir.join("t").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
