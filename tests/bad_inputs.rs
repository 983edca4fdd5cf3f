//! Bad input, one case per row: the CLI must exit non-zero with a clear
//! one-line message naming the file, position or key — and never panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn png(path: &Path, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(12, 12, image::Rgb([shade, 255 - shade, shade / 2])).save(path).unwrap();
}

/// A valid two-class data set under `root/{train,valid}`.
fn data(root: &Path) {
    for split in ["train", "valid"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            for i in 0..4 {
                png(&root.join(split).join(class).join(format!("{i}.png")), (c * 200 + i * 10) as u8);
            }
        }
    }
}

const BASE: &str = "name = \"bad\"\n[data]\ntrain = \"data/train\"\nvalid = \"data/valid\"\nimage_size = 32\n[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\nweights = \"WEIGHTS\"\n[[step]]\nkind = \"freeze\"\n[[step]]\nkind = \"fine_tune\"\nepochs = 1\n[[step]]\nkind = \"evaluate\"\n";

struct Case {
    name: &'static str,
    /// Edits the recipe text.
    recipe: fn(&str) -> String,
    /// Damages the data or weights in the case folder.
    setup: fn(&Path),
    /// Substrings the error output must contain.
    expect: &'static [&'static str],
}

fn no_setup(_: &Path) {}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "malformed TOML",
            recipe: |r| r.replace("[data]", "[data"),
            setup: no_setup,
            expect: &["bad.toml:2:"],
        },
        Case {
            name: "unknown key",
            recipe: |r| r.replace("epochs = 1", "epochs = 1\nlearning_rate = 0.1"),
            setup: no_setup,
            expect: &["bad.toml:15:1", "unknown key `learning_rate`"],
        },
        Case {
            name: "negative lr",
            recipe: |r| r.replace("epochs = 1", "epochs = 1\nlr = -0.1"),
            setup: no_setup,
            expect: &["bad.toml:15:", "`lr` must be > 0"],
        },
        Case {
            name: "valid_split outside (0,1)",
            recipe: |r| r.replace("valid = \"data/valid\"", "valid_split = 1.5"),
            setup: no_setup,
            expect: &["bad.toml:4:", "valid_split"],
        },
        Case {
            name: "rotation beyond 360",
            recipe: |r| {
                r.replace(
                    "[[step]]\nkind = \"fine_tune\"",
                    "[[step]]\nkind = \"augment\"\nrotation_range = 400\n[[step]]\nkind = \"fine_tune\"",
                )
            },
            setup: no_setup,
            expect: &["rotation_range", "400"],
        },
        Case {
            name: "zero epochs",
            recipe: |r| r.replace("epochs = 1", "epochs = 0"),
            setup: no_setup,
            expect: &["`epochs` must be >= 1"],
        },
        Case {
            name: "zero batch",
            recipe: |r| r.replace("image_size = 32", "image_size = 32\nbatch_size = 0"),
            setup: no_setup,
            expect: &["batch_size"],
        },
        Case {
            name: "fine_tune before backbone",
            recipe: |r| {
                r.replacen(
                    "[[step]]\nkind = \"backbone\"",
                    "[[step]]\nkind = \"fine_tune\"\n[[step]]\nkind = \"backbone\"",
                    1,
                )
            },
            setup: no_setup,
            expect: &["needs a backbone step before it"],
        },
        Case {
            name: "unknown backbone",
            recipe: |r| r.replace("mobilenet_v2", "mobilenet_v3"),
            setup: no_setup,
            expect: &["mobilenet_v3", "mobilenet_v2"],
        },
        Case {
            name: "missing data folder",
            recipe: |r| r.replace("data/train", "data/nope"),
            setup: no_setup,
            expect: &["data/nope"],
        },
        Case {
            name: "empty data folder",
            recipe: |r| r.to_string(),
            setup: |d| {
                std::fs::remove_dir_all(d.join("data/train")).unwrap();
                std::fs::create_dir_all(d.join("data/train")).unwrap();
            },
            expect: &["no class sub-folders"],
        },
        Case {
            name: "class folder without images",
            recipe: |r| r.to_string(),
            setup: |d| {
                std::fs::create_dir_all(d.join("data/train/c")).unwrap();
                std::fs::write(d.join("data/train/c/notes.txt"), "x").unwrap();
            },
            expect: &["`c` contains no images"],
        },
        Case {
            name: "class only in valid",
            recipe: |r| r.to_string(),
            setup: |d| png(&d.join("data/valid/zebra/0.png"), 3),
            expect: &["`zebra`", "not in the training folder"],
        },
        Case {
            name: "every image of a class corrupt",
            recipe: |r| r.to_string(),
            setup: |d| {
                for i in 0..4 {
                    std::fs::write(d.join(format!("data/train/b/{i}.png")), b"\x89PNG broken").unwrap();
                }
            },
            expect: &["class `b` has no readable training images"],
        },
        Case {
            name: "missing weights",
            recipe: |r| r.replace("WEIGHTS", "nowhere.safetensors"),
            setup: no_setup,
            expect: &["nowhere.safetensors"],
        },
        Case {
            name: "truncated weights",
            recipe: |r| r.replace("WEIGHTS", "cut.safetensors"),
            setup: |d| {
                let bytes = std::fs::read(tlab::predict::shipped_imagenet_weights()).unwrap();
                std::fs::write(d.join("cut.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
            },
            expect: &["cut.safetensors"],
        },
        Case {
            name: "not a weights file",
            recipe: |r| r.replace("WEIGHTS", "readme.pth"),
            setup: |d| std::fs::write(d.join("readme.pth"), "hello").unwrap(),
            expect: &["readme.pth", "not a weights file"],
        },
        Case {
            name: "weights of another architecture",
            recipe: |r| r.replace("arch = \"mobilenet_v2\"", "arch = \"resnet18\""),
            setup: no_setup,
            expect: &["does not fit the architecture", "missing `conv1.weight`"],
        },
    ]
}

