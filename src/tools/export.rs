//! `tlab export`: a trained model out of tlab, for the programs users deploy
//! with. ONNX (checked by ONNX Runtime in CI) carries the model card in its
//! `metadata_props`, so a consumer needs only the `.onnx` file.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use crate::formats::onnx::{self, dim, dim_param, Graph, ModelIo, Value};
use crate::models::card::ModelCard;
use crate::models::Classifier;

/// How to write the ONNX graph.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    pub opset: i64,
    /// A batch dimension chosen at run time (`batch`) instead of 1.
    pub dynamic_batch: bool,
    /// Weights stored as float16 (half the file; computed in float32).
    pub fp16: bool,
    /// Input `uint8` NHWC RGB at the trained size, normalised inside the graph.
    pub with_preprocessing: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions { opset: onnx::DEFAULT_OPSET, dynamic_batch: false, fp16: false, with_preprocessing: false }
    }
}

/// The classifier as an ONNX model: input `input` (`[N, 3, S, S]` float,
/// normalised as the card says; or `[N, S, S, 3]` uint8 with preprocessing),
/// outputs `logits` and `probabilities` (`[N, classes]`).
pub fn onnx_model(model: &Classifier, card: &ModelCard, opts: &OnnxOptions) -> Result<onnx::ModelProto> {
    if !(13..=21).contains(&opts.opset) {
        return Err(Error::Export(format!(
            "--opset {}: tlab writes opsets 13 to 21 (Clip with tensor bounds needs 13)",
            opts.opset
        )));
    }
    let size = card.image_size as usize;
    let mut g = Graph::new(opts.fp16);
    let batch = if opts.dynamic_batch { dim_param("batch") } else { dim(1) };
    let p = &card.preprocess;
    let (x, input) = if opts.with_preprocessing {
        let x = g.preprocess("input", size, p.mean, p.std)?;
        (x, ("input".to_string(), onnx::dtype::UINT8, vec![batch.clone(), dim(size), dim(size), dim(3)]))
    } else {
        let x = Value { name: "input".into(), shape: vec![3, size, size] };
        (x, ("input".to_string(), onnx::dtype::FLOAT, vec![batch.clone(), dim(3), dim(size), dim(size)]))
    };
    let logits = model.export_onnx(&mut g, x)?;
    let probabilities = g.softmax(&logits);
    let classes = card.classes.len();
    let out = |name: &str| (name.to_string(), onnx::dtype::FLOAT, vec![batch.clone(), dim(classes)]);
    let io = ModelIo {
        inputs: vec![input],
        outputs: vec![out("logits"), out("probabilities")],
        rename: vec![("logits".into(), logits.name), ("probabilities".into(), probabilities.name)],
    };
    let layout = if opts.with_preprocessing { "NHWC uint8 RGB 0-255" } else { "NCHW float32 RGB normalised" };
    let metadata = vec![
        ("tlab.classes".into(), serde_json::to_string(&card.classes).unwrap_or_default()),
        ("tlab.backbone".into(), card.backbone.clone()),
        ("tlab.image_size".into(), card.image_size.to_string()),
        ("tlab.mean".into(), format!("{:?}", p.mean)),
        ("tlab.std".into(), format!("{:?}", p.std)),
        ("tlab.layout".into(), layout.into()),
        ("tlab.model_card".into(), serde_json::to_string(card).unwrap_or_default()),
    ];
    Ok(g.finish(io, opts.opset, metadata))
}

/// Exports the model of run directory `run` as ONNX to `out` (default
/// `RUN/model.onnx`), written atomically; returns the path and its size.
pub fn export_onnx(run: &Path, out: Option<&Path>, opts: &OnnxOptions) -> Result<(PathBuf, usize)> {
    let (model, card) = crate::predict::load_run_model(run)?;
    let path = out.map_or_else(|| run.join("model.onnx"), Path::to_path_buf);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::data(parent, "the output folder does not exist"));
        }
    }
    let bytes = onnx_model(&model, &card, opts)?.encode_to_vec();
    crate::fs::atomic_write(&path, &bytes)?;
    Ok((path, bytes.len()))
}

/// What `tlab export --format torchvision` wrote and how to load it.
#[derive(Debug, Clone)]
pub struct TorchvisionExport {
    pub path: PathBuf,
    pub tensors: usize,
    /// Python that builds the matching torchvision model and loads the file
    /// with `strict=True` (`import torch, torchvision` first).
    pub load: String,
}

