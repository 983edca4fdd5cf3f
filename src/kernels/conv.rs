//! Dense (groups = 1) convolution as im2col + GEMM, as a candle custom op
//! with its own backward.
//!
//! candle's CPU `conv2d` lays its column buffer out so that the GEMM result
//! needs a final transpose, and its backward runs a convolution on transposed
//! tensors (weight gradient) and a `conv_transpose2d` (input gradient). Here
//! every pass is one multi-threaded CPU pass over the images of the batch:
//!
//! * forward: `col = im2col(x[n])` `[K = Cin·kh·kw, P = OH·OW]`, then
//!   `y[n] = W[Cout, K] · col` written straight into the NCHW output;
//! * weight gradient: `dW = Σₙ dY[n][Cout, P] · col[n]ᵀ`, the columns recomputed
//!   per image, one accumulator per chunk of images, summed at the end;
//! * input gradient: `dX[n] = col2im(Wᵀ[K, Cout] · dY[n])`.
//!
//! Transposes cost nothing: the `gemm` crate takes row and column strides.
//! The columns are built a block of output rows at a time (about 512 KB of
//! `col`, at least one row), each block consumed by its GEMM while still in
//! cache; the GEMM reads and writes the matching columns of `y[n]` / `dY[n]`
//! in place through their row stride `P`. A batch of at least as many images
//! as threads is split into one contiguous chunk of images per thread, each
//! running single-threaded GEMMs with one reused column buffer; a smaller
//! batch runs its images one after another, each GEMM (and im2col / col2im)
//! multi-threaded.
//!
//! A 1×1, stride-1, unpadded convolution needs no column buffer: the image
//! itself is `col`.
//!
//! Small outputs (`P` below a few hundred pixels, e.g. the last stages of a
//! network at 96 px, `P` = 9..36) make one GEMM per image a poor shape, with
//! per-image overheads and, for the weight gradient, an inner dimension of
//! only `P`. There each thread runs its images in groups of `nb`: the
//! columns of the group side by side `[K, nb·P]` (gathered images when the
//! convolution is direct), one GEMM for the group, its result scattered into
//! the images' NCHW planes (forward; input gradient through col2im), or the
//! group's output gradient gathered `[Cout, nb·P]` (gradients).

use super::gemm::{matmul, matmul_into, Mat};
use super::{winograd, Epilogue, Padding};
use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Stride and per-side padding of a dense convolution (dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub pad: Padding,
}

/// Sizes shared by the three kernels.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    /// Rows of the column buffer: `Cin·kh·kw`.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Columns of the column buffer: output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }
    fn image(&self) -> usize {
        self.cin * self.h * self.w
    }
}

impl ConvGeometry {
    fn out_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let ph = h + self.pad.top + self.pad.bottom;
        let pw = w + self.pad.left + self.pad.right;
        if ph < kh || pw < kw || self.stride == 0 || kh == 0 || kw == 0 {
            return None;
        }
        Some(((ph - kh) / self.stride + 1, (pw - kw) / self.stride + 1))
    }

    /// The column buffer is the image itself (1×1, stride 1, no padding).
    fn is_direct(&self, d: &Dims) -> bool {
        d.kh == 1 && d.kw == 1 && self.stride == 1 && self.pad == Padding::default()
    }

    /// For output row `o` and tap `k`, the input row, if inside the image.
    #[inline]
    fn src_row(&self, o: usize, k: usize, h: usize) -> Option<usize> {
        (o * self.stride + k).checked_sub(self.pad.top).filter(|&i| i < h)
    }

    /// The output columns `[lo, hi)` whose input column for tap `kx` lies
    /// inside a row of width `w`; empty (`lo == hi`) if there are none.
    #[inline]
    fn valid_cols(&self, kx: usize, w: usize, ow: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad.left.saturating_sub(kx).div_ceil(s);
        // ox*s + kx - left <= w-1  ⇔  ox <= (w-1+left-kx)/s
        let hi = match (w + self.pad.left).checked_sub(kx + 1) {
            Some(v) => (v / s + 1).min(ow),
            None => 0,
        };
        (lo.min(hi), hi)
    }
}

/// Fills row `r = (c·kh + ky)·kw + kx` of a column block starting at output
/// row `oy0`: `row[i·OW + ox] = x[c, (oy0 + i)·s + ky − top, ox·s + kx − left]`,
/// zero outside the image.
fn im2col_row(geo: &ConvGeometry, d: &Dims, x: &[f32], r: usize, oy0: usize, row: &mut [f32]) {
    let (c, ky, kx) = (r / (d.kh * d.kw), r / d.kw % d.kh, r % d.kw);
    let plane = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
    let (lo, hi) = geo.valid_cols(kx, d.w, d.ow);
    for (i, orow) in row.chunks_exact_mut(d.ow).enumerate() {
        let Some(iy) = geo.src_row(oy0 + i, ky, d.h) else {
            orow.fill(0.);
            continue;
        };
        orow[..lo].fill(0.);
        orow[hi..].fill(0.);
        if lo == hi {
            continue;
        }
        let irow = &plane[iy * d.w..(iy + 1) * d.w];
        let start = lo * geo.stride + kx - geo.pad.left;
        let s = geo.stride;
        if s == 1 {
            orow[lo..hi].copy_from_slice(&irow[start..start + (hi - lo)]);
        } else {
            // All but the last element in whole strides of the input (so the
            // loop has no bounds checks and vectorises), then the last one.
            let (out, last) = orow[lo..hi].split_at_mut(hi - lo - 1);
            for (o, i) in out.iter_mut().zip(irow[start..].chunks_exact(s)) {
                *o = i[0];
            }
            last[0] = irow[start + (hi - lo - 1) * s];
        }
    }
}

