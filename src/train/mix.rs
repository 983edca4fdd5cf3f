//! Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") and
//! CutMix (Yun et al. 2019) with timm's batch semantics: each batch is mixed
//! with itself reversed, with one weight per batch drawn from Beta(α, α), and
//! the labels are mixed with the same weight (after label smoothing).

use candle_core::{Device, Tensor};

use crate::augment::Rng;
use crate::error::Result;
use crate::recipe::MixConfig;

/// How one batch was mixed: image `i` is `lam · x[i] + (1 - lam) · x[n-1-i]`
/// (for CutMix, by area), so its target is the same mixture of the labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mixed {
    pub lam: f64,
    pub cutmix: bool,
}

/// Standard normal (Box–Muller), for the gamma sampler.
fn normal(rng: &mut Rng) -> f64 {
    let u1 = rng.f64().max(f64::MIN_POSITIVE);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gamma(α, 1) by Marsaglia & Tsang (2000), with the α < 1 boost.
fn gamma(alpha: f64, rng: &mut Rng) -> f64 {
    if alpha < 1.0 {
        let u = rng.f64().max(f64::MIN_POSITIVE);
        return gamma(alpha + 1.0, rng) * u.powf(1.0 / alpha);
    }
    let d = alpha - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.f64();
        if u.ln() < 0.5 * x * x + d - d * v.ln() {
            return d * v;
        }
    }
}

/// Beta(α, α).
pub(crate) fn beta(alpha: f64, rng: &mut Rng) -> f64 {
    let a = gamma(alpha, rng);
    let b = gamma(alpha, rng);
    if a + b > 0.0 {
        a / (a + b)
    } else {
        0.5
    }
}

/// Reverses the batch dimension.
fn reversed(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let idx: Vec<u32> = (0..n as u32).rev().collect();
    Ok(x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?)
}

/// Mixes the normalised input batch `x` (`[n, c, h, w]`) in place of the
/// original; `None` when this batch is left alone (`prob`).
pub(crate) fn mix_batch(x: &Tensor, cfg: &MixConfig, rng: &mut Rng) -> Result<(Tensor, Option<Mixed>)> {
    if !rng.bool(cfg.prob) {
        return Ok((x.clone(), None));
    }
    let use_cutmix = match (cfg.mixup_alpha > 0.0, cfg.cutmix_alpha > 0.0) {
        (true, true) => rng.bool(cfg.switch_prob),
        (false, true) => true,
        _ => false,
    };
    let other = reversed(x)?;
    if !use_cutmix {
        let lam = beta(cfg.mixup_alpha, rng);
        let mixed = ((x * lam)? + (other * (1.0 - lam))?)?;
        return Ok((mixed, Some(Mixed { lam, cutmix: false })));
    }
    let (_, _, h, w) = x.dims4()?;
    let lam = beta(cfg.cutmix_alpha, rng);
    let (y0, y1, x0, x1) = cut_box(h, w, lam, rng);
    let mut mask = vec![0f32; h * w];
    for row in mask[y0 * w..y1 * w].chunks_mut(w) {
        row[x0..x1].fill(1.0);
    }
    let mask = Tensor::from_vec(mask, (1, 1, h, w), &Device::Cpu)?.to_dtype(x.dtype())?;
    let keep = mask.affine(-1.0, 1.0)?;
    let mixed = (x.broadcast_mul(&keep)? + other.broadcast_mul(&mask)?)?;
    // timm's "correct_lam": the weight is the area actually kept after clipping.
    let lam = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
    Ok((mixed, Some(Mixed { lam, cutmix: true })))
}

/// CutMix's box: area fraction `1 - lam`, centred uniformly, clipped to the image.
pub(crate) fn cut_box(h: usize, w: usize, lam: f64, rng: &mut Rng) -> (usize, usize, usize, usize) {
    let ratio = (1.0 - lam).sqrt();
    let (ch, cw) = ((h as f64 * ratio) as i64, (w as f64 * ratio) as i64);
    let cy = rng.below(h) as i64;
    let cx = rng.below(w) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    (clip(cy - ch / 2, h), clip(cy + ch / 2, h), clip(cx - cw / 2, w), clip(cx + cw / 2, w))
}

/// Soft targets `[n, classes]`: label smoothing, then the batch's mixture.
pub fn targets(labels: &[usize], classes: usize, smoothing: f64, mixed: Option<Mixed>) -> Vec<f32> {
    let off = smoothing / classes as f64;
    let on = 1.0 - smoothing + off;
    let n = labels.len();
    let mut t = vec![off as f32; n * classes];
    let lam = mixed.map_or(1.0, |m| m.lam);
    for (i, &y) in labels.iter().enumerate() {
        let row = &mut t[i * classes..(i + 1) * classes];
        row[y] += (lam * (on - off)) as f32;
        row[labels[n - 1 - i]] += ((1.0 - lam) * (on - off)) as f32;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_has_the_right_mean_and_spread() {
        let mut rng = Rng::new(7);
        for alpha in [0.2, 1.0, 4.0] {
            let draws: Vec<f64> = (0..20_000).map(|_| beta(alpha, &mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "alpha {alpha}: mean {mean}");
            assert!((var - want).abs() < 0.1 * want, "alpha {alpha}: var {var} vs {want}");
            assert!(draws.iter().all(|d| (0.0..=1.0).contains(d)));
        }
    }

    #[test]
    fn mixed_targets_carry_both_labels_with_the_batch_weight() {
        let labels = [0, 1, 2, 1];
        let t = targets(&labels, 3, 0.1, Some(Mixed { lam: 0.7, cutmix: false }));
        for (i, row) in t.chunks(3).enumerate() {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "row {i} sums to {sum}");
        }
        // Image 0 mixes label 0 (0.7) with image 3's label 1 (0.3), smoothed by 0.1.
        let (off, on) = (0.1 / 3.0, 0.9 + 0.1 / 3.0);
        let want = [off + 0.7 * (on - off), off + 0.3 * (on - off), off];
        for (g, w) in t[..3].iter().zip(want) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{:?}", &t[..3]);
        }
        // Unmixed and unsmoothed is one-hot.
        assert_eq!(targets(&[2, 0], 3, 0.0, None), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn mixup_and_cutmix_mix_the_pixels_by_the_reported_weight() {
        let dev = Device::Cpu;
        // Two images, constant 0 and constant 1: the mixed mean is the weight of the other image.
        let x = Tensor::cat(
            &[
                Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &dev).unwrap(),
                Tensor::ones((1, 3, 8, 8), candle_core::DType::F32, &dev).unwrap(),
            ],
            0,
        )
        .unwrap();
        for (mixup, cutmix) in [(1.0, 0.0), (0.0, 1.0)] {
            let cfg = MixConfig {
                mixup_alpha: mixup,
                cutmix_alpha: cutmix,
                prob: 1.0,
                switch_prob: 0.5,
                at: Default::default(),
            };
            let mut rng = Rng::new(3);
            for _ in 0..20 {
                let (m, info) = mix_batch(&x, &cfg, &mut rng).unwrap();
                let info = info.unwrap();
                assert_eq!(info.cutmix, cutmix > 0.0);
                let first = m.get(0).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
                assert!((f64::from(first) - (1.0 - info.lam)).abs() < 1e-5, "{info:?}: mean {first}");
            }
        }
        let never =
            MixConfig { mixup_alpha: 1.0, cutmix_alpha: 0.0, prob: 0.0, switch_prob: 0.5, at: Default::default() };
        assert!(mix_batch(&x, &never, &mut Rng::new(1)).unwrap().1.is_none());
    }
}
