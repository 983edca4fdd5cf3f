//! Inception v3, as in torchvision (`Inception3`), the third family of the
//! Keras transfer-learning tutorial tlab grew from.
//!
//! Szegedy et al., "Rethinking the Inception Architecture for Computer
//! Vision", CVPR 2016, <https://arxiv.org/abs/1512.00567>.
//!
//! Parameter names equal torchvision's state-dict keys (`Conv2d_1a_3x3.conv`,
//! `Conv2d_1a_3x3.bn`, `Mixed_5b.branch5x5_2.bn`, …, `fc`), so its
//! `inception_v3_google-0cc3c7bd.pth` loads unchanged. The freeze points are
//! the module names in forward order: the five stem convolutions
//! (`Conv2d_1a_3x3` … `Conv2d_4a_3x3`, the two max-pools riding with
//! `Conv2d_2b_3x3` and `Conv2d_4a_3x3`) and the eleven mixed blocks
//! (`Mixed_5b` … `Mixed_7c`).
//!
//! As torchvision's eval mode does, the auxiliary classifier (`AuxLogits.*`)
//! is accepted in a checkpoint and left out of the graph: it only ever fed a
//! training loss. torchvision's pretrained model also sets
//! `transform_input`, which maps an ImageNet-normalised input to the
//! `(x − 0.5) / 0.5` scaling Google trained with; tlab applies the same
//! per-channel affine at the start of the first block, so the model card's
//! preprocessing stays torchvision's ImageNet mean and std.

use std::ops::Range;

use candle_core::{Tensor, Var};

use super::layers::{Act, ConvBnAct, ConvSpec, Freeze, Linear, Mode, ParamLoader};
use super::{Backbone, Preprocess};
use crate::error::Result;
use crate::formats::onnx::{Graph, Value};
use crate::kernels::{maxpool, Padding};

/// torchvision's `BasicConv2d` BatchNorm epsilon (TF's default).
const BN_EPS: f64 = 1e-3;

/// torchvision's `transform_input`: `x · std/0.5 + (mean − 0.5)/0.5` per channel.
const TRANSFORM_SCALE: [f32; 3] = [0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5];
const TRANSFORM_SHIFT: [f32; 3] = [(0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5];

/// The pooling a branch starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    None,
    /// 3×3, stride 1, padding 1, the padding counted in the mean (PyTorch's default).
    Avg3,
    /// 3×3, stride 2, no padding.
    Max3,
}

/// One branch of a mixed block: a pooling, a chain of convolutions, and for
/// InceptionE's widened branches two convolutions applied side by side to
/// the chain's output and concatenated.
struct Branch {
    pool: Pool,
    convs: Vec<ConvBnAct>,
    split: Option<(ConvBnAct, ConvBnAct)>,
}

impl Branch {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut y = match self.pool {
            Pool::None => x.clone(),
            Pool::Avg3 => avg_pool_3x3_same(x)?,
            Pool::Max3 => maxpool::max_pool2d(x, 3, 2, Padding::default())?,
        };
        for c in &self.convs {
            y = c.forward(&y, mode)?;
        }
        match &self.split {
            Some((a, b)) => Ok(Tensor::cat(&[a.forward(&y, mode)?, b.forward(&y, mode)?], 1)?),
            None => Ok(y),
        }
    }

    fn export_onnx(&self, g: &mut Graph, x: &Value) -> Result<Value> {
        let mut y = match self.pool {
            Pool::None => x.clone(),
            Pool::Avg3 => g.avg_pool(x, 3, 1, 1),
            Pool::Max3 => g.max_pool(x, 3, 2, Padding::default()),
        };
        for c in &self.convs {
            y = c.export_onnx(g, &y)?;
        }
        match &self.split {
            Some((a, b)) => {
                let parts = [a.export_onnx(g, &y)?, b.export_onnx(g, &y)?];
                Ok(g.concat_channels(&parts))
            }
            None => Ok(y),
        }
    }

    fn layers(&self) -> impl Iterator<Item = &ConvBnAct> {
        self.convs.iter().chain(self.split.iter().flat_map(|(a, b)| [a, b]))
    }

    fn layers_mut(&mut self) -> impl Iterator<Item = &mut ConvBnAct> {
        self.convs.iter_mut().chain(self.split.iter_mut().flat_map(|(a, b)| [a, b]))
    }
}