/// Adds the rows of input channel `c` of a column block starting at output
/// row `oy0` back into that channel's plane (the adjoint of [`im2col_row`]):
/// row `r` of the block is `col[r·rs..r·rs + pb]`.
#[allow(clippy::too_many_arguments)]
fn col2im_plane(
    geo: &ConvGeometry,
    d: &Dims,
    col: &[f32],
    rs: usize,
    pb: usize,
    oy0: usize,
    c: usize,
    plane: &mut [f32],
) {
    for ky in 0..d.kh {
        for kx in 0..d.kw {
            let r = (c * d.kh + ky) * d.kw + kx;
            let row = &col[r * rs..r * rs + pb];
            let (lo, hi) = geo.valid_cols(kx, d.w, d.ow);
            if lo == hi {
                continue;
            }
            let start = lo * geo.stride + kx - geo.pad.left;
            for (i, grow) in row.chunks_exact(d.ow).enumerate() {
                let Some(iy) = geo.src_row(oy0 + i, ky, d.h) else { continue };
                let irow = &mut plane[iy * d.w..(iy + 1) * d.w];
                let s = geo.stride;
                if s == 1 {
                    for (i, g) in irow[start..start + (hi - lo)].iter_mut().zip(&grow[lo..hi]) {
                        *i += g;
                    }
                } else {
                    // As in im2col_row: whole strides, then the last element.
                    let (gs, last) = grow[lo..hi].split_at(hi - lo - 1);
                    for (i, g) in irow[start..].chunks_exact_mut(s).zip(gs) {
                        i[0] += g;
                    }
                    irow[start + (hi - lo - 1) * s] += last[0];
                }
            }
        }
    }
}

/// A column block `[K, rows·OW]` of one image from output row `oy0`,
/// single-threaded or over rayon.
fn im2col(geo: &ConvGeometry, d: &Dims, x: &[f32], oy0: usize, col: &mut [f32], parallel: bool) {
    let pb = col.len() / d.k();
    if parallel {
        col.par_chunks_exact_mut(pb).enumerate().for_each(|(r, row)| im2col_row(geo, d, x, r, oy0, row));
    } else {
        for (r, row) in col.chunks_exact_mut(pb).enumerate() {
            im2col_row(geo, d, x, r, oy0, row);
        }
    }
}

/// Adds a column block (from output row `oy0`) into one input-gradient image.
fn col2im(geo: &ConvGeometry, d: &Dims, col: &[f32], oy0: usize, dx: &mut [f32], parallel: bool) {
    let hw = d.h * d.w;
    let pb = col.len() / d.k();
    if parallel {
        dx.par_chunks_exact_mut(hw).enumerate().for_each(|(c, plane)| col2im_plane(geo, d, col, pb, pb, oy0, c, plane));
    } else {
        for (c, plane) in dx.chunks_exact_mut(hw).enumerate() {
            col2im_plane(geo, d, col, pb, pb, oy0, c, plane);
        }
    }
}

/// Bytes of column buffer per GEMM: the im2col block is consumed by the GEMM
/// while it is still in cache. Tests use small blocks, so that their small
/// images still span several, one of them partial.
const COL_BLOCK_BYTES: usize = if cfg!(test) { 2048 } else { 1 << 19 };

/// Output bytes per GEMM of a 1×1 convolution with an epilogue: small
/// enough that the epilogue finds the block in cache. Splitting the columns
/// does not change any output's sum (the GEMM's blocking over K depends on K
/// alone), so the results are the same bits.
const EPILOGUE_BLOCK_BYTES: usize = if cfg!(test) { 1024 } else { 1 << 18 };

/// Columns per GEMM of a direct convolution with `cout` output channels and
/// `p` pixels: whole vector widths, at least 64.
fn epilogue_cols(cout: usize, p: usize) -> usize {
    let cols = EPILOGUE_BLOCK_BYTES / (cout.max(1) * std::mem::size_of::<f32>());
    (cols / 16 * 16).max(64).min(p.max(1))
}

/// Output rows per column block (all of them when the image is its own
/// column buffer).
fn block_rows(geo: &ConvGeometry, d: &Dims) -> usize {
    if geo.is_direct(d) {
        return d.oh;
    }
    let bytes_per_row = d.k() * d.ow * std::mem::size_of::<f32>();
    (COL_BLOCK_BYTES / bytes_per_row.max(1)).clamp(1, d.oh.max(1))
}

/// The output-row blocks `(oy0, rows)` of one image.
fn blocks(d: &Dims, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let oh = d.oh;
    (0..oh).step_by(rows).map(move |oy0| (oy0, rows.min(oh - oy0)))
}

/// Output pixels per image below which a thread's images go through the GEMMs
/// in groups (see [`group_images`]), and the group width in columns aimed at.
/// Tests use a narrower target, so that their small images form several
/// groups per thread, the last one partial.
const GROUP_COLS: usize = if cfg!(test) { 64 } else { 256 };

