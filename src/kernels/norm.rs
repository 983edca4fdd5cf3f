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

/// `eˣ` for `x` in about [-87, 88] to within 2 ulp (Cephes' `expf`: a
/// rounded power of two times a degree-6 polynomial), branch-free and without
/// a libm call, so that the loops below vectorise (libm's scalar `expf` was a
/// sixth of a ConvNeXt training step, per perf).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 · 2²³ trick: plain adds, which vectorise
    // on every x86-64 (rounding instructions need SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `erf(x)` to within 1.5e-7 (Abramowitz & Stegun 7.1.26), for GELU.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-x * x);
    y.copysign(x)
}

/// `erf(x / √2)`: the normal CDF is `(1 + this) / 2`.
#[inline(always)]
fn erf_over_sqrt2(v: f32) -> f32 {
    erf(v * std::f32::consts::FRAC_1_SQRT_2)
}

#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf_over_sqrt2(v))
}

/// GELU's derivative, `Φ(x) + x · φ(x)`.
#[inline(always)]
fn gelu_slope(v: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * (1.0 + erf_over_sqrt2(v)) + v * INV_SQRT_2PI * exp(-0.5 * v * v)
}

#[inline(always)]
fn silu_value(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

/// SiLU's derivative, `s · (1 + x · (1 − s))` with `s = sigmoid(x)`.
#[inline(always)]
fn silu_slope(v: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-v));
    s * (1.0 + v * (1.0 - s))
}

multiversion! {
    fn gelu_into(x: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu_value(v));
    }
}

multiversion! {
    fn silu_into(x: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = silu_value(v));
    }
}

multiversion! {
    fn gelu_grad_into(x: &[f32], grad: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(x.iter().zip(grad)).for_each(|(o, (&v, &g))| *o = g * gelu_slope(v));
    }
}

multiversion! {
    fn silu_grad_into(x: &[f32], grad: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(x.iter().zip(grad)).for_each(|(o, (&v, &g))| *o = g * silu_slope(v));
    }
}

const CHUNK: usize = 1 << 14;

/// An activation applied to every element, in parallel chunks on rayon;
/// with its backward pass fused when a gradient is tracked: candle's generic
/// `gelu_erf` differentiates into about ten elementwise ops, each writing a
/// full tensor; here forward and backward are one parallel pass each.
struct Activation {
    name: &'static str,
    /// `out[i] = f(x[i])` over a chunk.
    f: fn(&[f32], &mut [f32]),
    /// `out[i] = grad[i] · f'(x[i])` over a chunk.
    slope: fn(&[f32], &[f32], &mut [f32]),
}

const GELU: Activation = Activation { name: "gelu-erf", f: gelu_into, slope: gelu_grad_into };
const SILU: Activation = Activation { name: "silu", f: silu_into, slope: silu_grad_into };

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let out = super::Output::new(x.len()).par_chunks(CHUNK, |c, o| (self.f)(&x[c * CHUNK..], o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &Slope(self))?))
    }
}

/// The backward pass of an [`Activation`]: the gradient times its slope.
struct Slope<'a>(&'a Activation);

impl candle_core::CustomOp2 for Slope<'_> {
    fn name(&self) -> &'static str {
        self.0.name
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        if x.len() != g.len() {
            candle_core::bail!("{}: a gradient of {} values for {} inputs", self.0.name, g.len(), x.len());
        }
        let out =
            super::Output::new(x.len()).par_chunks(CHUNK, |c, o| (self.0.slope)(&x[c * CHUNK..], &g[c * CHUNK..], o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

fn activation(x: &Tensor, op: Activation) -> Result<Tensor> {
    let x = x.contiguous()?;
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

/// Exact GELU, `x · (1 + erf(x / √2)) / 2`.
pub(crate) fn gelu(x: &Tensor) -> Result<Tensor> {
    activation(x, GELU)
}

/// SiLU, `x · sigmoid(x)` (candle's own elementwise pool spun a fifth of an
/// EfficientNet-B0 forward pass).
pub(crate) fn silu(x: &Tensor) -> Result<Tensor> {
    activation(x, SILU)
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn the_channel_norm_equals_the_generic_ops() {
        let x = crate::kernels::testing::randn(0.5f32, 2.0, (3, 7, 5, 6)).unwrap();
        let w = crate::kernels::testing::randn(1f32, 0.3, 7).unwrap();
        let b = crate::kernels::testing::randn(0f32, 0.3, 7).unwrap();
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
        let x = crate::kernels::testing::randn(0f32, 3.0, (2, 5, 40, 50)).unwrap();
        assert!(max_diff(&silu(&x).unwrap(), &x.silu().unwrap()) < 1e-5);
        let s = crate::kernels::testing::randn(0f32, 1.0, (2, 5, 1, 1)).unwrap();
        assert_eq!(max_diff(&scale_planes(&x, &s).unwrap(), &x.broadcast_mul(&s).unwrap()), 0.0);
    }

    /// The fused backward passes give candle's generic gradients (the
    /// chain through a following op included), for GELU and SiLU.
    #[test]
    fn fused_activation_gradients_equal_candles() {
        use candle_core::Var;
        let x = Var::from_tensor(&crate::kernels::testing::randn(0f32, 2.5, (3, 4, 30, 20)).unwrap()).unwrap();
        let w = crate::kernels::testing::randn(0f32, 1.0, (3, 4, 30, 20)).unwrap();
        type Act = fn(&Tensor) -> Result<Tensor>;
        let cases: [(Act, Act); 2] = [(gelu, |t| t.gelu_erf()), (silu, |t| t.silu())];
        for (fused, generic) in cases {
            let grad = |f: Act| {
                let y = f(x.as_tensor()).unwrap();
                let loss = (y * &w).unwrap().sum_all().unwrap();
                (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap().get(x.as_tensor()).unwrap().clone())
            };
            let ((a, ga), (b, gb)) = (grad(fused), grad(generic));
            assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "{a} vs {b}");
            assert!(max_diff(&ga, &gb) < 2e-5, "{}", max_diff(&ga, &gb));
        }
    }

    /// The vectorisable `exp` against libm's, over the range the
    /// activations use (and clamped, not wrong, beyond it).
    #[test]
    fn the_polynomial_exp_is_within_two_ulp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn gelu_equals_candles_exact_gelu() {
        let x = crate::kernels::testing::randn(0f32, 3.0, 40_000).unwrap();
        assert!(max_diff(&gelu(&x).unwrap(), &x.gelu_erf().unwrap()) < 3e-6);
    }
}
