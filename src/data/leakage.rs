//! Copies across splits: validation or test images that are also training
//! images inflate the accuracy a run reports. `tlab check` compares files,
//! the backbone step decoded pixels; `tlab data` (the doctor) finds near
//! copies too.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;

use super::{Pixels, Split};

/// Images of `other` (valid or test) that are pixel for pixel copies of
/// training images as the run decoded them: `(copy, original)` pairs. The
/// backbone step warns about them; hashing decoded bytes costs a fraction of
/// decoding them.
pub(crate) fn copies_of_training(train: &Split, other: &Split) -> Vec<(PathBuf, PathBuf)> {
    // Streamed images are not all decoded: compare their files instead.
    let (Pixels::Memory(train_pixels), Pixels::Memory(other_pixels)) = (&train.pixels, &other.pixels) else {
        return identical_files(&train.paths, &other.paths);
    };
    let hash = |px: &Vec<u8>| content_hash(px);
    let seen: HashMap<u64, usize> =
        train_pixels.par_iter().map(hash).collect::<Vec<_>>().into_iter().zip(0..).collect();
    let copies: Vec<Option<usize>> = other_pixels.par_iter().map(|px| seen.get(&hash(px)).copied()).collect();
    copies.into_iter().zip(&other.paths).filter_map(|(t, p)| Some((p.clone(), train.paths[t?].clone()))).collect()
}

/// Files of `other` whose bytes equal a file of `train`: `(copy, original)`.
/// Only files of a size both lists share are read, so `tlab check` stays
/// quick on photos.
pub(crate) fn identical_files(train: &[PathBuf], other: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let sized = |files: &[PathBuf]| -> Vec<(u64, PathBuf)> {
        files.par_iter().filter_map(|p| Some((std::fs::metadata(p).ok()?.len(), p.clone()))).collect()
    };
    let (train, other) = (sized(train), sized(other));
    let other_sizes: HashSet<u64> = other.iter().map(|(n, _)| *n).collect();
    let train_sizes: HashSet<u64> = train.iter().map(|(n, _)| *n).collect();
    let hashed = |files: Vec<(u64, PathBuf)>, keep: &HashSet<u64>| -> Vec<(u64, PathBuf)> {
        files
            .into_par_iter()
            .filter(|(n, _)| keep.contains(n))
            .filter_map(|(_, p)| Some((content_hash(&std::fs::read(&p).ok()?), p)))
            .collect()
    };
    let originals: HashMap<u64, PathBuf> = hashed(train, &other_sizes).into_iter().collect();
    hashed(other, &train_sizes).into_iter().filter_map(|(h, p)| Some((p, originals.get(&h)?.clone()))).collect()
}

/// A 64-bit hash of bytes (SipHash, std's): equal contents, equal hashes.
fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_training_images_are_found_by_their_pixels() {
        let split = |names: &[&str], pixels: Vec<Vec<u8>>| super::Split {
            paths: names.iter().map(PathBuf::from).collect(),
            labels: vec![0; names.len()],
            pixels: super::Pixels::Memory(pixels),
        };
        let train = split(&["t0", "t1"], vec![vec![1, 2, 3], vec![4, 5, 6]]);
        let valid = split(&["v0", "v1", "v2"], vec![vec![4, 5, 6], vec![7, 8, 9], vec![1, 2, 4]]);
        assert_eq!(copies_of_training(&train, &valid), [(PathBuf::from("v0"), PathBuf::from("t1"))]);
    }
}
