//! Interrupting a run and resuming it: after Ctrl-C (exit 130) or kill -9,
//! `tlab run --resume DIR` continues from the last completed epoch and ends
//! with the same weights and metrics as an uninterrupted run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const RECIPE: &str = r#"name = "resume"
seed = 11
[data]
train = "data/train"
valid = "data/valid"
image_size = 32
batch_size = 2
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
weights = "WEIGHTS"
[[step]]
kind = "freeze"
[[step]]
kind = "fine_tune"
epochs = 8
lr = 0.003
[[step]]
kind = "freeze"
up_to = "features.18"
[[step]]
kind = "fine_tune"
epochs = 2
optimizer = "sgd"
lr = 0.001
[[step]]
kind = "evaluate"
"#;

fn tlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlab"))
}

/// Starts a run and sends `signal` once the `epoch` line of the first fine_tune appears.
fn interrupted_run(recipe: &Path, out: &Path, epoch: usize, signal: i32) -> Option<i32> {
    let mut child = tlab()
        .args(["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let marker = format!("epoch {epoch:>3}");
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.contains(&marker) {
            break;
        }
        line.clear();
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    child.wait().unwrap().code()
}

fn tensors(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    tlab::weights::load(&dir.join("model.safetensors")).unwrap()
}

fn assert_same_result(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len());
    let mut max = 0f32;
    for (name, x) in &ta {
        let y = &tb[name];
        let d = (x.to_dtype(candle_core::DType::F32).unwrap() - y.to_dtype(candle_core::DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        max = max.max(d);
    }
    assert!(max < 1e-5, "weights differ by {max}");
    let m = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("metrics.json")).unwrap()).unwrap()
    };
    let (ma, mb) = (m(a), m(b));
    assert_eq!(ma["confusion"], mb["confusion"]);
    assert_eq!(ma["accuracy"], mb["accuracy"]);
    let ha = std::fs::read_to_string(a.join("history.csv")).unwrap();
    let hb = std::fs::read_to_string(b.join("history.csv")).unwrap();
    let cols =
        |h: &str| -> Vec<String> { h.lines().map(|l| l.rsplit_once(',').map_or("", |(a, _)| a).to_string()).collect() };
    assert_eq!(cols(&ha), cols(&hb), "history (without timings) differs");
}

#[test]
fn resumed_runs_end_like_uninterrupted_ones() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tlab-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), 7, 16, 8, 4);
    let recipe = dir.join("resume.toml");
    let weights = tlab::predict::shipped_imagenet_weights();
    std::fs::write(&recipe, RECIPE.replace("WEIGHTS", &weights.display().to_string())).unwrap();

    let full = dir.join("full");
    let out = tlab().args(["run", recipe.to_str().unwrap(), "--out", full.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for (name, epoch, signal, code) in [("sigint", 3, libc::SIGINT, Some(130)), ("kill9", 5, libc::SIGKILL, None)] {
        let run = dir.join(name);
        assert_eq!(interrupted_run(&recipe, &run, epoch, signal), code, "{name}");
        let state = tlab::checkpoint::read_state(&run).unwrap().expect("a checkpoint");
        assert!(state.epochs_done >= epoch - 1 && !state.finished, "{name}: {state:?}");
        let out = tlab().args(["run", "--resume", run.to_str().unwrap()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("resuming"), "{text}");
        assert_same_result(&full, &run);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