/// Bytes of the per-thread group buffers (columns `[K, nb·P]` plus the
/// gathered output or output gradient `[Cout, nb·P]`).
const GROUP_BYTES: usize = 2 << 20;

/// Images per GEMM when each thread runs `per` images: with few output
/// pixels `P` a GEMM per image has too few columns to run fast (and the
/// weight gradient's inner dimension is `P`), so `nb` images are laid side
/// by side into one `[K, nb·P]` column matrix, `nb·P` reaching
/// [`GROUP_COLS`] within [`GROUP_BYTES`]. 1: one GEMM per image.
fn group_images(d: &Dims, per: usize) -> usize {
    let p = d.p();
    if p == 0 || p >= GROUP_COLS {
        return 1;
    }
    let fit = GROUP_BYTES / ((d.k() + d.cout) * p * std::mem::size_of::<f32>()).max(1);
    GROUP_COLS.div_ceil(p).min(fit).min(per).max(1)
}

/// Lays the `[rows, p]` blocks of `m` images, `stride` apart from the start
/// of `src`, side by side: `dst[r, i·p + j] = src[i·stride + r·p + j]`.
fn gather(src: &[f32], stride: usize, rows: usize, p: usize, m: usize, dst: &mut [f32]) {
    for (r, drow) in dst[..rows * m * p].chunks_exact_mut(m * p).enumerate() {
        for (i, blk) in drow.chunks_exact_mut(p).enumerate() {
            blk.copy_from_slice(&src[i * stride + r * p..][..p]);
        }
    }
}

/// The inverse of [`gather`]: `dst[i·stride + r·p + j] = src[r, i·p + j]`.
/// [`scatter`] into memory nothing has written yet: `m` images of `rows`
/// planes fill `dst` (`m · stride` values, `stride = rows · p`) whole, which
/// is then handed back as floats.
fn scatter_into<'a>(
    src: &[f32],
    stride: usize,
    rows: usize,
    p: usize,
    m: usize,
    dst: &'a mut [MaybeUninit<f32>],
) -> &'a mut [f32] {
    assert_eq!((stride, dst.len()), (rows * p, m * stride), "conv: scatter must fill its destination");
    for (r, srow) in src[..rows * m * p].chunks_exact(m * p).enumerate() {
        for (i, blk) in srow.chunks_exact(p).enumerate() {
            for (d, &v) in dst[i * stride + r * p..][..p].iter_mut().zip(blk) {
                d.write(v);
            }
        }
    }
    // SAFETY: rows × m blocks of p values at i·stride + r·p, for every r <
    // rows and i < m, cover all m · rows · p elements (asserted above).
    unsafe { super::assume_init(dst) }
}

fn scatter(src: &[f32], stride: usize, rows: usize, p: usize, m: usize, dst: &mut [f32]) {
    for (r, srow) in src[..rows * m * p].chunks_exact(m * p).enumerate() {
        for (i, blk) in srow.chunks_exact(p).enumerate() {
            dst[i * stride + r * p..][..p].copy_from_slice(blk);
        }
    }
}

/// The column matrix `[K, m·P]` of `m` consecutive images starting at `x`
/// (whole images side by side).
fn group_cols(geo: &ConvGeometry, d: &Dims, x: &[f32], m: usize, col: &mut [f32]) {
    let (k, p) = (d.k(), d.p());
    if geo.is_direct(d) {
        return gather(x, d.image(), k, p, m, col);
    }
    for (r, row) in col[..k * m * p].chunks_exact_mut(m * p).enumerate() {
        for (i, blk) in row.chunks_exact_mut(p).enumerate() {
            im2col_row(geo, d, &x[i * d.image()..(i + 1) * d.image()], r, 0, blk);
        }
    }
}

/// How a batch of `n` images is spread over the rayon pool.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// Fewer images than threads: one image at a time, each GEMM (and
    /// im2col / col2im) multi-threaded.
    Serial(Parallelism),
    /// Contiguous chunks of this many images, one chunk per thread, one
    /// single-threaded GEMM per image and one column buffer per chunk.
    Chunks(usize),
}

fn schedule(n: usize) -> Schedule {
    let threads = rayon::current_num_threads();
    if n < threads && threads > 1 {
        Schedule::Serial(Parallelism::Rayon(threads))
    } else {
        Schedule::Chunks(n.div_ceil(threads).max(1))
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("conv2d: {what} must be f32, got {:?}", s.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("conv2d: {what} must be contiguous"),
    }
}

fn dims(geo: &ConvGeometry, input: &Shape, weight: &Shape) -> Result<Dims> {
    let (n, cin, h, w) = input.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    if wcin != cin {
        candle_core::bail!("conv2d: weight {weight:?} does not fit input {input:?} (groups = 1)")
    }
    let Some((oh, ow)) = geo.out_size(h, w, kh, kw) else {
        candle_core::bail!("conv2d: input {h}x{w} is smaller than the {kh}x{kw} kernel (or stride 0)")
    };
    Ok(Dims { n, cin, h, w, cout, kh, kw, oh, ow })
}

/// Dense `conv2d(input, weight)`: input `[N, Cin, H, W]`, weight `[Cout, Cin, kh, kw]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmConv(pub ConvGeometry);

impl CustomOp2 for GemmConv {
    fn name(&self) -> &'static str {
        "gemm-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        forward(self.0, s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        super::input_and_weight_grads(
            input,
            weight,
            grad,
            &GemmConvInputGrad { geo: self.0, input_hw: (input.dim(2)?, input.dim(3)?) },
            &GemmConvWeightGrad { geo: self.0, kernel: (weight.dim(2)?, weight.dim(3)?) },
        )
    }
}

