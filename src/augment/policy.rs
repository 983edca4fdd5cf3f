//! TrivialAugmentWide (Müller & Hutter 2021, "TrivialAugment: Tuning-free Yet
//! State-of-the-Art Data Augmentation") with torchvision's op list and
//! magnitude bins: each image gets one op, uniformly, at one of 31 magnitudes,
//! uniformly, with a random sign where the op has one. Colour ops follow
//! torchvision's definitions (checked against it on a fixture); geometric ops
//! sample with nearest neighbour and fill with black, as torchvision does.
//! RandAugment and AutoAugment's ImageNet policy draw from the same ops.

use super::{clamp_pixels, grey, Image, Rng};

/// torchvision's `num_magnitude_bins`.
pub(crate) const BINS: usize = 31;

/// The ops of TrivialAugmentWide, in torchvision's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
    /// Only in AutoAugment's policies (not in [`Op::ALL`]).
    Invert,
}

impl Op {
    pub const ALL: [Op; 14] = [
        Op::Identity,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Rotate,
        Op::Brightness,
        Op::Color,
        Op::Contrast,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
        Op::AutoContrast,
        Op::Equalize,
    ];

    /// The magnitude of bin `bin` (0..BINS) and whether a random sign applies.
    pub fn magnitude(self, bin: usize) -> (f64, bool) {
        let t = bin.min(BINS - 1) as f64 / (BINS - 1) as f64;
        match self {
            Op::ShearX | Op::ShearY => (0.99 * t, true),
            Op::TranslateX | Op::TranslateY => (32.0 * t, true),
            Op::Rotate => (135.0 * t, true),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => (0.99 * t, true),
            // 8 bits down to 2, in steps of (BINS - 1) / 6 bins.
            Op::Posterize => (8.0 - (bin as f64 / ((BINS - 1) as f64 / 6.0)).round(), false),
            Op::Solarize => (255.0 * (1.0 - t), false),
            Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert => (0.0, false),
        }
    }
}

/// One TrivialAugmentWide draw applied to `img`.
pub fn trivial_augment(img: &Image, rng: &mut Rng) -> Image {
    let op = Op::ALL[rng.below(Op::ALL.len())];
    let (m, signed) = op.magnitude(rng.below(BINS));
    let m = if signed && rng.bool(0.5) { -m } else { m };
    apply(img, op, m)
}

/// `op` at magnitude `m` (signed where the op is).
pub fn apply(img: &Image, op: Op, m: f64) -> Image {
    let mut out = img.clone();
    let d = &mut out.data;
    match op {
        Op::Identity => {}
        Op::ShearX => return resample(img, |x, y| (x - m * y, y)),
        Op::ShearY => return resample(img, |x, y| (x, y - m * x)),
        Op::TranslateX => return resample(img, |x, y| (x - m.trunc(), y)),
        Op::TranslateY => return resample(img, |x, y| (x, y - m.trunc())),
        Op::Rotate => {
            let (cx, cy) = (img.width as f64 * 0.5, img.height as f64 * 0.5);
            let (s, c) = m.to_radians().sin_cos();
            // Counter-clockwise on screen: sample at the clockwise-rotated point.
            return resample(img, move |x, y| {
                let (dx, dy) = (x + 0.5 - cx, y + 0.5 - cy);
                (c * dx - s * dy + cx - 0.5, s * dx + c * dy + cy - 0.5)
            });
        }
        Op::Brightness => blend(d, |_| 0.0, 1.0 + m),
        Op::Color => {
            let g: Vec<f32> = d.chunks_exact(3).map(|p| grey(p).floor()).collect();
            blend(d, |i| g[i / 3], 1.0 + m)
        }
        Op::Contrast => {
            let n = (d.len() / 3).max(1);
            let mean = d.chunks_exact(3).map(|p| f64::from(grey(p).floor())).sum::<f64>() / n as f64;
            blend(d, |_| mean as f32, 1.0 + m)
        }
        Op::Sharpness => {
            let smooth = smoothed(img);
            blend(d, |i| smooth[i], 1.0 + m)
        }
        Op::Posterize => {
            let mask = !((1u32 << (8 - m.clamp(0.0, 8.0) as u32)) - 1);
            d.iter_mut().for_each(|v| *v = ((v.clamp(0.0, 255.0) as u32) & mask) as f32);
        }
        Op::Solarize => d.iter_mut().for_each(|v| {
            if f64::from(*v) >= m {
                *v = 255.0 - *v;
            }
        }),
        Op::AutoContrast => autocontrast(d),
        Op::Equalize => equalize(d),
        Op::Invert => d.iter_mut().for_each(|v| *v = 255.0 - v.clamp(0.0, 255.0)),
    }
    clamp_pixels(d);
    out
}

