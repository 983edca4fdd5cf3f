//! `tlab data DIR`: the data doctor. What is in a folder of images, and
//! what is wrong with it, before anything trains.
//!
//! The issue types and their default thresholds are CleanVision's (0.3.7,
//! cleanlab): an image is
//! - **dark** when the 99th percentile of its pixels' perceived brightness
//!   `√(0.241 R² + 0.691 G² + 0.068 B²) / 255` is under 0.32, **light** when
//!   one minus the 5th percentile is under 0.05;
//! - **low information** when a tenth of the entropy of its histogram (bits,
//!   every channel's 256 bins together) is under 0.3;
//! - **blurry** when `1 − exp(−0.01 · σ(edges))` of its grey image (at most
//!   256 px a side, edges by the 3×3 Laplacian PIL calls `FIND_EDGES`), plus
//!   the same of the grey levels' standard deviation where that exceeds
//!   0.18, is under 0.29;
//! - of **odd aspect ratio** when `min(w/h, h/w)` is under 0.35, of **odd
//!   size** when `√(w·h)` is more than three interquartile ranges outside
//!   the quartiles, **greyscale** when the file stores one channel;
//! - an **exact duplicate** of another with the same decoded pixels, a
//!   **near duplicate** with a 64-bit perceptual hash (pHash: the signs of
//!   the 8×8 lowest frequencies of the 32×32 grey image's DCT against their
//!   median) equal to another's (CleanVision's rule; `--near-bits` allows
//!   that many differing bits); reported within and **across splits**
//!   (leakage: the same photo in train and valid inflates accuracy).
//!
//! Besides: unreadable files, tiny images (a side under 32 px), images per
//! class and split, formats, size and aspect spread, the imbalance ratio,
//! and a mosaic per class.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::{DynamicImage, GenericImageView, RgbImage};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

pub mod labels;

/// CleanVision's default thresholds (see the module docs).
const DARK: f64 = 0.32;
const LIGHT: f64 = 0.05;
const LOW_INFORMATION: f64 = 0.3;
const ENTROPY_FACTOR: f64 = 0.1;
const BLURRY: f64 = 0.29;
const BLUR_FACTOR: f64 = 0.01;
const BLUR_COLOUR: f64 = 0.18;
const BLUR_MAX_SIDE: u32 = 256;
const ODD_ASPECT: f64 = 0.35;
const ODD_SIZE_IQR: f64 = 3.0;
/// Not CleanVision's: a side under this many pixels.
const TINY: u32 = 32;
/// CleanVision's rule for near duplicates: equal perceptual hashes.
/// `tlab data --near-bits N` widens it (a resized or recompressed copy
/// often flips a bit or two of the 64; on 28-px Fashion-MNIST two bits
/// already join different boots).
pub const NEAR_BITS: u32 = 0;

/// What one image is like.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub path: PathBuf,
    pub split: String,
    pub class: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// Every issue found, by CleanVision's names (plus `tiny`).
    pub issues: Vec<&'static str>,
    #[serde(skip)]
    exact: u64,
    #[serde(skip)]
    phash: u64,
}

/// A group of images that are the same (exactly or to the perceptual hash).
#[derive(Debug, Clone, Serialize)]
pub struct DuplicateSet {
    pub kind: &'static str,
    /// The set spans more than one split: leakage.
    pub across_splits: bool,
    pub paths: Vec<PathBuf>,
}

/// Images per class and split.
#[derive(Debug, Clone, Serialize)]
pub struct ClassRow {
    pub class: String,
    pub train: usize,
    pub valid: usize,
    pub test: usize,
}

/// The whole diagnosis: `tlab data DIR --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub root: PathBuf,
    pub classes: Vec<ClassRow>,
    /// Largest class over smallest, in train.
    pub imbalance: f64,
    pub formats: Vec<(String, usize)>,
    /// Smallest, median and largest `width×height` (by area).
    pub sizes: [(u32, u32); 3],
    pub greyscale_share: f64,
    /// `(issue, count)`, in CleanVision's order.
    pub issue_counts: Vec<(&'static str, usize)>,
    pub duplicates: Vec<DuplicateSet>,
    /// Files that do not decode, with why.
    pub unreadable: Vec<(PathBuf, String)>,
    pub images: Vec<ImageReport>,
}

/// The issue names, in the order reports list them.
pub(crate) const ISSUES: &[&str] = &[
    "exact_duplicates",
    "near_duplicates",
    "dark",
    "light",
    "low_information",
    "blurry",
    "odd_aspect_ratio",
    "odd_size",
    "grayscale",
    "tiny",
];