impl super::EpilogueForward for GemmConv {
    const FUSED_NAME: &'static str = "gemm-conv2d-bias-clamp";
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        epi: Epilogue,
    ) -> Result<(CpuStorage, Shape)> {
        forward(self.0, s1, l1, s2, l2, Some(epi))
    }
}

/// The Winograd kernel's view of a 3×3 stride-1 convolution it handles
/// well; `None` for every other (those go through im2col).
fn winograd_shape(geo: &ConvGeometry, d: &Dims) -> Option<winograd::Shape> {
    if d.kh != 3 || d.kw != 3 || geo.stride != 1 {
        return None;
    }
    let s = winograd::Shape { cin: d.cin, h: d.h, w: d.w, cout: d.cout, oh: d.oh, ow: d.ow, pad: geo.pad };
    winograd::applies(&s).then_some(s)
}

/// The input gradient of a 3×3 stride-1 convolution is itself one: `dY`
/// correlated with the kernels turned 180° and transposed (`[Cin, Cout]`),
/// padded `2 − p` on each side so that the output is the input's size.
/// `None` where Winograd does not apply (or a padding exceeds 2).
fn winograd_input_grad_shape(geo: &ConvGeometry, d: &Dims) -> Option<winograd::Shape> {
    let p = geo.pad;
    if d.kh != 3 || d.kw != 3 || geo.stride != 1 || p.top.max(p.left).max(p.bottom).max(p.right) > 2 {
        return None;
    }
    let pad = Padding { top: 2 - p.top, left: 2 - p.left, bottom: 2 - p.bottom, right: 2 - p.right };
    let s = winograd::Shape { cin: d.cout, h: d.oh, w: d.ow, cout: d.cin, oh: d.h, ow: d.w, pad };
    winograd::applies(&s).then_some(s)
}

/// `W'[ci, co, ky, kx] = W[co, ci, kh−1−ky, kw−1−kx]`.
fn flipped_transpose(wt: &[f32], d: &Dims) -> Vec<f32> {
    let taps = d.kh * d.kw;
    let mut out = vec![0f32; wt.len()];
    for (ci, dst) in out.chunks_exact_mut(d.cout * taps).enumerate() {
        for (co, kernel) in dst.chunks_exact_mut(taps).enumerate() {
            let src = &wt[(co * d.cin + ci) * taps..][..taps];
            for (t, v) in kernel.iter_mut().enumerate() {
                *v = src[taps - 1 - t];
            }
        }
    }
    out
}

/// The forward pass; `epi` is applied to each image's output as soon as its
/// GEMMs are done.
fn forward(
    geo: ConvGeometry,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    epi: Option<Epilogue>,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(&geo, l1.shape(), l2.shape())?;
    let x = contiguous(s1, l1, "input")?;
    let wt = contiguous(s2, l2, "weight")?;
    let (k, p) = (d.k(), d.p());
    let direct = geo.is_direct(&d);
    // Every element is written: by the GEMMs (which do not read it) or by Winograd's tile rows.
    let out = super::Output::new(d.n * d.cout * p);
    let sched = schedule(d.n);
    if let (Some(shape), Schedule::Chunks(per)) = (winograd_shape(&geo, &d), sched) {
        let out = winograd::forward(&shape, x, wt, per, epi, out);
        return Ok((CpuStorage::F32(out), Shape::from((d.n, d.cout, d.oh, d.ow))));
    }
    let rows = block_rows(&geo, &d);
    // y[img][:, block] = W · col(block), straight into the NCHW output,
    // which nothing clears first: the GEMMs write every element of it.
    let one = |img: usize, o: &mut [MaybeUninit<f32>], col: &mut Vec<f32>, par: Option<Parallelism>| {
        let xin = &x[img * d.image()..(img + 1) * d.image()];
        let mode = par.unwrap_or(Parallelism::None);
        // The epilogue runs on each block of columns as soon as its GEMM is
        // done, while the block is still in cache (a pass over the whole
        // image afterwards came back from memory: 8% of a MobileNetV2
        // forward pass at 224 px).
        if direct {
            // Only where a thread has the image to itself: with the GEMM
            // split over the threads (one image at a time), each block would
            // add a fork and join.
            let cols = match (&epi, par) {
                (Some(_), None) => epilogue_cols(d.cout, p),
                _ => p,
            };
            for c0 in (0..p).step_by(cols) {
                let nb = cols.min(p - c0);
                let rhs = Mat { data: &xin[c0..], rs: p, cs: 1 };
                matmul_into(&mut o[c0..], p, d.cout, nb, k, Mat::rows(wt, k), rhs, mode);
                if let Some(epi) = &epi {
                    // SAFETY: the GEMM just wrote these columns of every plane.
                    unsafe { epi.columns_uninit(o, p, c0..c0 + nb) };
                }
            }
        } else {
            for (oy0, nrows) in blocks(&d, rows) {
                let pb = nrows * d.ow;
                col.resize(k * rows * d.ow, 0.);
                let col = &mut col[..k * pb];
                im2col(&geo, &d, xin, oy0, col, par.is_some());
                let (lhs, rhs) = (Mat::rows(wt, k), Mat::rows(col, pb));
                matmul_into(&mut o[oy0 * d.ow..], p, d.cout, pb, k, lhs, rhs, mode);
                if let Some(epi) = &epi {
                    // SAFETY: the GEMM just wrote these columns of every plane.
                    unsafe { epi.columns_uninit(o, p, oy0 * d.ow..oy0 * d.ow + pb) };
                }
            }
        }
    };
    let per_image = d.cout * p;
    let out = if per_image == 0 {
        // Nothing to compute (and no zero-sized chunks to split into).
        out.chunks(1, |_, _| {})
    } else {
        match sched {
            // SAFETY: `one` writes every column block of the image (`blocks`
            // and the direct path's steps cover 0..p).
            Schedule::Serial(par) => unsafe {
                let mut col = Vec::new();
                out.chunks_uninit(per_image, |img, o| one(img, o, &mut col, Some(par)))
            },
            // SAFETY: each image of the chunk is written by `one`, or by
            // `scatter_into` from a GEMM over the whole group.
            Schedule::Chunks(per) => unsafe {
                let nb = group_images(&d, per);
                out.par_chunks_uninit(per * per_image, |c, chunk| {
                    let mut col = Vec::new();
                    if nb == 1 {
                        for (j, o) in chunk.chunks_exact_mut(per_image).enumerate() {
                            one(c * per + j, o, &mut col, None);
                        }
                        return;
                    }
                    // Y[:, group] = W · col(group), then each image's
                    // columns copied into its NCHW output.
                    let mut y = Vec::new();
                    for (j, o) in chunk.chunks_mut(nb * per_image).enumerate() {
                        let (img, m) = (c * per + j * nb, o.len() / per_image);
                        let cols = m * p;
                        col.resize(k * cols, 0.);
                        y.resize(d.cout * cols, 0.);
                        group_cols(&geo, &d, &x[img * d.image()..], m, &mut col);
                        let none = Parallelism::None;
                        matmul(&mut y, cols, d.cout, cols, k, Mat::rows(wt, k), Mat::rows(&col, cols), false, none);
                        let o = scatter_into(&y, per_image, d.cout, p, m, o);
                        if let Some(epi) = &epi {
                            o.chunks_exact_mut(per_image).for_each(|img| epi.image(img, p));
                        }
                    }
                })
            },
        }
    };
    Ok((CpuStorage::F32(out), Shape::from((d.n, d.cout, d.oh, d.ow))))
}

