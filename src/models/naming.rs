//! Checkpoint naming conventions. tlab's architectures are built with the
//! reference implementation's state-dict names (torchvision's, or the
//! EfficientNet-Lite port's); timm publishes some of the same networks under
//! its own names. [`to_reference`] recognises a timm checkpoint from its keys
//! and renames it (reshaping where the two differ): ConvNeXt,
//! EfficientNet-B, MobileNetV3 and ViT-B/16 so far, so
//! `weights = "hf:timm/convnext_tiny.fb_in22k_ft_in1k"` loads like
//! torchvision's file. ResNet needs nothing: timm's names are torchvision's.

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::Result;

/// The convention a checkpoint's keys follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// The names tlab's architectures are built with.
    Reference,
    /// timm's, renamed on loading.
    Timm,
}

impl Naming {
    pub fn name(self) -> &'static str {
        match self {
            Naming::Reference => "reference names",
            Naming::Timm => "timm names",
        }
    }
}

/// `tensors` under the names `arch` is built with, and the convention found.
pub fn to_reference(arch: &str, tensors: HashMap<String, Tensor>) -> Result<(HashMap<String, Tensor>, Naming)> {
    if arch.starts_with("convnext") && tensors.contains_key("stem.0.weight") {
        let mut out = HashMap::with_capacity(tensors.len());
        for (key, t) in tensors {
            let (name, t) = convnext_from_timm(&key, t)?;
            out.insert(name, t);
        }
        return Ok((out, Naming::Timm));
    }
    if arch == "vit_b_16" && tensors.contains_key("cls_token") {
        return Ok((tensors.into_iter().map(|(k, t)| (vit_from_timm(&k), t)).collect(), Naming::Timm));
    }
    if arch.starts_with("mobilenet_v3") && tensors.contains_key("conv_stem.weight") {
        return Ok((mobilenet_v3_from_timm(tensors)?, Naming::Timm));
    }
    if arch.starts_with("efficientnet_b") && tensors.contains_key("conv_stem.weight") {
        return Ok((efficientnet_from_timm(tensors), Naming::Timm));
    }
    Ok((tensors, Naming::Reference))
}

/// timm's ViT-B/16 key (`vit_base_patch16_224.*`) → torchvision's:
/// `cls_token` → `class_token`, `pos_embed` → `encoder.pos_embedding`,
/// `patch_embed.proj` → `conv_proj`, `blocks.I.{norm1, attn.qkv, attn.proj,
/// norm2, mlp.fc1, mlp.fc2}` → `encoder.layers.encoder_layer_I.{ln_1,
/// self_attention.in_proj_*, self_attention.out_proj, ln_2, mlp.0, mlp.3}`,
/// `norm` → `encoder.ln`, `head` → `heads.head`. The tensors are laid out
/// alike (q, k and v stacked in the same order).
fn vit_from_timm(key: &str) -> String {
    let p: Vec<&str> = key.split('.').collect();
    match p.as_slice() {
        ["cls_token"] => "class_token".into(),
        ["pos_embed"] => "encoder.pos_embedding".into(),
        ["patch_embed", "proj", leaf] => format!("conv_proj.{leaf}"),
        ["norm", leaf] => format!("encoder.ln.{leaf}"),
        ["head", leaf] => format!("heads.head.{leaf}"),
        ["blocks", i, module @ .., leaf] => {
            let layer = format!("encoder.layers.encoder_layer_{i}");
            match module {
                ["attn", "qkv"] => format!("{layer}.self_attention.in_proj_{leaf}"),
                ["norm1"] => format!("{layer}.ln_1.{leaf}"),
                ["attn", "proj"] => format!("{layer}.self_attention.out_proj.{leaf}"),
                ["norm2"] => format!("{layer}.ln_2.{leaf}"),
                ["mlp", "fc1"] => format!("{layer}.mlp.0.{leaf}"),
                ["mlp", "fc2"] => format!("{layer}.mlp.3.{leaf}"),
                _ => key.to_owned(),
            }
        }
        _ => key.to_owned(),
    }
}

