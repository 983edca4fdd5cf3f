//! The frozen-feature cache: the output of a model's frozen leading blocks
//! for every image of a split, computed once and reused.
//!
//! An entry is keyed on everything its values depend on: the backbone's
//! architecture and every weight and BatchNorm statistic, the number of
//! frozen blocks, the preprocessing, the decoded pixels of the split and,
//! for augmented views, the augmentation settings, seed and view number. So
//! an entry is reused whenever only later steps change (a new learning rate,
//! another head, more epochs) and can never be used stale: any change to what
//! it depends on gives a new key.
//!
//! Entries live in memory while they fit the budget (half of tlab's memory
//! budget, see [`crate::data::memory_budget`]; least recently used entries
//! are dropped first). A split whose features do not fit is streamed to a
//! file under the cache folder (`$TLAB_FEATURE_CACHE_DIR`, default
//! `~/.cache/tlab/features`) and read back one batch at a time; such files
//! are named by key, written atomically, and reused by later runs.
//! `TLAB_FEATURE_CACHE=disk` sends every entry to disk.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::augment::Augmenter;
use crate::data::{Pixels, Split};
use crate::error::{Error, Result};
use crate::models::Classifier;

/// Bump when the file layout or what the key covers changes.
const FORMAT: &[u8] = b"tlab-features-1";
const MAGIC: &[u8; 8] = b"TLABFEAT";

/// A fast 64-bit hash over words (multiply–rotate), for cache keys: it only
/// has to tell different inputs apart, not resist an adversary.
#[derive(Debug, Clone)]
pub(crate) struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0x243F_6A88_85A3_08D3)
    }
}

impl KeyHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.mix(b.len() as u64);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.mix(u64::from_le_bytes(tail));
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.mix(v);
        self
    }

    pub(crate) fn floats(&mut self, v: &[f32]) -> &mut Self {
        self.mix(v.len() as u64);
        for pair in v.chunks(2) {
            let lo = u64::from(pair[0].to_bits());
            let hi = pair.get(1).map_or(0, |x| u64::from(x.to_bits()));
            self.mix(lo | hi << 32);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    }
}

/// Hashes a tensor's shape and values (any dtype, converted to f32).
fn hash_tensor(h: &mut KeyHasher, t: &Tensor) -> Result<()> {
    for &d in t.dims() {
        h.u64(d as u64);
    }
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    h.floats(&v);
    Ok(())
}

/// The part of a key that describes the model: architecture, every weight and
/// buffer of the first `blocks` blocks (the later ones do not change their
/// output), the block count and the preprocessing.
pub(crate) fn model_key(model: &Classifier, blocks: usize) -> Result<KeyHasher> {
    let mut h = KeyHasher::default();
    h.bytes(FORMAT).bytes(model.backbone.arch().as_bytes()).u64(blocks as u64);
    h.bytes(format!("{:?}", model.backbone.preprocess()).as_bytes());
    let mut vars = Vec::new();
    for b in 0..blocks {
        model.backbone.block_vars(b, &mut vars);
    }
    for (name, var) in vars {
        h.bytes(name.as_bytes());
        hash_tensor(&mut h, var.as_tensor())?;
    }
    Ok(h)
}

/// The key of one split's features: `model` from [`model_key`], plus the
/// split's images and, for an augmented view, the augmentation, seed and view.
/// Images in memory count by their decoded pixels; streamed ones by what
/// identifies their files (path, modification time, length) and the sizes
/// they are decoded and served at, so a changed file gives a new key
/// without decoding the whole split to find out.
pub(crate) fn split_key(model: &KeyHasher, split: &Split, size: u32, view: Option<(&Augmenter, u64, usize)>) -> u64 {
    let mut h = model.clone();
    h.u64(u64::from(size)).u64(split.len() as u64);
    match &split.pixels {
        Pixels::Memory(pixels) => {
            for (pixels, label) in pixels.iter().zip(&split.labels) {
                h.bytes(pixels).u64(*label as u64);
            }
        }
        Pixels::Stream(stream) => {
            h.u64(u64::from(stream.decoded_at())).u64(u64::from(stream.size()));
            for (file, label) in stream.files().iter().zip(&split.labels) {
                let path = file.path.as_os_str().as_encoded_bytes();
                h.bytes(path).u64(file.modified as u64).u64((file.modified >> 64) as u64).u64(file.len);
                h.u64(*label as u64);
            }
        }
    }
    match view {
        None => h.u64(0),
        Some((aug, seed, v)) => h.u64(1).bytes(format!("{aug:?}").as_bytes()).u64(seed).u64(v as u64),
    };
    h.finish()
}

