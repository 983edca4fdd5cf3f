//! Direct depthwise convolution (groups = channels) as a candle custom op.
//!
//! candle runs a grouped convolution as one full convolution per group, so a
//! depthwise 3×3 over 960 channels becomes 960 tiny im2col + GEMM calls. Here
//! each (image, channel) plane is one independent task. The forward pass
//! reads the plane from a zero-padded copy split into stride phases, so every
//! tap of a chunk of output columns is one multiply-add over contiguous
//! memory, summed in registers and stored once. Forward,
//! input gradient and weight gradient are all direct, and parallel over planes
//! (forward, input gradient) or channels (weight gradient), so no two threads
//! ever write the same element.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::Epilogue;
use rayon::prelude::*;

/// Geometry of a depthwise convolution. Padding is given per side because TF
/// "SAME" padding (EfficientNet-Lite) is asymmetric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwGeometry {
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub pad_bottom: usize,
    pub pad_right: usize,
}

/// Sizes shared by the three kernels.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl DwGeometry {
    pub fn new(stride: usize, pad: super::Padding) -> Self {
        DwGeometry { stride, pad_top: pad.top, pad_left: pad.left, pad_bottom: pad.bottom, pad_right: pad.right }
    }

    fn out_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let ph = h + self.pad_top + self.pad_bottom;
        let pw = w + self.pad_left + self.pad_right;
        if ph < kh || pw < kw || self.stride == 0 {
            return None;
        }
        Some(((ph - kh) / self.stride + 1, (pw - kw) / self.stride + 1))
    }

    /// For output index `o` and tap `k`, the input index, if inside the image.
    #[inline]
    fn src(&self, o: usize, k: usize, pad: usize, len: usize) -> Option<usize> {
        (o * self.stride + k).checked_sub(pad).filter(|&i| i < len)
    }

    /// The output columns `[lo, hi)` whose input column for tap `kx` is inside the row.
    #[inline]
    fn valid_cols(&self, kx: usize, w: usize, ow: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.pad_left.saturating_sub(kx).div_ceil(s);
        // ox*s + kx - pad_left <= w-1  ⇔  ox <= (w-1+pad_left-kx)/s
        let hi = match (w + self.pad_left).checked_sub(kx + 1) {
            Some(v) => (v / s + 1).min(ow),
            None => 0,
        };
        (lo.min(hi), hi)
    }
}

/// Per-call tables, so the inner loops do no index arithmetic: for each
/// kernel column `kx` the valid output columns `[lo, hi)` and the input column
/// of `lo`; for each `(oy, ky)` the input row, if inside the image.
struct Taps {
    cols: Vec<(usize, usize, usize)>,
    rows: Vec<Option<usize>>,
    kh: usize,
}

impl Taps {
    fn new(geo: &DwGeometry, h: usize, w: usize, oh: usize, ow: usize, kh: usize, kw: usize) -> Taps {
        let cols = (0..kw)
            .map(|kx| {
                let (lo, hi) = geo.valid_cols(kx, w, ow);
                // Only used when lo < hi, where valid_cols guarantees it is in range.
                (lo, hi, (lo * geo.stride + kx).saturating_sub(geo.pad_left))
            })
            .collect();
        let rows = (0..oh).flat_map(|oy| (0..kh).map(move |ky| geo.src(oy, ky, geo.pad_top, h))).collect();
        Taps { cols, rows, kh }
    }

    #[inline]
    fn row(&self, oy: usize, ky: usize) -> Option<usize> {
        self.rows[oy * self.kh + ky]
    }
}

/// Small maps (late blocks, small images) have rows of a few pixels, too
/// short to vectorise along; many channels then make channels-last faster.
fn channels_last_pays(d: &Dims) -> bool {
    d.oh * d.ow <= 64 && d.c >= 16
}