/// timm's MobileNetV3 keys (`mobilenetv3_large_100.*`, `…_small_100.*`) →
/// torchvision's: `conv_stem`/`bn1` → `features.0.0/1`; the blocks of every
/// stage but the last numbered on, `features.1` …, their units as in
/// EfficientNet-B but the projection one place earlier where a block has no
/// squeeze-and-excitation; the last stage's `conv`/`bn1` → the last
/// `features.N.0/1`; `conv_head` (a 1×1 convolution after the pooling, with
/// a bias) → `classifier.0` (the same numbers as a linear layer);
/// `classifier` → `classifier.3`. timm builds these networks with
/// BatchNorm eps 1e-5 where torchvision has 1e-3: every running variance is
/// shifted by their difference, so that `var' + 1e-3 = var + 1e-5` and
/// torchvision's arithmetic gives timm's numbers exactly.
fn mobilenet_v3_from_timm(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    type Block = (usize, usize);
    let block_of = |k: &str| -> Option<Block> {
        let p: Vec<&str> = k.split('.').collect();
        (p.len() > 3 && p[0] == "blocks").then(|| Some((p[1].parse().ok()?, p[2].parse().ok()?))).flatten()
    };
    let mut blocks: Vec<Block> = tensors.keys().filter_map(|k| block_of(k)).collect();
    blocks.sort_unstable();
    blocks.dedup();
    let last_stage = blocks.last().map_or(0, |b| b.0);
    let index: HashMap<Block, usize> =
        blocks.iter().filter(|b| b.0 != last_stage).enumerate().map(|(i, b)| (*b, i + 1)).collect();
    let last = index.len() + 1;
    let with = |what: &str| -> std::collections::HashSet<Block> {
        tensors.keys().filter(|k| k.contains(what)).filter_map(|k| block_of(k)).collect()
    };
    let (inverted, se) = (with(".conv_pwl."), with(".se."));
    let mut out = HashMap::with_capacity(tensors.len());
    for (key, t) in tensors {
        let p: Vec<&str> = key.split('.').collect();
        let name = match (p.as_slice(), block_of(&key)) {
            (["conv_stem", leaf], _) => format!("features.0.0.{leaf}"),
            (["bn1", leaf], _) => format!("features.0.1.{leaf}"),
            (["conv_head", leaf], _) => format!("classifier.0.{leaf}"),
            (["classifier", leaf], _) => format!("classifier.3.{leaf}"),
            ([.., module, leaf], Some(b)) if b.0 == last_stage => match *module {
                "conv" => format!("features.{last}.0.{leaf}"),
                "bn1" => format!("features.{last}.1.{leaf}"),
                _ => key.clone(),
            },
            ([_, _, _, module @ .., leaf], Some(b)) => {
                let project = 1 + usize::from(inverted.contains(&b)) + usize::from(se.contains(&b));
                let unit = match (inverted.contains(&b), module) {
                    (true, ["conv_pw"]) | (false, ["conv_dw"]) => Some("0.0".to_owned()),
                    (_, ["bn1"]) => Some("0.1".to_owned()),
                    (true, ["conv_dw"]) => Some("1.0".to_owned()),
                    (true, ["bn2"]) => Some("1.1".to_owned()),
                    (ir, ["se", fc]) => {
                        let which = if *fc == "conv_reduce" { "fc1" } else { "fc2" };
                        Some(format!("{}.{which}", 1 + usize::from(ir)))
                    }
                    (true, ["conv_pwl"]) | (false, ["conv_pw"]) => Some(format!("{project}.0")),
                    (true, ["bn3"]) | (false, ["bn2"]) => Some(format!("{project}.1")),
                    _ => None,
                };
                match (index.get(&b), unit) {
                    (Some(i), Some(u)) => format!("features.{i}.block.{u}.{leaf}"),
                    _ => key.clone(),
                }
            }
            _ => key.clone(),
        };
        let t = if name.starts_with("classifier.0.") && t.rank() == 4 {
            t.flatten_from(1)?
        } else if name.ends_with(".running_var") {
            (t + (1e-5 - 1e-3))?
        } else {
            t
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// timm's EfficientNet-B keys (its PyTorch-native `efficientnet_b*`, not the
/// TF ports `tf_efficientnet_*`, which pad differently) → torchvision's:
/// `conv_stem`/`bn1` → `features.0.0/1`; `blocks.S.I` → `features.{S+1}.I.block`,
/// its units numbered in order (an inverted residual's `conv_pw`, `bn1`,
/// `conv_dw`, `bn2`, `se`, `conv_pwl`, `bn3` → `0.0`, `0.1`, `1.0`, `1.1`,
/// `2.fc1/fc2`, `3.0`, `3.1`; the first stage's depthwise-separable
/// `conv_dw`, `bn1`, `se`, `conv_pw`, `bn2` → `0.0`, `0.1`, `1`, `2.0`, `2.1`);
/// `conv_head`/`bn2` → the last `features.N.0/1`; `classifier` → `classifier.1`.
fn efficientnet_from_timm(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let stages = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |s| s + 1);
    let inverted: std::collections::HashSet<(String, String)> = tensors
        .keys()
        .filter_map(|k| {
            let p: Vec<&str> = k.split('.').collect();
            (p.len() > 3 && p[0] == "blocks" && p[3] == "conv_pwl").then(|| (p[1].to_owned(), p[2].to_owned()))
        })
        .collect();
    let last = stages + 1;
    tensors
        .into_iter()
        .map(|(key, t)| {
            let p: Vec<&str> = key.split('.').collect();
            let name = match p.as_slice() {
                ["conv_stem", leaf] => format!("features.0.0.{leaf}"),
                ["bn1", leaf] => format!("features.0.1.{leaf}"),
                ["conv_head", leaf] => format!("features.{last}.0.{leaf}"),
                ["bn2", leaf] => format!("features.{last}.1.{leaf}"),
                ["classifier", leaf] => format!("classifier.1.{leaf}"),
                ["blocks", s, i, module @ .., leaf] => {
                    let ir = inverted.contains(&(s.to_string(), i.to_string()));
                    let unit = match (ir, module) {
                        (true, ["conv_pw"]) | (false, ["conv_dw"]) => Some("0.0".to_owned()),
                        (true, ["bn1"]) | (false, ["bn1"]) => Some("0.1".to_owned()),
                        (true, ["conv_dw"]) => Some("1.0".to_owned()),
                        (true, ["bn2"]) => Some("1.1".to_owned()),
                        (true, ["se", fc]) | (false, ["se", fc]) => {
                            let at = if ir { 2 } else { 1 };
                            let which = if *fc == "conv_reduce" { "fc1" } else { "fc2" };
                            Some(format!("{at}.{which}"))
                        }
                        (true, ["conv_pwl"]) | (false, ["conv_pw"]) => Some(if ir { "3.0" } else { "2.0" }.to_owned()),
                        (true, ["bn3"]) | (false, ["bn2"]) => Some(if ir { "3.1" } else { "2.1" }.to_owned()),
                        _ => None,
                    };
                    match (s.parse::<usize>(), unit) {
                        (Ok(stage), Some(u)) => format!("features.{}.{i}.block.{u}.{leaf}", stage + 1),
                        _ => key.clone(),
                    }
                }
                _ => key.clone(),
            };
            (name, t)
        })
        .collect()
}

/// timm's ConvNeXt key → torchvision's: `stem.K` → `features.0.K`;
/// `stages.S.downsample.K` → `features.{2S}.K`; `stages.S.blocks.I.conv_dw`
/// / `norm` / `mlp.fc1` / `mlp.fc2` → `features.{2S+1}.I.block.0/2/3/5`;
/// `…gamma` `[C]` → `…layer_scale` `[C, 1, 1]`; `head.norm` / `head.fc` →
/// `classifier.0` / `classifier.2`. A key it does not know keeps its name
/// (strict loading then names it).
fn convnext_from_timm(key: &str, t: Tensor) -> Result<(String, Tensor)> {
    if let Some(rest) = key.strip_prefix("stem.") {
        return Ok((format!("features.0.{rest}"), t));
    }
    if let Some(rest) = key.strip_prefix("head.norm.") {
        return Ok((format!("classifier.0.{rest}"), t));
    }
    if let Some(rest) = key.strip_prefix("head.fc.") {
        return Ok((format!("classifier.2.{rest}"), t));
    }
    let parts: Vec<&str> = key.split('.').collect();
    if let ["stages", s, kind, tail @ ..] = parts.as_slice() {
        let Ok(s) = s.parse::<usize>() else { return Ok((key.to_owned(), t)) };
        match (*kind, tail) {
            ("downsample", [k, leaf]) => return Ok((format!("features.{}.{k}.{leaf}", 2 * s), t)),
            ("blocks", [i, "gamma"]) => {
                let c = t.dim(0)?;
                return Ok((format!("features.{}.{i}.layer_scale", 2 * s + 1), t.reshape((c, 1, 1))?));
            }
            ("blocks", [i, module @ .., leaf]) => {
                let block = match module {
                    ["conv_dw"] => Some(0),
                    ["norm"] => Some(2),
                    ["mlp", "fc1"] => Some(3),
                    ["mlp", "fc2"] => Some(5),
                    _ => None,
                };
                if let Some(b) = block {
                    return Ok((format!("features.{}.{i}.block.{b}.{leaf}", 2 * s + 1), t));
                }
            }
            _ => {}
        }
    }
    Ok((key.to_owned(), t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn renamed(key: &str, shape: &[usize]) -> (String, Vec<usize>) {
        let t = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
        let (k, t) = convnext_from_timm(key, t).unwrap();
        (k, t.dims().to_vec())
    }

    #[test]
    fn timm_convnext_keys_become_torchvision_keys() {
        assert_eq!(renamed("stem.0.weight", &[96, 3, 4, 4]).0, "features.0.0.weight");
        assert_eq!(renamed("stages.0.blocks.2.conv_dw.bias", &[96]).0, "features.1.2.block.0.bias");
        assert_eq!(renamed("stages.2.blocks.8.mlp.fc2.weight", &[384, 1536]).0, "features.5.8.block.5.weight");
        assert_eq!(renamed("stages.3.downsample.1.weight", &[768, 384, 2, 2]).0, "features.6.1.weight");
        assert_eq!(renamed("stages.1.blocks.0.gamma", &[192]), ("features.3.0.layer_scale".into(), vec![192, 1, 1]));
        assert_eq!(renamed("head.fc.bias", &[1000]).0, "classifier.2.bias");
        assert_eq!(renamed("something.else", &[1]).0, "something.else");
    }
}
