//! The TUI in a real terminal: tmux runs `tlab tui` on a tiny recipe,
//! `send-keys` drives it and `capture-pane -p` reads the screen. Needs tmux
//! (the test script installs it); under CI its absence is a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Session {
    name: String,
}

impl Session {
    fn start(dir: &Path, recipe: &Path) -> Session {
        let cmd = format!("{} tui {}", env!("CARGO_BIN_EXE_tlab"), recipe.display());
        Session::start_command(dir, "main", &cmd)
    }

    /// Opens a shell in `dir` with the built `tlab` first on PATH and types
    /// `command` into it, as a user types the README's command line.
    fn start_command(dir: &Path, tag: &str, command: &str) -> Session {
        let name = format!("tlab-test-{}-{tag}", std::process::id());
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "120", "-y", "36", "-c"])
            .arg(dir)
            .arg("bash --norc --noprofile")
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        let s = Session { name };
        let bin = Path::new(env!("CARGO_BIN_EXE_tlab")).parent().unwrap();
        s.keys(&[&format!("export PATH='{}':\"$PATH\"; clear", bin.display()), "Enter"]);
        s.keys(&["-l", command]);
        s.keys(&["Enter"]);
        s
    }

    /// Presses `q` and waits for the shell prompt to come back.
    fn quit(&self) {
        self.keys(&["q"]);
        self.wait_for("the shell prompt again", Duration::from_secs(10), |_| self.foreground() != "tlab");
    }

    /// The program running in the pane (`tlab` while the TUI is up).
    fn foreground(&self) -> String {
        let out = Command::new("tmux")
            .args(["display", "-p", "-t", &self.name, "#{pane_current_command}"])
            .output()
            .expect("tmux display");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.name]).output().expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.name.as_str()];
        args.extend(keys);
        assert!(Command::new("tmux").args(&args).status().expect("send-keys").success());
    }

    /// Polls the screen until `pred` holds; panics with the screen on timeout.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return t0.elapsed();
            }
            if t0.elapsed() > timeout {
                panic!("timed out waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ =
            Command::new("tmux").args(["kill-session", "-t", &self.name]).stderr(std::process::Stdio::null()).status();
    }
}

/// Whether tmux runs here; without it a test skips (saying so), except under
/// CI, where its absence is a failure.
fn tmux_available() -> bool {
    let ok = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing under CI (.ci/test installs it)");
        eprintln!("skipped: tmux not installed");
    }
    ok
}

fn make_data(root: &Path) {
    common::colour_squares(root, 99, 16, 10, 5);
}

const RECIPE: &str = r#"name = "tmux"
seed = 3
[data]
train = "data/train"
valid = "data/valid"
image_size = 32
batch_size = 10
[[step]]
kind = "backbone"
arch = "mobilenet_v2"
weights = "WEIGHTS"
[[step]]
kind = "freeze"
[[step]]
kind = "augment"
horizontal_flip = true
[[step]]
kind = "fine_tune"
epochs = 2
lr = 0.01
[[step]]
kind = "evaluate"
"#;

/// Copies what the README's quickstart reads into `to`, laid out as in the
/// repository (the test edits the copy, never the checkout).
fn copy_repository(to: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    copy_dir(&root.join("recipes"), &to.join("recipes"));
    copy_dir(&root.join("data/fashion-mnist-mini"), &to.join("data/fashion-mnist-mini"));
    std::fs::create_dir_all(to.join("assets/weights")).unwrap();
    std::fs::copy(
        root.join("assets/weights/mobilenet_v2.safetensors"),
        to.join("assets/weights/mobilenet_v2.safetensors"),
    )
    .unwrap();
}

