//! Weight formats and architecture parity against PyTorch, on fixtures made by
//! tests/fixtures/make_torch_fixtures.py (no torch needed here).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use tlab::models::layers::{self, Mode, ParamLoader};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn expected_small() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixture("small_expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_small(path: &str) {
    let tensors: HashMap<String, Tensor> = tlab::formats::weights::load(&fixture(path)).unwrap();
    let expected = expected_small();
    assert_eq!(tensors.len(), expected.len(), "{path}: tensor count");
    for (name, e) in &expected {
        let t = tensors.get(name).unwrap_or_else(|| panic!("{path}: missing {name}"));
        let shape: Vec<usize> = e["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(t.dims(), shape.as_slice(), "{path}: shape of {name}");
        let want: Vec<f64> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let got: Vec<f64> = match e["dtype"].as_str().unwrap() {
            "int64" => {
                assert_eq!(t.dtype(), DType::I64);
                t.flatten_all().unwrap().to_vec1::<i64>().unwrap().into_iter().map(|v| v as f64).collect()
            }
            "float16" => {
                assert_eq!(t.dtype(), DType::F16);
                t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
            }
            _ => {
                assert_eq!(t.dtype(), DType::F32);
                t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
            }
        };
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{path}: {name}: {g} vs {w}");
        }
    }
}

#[test]
fn legacy_pth_with_permuted_strides_and_offsets() {
    check_small("legacy_small.pth");
}

#[test]
fn zip_pth_with_permuted_strides_and_offsets() {
    check_small("zip_small.pth");
}

#[test]
fn convert_round_trips_through_safetensors() {
    let out = std::env::temp_dir().join(format!("tlab-convert-{}.safetensors", std::process::id()));
    let tensors = tlab::formats::weights::load_ordered(&fixture("legacy_small.pth")).unwrap();
    tlab::formats::weights::save_safetensors(&tensors, DType::F32, &out).unwrap();
    assert_eq!(tlab::formats::weights::detect(&out).unwrap(), tlab::formats::weights::Format::Safetensors);
    let back = tlab::formats::weights::load(&out).unwrap();
    for (name, t) in &tensors {
        let b = &back[name];
        assert_eq!(b.dims(), t.dims());
        let d = (b.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap()).unwrap().abs().unwrap();
        assert!(d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() < 1e-6, "{name}");
    }
    std::fs::remove_file(out).unwrap();
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let bytes = std::fs::read(fixture("legacy_small.pth")).unwrap();
    let dir = std::env::temp_dir().join(format!("tlab-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [20, bytes.len() / 2, bytes.len() - 3] {
        let p = dir.join(format!("cut{cut}.pth"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = tlab::formats::weights::load(&p).unwrap_err().to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
    }
    let p = dir.join("notes.pth");
    std::fs::write(&p, "just text").unwrap();
    let err = tlab::formats::weights::load(&p).unwrap_err().to_string();
    assert!(err.contains("not a weights file"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// x[i, c, h, w] = 2·sin(0.05·h + 0.031·w + 0.7·c + 1.3·i), as in the fixture script.
fn formula_input(n: usize, size: usize) -> Tensor {
    let mut v = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    let x = 2.0 * (0.05 * h as f64 + 0.031 * w as f64 + 0.7 * c as f64 + 1.3 * i as f64).sin();
                    v.push(x as f32);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).unwrap()
}

fn mobilenet_logits(frozen: bool) -> Vec<Vec<f32>> {
    let weights = tlab::predict::shipped_imagenet_weights();
    let mut p = ParamLoader::from_tensors("shipped", tlab::formats::weights::load(&weights).unwrap());
    let mut backbone = tlab::models::build_backbone("mobilenet_v2", &mut p, true).unwrap();
    p.finish(true, None).unwrap();
    if frozen {
        // Folded conv+BN path must agree with the unfolded one.
        for b in 0..backbone.num_blocks() {
            backbone.set_block_freeze(b, layers::Freeze { frozen: true, train_bn: false }).unwrap();
        }
    }
    let x = formula_input(2, 224);
    let f = backbone.forward_blocks(&x, 0..backbone.num_blocks(), Mode::EVAL).unwrap();
    let logits = backbone.imagenet_classifier().unwrap().forward(&layers::global_avg_pool(&f).unwrap()).unwrap();
    logits.to_vec2::<f32>().unwrap()
}

#[test]
fn mobilenet_v2_logits_match_torchvision() {
    let text = std::fs::read_to_string(fixture("mobilenet_v2_logits.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want: Vec<Vec<f64>> = fixture["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    for frozen in [false, true] {
        let got = mobilenet_logits(frozen);
        let mut max = 0f64;
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                max = max.max((f64::from(*a) - b).abs());
            }
        }
        eprintln!("mobilenet_v2 (frozen = {frozen}): max |logit difference| = {max:.2e}");
        assert!(max < 1e-4, "max abs difference {max}");
    }
}