/// Examines every image under `dir` (a `train/` [+ `valid/`, `test/`]
/// layout, or class folders alone).
/// `near_bits`: how many of the 64 perceptual-hash bits near duplicates may
/// differ in ([`NEAR_BITS`] by default).
pub fn diagnose(dir: &Path, near_bits: u32) -> Result<Diagnosis> {
    let layout = crate::tools::starter::layout(dir);
    diagnose_splits(dir, &layout.train, layout.valid.as_deref(), layout.test.as_deref(), near_bits)
}

/// The same for split folders given one by one (a recipe's `[data]`);
/// `root` names the data set in the report.
pub(crate) fn diagnose_splits(
    root: &Path,
    train: &Path,
    valid: Option<&Path>,
    test: Option<&Path>,
    near_bits: u32,
) -> Result<Diagnosis> {
    let dir = root;
    let mut skipped = Vec::new();
    let mut listed = Vec::new();
    for (split, folder) in [("train", Some(train)), ("valid", valid), ("test", test)] {
        let Some(folder) = folder else { continue };
        for (class, files) in crate::data::scan(folder, &mut skipped)? {
            listed.extend(files.into_iter().map(|f| (split, class.clone(), f)));
        }
    }
    let examined: Vec<std::result::Result<ImageReport, (PathBuf, String)>> =
        listed.into_par_iter().map(|(split, class, path)| examine(split, &class, &path)).collect();
    let (mut images, mut unreadable) = (Vec::new(), Vec::new());
    for e in examined {
        match e {
            Ok(r) => images.push(r),
            Err(bad) => unreadable.push(bad),
        }
    }
    if images.is_empty() {
        return Err(Error::data(dir, "no readable images in class folders"));
    }
    mark_odd_sizes(&mut images);
    let duplicates = duplicate_sets(&mut images, near_bits);
    Ok(summarise(dir, images, duplicates, unreadable))
}

fn summarise(
    dir: &Path,
    images: Vec<ImageReport>,
    duplicates: Vec<DuplicateSet>,
    unreadable: Vec<(PathBuf, String)>,
) -> Diagnosis {
    let mut classes: Vec<ClassRow> = Vec::new();
    for im in &images {
        let row = match classes.iter_mut().find(|c| c.class == im.class) {
            Some(r) => r,
            None => {
                classes.push(ClassRow { class: im.class.clone(), train: 0, valid: 0, test: 0 });
                classes.last_mut().expect("just pushed")
            }
        };
        match im.split.as_str() {
            "train" => row.train += 1,
            "valid" => row.valid += 1,
            _ => row.test += 1,
        }
    }
    classes.sort_by(|a, b| a.class.cmp(&b.class));
    let train: Vec<usize> = classes.iter().map(|c| c.train).filter(|&n| n > 0).collect();
    let imbalance = match (train.iter().max(), train.iter().min()) {
        (Some(&max), Some(&min)) => max as f64 / min as f64,
        _ => 1.0,
    };
    let mut formats: HashMap<String, usize> = HashMap::new();
    for im in &images {
        *formats.entry(im.format.clone()).or_default() += 1;
    }
    let mut formats: Vec<(String, usize)> = formats.into_iter().collect();
    formats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut by_area: Vec<(u32, u32)> = images.iter().map(|i| (i.width, i.height)).collect();
    by_area.sort_by_key(|&(w, h)| u64::from(w) * u64::from(h));
    let sizes = [by_area[0], by_area[by_area.len() / 2], by_area[by_area.len() - 1]];
    let grey = images.iter().filter(|i| i.issues.contains(&"grayscale")).count();
    let issue_counts = ISSUES.iter().map(|&k| (k, images.iter().filter(|i| i.issues.contains(&k)).count())).collect();
    Diagnosis {
        root: dir.to_path_buf(),
        classes,
        imbalance,
        formats,
        sizes,
        greyscale_share: grey as f64 / images.len() as f64,
        issue_counts,
        duplicates,
        unreadable,
        images,
    }
}

