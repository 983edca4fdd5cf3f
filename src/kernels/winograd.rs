//! Winograd F(2×2, 3×3) forward pass for dense 3×3 stride-1 convolutions
//! (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).
//!
//! Each 2×2 output tile is `Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A` for its 4×4 input
//! patch `d` and each 3×3 kernel `g`: the sum over input channels of the
//! element-wise products is, for each of the 16 positions ξ, one GEMM
//! `M_ξ[Cout, tiles] = U_ξ[Cout, Cin] · V_ξ[Cin, tiles]`. That is 16
//! multiply-adds per 4 outputs instead of 36: 2.25× fewer than im2col + GEMM,
//! for the 3×3 stride-1 layers that carry most of ResNet's and VGG's work.
//! F(2, 3) keeps the transforms' constants to 0, ±1 and ½, so its rounding
//! error stays at the level of a reordered sum (tested against candle's
//! convolution within 1e-4 relative).
//!
//! Each thread takes a contiguous chunk of images, and their tiles (all
//! images' tiles in a row, so small late-stage maps still fill a GEMM) in
//! blocks sized to stay in cache: transform the block's patches into `V`,
//! run the 16 GEMMs into `M`, transform `M` back into the output (with the
//! frozen layer's bias and clamp, if any). The input gradient of such a
//! convolution is one too (see `conv.rs`); the weight gradient stays on
//! im2col.

use super::gemm::{matmul, Mat};
use super::{Epilogue, Output, Padding};
use gemm::Parallelism;
use rayon::prelude::*;

/// Sizes of one convolution (3×3 kernel, stride 1).
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub oh: usize,
    pub ow: usize,
    pub pad: Padding,
}

impl Shape {
    fn tiles_y(&self) -> usize {
        self.oh.div_ceil(2)
    }
    fn tiles_x(&self) -> usize {
        self.ow.div_ceil(2)
    }
}

/// Winograd pays off once the GEMMs dominate the transforms: enough
/// channels on both sides (not the RGB stem) and at least one whole tile.
pub(super) fn applies(s: &Shape) -> bool {
    s.cin >= 16 && s.cout >= 16 && s.oh >= 2 && s.ow >= 2
}

/// Floats of `V` (and of `M`) per block of tiles: a block's transforms and
/// GEMMs then run within the core's L2.
const BLOCK_FLOATS: usize = 1 << 17;

fn tiles_per_block(s: &Shape) -> usize {
    (BLOCK_FLOATS / (16 * s.cin.max(s.cout))).clamp(32, 256)
}

/// `U = G g Gᵀ` for every kernel, laid out `[Cout][16][Cin]`, so that
/// `U_ξ` is the `[Cout, Cin]` matrix with row stride `16·Cin`.
fn transform_weights(s: &Shape, w: &[f32]) -> Vec<f32> {
    let cin = s.cin;
    let mut u = vec![0f32; s.cout * 16 * cin];
    u.par_chunks_mut(16 * cin)
        .enumerate()
        .for_each(|(co, dst)| kernel_transforms(&w[co * cin * 9..(co + 1) * cin * 9], dst));
    u
}

multiversion! {
    /// `U = G g Gᵀ` for one output channel's `Cin` kernels `w`, into `dst` `[16][Cin]`.
    fn kernel_transforms(w: &[f32], dst: &mut [f32]) {
        let cin = w.len() / 9;
        for ci in 0..cin {
            let g = &w[ci * 9..][..9];
            // t = G g (4×3): rows 0 and 3 are g's first and last rows.
            let mut t = [[0f32; 3]; 4];
            for k in 0..3 {
                let (a, b, c) = (g[k], g[3 + k], g[6 + k]);
                t[0][k] = a;
                t[1][k] = 0.5 * (a + b + c);
                t[2][k] = 0.5 * (a - b + c);
                t[3][k] = c;
            }
            // U = t Gᵀ (4×4).
            for (r, row) in t.iter().enumerate() {
                let (a, b, c) = (row[0], row[1], row[2]);
                let vals = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                for (col, v) in vals.into_iter().enumerate() {
                    dst[(r * 4 + col) * cin + ci] = v;
                }
            }
        }
    }
}

