//! Image folders in the folder-per-class layout (Keras
//! `flow_from_directory`, torchvision `ImageFolder`): class names are the
//! sorted sub-folder names. Images are decoded in parallel once, squashed to
//! the recipe's `image_size` (as Keras' `target_size` does) and kept in memory
//! as RGB bytes; augmentation and normalisation happen per batch.

pub mod csv;
pub mod leakage;
pub mod pixels;

pub use pixels::Pixels;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::augment::{Augmenter, Image, Rng};
use crate::error::{Error, Result};
use crate::recipe::{DataConfig, ImageCache};

/// File extensions handed to the decoder; anything else is skipped and counted.
const IMAGE_EXTENSIONS: &[&str] =
    &["png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "ppm", "pgm", "pnm", "pbm"];

/// Whether `path` has one of the image extensions tlab decodes.
pub(crate) fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The images of one split.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub paths: Vec<PathBuf>,
    pub labels: Vec<usize>,
    /// RGB bytes, `size × size × 3` per image, in memory or streamed.
    pub pixels: Pixels,
}

impl Split {
    /// The same images at `from` → `to` pixels square (bilinear, as decoding).
    fn resized(&self, from: u32, to: u32) -> Split {
        let pixels = match &self.pixels {
            Pixels::Memory(v) => Pixels::Memory(
                v.par_iter()
                    .map(|px| match image::RgbImage::from_raw(from, from, px.clone()) {
                        Some(img) => resize(&img, to),
                        None => vec![0; (to * to * 3) as usize],
                    })
                    .collect(),
            ),
            Pixels::Stream(s) => Pixels::Stream(std::sync::Arc::new(s.resized(to))),
        };
        Split { paths: self.paths.clone(), labels: self.labels.clone(), pixels }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The splits, their classes, and what was skipped on the way.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub size: u32,
    pub train: Split,
    pub valid: Split,
    /// The held-out test split (`[data] test`, or a CSV's `test` rows).
    pub test: Option<Split>,
    /// Files that were not images, or failed to decode, and CSV rows that
    /// could not be used, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Dataset {
    /// Every split at `size`×`size`, resized from the decoded pixels: what a
    /// step with its own `image_size` trains on (progressive resizing), with
    /// no second decode.
    pub fn resized(&self, size: u32) -> Dataset {
        let from = self.size;
        Dataset {
            classes: self.classes.clone(),
            size,
            train: self.train.resized(from, size),
            valid: self.valid.resized(from, size),
            test: self.test.as_ref().map(|t| t.resized(from, size)),
            skipped: self.skipped.clone(),
        }
    }
}

/// Image files with their labels.
pub(crate) type Labelled = Vec<(PathBuf, usize)>;

/// Image files and labels per split, before decoding.
#[derive(Default)]
pub(crate) struct Listing {
    pub classes: Vec<String>,
    pub train: Labelled,
    pub valid: Labelled,
    pub test: Labelled,
}

impl Dataset {
    /// Loads the recipe's data. `seed` drives the stratified validation split.
    pub fn load(cfg: &DataConfig, seed: u64) -> Result<Self> {
        let mut skipped = Vec::new();
        let list = match &cfg.csv {
            Some(csv) => crate::data::csv::list(csv, cfg, seed, &mut skipped)?,
            None => list_folders(cfg, seed, &mut skipped)?,
        };
        let (classes, test_list) = (list.classes, list.test);
        let origin = cfg.csv.as_ref().unwrap_or(&cfg.train);
        let images = list.train.len() + list.valid.len() + test_list.len();
        let stream = match (cfg.cache, check_memory_budget(images, cfg.image_size, origin)) {
            (ImageCache::Memory, Err(e)) => return Err(e),
            (ImageCache::None, _) => Some(0),
            (ImageCache::Disk, _) => Some(memory_budget().map_or(0, |(b, _)| b / 2)),
            // Over the budget: stream, with half of it for decoded images
            // (the frozen-feature cache has the other half).
            (ImageCache::Auto, Err(_)) => Some(memory_budget().map_or(0, |(b, _)| b / 2)),
            _ => None,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers.unwrap_or(0))
            .build()
            .map_err(|e| Error::Threads { what: "decode", source: Box::new(e) })?;
        let size = cfg.image_size;
        let mut read = |list: Labelled| match stream {
            None => pool.install(|| decode_all(list, size, &mut skipped)),
            Some(budget) => pool.install(|| stream_all(list, size, budget, cfg.cache, &mut skipped)),
        };
        let train = read(list.train);
        let valid = read(list.valid);
        let test = (!test_list.is_empty()).then(|| read(test_list));
        for (label, class) in classes.iter().enumerate() {
            if !train.labels.contains(&label) {
                return Err(Error::data(
                    origin.join(class),
                    format!("class `{class}` has no readable training images"),
                ));
            }
        }
        if valid.is_empty() {
            let dir = cfg.valid.clone().unwrap_or_else(|| origin.clone());
            return Err(Error::data(dir, "no validation images (add a valid folder or more images per class)"));
        }
        Ok(Dataset { classes, size: cfg.image_size, train, valid, test, skipped })
    }