#[test]
fn every_bad_input_fails_cleanly_with_a_clear_message() {
    let root: PathBuf = std::env::temp_dir().join(format!("tlab-bad-{}", std::process::id()));
    let weights = tlab::predict::shipped_imagenet_weights();
    let mut failures = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let dir = root.join(format!("{i}"));
        data(&dir.join("data"));
        let recipe = (case.recipe)(BASE).replace("WEIGHTS", &weights.display().to_string());
        std::fs::write(dir.join("bad.toml"), recipe).unwrap();
        (case.setup)(&dir);
        let out = Command::new(env!("CARGO_BIN_EXE_tlab"))
            .args(["run", dir.join("bad.toml").to_str().unwrap(), "--out", dir.join("run").to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        let ok = !out.status.success()
            && !text.contains("panicked")
            && case.expect.iter().all(|e| err.contains(e))
            && err.lines().filter(|l| l.starts_with("error") || l.contains(".toml:")).count() <= 2;
        if !ok {
            failures.push(format!("{}: status {:?}\n{text}", case.name, out.status.code()));
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n---\n"));
}

#[test]
fn data_over_the_memory_budget_is_refused_before_decoding() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tlab-budget-{}", std::process::id()));
    data(&dir.join("data"));
    let weights = tlab::predict::shipped_imagenet_weights();
    let recipe = BASE
        .replace("WEIGHTS", &weights.display().to_string())
        .replace("image_size = 32", "image_size = 1024\ncache = \"memory\"");
    std::fs::write(dir.join("big.toml"), recipe).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlab"))
        .args(["run", dir.join("big.toml").to_str().unwrap(), "--out", dir.join("run").to_str().unwrap()])
        .env("TLAB_MEMORY_BUDGET_MB", "10")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("over the memory budget of 10 MiB (TLAB_MEMORY_BUDGET_MB)") && err.contains("48 MiB"),
        "{err}"
    );
    assert!(err.contains("stream the images with `cache = \"auto\"`"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Over the memory budget, the default `cache = "auto"` streams the images
/// and trains to the same numbers as in memory: same batches, same
/// augmentation draws (live, through the whole network), same weights.
#[test]
fn data_over_the_memory_budget_streams_to_the_same_result() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tlab-stream-{}", std::process::id()));
    // Textured images of odd sizes, so decoding and resizing show in the pixels.
    for split in ["train", "valid"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            for i in 0..4u32 {
                let path = dir.join("data").join(split).join(class).join(format!("{i}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let img = image::RgbImage::from_fn(40 + 3 * i, 29 + 5 * i, |x, y| {
                    image::Rgb([(x * 13 + y * 3 + i) as u8, (y * 9 + c as u32 * 90) as u8, ((x ^ y) * 5) as u8])
                });
                img.save(&path).unwrap();
            }
        }
    }
    let weights = tlab::predict::shipped_imagenet_weights();
    let recipe = BASE
        .replace("WEIGHTS", &weights.display().to_string())
        .replace("[[step]]\nkind = \"fine_tune\"\nepochs = 1", "[[step]]\nkind = \"augment\"\nhorizontal_flip = true\nrotation_range = 10\n[[step]]\nkind = \"fine_tune\"\nepochs = 2\naugment_views = 0");
    std::fs::write(dir.join("ok.toml"), recipe).unwrap();
    let run = |name: &str, budget: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tlab"));
        cmd.args(["run", dir.join("ok.toml").to_str().unwrap(), "--out", dir.join(name).to_str().unwrap()]);
        cmd.env("TLAB_FEATURE_CACHE_DIR", dir.join("features")).env("TLAB_IMAGE_CACHE_DIR", dir.join("images"));
        if let Some(mb) = budget {
            cmd.env("TLAB_MEMORY_BUDGET_MB", mb);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let metrics = std::fs::read_to_string(dir.join(name).join("metrics.json")).unwrap();
        (text, metrics)
    };
    let (memory_log, memory) = run("memory", None);
    let (stream_log, streamed) = run("stream", Some("0"));
    assert!(memory_log.contains("decoded 8 train + 8 valid images"), "{memory_log}");
    assert!(stream_log.contains("listed 8 train + 8 valid images"), "{stream_log}");
    assert!(stream_log.contains("streaming them from disk (over the memory budget of 0 MiB"), "{stream_log}");
    assert_eq!(memory, streamed, "streaming changed the result");
    // `cache = "disk"`: decoded once into a file per split, same result.
    let text = std::fs::read_to_string(dir.join("ok.toml")).unwrap();
    std::fs::write(dir.join("ok.toml"), text.replace("image_size = 32", "image_size = 32\ncache = \"disk\"")).unwrap();
    let (disk_log, from_disk) = run("disk", None);
    assert!(disk_log.contains("reading them from the image cache in"), "{disk_log}");
    let files = std::fs::read_dir(dir.join("images")).unwrap().filter_map(|e| e.ok());
    let images = files.filter(|e| e.path().extension().is_some_and(|x| x == "images")).count();
    assert_eq!(images, 2, "one file per split");
    assert_eq!(memory, from_disk, "the image cache changed the result");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn non_image_files_are_skipped_and_counted() {
    let dir: PathBuf = std::env::temp_dir().join(format!("tlab-skip-{}", std::process::id()));
    data(&dir.join("data"));
    std::fs::write(dir.join("data/train/a/notes.txt"), "x").unwrap();
    std::fs::write(dir.join("data/train/b/3.png"), "broken").unwrap();
    let weights = tlab::predict::shipped_imagenet_weights();
    std::fs::write(dir.join("ok.toml"), BASE.replace("WEIGHTS", &weights.display().to_string())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlab"))
        .args(["run", dir.join("ok.toml").to_str().unwrap(), "--out", dir.join("run").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("2 skipped"), "{text}");
    assert!(text.contains("warning: skipped") && text.contains("3.png"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
