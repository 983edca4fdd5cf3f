//! `tlab new DATA_DIR` as a user types it: the starter recipe it writes for
//! a split folder and for one imbalanced folder of classes, what it chose and
//! why (in its comments), that the recipe passes `tlab check` and runs, and
//! that an existing file is never overwritten.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tlab(cwd: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tlab")).current_dir(cwd).args(args).output().expect("run tlab");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "tlab panicked:\n{text}");
    out
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlab-starter-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_split_colour_folder_gets_a_recipe_that_checks_and_runs() {
    let dir = tempdir("split");
    common::colour_squares(&dir.join("squares"), 3, 40, 10, 4);
    let out = tlab(&dir, &["new", "squares"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 classes, 30 training images, typical 40x40 px, colour"), "{stdout}");
    let text = std::fs::read_to_string(dir.join("squares.toml")).unwrap();
    for want in [
        "name = \"squares\"",
        "train = \"squares/train\"",
        "valid = \"squares/valid\"",
        "image_size = 96",
        "kind = \"lr_find\"",
        "lr = \"valley\"",
        "up_to = \"features.14\"",
        "brightness_range",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert!(!text.contains("class_weights"), "balanced classes need no weights:\n{text}");
    let check = tlab(&dir, &["check", "squares.toml"]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Run it, fast: a copy with one epoch per phase.
    let quick = text.replace("epochs = 4", "epochs = 1").replace("image_size = 96", "image_size = 32");
    std::fs::write(dir.join("quick.toml"), quick).unwrap();
    let run = tlab(&dir, &["run", "quick.toml", "--out", "run"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(dir.join("run/lr_find.png").is_file() && dir.join("run/metrics.json").is_file());

    // Never overwritten: a second `tlab new` fails with one line naming the file.
    let again = tlab(&dir, &["new", "squares"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("squares.toml: already exists") && err.lines().count() == 1, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn one_imbalanced_grey_folder_gets_a_split_and_class_weights() {
    let dir = tempdir("imbalanced");
    let data = dir.join("scans");
    for (class, n, value) in [("healthy", 24, 60u8), ("lesion", 6, 200u8)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..n {
            let img =
                image::GrayImage::from_fn(300, 200, |x, y| image::Luma([value.wrapping_add(((x + y + i) % 7) as u8)]));
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(data.join("notes.txt"), "not an image").unwrap();
    let recipe = dir.join("recipes/scans.toml");
    std::fs::create_dir_all(recipe.parent().unwrap()).unwrap();
    let out = tlab(&dir, &["new", "scans", "-o", "recipes/scans.toml"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&recipe).unwrap();
    for want in [
        "train = \"../scans\"",
        "valid_split = 0.2",
        "greyscale",
        "typical image 300x200 px",
        "image_size = 224",
        "class_weights = \"balanced\"   # the largest class has 4.0x the images of the smallest",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert!(!text.contains("brightness_range"), "greyscale data gets no colour augmentation:\n{text}");
    let parsed = tlab::recipe::load(&recipe).expect("the starter recipe parses");
    assert_eq!(parsed.steps.len(), 8);

    // A folder that is no data set: one line naming it.
    let empty = tlab(&dir, &["new", "recipes"]);
    assert!(!empty.status.success());
    let err = String::from_utf8_lossy(&empty.stderr);
    assert!(err.contains("recipes") && err.lines().count() == 1, "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
