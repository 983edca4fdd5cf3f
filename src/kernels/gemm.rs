//! The one GEMM entry point of tlab's convolution kernels (im2col and
//! Winograd alike): strided matrix operands over plain slices, multiplied by
//! the `gemm` crate (the same one behind candle's CPU matmul).

use gemm::Parallelism;

/// A matrix operand: a slice with row and column strides in elements.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with `cols` columns.
    pub(super) fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub(super) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: 1, cs: cols }
    }
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.data.len(), "conv gemm: {what} operand out of bounds");
        }
    }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]` into memory nothing has written yet:
/// every element of the `m × n` block (rows `dst_rs` apart) is written, and
/// none is read, so a kernel's output needs no clearing first.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_into(
    dst: &mut [std::mem::MaybeUninit<f32>],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    check(dst.len(), dst_rs, (m, n, k), lhs, rhs);
    if k == 0 {
        // An empty sum: gemm would leave the block as it found it.
        for row in dst.chunks_mut(dst_rs).take(m) {
            row[..n].iter_mut().for_each(|v| {
                v.write(0.0);
            });
        }
        return;
    }
    // SAFETY: as in `matmul`; with `read_dst` false gemm stores every
    // element of the block through the pointer and loads none, so the
    // destination may be uninitialised (it is never viewed as `f32` here).
    unsafe { gemm_raw(dst.as_mut_ptr().cast::<f32>(), dst_rs, (m, n, k), lhs, rhs, false, par) }
}

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`, or `+=` with `accumulate`; `dst` is
/// row-major with row stride `dst_rs`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    check(dst.len(), dst_rs, (m, n, k), lhs, rhs);
    // SAFETY: the asserts above keep every element the strides reach inside
    // its slice, and the rows of `dst` (n ≤ dst_rs) do not overlap; `dst` is
    // borrowed mutably, so it aliases neither operand.
    unsafe { gemm_raw(dst.as_mut_ptr(), dst_rs, (m, n, k), lhs, rhs, accumulate, par) }
}

/// Every element the strides of the destination (`dst_len` values, rows
/// `dst_rs` apart) and of both operands reach lies inside its slice.
fn check(dst_len: usize, dst_rs: usize, (m, n, k): (usize, usize, usize), lhs: Mat, rhs: Mat) {
    assert!(n <= dst_rs && dst_len >= (m - 1) * dst_rs + n, "conv gemm: destination too small");
    lhs.check(m, k, "left");
    rhs.check(k, n, "right");
}

/// The one call into `gemm`: dst = dst (if `read_dst`) + lhs · rhs.
///
/// # Safety
/// `dst` must be valid for writes (and for reads with `read_dst`) of the
/// `m × n` block with row stride `dst_rs`, and alias neither operand; the
/// operands must hold every element their strides reach (`Mat::check`).
unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    read_dst: bool,
    par: Parallelism,
) {
    // SAFETY: the caller's contract above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}