/// Decodes one file and scores it.
fn examine(split: &str, class: &str, path: &Path) -> std::result::Result<ImageReport, (PathBuf, String)> {
    let bad = |m: String| (path.to_path_buf(), m);
    let reader = image::ImageReader::open(path).map_err(|e| bad(e.to_string()))?;
    let reader = reader.with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let format = reader.format().map_or("unknown".to_string(), |f| format!("{f:?}").to_lowercase());
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    let (width, height) = img.dimensions();
    let rgb = img.to_rgb8();
    let mut issues = Vec::new();
    let brightness = sorted(pixel_brightness(&rgb));
    if percentile(&brightness, 99.0) < DARK {
        issues.push("dark");
    }
    if 1.0 - percentile(&brightness, 5.0) < LIGHT {
        issues.push("light");
    }
    let stored_grey = matches!(
        img.color(),
        image::ColorType::L8 | image::ColorType::L16 | image::ColorType::La8 | image::ColorType::La16
    );
    // PIL's entropy is over the image as stored: one histogram for a grey
    // image (three equal ones of its RGB copy would add log2(3) bits).
    let bits = if stored_grey { grey_entropy(&img.to_luma8()) } else { entropy(&rgb) };
    if (ENTROPY_FACTOR * bits).min(1.0) < LOW_INFORMATION {
        issues.push("low_information");
    }
    if blur_score(&img) < BLURRY {
        issues.push("blurry");
    }
    if f64::from(width.min(height)) / f64::from(width.max(height)) < ODD_ASPECT {
        issues.push("odd_aspect_ratio");
    }
    if stored_grey {
        issues.push("grayscale");
    }
    if width.min(height) < TINY {
        issues.push("tiny");
    }
    let exact = pixel_hash(&rgb);
    let phash = phash(&img);
    Ok(ImageReport {
        path: path.to_path_buf(),
        split: split.into(),
        class: class.into(),
        format,
        width,
        height,
        issues,
        exact,
        phash,
    })
}

/// Perceived brightness of every pixel, in [0, 1].
fn pixel_brightness(rgb: &RgbImage) -> Vec<f64> {
    rgb.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(f64::from);
            (0.241 * r * r + 0.691 * g * g + 0.068 * b * b).sqrt() / 255.0
        })
        .collect()
}

/// NumPy's default (linear) percentile of values sorted ascending.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Population standard deviation (NumPy's and PIL's `ImageStat`'s).
fn std_dev(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// Entropy in bits of the image's histogram, every channel's 256 bins
/// together (as PIL's `Image.entropy` of an RGB image).
fn entropy(rgb: &RgbImage) -> f64 {
    let mut hist = [0u64; 768];
    for p in rgb.pixels() {
        for (c, &v) in p.0.iter().enumerate() {
            hist[c * 256 + usize::from(v)] += 1;
        }
    }
    bits(&hist)
}

/// Entropy in bits of a grey image's 256-bin histogram.
fn grey_entropy(grey: &image::GrayImage) -> f64 {
    let mut hist = [0u64; 256];
    for p in grey.pixels() {
        hist[usize::from(p.0[0])] += 1;
    }
    bits(&hist)
}

fn bits(hist: &[u64]) -> f64 {
    let total: u64 = hist.iter().sum();
    hist.iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = n as f64 / total as f64;
            -p * p.log2()
        })
        .sum()
}

/// CleanVision's blurriness score (higher is sharper; see the module docs).
fn blur_score(img: &DynamicImage) -> f64 {
    let (w, h) = img.dimensions();
    let ratio = f64::from(w.max(h)) / f64::from(BLUR_MAX_SIDE);
    let img = if ratio > 1.0 {
        let (nw, nh) = (((f64::from(w) / ratio) as u32).max(1), ((f64::from(h) / ratio) as u32).max(1));
        img.resize_exact(nw, nh, image::imageops::FilterType::CatmullRom)
    } else {
        img.clone()
    };
    let grey = img.to_luma8();
    let (w, h) = grey.dimensions();
    // PIL's FIND_EDGES: the 3×3 kernel with 8 in the middle and -1 around,
    // clipped to 0..=255, border pixels copied from the input.
    let mut edges = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let v = if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                f64::from(grey.get_pixel(x, y).0[0])
            } else {
                let mut s = 0i32;
                for (dx, dy) in [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (1, 2), (2, 2)] {
                    s -= i32::from(grey.get_pixel(x + dx - 1, y + dy - 1).0[0]);
                }
                s += 8 * i32::from(grey.get_pixel(x, y).0[0]);
                f64::from(s.clamp(0, 255))
            };
            edges.push(v);
        }
    }
    let sd = std_dev(&edges);
    // The grey levels' spread (PIL's ImageStat stddev): a low-contrast
    // image without edges is blurry, a contrasted one is not.
    let levels: Vec<f64> = grey.pixels().map(|p| f64::from(p.0[0])).collect();
    let level_sd = std_dev(&levels);
    let blur = 1.0 - (-sd * BLUR_FACTOR).exp();
    let spread = 1.0 - (-level_sd * BLUR_FACTOR).exp();
    (blur + if spread > BLUR_COLOUR { spread } else { 0.0 }).min(1.0)
}