/// The convolution of `x` `[N, Cin, H, W]` with `w` `[Cout, Cin, 3, 3]`
/// into `out` `[N, Cout, OH, OW]`, `epi` applied to every output. The batch
/// is split into contiguous chunks of `per` images, one per rayon task.
pub(super) fn forward(s: &Shape, x: &[f32], w: &[f32], per: usize, epi: Option<Epilogue>, out: Output) -> Vec<f32> {
    let u = transform_weights(s, w);
    let (image_in, image_out) = (s.cin * s.h * s.w, s.cout * s.oh * s.ow);
    let tiles_x = s.tiles_x();
    let rows_per_block = (tiles_per_block(s) / tiles_x).max(1);
    out.par_chunks(per * image_out, |chunk, o| {
        images(s, &x[chunk * per * image_in..], &u, rows_per_block, epi.as_ref(), o);
    })
}

multiversion! {
    /// The images of one chunk: `x` starts at its first image, `o` is its output.
    fn images(s: &Shape, x: &[f32], u: &[f32], rows_per_block: usize, epi: Option<&Epilogue>, o: &mut [f32]) {
        let (image_in, image_out) = (s.cin * s.h * s.w, s.cout * s.oh * s.ow);
        let (tiles_y, tiles_x) = (s.tiles_y(), s.tiles_x());
        let tile_rows = o.len() / image_out * tiles_y;
        let block = rows_per_block.min(tile_rows) * tiles_x;
        let mut v = vec![0f32; 16 * s.cin * block];
        let mut m = vec![0f32; 16 * s.cout * block];
        let mut rows = Rows::new(tiles_x);
        for r0 in (0..tile_rows).step_by(rows_per_block) {
            let nr = rows_per_block.min(tile_rows - r0);
            let nt = nr * tiles_x;
            // V_ξ[ci, t] for the block's tiles, a tile row at a time.
            for ci in 0..s.cin {
                for rr in 0..nr {
                    let (img, ty) = ((r0 + rr) / tiles_y, (r0 + rr) % tiles_y);
                    let plane = &x[img * image_in + ci * s.h * s.w..][..s.h * s.w];
                    rows.input_row(s, plane, ty);
                    rows.scatter_input(&mut v[ci * block + rr * tiles_x..], s.cin * block);
                }
            }
            // M_ξ = U_ξ · V_ξ.
            for xi in 0..16 {
                let lhs = Mat { data: &u[xi * s.cin..], rs: 16 * s.cin, cs: 1 };
                let rhs = Mat::rows(&v[xi * s.cin * block..(xi + 1) * s.cin * block], block);
                let dst = &mut m[xi * s.cout * block..(xi + 1) * s.cout * block];
                matmul(dst, block, s.cout, nt, s.cin, lhs, rhs, false, Parallelism::None);
            }
            // Back to 2×2 output tiles, a tile row at a time.
            for co in 0..s.cout {
                for rr in 0..nr {
                    let (img, ty) = ((r0 + rr) / tiles_y, (r0 + rr) % tiles_y);
                    let plane = &mut o[img * image_out + co * s.oh * s.ow..][..s.oh * s.ow];
                    rows.output_row(&m[co * block + rr * tiles_x..], s.cout * block);
                    rows.store(s, plane, ty, co, epi);
                }
            }
        }
    }
}

/// Scratch rows for one tile row: the four zero-padded input rows under it
/// (then their vertical transform), and the two output rows it produces.
struct Rows {
    /// Tiles per row.
    tiles: usize,
    /// Input rows of `2·tiles + 2` columns (the padding included).
    d: [Vec<f32>; 4],
    y: [Vec<f32>; 2],
    /// `Aᵀ m` of one tile row: `s[b][j]` is row 0, `s[4 + b][j]` row 1, of tile `j`.
    s: [Vec<f32>; 8],
}

impl Rows {
    fn new(tiles: usize) -> Rows {
        let d = std::array::from_fn(|_| vec![0f32; 2 * tiles + 2]);
        Rows {
            tiles,
            d,
            y: std::array::from_fn(|_| vec![0f32; 2 * tiles]),
            s: std::array::from_fn(|_| vec![0f32; tiles]),
        }
    }

