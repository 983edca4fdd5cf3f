//! Inference kernels for the newer blocks: LayerNorm over the channels of an
//! NCHW map (ConvNeXt's), exact GELU, SiLU, and squeeze-and-excitation's
//! per-plane gating.
//!
//! candle's generic ops reduce over dimension 1 of an NCHW map with a
//! stride of `h·w` between the values of one reduction, and run GELU on one
//! thread; here both are contiguous, vectorisable passes, an image (or a
//! chunk) per task. Neither has a backward: training goes through the
//! generic ops, which candle differentiates.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::elementwise::contiguous;

/// `y[c][p] = (x[c][p] − mean_c x[·][p]) / √(var_c + eps) · weight[c] + bias[c]`.
struct ChannelNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl CustomOp1 for ChannelNorm {
    fn name(&self) -> &'static str {
        "channel-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l.shape().dims4()?;
        if c != self.weight.len() {
            candle_core::bail!("channel norm: {c} channels, {} weights", self.weight.len());
        }
        let x = contiguous(s, l)?;
        let p = h * w;
        let out = super::Output::new(x.len()).par_chunks(c * p, |i, o| {
            let img = &x[i * c * p..(i + 1) * c * p];
            // Position-wise sums over the channel planes: contiguous rows.
            let mut mean = vec![0f32; p];
            for plane in img.chunks_exact(p) {
                mean.iter_mut().zip(plane).for_each(|(m, &v)| *m += v);
            }
            let inv_c = 1.0 / c as f32;
            mean.iter_mut().for_each(|m| *m *= inv_c);
            let mut var = vec![0f32; p];
            for plane in img.chunks_exact(p) {
                var.iter_mut().zip(plane).zip(&mean).for_each(|((s, &v), &m)| *s += (v - m) * (v - m));
            }
            let inv_std: Vec<f32> = var.iter().map(|&s| 1.0 / (s * inv_c + self.eps).sqrt()).collect();
            for (ch, (dst, src)) in o.chunks_exact_mut(p).zip(img.chunks_exact(p)).enumerate() {
                let (wc, bc) = (self.weight[ch], self.bias[ch]);
                for (((d, &v), &m), &r) in dst.iter_mut().zip(src).zip(&mean).zip(&inv_std) {
                    *d = (v - m) * r * wc + bc;
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// LayerNorm over the channels of the NCHW map `x` for inference (no
/// gradient is tracked through it).
pub(crate) fn channel_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let op = ChannelNorm { weight: weight.to_vec1::<f32>()?, bias: bias.to_vec1::<f32>()?, eps };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// `erf(x)` to within 1.5e-7 (Abramowitz & Stegun 7.1.26), for GELU.
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-x * x).exp();
    y.copysign(x)
}

/// A function applied to every element, in parallel chunks on rayon.
struct Map<F> {
    name: &'static str,
    /// Generic, not a function pointer, so that it inlines into the loop (a
    /// pointer call per element cost a fifth of an EfficientNet-B0 forward).
    f: F,
}

impl<F: Fn(f32) -> f32 + Send + Sync> CustomOp1 for Map<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let out = super::Output::new(x.len()).par_chunks(1 << 14, |c, o| {
            for (o, &v) in o.iter_mut().zip(&x[c << 14..]) {
                *o = (self.f)(v);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`, in parallel, for inference; with
/// a tracked input, candle's differentiable `gelu_erf`.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        return x.gelu_erf();
    }
    let gelu = |v: f32| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
    x.contiguous()?.apply_op1_no_bwd(&Map { name: "gelu-erf", f: gelu })
}

/// SiLU, `x · sigmoid(x)`, in parallel on rayon for inference (candle's own
/// elementwise pool spun a fifth of an EfficientNet-B0 forward pass); with a
/// tracked input, candle's differentiable `silu`.
pub(crate) fn silu(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        return x.silu();
    }
    x.contiguous()?.apply_op1_no_bwd(&Map { name: "silu", f: |v: f32| v / (1.0 + (-v).exp()) })
}

/// `x[n][c] · s[n][c]` over each plane of the NCHW map `x` (`s` is
/// `[n, c, 1, 1]`): squeeze-and-excitation's gating.
struct ScalePlanes;

impl candle_core::CustomOp2 for ScalePlanes {
    fn name(&self) -> &'static str {
        "scale-planes"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        if l2.shape().elem_count() != n * c {
            candle_core::bail!("scale planes: {:?} scales for a {:?} map", l2.shape(), l1.shape());
        }
        let (x, scale) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let p = h * w;
        let out = super::Output::new(x.len()).par_planes(p, |plane, o| {
            let k = scale[plane];
            for (o, &v) in o.iter_mut().zip(&x[plane * p..(plane + 1) * p]) {
                *o = v * k;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x · s` with `s` `[n, c, 1, 1]` broadcast over each plane: one parallel
/// pass for inference, candle's `broadcast_mul` when a gradient is tracked.
pub(crate) fn scale_planes(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    if x.track_op() || s.track_op() || x.rank() != 4 {
        return x.broadcast_mul(s);
    }
    x.contiguous()?.apply_op2_no_bwd(&s.contiguous()?, &ScalePlanes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn the_channel_norm_equals_the_generic_ops() {
        let x = Tensor::randn(0.5f32, 2.0, (3, 7, 5, 6), &Device::Cpu).unwrap();
        let w = Tensor::randn(1f32, 0.3, 7, &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 0.3, 7, &Device::Cpu).unwrap();
        let centred = x.broadcast_sub(&x.mean_keepdim(1).unwrap()).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(1).unwrap();
        let want = centred
            .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w.reshape((1, 7, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, 7, 1, 1)).unwrap())
            .unwrap();
        assert!(max_diff(&channel_layer_norm(&x, &w, &b, 1e-6).unwrap(), &want) < 1e-5);
    }

    #[test]
    fn silu_and_plane_scaling_equal_candles_ops() {
        let x = Tensor::randn(0f32, 3.0, (2, 5, 40, 50), &Device::Cpu).unwrap();
        assert!(max_diff(&silu(&x).unwrap(), &x.silu().unwrap()) < 1e-5);
        let s = Tensor::randn(0f32, 1.0, (2, 5, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(max_diff(&scale_planes(&x, &s).unwrap(), &x.broadcast_mul(&s).unwrap()), 0.0);
    }

    #[test]
    fn gelu_equals_candles_exact_gelu() {
        let x = Tensor::randn(0f32, 3.0, 40_000, &Device::Cpu).unwrap();
        assert!(max_diff(&gelu(&x).unwrap(), &x.gelu_erf().unwrap()) < 3e-6);
    }
}
