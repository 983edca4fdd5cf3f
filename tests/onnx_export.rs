//! The ONNX export of every architecture, evaluated op by op by a small
//! reference interpreter (`tlab::formats::onnx::run`, on candle's generic ops, not
//! tlab's kernels), against tlab's own logits. ONNX Runtime checks the real thing
//! in `.ci/test` (`.ci/check_onnx.py`); this keeps every architecture's
//! export honest in plain `cargo test`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use prost::Message;
use tlab::augment::Rng;
use tlab::formats::onnx::ModelProto;
use tlab::models::card::{HeadCard, ModelCard};
use tlab::models::layers::{Mode, ParamLoader};
use tlab::models::{self, Classifier, Head, Preprocess};
use tlab::recipe::{HeadConfig, Pooling};
use tlab::tools::export::{onnx_model, OnnxOptions};

/// A random classifier whose BatchNorm statistics are not the trivial
/// 0 / 1 of a fresh init (one training-mode pass moves them).
fn classifier(arch: &str, size: usize, head: &HeadConfig, classes: usize) -> (Classifier, ModelCard) {
    let backbone = models::build_backbone(arch, &mut ParamLoader::random(5), false).unwrap();
    let in_features = models::head_inputs(backbone.as_ref(), head.pooling, size as u32).unwrap();
    let preprocess = backbone.preprocess();
    let model = Classifier::new(backbone, Head::new(head, in_features, classes, 9).unwrap());
    let x = input(4, size, 1.0);
    model.forward_from(&x, 0, Mode::train(0), &mut Rng::new(1)).unwrap();
    // A head BatchNorm's scale and shift away from 1 / 0 as well, so folding
    // it into the Gemm is checked on every term.
    for (name, var) in model.named_vars().into_iter().filter(|(n, _)| n.starts_with("head.bn.")) {
        let n = var.elem_count();
        let v: Vec<f32> = (0..n).map(|i| 0.5 + ((i * 7 + name.len()) % 11) as f32 / 10.0).collect();
        var.set(&Tensor::from_vec(v, n, &Device::Cpu).unwrap()).unwrap();
    }
    let card = ModelCard {
        backbone: arch.into(),
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        image_size: size as u32,
        preprocess: Preprocess { input_size: size as u32, ..preprocess },
        head: HeadCard::from(head),
        recipe: "test".into(),
    };
    (model, card)
}

fn input(n: usize, size: usize, phase: f32) -> Tensor {
    let v: Vec<f32> = (0..n * 3 * size * size)
        .map(|i| 1.5 * ((i as f32) * 0.0137 + phase).sin() + 0.2 * (i % 7) as f32 - 0.6)
        .collect();
    Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).unwrap()
}

