//! Every architecture of the zoo against its PyTorch reference, on fixtures
//! made by tests/fixtures/make_zoo_fixtures.py (no torch needed here).
//!
//! The fixture lists each reference state-dict key and shape; the weights are
//! rebuilt here from the same formula, loaded strictly (so tlab's names must
//! be the reference's, no more, no fewer), and the ImageNet logits compared,
//! unfrozen and frozen (conv + BN folded).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use tlab::models::layers::{Freeze, Mode, ParamLoader};
use tlab::models::naming::Naming;

fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zoo_logits.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `h = Σ_j ord(c_j)·(j+1)`, as `key_hash` in the script.
fn key_hash(key: &str) -> u64 {
    key.chars().enumerate().map(|(j, c)| c as u64 * (j as u64 + 1)).sum()
}

/// splitmix64 of `i + h·φ64`, top 24 bits, mapped to [-1, 1) (`uniform` in the script).
fn uniform(key: &str, n: usize) -> impl Iterator<Item = f64> {
    let seed = key_hash(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n as u64).map(move |i| {
        let mut z = i.wrapping_add(seed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f64 / (1u64 << 23) as f64 - 1.0
    })
}

/// `formula` in the script, evaluated in f64 in the same order, then rounded to f32.
fn formula(key: &str, shape: &[usize], gain: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let leaf = key.rsplit('.').next().unwrap();
    let values: Vec<f32> = match leaf {
        "weight" | "in_proj_weight" if shape.len() >= 2 => {
            let fan_in = (shape[1..].iter().product::<usize>() as f64).sqrt();
            uniform(key, n).map(|u| (u * gain / fan_in) as f32).collect()
        }
        "weight" => uniform(key, n).map(|u| (1.0 + 0.2 * u) as f32).collect(),
        "bias" | "running_mean" | "in_proj_bias" => uniform(key, n).map(|u| (0.1 * u) as f32).collect(),
        "running_var" => uniform(key, n).map(|u| (1.0 + 0.4 * u) as f32).collect(),
        "class_token" | "cls_token" | "pos_embedding" | "pos_embed" => {
            uniform(key, n).map(|u| (0.5 * u) as f32).collect()
        }
        "layer_scale" | "gamma" => uniform(key, n).map(|u| (0.2 * (1.0 + 0.5 * u)) as f32).collect(),
        other => panic!("no formula for {other}"),
    };
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// x[i, c, h, w] = 2·sin(0.05·h + 0.031·w + 0.7·c + 1.3·i), as in the scripts.
fn formula_input(n: usize, size: usize) -> Tensor {
    let mut v = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n {
        for c in 0..3 {
            for h in 0..size {
                for w in 0..size {
                    v.push((2.0 * (0.05 * h as f64 + 0.031 * w as f64 + 0.7 * c as f64 + 1.3 * i as f64).sin()) as f32);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).unwrap()
}

/// Runs every fixture case of `arch` and returns the largest difference seen.
fn check(arch: &str) -> f64 {
    let fixture = fixture();
    let cases: Vec<&serde_json::Value> =
        fixture["cases"].as_array().unwrap().iter().filter(|c| c["arch"] == arch).collect();
    assert!(!cases.is_empty(), "no fixture case for {arch}");
    let mut worst = 0f64;
    for case in cases {
        let size = case["size"].as_u64().unwrap() as usize;
        let gain = case["gain"].as_f64().unwrap();
        let stride = case["stride"].as_u64().unwrap() as usize;
        let dims = |v: &serde_json::Value| -> Vec<usize> {
            v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
        };
        // A timm-named case lists each timm key and shape with the reference
        // key and shape whose formula value it holds.
        let timm = case["naming"] == "timm";
        let tensors: HashMap<String, Tensor> = case["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let name = k[0].as_str().unwrap();
                let t = if timm {
                    formula(k[2].as_str().unwrap(), &dims(&k[3]), gain).reshape(dims(&k[1])).unwrap()
                } else {
                    formula(name, &dims(&k[1]), gain)
                };
                (name.to_owned(), t)
            })
            .collect();
        let (tensors, naming) = tlab::models::naming::to_reference(arch, tensors).unwrap();
        let expected = if timm { Naming::Timm } else { Naming::Reference };
        assert_eq!(naming, expected, "{arch}: the checkpoint's naming");
        let want: Vec<Vec<f64>> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
            .collect();
        let mut p = ParamLoader::from_tensors(format!("{arch} formula weights"), tensors);
        let mut backbone = tlab::models::build_backbone(arch, &mut p, true).unwrap();
        // Strict: every reference key used, none missing.
        p.finish(true, None).unwrap();
        let x = formula_input(2, size);
        let mut previous: Option<Vec<Vec<f32>>> = None;
        for frozen in [false, true] {
            for b in 0..backbone.num_blocks() {
                backbone.set_block_freeze(b, Freeze { frozen, train_bn: false }).unwrap();
            }
            let f = backbone.forward_blocks(&x, 0..backbone.num_blocks(), Mode::EVAL).unwrap();
            let logits = backbone.imagenet_logits(&f).unwrap().expect("classifier loaded").to_vec2::<f32>().unwrap();
            assert_eq!(logits[0].len(), 1000);
            let mut max = 0f64;
            for (g, w) in logits.iter().zip(&want) {
                let strided: Vec<f32> = g.iter().step_by(stride).copied().collect();
                assert_eq!(strided.len(), w.len());
                for (a, b) in strided.iter().zip(w) {
                    max = max.max((f64::from(*a) - b).abs());
                }
            }
            eprintln!("{arch} @ {size}px (frozen = {frozen}): max |logit difference| vs PyTorch = {max:.2e}");
            assert!(max < 1e-4, "{arch} @ {size}px (frozen = {frozen}): max abs difference {max}");
            if let Some(prev) = &previous {
                let d =
                    prev.iter().flatten().zip(logits.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                // Each path is within 1e-4 of PyTorch, so they may differ by up
                // to twice that (rounding goes opposite ways on some CPUs'
                // kernel paths); a folding bug is orders of magnitude larger.
                assert!(d < 2e-4, "{arch}: frozen and unfrozen forward differ by {d}");
            }
            previous = Some(logits);
            worst = worst.max(max);
        }
    }
    worst
}

#[test]
fn resnet18_matches_torchvision() {
    check("resnet18");
}

#[test]
fn resnet34_matches_torchvision() {
    check("resnet34");
}

#[test]
fn resnet50_matches_torchvision() {
    check("resnet50");
}

#[test]
fn resnet101_matches_torchvision() {
    check("resnet101");
}

#[test]
fn resnet152_matches_torchvision() {
    check("resnet152");
}

#[test]
fn wide_resnet50_2_matches_torchvision() {
    check("wide_resnet50_2");
}

#[test]
fn vgg16_matches_torchvision() {
    check("vgg16");
}

#[test]
fn vgg19_matches_torchvision() {
    check("vgg19");
}

#[test]
fn efficientnet_lite0_matches_reference() {
    check("efficientnet_lite0");
}

#[test]
fn efficientnet_lite1_matches_reference() {
    check("efficientnet_lite1");
}

#[test]
fn efficientnet_lite2_matches_reference() {
    check("efficientnet_lite2");
}

#[test]
fn convnext_tiny_and_small_match_torchvision() {
    check("convnext_tiny");
    check("convnext_small");
}

#[test]
fn vision_transformers_match_torchvision_and_timm() {
    // ViT-B/16 at 48 px and DeiT-S at 64 and 80 px run with position
    // embeddings resampled from the 14 × 14 pretraining grid, DINOv2 at 70 px
    // from its 37 × 37 one: the resampling is checked with the network.
    check("vit_b_16");
    check("deit_small_patch16_224");
    check("vit_small_patch14_dinov2");
}

#[test]
fn timm_named_checkpoints_load_renamed() {
    // The convnext_tiny, efficientnet_b0, vit_b_16 and MobileNetV3 cases include one saved
    // under timm's names, with timm's own logits (checked in `check`).
    let fixture = fixture();
    let timm: Vec<_> = fixture["cases"].as_array().unwrap().iter().filter(|c| c["naming"] == "timm").collect();
    for arch in ["convnext_tiny", "efficientnet_b0", "vit_b_16", "mobilenet_v3_large", "mobilenet_v3_small"] {
        assert!(timm.iter().any(|c| c["arch"] == arch), "no timm-named case for {arch}");
    }
}

#[test]
fn efficientnet_b0_to_b3_match_torchvision() {
    for arch in ["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"] {
        check(arch);
    }
}

#[test]
fn efficientnet_v2_s_matches_torchvision() {
    check("efficientnet_v2_s");
}

#[test]
fn mobilenet_v3_large_matches_torchvision() {
    check("mobilenet_v3_large");
}

#[test]
fn mobilenet_v3_small_matches_torchvision() {
    check("mobilenet_v3_small");
}

#[test]
fn inception_v3_matches_torchvision() {
    check("inception_v3");
}

#[test]
fn fixture_covers_every_architecture_but_mobilenet() {
    // MobileNetV2 is checked with its real weights in weights_parity.rs.
    let fixture = fixture();
    for arch in tlab::models::ARCHITECTURES.iter().filter(|a| **a != "mobilenet_v2") {
        assert!(fixture["cases"].as_array().unwrap().iter().any(|c| c["arch"] == *arch), "no case for {arch}");
    }
}
