//! Where a split's decoded images live.
//!
//! - **In memory** (`[data] cache = "memory"`, and `"auto"` while the
//!   decoded set fits the memory budget): every image is decoded once, up
//!   front, and kept as RGB bytes.
//! - **Streamed** (`"none"`, and `"auto"` over the budget, which Keras'
//!   `flow_from_directory` users expect): an image is decoded when a batch
//!   asks for it, on the batch producer's threads ahead of training, and kept
//!   in a bounded least-recently-used cache. Decoding gives the same bytes as
//!   in memory (a resized split decodes at the original size and resizes the
//!   same way), so a seed gives the same batches and the same weights in
//!   both modes.
//!
//! A streamed file that has vanished or no longer decodes during an epoch
//! is shown as a black image for that batch and named once in the log
//! ([`Stream::new_failures`]); the epoch goes on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A split's images: decoded up front, or streamed from their files.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// RGB bytes, `size × size × 3` per image.
    Memory(Vec<Vec<u8>>),
    Stream(Arc<Stream>),
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::Memory(Vec::new())
    }
}

impl Pixels {
    /// Image `i`'s RGB bytes (`size × size × 3`), if there is an image `i`.
    pub fn get(&self, i: usize) -> Option<Image<'_>> {
        match self {
            Pixels::Memory(v) => v.get(i).map(|px| Image::Borrowed(px)),
            Pixels::Stream(s) => (i < s.files.len()).then(|| Image::Shared(s.get(i))),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Pixels::Memory(v) => v.len(),
            Pixels::Stream(s) => s.files.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stream behind these images, when they are streamed.
    pub fn stream(&self) -> Option<&Stream> {
        match self {
            Pixels::Memory(_) => None,
            Pixels::Stream(s) => Some(s),
        }
    }
}

/// One image's RGB bytes: borrowed from memory, or shared with the
/// streaming cache (no copy either way).
#[derive(Debug, Clone)]
pub enum Image<'a> {
    Borrowed(&'a [u8]),
    Shared(Arc<Vec<u8>>),
}

impl std::ops::Deref for Image<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Image::Borrowed(px) => px,
            Image::Shared(px) => px,
        }
    }
}

/// A file as listed: what a streamed image's identity is (the feature
/// cache keys on it instead of on decoded bytes, which would mean decoding
/// everything).
#[derive(Debug, Clone)]
pub struct File {
    pub path: PathBuf,
    /// Modification time in nanoseconds since the epoch (0 if unknown).
    pub modified: u128,
    pub len: u64,
}

impl File {
    /// `path` with its current modification time and length.
    pub fn stat(path: &Path) -> File {
        let meta = std::fs::metadata(path).ok();
        let modified = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        File { path: path.to_path_buf(), modified, len: meta.map_or(0, |m| m.len()) }
    }
}

/// Images decoded on demand, with a bounded cache of decoded bytes.
#[derive(Debug)]
pub struct Stream {
    files: Vec<File>,
    /// The side images are served at.
    size: u32,
    /// The side they are decoded at before resizing to `size` (the
    /// `[data] image_size`), so that a resized split matches memory mode's
    /// resize of the decoded images byte for byte.
    decoded_at: u32,
    cache: Mutex<Lru>,
    /// `[data] cache = "disk"`: every image decoded once into this file.
    disk: Option<Arc<DiskImages>>,
    /// Why `cache = "disk"` found no file to use, for the log.
    disk_warning: Option<String>,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    all: Vec<(PathBuf, String)>,
    /// How many of `all` were handed out by [`Stream::new_failures`].
    reported: usize,
}

impl Stream {
    /// `files` served at `size` (decoded at `decoded_at`), keeping at most
    /// `budget` bytes of decoded images.
    pub fn new(files: Vec<File>, size: u32, decoded_at: u32, budget: u64) -> Stream {
        Stream {
            files,
            size,
            decoded_at,
            cache: Mutex::new(Lru { budget, ..Lru::default() }),
            disk: None,
            disk_warning: None,
            failures: Mutex::default(),
        }
    }