/// `factor · img + (1 - factor) · other`, truncated to whole levels as
/// torchvision's uint8 blend does.
fn blend(d: &mut [f32], other: impl Fn(usize) -> f32, factor: f64) {
    let f = factor as f32;
    for (i, v) in d.iter_mut().enumerate() {
        *v = (f * *v + (1.0 - f) * other(i)).clamp(0.0, 255.0).trunc();
    }
}

/// Nearest-neighbour resampling: output pixel `(x, y)` takes the source
/// pixel at `map(x, y)`, black outside.
fn resample(img: &Image, map: impl Fn(f64, f64) -> (f64, f64)) -> Image {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut data = vec![0f32; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = map(x as f64, y as f64);
            let (sx, sy) = (sx.round(), sy.round());
            if sx >= 0.0 && sy >= 0.0 && (sx as usize) < w && (sy as usize) < h {
                let (dst, src) = ((y * w + x) * 3, (sy as usize * w + sx as usize) * 3);
                data[dst..dst + 3].copy_from_slice(&img.data[src..src + 3]);
            }
        }
    }
    Image { width: img.width, height: img.height, data }
}

/// torchvision's sharpness degenerate: a 3×3 smoothing (centre 5, others 1,
/// over 13), rounded, with the border pixels left as they are.
fn smoothed(img: &Image) -> Vec<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut out = img.data.clone();
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            for c in 0..3 {
                let mut sum = 0.0f32;
                for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))) {
                    let k = if (dy, dx) == (1, 1) { 5.0 } else { 1.0 };
                    sum += k * img.data[((y + dy - 1) * w + (x + dx - 1)) * 3 + c];
                }
                out[(y * w + x) * 3 + c] = (sum / 13.0).round();
            }
        }
    }
    out
}

/// Stretches each channel to the full 0..255 range (channels with one level are kept).
fn autocontrast(d: &mut [f32]) {
    for c in 0..3 {
        let values = d.iter().skip(c).step_by(3);
        let (lo, hi) = values.fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if hi > lo {
            let scale = 255.0 / (hi - lo);
            d.iter_mut().skip(c).step_by(3).for_each(|v| *v = ((*v - lo) * scale).clamp(0.0, 255.0).trunc());
        }
    }
}

/// Histogram equalisation per channel, with torchvision's (PIL's) lookup table.
fn equalize(d: &mut [f32]) {
    for c in 0..3 {
        let mut hist = [0usize; 256];
        d.iter().skip(c).step_by(3).for_each(|&v| hist[v.clamp(0.0, 255.0) as usize] += 1);
        let last = hist.iter().rev().find(|&&n| n > 0).copied().unwrap_or(0);
        let step = (hist.iter().sum::<usize>() - last) / 255;
        if step == 0 {
            continue;
        }
        let mut lut = [0f32; 256];
        let mut cum = step / 2;
        for (level, &n) in hist.iter().enumerate() {
            lut[level] = (cum / step).min(255) as f32;
            cum += n;
        }
        d.iter_mut().skip(c).step_by(3).for_each(|v| *v = lut[v.clamp(0.0, 255.0) as usize]);
    }
}