/// `[C, P]` planes → `[P, C]` rows.
#[inline(always)]
fn to_channels_last(planes: &[f32], c: usize, p: usize, out: &mut [f32]) {
    for ch in 0..c {
        for (i, &v) in planes[ch * p..(ch + 1) * p].iter().enumerate() {
            out[i * c + ch] = v;
        }
    }
}

/// `[P, C]` rows → `[C, P]` planes.
#[inline(always)]
fn to_planes(rows: &[f32], c: usize, p: usize, out: &mut [f32]) {
    for ch in 0..c {
        for (i, dst) in out[ch * p..(ch + 1) * p].iter_mut().enumerate() {
            *dst = rows[i * c + ch];
        }
    }
}

/// Weights `[C, kh·kw]` as `[kh·kw, C]` (each channel's taps are a "plane").
fn taps_by_channel(k: &[f32], c: usize, taps: usize) -> Vec<f32> {
    let mut kt = vec![0f32; taps * c];
    to_channels_last(k, c, taps, &mut kt);
    kt
}

/// Calls `f(output pixel, input pixel, tap)` for every valid tap, in a fixed order.
#[inline(always)]
fn for_each_tap(geo: &DwGeometry, d: &Dims, taps: &Taps, mut f: impl FnMut(usize, usize, usize)) {
    for oy in 0..d.oh {
        for ox in 0..d.ow {
            for ky in 0..d.kh {
                let Some(iy) = taps.row(oy, ky) else { continue };
                for kx in 0..d.kw {
                    let Some(ix) = geo.src(ox, kx, geo.pad_left, d.w) else { continue };
                    f(oy * d.ow + ox, iy * d.w + ix, ky * d.kw + kx);
                }
            }
        }
    }
}

/// Which way [`channels_last`] runs the taps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `y[op] += x[ip] · w[t]`: the forward pass.
    Forward,
    /// `dx[ip] += dy[op] · w[t]`: the input gradient.
    InputGrad,
}

/// For each destination pixel (the output pixel in the forward pass, the
/// input pixel in the input gradient), the `(source pixel, tap)` pairs that
/// reach it, in [`for_each_tap`]'s order; one table serves every image.
struct Gathers {
    /// `pairs[start[p]..start[p + 1]]` reach destination pixel `p`.
    start: Vec<usize>,
    pairs: Vec<(usize, usize)>,
}

impl Gathers {
    fn new(geo: &DwGeometry, d: &Dims, taps: &Taps, dir: Direction) -> Gathers {
        let dst_p = if dir == Direction::Forward { d.oh * d.ow } else { d.h * d.w };
        let mut lists = vec![Vec::new(); dst_p];
        for_each_tap(geo, d, taps, |op, ip, t| match dir {
            Direction::Forward => lists[op].push((ip, t)),
            Direction::InputGrad => lists[ip].push((op, t)),
        });
        let mut start = vec![0];
        start.extend(lists.iter().scan(0, |n, l| {
            *n += l.len();
            Some(*n)
        }));
        Gathers { start, pairs: lists.concat() }
    }
}

/// The forward pass or the input gradient in channels-last order, per image:
/// transpose the source (`x`, or `dy`) to `[pixels, C]`, sum the taps that
/// reach each destination pixel over chunks of contiguous channels in
/// registers, transpose the result back to planes; `epi` is applied to each
/// finished image.
fn channels_last(
    geo: &DwGeometry,
    d: &Dims,
    taps: &Taps,
    src: &[f32],
    k: &[f32],
    dir: Direction,
    epi: Option<Epilogue>,
) -> Vec<f32> {
    let (input, output) = (d.h * d.w, d.oh * d.ow);
    let (src_p, dst_p) = if dir == Direction::Forward { (input, output) } else { (output, input) };
    let c = d.c;
    let kt = taps_by_channel(k, c, d.kh * d.kw);
    let gathers = Gathers::new(geo, d, taps, dir);
    // Every element is written: each image's planes by the transpose back.
    super::Output::new(d.n * c * dst_p).par_chunks_init(
        c * dst_p,
        || (vec![0f32; src_p * c], vec![0f32; dst_p * c]),
        |(st, acc), img, o| {
            image_channels_last(&gathers, c, &src[img * c * src_p..(img + 1) * c * src_p], &kt, st, acc, o);
            if let Some(epi) = &epi {
                epi.image(o, dst_p);
            }
        },
    )
}

