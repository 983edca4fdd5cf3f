//! Interrupting a run and resuming it: after Ctrl-C (exit 130) or kill -9,
//! `tlab run --resume DIR` continues from the last completed epoch and ends
//! with the same weights and metrics as an uninterrupted run. Then kill -9 at
//! random moments, several times in a row: after each kill every file in the
//! run directory parses, and the resumed run still ends the same.

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
    tlab::formats::weights::load(&dir.join("model.safetensors")).unwrap()
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

/// A fresh folder `tlab-NAME-PID` with colour-square data (seed `data_seed`)
/// and `recipe` (its `WEIGHTS` the shipped ImageNet file), run once
/// uninterrupted into `full/`: `(folder, recipe path, full run, its stdout)`.
fn uninterrupted(name: &str, data_seed: u64, recipe: &str) -> (PathBuf, PathBuf, PathBuf, String) {
    let dir: PathBuf = std::env::temp_dir().join(format!("tlab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::colour_squares(&dir.join("data"), data_seed, 16, 8, 4);
    let path = dir.join("resume.toml");
    let weights = tlab::predict::shipped_imagenet_weights();
    std::fs::write(&path, recipe.replace("WEIGHTS", &weights.display().to_string())).unwrap();
    let full = dir.join("full");
    let out = tlab().args(["run", path.to_str().unwrap(), "--out", full.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (dir, path, full, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn resumed_runs_end_like_uninterrupted_ones() {
    let started = std::time::Instant::now();
    let (dir, recipe, full, _) = uninterrupted("resume", 7, RECIPE);
    let full_run = started.elapsed();
    assert_every_file_parses(&full);

    for (name, epoch, signal, code) in [("sigint", 3, libc::SIGINT, Some(130)), ("kill9", 5, libc::SIGKILL, None)] {
        let run = dir.join(name);
        assert_eq!(interrupted_run(&recipe, &run, epoch, signal), code, "{name}");
        let state = tlab::train::checkpoint::read_state(&run).unwrap().expect("a checkpoint");
        assert!(state.epochs_done >= epoch - 1 && !state.finished, "{name}: {state:?}");
        let out = tlab().args(["run", "--resume", run.to_str().unwrap()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("resuming"), "{text}");
        assert_same_result(&full, &run);
    }

    random_kills(&recipe, &dir.join("random"), full_run);
    assert_same_result(&full, &dir.join("random"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An lr_find after a fine_tune feeds the next step's rate. A resumed run
/// takes the curve from the checkpoint instead of replaying the range test
/// on the replayed (untrained) weights, so it trains at the same rate and
/// ends like the uninterrupted run.
#[test]
fn a_resumed_run_keeps_the_rate_lr_find_suggested() {
    const LR_RECIPE: &str = r#"name = "resume-lr"
seed = 5
[data]
train = "data/train"
valid = "data/valid"
image_size = 32
batch_size = 4
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
weights = "WEIGHTS"
[[step]]
kind = "freeze"
[[step]]
kind = "fine_tune"
epochs = 2
lr = 0.003
[[step]]
kind = "lr_find"
num_it = 20
[[step]]
kind = "fine_tune"
lr = "valley"
epochs = 5
[[step]]
kind = "evaluate"
"#;
    let (dir, recipe, full, log) = uninterrupted("resume-lr", 9, LR_RECIPE);
    let rate_line = |text: &str| text.lines().find(|l| l.contains("suggestion of lr_find")).map(str::to_string);
    let full_rate = rate_line(&log).expect("the suggested rate is logged");

    // Interrupted in the second fine_tune (the first has only 2 epochs).
    let run = dir.join("interrupted");
    assert_eq!(interrupted_run(&recipe, &run, 3, libc::SIGINT), Some(130));
    let state = tlab::train::checkpoint::read_state(&run).unwrap().expect("a checkpoint");
    assert_eq!((state.step, state.lr_finds.len()), (4, 1), "{state:?}");
    let out = tlab().args(["run", "--resume", run.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rate_line(&text).as_deref(), Some(full_rate.as_str()), "{text}");
    assert_same_result(&full, &run);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TUI session leaves the same run directory as `tlab run`: its engine
/// thread (driven here as the UI drives it) writes status.json at once, a
/// checkpoint after every epoch and the reports when a command ends. The
/// session is cancelled during the first fine_tune's third epoch and closed;
/// `tlab run --resume` on its folder then ends like an uninterrupted run.
#[cfg(feature = "tui")]
#[test]
fn a_tui_session_leaves_a_run_directory_that_tlab_run_resumes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use tlab::train::Event;
    use tlab::tui::{app::Command, worker::FromWorker};

    let (dir, recipe, full, _) = uninterrupted("tui-resume", 7, RECIPE);

    let loaded = tlab::recipe::load(&recipe).unwrap();
    let session = dir.join("session");
    let run = tlab::run::recorder::RunRecorder::open(&session, &loaded, false).unwrap();
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let (idle_tx, idle_rx) = mpsc::channel();
    let on_message = move |m: FromWorker| match &m {
        // The user presses `c` during epoch 3 (the step stops after it).
        FromWorker::Event(2, Event::Epoch(r)) if r.epoch == 3 => flag.store(true, Ordering::Relaxed),
        FromWorker::Idle => drop(idle_tx.send(())),
        _ => {}
    };
    let engine = std::thread::spawn(move || {
        tlab::tui::worker::run(tlab::Lab::new(loaded), cmd_rx, on_message, cancel, run);
    });
    let all: Vec<usize> = (0..6).collect();
    cmd_tx.send(Command::Run(all)).unwrap();
    idle_rx.recv().unwrap();
    // The user quits: the engine finishes writing the reports and ends.
    drop(cmd_tx);
    engine.join().unwrap();

    let state = tlab::train::checkpoint::read_state(&session).unwrap().expect("a checkpoint from the session");
    assert_eq!((state.step, state.epochs_done, state.finished), (2, 3, false), "{state:?}");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(session.join("status.json")).unwrap()).unwrap();
    assert_eq!(status["complete"], false);
    assert_eq!(status["steps_done"], serde_json::json!([1, 2, 3]));
    assert!(session.join("tui.log").is_file() && session.join("report.html").is_file());
    assert_every_file_parses(&session);

    let out = tlab().args(["run", "--resume", session.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("resuming") && text.contains("at step 3 after epoch 3"), "{text}");
    assert_same_result(&full, &session);
    // The same files as `tlab run`'s, and the session's own log besides.
    let mut expected = file_set(&full);
    expected.insert("tui.log".into());
    assert_eq!(file_set(&session), expected);
    let log = std::fs::read_to_string(session.join("log.txt")).unwrap();
    assert!(
        log.contains("[3/6] fine_tune") && log.contains("resuming"),
        "the session's lines, then the resumed run's:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A notebook's run (`record_to`, the cells, `save_run`) leaves the files
/// `tlab run` leaves, and a checkpoint that `tlab run --resume` accepts.
#[test]
fn a_notebook_run_leaves_the_same_files_as_tlab_run() {
    let (dir, recipe, full, _) = uninterrupted("notebook-files", 7, RECIPE);
    let nb = dir.join("notebook");
    let mut lab = tlab::Lab::open(&recipe).unwrap();
    lab.record_to(&nb).unwrap();
    lab.run_rest(&mut tlab::lab::cells::Progress::new()).unwrap();
    lab.save_run(&nb).unwrap();
    assert_eq!(file_set(&nb), file_set(&full));
    assert_same_result(&full, &nb);
    let batches = std::fs::read_to_string(nb.join("batches.csv")).unwrap();
    assert_eq!(batches, std::fs::read_to_string(full.join("batches.csv")).unwrap());
    assert!(std::fs::read_to_string(nb.join("log.txt")).unwrap().contains("[6/6] evaluate"));
    // Resumed from that checkpoint, the fine_tune steps report how they
    // ended (stop, best epoch, parameters trained), not made-up values.
    let state = tlab::train::checkpoint::read_state(&nb).unwrap().expect("a checkpoint");
    let mut resumed = tlab::Lab::open(&recipe).unwrap();
    resumed
        .resume_from(tlab::train::checkpoint::load(&nb, state, resumed.recipe()).unwrap(), &mut tlab::train::Silent)
        .unwrap();
    for step in [2, 4] {
        let outcome = |lab: &tlab::Lab| match lab.result(step).unwrap().output {
            tlab::lab::StepOutput::FineTune(o) => (o.stop, o.best_epoch, o.trainable_params),
            other => panic!("step {step}: {other:?}"),
        };
        let (before, after) = (outcome(&lab), outcome(&resumed));
        assert!(before.2 > 0);
        assert_eq!(after, before, "step {}", step + 1);
    }
    // Saving elsewhere (nothing recorded there) still leaves the whole set.
    let other = dir.join("saved");
    lab.save_run(&other).unwrap();
    assert_eq!(file_set(&other), file_set(&full).into_iter().filter(|f| f != "checkpoint").collect());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The names directly in a run directory (TensorBoard's event files differ
/// by name, so `tb` counts as one entry).
fn file_set(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Starts `tlab run RECIPE --resume DIR` (a fresh start while DIR has no
/// checkpoint) and kills it with SIGKILL after a random delay, `KILLS` times;
/// checks the directory after every kill, then lets the last resume finish.
/// The seed is printed; `TLAB_KILL_SEED` replays a sequence.
fn random_kills(recipe: &Path, run: &Path, full_run: std::time::Duration) {
    const KILLS: usize = 8;
    let seed = std::env::var("TLAB_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64 | 1
    });
    eprintln!("random kills: TLAB_KILL_SEED={seed}, an uninterrupted run takes {:.1}s", full_run.as_secs_f64());
    let mut state = seed;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let resume = || {
        let mut c = tlab();
        c.args(["run", recipe.to_str().unwrap(), "--resume", run.to_str().unwrap()]);
        c
    };
    for k in 0..KILLS {
        // Within a window that shrinks as the run gets further: some kills
        // land while loading, some mid-epoch, some while checkpoints or
        // reports are written, a few after the end.
        let delay = full_run.mul_f64(uniform() * (KILLS - k) as f64 / KILLS as f64);
        let mut child = resume().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let at = tlab::train::checkpoint::read_state(run)
            .unwrap_or_else(|e| panic!("kill {k}: the checkpoint does not read: {e}"))
            .map_or("no checkpoint yet".to_string(), |s| {
                format!("step {} epoch {}{}", s.step + 1, s.epochs_done, if s.finished { " (step done)" } else { "" })
            });
        eprintln!("kill {k} after {:.2}s{}: {at}", delay.as_secs_f64(), if finished { " (had finished)" } else { "" });
        assert_every_file_parses(run);
    }
    let out = resume().output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_every_file_parses(run);
    let leftovers: Vec<_> = walk(run).into_iter().filter(|p| p.extension().is_some_and(|e| e == "tmp")).collect();
    assert!(leftovers.is_empty(), "temp files left after a clean finish: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every file in a run directory is complete: JSON and safetensors parse,
/// CSV rows all have the header's column count, text ends with a newline.
/// Hidden `.NAME.PID.tmp` files (a writer killed before its rename) are the
/// only other files allowed; the next run removes them.
fn assert_every_file_parses(dir: &Path) {
    for path in walk(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let what = path.display();
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            Some("safetensors") => {
                safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            Some("csv") => {
                let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(text.ends_with('\n'), "{what} is cut short");
                let mut lines = text.lines();
                let cols = lines.next().unwrap_or_default().split(',').count();
                for l in lines {
                    assert_eq!(l.split(',').count(), cols, "{what}: row `{l}`");
                }
            }
            // tui.log: a TUI session's log, appended line by line.
            Some("md" | "txt" | "toml" | "log") => {
                let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(text.ends_with('\n'), "{what} is cut short");
            }
            Some("html") => {
                let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(text.ends_with("</html>\n"), "{what} is cut short");
            }
            Some("png") => {
                image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            // TensorBoard's log is appended as the run goes: every record up
            // to a possibly cut last one must read back with valid checksums.
            _ if name.starts_with("events.out.tfevents.") => {
                tlab::run::tensorboard::read_events(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            _ => panic!("unexpected file {what} in the run directory"),
        }
    }
}