    /// Pixels (HWC, 0..=255 as f32) of `indices` from `split`, augmented when
    /// `aug` is given. Each image's randomness comes from its own stream
    /// `(seed, index)`, so the result does not depend on thread scheduling.
    pub(crate) fn batch_pixels(&self, split: &Split, indices: &[usize], aug: Option<(&Augmenter, u64)>) -> Vec<f32> {
        let s = self.size;
        let per = (s * s * 3) as usize;
        let mut out = vec![0f32; indices.len() * per];
        out.par_chunks_mut(per).zip(indices.par_iter()).for_each(|(dst, &i)| {
            let Some(src) = split.pixels.get(i) else { return };
            let src = &src[..];
            match aug {
                Some((augmenter, seed)) if !augmenter.is_identity() => {
                    let _t = crate::util::profile::scope("augment");
                    let img = Image::from_rgb8(s, s, src);
                    let mut rng = Rng::derive(seed, i as u64);
                    dst.copy_from_slice(&augmenter.apply(&img, &mut rng).data);
                }
                _ => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = f32::from(v)),
            }
        });
        out
    }
}

/// The classes and the training images of `cfg` (after the validation
/// split where it is carved from `train`), listed without decoding and
/// without looking into a `valid` folder: what `tlab tune` carves its inner
/// split from, so a search never reads the validation images.
pub(crate) fn training_listing(cfg: &DataConfig, seed: u64) -> Result<(Vec<String>, Labelled)> {
    let mut skipped = Vec::new();
    if let Some(csv) = &cfg.csv {
        let list = crate::data::csv::list(csv, cfg, seed, &mut skipped)?;
        return Ok((list.classes, list.train));
    }
    let train_files = scan(&cfg.train, &mut skipped)?;
    let classes: Vec<String> = train_files.iter().map(|(c, _)| c.clone()).collect();
    let per_class: Vec<Vec<PathBuf>> = train_files.into_iter().map(|(_, f)| cap(f, cfg.max_per_class)).collect();
    let train = match cfg.valid {
        Some(_) => per_class.into_iter().enumerate().flat_map(|(l, f)| f.into_iter().map(move |p| (p, l))).collect(),
        None => stratified_split(per_class, cfg.valid_split, seed).0,
    };
    Ok((classes, train))
}

/// Folder-per-class listing: `train`, then `valid` or a stratified split of
/// `train`, and the optional `test` folder.
fn list_folders(cfg: &DataConfig, seed: u64, skipped: &mut Vec<(PathBuf, String)>) -> Result<Listing> {
    let train_files = scan(&cfg.train, skipped)?;
    let classes: Vec<String> = train_files.iter().map(|(c, _)| c.clone()).collect();
    let mut list = Listing { classes, ..Listing::default() };
    match &cfg.valid {
        Some(valid_dir) => {
            for (label, (_, files)) in train_files.into_iter().enumerate() {
                list.train.extend(cap(files, cfg.max_per_class).into_iter().map(|f| (f, label)));
            }
            list.valid = labelled_folder(valid_dir, &list.classes, &cfg.train, "validation", skipped)?;
        }
        None => {
            let per_class = train_files.into_iter().map(|(_, files)| cap(files, cfg.max_per_class)).collect();
            (list.train, list.valid) = stratified_split(per_class, cfg.valid_split, seed);
        }
    }
    if let Some(test_dir) = &cfg.test {
        list.test = labelled_folder(test_dir, &list.classes, &cfg.train, "test", skipped)?;
    }
    Ok(list)
}