/// A hash of the decoded pixels and their size: equal for exact duplicates.
fn pixel_hash(rgb: &RgbImage) -> u64 {
    let mut h = crate::train::cache::KeyHasher::default();
    h.u64(u64::from(rgb.width())).u64(u64::from(rgb.height())).bytes(rgb.as_raw());
    h.finish()
}

/// The 64-bit perceptual hash (see the module docs).
fn phash(img: &DynamicImage) -> u64 {
    const N: usize = 32;
    let grey = img.to_luma8();
    let small = image::imageops::resize(&grey, N as u32, N as u32, image::imageops::FilterType::Lanczos3);
    let px: Vec<f64> = small.pixels().map(|p| f64::from(p.0[0])).collect();
    // DCT-II over rows, then columns; only the 8×8 lowest frequencies.
    let cos: Vec<f64> = (0..8 * N)
        .map(|i| (std::f64::consts::PI / N as f64) * (i % N) as f64 + std::f64::consts::PI / (2.0 * N as f64))
        .enumerate()
        .map(|(i, a)| ((i / N) as f64 * a).cos())
        .collect();
    let mut rows = vec![0f64; N * 8];
    for y in 0..N {
        for k in 0..8 {
            rows[y * 8 + k] = (0..N).map(|x| px[y * N + x] * cos[k * N + x]).sum();
        }
    }
    let mut low = [0f64; 64];
    for k in 0..8 {
        for j in 0..8 {
            low[k * 8 + j] = (0..N).map(|y| rows[y * 8 + j] * cos[k * N + y]).sum();
        }
    }
    let mut sorted = low;
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[31] + sorted[32]) / 2.0;
    low.iter().enumerate().fold(0u64, |h, (i, &v)| h | (u64::from(v > median) << i))
}

/// Marks `odd_size`: `√(w·h)` beyond three IQRs from the quartiles.
fn mark_odd_sizes(images: &mut [ImageReport]) {
    let sizes: Vec<f64> = images.iter().map(|i| (f64::from(i.width) * f64::from(i.height)).sqrt()).collect();
    let ordered = sorted(sizes.clone());
    let (q1, q3) = (percentile(&ordered, 25.0), percentile(&ordered, 75.0));
    let iqr = q3 - q1;
    let (lo, hi) = (q1 - ODD_SIZE_IQR * iqr, q3 + ODD_SIZE_IQR * iqr);
    for (im, s) in images.iter_mut().zip(sizes) {
        if s < lo || s > hi {
            im.issues.push("odd_size");
        }
    }
}

/// Groups equal pixel hashes (exact) and close perceptual hashes (near,
/// exact duplicates aside), and marks their members.
fn duplicate_sets(images: &mut [ImageReport], near_bits: u32) -> Vec<DuplicateSet> {
    let mut exact: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, im) in images.iter().enumerate() {
        exact.entry(im.exact).or_default().push(i);
    }
    let exact: Vec<Vec<usize>> = exact.into_values().filter(|g| g.len() > 1).collect();
    let mut near = near_groups(images, near_bits);
    // A set whose images are all exact copies of one another is reported once, as exact.
    near.retain(|g| g.iter().any(|&i| images[i].exact != images[g[0]].exact));
    let mut out = Vec::new();
    for (kind, mut sets) in [("exact_duplicates", exact), ("near_duplicates", near)] {
        sets.iter_mut().for_each(|g| g.sort_unstable());
        sets.sort();
        for g in sets {
            for &i in &g {
                images[i].issues.push(kind);
            }
            let across_splits = g.iter().any(|&i| images[i].split != images[g[0]].split);
            out.push(DuplicateSet { kind, across_splits, paths: g.iter().map(|&i| images[i].path.clone()).collect() });
        }
    }
    out
}

