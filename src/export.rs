//! `tlab export`: a trained model out of tlab, for the programs users deploy
//! with. ONNX (checked by ONNX Runtime in CI) carries the model card in its
//! `metadata_props`, so a consumer needs only the `.onnx` file.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use crate::models::Classifier;
use crate::onnx::{self, dim, dim_param, Graph, ModelIo, Value};
use crate::report::ModelCard;

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
        return Err(Error::Invalid(format!(
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