multiversion! {
    /// One image of [`channels_last`], from planes `src` to planes `o`
    /// through the channels-last scratch `st` and `acc`: each chunk of
    /// channels of a destination pixel sums its taps in registers and is
    /// stored once.
    fn image_channels_last(
        g: &Gathers,
        c: usize,
        src: &[f32],
        kt: &[f32],
        st: &mut [f32],
        acc: &mut [f32],
        o: &mut [f32],
    ) {
        to_channels_last(src, c, src.len() / c, st);
        for (dp, row) in acc.chunks_exact_mut(c).enumerate() {
            let pairs = &g.pairs[g.start[dp]..g.start[dp + 1]];
            let whole = c - c % CHUNK;
            for ch in (0..whole).step_by(CHUNK) {
                let mut a = [0f32; CHUNK];
                for &(sp, t) in pairs {
                    let (s, w) = (&st[sp * c + ch..sp * c + ch + CHUNK], &kt[t * c + ch..t * c + ch + CHUNK]);
                    for i in 0..CHUNK {
                        a[i] = s[i].mul_add(w[i], a[i]);
                    }
                }
                row[ch..ch + CHUNK].copy_from_slice(&a);
            }
            for (ch, r) in row.iter_mut().enumerate().skip(whole) {
                *r = pairs.iter().fold(0.0, |a: f32, &(sp, t)| st[sp * c + ch].mul_add(kt[t * c + ch], a));
            }
        }
        to_planes(acc, c, o.len() / c, o);
    }
}