/// Gradient with respect to the input: `dX[n] = col2im(Wᵀ · dY[n])`.
#[derive(Debug, Clone, Copy)]
struct GemmConvInputGrad {
    geo: ConvGeometry,
    input_hw: (usize, usize),
}

impl CustomOp2 for GemmConvInputGrad {
    fn name(&self) -> &'static str {
        "gemm-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.geo;
        let (n, cout, goh, gow) = l1.shape().dims4()?;
        let (_, cin, _, _) = l2.shape().dims4()?;
        let (h, w) = self.input_hw;
        let d = dims(&geo, &Shape::from((n, cin, h, w)), l2.shape())?;
        if d.cout != cout || (d.oh, d.ow) != (goh, gow) {
            candle_core::bail!("conv2d input grad: gradient {:?} does not fit weight {:?}", l1.shape(), l2.shape())
        }
        let g = contiguous(s1, l1, "gradient")?;
        let wt = contiguous(s2, l2, "weight")?;
        let (k, p) = (d.k(), d.p());
        let direct = geo.is_direct(&d);
        let sched = schedule(n);
        if let (Some(shape), Schedule::Chunks(per)) = (winograd_input_grad_shape(&geo, &d), sched) {
            let out = super::Output::new(n * d.image());
            let out = winograd::forward(&shape, g, &flipped_transpose(wt, &d), per, None, out);
            return Ok((CpuStorage::F32(out), Shape::from((n, cin, h, w))));
        }
        // Zeroed: col2im adds into it.
        let mut out = vec![0f32; n * d.image()];
        // Wᵀ: [K, Cout] over the row-major [Cout, K] weight.
        let wt_t = Mat::transposed(wt, k);
        let rows = block_rows(&geo, &d);
        // col(block) = Wᵀ · dY[img][:, block], then scattered back into dX[img].
        let one = |img: usize, dx: &mut [f32], col: &mut Vec<f32>, par: Option<Parallelism>| {
            let gy = &g[img * cout * p..(img + 1) * cout * p];
            let mode = par.unwrap_or(Parallelism::None);
            if direct {
                return matmul(dx, p, k, p, cout, wt_t, Mat::rows(gy, p), false, mode);
            }
            for (oy0, nrows) in blocks(&d, rows) {
                let pb = nrows * d.ow;
                col.resize(k * rows * d.ow, 0.);
                let col = &mut col[..k * pb];
                let gy = Mat { data: &gy[oy0 * d.ow..], rs: p, cs: 1 };
                matmul(col, pb, k, pb, cout, wt_t, gy, false, mode);
                col2im(&geo, &d, col, oy0, dx, par.is_some());
            }
        };
        if out.is_empty() {
            // Nothing to compute (and no zero-sized chunks to split into).
        } else {
            let per_image = d.image();
            match sched {
                Schedule::Serial(par) => {
                    let mut col = Vec::new();
                    for (img, dx) in out.chunks_exact_mut(per_image).enumerate() {
                        one(img, dx, &mut col, Some(par));
                    }
                }
                Schedule::Chunks(per) => {
                    let nb = group_images(&d, per);
                    out.par_chunks_mut(per * per_image).enumerate().for_each(|(c, chunk)| {
                        let mut col = Vec::new();
                        if nb == 1 {
                            for (j, dx) in chunk.chunks_exact_mut(per_image).enumerate() {
                                one(c * per + j, dx, &mut col, None);
                            }
                            return;
                        }
                        // col(group) = Wᵀ · dY[:, group], then each image's
                        // columns scattered back into its dX.
                        let mut gy = Vec::new();
                        for (j, dx) in chunk.chunks_mut(nb * per_image).enumerate() {
                            let (img, m) = (c * per + j * nb, dx.len() / per_image);
                            let cols = m * p;
                            gy.resize(cout * cols, 0.);
                            gather(&g[img * cout * p..], cout * p, cout, p, m, &mut gy);
                            col.resize(k * cols, 0.);
                            let none = Parallelism::None;
                            matmul(&mut col, cols, k, cols, cout, wt_t, Mat::rows(&gy, cols), false, none);
                            if direct {
                                // The columns are the images themselves.
                                scatter(&col, per_image, k, p, m, dx);
                                continue;
                            }
                            for (i, dxi) in dx.chunks_exact_mut(per_image).enumerate() {
                                for (ch, plane) in dxi.chunks_exact_mut(h * w).enumerate() {
                                    col2im_plane(&geo, &d, &col[i * p..], cols, p, 0, ch, plane);
                                }
                            }
                        }
                    })
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, cin, h, w))))
    }
}