/// Images whose perceptual hashes differ in at most `near_bits` bits,
/// joined transitively (union-find over all pairs: 50 000 images are 1.25
/// billion XOR-and-popcounts, a second or two).
fn near_groups(images: &[ImageReport], near_bits: u32) -> Vec<Vec<usize>> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let hashes: Vec<u64> = images.iter().map(|i| i.phash).collect();
    let pairs: Vec<(usize, usize)> = (0..hashes.len())
        .into_par_iter()
        .flat_map_iter(|i| {
            let hashes = &hashes;
            (i + 1..hashes.len())
                .filter(move |&j| (hashes[i] ^ hashes[j]).count_ones() <= near_bits)
                .map(move |j| (i, j))
        })
        .collect();
    let mut parent: Vec<usize> = (0..hashes.len()).collect();
    for (i, j) in pairs {
        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
        parent[a.max(b)] = a.min(b);
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..hashes.len() {
        groups.entry(root(&mut parent, i)).or_default().push(i);
    }
    groups.into_values().filter(|g| g.len() > 1).collect()
}

impl Diagnosis {
    /// The report as lines for the terminal and `report.md`.
    pub fn lines(&self) -> Vec<String> {
        let shown = |p: &Path| crate::util::paths::shown(p).display().to_string();
        let mut out =
            vec![format!("{}: {} images, {} classes", shown(&self.root), self.images.len(), self.classes.len())];
        out.push("| class | train | valid | test |".into());
        out.push("|---|---|---|---|".into());
        out.extend(self.classes.iter().map(|c| format!("| {} | {} | {} | {} |", c.class, c.train, c.valid, c.test)));
        let formats: Vec<String> = self.formats.iter().map(|(f, n)| format!("{f} {n}")).collect();
        let [small, mid, large] = self.sizes;
        out.push(format!(
            "imbalance {:.1}× · formats {} · sizes {}×{} / {}×{} / {}×{} (smallest / median / largest) · greyscale {:.0} %",
            self.imbalance,
            formats.join(", "),
            small.0,
            small.1,
            mid.0,
            mid.1,
            large.0,
            large.1,
            100.0 * self.greyscale_share
        ));
        out.push("issues (CleanVision's types and default thresholds):".into());
        let wide = self.data_set_wide();
        for (issue, n) in &self.issue_counts {
            let note = if wide.contains(issue) { "  (most images: a trait of the data set)" } else { "" };
            out.push(format!("  {issue:<18} {n:>6}{note}"));
        }
        out.push(format!("  {:<18} {:>6}", "unreadable", self.unreadable.len()));
        for (path, why) in &self.unreadable {
            out.push(format!("    {}: {why}", shown(path)));
        }
        // Leakage changes what a run's accuracy means: it comes right after the headline.
        let leaks: Vec<&DuplicateSet> = self.duplicates.iter().filter(|d| d.across_splits).collect();
        if !leaks.is_empty() {
            let mut block = vec![format!(
                "LEAKAGE: {} duplicate set(s) span splits (the same image in train and valid/test):",
                leaks.len()
            )];
            for d in leaks.iter().take(10) {
                let paths: Vec<String> = d.paths.iter().map(|p| shown(p)).collect();
                block.push(format!("  {}: {}", d.kind, paths.join(" = ")));
            }
            out.splice(1..1, block);
        }
        out
    }

