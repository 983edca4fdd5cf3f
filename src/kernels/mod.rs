//! Convolution kernels: one entry point, [`conv2d`], that routes each shape to
//! the fastest implementation available on the CPU.
//!
//! * depthwise (groups = channels): the direct kernel in [`depthwise`];
//! * every dense (groups = 1) f32 convolution, any kernel, stride and
//!   per-side padding: im2col + one GEMM per image in [`conv`] (a 1×1,
//!   stride-1 unpadded one multiplies the image itself, no column copy), with
//!   its own backward (candle's is a transposed convolution, several times
//!   slower). One GEMM per image with the shared weight beats a batched
//!   matmul, which needs the weight copied once per image. 3×3 stride-1
//!   ones with at least 16 channels each side run their forward pass and
//!   input gradient as Winograd F(2×2, 3×3) in `winograd` instead: 2.25×
//!   fewer multiply-adds;
//! * grouped but not depthwise (and non-f32): candle's own `conv2d`.

/// Defines a function compiled twice: for the baseline target (x86-64 means
/// SSE2) and with AVX2 + FMA enabled, the second picked at run time where
/// the CPU has them. The gemm crate dispatches this way on its own; tlab's
/// kernels (depthwise, BatchNorm, Winograd transforms, epilogues) are plain
/// loops that only vectorise 8-wide when compiled for AVX2. Both versions do
/// the same arithmetic (Rust never fuses a multiply and an add on its own),
/// so results do not depend on the CPU. Functions called from the body are
/// compiled for AVX2 only where they are inlined: mark them
/// `#[inline(always)]`.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::kernels::has_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

/// Whether the CPU runs AVX2 and FMA (cached by the std macro), unless a
/// test asked for the baseline versions.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    !BASELINE_ONLY.load(std::sync::atomic::Ordering::Relaxed)
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// The widest SIMD path the GEMM takes on this CPU in this build:
/// `"avx512"` (needs the `avx512` feature), `"avx2"` (AVX2 + FMA, also the
/// width of tlab's own `multiversion!` kernels) or `"baseline"`. The same
/// seed gives different bits on different paths (the GEMM sums in another
/// order), so reports and benchmarks name it.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "baseline"
}

/// Set by a test to run the baseline versions of [`multiversion!`]
/// functions (both must compute the same bits).
#[cfg(target_arch = "x86_64")]
static BASELINE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps candle's own elementwise thread pool from starting, unless the
/// user set `CANDLE_NUM_THREADS`: call before the first tensor op.
///
/// candle 0.11 runs every elementwise op of 64 K values or more (the
/// gradient sums of its backward pass, residual adds) on a second pool
/// beside rayon's, whose worker spins 25 000 rounds after each op before it
/// sleeps. During training that op comes every few hundred microseconds, so
/// the spinner holds a core that tlab's kernels (on rayon) need: on the
/// 2-core machine the quickstart's unfrozen phase ran 1.3× slower with it
/// (medians of 3 alternations, 9.2 s against 7.1 s). The ops it splits are
/// memory-bound; run on the calling thread they cost less than the core
/// they steal.
pub fn keep_candle_pool_off() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // candle reads the variable once, when the pool first starts;
            // 1 thread means no workers: ops run on the calling thread.
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

pub mod attention;
pub mod batchnorm;
pub mod conv;
pub mod depthwise;
pub mod elementwise;
mod gemm;
pub mod maxpool;
pub mod norm;
#[cfg(test)]
pub(crate) mod testing;
mod winograd;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

use rayon::prelude::*;

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
    pub(crate) fn tf_same(h: usize, w: usize, k: usize, stride: usize) -> Self {
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

/// A frozen layer's per-channel bias and clamp activation, applied by the
/// convolution kernels to each output plane right after computing it, while
/// it is still in cache: a separate pass over a large activation (MobileNetV2's
/// expanded tensors) costs as much memory traffic as the depthwise itself.
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    bias: &'a [f32],
    lo: f32,
    hi: f32,
}

