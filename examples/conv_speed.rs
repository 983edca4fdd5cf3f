//! Dense convolution speed: candle's `conv2d` against tlab's im2col + GEMM
//! kernel, side by side in one process, forward and forward + backward.
//!
//! `cargo run --release --example conv_speed [ITERS [FILTER]]`: medians over
//! ITERS runs (default 10), only the cases whose name contains FILTER.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};
use tlab::kernels::conv::{conv2d_gemm, ConvGeometry};
use tlab::kernels::Padding;

struct Case {
    name: &'static str,
    n: usize,
    cin: usize,
    cout: usize,
    size: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `a` and of `b`, run alternately (after one warm-up
/// each), so that a machine whose speed drifts slows both alike.
fn time_pair(iters: usize, mut a: impl FnMut() -> Result<()>, mut b: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    a()?;
    b()?;
    let (mut ta, mut tb) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters {
        let start = Instant::now();
        a()?;
        ta.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        b()?;
        tb.push(start.elapsed().as_secs_f64());
    }
    Ok((median(ta), median(tb)))
}

fn main() -> Result<()> {
    let iters = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let dev = Device::Cpu;
    let cases = [
        Case { name: "64->64 3x3 s1 @56", n: 32, cin: 64, cout: 64, size: 56, k: 3, stride: 1, pad: 1 },
        Case { name: "3->64 7x7 s2 @224", n: 32, cin: 3, cout: 64, size: 224, k: 7, stride: 2, pad: 3 },
        Case { name: "256->256 3x3 s1 @14", n: 32, cin: 256, cout: 256, size: 14, k: 3, stride: 1, pad: 1 },
        Case { name: "128->256 3x3 s2 @28", n: 32, cin: 128, cout: 256, size: 28, k: 3, stride: 2, pad: 1 },
    ];
    println!("{} rayon threads, {iters} iterations (median), batch 32", rayon::current_num_threads());
    println!(
        "{:<22} {:>12} {:>12} {:>7}   {:>12} {:>12} {:>7}",
        "case", "fwd candle", "fwd gemm", "ratio", "f+b candle", "f+b gemm", "ratio"
    );
    for c in cases.iter().filter(|c| c.name.contains(&filter)) {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (c.n, c.cin, c.size, c.size), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (c.cout, c.cin, c.k, c.k), &dev)?)?;
        let geo = ConvGeometry { stride: c.stride, pad: Padding::same(c.pad) };
        let candle = |x: &Tensor, w: &Tensor| x.conv2d(w, c.pad, c.stride, 1, 1);
        let ours = |x: &Tensor, w: &Tensor| conv2d_gemm(x, w, geo);

        let (yc, yo) = (candle(x.as_tensor(), w.as_tensor())?, ours(x.as_tensor(), w.as_tensor())?);
        let diff = (&yc - &yo)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let (_, _, oh, ow) = yc.dims4()?;
        let flops = 2.0 * (c.n * c.cout * c.cin * c.k * c.k * oh * ow) as f64;

        // Forward only: detached inputs, so no graph is recorded.
        let (xd, wd) = (x.as_detached_tensor(), w.as_detached_tensor());
        let (fc, fo) = time_pair(iters, || candle(&xd, &wd).map(drop), || ours(&xd, &wd).map(drop))?;
        // Forward + backward: gradients of both input and weight (3× the flops).
        let (fbc, fbo) = time_pair(
            iters,
            || candle(x.as_tensor(), w.as_tensor())?.sum_all()?.backward().map(drop),
            || ours(x.as_tensor(), w.as_tensor())?.sum_all()?.backward().map(drop),
        )?;

        let g = |secs: f64, mult: f64| mult * flops / secs / 1e9;
        println!(
            "{:<22} {:>7.1} GF/s {:>7.1} GF/s {:>6.2}x   {:>7.1} GF/s {:>7.1} GF/s {:>6.2}x   (max |diff| {diff:.1e})",
            c.name,
            g(fc, 1.),
            g(fo, 1.),
            fc / fo,
            g(fbc, 3.),
            g(fbo, 3.),
            fbc / fbo,
        );
    }
    Ok(())
}