/// Where an entry's values are.
enum Store {
    Memory(Tensor),
    /// A cache file: header, then `n × item` little-endian f32 values.
    Disk {
        file: std::fs::File,
        path: PathBuf,
        offset: u64,
    },
}

/// The cached prefix outputs of one split: `n` items of shape `item_dims`.
pub struct Features {
    n: usize,
    item_dims: Vec<usize>,
    store: Store,
}

impl Features {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The file holding the values, when they are on disk.
    pub(crate) fn disk_path(&self) -> Option<&Path> {
        match &self.store {
            Store::Memory(_) => None,
            Store::Disk { path, .. } => Some(path),
        }
    }

    fn item_len(&self) -> usize {
        self.item_dims.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        (self.n * self.item_len() * 4) as u64
    }

    /// The items `idx`, stacked into `[idx.len(), item_dims…]`.
    pub fn rows(&self, idx: &[usize]) -> Result<Tensor> {
        if idx.iter().any(|&i| i >= self.n) {
            return Err(Error::Internal("a feature-cache item beyond the cached split"));
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.item_dims);
        match &self.store {
            Store::Memory(t) => {
                // A contiguous run (validation batches) is a cheap view.
                if idx.windows(2).all(|w| w[1] == w[0] + 1) && !idx.is_empty() {
                    return Ok(t.narrow(0, idx[0], idx.len())?);
                }
                let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), t.device())?;
                Ok(t.index_select(&ids, 0)?)
            }
            Store::Disk { file, path, offset } => {
                let item = self.item_len();
                let mut bytes = vec![0u8; item * 4];
                let mut values = Vec::with_capacity(idx.len() * item);
                for &i in idx {
                    file.read_exact_at(&mut bytes, offset + (i * item * 4) as u64).map_err(|e| Error::io(path, e))?;
                    values.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
                }
                Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
            }
        }
    }
}

/// Where entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Memory while within budget, else disk.
    Auto,
    Disk,
}

/// The store of cached features, owned by the [`Lab`](crate::Lab) so entries
/// outlive one fine_tune step.
pub struct FeatureCache {
    entries: Vec<(u64, Arc<Features>)>,
    /// Bytes of in-memory entries allowed.
    budget: u64,
    placement: Placement,
    dir: PathBuf,
    hits: usize,
    computed: usize,
}

impl Default for FeatureCache {
    fn default() -> Self {
        Self::from_env()
    }
}