/// Runs `model` on `x` with the library's interpreter, its convolutions on
/// candle's own `conv2d` (zero padding added first), not tlab's kernels.
fn evaluate(model: &ModelProto, x: Tensor) -> HashMap<String, Tensor> {
    let candle_conv = |x: &Tensor, w: &Tensor, g: tlab::formats::onnx::ConvGeometry| -> tlab::Result<Tensor> {
        let x = x.pad_with_zeros(2, g.pad.top, g.pad.bottom)?.pad_with_zeros(3, g.pad.left, g.pad.right)?;
        Ok(x.conv2d(w, 0, g.stride, 1, g.groups)?)
    };
    tlab::formats::onnx::run_with(model, x, &candle_conv).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn check(arch: &str, size: usize, head: HeadConfig, opts: OnnxOptions, limit: f32) {
    let (model, card) = classifier(arch, size, &head, 4);
    let bytes = onnx_model(&model, &card, &opts).unwrap().encode_to_vec();
    let proto = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(proto.opset_import[0].version, opts.opset);
    let meta: HashMap<_, _> = proto.metadata_props.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(meta["tlab.classes"], r#"["class0","class1","class2","class3"]"#);
    let x = input(2, size, 0.3);
    let want = model.forward_from(&x, 0, Mode::EVAL, &mut Rng::new(0)).unwrap();
    let fed = if opts.with_preprocessing {
        // Integer pixels, as the graph's uint8 input holds them.
        let px: Vec<u8> = (0..2 * size * size * 3).map(|i| ((i * 37 + i / 5) % 256) as u8).collect();
        let as_f32: Vec<f32> = px.iter().map(|&p| f32::from(p)).collect();
        let nhwc = Tensor::from_vec(as_f32, (2, size, size, 3), &Device::Cpu).unwrap();
        let nchw =
            card.preprocess.to_tensor(&nhwc.flatten_all().unwrap().to_vec1::<f32>().unwrap(), 2, size, size).unwrap();
        let want = model.forward_from(&nchw, 0, Mode::EVAL, &mut Rng::new(0)).unwrap();
        let got = evaluate(&proto, nhwc);
        let d = max_diff(&got["logits"], &want);
        assert!(d < limit, "{arch} with preprocessing: max |logit diff| {d}");
        return;
    } else {
        x
    };
    let got = evaluate(&proto, fed);
    let d = max_diff(&got["logits"], &want);
    eprintln!(
        "{arch} {size}px: max |logit diff| {d:.2e}, {} nodes, {:.1} MB",
        proto.graph.as_ref().unwrap().node.len(),
        bytes.len() as f64 / 1e6
    );
    assert!(d < limit, "{arch}: max |logit diff| {d} (limit {limit})");
    let p = candle_nn::ops::softmax(&want, 1).unwrap();
    let probability_limit = if opts.fp16 { 1e-2 } else { 1e-5 };
    assert!(max_diff(&got["probabilities"], &p) < probability_limit);
}

fn avg() -> HeadConfig {
    HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.2, batchnorm: false }
}

#[test]
fn mobilenet_v2_exports_exactly() {
    check("mobilenet_v2", 64, avg(), OnnxOptions::default(), 1e-4);
}

#[test]
fn resnets_export_exactly_with_odd_sizes_and_hidden_layers() {
    check(
        "resnet18",
        67,
        HeadConfig { pooling: Pooling::Avg, hidden: vec![16], dropout: 0.0, batchnorm: false },
        OnnxOptions::default(),
        1e-4,
    );
    check("resnet50", 64, avg(), OnnxOptions { dynamic_batch: true, ..OnnxOptions::default() }, 1e-4);
}

#[test]
fn vgg_exports_exactly_with_a_flatten_head() {
    check(
        "vgg16",
        64,
        HeadConfig { pooling: Pooling::Flatten, hidden: vec![], dropout: 0.0, batchnorm: false },
        OnnxOptions::default(),
        1e-4,
    );
}

#[test]
fn concat_pooling_exports_exactly() {
    check(
        "mobilenet_v2",
        64,
        HeadConfig { pooling: Pooling::Concat, hidden: vec![8], dropout: 0.0, batchnorm: false },
        OnnxOptions::default(),
        1e-4,
    );
}

#[test]
fn a_batchnorm_head_folds_into_its_gemms_exactly() {
    let head = HeadConfig { pooling: Pooling::Concat, hidden: vec![8], dropout: 0.0, batchnorm: true };
    check("resnet18", 48, head, OnnxOptions::default(), 1e-4);
}

#[test]
fn efficientnet_lite_exports_tf_same_padding_exactly() {
    check("efficientnet_lite0", 67, avg(), OnnxOptions::default(), 1e-4);
    check("efficientnet_lite2", 64, avg(), OnnxOptions { opset: 13, ..OnnxOptions::default() }, 1e-4);
}

#[test]
fn mobilenet_v3_exports_hard_swish_and_squeeze_excitation_exactly() {
    check("mobilenet_v3_large", 67, avg(), OnnxOptions::default(), 1e-4);
    check("mobilenet_v3_small", 64, avg(), OnnxOptions { opset: 13, ..OnnxOptions::default() }, 1e-4);
}

#[test]
fn efficientnet_exports_silu_and_squeeze_excitation_exactly() {
    check("efficientnet_b0", 67, avg(), OnnxOptions::default(), 1e-4);
    check("efficientnet_v2_s", 64, avg(), OnnxOptions { opset: 13, ..OnnxOptions::default() }, 1e-4);
}

#[test]
fn convnext_exports_its_channel_norm_gelu_and_layer_scale_exactly() {
    check("convnext_tiny", 64, avg(), OnnxOptions { opset: 13, ..OnnxOptions::default() }, 1e-4);
}

#[test]
fn vision_transformers_export_attention_and_resampled_positions_exactly() {
    // DeiT at 32 px (a resampled 2 × 2 grid) with the lowest and highest
    // opsets tlab writes; DINOv2 adds layer scale; ViT-B a hidden layer.
    for opset in [13, 21] {
        check("deit_small_patch16_224", 32, avg(), OnnxOptions { opset, ..OnnxOptions::default() }, 1e-4);
    }
    check("vit_small_patch14_dinov2", 28, avg(), OnnxOptions::default(), 1e-4);
    let hidden = HeadConfig { hidden: vec![8], ..avg() };
    check("vit_b_16", 32, hidden, OnnxOptions { dynamic_batch: true, ..OnnxOptions::default() }, 1e-4);
}

#[test]
fn inception_v3_exports_its_branches_pools_and_input_transform_exactly() {
    check("inception_v3", 79, avg(), OnnxOptions::default(), 1e-4);
}

#[test]
fn preprocessing_and_fp16_variants() {
    check("mobilenet_v2", 48, avg(), OnnxOptions { with_preprocessing: true, ..OnnxOptions::default() }, 1e-4);
    // float16 weights: close, not exact.
    check("resnet18", 48, avg(), OnnxOptions { fp16: true, ..OnnxOptions::default() }, 5e-2);
}

#[test]
fn an_unsupported_opset_is_a_clear_error() {
    let (model, card) = classifier("resnet18", 32, &avg(), 3);
    let e = onnx_model(&model, &card, &OnnxOptions { opset: 9, ..OnnxOptions::default() }).unwrap_err();
    assert!(e.to_string().contains("--opset 9"), "{e}");
}