/// Gradient with respect to the weight: `dW = Σₙ dY[n] · im2col(x[n])ᵀ`.
#[derive(Debug, Clone, Copy)]
struct GemmConvWeightGrad {
    geo: ConvGeometry,
    kernel: (usize, usize),
}

impl CustomOp2 for GemmConvWeightGrad {
    fn name(&self) -> &'static str {
        "gemm-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.geo;
        let (n, cin, _, _) = l1.shape().dims4()?;
        let (gn, cout, goh, gow) = l2.shape().dims4()?;
        let (kh, kw) = self.kernel;
        let d = dims(&geo, l1.shape(), &Shape::from((cout, cin, kh, kw)))?;
        if gn != n || (d.oh, d.ow) != (goh, gow) {
            candle_core::bail!("conv2d weight grad: gradient {:?} does not fit input {:?}", l2.shape(), l1.shape())
        }
        let x = contiguous(s1, l1, "input")?;
        let g = contiguous(s2, l2, "gradient")?;
        let (k, p) = (d.k(), d.p());
        let direct = geo.is_direct(&d);
        // acc += dY[img][:, block] [Cout, Pb] · col(block)ᵀ [Pb, K]
        let rows = block_rows(&geo, &d);
        let add = |img: usize, acc: &mut [f32], col: &mut Vec<f32>, par: Option<Parallelism>| {
            let xin = &x[img * d.image()..(img + 1) * d.image()];
            let gy = &g[img * cout * p..(img + 1) * cout * p];
            let mode = par.unwrap_or(Parallelism::None);
            if direct {
                return matmul(acc, k, cout, k, p, Mat::rows(gy, p), Mat::transposed(xin, p), true, mode);
            }
            for (oy0, nrows) in blocks(&d, rows) {
                let pb = nrows * d.ow;
                col.resize(k * rows * d.ow, 0.);
                let col = &mut col[..k * pb];
                im2col(&geo, &d, xin, oy0, col, par.is_some());
                let gy = Mat { data: &gy[oy0 * d.ow..], rs: p, cs: 1 };
                matmul(acc, k, cout, k, pb, gy, Mat::transposed(col, pb), true, mode);
            }
        };
        let out = match schedule(n) {
            Schedule::Serial(par) => {
                let mut acc = vec![0f32; cout * k];
                let mut col = Vec::new();
                for img in 0..n {
                    add(img, &mut acc, &mut col, Some(par));
                }
                acc
            }
            // One accumulator per chunk, summed at the end.
            Schedule::Chunks(per) => (0..n.div_ceil(per))
                .into_par_iter()
                .map(|c| {
                    let mut acc = vec![0f32; cout * k];
                    let mut col = Vec::new();
                    let nb = group_images(&d, per);
                    let end = ((c + 1) * per).min(n);
                    if nb == 1 {
                        for img in c * per..end {
                            add(img, &mut acc, &mut col, None);
                        }
                        return acc;
                    }
                    // acc += dY[:, group] [Cout, nb·P] · col(group)ᵀ [nb·P, K]
                    let mut gy = Vec::new();
                    for img in (c * per..end).step_by(nb) {
                        let m = nb.min(end - img);
                        let cols = m * p;
                        col.resize(k * cols, 0.);
                        gy.resize(cout * cols, 0.);
                        group_cols(&geo, &d, &x[img * d.image()..], m, &mut col);
                        gather(&g[img * cout * p..], cout * p, cout, p, m, &mut gy);
                        let (lhs, rhs) = (Mat::rows(&gy, cols), Mat::transposed(&col, cols));
                        matmul(&mut acc, k, cout, k, cols, lhs, rhs, true, Parallelism::None);
                    }
                    acc
                })
                .reduce_with(|mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                })
                .unwrap_or_else(|| vec![0f32; cout * k]),
        };
        Ok((CpuStorage::F32(out), Shape::from((cout, cin, kh, kw))))
    }
}