/// `Σ a[i]·b[i]` in `DOT_LANES` independent partial sums: one running sum
/// is a chain of dependent adds the compiler may not reorder (latency-bound,
/// scalar); lanes vectorise, in a fixed order.
const DOT_LANES: usize = 8;

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; DOT_LANES];
    let (mut ca, mut cb) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(x).zip(y) {
            *s += u * v;
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(u, v)| u * v).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ a[i]·b[i·stride]`.
#[inline]
fn dot_strided(a: &[f32], b: &[f32], stride: usize) -> f32 {
    let mut acc = [0f32; DOT_LANES];
    for (i, &u) in a.iter().enumerate() {
        acc[i % DOT_LANES] += u * b[i * stride];
    }
    acc.iter().sum()
}

/// The weight gradient in channels-last order, for small maps: per block of
/// channels, each image's input and output gradient transposed to
/// `[pixels, channels]`, every tap accumulated over contiguous channels.
/// Parallel over channel blocks (each owns its slice of `dW`, images summed
/// in order), so the result does not depend on the thread count.
fn weight_grad_channels_last(geo: &DwGeometry, d: &Dims, taps: &Taps, x: &[f32], g: &[f32], out: &mut [f32]) {
    const BLOCK: usize = 32;
    let nt = d.kh * d.kw;
    out.par_chunks_mut(BLOCK * nt).enumerate().for_each(|(b, dw)| weight_grad_block(geo, d, taps, x, g, b * BLOCK, dw));
}

multiversion! {
    /// The channels `c0..` (as many as `dw` holds) of [`weight_grad_channels_last`].
    fn weight_grad_block(geo: &DwGeometry, d: &Dims, taps: &Taps, x: &[f32], g: &[f32], c0: usize, dw: &mut [f32]) {
        let (c, hw, ohw, nt) = (d.c, d.h * d.w, d.oh * d.ow, d.kh * d.kw);
        let cb = dw.len() / nt;
        let mut xt = vec![0f32; hw * cb];
        let mut gt = vec![0f32; ohw * cb];
        let mut acc = vec![0f32; nt * cb];
        for img in 0..d.n {
            to_channels_last(&x[(img * c + c0) * hw..(img * c + c0 + cb) * hw], cb, hw, &mut xt);
            to_channels_last(&g[(img * c + c0) * ohw..(img * c + c0 + cb) * ohw], cb, ohw, &mut gt);
            for_each_tap(geo, d, taps, |op, ip, t| {
                let (dst, gs, xs) =
                    (&mut acc[t * cb..(t + 1) * cb], &gt[op * cb..(op + 1) * cb], &xt[ip * cb..(ip + 1) * cb]);
                for ((a, &gv), &xv) in dst.iter_mut().zip(gs).zip(xs) {
                    *a += gv * xv;
                }
            });
        }
        to_planes(&acc, cb, nt, dw);
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("depthwise conv: {what} must be contiguous"),
    }
}

fn dims(geo: &DwGeometry, input: &Layout, weight: &Layout) -> Result<Dims> {
    let (n, c, h, w) = input.shape().dims4()?;
    let (wc, one, kh, kw) = weight.shape().dims4()?;
    if wc != c || one != 1 {
        candle_core::bail!("depthwise conv: weight {:?} does not fit input {:?}", weight.shape(), input.shape())
    }
    let Some((oh, ow)) = geo.out_size(h, w, kh, kw) else {
        candle_core::bail!("depthwise conv: input {h}x{w} is smaller than the {kh}x{kw} kernel")
    };
    Ok(Dims { n, c, h, w, kh, kw, oh, ow })
}

/// `conv2d(input, weight, groups = C)` with weight `[C, 1, kh, kw]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DepthwiseConv(pub DwGeometry);

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
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
            &DepthwiseInputGrad { geo: self.0, input_hw: (input.dim(2)?, input.dim(3)?) },
            &DepthwiseWeightGrad { geo: self.0, kernel: (weight.dim(2)?, weight.dim(3)?) },
        )
    }
}

impl super::EpilogueForward for DepthwiseConv {
    const FUSED_NAME: &'static str = "depthwise-conv2d-bias-clamp";
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

/// The forward pass; `epi` is applied to each output plane once it is complete.
fn forward(
    geo: DwGeometry,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    epi: Option<Epilogue>,
) -> Result<(CpuStorage, Shape)> {
    let d = dims(&geo, l1, l2)?;
    let x = contiguous(s1, l1, "input")?;
    let k = contiguous(s2, l2, "weight")?;
    if channels_last_pays(&d) {
        let taps = Taps::new(&geo, d.h, d.w, d.oh, d.ow, d.kh, d.kw);
        let out = channels_last(&geo, &d, &taps, x, k, Direction::Forward, epi);
        return Ok((CpuStorage::F32(out), Shape::from((d.n, d.c, d.oh, d.ow))));
    }

    // Every element is written, by `forward_plane`.
    let phases = Phases::new(&geo, &d);
    let out = super::Output::new(d.n * d.c * d.oh * d.ow).par_chunks_init(
        d.oh * d.ow,
        || vec![0f32; phases.len()],
        |scratch, plane, o| {
            let ch = plane % d.c;
            let xin = &x[plane * d.h * d.w..(plane + 1) * d.h * d.w];
            let ker = &k[ch * d.kh * d.kw..(ch + 1) * d.kh * d.kw];
            fill_phases(&phases, &geo, &d, xin, scratch);
            forward_plane(&d, &phases, scratch, ker, o);
            if let Some(epi) = &epi {
                epi.plane(ch, o);
            }
        },
    );
    Ok((CpuStorage::F32(out), Shape::from((d.n, d.c, d.oh, d.ow))))
}

/// Output columns one chunk of [`forward_plane`] sums in registers.
const CHUNK: usize = 16;

/// The layout of one input plane as [`forward_plane`] reads it: zero-padded
/// on every side, and each padded row split into its `stride` phases
/// (columns `p, p + s, p + 2s, …`), so that the input columns of one tap
/// for consecutive output columns are contiguous at every stride, with no
/// bounds checks. Each phase has `CHUNK` zeros of slack after it, so a
/// chunk may read past the last output column.
struct Phases {
    stride: usize,
    /// Floats per phase.
    slot: usize,
    /// Padded rows.
    rows: usize,
}

impl Phases {
    fn new(geo: &DwGeometry, d: &Dims) -> Phases {
        let s = geo.stride;
        Phases { stride: s, slot: d.ow + (d.kw - 1) / s + CHUNK, rows: d.h + geo.pad_top + geo.pad_bottom }
    }