    /// Loads input rows `2·ty − top ..+4` of `plane` (zero outside it, the
    /// left padding included) and applies `Bᵀ` down the columns.
    #[inline(always)]
    fn input_row(&mut self, s: &Shape, plane: &[f32], ty: usize) {
        let left = s.pad.left;
        for (r, row) in self.d.iter_mut().enumerate() {
            row.fill(0.0);
            let y = (2 * ty + r).checked_sub(s.pad.top).filter(|&y| y < s.h);
            if let Some(y) = y {
                let n = s.w.min(row.len().saturating_sub(left));
                row[left..left + n].copy_from_slice(&plane[y * s.w..y * s.w + n]);
            }
        }
        let [d0, d1, d2, d3] = &mut self.d;
        for (((a, b), c), d) in d0.iter_mut().zip(d1.iter_mut()).zip(d2.iter_mut()).zip(d3.iter_mut()) {
            let (v0, v1, v2, v3) = (*a, *b, *c, *d);
            *a = v0 - v2;
            *b = v1 + v2;
            *c = v2 - v1;
            *d = v1 - v3;
        }
    }

    /// Applies `B` along the rows and writes tile `j`'s value ξ to
    /// `v[ξ·stride + j]`.
    #[inline(always)]
    fn scatter_input(&self, v: &mut [f32], stride: usize) {
        let tiles = self.tiles;
        for (k, t) in self.d.iter().enumerate() {
            let (o0, rest) = v[4 * k * stride..].split_at_mut(stride);
            let (o1, rest) = rest.split_at_mut(stride);
            let (o2, o3) = rest.split_at_mut(stride);
            for (j, q) in t.windows(4).step_by(2).take(tiles).enumerate() {
                o0[j] = q[0] - q[2];
                o1[j] = q[1] + q[2];
                o2[j] = q[2] - q[1];
                o3[j] = q[1] - q[3];
            }
        }
    }

    /// `Aᵀ m A` for the tiles of one row, `m[ξ·stride + j]`, into the two
    /// output rows. Each step runs along the row of tiles, over contiguous
    /// values, so it vectorises; a tile at a time it read 16 strided rows
    /// and ran scalar (a seventh of a ResNet-18 training step with the
    /// input transform). Same sums in the same order, so the same bits.
    #[inline(always)]
    fn output_row(&mut self, m: &[f32], stride: usize) {
        let tiles = self.tiles;
        let at = |xi: usize| &m[xi * stride..xi * stride + tiles];
        let Rows { s, y, .. } = self;
        // s = Aᵀ m: two rows of four, each along the tiles.
        let (s0, s1) = s.split_at_mut(4);
        for b in 0..4 {
            let (m0, m1, m2, m3) = (at(b), at(4 + b), at(8 + b), at(12 + b));
            let outs = s0[b][..tiles].iter_mut().zip(s1[b][..tiles].iter_mut());
            for ((o0, o1), ((&v0, &v1), (&v2, &v3))) in outs.zip(m0.iter().zip(m1).zip(m2.iter().zip(m3))) {
                *o0 = v0 + v1 + v2;
                *o1 = v1 - v2 - v3;
            }
        }
        // y = s A: two outputs per tile and row, interleaved.
        for (y, s) in y.iter_mut().zip([&*s0, &*s1]) {
            let (a, b, c, d) = (&s[0][..tiles], &s[1][..tiles], &s[2][..tiles], &s[3][..tiles]);
            for (pair, ((&a, &b), (&c, &d))) in y.chunks_exact_mut(2).zip(a.iter().zip(b).zip(c.iter().zip(d))) {
                pair[0] = a + b + c;
                pair[1] = b - c - d;
            }
        }
    }

    /// Writes the output rows `2·ty`, `2·ty + 1` that exist, through `epi`.
    #[inline(always)]
    fn store(&self, s: &Shape, plane: &mut [f32], ty: usize, co: usize, epi: Option<&Epilogue>) {
        for (r, src) in self.y.iter().enumerate() {
            let oy = 2 * ty + r;
            if oy >= s.oh {
                break;
            }
            let dst = &mut plane[oy * s.ow..(oy + 1) * s.ow];
            match epi {
                Some(e) => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = e.value(co, v)),
                None => dst.copy_from_slice(&src[..s.ow]),
            }
        }
    }
}
