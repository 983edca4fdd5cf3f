//! 2-D max pooling with padding and any stride, forward and backward, as a
//! candle custom op.
//!
//! candle's own `max_pool2d` has no padding and no backward pass when the
//! kernel differs from the stride, but ResNet's stem pools 3×3 with stride 2
//! and padding 1, and it must be trainable once the stem is unfrozen.
//! Padding behaves like PyTorch's (`-inf`): padded cells never win.
//! The backward pass recomputes each window's winner (the first maximum in
//! row-major order, as PyTorch picks it) instead of storing indices, so the
//! forward pass allocates nothing beyond its output.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Padding;

/// Geometry of a max pooling: square kernel, stride, per-side padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub kernel: usize,
    pub stride: usize,
    pub pad: Padding,
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    planes: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl PoolGeometry {
    fn dims(&self, shape: &Shape) -> Result<(usize, usize, Dims)> {
        let (n, c, h, w) = shape.dims4()?;
        let (k, s, p) = (self.kernel, self.stride, self.pad);
        if k == 0 || s == 0 {
            candle_core::bail!("max pool: kernel and stride must be positive")
        }
        // A window made only of padding would have no maximum.
        if p.top.max(p.bottom).max(p.left).max(p.right) >= k {
            candle_core::bail!("max pool: padding {p:?} must be smaller than the kernel {k}")
        }
        let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
        if ph < k || pw < k {
            candle_core::bail!("max pool: input {h}x{w} is smaller than the {k}x{k} window")
        }
        let d = Dims { planes: n * c, h, w, oh: (ph - k) / s + 1, ow: (pw - k) / s + 1 };
        Ok((n, c, d))
    }

    /// Flat index (within the plane) of the first maximum of window `(oy, ox)`.
    #[inline]
    fn winner(&self, plane: &[f32], d: &Dims, oy: usize, ox: usize) -> usize {
        let (k, s) = (self.kernel, self.stride);
        let y0 = (oy * s).saturating_sub(self.pad.top);
        let y1 = (oy * s + k).saturating_sub(self.pad.top).min(d.h);
        let x0 = (ox * s).saturating_sub(self.pad.left);
        let x1 = (ox * s + k).saturating_sub(self.pad.left).min(d.w);
        let mut best = y0 * d.w + x0;
        let mut best_v = plane[best];
        for y in y0..y1 {
            for x in x0..x1 {
                let v = plane[y * d.w + x];
                // NaN propagates, like PyTorch.
                if v > best_v || (v.is_nan() && !best_v.is_nan()) {
                    best_v = v;
                    best = y * d.w + x;
                }
            }
        }
        best
    }
}

/// The larger of two values, NaN if either is (PyTorch's max pooling
/// propagates NaN; `f32::max` would drop it).
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("max pool: {what} must be contiguous"),
    }
}

/// The forward op.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool(pub PoolGeometry);

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.0;
        let (n, c, d) = geo.dims(l.shape())?;
        let x = contiguous(s, l, "input")?;
        // Every output row is written whole (below).
        let out = super::Output::new(d.planes * d.oh * d.ow);
        // Separable: the maximum over the window's rows (a vectorised pass
        // along whole input rows), then over each window's columns of that.
        // Only the backward pass needs the winner's position.
        let (k, s) = (geo.kernel, geo.stride);
        let out = out.par_chunks_init(
            d.oh * d.ow,
            || vec![0f32; d.w],
            |cols, p, o| {
                let plane = &x[p * d.h * d.w..(p + 1) * d.h * d.w];
                for (oy, orow) in o.chunks_exact_mut(d.ow).enumerate() {
                    let y0 = (oy * s).saturating_sub(geo.pad.top);
                    let y1 = (oy * s + k).saturating_sub(geo.pad.top).min(d.h);
                    cols.copy_from_slice(&plane[y0 * d.w..(y0 + 1) * d.w]);
                    for y in y0 + 1..y1 {
                        for (m, &v) in cols.iter_mut().zip(&plane[y * d.w..(y + 1) * d.w]) {
                            *m = nan_max(*m, v);
                        }
                    }
                    for (ox, out) in orow.iter_mut().enumerate() {
                        let x0 = (ox * s).saturating_sub(geo.pad.left);
                        let x1 = (ox * s + k).saturating_sub(geo.pad.left).min(d.w);
                        *out = cols[x0 + 1..x1].iter().fold(cols[x0], |m, &v| nan_max(m, v));
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, c, d.oh, d.ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad(self.0))?))
    }
}

