//! Seeded test data: every test draws the same numbers on every run.
//!
//! `Tensor::randn` on the CPU draws from an unseeded thread RNG, so a test
//! built on it checks different data each run and can fail once in a few
//! hundred runs on an unlucky draw (CI once drew a convolution whose four
//! outputs were all under 0.1 and called the reference degenerate). libtest
//! runs each test on a fresh thread, so a thread-local generator with a
//! fixed seed gives each test its own reproducible stream whatever else
//! runs beside it.

use candle_core::{Device, Result, Shape, Tensor};
use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0x7E57_DA7A) };
}

/// SplitMix64: small, fast and plenty for test data.
fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Uniform in (0, 1]: never 0, so the logarithm below is finite.
fn uniform() -> f64 {
    ((next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// A CPU tensor of normal samples, like `Tensor::randn(mean, std, shape,
/// &Device::Cpu)` (a `Result` like it) but from this thread's seeded stream (Box–Muller).
pub fn randn(mean: f32, std: f32, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape = shape.into();
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
            mean + std * z as f32
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::randn;

    #[test]
    fn each_thread_starts_the_same_stream_and_draws_are_normal() {
        let here = randn(0.0, 1.0, 10_000).unwrap().to_vec1::<f32>().unwrap();
        let there = std::thread::spawn(|| randn(0.0, 1.0, 10_000).unwrap().to_vec1::<f32>().unwrap()).join().unwrap();
        assert_eq!(here, there);
        let n = here.len() as f32;
        let mean = here.iter().sum::<f32>() / n;
        let var = here.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "mean {mean} variance {var}");
        let next = randn(0.0, 1.0, 4).unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(next[..], here[..4], "a second draw continues the stream");
    }
}