/// The images of a folder-per-class `dir` whose classes must be among `classes`.
pub(crate) fn labelled_folder(
    dir: &Path,
    classes: &[String],
    train: &Path,
    what: &str,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<(PathBuf, usize)>> {
    let mut out = Vec::new();
    for (class, files) in scan(dir, skipped)? {
        let label = classes.iter().position(|c| *c == class).ok_or_else(|| {
            Error::data(
                dir.join(&class),
                format!(
                    "class `{class}` is in the {what} folder but not in the training folder {}",
                    crate::util::paths::shown(train).display()
                ),
            )
        })?;
        out.extend(files.into_iter().map(|f| (f, label)));
    }
    Ok(out)
}

/// Holds out `fraction` of each class (at least one image where a class has
/// two or more), seeded: `(train, valid)`, each sorted by path.
pub(crate) fn stratified_split(per_class: Vec<Vec<PathBuf>>, fraction: f64, seed: u64) -> (Labelled, Labelled) {
    let mut rng = Rng::derive(seed, 0x5EED_5917);
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (label, mut files) in per_class.into_iter().enumerate() {
        rng.shuffle(&mut files);
        let n_valid = valid_count(files.len(), fraction);
        for (i, f) in files.into_iter().enumerate() {
            if i < n_valid {
                valid.push((f, label))
            } else {
                train.push((f, label))
            }
        }
    }
    train.sort();
    valid.sort();
    (train, valid)
}

/// Refuses to decode more than the memory budget holds, before decoding a
/// single image: `TLAB_MEMORY_BUDGET_MB` when set, else half the machine's
/// memory (from /proc/meminfo; no limit where that is unavailable).
fn check_memory_budget(images: usize, size: u32, dir: &Path) -> Result<()> {
    let needed = decoded_bytes(images, size);
    let Some((budget, source)) = memory_budget() else { return Ok(()) };
    if needed > budget {
        return Err(Error::data(
            dir,
            format!(
                "{images} images at {size}×{size} need {} MiB decoded, over the memory budget of {} MiB ({source}); \
                 lower image_size, set max_per_class, or stream the images with `cache = \"auto\"` in [data]",
                needed.div_ceil(1024 * 1024),
                budget / (1024 * 1024)
            ),
        ));
    }
    Ok(())
}

/// The memory `images` decoded RGB images of `size × size` take.
pub(crate) fn decoded_bytes(images: usize, size: u32) -> u64 {
    images as u64 * u64::from(size) * u64::from(size) * 3
}

/// How many of a class's `n` images the stratified split puts in validation
/// (at least one when there are two, never all).
pub(crate) fn valid_count(n: usize, valid_split: f64) -> usize {
    let n_valid = ((n as f64) * valid_split).round() as usize;
    n_valid.clamp(usize::from(n >= 2), n.saturating_sub(1))
}

/// The memory tlab allows itself for decoded images and cached features, in
/// bytes, and where the number comes from: `TLAB_MEMORY_BUDGET_MB` when set,
/// else half the machine's memory; `None` where neither is known.
pub fn memory_budget() -> Option<(u64, &'static str)> {
    match std::env::var("TLAB_MEMORY_BUDGET_MB").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(mb) => Some((mb * 1024 * 1024, "TLAB_MEMORY_BUDGET_MB")),
        None => total_memory().map(|total| (total / 2, "half the machine's memory")),
    }
}

fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn cap(mut files: Vec<PathBuf>, max: Option<usize>) -> Vec<PathBuf> {
    if let Some(m) = max {
        files.truncate(m);
    }
    files
}

/// Class folders of `dir` (sorted) with their image files (sorted).
pub(crate) fn scan(dir: &Path, skipped: &mut Vec<(PathBuf, String)>) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::data(dir, "expected a folder with one sub-folder per class"));
    }
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let mut files = Vec::new();
            for f in std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
                let f = f.map_err(|e| Error::io(&path, e))?.path();
                if !f.is_file() {
                    continue;
                }
                let ext = f.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
                match ext {
                    Some(e) if IMAGE_EXTENSIONS.contains(&e.as_str()) => files.push(f),
                    _ => skipped.push((f, "not an image file".into())),
                }
            }
            if files.is_empty() {
                return Err(Error::data(&path, format!("class folder `{name}` contains no images")));
            }
            files.sort();
            classes.push((name, files));
        }
    }
    if classes.is_empty() {
        return Err(Error::data(dir, "no class sub-folders found (expected DIR/<class>/<image files>)"));
    }
    if classes.len() < 2 {
        return Err(Error::data(
            dir,
            format!("only one class (`{}`) found; a classifier needs at least two", classes[0].0),
        ));
    }
    classes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(classes)
}