impl Epilogue<'_> {
    /// `clamp(v + bias[channel], lo, hi)`.
    #[inline(always)]
    fn value(&self, channel: usize, v: f32) -> f32 {
        (v + self.bias[channel]).max(self.lo).min(self.hi)
    }

    /// `plane = clamp(plane + bias[channel], lo, hi)`.
    #[inline(always)]
    fn plane(&self, channel: usize, plane: &mut [f32]) {
        for v in plane {
            *v = self.value(channel, *v);
        }
    }

    /// Every plane of one image's output `[C, p]`.
    fn image(&self, out: &mut [f32], p: usize) {
        epilogue_columns(self, out, p, 0, p)
    }

    /// As [`Epilogue::columns`] on an output whose other columns may not be
    /// written yet.
    ///
    /// # Safety
    /// Columns `cols` of every plane of `out` must have been written.
    unsafe fn columns_uninit(&self, out: &mut [MaybeUninit<f32>], p: usize, cols: std::ops::Range<usize>) {
        let mut planes: Vec<&mut [f32]> = out
            .chunks_exact_mut(p.max(1))
            // SAFETY: the caller wrote these columns.
            .map(|plane| unsafe { assume_init(&mut plane[cols.clone()]) })
            .collect();
        epilogue_planes(self, &mut planes);
    }
}

multiversion! {
    /// Plane `c` of `planes` is channel `c`'s.
    fn epilogue_planes(epi: &Epilogue, planes: &mut [&mut [f32]]) {
        for (c, plane) in planes.iter_mut().enumerate() {
            epi.plane(c, plane);
        }
    }
}

multiversion! {
    fn epilogue_columns(epi: &Epilogue, out: &mut [f32], p: usize, from: usize, to: usize) {
        for (c, plane) in out.chunks_exact_mut(p.max(1)).enumerate() {
            epi.plane(c, &mut plane[from..to]);
        }
    }
}

/// The output of a kernel, filled chunk by chunk.
///
/// Kernels write through `&mut [f32]`, which Rust allows only over
/// initialised memory. Zeroing the whole buffer first (`vec![0.0; len]`, a
/// calloc that clears reused memory, or a parallel fill) cost 10–20 % of a
/// MobileNetV2 forward pass (perf, and `tlab bench` on the AVX2 EPYC): a
/// pass over memory before the kernel's own. Here each chunk is cleared by
/// the task that then fills it, just before, while the chunk is in cache;
/// every chunk is visited, so the whole buffer is initialised when it is
/// handed on. Debug builds (the tests) fill with NaN instead of zeros, so
/// an element a kernel forgot to write shows up in every comparison with a
/// reference.
pub(super) struct Output {
    buf: Vec<MaybeUninit<f32>>,
}

impl Output {
    pub(super) fn new(len: usize) -> Self {
        let mut buf = Vec::with_capacity(len);
        buf.resize_with(len, MaybeUninit::uninit);
        Output { buf }
    }

    /// `f(chunk index, chunk)` on every `size`-element chunk, in parallel.
    pub(super) fn par_chunks(self, size: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
        self.par_chunks_init(size, || (), |(), i, chunk| f(i, chunk))
    }

    /// As [`Output::par_chunks`], with per-task scratch from `init`.
    pub(super) fn par_chunks_init<T>(
        mut self,
        size: usize,
        init: impl Fn() -> T + Sync + Send,
        f: impl Fn(&mut T, usize, &mut [f32]) + Sync + Send,
    ) -> Vec<f32> {
        self.buf.par_chunks_mut(size.max(1)).enumerate().for_each_init(init, |scratch, (i, chunk)| {
            f(scratch, i, initialise(chunk));
        });
        self.finish()
    }

    /// `f(index of the first plane, run)` over runs of whole `plane`-sized
    /// planes (about 16 K values each), in parallel, as [`par_plane_runs`].
    pub(super) fn par_plane_runs(self, plane: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
        let per_task = ((1 << 14) / plane.max(1)).max(1);
        self.par_chunks(plane.max(1) * per_task, |t, run| f(t * per_task, run))
    }

    /// `f(plane index, plane)` on every `plane`-sized plane, in parallel
    /// runs of planes, as [`par_planes_mut`].
    pub(super) fn par_planes(self, plane: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
        let plane = plane.max(1);
        self.par_plane_runs(plane, |first, planes| {
            for (j, p) in planes.chunks_exact_mut(plane).enumerate() {
                f(first + j, p);
            }
        })
    }

    /// `f(chunk index, chunk)` on every `size`-element chunk in order, on
    /// this thread (for callers that parallelise inside a chunk).
    pub(super) fn chunks(mut self, size: usize, mut f: impl FnMut(usize, &mut [f32])) -> Vec<f32> {
        for (i, chunk) in self.buf.chunks_mut(size.max(1)).enumerate() {
            f(i, initialise(chunk));
        }
        self.finish()
    }