/// Saves `text` the way `sed -i` and vim do: a new file renamed over the old.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.sedtmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The README's command typed literally in `cwd`: run to the augment step,
/// edit the recipe, then add an image under the `..` data folder; both must
/// turn steps stale.
fn readme_command_hot_reloads(repo: &Path, cwd: &Path, recipe_arg: &str, tag: &str) {
    let s = Session::start_command(cwd, tag, &format!("tlab tui {recipe_arg}"));
    s.wait_for("the UI", Duration::from_secs(30), |sc| sc.contains("steps") && sc.contains("watching"));
    // Select step 3 (augment) and run up to it: loads the data and the real
    // weights, freezes, augments. A key sent while the terminal answers the
    // start-up graphics query can be swallowed, so retry.
    s.keys(&["j", "j"]);
    let t0 = Instant::now();
    loop {
        s.keys(&["Enter"]);
        std::thread::sleep(Duration::from_millis(700));
        let sc = s.screen();
        if count_done(&sc) > 0 || sc.chars().any(|c| ('⠁'..='⣿').contains(&c)) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "running to step 3 never started:\n{sc}");
    }
    s.wait_for("steps 1-3 done", Duration::from_secs(120), |sc| count_done(sc) == 3);

    // Edit the augment step as `sed -i` does (rename over the recipe).
    let recipe = repo.join("recipes/quickstart.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    save_by_rename(&recipe, &text.replace("zoom_range = 0.1", "zoom_range = 0.2"));
    let to_stale = s.wait_for("steps stale after the edit", Duration::from_secs(10), |sc| sc.contains("stale"));
    eprintln!("[{tag}] save → stale cells on screen: {} ms", to_stale.as_millis());
    let sc = s.screen();
    assert_eq!(count_done(&sc), 2, "steps 1-2 stay done, step 3 is stale:\n{sc}");

    // A new image in the data folder, which the recipe names through `..`.
    let extra = repo.join("data/fashion-mnist-mini/train/bag/extra-test.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([128])).save(&extra).unwrap();
    let to_banner = s.wait_for("the data-folder banner", Duration::from_secs(10), |sc| {
        sc.contains("data folder") && sc.contains("changed on disk")
    });
    eprintln!("[{tag}] image added → data banner: {} ms", to_banner.as_millis());
    s.wait_for("every step stale", Duration::from_secs(10), |sc| count_done(sc) == 0);
    std::fs::remove_file(&extra).unwrap();
    std::fs::write(&recipe, text).unwrap();

    s.quit();
}

#[test]
fn the_readme_command_hot_reloads_from_the_root_and_from_another_folder() {
    if !tmux_available() {
        return;
    }
    let repo: PathBuf = std::env::temp_dir().join(format!("tlab-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&repo);
    copy_repository(&repo);
    // From the repository root, exactly as the README says.
    readme_command_hot_reloads(&repo, &repo, "recipes/quickstart.toml", "root");
    // From inside recipes/, and with a `./` prefix.
    readme_command_hot_reloads(&repo, &repo.join("recipes"), "./quickstart.toml", "recipes");
    let _ = std::fs::remove_dir_all(&repo);
}

fn count_done(screen: &str) -> usize {
    screen.lines().filter(|l| l.contains('✓') && !l.contains("stale")).count()
}

#[test]
fn tui_runs_steps_shows_confusion_and_reruns_stale_steps_after_an_edit() {
    if !tmux_available() {
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("tlab-tmux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    make_data(&dir.join("data"));
    let recipe = dir.join("tmux.toml");
    // A copy: the test replaces it on disk.
    let weights = dir.join("weights.safetensors");
    std::fs::copy(tlab::predict::shipped_imagenet_weights(), &weights).unwrap();
    std::fs::write(&recipe, RECIPE.replace("WEIGHTS", &weights.display().to_string())).unwrap();

    let s = Session::start(&dir, &recipe);
    s.wait_for("the UI", Duration::from_secs(30), |sc| sc.contains("steps") && sc.contains("watching"));
    // Auto-run on, then run all. A key sent while the terminal answers the
    // start-up graphics query can be swallowed, so repeat until something runs.
    s.keys(&["w"]);
    s.wait_for("auto-run on", Duration::from_secs(10), |sc| sc.contains("auto-run on"));
    let t0 = Instant::now();
    loop {
        s.keys(&["a"]);
        std::thread::sleep(Duration::from_millis(700));
        let sc = s.screen();
        if count_done(&sc) > 0 || sc.contains('⠋') || sc.chars().any(|c| ('⠁'..='⣿').contains(&c)) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "run all never started:\n{sc}");
    }
    s.wait_for("all five steps done", Duration::from_secs(180), |sc| count_done(sc) == 5);

    // The evaluate cell shows the confusion matrix.
    s.keys(&["j", "j", "j", "j"]);
    let sc = s.screen();
    s.wait_for("the confusion matrix", Duration::from_secs(10), |sc| {
        sc.contains("true \\ pred") && sc.contains("blue") && sc.contains("green") && sc.contains("red")
    });
    assert!(sc.contains("5. evaluate"));

    // Edit the augment step: it and the later steps turn stale, then re-run by themselves.
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, text.replace("horizontal_flip = true", "horizontal_flip = true\nrotation_range = 12"))
        .unwrap();
    let to_stale = s.wait_for("stale marks", Duration::from_secs(10), |sc| sc.contains("stale") || sc.contains('⠋'));
    eprintln!("save → first redraw showing the edit: {} ms", to_stale.as_millis());
    s.wait_for("the re-run", Duration::from_secs(180), |sc| {
        count_done(sc) == 5 && !sc.contains("stale") && sc.contains("rotate ±12°")
    });

    // The backbone was loaded once: the re-run resumed from the freeze step's state.
    let log = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path().join("tui.log"))
        .find(|p| p.exists())
        .expect("tui.log in the run directory");
    let log = std::fs::read_to_string(log).unwrap();
    assert_eq!(log.matches("[step 1] started").count(), 1, "{log}");
    assert_eq!(log.matches("[step 3] started").count(), 2, "{log}");
    assert_eq!(log.matches("[step 4] started").count(), 2, "{log}");

    // The weights file replaced by a broken one: a banner, a failed re-run of
    // the backbone step, and its last good outputs stay on screen.
    let good = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, b"not weights any more").unwrap();
    s.wait_for("the failed re-run banner", Duration::from_secs(60), |sc| {
        sc.contains("failed on re-run") && sc.contains('✗')
    });
    let sc = s.screen();
    assert!(sc.contains("4. fine_tune") && sc.contains("stale"), "later steps stay (stale):\n{sc}");
    // Put the good file back: everything re-runs by itself and the banner goes.
    std::fs::write(&weights, &good).unwrap();
    s.wait_for("the re-run after the weights came back", Duration::from_secs(180), |sc| {
        count_done(sc) == 5 && !sc.contains("stale") && !sc.contains("changed on disk") && !sc.contains("re-run failed")
    });
    // A new image in the data folder: the steps that read the data re-run.
    let extra = dir.join("data/train/red/extra.png");
    image::RgbImage::from_pixel(16, 16, image::Rgb([250, 5, 5])).save(&extra).unwrap();
    s.wait_for("the data banner", Duration::from_secs(30), |sc| sc.contains("data folder") || sc.contains('⠋'));
    s.wait_for("the re-run after the data changed", Duration::from_secs(180), |sc| {
        count_done(sc) == 5 && !sc.contains("stale")
    });

    // A broken edit shows a banner and keeps the state.
    std::fs::write(&recipe, "name = \"tmux\"\n[data\n").unwrap();
    s.wait_for("the error banner", Duration::from_secs(10), |sc| sc.contains("reload failed"));
    assert_eq!(count_done(&s.screen()), 5);

    s.quit();
    let _ = std::fs::remove_dir_all(&dir);
}