impl FeatureCache {
    /// Budget, placement and folder from the environment (see the module docs).
    pub fn from_env() -> Self {
        let budget = crate::data::memory_budget().map_or(u64::MAX, |(b, _)| b / 2);
        let placement = match std::env::var("TLAB_FEATURE_CACHE").as_deref() {
            Ok("disk") => Placement::Disk,
            _ => Placement::Auto,
        };
        let dir = std::env::var_os("TLAB_FEATURE_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".cache/tlab/features")
        });
        FeatureCache::new(budget, placement, dir)
    }

    pub fn new(budget: u64, placement: Placement, dir: PathBuf) -> Self {
        FeatureCache { entries: Vec::new(), budget, placement, dir, hits: 0, computed: 0 }
    }

    /// How many lookups found their entry ready (in memory or on disk).
    pub fn hits(&self) -> usize {
        self.hits
    }

    /// Bytes of in-memory entries allowed.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// How many entries were computed (not found ready).
    pub fn computed(&self) -> usize {
        self.computed
    }

    fn memory_used(&self) -> u64 {
        self.entries.iter().filter(|(_, f)| f.disk_path().is_none()).map(|(_, f)| f.bytes()).sum()
    }

    /// The entry for `key`, computing it with `compute` (items `range` →
    /// a batch of prefix outputs) when it is not cached. `log` hears where
    /// it came from.
    pub(crate) fn get_or_compute(
        &mut self,
        key: u64,
        n: usize,
        batch: usize,
        mut compute: impl FnMut(std::ops::Range<usize>) -> Result<Tensor>,
        log: &mut dyn FnMut(String),
    ) -> Result<Arc<Features>> {
        if let Some(f) = self.get(key, n, log) {
            return Ok(f);
        }
        let path = self.dir.join(format!("{key:016x}.features"));
        let batch = batch.max(1);
        let first = compute(0..batch.min(n))?;
        let item_dims = first.dims()[1..].to_vec();
        let bytes = (n * item_dims.iter().product::<usize>() * 4) as u64;
        if self.placement == Placement::Disk || bytes > self.budget {
            log(format!(
                "frozen features: {} MiB {}, streaming them to {}",
                bytes.div_ceil(1 << 20),
                if self.placement == Placement::Disk {
                    "(TLAB_FEATURE_CACHE=disk)".to_string()
                } else {
                    format!("over the cache's memory budget of {} MiB", self.budget >> 20)
                },
                path.display()
            ));
            match disk_entry(&path, n, &item_dims, first.clone(), batch, &mut compute) {
                Ok((f, computed)) => {
                    if !computed {
                        log(format!("reusing cached features {} (another run wrote them meanwhile)", path.display()));
                    }
                    self.computed += usize::from(computed);
                    self.hits += usize::from(!computed);
                    return Ok(self.insert(key, f));
                }
                // A full disk or an unwritable folder costs memory, not the run.
                Err(Error::Io { path, source }) => log(format!(
                    "warning: could not write the feature cache file {} ({source}); keeping the features in memory instead",
                    path.display()
                )),
                Err(e) => return Err(e),
            }
        }
        self.computed += 1;
        // Make room: least recently used first.
        while self.memory_used() + bytes > self.budget {
            let Some(pos) = self.entries.iter().position(|(_, f)| f.disk_path().is_none()) else { break };
            self.entries.remove(pos);
        }
        let mut parts = vec![first];
        let mut start = batch.min(n);
        while start < n {
            let end = (start + batch).min(n);
            parts.push(compute(start..end)?);
            start = end;
        }
        let t = Tensor::cat(&parts, 0)?;
        Ok(self.insert(key, Features { n, item_dims, store: Store::Memory(t) }))
    }

    /// The entry for `key` when it is ready, in memory or in a cache file
    /// of `n` items.
    pub fn get(&mut self, key: u64, n: usize, log: &mut dyn FnMut(String)) -> Option<Arc<Features>> {
        if let Some(pos) = self.entries.iter().position(|(k, _)| *k == key) {
            // Most recently used last.
            let entry = self.entries.remove(pos);
            let f = entry.1.clone();
            self.entries.push(entry);
            self.hits += 1;
            return Some(f);
        }
        let path = self.dir.join(format!("{key:016x}.features"));
        let f = open_file(&path, n)?;
        log(format!("reusing cached features {}", path.display()));
        self.hits += 1;
        Some(self.insert(key, f))
    }

    fn insert(&mut self, key: u64, f: Features) -> Arc<Features> {
        let f = Arc::new(f);
        self.entries.push((key, f.clone()));
        f
    }
}

fn header(n: usize, item_dims: &[usize]) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((n as u64).to_le_bytes());
    h.extend((item_dims.len() as u64).to_le_bytes());
    for &d in item_dims {
        h.extend((d as u64).to_le_bytes());
    }
    h
}

/// Opens a cache file if it is complete and holds `n` items.
fn open_file(path: &Path, n: usize) -> Option<Features> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let mut fixed = [0u8; 24];
    file.read_exact_at(&mut fixed, 0).ok()?;
    if &fixed[..8] != MAGIC || u64::from_le_bytes(fixed[8..16].try_into().ok()?) != n as u64 {
        return None;
    }
    let ndims = u64::from_le_bytes(fixed[16..24].try_into().ok()?);
    if ndims > 8 {
        return None;
    }
    let mut dims = vec![0u8; ndims as usize * 8];
    file.read_exact_at(&mut dims, 24).ok()?;
    let item_dims: Vec<usize> =
        dims.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize).collect();
    let offset = 24 + ndims * 8;
    let item: u64 = item_dims.iter().map(|&d| d as u64).product();
    (len == offset + n as u64 * item * 4).then(|| Features {
        n,
        item_dims,
        store: Store::Disk { file, path: path.to_path_buf(), offset },
    })
}

/// The cache file at `path`, written unless another run wrote it first;
/// `true` when this call computed it.
///
/// Two runs that share the cache folder and need the same entry take turns
/// through an exclusive lock on `path` + `.lock` (held while writing): the
/// second waits, then finds the first one's complete file and reads it
/// instead of computing it again. The lock is advisory and released when
/// the file closes, so a killed run never leaves it held.
fn disk_entry(
    path: &Path,
    n: usize,
    item_dims: &[usize],
    first: Tensor,
    batch: usize,
    compute: &mut dyn FnMut(std::ops::Range<usize>) -> Result<Tensor>,
) -> Result<(Features, bool)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = path.with_extension("features.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    // A truncated file, or one of another layout, does not open: rebuilt.
    if let Some(f) = open_file(path, n) {
        return Ok((f, false));
    }
    write_file(path, n, item_dims, first, batch, compute).map(|f| (f, true))
}