/// RandAugment (Cubuk et al. 2020) with torchvision's ops and ranges:
/// `num_ops` ops, each uniformly chosen, all at magnitude bin `magnitude`
/// (of 31), with a random sign where the op has one.
pub fn rand_augment(img: &Image, num_ops: usize, magnitude: usize, rng: &mut Rng) -> Image {
    let mut out = img.clone();
    for _ in 0..num_ops {
        let op = Op::ALL[rng.below(Op::ALL.len())];
        let (m, signed) = rand_augment_magnitude(op, magnitude, img.width, img.height);
        let m = if signed && rng.bool(0.5) { -m } else { m };
        out = apply(&out, op, m);
    }
    out
}

/// RandAugment's (narrower) ranges at bin `bin` of 31.
pub(crate) fn rand_augment_magnitude(op: Op, bin: usize, width: u32, height: u32) -> (f64, bool) {
    narrow_magnitude(op, bin, BINS, width, height)
}

/// The ranges RandAugment and AutoAugment share (torchvision's
/// `_augmentation_space`) at bin `bin` of `bins`, and whether a random sign
/// applies.
fn narrow_magnitude(op: Op, bin: usize, bins: usize, width: u32, height: u32) -> (f64, bool) {
    let last = (bins - 1) as f64;
    let t = bin.min(bins - 1) as f64 / last;
    match op {
        Op::ShearX | Op::ShearY => (0.3 * t, true),
        Op::TranslateX => (150.0 / 331.0 * f64::from(width) * t, true),
        Op::TranslateY => (150.0 / 331.0 * f64::from(height) * t, true),
        Op::Rotate => (30.0 * t, true),
        Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => (0.9 * t, true),
        Op::Posterize => (8.0 - (bin as f64 / (last / 4.0)).round(), false),
        Op::Solarize => (255.0 * (1.0 - t), false),
        Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert => (0.0, false),
    }
}

/// AutoAugment's magnitude bins (torchvision's `num_magnitude_bins` for it).
pub(crate) const AUTO_AUGMENT_BINS: usize = 10;

/// One step of an AutoAugment sub-policy: the op, its probability and its
/// magnitude bin (of [`AUTO_AUGMENT_BINS`]; `None` for ops without one).
pub(crate) type PolicyOp = (Op, f64, Option<usize>);