/// Dense convolution of `x` `[N, Cin, H, W]` with `weight` `[Cout, Cin, kh, kw]`
/// (f32, groups = 1, dilation 1), per-side zero padding.
pub fn conv2d_gemm(x: &Tensor, weight: &Tensor, geo: ConvGeometry) -> Result<Tensor> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        candle_core::bail!("conv2d: the GEMM kernel takes f32, got {:?} and {:?}", x.dtype(), weight.dtype())
    }
    dims(&geo, x.shape(), weight.shape())?;
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    if x.track_op() || weight.track_op() {
        x.apply_op2(&weight, GemmConv(geo))
    } else {
        x.apply_op2_no_bwd(&weight, &GemmConv(geo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// candle's own convolution, padding explicitly (it only pads
    /// symmetrically) and cropping the rows and columns no output reads:
    /// candle's conv2d backward takes the output padding of its transposed
    /// convolution from the height alone, so a leftover column that the rows
    /// don't share breaks its input gradient (a shape error).
    fn reference(x: &Tensor, w: &Tensor, geo: ConvGeometry) -> Tensor {
        let (p, s) = (geo.pad, geo.stride);
        let (_, _, kh, kw) = w.dims4().unwrap();
        let x = x.pad_with_zeros(2, p.top, p.bottom).unwrap().pad_with_zeros(3, p.left, p.right).unwrap();
        let (_, _, ph, pw) = x.dims4().unwrap();
        let used = |len: usize, k: usize| (len - k) / s * s + k;
        let x = x.narrow(2, 0, used(ph, kh)).unwrap().narrow(3, 0, used(pw, kw)).unwrap();
        x.conv2d(w, 0, s, 1, 1).unwrap()
    }

    fn max_abs(a: &Tensor) -> f32 {
        a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Largest difference relative to the reference's largest magnitude.
    fn rel_diff(ours: &Tensor, theirs: &Tensor) -> f32 {
        assert_eq!(ours.dims(), theirs.dims());
        max_abs(&(ours - theirs).unwrap()) / max_abs(theirs).max(1e-6)
    }

    #[allow(clippy::too_many_arguments)]
    fn check(n: usize, cin: usize, cout: usize, h: usize, w: usize, kh: usize, kw: usize, stride: usize, pad: Padding) {
        let what = format!("n{n} {cin}->{cout} {h}x{w} k{kh}x{kw} s{stride} {pad:?}");
        let x = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (n, cin, h, w)).unwrap()).unwrap();
        let wt = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (cout, cin, kh, kw)).unwrap()).unwrap();
        let geo = ConvGeometry { stride, pad };
        let ours = conv2d_gemm(x.as_tensor(), wt.as_tensor(), geo).unwrap();
        let theirs = reference(x.as_tensor(), wt.as_tensor(), geo);
        assert!(max_abs(&theirs) > 0.1, "{what}: degenerate reference");
        let d = rel_diff(&ours, &theirs);
        assert!(d < 1e-4, "{what}: forward differs by {d}");

        // The same upstream gradient through both: loss = sum(y * r).
        let r = crate::kernels::testing::randn(0f32, 1., ours.dims()).unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (v, name) in [(&x, "x"), (&wt, "w")] {
            let a = g1.get(v.as_tensor()).expect("our gradient");
            let b = g2.get(v.as_tensor()).expect("candle's gradient");
            let d = rel_diff(a, b);
            assert!(d < 1e-3, "{what}: gradient of {name} differs by {d}");
        }
    }

    #[test]
    fn matches_candle_forward_and_gradients() {
        let p = Padding::same;
        // 3×3 stride 1 and 2, padding 1.
        check(2, 3, 5, 9, 9, 3, 3, 1, p(1));
        check(3, 4, 6, 10, 8, 3, 3, 2, p(1));
        // 7×7 stride 2 padding 3 (ResNet stem), odd size.
        check(2, 3, 8, 23, 23, 7, 7, 2, p(3));
        // 1×1 stride 2 (ResNet downsample) and 1×1 with padding.
        check(2, 6, 4, 9, 10, 1, 1, 2, p(0));
        check(1, 3, 2, 5, 4, 1, 1, 1, p(1));
        // 5×5 with TF SAME: asymmetric at stride 2 on an even size.
        check(2, 3, 4, 12, 14, 5, 5, 2, Padding::tf_same(12, 14, 5, 2));
        check(1, 2, 3, 11, 11, 5, 5, 1, Padding::tf_same(11, 11, 5, 1));
        // Non-square kernels, unpadded and padded per side, single image.
        check(1, 4, 3, 7, 12, 3, 5, 1, p(0));
        check(1, 2, 5, 8, 9, 1, 3, 2, Padding { top: 0, left: 1, bottom: 2, right: 0 });
        // Stride 3, more padding than kernel overhang, one output column.
        check(2, 2, 3, 10, 3, 3, 3, 3, Padding { top: 2, left: 0, bottom: 1, right: 0 });
        // Kernel wider than the unpadded input.
        check(2, 2, 2, 1, 1, 7, 7, 1, p(3));
    }

    #[test]
    fn winograd_3x3_matches_candle() {
        // ≥ 16 channels each side and ≥ as many images as threads: the
        // Winograd forward and input gradient (the weight gradient stays on
        // im2col). Odd output sizes (partial tiles), per-side and no padding,
        // tile blocks spanning images, the last block partial, a single tile
        // per image.
        let threads = rayon::current_num_threads();
        let n = threads + 1;
        check(n, 16, 24, 7, 6, 3, 3, 1, Padding::same(1));
        check(n, 20, 16, 5, 9, 3, 3, 1, Padding { top: 0, left: 1, bottom: 2, right: 1 });
        check(n, 16, 17, 4, 4, 3, 3, 1, Padding::default());
        check(4 * threads + 1, 32, 16, 3, 3, 3, 3, 1, Padding::same(1));
        check(2 * threads, 16, 16, 17, 15, 3, 3, 1, Padding::same(1));
    }

    #[test]
    fn batch_smaller_and_larger_than_the_pool() {
        // Both schedules (images in parallel; one image at a time with a
        // multi-threaded GEMM) against candle, whatever the thread count is;
        // a large batch gives each rayon task several images to accumulate.
        let threads = rayon::current_num_threads();
        for n in [1, threads.max(2) - 1, threads + 1, 4 * threads + 3] {
            check(n, 5, 7, 13, 11, 3, 3, 1, Padding::same(1));
        }
    }

    #[test]
    fn small_images_go_through_the_gemm_in_groups() {
        // Few output pixels: several images per GEMM (forward, and both
        // gradients), groups that don't divide a thread's images, one image.
        let threads = rayon::current_num_threads();
        let p = Padding::same;
        let shapes: [(usize, usize, usize, usize, usize, Padding); 6] = [
            // cin, cout, size, k, stride, pad
            (5, 7, 5, 3, 1, p(1)),
            (4, 6, 8, 3, 2, p(1)),
            (6, 4, 3, 3, 1, p(1)),
            (3, 5, 7, 1, 1, p(0)),
            (4, 3, 6, 1, 2, p(0)),
            (3, 4, 6, 5, 2, Padding::tf_same(6, 6, 5, 2)),
        ];
        for (cin, cout, size, k, stride, pad) in shapes {
            let geo = ConvGeometry { stride, pad };
            let (oh, ow) = geo.out_size(size, size, k, k).unwrap();
            let d = Dims { n: 0, cin, h: size, w: size, cout, kh: k, kw: k, oh, ow };
            assert!(group_images(&d, 16) > 1, "{cin}->{cout} {size} k{k} s{stride}: not grouped");
            for n in [1, 2, threads + 1, 4 * threads + 3, 8 * threads + 5] {
                check(n, cin, cout, size, size, k, k, stride, pad);
            }
        }
    }

    #[test]
    fn grouping_is_deterministic() {
        let x = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (11, 6, 4, 4)).unwrap()).unwrap();
        let w = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (5, 6, 3, 3)).unwrap()).unwrap();
        let geo = ConvGeometry { stride: 1, pad: Padding::same(1) };
        let run = || {
            let y = conv2d_gemm(x.as_tensor(), w.as_tensor(), geo).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&y), flat(g.get(x.as_tensor()).unwrap()), flat(g.get(w.as_tensor()).unwrap()))
        };
        let first = run();
        for _ in 0..3 {
            assert!(run() == first, "results differ between runs");
        }
    }

    #[test]
    fn only_the_weight_gradient_when_the_input_is_frozen() {
        let x = crate::kernels::testing::randn(0f32, 1., (2, 3, 6, 6)).unwrap();
        let w = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (4, 3, 3, 3)).unwrap()).unwrap();
        let geo = ConvGeometry { stride: 1, pad: Padding::same(1) };
        let y = conv2d_gemm(&x, w.as_tensor(), geo).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let ours = grads.get(w.as_tensor()).unwrap();
        let theirs = reference(&x, w.as_tensor(), geo).sum_all().unwrap().backward().unwrap();
        assert!(rel_diff(ours, theirs.get(w.as_tensor()).unwrap()) < 1e-4);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let dev = Device::Cpu;
        let geo = ConvGeometry { stride: 1, pad: Padding::same(1) };
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev).unwrap();
        assert!(conv2d_gemm(&x, &w, geo).is_ok());
        // Wrong dtype, on either side.
        assert!(conv2d_gemm(&x.to_dtype(DType::F64).unwrap(), &w, geo).is_err());
        assert!(conv2d_gemm(&x, &w.to_dtype(DType::F16).unwrap(), geo).is_err());
        // Channel mismatch.
        let w2 = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
        assert!(conv2d_gemm(&x, &w2, geo).is_err());
        // Kernel larger than the padded input, and stride 0.
        let w3 = Tensor::zeros((4, 3, 9, 9), DType::F32, &dev).unwrap();
        assert!(conv2d_gemm(&x, &w3, geo).is_err());
        assert!(conv2d_gemm(&x, &w, ConvGeometry { stride: 0, pad: Padding::default() }).is_err());
        // The op itself, applied directly, refuses a non-f32 input too.
        let xf64 = x.to_dtype(DType::F64).unwrap();
        assert!(xf64.apply_op2_no_bwd(&w.to_dtype(DType::F64).unwrap(), &GemmConv(geo)).is_err());
    }
}