    /// `f(chunk index, chunk)` on every `size`-element chunk in order, on
    /// this thread, without clearing it first (debug builds fill it with NaN,
    /// so a forgotten element fails every comparison with a reference).
    ///
    /// # Safety
    /// `f` must write every element of every chunk it is given.
    pub(super) unsafe fn chunks_uninit(
        mut self,
        size: usize,
        mut f: impl FnMut(usize, &mut [MaybeUninit<f32>]),
    ) -> Vec<f32> {
        for (i, chunk) in self.buf.chunks_mut(size.max(1)).enumerate() {
            poison(chunk);
            f(i, chunk);
        }
        self.finish()
    }

    /// As [`Output::chunks_uninit`], the chunks in parallel.
    ///
    /// # Safety
    /// `f` must write every element of every chunk it is given.
    pub(super) unsafe fn par_chunks_uninit(
        mut self,
        size: usize,
        f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
    ) -> Vec<f32> {
        self.buf.par_chunks_mut(size.max(1)).enumerate().for_each(|(i, chunk)| {
            poison(chunk);
            f(i, chunk);
        });
        self.finish()
    }

    /// Every chunk was initialised by the loop that ran over all of them.
    fn finish(self) -> Vec<f32> {
        let mut buf = std::mem::ManuallyDrop::new(self.buf);
        let (ptr, len, cap) = (buf.as_mut_ptr(), buf.len(), buf.capacity());
        // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, the allocation
        // is handed over whole (pointer, length, capacity), and each of the
        // `len` elements was written by `initialise` (every chunk is visited
        // by the callers above before they call this).
        unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
    }
}

/// NaN over `chunk` in debug builds (the tests), nothing in release ones.
fn poison(chunk: &mut [MaybeUninit<f32>]) {
    if cfg!(debug_assertions) {
        chunk.iter_mut().for_each(|x| {
            x.write(f32::NAN);
        });
    }
}

/// Views `chunk` as floats.
///
/// # Safety
/// Every element of `chunk` must have been written.
unsafe fn assume_init(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the caller wrote every element; `MaybeUninit<f32>` has the
    // layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(chunk) as *mut [f32]) }
}

/// Clears `chunk` (NaN in debug builds) and views it as initialised floats.
fn initialise(chunk: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    let fill = if cfg!(debug_assertions) { f32::NAN } else { 0.0 };
    for x in chunk.iter_mut() {
        x.write(fill);
    }
    // SAFETY: every element was just written, and `MaybeUninit<f32>` has
    // the layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(chunk) as *mut [f32]) }
}

/// Runs `f(plane index, plane)` over the `plane`-sized planes of `data` in
/// parallel, a task per run of whole planes of about 16 K values: small
/// late-stage planes (9 values for 3×3 at 96 px) would otherwise make a
/// rayon task each.
fn par_planes_mut(data: &mut [f32], plane: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let plane = plane.max(1);
    par_plane_runs(data, plane, |first, planes| {
        for (j, p) in planes.chunks_exact_mut(plane).enumerate() {
            f(first + j, p);
        }
    });
}

/// Runs `f(index of the first plane, run)` over runs of whole `plane`-sized
/// planes of `data` (about 16 K values each), in parallel: for a kernel that
/// walks a run itself, one call per run rather than per plane.
fn par_plane_runs(data: &mut [f32], plane: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let per_task = ((1 << 14) / plane.max(1)).max(1);
    data.par_chunks_mut(plane.max(1) * per_task).enumerate().for_each(|(t, run)| f(t * per_task, run));
}

/// A convolution whose forward pass can apply an [`Epilogue`] as it goes.
trait EpilogueForward: Send + Sync {
    /// The name of the fused op.
    const FUSED_NAME: &'static str;
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        epi: Epilogue,
    ) -> Result<(CpuStorage, Shape)>;
}

/// A frozen convolution with its bias and clamp activation fused in
/// (inputs: x, weight, bias `[Cout]`); no backward.
struct FusedBiasClamp<K> {
    conv: K,
    lo: f32,
    hi: f32,
}

impl<K: EpilogueForward> CustomOp3 for FusedBiasClamp<K> {
    fn name(&self) -> &'static str {
        K::FUSED_NAME
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
        let bias = epilogue_bias(s3, l3, l2.shape().dims()[0])?;
        self.conv.forward(s1, l1, s2, l2, Epilogue { bias, lo: self.lo, hi: self.hi })
    }
}

/// The bias of a fused op: a contiguous f32 vector with one value per output channel.
fn epilogue_bias<'a>(s: &'a CpuStorage, l: &Layout, channels: usize) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == channels => Ok(&data[a..b]),
        _ => candle_core::bail!("conv2d: bias {:?} must be {channels} contiguous values", l.shape()),
    }
}

