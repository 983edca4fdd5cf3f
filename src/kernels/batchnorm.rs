//! Training-mode BatchNorm as one fused custom op.
//!
//! Written with candle's broadcasting ops, BatchNorm's backward pass reduces
//! gradients over the (N, H, W) axes of a `[N, C, H, W]` tensor several times;
//! candle's strided reduction for that axis pattern dominated the profile of a
//! partial fine-tune (≈ 30 % of the time). Here every pass walks each
//! channel's contiguous `H·W` planes directly, in parallel over channels:
//!
//! * forward: `y = (x − μ) · γ/σ + β` with batch statistics μ, σ² (biased);
//! * backward (standard BN gradient, Ioffe & Szegedy 2015):
//!   `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/(σ·M) · (M·dy − Σ dy − x̂ · Σ dy·x̂)`
//!   with `M = N·H·W`.
//!
//! The activation after it (ReLU, ReLU6) can be fused in as a clamp: one
//! tensor and one autograd node fewer per layer (candle's backward zero-fills
//! and adds a gradient buffer for every node); its backward zeroes `dy`
//! where the output was clamped, telling those from `x` with the forward's
//! own arithmetic, inside the two gradient passes.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("batchnorm: {what} must be contiguous"),
    }
}

/// Every image's `H·W` plane of channel `ch`.
fn planes(x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw])
}

/// A sum in f64 over `LANES` independent accumulators: a single running
/// sum is one dependent add per value (latency-bound, never vectorised);
/// lanes vectorise and keep a fixed, thread-independent order.
const LANES: usize = 8;

#[derive(Default)]
struct Lanes([f64; LANES]);

impl Lanes {
    #[inline(always)]
    fn add(&mut self, xs: &[f32], f: impl Fn(f32) -> f64) {
        let mut chunks = xs.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (acc, &v) in self.0.iter_mut().zip(chunk) {
                *acc += f(v);
            }
        }
        for (acc, &v) in self.0.iter_mut().zip(chunks.remainder()) {
            *acc += f(v);
        }
    }

    fn total(&self) -> f64 {
        self.0.iter().sum()
    }
}

/// The affine map and clamp of one channel, exactly as the forward pass
/// computes it, so that the backward pass can tell which outputs the fused
/// activation clamped from `x` alone (no mask tensor, no extra pass).
#[derive(Clone, Copy)]
struct Affine {
    scale: f32,
    shift: f32,
    lo: f32,
    hi: f32,
}

impl Affine {
    fn new(gamma: f32, beta: f32, mean: f32, inv_std: f32, lo: f32, hi: f32) -> Self {
        let scale = gamma * inv_std;
        Affine { scale, shift: beta - mean * scale, lo, hi }
    }

    #[inline(always)]
    fn apply(&self, v: f32) -> f32 {
        (v * self.scale + self.shift).max(self.lo).min(self.hi)
    }

    /// `dy` where the output was not clamped, else 0.
    #[inline(always)]
    fn pass(&self, v: f32, dy: f32) -> f32 {
        let t = v * self.scale + self.shift;
        if t > self.lo && t < self.hi {
            dy
        } else {
            0.0
        }
    }