fn decode_all(list: Vec<(PathBuf, usize)>, size: u32, skipped: &mut Vec<(PathBuf, String)>) -> Split {
    let _t = crate::util::profile::scope("decode images");
    let (mut split, pixels) = read_each(list, |path| decode(path, size), skipped);
    split.pixels = Pixels::Memory(pixels);
    split
}

/// `read` on every file in parallel: the split of those it read, with what
/// it gave for each; the others skipped with the reason.
fn read_each<T: Send>(
    list: Vec<(PathBuf, usize)>,
    read: impl Fn(&Path) -> std::result::Result<T, String> + Sync + Send,
    skipped: &mut Vec<(PathBuf, String)>,
) -> (Split, Vec<T>) {
    let results: Vec<(PathBuf, usize, std::result::Result<T, String>)> = list
        .into_par_iter()
        .map(|(path, label)| {
            let r = read(&path);
            (path, label, r)
        })
        .collect();
    let mut split = Split::default();
    let mut values = Vec::with_capacity(results.len());
    for (path, label, r) in results {
        match r {
            Ok(v) => {
                split.paths.push(path);
                split.labels.push(label);
                values.push(v);
            }
            Err(e) => skipped.push((path, e)),
        }
    }
    (split, values)
}

/// The split's files, checked but not decoded: each file's header must
/// name a format and a size (a corrupt or non-image file is skipped now,
/// as in memory mode); the pixels are decoded when batches ask for them.
fn stream_all(
    list: Vec<(PathBuf, usize)>,
    size: u32,
    budget: u64,
    cache: ImageCache,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Split {
    let header = |path: &Path| {
        image::ImageReader::open(path)
            .map_err(|e| e.to_string())
            .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
            .and_then(|r| r.into_dimensions().map_err(|e| format!("cannot decode: {e}")))
            .map(|_| pixels::File::stat(path))
    };
    let (mut split, files) = read_each(list, header, skipped);
    let mut stream = pixels::Stream::new(files, size, size, budget);
    if cache == ImageCache::Disk {
        let dir = image_cache_dir();
        let disk = pixels::DiskImages::open_or_build(&dir, stream.files(), size);
        stream = stream.with_disk(disk, &dir);
    }
    split.pixels = Pixels::Stream(std::sync::Arc::new(stream));
    split
}

/// Where `cache = "disk"` keeps decoded images: `$TLAB_IMAGE_CACHE_DIR`,
/// default `~/.cache/tlab/images`.
fn image_cache_dir() -> PathBuf {
    std::env::var_os("TLAB_IMAGE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/tlab/images")
    })
}

/// `img` resized to `size × size` (bilinear), as RGB bytes.
fn resize(img: &image::RgbImage, size: u32) -> Vec<u8> {
    image::imageops::resize(img, size, size, image::imageops::FilterType::Triangle).into_raw()
}

