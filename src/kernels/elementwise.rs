//! Small custom ops whose candle formulation wastes work in the backward pass.
//!
//! * ReLU6 through `clamp` is `maximum` then `minimum` against broadcast
//!   scalars, and backward reduces a gradient for those scalars over the whole
//!   tensor; here it is one parallel pass each way.
//! * A frozen (folded) convolution's bias and activation, `clamp(y + b)`,
//!   are one in-place pass over the fresh convolution output instead of two
//!   ops that each allocate and write a full tensor.

use candle_core::{CpuStorage, CustomOp1, InplaceOp2, Layout, Result, Shape, Tensor};

const CHUNK: usize = 1 << 14;

pub(super) fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

struct Relu6;

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "relu6"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let y = super::Output::new(x.len()).par_chunks(CHUNK, |c, o| {
            for (o, &v) in o.iter_mut().zip(&x[c * CHUNK..]) {
                *o = v.clamp(0.0, 6.0);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &Relu6Grad)?))
    }
}

struct Relu6Grad;

impl candle_core::CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "relu6-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1)?;
        let g = contiguous(s2, l2)?;
        let out = super::Output::new(x.len()).par_chunks(CHUNK, |c, o| {
            for ((o, &xv), &gv) in o.iter_mut().zip(&x[c * CHUNK..]).zip(&g[c * CHUNK..]) {
                *o = if xv > 0.0 && xv < 6.0 { gv } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `min(max(x, 0), 6)`.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    if x.track_op() {
        x.apply_op1(Relu6)
    } else {
        x.apply_op1_no_bwd(&Relu6)
    }
}

/// `y = clamp(y + b[c], lo, hi)` in place, for `y` `[N, C, H, W]`.
struct BiasClamp {
    lo: f32,
    hi: f32,
}

impl InplaceOp2 for BiasClamp {
    fn name(&self) -> &'static str {
        "bias-clamp"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let b = contiguous(s2, l2)?;
        let CpuStorage::F32(y) = s1 else { candle_core::bail!("bias-clamp needs f32") };
        let Some((start, end)) = l1.contiguous_offsets() else {
            candle_core::bail!("bias-clamp needs a contiguous tensor")
        };
        if b.len() != c {
            candle_core::bail!("bias-clamp: {} biases for {c} channels", b.len())
        }
        debug_assert_eq!(end - start, n * c * h * w);
        let epi = super::Epilogue { bias: b, lo: self.lo, hi: self.hi };
        super::par_planes_mut(&mut y[start..end], h * w, |plane, p| epi.plane(plane % c, p));
        Ok(())
    }
}

/// `clamp(y + b, lo, hi)` with `b` per channel, for a frozen layer: in place
/// on `y` (a fresh convolution output nobody else holds) when no gradient
/// flows through it; the plain ops otherwise.
pub(crate) fn bias_clamp(y: Tensor, b: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    if y.track_op() || b.track_op() || y.dtype() != candle_core::DType::F32 || !y.is_contiguous() {
        let c = b.elem_count();
        return y.broadcast_add(&b.reshape((1, c, 1, 1))?)?.clamp(lo, hi);
    }
    y.inplace_op2(&b.flatten_all()?.contiguous()?, &BiasClamp { lo, hi })?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn bias_clamp_matches_the_plain_ops() {
        let y = crate::kernels::testing::randn(0f32, 3., (2, 3, 4, 5)).unwrap();
        let b = crate::kernels::testing::randn(0f32, 1., 3).unwrap();
        let expected = y.broadcast_add(&b.reshape((1, 3, 1, 1)).unwrap()).unwrap().clamp(0f32, 6f32).unwrap();
        let ours = bias_clamp(y.copy().unwrap(), &b, 0.0, 6.0).unwrap();
        let d = (ours - expected).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn relu6_and_its_gradient() {
        let x = Var::new(&[-1f32, 0.5, 3.0, 6.5, 7.0], &Device::Cpu).unwrap();
        let y = relu6(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0., 0.5, 3.0, 6.0, 6.0]);
        let g = (y * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![0., 2., 2., 0., 0.]);
    }
}
