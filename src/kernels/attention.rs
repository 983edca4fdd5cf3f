//! Multi-head self-attention for inference, as GEMMs with the softmax in
//! between, straight from the `qkv` projection's output.
//!
//! candle's batched matmul over `[n, heads, t, head_dim]` needs the heads
//! permuted out and copied (q, k, v, and kᵀ), and splits every one of the
//! `n · heads` small products over the threads with a fork and join. Here
//! an image is one task: for each head, `softmax(scale · q kᵀ) v` reads q, k
//! and v in place through strides and writes the head's columns of the
//! `[t, d]` output directly, so no permute or copy is left.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

use super::gemm::{matmul, Mat};

struct SelfAttention {
    heads: usize,
    scale: f32,
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, t, three_d) = l.shape().dims3()?;
        let d = three_d / 3;
        if three_d % 3 != 0 || d % self.heads != 0 {
            candle_core::bail!("self-attention: {three_d} qkv features for {} heads", self.heads);
        }
        let hd = d / self.heads;
        let x = super::elementwise::contiguous(s, l)?;
        let out = super::Output::new(n * t * d).par_chunks_init(
            t * d,
            || vec![0f32; t * t],
            |scores, img, o| {
                let qkv = &x[img * t * three_d..(img + 1) * t * three_d];
                for h in 0..self.heads {
                    let q = Mat { data: &qkv[h * hd..], rs: three_d, cs: 1 };
                    // kᵀ: element (r, j) is k[j][r].
                    let kt = Mat { data: &qkv[d + h * hd..], rs: 1, cs: three_d };
                    matmul(scores, t, t, t, hd, q, kt, false, Parallelism::None);
                    for row in scores.chunks_exact_mut(t) {
                        softmax_scaled(row, self.scale);
                    }
                    let v = Mat { data: &qkv[2 * d + h * hd..], rs: three_d, cs: 1 };
                    matmul(&mut o[h * hd..], d, t, hd, t, Mat::rows(scores, t), v, false, Parallelism::None);
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, t, d))))
    }
}

/// `row ← softmax(scale · row)` (scale > 0, so the maximum stays the maximum).
fn softmax_scaled(row: &mut [f32], scale: f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = ((*v - max) * scale).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `softmax(scale · q kᵀ) v` per head, for `qkv` `[n, t, 3·d]` (q, k and v
/// of each token side by side, each `heads × head_dim`, as the stacked
/// projection of torchvision and timm gives them): `[n, t, d]`, the heads
/// side by side. Inference only (no backward).
pub fn self_attention(qkv: &Tensor, heads: usize, scale: f32) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&SelfAttention { heads, scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn attention_equals_the_generic_ops() {
        let (n, t, heads, hd) = (3, 7, 2, 5);
        let d = heads * hd;
        let qkv = crate::kernels::testing::randn(0f32, 1.0, (n, t, 3 * d)).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        let parts = qkv.reshape((n, t, 3, heads, hd)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
        let part = |i: usize| parts.get(i).unwrap().contiguous().unwrap();
        let scores = (part(0).matmul(&part(1).t().unwrap().contiguous().unwrap()).unwrap() * f64::from(scale)).unwrap();
        let weights = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let want = weights.matmul(&part(2)).unwrap().permute((0, 2, 1, 3)).unwrap().reshape((n, t, d)).unwrap();
        let got = self_attention(&qkv, heads, scale).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