/// Decodes any format `image` supports, converts grey/alpha to RGB and
/// resizes to `size × size` (bilinear).
pub fn decode(path: &Path, size: u32) -> std::result::Result<Vec<u8>, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| format!("cannot decode: {e}"))?;
    let rgb = img.to_rgb8();
    Ok(if rgb.width() == size && rgb.height() == size { rgb.into_raw() } else { resize(&rgb, size) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, shade: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(8, 8, image::Luma([shade])).save(path).unwrap();
    }

    fn cfg(train: PathBuf) -> DataConfig {
        DataConfig {
            csv: None,
            test: None,
            train,
            valid: None,
            valid_split: 0.25,
            image_size: 16,
            batch_size: 4,
            max_per_class: None,
            workers: Some(1),
            cache: ImageCache::Auto,
        }
    }

    #[test]
    fn stratified_split_and_grey_to_rgb() {
        let dir = tempdir("split");
        for c in ["b", "a"] {
            for i in 0..8 {
                write_png(&dir.join(c).join(format!("{i}.png")), 10 * i);
            }
        }
        std::fs::write(dir.join("a/readme.txt"), "x").unwrap();
        let ds = Dataset::load(&cfg(dir.clone()), 1).unwrap();
        assert_eq!(ds.classes, vec!["a", "b"]);
        assert_eq!(ds.valid.len(), 4);
        assert_eq!(ds.valid.labels.iter().filter(|&&l| l == 0).count(), 2, "stratified");
        assert_eq!(ds.train.pixels.get(0).unwrap().len(), 16 * 16 * 3);
        assert_eq!(ds.skipped.len(), 1);
        // Same seed, same split.
        let again = Dataset::load(&cfg(dir.clone()), 1).unwrap();
        assert_eq!(again.valid.paths, ds.valid.paths);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_images_are_skipped_and_empty_class_is_an_error() {
        let dir = tempdir("corrupt");
        for i in 0..4 {
            write_png(&dir.join("a").join(format!("{i}.png")), 1);
        }
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/0.png"), b"not a png").unwrap();
        let err = Dataset::load(&cfg(dir.clone()), 1).unwrap_err().to_string();
        assert!(err.contains("class `b` has no readable training images"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Streaming decodes the same bytes as memory mode, plain, augmented
    /// and resized (progressive resizing), so a seed gives the same batches.
    #[test]
    fn streamed_images_equal_the_images_in_memory() {
        let dir = tempdir("stream");
        for (c, class) in ["a", "b"].iter().enumerate() {
            for i in 0..6u32 {
                let path = dir.join(class).join(format!("{i}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let img = image::RgbImage::from_fn(20 + i, 13 + 2 * i, |x, y| {
                    image::Rgb([(x * 11 + y) as u8, (y * 7 + c as u32 * 50) as u8, (x * y) as u8])
                });
                img.save(&path).unwrap();
            }
        }
        let memory = Dataset::load(&cfg(dir.clone()), 3).unwrap();
        let streamed = Dataset::load(&DataConfig { cache: ImageCache::None, ..cfg(dir.clone()) }, 3).unwrap();
        assert!(memory.train.pixels.stream().is_none() && streamed.train.pixels.stream().is_some());
        assert_eq!(memory.train.paths, streamed.train.paths);
        let aug = Augmenter::new(crate::recipe::AugmentConfig {
            rotation_range: 20.0,
            horizontal_flip: true,
            ..Default::default()
        });
        let idx = [3, 0, 7, 1];
        for a in [None, Some((&aug, 9))] {
            assert_eq!(memory.batch_pixels(&memory.train, &idx, a), streamed.batch_pixels(&streamed.train, &idx, a));
        }
        let (small_m, small_s) = (memory.resized(12), streamed.resized(12));
        assert_eq!(
            small_m.batch_pixels(&small_m.valid, &[0, 1], None),
            small_s.batch_pixels(&small_s.valid, &[0, 1], None)
        );
        assert_eq!(streamed.train.pixels.stream().unwrap().new_failures(), vec![]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file that vanishes or changes into garbage after listing is served
    /// black, named once, and the batch goes on; the cache stays in budget.
    #[test]
    fn a_streamed_file_that_vanishes_is_named_and_served_black() {
        let dir = tempdir("vanish");
        for c in ["a", "b"] {
            for i in 0..4 {
                write_png(&dir.join(c).join(format!("{i}.png")), 200);
            }
        }
        let ds = Dataset::load(&DataConfig { cache: ImageCache::None, ..cfg(dir.clone()) }, 1).unwrap();
        let gone = ds.train.paths[1].clone();
        std::fs::remove_file(&gone).unwrap();
        std::fs::write(&ds.train.paths[2], b"no longer a png").unwrap();
        let px = ds.batch_pixels(&ds.train, &[0, 1, 2], None);
        let per = 16 * 16 * 3;
        assert!(px[..per].iter().all(|&v| v == 200.0));
        assert!(px[per..].iter().all(|&v| v == 0.0), "both unreadable images are black");
        let stream = ds.train.pixels.stream().unwrap();
        let named: Vec<PathBuf> = stream.new_failures().into_iter().map(|(p, _)| p).collect();
        assert_eq!(named, vec![gone, ds.train.paths[2].clone()]);
        ds.batch_pixels(&ds.train, &[1, 2], None);
        assert!(stream.new_failures().is_empty(), "named once");
        assert_eq!(stream.cached_bytes(), 0, "cache = \"none\" keeps nothing");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_folder_names_the_path() {
        let err = Dataset::load(&cfg(PathBuf::from("/nonexistent/tlab")), 1).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tlab"), "{err}");
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tlab-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