    /// [`Affine::pass`] on `LANES` values at once. Written per value, as a
    /// select or a bit mask, the compiler turned it into a branch per value,
    /// mispredicted on about half of a ReLU's values (12–15 % of a
    /// MobileNetV2 train step); SSE2 (baseline on x86-64) keeps it a mask.
    #[inline(always)]
    fn pass_lanes(&self, x: &[f32; LANES], dy: &[f32; LANES]) -> [f32; LANES] {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            let mut out = [0f32; LANES];
            for ((o, x), dy) in out.chunks_exact_mut(4).zip(x.chunks_exact(4)).zip(dy.chunks_exact(4)) {
                // SAFETY: SSE2 is part of x86-64; every pointer is to 4
                // in-bounds f32s (chunks of exactly 4), unaligned access.
                unsafe {
                    let t = _mm_add_ps(
                        _mm_mul_ps(_mm_loadu_ps(x.as_ptr()), _mm_set1_ps(self.scale)),
                        _mm_set1_ps(self.shift),
                    );
                    let keep = _mm_and_ps(_mm_cmpgt_ps(t, _mm_set1_ps(self.lo)), _mm_cmplt_ps(t, _mm_set1_ps(self.hi)));
                    _mm_storeu_ps(o.as_mut_ptr(), _mm_and_ps(keep, _mm_loadu_ps(dy.as_ptr())));
                }
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        std::array::from_fn(|l| self.pass(x[l], dy[l]))
    }
}

/// `dy` through the fused activation, if any ([`Affine::pass`]).
#[inline(always)]
fn through(aff: Option<Affine>, x: f32, dy: f32) -> f32 {
    aff.map_or(dy, |a| a.pass(x, dy))
}

/// [`through`] on `LANES` values at once.
#[inline(always)]
fn through_lanes(aff: Option<Affine>, x: &[f32; LANES], dy: &[f32; LANES]) -> [f32; LANES] {
    match aff {
        Some(a) => a.pass_lanes(x, dy),
        None => *dy,
    }
}

/// Per-channel mean and biased variance, as a `[2, C]` tensor.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "bn-channel-stats"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let x = slice(s, l, "input")?;
        let hw = h * w;
        let m = (n * hw).max(1) as f64;
        let stats: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut sum = Lanes::default();
                planes(x, n, c, hw, ch).for_each(|p| sum.add(p, f64::from));
                let mean = sum.total() / m;
                let mut var = Lanes::default();
                planes(x, n, c, hw, ch).for_each(|p| var.add(p, |v| (f64::from(v) - mean).powi(2)));
                (mean as f32, (var.total() / m) as f32)
            })
            .collect();
        let mut out: Vec<f32> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// The normalisation itself, given the batch statistics.