/// `clamp(conv2d(x, w) + b[c], lo, hi)` for a frozen layer (folded BatchNorm
/// or a conv bias, then ReLU/ReLU6/identity through `lo`, `hi`). With no
/// gradient to track, the depthwise and GEMM kernels apply the bias and clamp
/// to each output as they produce it; otherwise the plain ops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_bias_clamp(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    pad: Padding,
    groups: usize,
    lo: f32,
    hi: f32,
) -> Result<Tensor> {
    let fusable = !(x.track_op() || w.track_op() || b.track_op())
        && [x.dtype(), w.dtype(), b.dtype()].iter().all(|&t| t == DType::F32)
        && b.elem_count() == w.dim(0)?;
    if fusable {
        let b = b.flatten_all()?.contiguous()?;
        match kernel_for(x, w, stride, pad, groups)? {
            Kernel::Depthwise(geo) => return fused(x, w, &b, depthwise::DepthwiseConv(geo), lo, hi),
            Kernel::Gemm(geo) => return fused(x, w, &b, conv::GemmConv(geo), lo, hi),
            Kernel::Candle => {}
        }
    }
    elementwise::bias_clamp(conv2d(x, w, stride, pad, groups)?, b, lo, hi)
}

/// `conv` with the bias and clamp fused in, as one op without a backward.
fn fused<K: EpilogueForward>(x: &Tensor, w: &Tensor, b: &Tensor, conv: K, lo: f32, hi: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, b, &FusedBiasClamp { conv, lo, hi })
}

/// The kernel that runs a convolution.
enum Kernel {
    Depthwise(DwGeometry),
    /// Dense, f32.
    Gemm(ConvGeometry),
    /// Grouped but not depthwise, or not f32.
    Candle,
}

fn kernel_for(x: &Tensor, w: &Tensor, stride: usize, pad: Padding, groups: usize) -> Result<Kernel> {
    let (_, cin, _, _) = x.dims4()?;
    let cout = w.dim(0)?;
    Ok(if groups > 1 && groups == cin && cout == cin {
        Kernel::Depthwise(DwGeometry::new(stride, pad))
    } else if groups == 1 && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        Kernel::Gemm(ConvGeometry { stride, pad })
    } else {
        Kernel::Candle
    })
}