/// AutoAugment's ImageNet policy (Cubuk et al. 2019, "AutoAugment: Learning
/// Augmentation Strategies from Data"), as torchvision lists it: 25
/// sub-policies of two ops each.
pub(crate) const IMAGENET_POLICY: [[PolicyOp; 2]; 25] = {
    use Op::*;
    [
        [(Posterize, 0.4, Some(8)), (Rotate, 0.6, Some(9))],
        [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
        [(Equalize, 0.8, None), (Equalize, 0.6, None)],
        [(Posterize, 0.6, Some(7)), (Posterize, 0.6, Some(6))],
        [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
        [(Equalize, 0.4, None), (Rotate, 0.8, Some(8))],
        [(Solarize, 0.6, Some(3)), (Equalize, 0.6, None)],
        [(Posterize, 0.8, Some(5)), (Equalize, 1.0, None)],
        [(Rotate, 0.2, Some(3)), (Solarize, 0.6, Some(8))],
        [(Equalize, 0.6, None), (Posterize, 0.4, Some(6))],
        [(Rotate, 0.8, Some(8)), (Color, 0.4, Some(0))],
        [(Rotate, 0.4, Some(9)), (Equalize, 0.6, None)],
        [(Equalize, 0.0, None), (Equalize, 0.8, None)],
        [(Invert, 0.6, None), (Equalize, 1.0, None)],
        [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
        [(Rotate, 0.8, Some(8)), (Color, 1.0, Some(2))],
        [(Color, 0.8, Some(8)), (Solarize, 0.8, Some(7))],
        [(Sharpness, 0.4, Some(7)), (Invert, 0.6, None)],
        [(ShearX, 0.6, Some(5)), (Equalize, 1.0, None)],
        [(Color, 0.4, Some(0)), (Equalize, 0.6, None)],
        [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
        [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
        [(Invert, 0.6, None), (Equalize, 1.0, None)],
        [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
        [(Equalize, 0.8, None), (Equalize, 0.6, None)],
    ]
};

/// The magnitude of `op` at AutoAugment bin `bin` for a `width`×`height`
/// image (torchvision's `_augmentation_space(10, …)`), and whether it is signed.
pub(crate) fn auto_augment_magnitude(op: Op, bin: usize, width: u32, height: u32) -> (f64, bool) {
    narrow_magnitude(op, bin, AUTO_AUGMENT_BINS, width, height)
}

/// One AutoAugment draw with the ImageNet policy: a sub-policy uniformly,
/// then each of its ops with its probability, at its fixed magnitude with a
/// random sign where the op has one (torchvision's `AutoAugment`).
pub fn auto_augment(img: &Image, rng: &mut Rng) -> Image {
    let mut out = img.clone();
    for &(op, p, bin) in &IMAGENET_POLICY[rng.below(IMAGENET_POLICY.len())] {
        let sign_negative = rng.bool(0.5);
        if !rng.bool(p) {
            continue;
        }
        let (m, signed) = bin.map_or((0.0, false), |b| auto_augment_magnitude(op, b, img.width, img.height));
        out = apply(&out, op, if signed && sign_negative { -m } else { m });
    }
    out
}

/// torchvision's `RandomErasing`: with probability `p`, one rectangle of
/// `scale` of the area and an aspect ratio log-uniform in `ratio` (10 tries
/// to fit it) is filled with `value`, or noise.
pub(crate) fn erase(img: &mut Image, e: &crate::recipe::Erasing, rng: &mut Rng) {
    if !rng.bool(e.p) {
        return;
    }
    let (w, h) = (img.width as usize, img.height as usize);
    let area = (w * h) as f64;
    for _ in 0..10 {
        let target = area * rng.uniform(e.scale.0, e.scale.1);
        let aspect = rng.uniform(e.ratio.0.ln(), e.ratio.1.ln()).exp();
        let (eh, ew) = ((target * aspect).sqrt().round() as usize, (target / aspect).sqrt().round() as usize);
        if eh == 0 || ew == 0 || eh >= h || ew >= w {
            continue;
        }
        let (top, left) = (rng.below(h - eh + 1), rng.below(w - ew + 1));
        for y in top..top + eh {
            for v in &mut img.data[(y * w + left) * 3..(y * w + left + ew) * 3] {
                *v = match e.value {
                    Some(level) => level as f32,
                    None => rng.below(256) as f32,
                };
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_named(name: &str) -> Op {
        *Op::ALL.iter().chain([&Op::Invert]).find(|o| format!("{o:?}") == name).unwrap()
    }

    /// `tests/fixtures/trivial_augment.json`, written by
    /// `scripts/trivial-augment-fixture.py` with torchvision's own ops.
    #[test]
    fn ops_match_torchvision() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trivial_augment.json");
        let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (w, h) = (f["width"].as_u64().unwrap() as u32, f["height"].as_u64().unwrap() as u32);
        let pixels = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        };
        let img = Image { width: w, height: h, data: pixels(&f["input"]) };
        for case in f["cases"].as_array().unwrap() {
            let op = op_named(case["op"].as_str().unwrap());
            let m = case["magnitude"].as_f64().unwrap();
            let want = pixels(&case["output"]);
            let got = apply(&img, op, m).data;
            // torchvision truncates uint8 grey levels inside its blends; one level apart at most.
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1.0, "{op:?} at {m}: differs by up to {worst} levels");
        }
        let bins: Vec<f64> =
            f["magnitude_bins"]["Brightness"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let posterize: Vec<f64> =
            f["magnitude_bins"]["Posterize"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for b in 0..BINS {
            assert!((Op::Brightness.magnitude(b).0 - bins[b]).abs() < 1e-6, "bin {b}");
            assert_eq!(Op::Posterize.magnitude(b).0, posterize[b], "bin {b}");
        }
    }

    /// The ImageNet policy and AutoAugment's magnitudes, entry by entry,
    /// against torchvision's (same fixture).
    #[test]
    fn auto_augment_policy_and_magnitudes_match_torchvision() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/trivial_augment.json");
        let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let (w, h) = (f["width"].as_u64().unwrap() as u32, f["height"].as_u64().unwrap() as u32);
        let aa = &f["auto_augment"];
        let policy = aa["policy"].as_array().unwrap();
        assert_eq!(policy.len(), IMAGENET_POLICY.len());
        for (want, got) in policy.iter().zip(&IMAGENET_POLICY) {
            for (w_op, &(op, p, bin)) in want.as_array().unwrap().iter().zip(got) {
                assert_eq!(format!("{op:?}"), w_op[0].as_str().unwrap());
                assert_eq!(p, w_op[1].as_f64().unwrap());
                assert_eq!(bin, w_op[2].as_u64().map(|b| b as usize));
            }
        }
        for (name, m) in aa["magnitudes"].as_object().unwrap() {
            let op = op_named(name);
            let signed = m["signed"].as_bool().unwrap();
            let values = m["values"].as_array().unwrap();
            // Ops without a magnitude have one value (0); the rest one per bin.
            for (bin, v) in values.iter().enumerate() {
                let (got, got_signed) = auto_augment_magnitude(op, bin, w, h);
                assert!((got - v.as_f64().unwrap()).abs() < 1e-4, "{name} bin {bin}: {got} vs {v}");
                assert_eq!(got_signed, signed, "{name}");
            }
        }
    }

    #[test]
    fn erasing_fills_one_rectangle_of_the_asked_size() {
        let cfg = crate::recipe::Erasing { p: 1.0, scale: (0.1, 0.2), ratio: (0.5, 2.0), value: Some(7.0) };
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let mut img = Image { width: 40, height: 30, data: vec![200.0; 40 * 30 * 3] };
            erase(&mut img, &cfg, &mut rng);
            let erased: Vec<usize> = (0..40 * 30).filter(|i| img.data[i * 3] == 7.0).collect();
            let share = erased.len() as f64 / 1200.0;
            // Rounding the sides moves the area a little around the asked range.
            assert!((0.07..=0.25).contains(&share), "{share}");
            // One rectangle: the bounding box of the erased pixels is full.
            let (xs, ys): (Vec<usize>, Vec<usize>) = erased.iter().map(|i| (i % 40, i / 40)).unzip();
            let bw = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
            let bh = ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1;
            assert_eq!(bw * bh, erased.len());
        }
        let never = crate::recipe::Erasing { p: 0.0, ..cfg };
        let mut img = Image { width: 8, height: 8, data: vec![1.0; 192] };
        erase(&mut img, &never, &mut rng);
        assert!(img.data.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn every_op_is_drawn_and_the_image_keeps_its_size() {
        let img = Image { width: 9, height: 7, data: (0..9 * 7 * 3).map(|i| (i * 7 % 256) as f32).collect() };
        let mut rng = Rng::new(5);
        let (mut changed, mut auto_changed) = (0, 0);
        for _ in 0..200 {
            let out = trivial_augment(&img, &mut rng);
            assert_eq!((out.width, out.height, out.data.len()), (9, 7, img.data.len()));
            changed += usize::from(out.data != img.data);
            let out = rand_augment(&img, 2, 9, &mut rng);
            assert!(out.data.iter().all(|v| (0.0..=255.0).contains(v)));
            let out = auto_augment(&img, &mut rng);
            assert_eq!((out.width, out.height), (9, 7));
            auto_changed += usize::from(out.data != img.data);
            assert!(out.data.iter().all(|v| (0.0..=255.0).contains(v)));
        }
        assert!(changed > 120, "most draws change the image ({changed} of 200)");
        // Most sub-policies apply at least one op (each with probability 0.2–1).
        assert!(auto_changed > 120, "AutoAugment changes most images ({auto_changed} of 200)");
    }
}