/// A freeze point: a stem convolution (with the max-pool after it, where
/// torchvision has one) or a mixed block of branches joined along channels.
enum Block {
    Stem { conv: ConvBnAct, max_pool_after: bool },
    Mixed(Vec<Branch>),
}

impl Block {
    fn layers(&self) -> Box<dyn Iterator<Item = &ConvBnAct> + '_> {
        match self {
            Block::Stem { conv, .. } => Box::new(std::iter::once(conv)),
            Block::Mixed(branches) => Box::new(branches.iter().flat_map(Branch::layers)),
        }
    }

    fn layers_mut(&mut self) -> Box<dyn Iterator<Item = &mut ConvBnAct> + '_> {
        match self {
            Block::Stem { conv, .. } => Box::new(std::iter::once(conv)),
            Block::Mixed(branches) => Box::new(branches.iter_mut().flat_map(Branch::layers_mut)),
        }
    }
}

pub(crate) struct InceptionV3 {
    names: Vec<String>,
    blocks: Vec<Block>,
    fc: Option<Linear>,
}

/// PyTorch's `avg_pool2d(x, 3, stride=1, padding=1)`: zero padding counted
/// in the mean. Built from shifted slices (three across, then three down),
/// which candle differentiates; its own average pool has no backward when
/// the kernel differs from the stride.
fn avg_pool_3x3_same(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let across = (padded.narrow(3, 0, w)? + padded.narrow(3, 1, w)?)?.add(&padded.narrow(3, 2, w)?)?;
    let down = (across.narrow(2, 0, h)? + across.narrow(2, 1, h)?)?.add(&across.narrow(2, 2, h)?)?;
    Ok((down / 9.0)?)
}

/// A unit of a branch: name, input and output channels, kernel, stride.
type UnitSpec<'a> = (&'a str, usize, usize, (usize, usize), usize);

/// Builds the `BasicConv2d` units of one block, named `{block}.{unit}`.
struct Units<'a> {
    p: &'a mut ParamLoader,
    block: &'a str,
}

impl Units<'_> {
    /// A `(kh, kw)` convolution padded as torchvision pads it: by half the
    /// kernel at stride 1 ("same"), not at all at stride 2.
    fn unit(&mut self, name: &str, cin: usize, cout: usize, k: (usize, usize), stride: usize) -> Result<ConvBnAct> {
        let (ph, pw) = if stride == 1 { (k.0 / 2, k.1 / 2) } else { (0, 0) };
        let pad = Padding { top: ph, left: pw, bottom: ph, right: pw };
        self.unit_with(name, ConvSpec { cin, cout, kernel: k, stride, pad, groups: 1 })
    }

    fn unit_with(&mut self, name: &str, spec: ConvSpec) -> Result<ConvBnAct> {
        let prefix = if name.is_empty() { self.block.to_owned() } else { format!("{}.{name}", self.block) };
        ConvBnAct::load(self.p, &format!("{prefix}.conv"), &format!("{prefix}.bn"), spec, BN_EPS, Act::Relu)
    }

    fn chain(&mut self, pool: Pool, convs: &[UnitSpec]) -> Result<Branch> {
        let convs = convs.iter().map(|&(n, i, o, k, s)| self.unit(n, i, o, k, s)).collect::<Result<_>>()?;
        Ok(Branch { pool, convs, split: None })
    }
}

/// The stem's convolutions: torchvision's name, channels, kernel, stride,
/// padding (only `Conv2d_2b_3x3` pads), and whether a max-pool follows.
const STEM: [(&str, usize, usize, usize, usize, usize, bool); 5] = [
    ("Conv2d_1a_3x3", 3, 32, 3, 2, 0, false),
    ("Conv2d_2a_3x3", 32, 32, 3, 1, 0, false),
    ("Conv2d_2b_3x3", 32, 64, 3, 1, 1, true),
    ("Conv2d_3b_1x1", 64, 80, 1, 1, 0, false),
    ("Conv2d_4a_3x3", 80, 192, 3, 1, 0, true),
];