/// 2-D convolution of `x` `[N, Cin, H, W]` with `w` `[Cout, Cin/groups, kh, kw]`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: Padding, groups: usize) -> Result<Tensor> {
    match kernel_for(x, w, stride, pad, groups)? {
        Kernel::Depthwise(geo) => depthwise::depthwise_conv2d(x, w, geo),
        Kernel::Gemm(geo) => conv::conv2d_gemm(x, w, geo),
        Kernel::Candle if pad.is_symmetric() => x.conv2d(w, pad.top, stride, 1, groups),
        Kernel::Candle => {
            let x = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
            x.conv2d(w, 0, stride, 1, groups)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn an_output_is_initialised_whole_even_over_reused_memory() {
        // The allocator hands freed memory back: a buffer left uninitialised
        // (as before) would show these values where a kernel writes nothing,
        // and reading them was undefined behaviour to begin with.
        let fill = if cfg!(debug_assertions) { f32::NAN } else { 0.0 };
        for _ in 0..4 {
            let junk = vec![1.5f32; 1 << 20];
            drop(std::hint::black_box(junk));
            let out = Output::new(1 << 20).par_chunks(1000, |i, c| c[0] = i as f32);
            assert_eq!(out.len(), 1 << 20);
            assert!(out.iter().enumerate().all(|(j, &v)| if j % 1000 == 0 {
                v == (j / 1000) as f32
            } else {
                v.to_bits() == fill.to_bits()
            }));
            let serial = Output::new(10).chunks(4, |i, c| c[c.len() - 1] = i as f32);
            assert_eq!(serial[3], 0.0);
            assert_eq!((serial[7], serial[9]), (1.0, 2.0));
        }
    }

    #[test]
    fn tf_same_padding_puts_the_odd_pixel_after() {
        // A stride-2 3×3 on an even size pads 0 before and 1 after.
        assert_eq!(Padding::tf_same(224, 224, 3, 2), Padding { top: 0, left: 0, bottom: 1, right: 1 });
        assert_eq!(Padding::tf_same(67, 66, 3, 2), Padding { top: 1, left: 0, bottom: 1, right: 1 });
        assert_eq!(Padding::tf_same(28, 28, 5, 2), Padding { top: 1, left: 1, bottom: 2, right: 2 });
        assert_eq!(Padding::tf_same(14, 14, 5, 1), Padding::same(2));
    }

    #[test]
    fn fused_bias_clamp_equals_the_separate_ops() {
        // (n, cin, cout, size, kernel, stride, pad, groups): 3×3 with
        // im2col, 1×1 direct (in one GEMM, and in column blocks of 64, 64
        // and 16), small maps through the grouped GEMM path, depthwise
        // planar and channels-last.
        let cases = [
            (3, 5, 7, 9, 3, 2, Padding::same(1), 1),
            (4, 6, 8, 5, 1, 1, Padding::default(), 1),
            (2, 6, 8, 12, 1, 1, Padding::default(), 1),
            (9, 4, 6, 3, 3, 1, Padding::same(1), 1),
            (3, 6, 6, 11, 3, 1, Padding { top: 0, left: 1, bottom: 1, right: 0 }, 6),
            (3, 32, 32, 4, 3, 1, Padding::same(1), 32),
        ];
        for (n, cin, cout, size, k, stride, pad, groups) in cases {
            let x = crate::kernels::testing::randn(0f32, 1., (n, cin, size, size)).unwrap();
            let w = crate::kernels::testing::randn(0f32, 1., (cout, cin / groups, k, k)).unwrap();
            let b = crate::kernels::testing::randn(0f32, 1., (1, cout, 1, 1)).unwrap();
            for (lo, hi) in [(0.0, 6.0), (f32::NEG_INFINITY, f32::INFINITY)] {
                let fused = conv2d_bias_clamp(&x, &w, &b, stride, pad, groups, lo, hi).unwrap();
                let plain = conv2d(&x, &w, stride, pad, groups).unwrap().broadcast_add(&b).unwrap();
                let plain = plain.clamp(lo, hi).unwrap();
                assert_eq!(fused.dims(), plain.dims());
                let diff = (&fused - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "case {:?}: {diff}", (n, cin, cout, size, k, stride, groups));
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn baseline_and_avx2_versions_compute_the_same_bits() {
        use std::sync::atomic::Ordering;
        let dev = Device::Cpu;
        // Depthwise planar (12×12) and channels-last (4×4), a fused frozen
        // epilogue, training BatchNorm with a clamp: forward and gradients.
        let run = || {
            let mut outs = Vec::new();
            for size in [12, 4] {
                let x = Var::from_tensor(&Tensor::arange(0f32, (2 * 32 * size * size) as f32, &dev).unwrap()).unwrap();
                let x4 = ((x.as_tensor().reshape((2, 32, size, size)).unwrap() * 0.37).unwrap().sin().unwrap() * 2.0)
                    .unwrap();
                let w =
                    Var::from_tensor(&(Tensor::arange(0f32, 32. * 9., &dev).unwrap() * 0.11).unwrap().cos().unwrap())
                        .unwrap();
                let w4 = w.as_tensor().reshape((32, 1, 3, 3)).unwrap();
                let y = conv2d(&x4, &w4, 1, Padding::same(1), 32).unwrap();
                let gamma = Var::from_tensor(&Tensor::ones(32, DType::F32, &dev).unwrap()).unwrap();
                let beta = Var::from_tensor(&Tensor::zeros(32, DType::F32, &dev).unwrap()).unwrap();
                let (z, _, _) =
                    batchnorm::batch_norm_train(&y, gamma.as_tensor(), beta.as_tensor(), 1e-5, (0.0, 6.0)).unwrap();
                let grads = (&z * &z).unwrap().sum_all().unwrap().backward().unwrap();
                outs.push(z.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                for v in [&x, &w, &gamma] {
                    outs.push(grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                let b = Tensor::arange(0f32, 32., &dev).unwrap();
                let frozen = conv2d_bias_clamp(&x4.detach(), &w4.detach(), &b, 1, Padding::same(1), 32, 0.0, 6.0);
                outs.push(frozen.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
            outs
        };
        let fast = run();
        BASELINE_ONLY.store(true, Ordering::Relaxed);
        let baseline = run();
        BASELINE_ONLY.store(false, Ordering::Relaxed);
        assert_eq!(fast.len(), baseline.len());
        for (a, b) in fast.iter().zip(&baseline) {
            let same = a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits());
            assert!(same, "the AVX2 and baseline versions differ");
        }
    }

    #[test]
    fn pointwise_matches_candle_with_gradients() {
        let x = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (3, 5, 4, 6)).unwrap()).unwrap();
        let w = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (7, 5, 1, 1)).unwrap()).unwrap();
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
