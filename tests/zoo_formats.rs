//! `tlab convert` and `tlab inspect` across formats: safetensors → f16
//! safetensors, and the architectures `inspect` recognises in each file.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::DType;

fn tlab(args: &[&Path]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tlab")).args(args).output().expect("run tlab");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("panicked"), "tlab panicked:\n{text}");
    (out.status.success(), text)
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tlab-formats-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn safetensors_converts_to_f16_and_still_fits_and_classifies() {
    let dir = tempdir("f16");
    let src = tlab::predict::shipped_imagenet_weights();
    let f16 = dir.join("mnv2-f16.safetensors");
    let (ok, text) = tlab(&[Path::new("convert"), &src, &f16, Path::new("--dtype"), Path::new("f16")]);
    assert!(ok, "{text}");

    let original = tlab::formats::weights::load(&src).unwrap();
    let half = tlab::formats::weights::load(&f16).unwrap();
    assert_eq!(original.len(), half.len());
    for (name, t) in &original {
        let h = &half[name];
        assert_eq!(h.dims(), t.dims(), "{name}");
        if t.dtype().is_float() {
            assert_eq!(h.dtype(), DType::F16, "{name}");
            // f16 keeps 11 significant bits: relative error ≤ 2⁻¹¹ (plus subnormals near 0).
            let (a, b) = (t.to_dtype(DType::F32).unwrap(), h.to_dtype(DType::F32).unwrap());
            let err = (&a - &b).unwrap().abs().unwrap();
            let bound = ((a.abs().unwrap() * (1.0 / 2048.0)).unwrap() + 1e-7).unwrap();
            let over = err.gt(&bound).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap();
            assert_eq!(over.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        } else {
            assert_eq!(h.dtype(), t.dtype(), "{name}: integer tensors keep their type");
        }
    }
    assert!(std::fs::metadata(&f16).unwrap().len() * 10 < std::fs::metadata(&src).unwrap().len() * 6);

    let (ok, text) = tlab(&[Path::new("inspect"), &f16]);
    assert!(
        ok && text.contains("f16") && text.contains("fits: mobilenet_v2 (with ImageNet classifier, reference names)"),
        "{text}"
    );

    let orange = Path::new("/usr/share/doc/opencv-doc/examples/data/orange.jpg");
    if orange.is_file() {
        let (ok, text) = tlab(&[
            Path::new("predict"),
            Path::new("--imagenet"),
            Path::new("--weights"),
            &f16,
            Path::new("--top"),
            Path::new("1"),
            orange,
        ]);
        assert!(ok && text.contains("orange\n"), "{text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn inspect_recognises_each_zoo_architecture() {
    // Random-weight checkpoints of two architectures, with and without the
    // ImageNet classifier; inspect must name exactly that architecture.
    let dir = tempdir("inspect");
    for arch in ["resnet50", "efficientnet_lite1"] {
        for with_classifier in [true, false] {
            let b =
                tlab::models::build_backbone(arch, &mut tlab::models::layers::ParamLoader::random(1), with_classifier)
                    .unwrap();
            let mut vars = Vec::new();
            b.named_vars(&mut vars);
            if let Some(fc) = b.imagenet_classifier() {
                fc.named_vars(&mut vars);
            }
            let tensors: Vec<_> = vars.into_iter().map(|(n, v)| (n, v.as_detached_tensor())).collect();
            let path = dir.join(format!("{arch}-{with_classifier}.safetensors"));
            tlab::formats::weights::save_safetensors(&tensors, DType::F16, &path).unwrap();
            let (ok, text) = tlab(&[Path::new("inspect"), &path]);
            let want = if with_classifier { "with ImageNet classifier" } else { "backbone only" };
            assert!(ok && text.contains(&format!("fits: {arch} ({want}, reference names)")), "{text}");
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}
