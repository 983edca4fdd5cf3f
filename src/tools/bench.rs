//! `tlab bench`: throughput of a backbone's forward pass or of one training
//! step, on random weights and inputs, as the median over timed iterations
//! after warm-up. `benches/side_by_side.py` runs the same cases in PyTorch
//! and reports the ratio; no test asserts on time.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::augment::Rng;
use crate::error::Result;
use crate::models::layers::{Mode, ParamLoader};
use crate::models::{self, Classifier, Head};
use crate::recipe::{FineTuneConfig, FreezePoint, HeadConfig, Pooling};

/// One benchmark's settings and result (printed as one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub case: String,
    pub backbone: String,
    pub batch: usize,
    pub size: usize,
    pub freeze: Option<String>,
    pub iters: usize,
    pub warmup: usize,
    pub median_seconds: f64,
    /// Images per second; for `optimizer-step`, updates per second.
    pub images_per_sec: f64,
    pub threads: usize,
    /// The processor's model name (from /proc/cpuinfo; empty where unknown):
    /// ratios differ between machine kinds, so every figure names its CPU.
    pub cpu: String,
    /// The widest SIMD path the GEMM takes on it ([`crate::kernels::simd_level`]).
    pub simd: &'static str,
    /// Parameters updated (`optimizer-step` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<usize>,
}

/// The first `model name` line of /proc/cpuinfo.
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A backbone with random weights and a new 10-class head.
fn random_classifier(arch: &str) -> Result<Classifier> {
    let backbone = models::build_backbone(arch, &mut ParamLoader::random(0), false)?;
    let head_cfg = HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.0, batchnorm: false };
    let head = Head::new(&head_cfg, backbone.feature_channels(), 10, 0)?;
    Ok(Classifier::new(backbone, head))
}

/// Runs `step` `warmup + iters` times; the median seconds of the timed ones.
fn median_seconds(warmup: usize, iters: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        step()?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

fn input(batch: usize, size: usize) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, (batch, 3, size, size), &Device::Cpu)?)
}

/// Forward pass of the backbone (all blocks, frozen = eval mode, folded BN).
pub fn forward(arch: &str, batch: usize, size: usize, iters: usize, warmup: usize) -> Result<BenchResult> {
    let mut p = ParamLoader::random(0);
    let mut backbone = models::build_backbone(arch, &mut p, false)?;
    for b in 0..backbone.num_blocks() {
        backbone.set_block_freeze(b, models::layers::Freeze { frozen: true, train_bn: false })?;
    }
    let x = input(batch, size)?;
    let n = backbone.num_blocks();
    let m = median_seconds(warmup, iters, || {
        let y = backbone.forward_blocks(&x, 0..n, Mode::EVAL)?;
        y.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(BenchResult {
        case: "forward".into(),
        backbone: arch.into(),
        batch,
        size,
        freeze: None,
        iters,
        warmup,
        median_seconds: m,
        images_per_sec: batch as f64 / m,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        simd: crate::kernels::simd_level(),
        params: None,
    })
}

/// The recipe's fine_tune defaults (Adam, PyTorch's betas), taken from the
/// recipe parser so they are defined in one place; `extra` overrides keys.
fn default_fine_tune(extra: &str) -> Result<FineTuneConfig> {
    let text = format!(
        "name = \"bench\"\n[data]\ntrain = \".\"\n[[step]]\nkind = \"backbone\"\narch = \"mobilenet_v2\"\n\
         [[step]]\nkind = \"fine_tune\"\n{extra}\n"
    );
    let text = text.as_str();
    let recipe = crate::recipe::parse(text, std::path::Path::new("bench.toml"))?;
    match recipe.steps.into_iter().find_map(|s| match s.kind {
        crate::recipe::StepKind::FineTune(c) => Some(c),
        _ => None,
    }) {
        Some(c) => Ok(c),
        None => Err(crate::error::Error::Internal("no fine_tune defaults for the bench")),
    }
}

/// One training step (forward, backward, Adam update) with the blocks before
/// `freeze` frozen and a new 10-class head.
pub fn train_step(
    arch: &str,
    freeze: &str,
    batch: usize,
    size: usize,
    iters: usize,
    warmup: usize,
) -> Result<BenchResult> {
    let mut model = random_classifier(arch)?;
    let point = match freeze {
        "all" => FreezePoint::All,
        "none" => FreezePoint::None,
        other => match other.parse::<usize>() {
            Ok(i) => FreezePoint::Index(i),
            Err(_) => FreezePoint::Block(other.to_owned()),
        },
    };
    let k = models::frozen_block_count(&point, &model.backbone.block_names())?;
    model.freeze(k, false)?;
    let cfg = default_fine_tune("")?;
    let mut opt = crate::train::optim::Optimizer::new(model.trainable_vars(), &cfg.optimizer);
    let x = input(batch, size)?;
    let labels = Tensor::from_vec((0..batch as u32).map(|i| i % 10).collect::<Vec<_>>(), batch, &Device::Cpu)?;
    let mut rng = Rng::new(0);
    let m = median_seconds(warmup, iters, || {
        let h = if k > 0 { model.prefix(&x, k)? } else { x.clone() };
        let logits = model.forward_from(&h, k, Mode::train(0), &mut rng)?;
        let loss = crate::train::cross_entropy(&logits, &labels, 0.0)?;
        let grads = loss.backward()?;
        opt.step(&grads, 1e-4)?;
        loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(())
    })?;
    Ok(BenchResult {
        case: "train-step".into(),
        backbone: arch.into(),
        batch,
        size,
        freeze: Some(freeze.into()),
        iters,
        warmup,
        median_seconds: m,
        images_per_sec: batch as f64 / m,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        simd: crate::kernels::simd_level(),
        params: None,
    })
}

/// The optimizer's own cost: one update of every parameter of `arch` plus a
/// 10-class head. The gradients come from one real backward pass and are
/// reused, so only the update is timed.
pub fn optimizer_step(arch: &str, optimizer: &str, iters: usize, warmup: usize) -> Result<BenchResult> {
    let momentum = if optimizer == "sgd" { "\nmomentum = 0.9" } else { "" };
    let cfg = default_fine_tune(&format!("optimizer = \"{optimizer}\"\nweight_decay = 0.01{momentum}"))?;
    let mut model = random_classifier(arch)?;
    model.freeze(0, false)?;
    let vars = model.trainable_vars();
    let params = vars.iter().map(|v| v.elem_count()).sum();
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for v in &vars {
        loss = (loss + (v.as_tensor() * v.as_tensor().randn_like(0.0, 1.0)?)?.sum_all()?)?;
    }
    let grads = loss.backward()?;
    let mut opt = crate::train::optim::Optimizer::new(vars, &cfg.optimizer);
    let m = median_seconds(warmup, iters, || opt.step(&grads, 1e-4))?;
    Ok(BenchResult {
        case: "optimizer-step".into(),
        backbone: arch.into(),
        batch: 0,
        size: 0,
        freeze: Some(optimizer.into()),
        iters,
        warmup,
        median_seconds: m,
        images_per_sec: 1.0 / m,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        simd: crate::kernels::simd_level(),
        params: Some(params),
    })
}