/// Streams the features to `path` batch by batch (temp file, fsync, rename:
/// a crash never leaves a partial file under the final name).
fn write_file(
    path: &Path,
    n: usize,
    item_dims: &[usize],
    first: Tensor,
    batch: usize,
    compute: &mut dyn FnMut(std::ops::Range<usize>) -> Result<Tensor>,
) -> Result<Features> {
    // `disk_entry` made the folder before taking the lock.
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let result = (|| -> Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        out.write_all(&header(n, item_dims)).map_err(|e| Error::io(&tmp, e))?;
        let mut write = |t: Tensor| -> Result<()> {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            out.write_all(&bytes).map_err(|e| Error::io(&tmp, e))
        };
        write(first)?;
        let mut start = batch.min(n);
        while start < n {
            let end = (start + batch).min(n);
            write(compute(start..end)?)?;
            start = end;
        }
        let file = out.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    open_file(path, n).ok_or_else(|| Error::FeatureCacheFile(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches(n: usize, item: usize) -> impl FnMut(std::ops::Range<usize>) -> Result<Tensor> {
        move |r: std::ops::Range<usize>| {
            let v: Vec<f32> = r.clone().flat_map(|i| (0..item).map(move |j| (i * 100 + j) as f32)).collect();
            let _ = n;
            Ok(Tensor::from_vec(v, (r.len(), item, 1), &Device::Cpu)?)
        }
    }

    #[test]
    fn memory_and_disk_entries_return_the_same_rows_and_are_reused() {
        let dir = std::env::temp_dir().join(format!("tlab-featcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = |_: String| {};
        let mut mem = FeatureCache::new(u64::MAX, Placement::Auto, dir.clone());
        let mut disk = FeatureCache::new(u64::MAX, Placement::Disk, dir.clone());
        let a = mem.get_or_compute(7, 23, 5, batches(23, 3), &mut log).unwrap();
        let b = disk.get_or_compute(7, 23, 5, batches(23, 3), &mut log).unwrap();
        assert!(a.disk_path().is_none() && b.disk_path().is_some());
        for idx in [vec![0, 1, 2], vec![22, 3, 3, 17], vec![5]] {
            let (x, y) = (a.rows(&idx).unwrap(), b.rows(&idx).unwrap());
            assert_eq!(x.dims(), &[idx.len(), 3, 1]);
            assert_eq!(
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert_eq!(a.rows(&[22]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2200., 2201., 2202.]);
        assert!(a.rows(&[23]).is_err());
        // A second lookup computes nothing, in memory or from the file (a new process).
        let never = |_: std::ops::Range<usize>| -> Result<Tensor> { panic!("recomputed") };
        mem.get_or_compute(7, 23, 5, never, &mut log).unwrap();
        let mut fresh = FeatureCache::new(u64::MAX, Placement::Auto, dir.clone());
        fresh.get_or_compute(7, 23, 5, never, &mut log).unwrap();
        assert_eq!((mem.hits(), fresh.hits()), (1, 1));
        // A truncated file is not trusted: it is recomputed and replaced.
        let path = b.disk_path().unwrap().to_path_buf();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 4).unwrap();
        let mut again = FeatureCache::new(u64::MAX, Placement::Disk, dir.clone());
        let c = again.get_or_compute(7, 23, 5, batches(23, 3), &mut log).unwrap();
        assert_eq!(again.hits(), 0);
        assert_eq!(c.rows(&[22]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2200., 2201., 2202.]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two runs sharing the cache folder and needing the same entry at once:
    /// one computes and writes it while the other waits on the lock, then
    /// reads the complete file; neither sees a partial one.
    #[test]
    fn two_runs_sharing_a_folder_compute_an_entry_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("tlab-featshare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let batches_computed = Arc::new(AtomicUsize::new(0));
        let run = |dir: PathBuf, counter: Arc<AtomicUsize>| {
            std::thread::spawn(move || {
                let mut cache = FeatureCache::new(u64::MAX, Placement::Disk, dir);
                let mut inner = batches(40, 3);
                let slow = move |r: std::ops::Range<usize>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    inner(r)
                };
                let f = cache.get_or_compute(11, 40, 4, slow, &mut |_| {}).unwrap();
                let rows = f.rows(&[0, 39]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (cache.computed(), cache.hits(), rows)
            })
        };
        let a = run(dir.clone(), batches_computed.clone());
        let b = run(dir.clone(), batches_computed.clone());
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(a.0 + b.0, 1, "computed by exactly one run");
        assert_eq!(a.1 + b.1, 1, "read from the file by the other");
        assert_eq!(a.2, vec![0., 1., 2., 3900., 3901., 3902.]);
        assert_eq!(a.2, b.2);
        // Each run computes the first batch before it knows where the entry
        // goes; the rest (9 batches) only the writer computes.
        assert_eq!(batches_computed.load(Ordering::SeqCst), 2 + 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file under the entry's name that is not a cache file of this
    /// layout (another version, or garbage) is rebuilt, not read.
    #[test]
    fn a_file_of_another_layout_is_rebuilt() {
        let dir = std::env::temp_dir().join(format!("tlab-featversion-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:016x}.features", 5u64));
        let mut old = b"TLABFEAX".to_vec();
        old.extend(vec![0u8; 200]);
        std::fs::write(&path, old).unwrap();
        let mut cache = FeatureCache::new(u64::MAX, Placement::Disk, dir.clone());
        let f = cache.get_or_compute(5, 10, 4, batches(10, 2), &mut |_| {}).unwrap();
        assert_eq!((cache.computed(), cache.hits()), (1, 0));
        assert_eq!(f.rows(&[9]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![900., 901.]);
        assert_eq!(&std::fs::read(&path).unwrap()[..8], MAGIC);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A cache folder that cannot be written (a full disk, a read-only
    /// mount, a file in the way) costs memory, with a warning, not the run.
    #[test]
    fn an_unwritable_cache_folder_falls_back_to_memory() {
        let blocker = std::env::temp_dir().join(format!("tlab-featblocked-{}", std::process::id()));
        std::fs::write(&blocker, b"a file where the folder should be").unwrap();
        let mut cache = FeatureCache::new(100, Placement::Auto, blocker.join("features"));
        let mut said = Vec::new();
        let f = cache.get_or_compute(3, 30, 4, batches(30, 4), &mut |m| said.push(m)).unwrap();
        assert!(f.disk_path().is_none(), "kept in memory");
        assert_eq!(
            f.rows(&[29]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2900., 2901., 2902., 2903.]
        );
        assert!(said.iter().any(|m| m.starts_with("warning: could not write the feature cache file")), "{said:?}");
        std::fs::remove_file(&blocker).unwrap();
    }

    #[test]
    fn over_budget_goes_to_disk_and_old_entries_are_dropped_first() {
        let dir = std::env::temp_dir().join(format!("tlab-featbudget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = |_: String| {};
        // 10 items × 4 floats × 4 bytes = 160 bytes per entry.
        let mut c = FeatureCache::new(400, Placement::Auto, dir.clone());
        for key in 1..=3 {
            let f = c.get_or_compute(key, 10, 4, batches(10, 4), &mut log).unwrap();
            assert!(f.disk_path().is_none());
        }
        assert!(c.memory_used() <= 400);
        assert!(!c.entries.iter().any(|(k, _)| *k == 1), "the oldest entry made room");
        let big = c.get_or_compute(9, 30, 4, batches(30, 4), &mut log).unwrap();
        assert!(big.disk_path().is_some(), "480 bytes do not fit a 400-byte budget");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_follow_pixels_labels_and_views() {
        let split = Split { paths: vec!["a".into()], labels: vec![0], pixels: Pixels::Memory(vec![vec![1, 2, 3]]) };
        let mut other = Split { pixels: Pixels::Memory(vec![vec![1, 2, 4]]), ..split.clone() };
        let m = KeyHasher::default();
        let k = split_key(&m, &split, 1, None);
        assert_eq!(k, split_key(&m, &split.clone(), 1, None));
        assert_ne!(k, split_key(&m, &other, 1, None));
        other.pixels = split.pixels.clone();
        other.labels = vec![1];
        assert_ne!(k, split_key(&m, &other, 1, None));
        let aug = Augmenter::new(Default::default());
        let v0 = split_key(&m, &split, 1, Some((&aug, 5, 0)));
        assert_ne!(v0, k);
        assert_ne!(v0, split_key(&m, &split, 1, Some((&aug, 5, 1))));
        assert_ne!(v0, split_key(&m, &split, 1, Some((&aug, 6, 0))));
        let mut h2 = KeyHasher::default();
        h2.u64(1);
        assert_ne!(k, split_key(&h2, &split, 1, None), "the model part counts");
    }
}