/// The mixed blocks: name, kind (A–E) and its parameter (InceptionA's pool
/// features, InceptionC's 7×7 channels).
const MIXED: [(&str, char, usize); 11] = [
    ("Mixed_5b", 'A', 32),
    ("Mixed_5c", 'A', 64),
    ("Mixed_5d", 'A', 64),
    ("Mixed_6a", 'B', 0),
    ("Mixed_6b", 'C', 128),
    ("Mixed_6c", 'C', 160),
    ("Mixed_6d", 'C', 160),
    ("Mixed_6e", 'C', 192),
    ("Mixed_7a", 'D', 0),
    ("Mixed_7b", 'E', 0),
    ("Mixed_7c", 'E', 0),
];

const K1: (usize, usize) = (1, 1);
const K3: (usize, usize) = (3, 3);
const K5: (usize, usize) = (5, 5);
const K17: (usize, usize) = (1, 7);
const K71: (usize, usize) = (7, 1);
const K13: (usize, usize) = (1, 3);
const K31: (usize, usize) = (3, 1);

/// InceptionA–E's branches for input channels `cin`; the output channels.
fn mixed(u: &mut Units, kind: char, cin: usize, param: usize) -> Result<(Vec<Branch>, usize)> {
    match kind {
        'A' => inception_a(u, cin, param),
        'B' => inception_b(u, cin),
        'C' => inception_c(u, cin, param),
        'D' => inception_d(u, cin),
        _ => inception_e(u, cin),
    }
}

fn max_pool_branch() -> Branch {
    Branch { pool: Pool::Max3, convs: Vec::new(), split: None }
}

/// 35 × 35: 1×1, 5×5, double 3×3 and pooled 1×1 branches.
fn inception_a(u: &mut Units, cin: usize, pool_features: usize) -> Result<(Vec<Branch>, usize)> {
    let dbl =
        [("branch3x3dbl_1", cin, 64, K1, 1), ("branch3x3dbl_2", 64, 96, K3, 1), ("branch3x3dbl_3", 96, 96, K3, 1)];
    let branches = vec![
        u.chain(Pool::None, &[("branch1x1", cin, 64, K1, 1)])?,
        u.chain(Pool::None, &[("branch5x5_1", cin, 48, K1, 1), ("branch5x5_2", 48, 64, K5, 1)])?,
        u.chain(Pool::None, &dbl)?,
        u.chain(Pool::Avg3, &[("branch_pool", cin, pool_features, K1, 1)])?,
    ];
    Ok((branches, 224 + pool_features))
}

/// 35 → 17: stride-2 3×3, double 3×3 and max-pool branches.
fn inception_b(u: &mut Units, cin: usize) -> Result<(Vec<Branch>, usize)> {
    let dbl =
        [("branch3x3dbl_1", cin, 64, K1, 1), ("branch3x3dbl_2", 64, 96, K3, 1), ("branch3x3dbl_3", 96, 96, K3, 2)];
    let branches =
        vec![u.chain(Pool::None, &[("branch3x3", cin, 384, K3, 2)])?, u.chain(Pool::None, &dbl)?, max_pool_branch()];
    Ok((branches, 384 + 96 + cin))
}

/// 17 × 17: 7×7 factored into 1×7 and 7×1, once and twice.
fn inception_c(u: &mut Units, cin: usize, c7: usize) -> Result<(Vec<Branch>, usize)> {
    let b7 = [("branch7x7_1", cin, c7, K1, 1), ("branch7x7_2", c7, c7, K17, 1), ("branch7x7_3", c7, 192, K71, 1)];
    let b7dbl = [
        ("branch7x7dbl_1", cin, c7, K1, 1),
        ("branch7x7dbl_2", c7, c7, K71, 1),
        ("branch7x7dbl_3", c7, c7, K17, 1),
        ("branch7x7dbl_4", c7, c7, K71, 1),
        ("branch7x7dbl_5", c7, 192, K17, 1),
    ];
    let branches = vec![
        u.chain(Pool::None, &[("branch1x1", cin, 192, K1, 1)])?,
        u.chain(Pool::None, &b7)?,
        u.chain(Pool::None, &b7dbl)?,
        u.chain(Pool::Avg3, &[("branch_pool", cin, 192, K1, 1)])?,
    ];
    Ok((branches, 768))
}