    fn row_len(&self) -> usize {
        self.stride * self.slot
    }

    fn len(&self) -> usize {
        self.rows * self.row_len()
    }
}

multiversion! {
    /// Copies `xin` (`h × w`) into `out` laid out as `phases`. Only the
    /// image's own positions are written, the same ones for every plane of a
    /// call: a scratch that starts zeroed keeps its padding zero across planes.
    fn fill_phases(phases: &Phases, geo: &DwGeometry, d: &Dims, xin: &[f32], out: &mut [f32]) {
        let (s, slot, r) = (phases.stride, phases.slot, phases.row_len());
        for (iy, src) in xin.chunks_exact(d.w).enumerate() {
            let row = &mut out[(iy + geo.pad_top) * r..(iy + geo.pad_top + 1) * r];
            if s == 1 {
                row[geo.pad_left..geo.pad_left + d.w].copy_from_slice(src);
                continue;
            }
            if s == 2 {
                // Pairs of columns split into the two phases (vectorises).
                let (a, b) = (geo.pad_left % 2, 1 - geo.pad_left % 2);
                let (a0, b0) = (a * slot + geo.pad_left / 2, b * slot + geo.pad_left.div_ceil(2));
                let pairs = src.chunks_exact(2);
                if let [last] = pairs.remainder() {
                    row[a0 + d.w / 2] = *last;
                }
                for (i, pair) in pairs.enumerate() {
                    row[a0 + i] = pair[0];
                    row[b0 + i] = pair[1];
                }
                continue;
            }
            // Phase p holds the padded columns p, p + s, …: the image columns
            // from the first `ix` with (ix + pad_left) ≡ p (mod s).
            for p in 0..s {
                let first = (p + s - geo.pad_left % s) % s;
                if first >= d.w {
                    continue;
                }
                let dst = &mut row[p * slot + (first + geo.pad_left) / s..(p + 1) * slot];
                for (o, &v) in dst.iter_mut().zip(src[first..].iter().step_by(s)) {
                    *o = v;
                }
            }
        }
    }
}

multiversion! {
    /// One output plane of the direct (planar) forward pass, from the input
    /// laid out as [`Phases`]: each chunk of an output row sums all its taps
    /// in registers and is stored once.
    fn forward_plane(d: &Dims, phases: &Phases, input: &[f32], ker: &[f32], o: &mut [f32]) {
        let (s, slot, r) = (phases.stride, phases.slot, phases.row_len());
        for oy in 0..d.oh {
            for start in (0..d.ow).step_by(CHUNK) {
                let mut acc = [0f32; CHUNK];
                for ky in 0..d.kh {
                    let row = &input[(oy * s + ky) * r..(oy * s + ky + 1) * r];
                    for (kx, &wv) in ker[ky * d.kw..(ky + 1) * d.kw].iter().enumerate() {
                        let at = (kx % s) * slot + kx / s + start;
                        let src = &row[at..at + CHUNK];
                        for i in 0..CHUNK {
                            acc[i] = wv.mul_add(src[i], acc[i]);
                        }
                    }
                }
                // A whole chunk is a fixed-size copy (vector stores, not a
                // memmove call). A row's last chunk may spill into the next
                // row, which is computed after it and overwrites the spill;
                // only a chunk that would run past the plane stores less (a
                // memmove call per row was about 6% of a MobileNetV2 forward
                // pass).
                let at = oy * d.ow + start;
                match o.get_mut(at..at + CHUNK) {
                    Some(whole) => whole.copy_from_slice(&acc),
                    None => {
                        let n = (o.len() - at).min(CHUNK);
                        o[at..at + n].copy_from_slice(&acc[..n]);
                    }
                }
            }
        }
    }
}

/// Gradient with respect to the input: scatter each output gradient back
/// through the kernel taps (per plane, so writes never collide).
#[derive(Debug, Clone, Copy)]
struct DepthwiseInputGrad {
    geo: DwGeometry,
    input_hw: (usize, usize),
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.geo;
        let (n, c, oh, ow) = l1.shape().dims4()?;
        let (_, _, kh, kw) = l2.shape().dims4()?;
        let (h, w) = self.input_hw;
        let g = contiguous(s1, l1, "gradient")?;
        let k = contiguous(s2, l2, "weight")?;
        let taps = Taps::new(&geo, h, w, oh, ow, kh, kw);
        let d = Dims { n, c, h, w, kh, kw, oh, ow };
        if channels_last_pays(&d) {
            let out = channels_last(&geo, &d, &taps, g, k, Direction::InputGrad, None);
            return Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))));
        }
        if let Some(out) = input_grad_as_forward(&geo, &d, g, k) {
            return Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))));
        }
        // Each plane is cleared by `Output` just before its scatter: fresh
        // memory read first would map the kernel's shared zero page, then
        // take a copy-on-write fault and a TLB flush on every core at the
        // first write, per page.
        let out = super::Output::new(n * c * h * w).par_chunks(h * w, |plane, gin| {
            let ch = plane % c;
            let gout = &g[plane * oh * ow..(plane + 1) * oh * ow];
            if cfg!(debug_assertions) {
                gin.fill(0.0); // debug builds fill with NaN; the scatter adds
            }
            input_grad_plane(&geo, &d, &taps, gout, &k[ch * kh * kw..(ch + 1) * kh * kw], gin);
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

/// At stride 1 the input gradient is a forward pass: `dY` correlated with
/// the kernel turned by 180°, padded by `k − 1 − pad` on each side. It then
/// runs as [`forward_plane`] (taps summed in registers) instead of a scatter
/// that reads and writes each input row once per tap. `None` at other
/// strides, or padding wider than the kernel reaches.
fn input_grad_as_forward(geo: &DwGeometry, d: &Dims, g: &[f32], k: &[f32]) -> Option<Vec<f32>> {
    let turned = |k: usize, pad: usize| (k - 1).checked_sub(pad);
    if geo.stride != 1 {
        return None;
    }
    let back = DwGeometry {
        stride: 1,
        pad_top: turned(d.kh, geo.pad_top)?,
        pad_left: turned(d.kw, geo.pad_left)?,
        pad_bottom: turned(d.kh, geo.pad_bottom)?,
        pad_right: turned(d.kw, geo.pad_right)?,
    };
    let bd = Dims { h: d.oh, w: d.ow, oh: d.h, ow: d.w, ..*d };
    let taps = d.kh * d.kw;
    let flipped: Vec<f32> = k.chunks_exact(taps).flat_map(|ch| ch.iter().rev().copied()).collect();
    let phases = Phases::new(&back, &bd);
    // Every element is written, by `forward_plane`.
    let out = super::Output::new(d.n * d.c * d.h * d.w).par_chunks_init(
        d.h * d.w,
        || vec![0f32; phases.len()],
        |scratch, plane, gin| {
            let ch = plane % d.c;
            fill_phases(&phases, &back, &bd, &g[plane * d.oh * d.ow..(plane + 1) * d.oh * d.ow], scratch);
            forward_plane(&bd, &phases, scratch, &flipped[ch * taps..(ch + 1) * taps], gin);
        },
    );
    Some(out)
}

multiversion! {
    /// One input plane's gradient, direct: every tap scatters `dY · w` along rows.
    fn input_grad_plane(geo: &DwGeometry, d: &Dims, taps: &Taps, gout: &[f32], ker: &[f32], gin: &mut [f32]) {
        let s = geo.stride;
        for (oy, grow) in gout.chunks_exact(d.ow).enumerate() {
            for ky in 0..d.kh {
                let Some(iy) = taps.row(oy, ky) else { continue };
                let irow = &mut gin[iy * d.w..(iy + 1) * d.w];
                for (&wv, &(lo, hi, start)) in ker[ky * d.kw..(ky + 1) * d.kw].iter().zip(&taps.cols) {
                    if lo >= hi {
                        continue;
                    }
                    let src = &grow[lo..hi];
                    if s == 1 {
                        for (iv, gv) in irow[start..start + src.len()].iter_mut().zip(src) {
                            *iv = wv.mul_add(*gv, *iv);
                        }
                    } else {
                        for (iv, gv) in irow[start..].iter_mut().step_by(s).zip(src) {
                            *iv = wv.mul_add(*gv, *iv);
                        }
                    }
                }
            }
        }
    }
}

/// Gradient with respect to the weight: per channel, correlate the input with
/// the output gradient over every image of the batch.
#[derive(Debug, Clone, Copy)]
struct DepthwiseWeightGrad {
    geo: DwGeometry,
    kernel: (usize, usize),
}

impl CustomOp2 for DepthwiseWeightGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let geo = self.geo;
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, _, oh, ow) = l2.shape().dims4()?;
        let (kh, kw) = self.kernel;
        let x = contiguous(s1, l1, "input")?;
        let g = contiguous(s2, l2, "gradient")?;
        let mut out = vec![0f32; c * kh * kw];
        let taps = Taps::new(&geo, h, w, oh, ow, kh, kw);
        let d = Dims { n, c, h, w, kh, kw, oh, ow };
        if channels_last_pays(&d) {
            weight_grad_channels_last(&geo, &d, &taps, x, g, &mut out);
            return Ok((CpuStorage::F32(out), Shape::from((c, 1, kh, kw))));
        }
        let s = geo.stride;
        out.par_chunks_mut(kh * kw).enumerate().for_each(|(ch, gk)| {
            for img in 0..n {
                let plane = img * c + ch;
                let xin = &x[plane * h * w..(plane + 1) * h * w];
                let gout = &g[plane * oh * ow..(plane + 1) * oh * ow];
                for ky in 0..kh {
                    for (kx, &(lo, hi, start)) in taps.cols.iter().enumerate() {
                        if lo >= hi {
                            continue;
                        }
                        let mut acc = 0f32;
                        for (oy, grow) in gout.chunks_exact(ow).enumerate() {
                            let Some(iy) = taps.row(oy, ky) else { continue };
                            let irow = &xin[iy * w..(iy + 1) * w];
                            let gsrc = &grow[lo..hi];
                            acc += if s == 1 {
                                dot(gsrc, &irow[start..start + gsrc.len()])
                            } else {
                                dot_strided(gsrc, &irow[start..], s)
                            };
                        }
                        gk[ky * kw + kx] += acc;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 1, kh, kw))))
    }
}

