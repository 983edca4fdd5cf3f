//! Convolution kernels: one entry point, [`conv2d`], that routes each shape to
//! the fastest implementation available on the CPU.
//!
//! * depthwise (groups = channels): the direct kernel in [`depthwise`];
//! * every dense (groups = 1) f32 convolution, any kernel, stride and
//!   per-side padding: im2col + one GEMM per image in [`conv`] (a 1×1,
//!   stride-1 unpadded one multiplies the image itself, no column copy), with
//!   its own backward (candle's is a transposed convolution, several times
//!   slower). One GEMM per image with the shared weight beats a batched
//!   matmul, which needs the weight copied once per image;
//! * grouped but not depthwise (and non-f32): candle's own `conv2d`.

pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
pub mod maxpool;

use candle_core::{CustomOp2, DType, Result, Tensor};

pub use conv::ConvGeometry;
pub use depthwise::DwGeometry;

/// Per-side zero padding; asymmetric for TF "SAME" convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Padding {
    pub top: usize,
    pub left: usize,
    pub bottom: usize,
    pub right: usize,
}

impl Padding {
    pub fn same(p: usize) -> Self {
        Padding { top: p, left: p, bottom: p, right: p }
    }
    /// TensorFlow's "SAME" padding for a `k`×`k` kernel with `stride` on an
    /// `h`×`w` input: the output is `ceil(size / stride)` and any odd total
    /// padding goes after (bottom/right), so it depends on the input size.
    pub fn tf_same(h: usize, w: usize, k: usize, stride: usize) -> Self {
        let side = |n: usize| {
            let out = n.div_ceil(stride.max(1));
            let total = ((out.max(1) - 1) * stride + k).saturating_sub(n);
            (total / 2, total - total / 2)
        };
        let ((top, bottom), (left, right)) = (side(h), side(w));
        Padding { top, left, bottom, right }
    }

    fn is_symmetric(&self) -> bool {
        self.top == self.bottom && self.left == self.right && self.top == self.left
    }
}

/// The backward pass of a convolution op: `input_grad(dY, W)` and
/// `weight_grad(X, dY)`, each run only when something needs it (a frozen
/// input gets no gradient, a frozen weight none either).
fn input_and_weight_grads(
    input: &Tensor,
    weight: &Tensor,
    grad: &Tensor,
    input_grad: &impl CustomOp2,
    weight_grad: &impl CustomOp2,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let gi = if input.track_op() { Some(grad.apply_op2_no_bwd(weight, input_grad)?) } else { None };
    let gw = if weight.track_op() { Some(input.apply_op2_no_bwd(&grad, weight_grad)?) } else { None };
    Ok((gi, gw))
}

/// 2-D convolution of `x` `[N, Cin, H, W]` with `w` `[Cout, Cin/groups, kh, kw]`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: Padding, groups: usize) -> Result<Tensor> {
    let (_, cin, _, _) = x.dims4()?;
    let cout = w.dim(0)?;
    if groups > 1 && groups == cin && cout == cin {
        let geo =
            DwGeometry { stride, pad_top: pad.top, pad_left: pad.left, pad_bottom: pad.bottom, pad_right: pad.right };
        return depthwise::depthwise_conv2d(x, w, geo);
    }
    if groups == 1 && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return conv::conv2d_gemm(x, w, ConvGeometry { stride, pad });
    }
    if pad.is_symmetric() {
        x.conv2d(w, pad.top, stride, 1, groups)
    } else {
        let x = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
        x.conv2d(w, 0, stride, 1, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn tf_same_padding_puts_the_odd_pixel_after() {
        // A stride-2 3×3 on an even size pads 0 before and 1 after.
        assert_eq!(Padding::tf_same(224, 224, 3, 2), Padding { top: 0, left: 0, bottom: 1, right: 1 });
        assert_eq!(Padding::tf_same(67, 66, 3, 2), Padding { top: 1, left: 0, bottom: 1, right: 1 });
        assert_eq!(Padding::tf_same(28, 28, 5, 2), Padding { top: 1, left: 1, bottom: 2, right: 2 });
        assert_eq!(Padding::tf_same(14, 14, 5, 1), Padding::same(2));
    }

    #[test]
    fn pointwise_matches_candle_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 5, 4, 6), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (7, 5, 1, 1), &dev).unwrap()).unwrap();
        let ours = conv2d(x.as_tensor(), w.as_tensor(), 1, Padding::default(), 1).unwrap();
        let theirs = x.as_tensor().conv2d(w.as_tensor(), 0, 1, 1, 1).unwrap();
        let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4);
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let d = (g1.get(v.as_tensor()).unwrap() - g2.get(v.as_tensor()).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-3);
        }
    }
}