/// 17 → 8: stride-2 3×3 after a 1×1, after a factored 7×7, and max-pool.
fn inception_d(u: &mut Units, cin: usize) -> Result<(Vec<Branch>, usize)> {
    let b7x3 = [
        ("branch7x7x3_1", cin, 192, K1, 1),
        ("branch7x7x3_2", 192, 192, K17, 1),
        ("branch7x7x3_3", 192, 192, K71, 1),
        ("branch7x7x3_4", 192, 192, K3, 2),
    ];
    let branches = vec![
        u.chain(Pool::None, &[("branch3x3_1", cin, 192, K1, 1), ("branch3x3_2", 192, 320, K3, 2)])?,
        u.chain(Pool::None, &b7x3)?,
        max_pool_branch(),
    ];
    Ok((branches, 320 + 192 + cin))
}

/// 8 × 8: the 3×3 branches widened into side-by-side 1×3 and 3×1.
fn inception_e(u: &mut Units, cin: usize) -> Result<(Vec<Branch>, usize)> {
    let mut wide = u.chain(Pool::None, &[("branch3x3_1", cin, 384, K1, 1)])?;
    wide.split = Some((u.unit("branch3x3_2a", 384, 384, K13, 1)?, u.unit("branch3x3_2b", 384, 384, K31, 1)?));
    let mut dbl = u.chain(Pool::None, &[("branch3x3dbl_1", cin, 448, K1, 1), ("branch3x3dbl_2", 448, 384, K3, 1)])?;
    dbl.split = Some((u.unit("branch3x3dbl_3a", 384, 384, K13, 1)?, u.unit("branch3x3dbl_3b", 384, 384, K31, 1)?));
    let branches = vec![
        u.chain(Pool::None, &[("branch1x1", cin, 320, K1, 1)])?,
        wide,
        dbl,
        u.chain(Pool::Avg3, &[("branch_pool", cin, 192, K1, 1)])?,
    ];
    Ok((branches, 320 + 768 + 768 + 192))
}

impl InceptionV3 {
    /// Builds `inception_v3`; `with_classifier` also loads the ImageNet `fc`
    /// (→ 1000). `AuxLogits.*` is accepted and not used.
    pub fn load(p: &mut ParamLoader, with_classifier: bool) -> Result<Self> {
        let mut names = Vec::new();
        let mut blocks = Vec::new();
        for (name, cin, cout, k, stride, pad, max_pool_after) in STEM {
            let spec = ConvSpec { cin, cout, kernel: (k, k), stride, pad: Padding::same(pad), groups: 1 };
            let conv = Units { p, block: name }.unit_with("", spec)?;
            names.push(name.to_owned());
            blocks.push(Block::Stem { conv, max_pool_after });
        }
        let mut cin = 192;
        for (name, kind, param) in MIXED {
            let (branches, cout) = mixed(&mut Units { p, block: name }, kind, cin, param)?;
            names.push(name.to_owned());
            blocks.push(Block::Mixed(branches));
            cin = cout;
        }
        p.skip_prefix("AuxLogits.");
        let fc = if with_classifier { Some(Linear::load(p, "fc", cin, 1000)?) } else { None };
        Ok(InceptionV3 { names, blocks, fc })
    }

