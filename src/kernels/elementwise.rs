//! Small custom ops whose candle formulation wastes work in the backward pass.
//!
//! * ReLU6 through `clamp` is `maximum` then `minimum` against broadcast
//!   scalars, and backward reduces a gradient for those scalars over the whole
//!   tensor; here it is one parallel pass each way.
//! * Broadcasting a weight over the batch (`broadcast_left`) makes backward
//!   sum `[N, …]` over its first axis with candle's generic strided reduction;
//!   here the sum is a contiguous accumulation.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
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
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, i)| {
            for (o, &v) in o.iter_mut().zip(i) {
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
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))).for_each(|(o, (xs, gs))| {
            for ((o, &xv), &gv) in o.iter_mut().zip(xs).zip(gs) {
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

struct BroadcastLeft(usize);

impl CustomOp1 for BroadcastLeft {
    fn name(&self) -> &'static str {
        "broadcast-left"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut out = Vec::with_capacity(x.len() * self.0);
        for _ in 0..self.0 {
            out.extend_from_slice(x);
        }
        let mut dims = vec![self.0];
        dims.extend_from_slice(l.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumLeading)?))
    }
}

/// Sum over the first axis of a contiguous tensor.
struct SumLeading;

impl CustomOp1 for SumLeading {
    fn name(&self) -> &'static str {
        "sum-leading"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let n = l.dims()[0];
        let per = x.len() / n.max(1);
        let mut out = vec![0f32; per];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, o)| {
            let start = ci * CHUNK;
            let len = o.len();
            for i in 0..n {
                for (acc, &v) in o.iter_mut().zip(&x[i * per + start..i * per + start + len]) {
                    *acc += v;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(&l.dims()[1..])))
    }
}

/// `x` repeated `n` times along a new first axis (a real copy, so that the
/// gradient is a cheap contiguous sum).
pub fn broadcast_left(x: &Tensor, n: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    if x.track_op() {
        x.apply_op1(BroadcastLeft(n))
    } else {
        x.broadcast_left(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn relu6_and_its_gradient() {
        let x = Var::new(&[-1f32, 0.5, 3.0, 6.5, 7.0], &Device::Cpu).unwrap();
        let y = relu6(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), vec![0., 0.5, 3.0, 6.0, 6.0]);
        let g = (y * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![0., 2., 2., 0., 0.]);
    }

    #[test]
    fn broadcast_left_gradient_is_the_sum() {
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 4), &Device::Cpu).unwrap()).unwrap();
        let b = broadcast_left(w.as_tensor(), 5).unwrap();
        assert_eq!(b.dims(), &[5, 3, 4]);
        let r = Tensor::randn(0f32, 1., (5, 3, 4), &Device::Cpu).unwrap();
        let g = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let expected = r.sum(0).unwrap();
        let d = (g.get(w.as_tensor()).unwrap() - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