struct Normalize {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// Output clamp (the fused activation); infinite bounds for none.
    lo: f32,
    hi: f32,
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "bn-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = slice(s1, l1, "input")?;
        let gamma = slice(s2, l2, "weight")?;
        let beta = slice(s3, l3, "bias")?;
        let (lo, hi) = (self.lo, self.hi);
        let y = super::Output::new(x.len()).par_planes(hw, |plane, out| {
            let ch = plane % c;
            let a = Affine::new(gamma[ch], beta[ch], self.mean[ch], self.inv_std[ch], lo, hi);
            normalize_plane(out, &x[plane * hw..(plane + 1) * hw], a);
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (gamma, beta) = (gamma.to_vec1::<f32>()?, beta.to_vec1::<f32>()?);
        let (lo, hi) = (self.lo, self.hi);
        let affine = (lo.is_finite() || hi.is_finite()).then(|| {
            (0..self.mean.len())
                .map(|ch| Affine::new(gamma[ch], beta[ch], self.mean[ch], self.inv_std[ch], lo, hi))
                .collect()
        });
        let grad = Grad { mean: self.mean.clone(), inv_std: self.inv_std.clone(), affine };
        let sums = x.apply_op2_no_bwd(&dy, &GradSums(grad.clone()))?;
        let c = self.mean.len();
        let sum_dy = sums.narrow(0, 0, 1)?.reshape(c)?;
        let sum_dy_xhat = sums.narrow(0, 1, 1)?.reshape(c)?;
        let dx = if x.track_op() {
            let op =
                InputGrad { grad, gamma, sum_dy: sum_dy.to_vec1::<f32>()?, sum_dy_xhat: sum_dy_xhat.to_vec1::<f32>()? };
            Some(x.apply_op2_no_bwd(&dy, &op)?)
        } else {
            None
        };
        Ok((dx, Some(sum_dy_xhat), Some(sum_dy)))
    }
}

/// What both backward kernels share: the batch statistics and, with a
/// fused activation, each channel's forward map to tell clamped outputs
/// (whose `dy` is zero) from `x`.
#[derive(Clone)]
struct Grad {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// Per channel; `None` without a fused activation.
    affine: Option<Vec<Affine>>,
}

impl Grad {
    /// Channel `ch`'s forward map, if an activation clamps it.
    fn clamp(&self, ch: usize) -> Option<Affine> {
        self.affine.as_ref().map(|a| a[ch])
    }
}

/// Adds `dy'` and `dy'·x̂` of whole `LANES`-chunks to the lane sums `a`,
/// `b` (lane `l` of a chunk into `a[l]`, `b[l]`, in order). Written with
/// [`through_lanes`] and a loop over the lanes, the compiler kept the sums in
/// memory and did the arithmetic one value at a time (this was an eighth of
/// a MobileNetV2 whole-network step at 96 px); on x86-64 the sums stay in
/// SSE registers. Same operations in the same order, so the same bits.
#[inline(always)]
fn add_lane_sums(
    cx: &[[f32; LANES]],
    cd: &[[f32; LANES]],
    mu: f32,
    is: f32,
    aff: Option<Affine>,
    a: &mut [f32; LANES],
    b: &mut [f32; LANES],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of x86-64; every load and store is of 4 in-bounds
    // f32s (halves of arrays of exactly `LANES` = 8), unaligned.
    unsafe {
        use std::arch::x86_64::*;
        let (vmu, vis) = (_mm_set1_ps(mu), _mm_set1_ps(is));
        let mut va = [_mm_loadu_ps(a.as_ptr()), _mm_loadu_ps(a.as_ptr().add(4))];
        let mut vb = [_mm_loadu_ps(b.as_ptr()), _mm_loadu_ps(b.as_ptr().add(4))];
        let mut step = |xs: &[f32; LANES], ds: &[f32; LANES], keep: &dyn Fn(__m128, __m128) -> __m128| {
            for h in 0..2 {
                let x = _mm_loadu_ps(xs.as_ptr().add(4 * h));
                let d = keep(x, _mm_loadu_ps(ds.as_ptr().add(4 * h)));
                va[h] = _mm_add_ps(va[h], d);
                vb[h] = _mm_add_ps(vb[h], _mm_mul_ps(d, _mm_mul_ps(_mm_sub_ps(x, vmu), vis)));
            }
        };
        match aff {
            Some(f) => {
                let (sc, sh, lo, hi) =
                    (_mm_set1_ps(f.scale), _mm_set1_ps(f.shift), _mm_set1_ps(f.lo), _mm_set1_ps(f.hi));
                let keep = |x: __m128, d: __m128| {
                    let t = _mm_add_ps(_mm_mul_ps(x, sc), sh);
                    _mm_and_ps(_mm_and_ps(_mm_cmpgt_ps(t, lo), _mm_cmplt_ps(t, hi)), d)
                };
                for (xs, ds) in cx.iter().zip(cd) {
                    step(xs, ds, &keep);
                }
            }
            None => {
                for (xs, ds) in cx.iter().zip(cd) {
                    step(xs, ds, &|_, d| d);
                }
            }
        }
        _mm_storeu_ps(a.as_mut_ptr(), va[0]);
        _mm_storeu_ps(a.as_mut_ptr().add(4), va[1]);
        _mm_storeu_ps(b.as_mut_ptr(), vb[0]);
        _mm_storeu_ps(b.as_mut_ptr().add(4), vb[1]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (xs, ds) in cx.iter().zip(cd) {
        let d = through_lanes(aff, xs, ds);
        for l in 0..LANES {
            a[l] += d[l];
            b[l] += d[l] * ((xs[l] - mu) * is);
        }
    }
}

multiversion! {
    /// `(Σ dy', Σ dy'·x̂)` over one channel's planes (`planes` of `hw` values,
    /// `stride` apart), `dy'` through the activation: one pass, `LANES` f32
    /// partial sums (vectorised) moved into f64 after every 1024 or so
    /// values, so that neither f32 runs long nor small planes (3×3 on a
    /// 96 px input) pay a conversion each.
    fn channel_grad_sums(
        x: &[f32],
        dy: &[f32],
        planes: usize,
        stride: usize,
        hw: usize,
        mu: f32,
        is: f32,
        aff: Option<Affine>,
    ) -> (f64, f64) {
        let (mut s, mut sx) = (0f64, 0f64);
        let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
        let mut pending = 0;
        for p in 0..planes {
            let (px, pd) = (&x[p * stride..p * stride + hw], &dy[p * stride..p * stride + hw]);
            for (xr, dr) in px.chunks(1024).zip(pd.chunks(1024)) {
                let ((cx, rx), (cd, rd)) = (xr.as_chunks::<LANES>(), dr.as_chunks::<LANES>());
                add_lane_sums(cx, cd, mu, is, aff, &mut a, &mut b);
                for (&xv, &dv) in rx.iter().zip(rd) {
                    let d = through(aff, xv, dv);
                    a[0] += d;
                    b[0] += d * ((xv - mu) * is);
                }
                pending += xr.len();
                if pending >= 1024 {
                    s += a.iter().map(|&v| f64::from(v)).sum::<f64>();
                    sx += b.iter().map(|&v| f64::from(v)).sum::<f64>();
                    (a, b, pending) = ([0f32; LANES], [0f32; LANES], 0);
                }
            }
        }
        s += a.iter().map(|&v| f64::from(v)).sum::<f64>();
        sx += b.iter().map(|&v| f64::from(v)).sum::<f64>();
        (s, sx)
    }
}

/// `[Σ dy, Σ dy·x̂]` per channel, as `[2, C]` (`dy` through the activation).
struct GradSums(Grad);

impl CustomOp2 for GradSums {
    fn name(&self) -> &'static str {
        "bn-grad-sums"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = slice(s1, l1, "input")?;
        let dy = slice(s2, l2, "gradient")?;
        let g = &self.0;
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mu, is) = (g.mean[ch], g.inv_std[ch]);
                let (s, sx) = channel_grad_sums(&x[ch * hw..], &dy[ch * hw..], n, c * hw, hw, mu, is, g.clamp(ch));
                (s as f32, sx as f32)
            })
            .collect();
        let mut out: Vec<f32> = sums.iter().map(|s| s.0).collect();
        out.extend(sums.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

struct InputGrad {
    grad: Grad,
    gamma: Vec<f32>,
    sum_dy: Vec<f32>,
    sum_dy_xhat: Vec<f32>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "bn-input-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let m = (n * hw) as f32;
        let x = slice(s1, l1, "input")?;
        let dy = slice(s2, l2, "gradient")?;
        let g = &self.grad;
        let consts: Vec<[f32; 6]> = (0..c)
            .map(|ch| {
                let k = self.gamma[ch] * g.inv_std[ch] / m;
                [k, m, g.mean[ch], g.inv_std[ch], self.sum_dy[ch], self.sum_dy_xhat[ch]]
            })
            .collect();
        let clamps: Vec<Option<Affine>> = (0..c).map(|ch| g.clamp(ch)).collect();
        // One call per run of planes: with 3×3 planes a call (and its
        // CPU-feature dispatch) per plane cost more than the plane's arithmetic.
        let dx = super::Output::new(x.len()).par_plane_runs(hw, |first, out| {
            let range = first * hw..first * hw + out.len();
            input_grad_planes(out, &x[range.clone()], &dy[range], first, c, hw, &consts, &clamps);
        });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

/// `dx = k·(M·dy' − Σdy' − x̂·Σdy'x̂)` over one plane, `dy'` through the
/// activation; `c = [k, M, μ, 1/σ, Σdy', Σdy'x̂]`.
#[inline(always)]
fn input_grad_plane(out: &mut [f32], xs: &[f32], ds: &[f32], c: [f32; 6], aff: Option<Affine>) {
    let [k, m, mu, is, sd, sdx] = c;
    let (ox, orest) = out.as_chunks_mut::<LANES>();
    let ((cx, rx), (cd, rd)) = (xs.as_chunks::<LANES>(), ds.as_chunks::<LANES>());
    for ((o, xl), dl) in ox.iter_mut().zip(cx).zip(cd) {
        let d = through_lanes(aff, xl, dl);
        for l in 0..LANES {
            o[l] = k * (m * d[l] - sd - (xl[l] - mu) * is * sdx);
        }
    }
    for ((o, &xv), &dv) in orest.iter_mut().zip(rx).zip(rd) {
        let d = through(aff, xv, dv);
        *o = k * (m * d - sd - (xv - mu) * is * sdx);
    }
}

multiversion! {
    /// [`input_grad_plane`] over a run of whole planes, the first of them
    /// plane `first` of the tensor (channel `plane mod c`).
    fn input_grad_planes(
        out: &mut [f32],
        xs: &[f32],
        ds: &[f32],
        first: usize,
        c: usize,
        hw: usize,
        consts: &[[f32; 6]],
        clamps: &[Option<Affine>],
    ) {
        let planes = out.chunks_exact_mut(hw).zip(xs.chunks_exact(hw)).zip(ds.chunks_exact(hw));
        for (j, ((o, xp), dp)) in planes.enumerate() {
            let ch = (first + j) % c;
            input_grad_plane(o, xp, dp, consts[ch], clamps[ch]);
        }
    }
}

multiversion! {
    /// `out = clamp(x·scale + shift)` over one plane.
    fn normalize_plane(out: &mut [f32], xs: &[f32], a: Affine) {
        for (o, &v) in out.iter_mut().zip(xs) {
            *o = a.apply(v);
        }
    }
}

/// Training-mode batch normalisation of `x` `[N, C, H, W]`. Returns the output
/// and the batch `(mean, biased variance)` for the running estimates.
/// `(lo, hi)` clamps the output: the fused activation (`(-∞, ∞)` for none).
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    (lo, hi): (f32, f32),
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?;
    let c = x.dim(1)?;
    let mean = stats.narrow(0, 0, 1)?.reshape(c)?;
    let var = stats.narrow(0, 1, 1)?.reshape(c)?;
    let op = Normalize {
        mean: mean.to_vec1::<f32>()?,
        inv_std: var.to_vec1::<f32>()?.iter().map(|v| 1.0 / (f64::from(*v) + eps).sqrt() as f32).collect(),
        lo,
        hi,
    };
    let gamma = gamma.contiguous()?;
    let beta = beta.contiguous()?;
    let y = if x.track_op() || gamma.track_op() || beta.track_op() {
        x.apply_op3(&gamma, &beta, op)?
    } else {
        x.apply_op3_no_bwd(&gamma, &beta, &op)?
    };
    Ok((y, mean, var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The same computation with candle's own broadcasting ops.
    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let c = x.dim(1).unwrap();
        let (n, _, h, w) = x.dims4().unwrap();
        let m = (n * h * w) as f64;
        let mean = (x.sum_keepdim((0, 2, 3)).unwrap() / m).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = (xc.sqr().unwrap().sum_keepdim((0, 2, 3)).unwrap() / m).unwrap();
        let xhat = xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
        xhat.broadcast_mul(&g.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
    }

    #[test]
    fn matches_broadcast_reference_with_gradients() {
        // No activation, ReLU and ReLU6 fused in; the reference clamps after.
        for (lo, hi) in [(f32::NEG_INFINITY, f32::INFINITY), (0.0, f32::INFINITY), (0.0, 6.0)] {
            for &(n, c, h, w) in &[(4, 3, 5, 5), (2, 6, 3, 4), (8, 2, 1, 1)] {
                let x =
                    Var::from_tensor(&(crate::kernels::testing::randn(0f32, 2., (n, c, h, w)).unwrap() + 1.0).unwrap())
                        .unwrap();
                let g = Var::from_tensor(&crate::kernels::testing::randn(1f32, 3.0, c).unwrap()).unwrap();
                let b = Var::from_tensor(&crate::kernels::testing::randn(0f32, 0.3, c).unwrap()).unwrap();
                let (ours, _, _) =
                    batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, (lo, hi)).unwrap();
                let theirs = reference(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5);
                let theirs = match (lo.is_finite(), hi.is_finite()) {
                    (false, false) => theirs,
                    (true, false) => theirs.relu().unwrap(),
                    _ => crate::kernels::elementwise::relu6(&theirs).unwrap(),
                };
                assert!(max_diff(&ours, &theirs) < 1e-4);
                let r = crate::kernels::testing::randn(0f32, 1., (n, c, h, w)).unwrap();
                let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for v in [&x, &g, &b] {
                    let d = max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                    assert!(d < 1e-3, "gradient differs by {d} for {n}x{c}x{h}x{w} clamp {lo}..{hi}");
                }
            }
        }
    }
}