    /// Reads images from the cache file `disk` found or wrote (decoded at
    /// `decoded_at`) instead of decoding them; without one, says why in the log.
    pub fn with_disk(mut self, disk: std::io::Result<(DiskImages, Vec<(PathBuf, String)>)>, dir: &Path) -> Stream {
        match disk {
            Ok((disk, failures)) => {
                self.disk = Some(Arc::new(disk));
                lock(&self.failures).all.extend(failures);
            }
            Err(e) => {
                self.disk_warning = Some(format!(
                    "warning: could not write the image cache in {} ({e}); decoding the images every epoch instead",
                    dir.display()
                ))
            }
        }
        self
    }

    /// Why `cache = "disk"` decodes anyway, when it does.
    pub fn disk_warning(&self) -> Option<&str> {
        self.disk_warning.as_deref()
    }

    /// The file images are read from, for `cache = "disk"`.
    pub fn disk_path(&self) -> Option<&Path> {
        self.disk.as_ref().map(|d| d.path.as_path())
    }

    /// The same files served at `size`, with an empty cache of the same budget.
    pub fn resized(&self, size: u32) -> Stream {
        let mut s = Stream::new(self.files.clone(), size, self.decoded_at, lock(&self.cache).budget);
        s.disk = self.disk.clone();
        s
    }

    pub fn files(&self) -> &[File] {
        &self.files
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn decoded_at(&self) -> u32 {
        self.decoded_at
    }

    /// Image `i`, from the cache or decoded now.
    pub fn get(&self, i: usize) -> Arc<Vec<u8>> {
        if let Some(px) = lock(&self.cache).get(i) {
            return px;
        }
        let px = Arc::new(match self.decode(i) {
            Ok(px) => px,
            Err(e) => {
                let mut failures = lock(&self.failures);
                let path = &self.files[i].path;
                if !failures.all.iter().any(|(p, _)| p == path) {
                    failures.all.push((path.clone(), e));
                }
                vec![0; (self.size * self.size * 3) as usize]
            }
        });
        lock(&self.cache).insert(i, px.clone());
        px
    }

    fn decode(&self, i: usize) -> std::result::Result<Vec<u8>, String> {
        let px = match self.disk.as_ref().map(|d| d.read(i)) {
            Some(Ok(px)) => px,
            // A record the cache file could not give: decode the file.
            _ => {
                let _t = crate::util::profile::scope("decode images");
                super::decode(&self.files[i].path, self.decoded_at)?
            }
        };
        if self.size == self.decoded_at {
            return Ok(px);
        }
        let img = image::RgbImage::from_raw(self.decoded_at, self.decoded_at, px)
            .ok_or_else(|| "decoded to an unexpected size".to_string())?;
        Ok(super::resize(&img, self.size))
    }

    /// Files that failed to decode since the last call: the caller names
    /// them once (the images were served black).
    pub fn new_failures(&self) -> Vec<(PathBuf, String)> {
        let mut failures = lock(&self.failures);
        let new = failures.all[failures.reported..].to_vec();
        failures.reported = failures.all.len();
        new
    }

    /// Bytes of decoded images held now.
    pub fn cached_bytes(&self) -> u64 {
        lock(&self.cache).used
    }
}

/// Every image of a split decoded once into one file (`[data] cache =
/// "disk"`): `size × size × 3` bytes per image after a header, read back by
/// offset, so later epochs and later runs skip decoding. The file is named by
/// a hash of the files' paths, modification times and lengths and the size,
/// so a changed file or size gives a new one; it is written to a temporary
/// file and renamed (a crash never leaves a partial one under the name), under
/// a lock that makes a second run wait and then read it.
#[derive(Debug)]
pub struct DiskImages {
    file: std::fs::File,
    path: PathBuf,
    item: usize,
}

const IMAGES_MAGIC: &[u8; 8] = b"TLABIMG1";
const IMAGES_HEADER: u64 = 24;

impl DiskImages {
    /// The cache file for `files` at `size` under `dir`: found complete, or
    /// written now by decoding every image once, in parallel (an image that
    /// no longer decodes is stored black and returned in the second value).
    pub fn open_or_build(
        dir: &Path,
        files: &[File],
        size: u32,
    ) -> std::io::Result<(DiskImages, Vec<(PathBuf, String)>)> {
        let path = dir.join(format!("{:016x}.images", images_key(files, size)));
        let item = (size * size * 3) as usize;
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.with_extension("images.lock"))?;
        lock.lock()?;
        if let Some(found) = DiskImages::open(&path, files.len(), item) {
            return Ok((found, Vec::new()));
        }
        let failures = write_images(&path, files, size)?;
        let written = DiskImages::open(&path, files.len(), item)
            .ok_or_else(|| std::io::Error::other("the image cache file did not read back complete"))?;
        Ok((written, failures))
    }