/// Gradient of the input: each output's gradient goes to its window's winner
/// (overlapping windows add up).
#[derive(Debug, Clone, Copy)]
struct MaxPoolGrad(PoolGeometry);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool2d-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.0;
        let (_, _, d) = geo.dims(l1.shape())?;
        let x = contiguous(s1, l1, "input")?;
        let g = contiguous(s2, l2, "gradient")?;
        if g.len() != d.planes * d.oh * d.ow {
            candle_core::bail!("max pool backward: gradient {:?} does not fit the output", l2.shape())
        }
        let mut out = vec![0f32; d.planes * d.h * d.w];
        out.par_chunks_mut(d.h * d.w).enumerate().for_each(|(p, gi)| {
            let plane = &x[p * d.h * d.w..(p + 1) * d.h * d.w];
            let go = &g[p * d.oh * d.ow..(p + 1) * d.oh * d.ow];
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    gi[geo.winner(plane, &d, oy, ox)] += go[oy * d.ow + ox];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Max pooling of `x` `[N, C, H, W]` (f32) with a square `kernel`.
pub(crate) fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, pad: Padding) -> Result<Tensor> {
    let x = x.contiguous()?;
    let op = MaxPool(PoolGeometry { kernel, stride, pad });
    if x.track_op() {
        x.apply_op1(op)
    } else {
        x.apply_op1_no_bwd(&op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Brute force: pad with -inf, then take each window's maximum.
    fn reference(x: &[f32], (n, c, h, w): (usize, usize, usize, usize), k: usize, s: usize, p: Padding) -> Vec<f32> {
        let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
        let (oh, ow) = ((ph - k) / s + 1, (pw - k) / s + 1);
        let mut out = Vec::new();
        for plane in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for ky in 0..k {
                        for kx in 0..k {
                            let (y, xx) = (oy * s + ky, ox * s + kx);
                            if y >= p.top && y - p.top < h && xx >= p.left && xx - p.left < w {
                                m = m.max(x[plane * h * w + (y - p.top) * w + xx - p.left]);
                            }
                        }
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    #[test]
    fn matches_brute_force_forward_and_gradient() {
        let dev = Device::Cpu;
        for (h, w, k, s, pad) in [
            (9, 8, 3, 2, Padding::same(1)),
            (7, 7, 2, 2, Padding::default()),
            (6, 5, 3, 1, Padding { top: 0, left: 1, bottom: 1, right: 0 }),
        ] {
            let shape = (2, 3, h, w);
            // Distinct values, so the winner is unique and finite differences are exact.
            let n = 2 * 3 * h * w;
            let data: Vec<f32> = (0..n).map(|i| ((i * 37) % n) as f32 * 0.1 - 1.0).collect();
            let x = Var::from_tensor(&Tensor::from_vec(data.clone(), shape, &dev).unwrap()).unwrap();
            let y = max_pool2d(x.as_tensor(), k, s, pad).unwrap();
            let want = reference(&data, shape, k, s, pad);
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);

            // Loss = Σ c_o · y_o with distinct coefficients; its gradient,
            // by brute force, is Σ over the windows each input wins.
            let coef: Vec<f32> = (0..want.len()).map(|i| 1.0 + i as f32 * 0.01).collect();
            let ct = Tensor::from_vec(coef.clone(), y.dims(), &dev).unwrap();
            let grads = (y * ct).unwrap().sum_all().unwrap().backward().unwrap();
            let got = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let eps = 0.01f32;
            for i in 0..n {
                let mut bumped = data.clone();
                bumped[i] += eps;
                let up = reference(&bumped, shape, k, s, pad);
                let numeric: f32 = up.iter().zip(&want).zip(&coef).map(|((a, b), c)| (a - b) * c).sum::<f32>() / eps;
                assert!((numeric - got[i]).abs() < 1e-2, "grad[{i}]: {} vs {numeric} (k={k}, s={s})", got[i]);
            }
        }
    }

    #[test]
    fn ties_go_to_the_first_maximum_like_pytorch() {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap();
        let y = max_pool2d(x.as_tensor(), 2, 2, Padding::default()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn nan_propagates_like_pytorch() {
        let mut data = vec![0.5f32; 16];
        data[5] = f32::NAN;
        let x = Tensor::from_vec(data, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let y = max_pool2d(&x, 2, 2, Padding::default()).unwrap();
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0].is_nan(), "{y:?}");
        assert_eq!(&y[1..], &[0.5, 0.5, 0.5]);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2d(&x, 3, 1, Padding::default()).is_err());
        assert!(max_pool2d(&x, 2, 2, Padding::same(2)).is_err());
    }
}