    /// Writes the diagnosis into `out` (created if missing): report.json,
    /// report.md, issues.csv (one row per image with an issue) and
    /// mosaic-CLASS.png per class.
    pub fn write(&self, out: &Path) -> Result<()> {
        use crate::fs::{atomic_write, csv_field};
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Json { what: "report.json", source })?;
        atomic_write(&out.join("report.json"), json.as_bytes())?;
        atomic_write(&out.join("report.md"), (self.lines().join("\n") + "\n").as_bytes())?;
        let mut csv = String::from("path,split,class,issues\n");
        for im in self.images.iter().filter(|i| !i.issues.is_empty()) {
            let path = csv_field(&im.path.display().to_string());
            csv += &format!("{path},{},{},{}\n", im.split, csv_field(&im.class), im.issues.join(" "));
        }
        atomic_write(&out.join("issues.csv"), csv.as_bytes())?;
        for c in &self.classes {
            let png = crate::present::views::png_bytes(&self.mosaic(&c.class, 32))?;
            atomic_write(&out.join(format!("mosaic-{}.png", c.class)), &png)?;
        }
        Ok(())
    }

    /// Issues that flag most of the images (greyscale or tiny for a whole
    /// MNIST-like set): a property of the data set, not of an image, so
    /// mosaics do not caption every tile with them.
    pub(crate) fn data_set_wide(&self) -> Vec<&'static str> {
        let half = self.images.len() / 2;
        self.issue_counts.iter().filter(|(_, n)| *n > half).map(|(k, _)| *k).collect()
    }

    /// A mosaic of up to `n` images of `class`, the flagged ones first, each
    /// captioned with its split and file name and, in red, its issues.
    pub fn mosaic(&self, class: &str, n: usize) -> RgbImage {
        let wide = self.data_set_wide();
        let own =
            |i: &ImageReport| -> Vec<&'static str> { i.issues.iter().copied().filter(|k| !wide.contains(k)).collect() };
        let mut members: Vec<&ImageReport> = self.images.iter().filter(|i| i.class == class).collect();
        members.sort_by_key(|i| own(i).is_empty());
        let tiles: Vec<crate::util::draw::Captioned> = members
            .into_iter()
            .take(n)
            .filter_map(|i| {
                let img = image::open(&i.path).ok()?.to_rgb8();
                let name = i.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let mut caption = vec![(format!("{}/{name}", i.split), crate::util::draw::DARK_GREY)];
                let issues = own(i);
                if !issues.is_empty() {
                    caption.push((issues.join(", "), image::Rgb([200, 40, 40])));
                }
                Some((img, caption))
            })
            .collect();
        crate::util::draw::gallery(&tiles, 8, 96)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_numpys_linear_one() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
    }

    #[test]
    fn flat_images_are_low_information_and_dark_or_light() {
        let black = RgbImage::from_pixel(40, 40, image::Rgb([5, 5, 5]));
        assert!(entropy(&black) < 3.0);
        assert!(percentile(&sorted(pixel_brightness(&black)), 99.0) < DARK);
        let white = RgbImage::from_pixel(40, 40, image::Rgb([252, 252, 252]));
        assert!(1.0 - percentile(&sorted(pixel_brightness(&white)), 5.0) < LIGHT);
        // PIL's FIND_EDGES copies the border pixels, so a small flat image has
        // edges of its own (and CleanVision does not call it blurry).
        let flat = DynamicImage::ImageRgb8(RgbImage::from_pixel(200, 200, image::Rgb([120, 120, 120])));
        assert!(blur_score(&flat) < BLURRY);
    }

    #[test]
    fn a_resized_copy_is_a_near_duplicate_and_an_other_picture_is_not() {
        let blob = RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([((x as f32 - 24.0).hypot(y as f32 - 36.0) * 5.0) as u8, (x * y / 16) as u8, 90])
        });
        let big = image::imageops::resize(&blob, 80, 80, image::imageops::FilterType::Triangle);
        let other = RgbImage::from_fn(64, 64, |x, y| image::Rgb([((x ^ y) * 8) as u8, 30, 200]));
        let report = |img: RgbImage, name: &str| {
            let img = DynamicImage::ImageRgb8(img);
            ImageReport {
                path: name.into(),
                split: "train".into(),
                class: "a".into(),
                format: "png".into(),
                width: 64,
                height: 64,
                issues: vec![],
                exact: pixel_hash(&img.to_rgb8()),
                phash: phash(&img),
            }
        };
        let images =
            vec![report(blob.clone(), "blob"), report(other, "other"), report(big, "big"), report(blob, "copy")];
        let kinds = |near_bits| {
            let sets = duplicate_sets(&mut images.clone(), near_bits);
            sets.iter().map(|s| (s.kind, s.paths.len())).collect::<Vec<_>>()
        };
        // The resized copy's hash differs in two bits: CleanVision's rule
        // misses it, four bits find it; the other picture stays apart.
        assert_eq!(kinds(NEAR_BITS), [("exact_duplicates", 2)]);
        assert_eq!(kinds(4), [("exact_duplicates", 2), ("near_duplicates", 3)]);
    }

    #[test]
    fn a_grey_file_is_low_information_by_its_own_histogram() {
        // Four grey levels: 2 bits as stored (under CleanVision's 3), but
        // 3.58 bits over the three equal histograms of its RGB copy.
        let dir = std::env::temp_dir().join(format!("tlab-doctor-grey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let grey = image::GrayImage::from_fn(64, 64, |x, _| image::Luma([(x / 16 * 60) as u8]));
        grey.save(dir.join("grey.png")).unwrap();
        DynamicImage::ImageLuma8(grey).to_rgb8().save(dir.join("rgb.png")).unwrap();
        let grey = examine("train", "a", &dir.join("grey.png")).unwrap();
        let rgb = examine("train", "a", &dir.join("rgb.png")).unwrap();
        assert!(grey.issues.contains(&"low_information") && grey.issues.contains(&"grayscale"), "{:?}", grey.issues);
        assert!(!rgb.issues.contains(&"low_information"), "{:?}", rgb.issues);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