    /// `path` if it holds `n` complete records of `item` bytes.
    fn open(path: &Path, n: usize, item: usize) -> Option<DiskImages> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).ok()?;
        let mut header = [0u8; IMAGES_HEADER as usize];
        file.read_exact_at(&mut header, 0).ok()?;
        let complete = &header[..8] == IMAGES_MAGIC
            && header[8..16] == (n as u64).to_le_bytes()
            && header[16..24] == (item as u64).to_le_bytes()
            && file.metadata().ok()?.len() == IMAGES_HEADER + (n * item) as u64;
        complete.then(|| DiskImages { file, path: path.to_path_buf(), item })
    }

    fn read(&self, i: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut px = vec![0u8; self.item];
        self.file.read_exact_at(&mut px, IMAGES_HEADER + (i * self.item) as u64)?;
        Ok(px)
    }
}

/// FNV-1a over what identifies the split's images at `size`.
fn images_key(files: &[File], size: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(IMAGES_MAGIC);
    eat(&size.to_le_bytes());
    for f in files {
        eat(f.path.as_os_str().as_encoded_bytes());
        eat(&f.modified.to_le_bytes());
        eat(&f.len.to_le_bytes());
    }
    h
}

/// Decodes `files` at `size` in parallel, a chunk at a time, into a
/// temporary file renamed to `path` when complete.
fn write_images(path: &Path, files: &[File], size: u32) -> std::io::Result<Vec<(PathBuf, String)>> {
    use rayon::prelude::*;
    use std::io::Write;
    let _t = crate::util::profile::scope("decode images");
    let item = (size * size * 3) as usize;
    let tmp = path.with_extension(format!("images.{}.tmp", std::process::id()));
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        out.write_all(IMAGES_MAGIC)?;
        out.write_all(&(files.len() as u64).to_le_bytes())?;
        out.write_all(&(item as u64).to_le_bytes())?;
        let mut failures = Vec::new();
        for chunk in files.chunks(256) {
            let decoded: Vec<_> = chunk.par_iter().map(|f| super::decode(&f.path, size)).collect();
            for (f, px) in chunk.iter().zip(decoded) {
                match px {
                    Ok(px) => out.write_all(&px)?,
                    Err(e) => {
                        failures.push((f.path.clone(), e));
                        out.write_all(&vec![0u8; item])?;
                    }
                }
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(failures)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A poisoned lock only means another batch thread panicked; the cache
/// and the failure list stay consistent between their updates.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decoded images by index, least recently used dropped first.
#[derive(Debug, Default)]
struct Lru {
    budget: u64,
    used: u64,
    tick: u64,
    entries: HashMap<usize, (u64, Arc<Vec<u8>>)>,
    by_age: BTreeMap<u64, usize>,
}

impl Lru {
    fn get(&mut self, i: usize) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        let (age, px) = self.entries.get_mut(&i)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, i);
        Some(px.clone())
    }

    fn insert(&mut self, i: usize, px: Arc<Vec<u8>>) {
        let bytes = px.len() as u64;
        if bytes > self.budget || self.entries.contains_key(&i) {
            return;
        }
        while self.used + bytes > self.budget {
            let Some((_, oldest)) = self.by_age.pop_first() else { break };
            if let Some((_, old)) = self.entries.remove(&oldest) {
                self.used -= old.len() as u64;
            }
        }
        self.tick += 1;
        self.by_age.insert(self.tick, i);
        self.entries.insert(i, (self.tick, px));
        self.used += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn textured_files(dir: &Path, n: u32) -> Vec<File> {
        std::fs::create_dir_all(dir).unwrap();
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                image::RgbImage::from_fn(23 + i, 17, |x, y| image::Rgb([(x * 9 + i) as u8, (y * 13) as u8, 77]))
                    .save(&path)
                    .unwrap();
                File::stat(&path)
            })
            .collect()
    }

    /// `cache = "disk"`: the file holds what decoding gives, is found
    /// again by a later run, and a changed image gives a new file.
    #[test]
    fn disk_images_hold_what_decoding_gives_and_follow_the_files() {
        let root = std::env::temp_dir().join(format!("tlab-diskimages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let files = textured_files(&root.join("data"), 5);
        let cache = root.join("cache");
        let (disk, failures) = DiskImages::open_or_build(&cache, &files, 16).unwrap();
        assert!(failures.is_empty());
        for (i, f) in files.iter().enumerate() {
            assert_eq!(disk.read(i).unwrap(), super::super::decode(&f.path, 16).unwrap());
        }
        // Served through a stream, resized as memory mode resizes.
        let stream = Stream::new(files.clone(), 16, 16, 0).with_disk(Ok((disk, Vec::new())), &cache);
        assert_eq!(*stream.get(3), super::super::decode(&files[3].path, 16).unwrap());
        let small = stream.resized(8);
        let img = image::RgbImage::from_raw(16, 16, super::super::decode(&files[3].path, 16).unwrap()).unwrap();
        assert_eq!(*small.get(3), super::super::resize(&img, 8));
        // A later run finds the file complete and does not rewrite it.
        let path = stream.disk_path().unwrap().to_path_buf();
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        let (again, _) = DiskImages::open_or_build(&cache, &files, 16).unwrap();
        assert_eq!(
            (again.path.as_path(), std::fs::metadata(&path).unwrap().modified().unwrap()),
            (path.as_path(), written)
        );
        // A truncated file is rebuilt under the same name.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
        let (rebuilt, _) = DiskImages::open_or_build(&cache, &files, 16).unwrap();
        assert_eq!(rebuilt.read(4).unwrap(), super::super::decode(&files[4].path, 16).unwrap());
        // A changed image (new length and time) is a new file; so is a new size.
        std::thread::sleep(std::time::Duration::from_millis(20));
        image::RgbImage::from_pixel(30, 30, image::Rgb([1, 2, 3])).save(&files[0].path).unwrap();
        let changed: Vec<File> = files.iter().map(|f| File::stat(&f.path)).collect();
        let (fresh, _) = DiskImages::open_or_build(&cache, &changed, 16).unwrap();
        assert_ne!(fresh.path, path);
        assert_eq!(fresh.read(0).unwrap(), [1, 2, 3].repeat(256));
        assert_ne!(DiskImages::open_or_build(&cache, &changed, 12).unwrap().0.path, fresh.path);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A cache folder that cannot be written: an error the stream turns
    /// into a warning, decoding instead.
    #[test]
    fn an_unwritable_image_cache_decodes_instead() {
        let root = std::env::temp_dir().join(format!("tlab-diskimages-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let files = textured_files(&root.join("data"), 2);
        let blocker = root.join("blocker");
        std::fs::write(&blocker, b"a file where the folder should be").unwrap();
        let dir = blocker.join("images");
        let stream = Stream::new(files.clone(), 16, 16, 0).with_disk(DiskImages::open_or_build(&dir, &files, 16), &dir);
        assert!(stream.disk_path().is_none());
        assert!(stream.disk_warning().unwrap().starts_with("warning: could not write the image cache in"));
        assert_eq!(*stream.get(1), super::super::decode(&files[1].path, 16).unwrap());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_within_its_budget() {
        let mut lru = Lru { budget: 30, ..Lru::default() };
        for i in 0..3 {
            lru.insert(i, Arc::new(vec![i as u8; 10]));
        }
        assert!(lru.get(0).is_some(), "0 is now the most recent");
        lru.insert(3, Arc::new(vec![3; 10]));
        assert!(lru.get(1).is_none(), "1 was the least recently used");
        assert!(lru.get(0).is_some() && lru.get(2).is_some() && lru.get(3).is_some());
        assert_eq!(lru.used, 30);
        lru.insert(9, Arc::new(vec![9; 40]));
        assert!(lru.get(9).is_none(), "larger than the whole budget: not kept");
        let mut none = Lru::default();
        none.insert(0, Arc::new(vec![0; 1]));
        assert!(none.get(0).is_none(), "a zero budget keeps nothing");
    }
}
