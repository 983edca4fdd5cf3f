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

use std::borrow::Cow;
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
    pub fn get(&self, i: usize) -> Option<Cow<'_, [u8]>> {
        match self {
            Pixels::Memory(v) => v.get(i).map(|px| Cow::Borrowed(&px[..])),
            Pixels::Stream(s) => (i < s.files.len()).then(|| Cow::Owned(s.get(i).to_vec())),
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
            failures: Mutex::default(),
        }
    }

    /// The same files served at `size`, with an empty cache of the same budget.
    pub fn resized(&self, size: u32) -> Stream {
        Stream::new(self.files.clone(), size, self.decoded_at, lock(&self.cache).budget)
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
        let _t = crate::util::profile::scope("decode images");
        let px = super::decode(&self.files[i].path, self.decoded_at)?;
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