/// Depthwise convolution of `x` `[N, C, H, W]` with `weight` `[C, 1, kh, kw]`.
pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, geo: DwGeometry) -> Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    if x.track_op() || weight.track_op() {
        x.apply_op2(&weight, DepthwiseConv(geo))
    } else {
        x.apply_op2_no_bwd(&weight, &DepthwiseConv(geo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn reference(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Tensor {
        let c = x.dim(1).unwrap();
        x.conv2d(w, pad, stride, 1, c).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn matches_candle_conv2d_forward_and_gradients() {
        for &(n, c, h, w, k, stride, pad) in &[
            (2, 3, 7, 9, 3, 1, 1),
            (1, 4, 8, 8, 3, 2, 1),
            (3, 2, 5, 6, 5, 1, 2),
            (2, 5, 9, 7, 5, 2, 2),
            (1, 3, 6, 6, 3, 1, 0),
            (2, 2, 7, 7, 1, 2, 0),
            // Many channels on small maps: the channels-last kernels.
            (3, 16, 5, 6, 3, 1, 1),
            (2, 24, 7, 7, 3, 2, 1),
            (2, 32, 6, 6, 5, 2, 2),
            (2, 16, 12, 12, 3, 1, 1),
            // Channel blocks of the channels-last weight gradient, the last partial.
            (2, 40, 4, 4, 3, 1, 1),
            // Rows longer than the dot product's lanes, stride 1 and 2.
            (2, 3, 7, 21, 3, 1, 1),
            (2, 3, 9, 23, 3, 2, 1),
            // Kernels wider than the (small) input: late EfficientNet blocks on small images.
            (2, 3, 1, 1, 5, 1, 2),
            (1, 2, 2, 2, 5, 2, 2),
            (2, 2, 3, 3, 5, 2, 2),
            (2, 16, 1, 1, 5, 1, 2),
            // Rows of several register chunks, the last partial, at both strides.
            (1, 3, 10, 40, 3, 2, 1),
            (1, 2, 6, 50, 5, 2, 2),
            (1, 2, 5, 37, 3, 1, 1),
        ] {
            let x = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (n, c, h, w)).unwrap()).unwrap();
            let wt = Var::from_tensor(&crate::kernels::testing::randn(0f32, 1., (c, 1, k, k)).unwrap()).unwrap();
            let geo = DwGeometry { stride, pad_top: pad, pad_left: pad, pad_bottom: pad, pad_right: pad };
            let ours = depthwise_conv2d(x.as_tensor(), wt.as_tensor(), geo).unwrap();
            let theirs = reference(x.as_tensor(), wt.as_tensor(), stride, pad);
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-4, "forward {n} {c} {h} {w} k{k} s{stride} p{pad}");

            // Same upstream gradient through both: loss = sum(out * r).
            let r = crate::kernels::testing::randn(0f32, 1., ours.dims()).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &wt] {
                let a = g1.get(v.as_tensor()).unwrap();
                let b = g2.get(v.as_tensor()).unwrap();
                assert!(max_diff(a, b) < 1e-3, "grad {n} {c} {h} {w} k{k} s{stride} p{pad}");
            }
        }
    }

    #[test]
    fn asymmetric_same_padding() {
        // TF SAME for a stride-2 3×3 on an even size pads 0 before and 1 after.
        let x = crate::kernels::testing::randn(0f32, 1., (1, 2, 6, 6)).unwrap();
        let w = crate::kernels::testing::randn(0f32, 1., (2, 1, 3, 3)).unwrap();
        let geo = DwGeometry { stride: 2, pad_top: 0, pad_left: 0, pad_bottom: 1, pad_right: 1 };
        let ours = depthwise_conv2d(&x, &w, geo).unwrap();
        let padded = x.pad_with_zeros(2, 0, 1).unwrap().pad_with_zeros(3, 0, 1).unwrap();
        let theirs = padded.conv2d(&w, 0, 2, 1, 2).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }

    #[test]
    fn kernel_larger_than_input_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((1, 1, 5, 5), candle_core::DType::F32, &dev).unwrap();
        let geo = DwGeometry { stride: 1, pad_top: 0, pad_left: 0, pad_bottom: 0, pad_right: 0 };
        assert!(depthwise_conv2d(&x, &w, geo).is_err());
    }
}