    /// torchvision's `transform_input` on an ImageNet-normalised batch.
    fn transform_input(x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        let scale = Tensor::new(&TRANSFORM_SCALE, dev)?.reshape((1, 3, 1, 1))?;
        let shift = Tensor::new(&TRANSFORM_SHIFT, dev)?.reshape((1, 3, 1, 1))?;
        Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

impl Backbone for InceptionV3 {
    fn arch(&self) -> &'static str {
        "inception_v3"
    }

    fn block_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn forward_blocks(&self, x: &Tensor, range: Range<usize>, mode: Mode) -> Result<Tensor> {
        let mut y = x.clone();
        for b in range {
            if b == 0 {
                y = Self::transform_input(&y)?;
            }
            y = match &self.blocks[b] {
                Block::Stem { conv, max_pool_after } => {
                    let z = conv.forward(&y, mode)?;
                    if *max_pool_after {
                        maxpool::max_pool2d(&z, 3, 2, Padding::default())?
                    } else {
                        z
                    }
                }
                Block::Mixed(branches) => {
                    let parts = branches.iter().map(|br| br.forward(&y, mode)).collect::<Result<Vec<_>>>()?;
                    Tensor::cat(&parts, 1)?
                }
            };
        }
        Ok(y)
    }

    fn feature_channels(&self) -> usize {
        2048
    }

    fn export_onnx(&self, g: &mut Graph, x: Value) -> Result<Value> {
        let mut y = g.channel_affine(&x, "transform_input", &TRANSFORM_SCALE, &TRANSFORM_SHIFT)?;
        for block in &self.blocks {
            y = match block {
                Block::Stem { conv, max_pool_after } => {
                    let z = conv.export_onnx(g, &y)?;
                    if *max_pool_after {
                        g.max_pool(&z, 3, 2, Padding::default())
                    } else {
                        z
                    }
                }
                Block::Mixed(branches) => {
                    let parts = branches.iter().map(|br| br.export_onnx(g, &y)).collect::<Result<Vec<_>>>()?;
                    g.concat_channels(&parts)
                }
            };
        }
        Ok(y)
    }

    fn set_block_freeze(&mut self, block: usize, freeze: Freeze) -> Result<()> {
        for layer in self.blocks[block].layers_mut() {
            layer.set_freeze(freeze)?;
        }
        Ok(())
    }

    fn trainable_vars(&self, out: &mut Vec<Var>) {
        for layer in self.blocks.iter().flat_map(Block::layers) {
            layer.trainable_vars(out);
        }
    }

    fn named_vars(&self, out: &mut Vec<(String, Var)>) {
        for layer in self.blocks.iter().flat_map(Block::layers) {
            layer.named_vars(out);
        }
    }

    fn block_vars(&self, block: usize, out: &mut Vec<(String, Var)>) {
        for layer in self.blocks.get(block).into_iter().flat_map(Block::layers) {
            layer.named_vars(out);
        }
    }

    fn imagenet_classifier(&self) -> Option<&Linear> {
        self.fc.as_ref()
    }

    fn classifier_prefix(&self) -> &'static str {
        "fc."
    }

    /// torchvision's `Inception_V3_Weights.IMAGENET1K_V1` transforms: resize
    /// the short side to 342, centre-crop 299, ImageNet mean and std.
    fn preprocess(&self) -> Preprocess {
        Preprocess::imagenet_torchvision(299)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn the_padded_average_counts_the_padding_as_pytorch_does() {
        let x = crate::kernels::testing::randn(0f32, 1.0, (2, 3, 5, 6)).unwrap();
        let ours = avg_pool_3x3_same(&x).unwrap();
        let padded = x.pad_with_zeros(2, 1, 1).unwrap().pad_with_zeros(3, 1, 1).unwrap();
        let candle = padded.avg_pool2d_with_stride(3, 1).unwrap();
        let d = (ours - candle).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn the_whole_network_trains_at_its_smallest_input() {
        let mut net = InceptionV3::load(&mut ParamLoader::random(1), false).unwrap();
        assert_eq!(net.num_blocks(), 16);
        assert_eq!(net.block_names()[15], "Mixed_7c");
        for b in 0..net.num_blocks() {
            net.set_block_freeze(b, Freeze { frozen: false, train_bn: false }).unwrap();
        }
        // 75 px is torchvision's minimum: the last map is 1 × 1.
        let x = crate::kernels::testing::randn(0f32, 1.0, (2, 3, 75, 75)).unwrap();
        let y = net.forward_blocks(&x, 0..16, Mode::train(0)).unwrap();
        assert_eq!(y.dims(), [2, 2048, 1, 1]);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = Vec::new();
        net.trainable_vars(&mut vars);
        assert_eq!(vars.len(), 94 * 3, "a weight, γ and β per BasicConv2d");
        for v in &vars {
            let g = grads.get(v.as_tensor()).expect("every trainable tensor gets a gradient");
            assert_eq!(g.dtype(), DType::F32);
        }
    }
}