/// The model of run directory `run` as a PyTorch state dict (`.pth`, default
/// `RUN/model.pth`) whose keys load with `strict=True` into the torchvision
/// constructor with `num_classes` set when the head is one linear layer on
/// average-pooled features (`classifier.1` for MobileNetV2, `fc` for ResNet),
/// or into the model the returned snippet builds otherwise (VGG's head, hidden
/// layers). BatchNorm is exported unfolded, with `num_batches_tracked`.
pub fn export_torchvision(run: &Path, out: Option<&Path>) -> Result<TorchvisionExport> {
    use crate::formats::weights::torch_save::{self, Value as Saved};
    let (model, card) = crate::predict::load_run_model(run)?;
    let path = out.map_or_else(|| run.join("model.pth"), Path::to_path_buf);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::data(parent, "the output folder does not exist"));
        }
    }
    let arch = card.backbone.as_str();
    let (head_module, single_key) = match arch {
        "mobilenet_v2" | "efficientnet_b0" | "efficientnet_b1" | "efficientnet_b2" | "efficientnet_b3"
        | "efficientnet_v2_s" => ("classifier", Some("classifier.1")),
        "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152" | "wide_resnet50_2" | "inception_v3" => {
            ("fc", Some("fc"))
        }
        // Their own classifier has a hidden layer: tlab's head replaces it whole.
        "vgg16" | "vgg19" | "mobilenet_v3_large" | "mobilenet_v3_small" | "convnext_tiny" | "convnext_small" => {
            ("classifier", None)
        }
        other => {
            return Err(Error::Export(format!(
                "{other} has no torchvision constructor; use --format safetensors (its keys follow the checkpoint tlab loaded) or --format onnx"
            )))
        }
    };
    if model.head.config.pooling != crate::recipe::Pooling::Avg {
        return Err(Error::Export(
            "only heads on average-pooled features (pooling = \"avg\") have a torchvision equivalent; use --format onnx".into(),
        ));
    }
    let n = card.classes.len();
    let mut tensors: Vec<(String, Saved)> = Vec::new();
    let mut head: Vec<(String, candle_core::Tensor)> = Vec::new();
    for (name, var) in model.named_vars() {
        let t = var.as_detached_tensor();
        if name.starts_with("head.") {
            head.push((name, t));
            continue;
        }
        let bn = name.strip_suffix(".running_var").map(str::to_string);
        tensors.push((name, Saved::F32(t)));
        if let Some(prefix) = bn {
            tensors.push((format!("{prefix}.num_batches_tracked"), Saved::I64(0)));
        }
    }
    let (rename, setup) = torchvision_head(&model, arch, head_module, single_key, n);
    for (name, t) in head {
        let renamed = rename
            .iter()
            .find_map(|(from, to)| name.strip_prefix(from.as_str()).map(|rest| format!("{to}{rest}")))
            .ok_or_else(|| Error::Export(format!("head tensor `{name}` has no torchvision name")))?;
        let bn = renamed.strip_suffix(".running_var").map(str::to_string);
        tensors.push((renamed, Saved::F32(t)));
        if let Some(prefix) = bn {
            tensors.push((format!("{prefix}.num_batches_tracked"), Saved::I64(0)));
        }
    }
    torch_save::save(&tensors, &path)?;
    let file = crate::util::paths::shown(&path).display().to_string();
    // Inception v3 as torchvision builds it for its own pretrained weights:
    // transform_input on (tlab applies it too), no auxiliary classifier
    // (tlab trains none), and no random initialisation to overwrite.
    let extra = if arch == "inception_v3" { "aux_logits=False, transform_input=True, init_weights=False" } else { "" };
    let construct = match (setup.is_empty(), extra.is_empty()) {
        (true, true) => format!("model = torchvision.models.{arch}(num_classes={n})\n"),
        (true, false) => format!("model = torchvision.models.{arch}(num_classes={n}, {extra})\n"),
        (false, _) => format!("model = torchvision.models.{arch}({extra})\n{setup}"),
    };
    let load = format!(
        "{construct}model.load_state_dict(torch.load({file:?}, weights_only=True), strict=True)\nmodel.eval()\n"
    );
    Ok(TorchvisionExport { path, tensors: tensors.len(), load })
}

/// The torchvision names of the head's layers (`(tlab prefix, torchvision
/// prefix)`) and the Python that builds that head when the constructor's own
/// does not fit (empty when it does).
fn torchvision_head(
    model: &Classifier,
    arch: &str,
    head_module: &str,
    single_key: Option<&str>,
    classes: usize,
) -> (Vec<(String, String)>, String) {
    let config = &model.head.config;
    if let Some(key) = single_key.filter(|_| config.hidden.is_empty() && !config.batchnorm) {
        return (vec![("head.fc.".into(), format!("{key}."))], String::new());
    }
    // The same order as `Head::forward`: [BatchNorm1d] → [Dropout] → Linear [→ ReLU].
    // ConvNeXt flattens inside its classifier, not in `forward`.
    let mut layers = if arch.starts_with("convnext") { vec!["torch.nn.Flatten(1)".to_string()] } else { Vec::new() };
    let mut renames = Vec::<(String, String)>::new();
    let mut fan_in = model.backbone.feature_channels();
    let widths = config.hidden.iter().copied().chain(std::iter::once(classes));
    for (i, units) in widths.enumerate() {
        if config.batchnorm {
            renames.push((format!("head.bn.{i}."), format!("{head_module}.{}.", layers.len())));
            layers.push(format!("torch.nn.BatchNorm1d({fan_in})"));
        }
        if i > 0 || config.hidden.is_empty() {
            layers.push(format!("torch.nn.Dropout({})", config.dropout));
        }
        let name = if i < config.hidden.len() { format!("head.hidden.{i}.") } else { "head.fc.".to_string() };
        renames.push((name, format!("{head_module}.{}.", layers.len())));
        layers.push(format!("torch.nn.Linear({fan_in}, {units})"));
        if i < config.hidden.len() {
            layers.push("torch.nn.ReLU()".to_string());
        }
        fan_in = units;
    }
    let mut setup = String::new();
    if arch.starts_with("vgg") {
        setup.push_str("model.avgpool = torch.nn.AdaptiveAvgPool2d(1)\n");
    }
    setup.push_str(&format!("model.{head_module} = torch.nn.Sequential({})\n", layers.join(", ")));
    (renames, setup)
}
