//! `tlab embed`: a frozen backbone's pooled features for every image of a
//! folder, for scikit-learn, nearest-neighbour search or a notebook — the
//! feature extraction the Keras tutorial suggests for data far from
//! ImageNet.
//!
//! Images are decoded and resized as for training (squashed to the size,
//! bilinear), a batch at a time in parallel, so a folder larger than memory
//! streams; only the features (4 bytes × channels per image) are kept. The
//! backbone runs with every block frozen (BatchNorm folded, the fused
//! kernels), as `tlab predict` does.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::{self, Classifier, Preprocess};
use crate::recipe::{HeadConfig, Pooling};

/// A backbone cut after one of its blocks, averaging that block's map.
pub struct Embedder {
    model: Classifier,
    blocks: usize,
    preprocess: Preprocess,
    size: u32,
    /// The block whose output is pooled.
    pub layer: String,
}

/// What [`Embedder::embed`] gives back.
pub struct Embeddings {
    /// `[images, channels]`, in the order of `paths`.
    pub features: Tensor,
    pub paths: Vec<PathBuf>,
    /// Files that did not decode, with why (left out of `features`).
    pub skipped: Vec<(PathBuf, String)>,
}

impl Embedder {
    /// `arch` with the weights at `weights` (a file, `hf:` or a URL), cut
    /// after block `layer` (default: the last), at `size` pixels (default:
    /// the model card's input size).
    pub fn new(arch: &str, weights: &str, layer: Option<&str>, size: Option<u32>) -> Result<Self> {
        crate::kernels::keep_candle_pool_off();
        let source = crate::recipe::weights_source(weights, Path::new("."));
        let path = crate::formats::weights::resolve_source(&source)?;
        let tensors = crate::formats::weights::load(&path)?;
        let backbone = models::backbone_from_tensors(arch, path.display().to_string(), tensors, false)?;
        let names = backbone.block_names();
        let blocks = match layer {
            None => names.len(),
            Some(name) => models::block_position("--layer", &names, name)? + 1,
        };
        let layer = names[blocks - 1].clone();
        let preprocess = backbone.preprocess();
        let size = size.unwrap_or(preprocess.input_size);
        let head = HeadConfig { pooling: Pooling::Avg, hidden: vec![], dropout: 0.0, batchnorm: false };
        let head = models::Head::new(&head, backbone.feature_channels(), 1, 0)?;
        let mut model = Classifier::new(backbone, head);
        model.freeze(names.len(), false)?;
        Ok(Embedder { model, blocks, preprocess, size, layer })
    }

    /// Features of `paths`, `batch` images at a time; `progress` hears how
    /// many are done.
    pub fn embed(&self, paths: &[PathBuf], batch: usize, progress: &mut dyn FnMut(usize)) -> Result<Embeddings> {
        let s = self.size as usize;
        let (mut parts, mut kept, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
        for (n, chunk) in paths.chunks(batch.max(1)).enumerate() {
            let decoded: Vec<(PathBuf, std::result::Result<Vec<u8>, String>)> =
                chunk.par_iter().map(|p| (p.clone(), crate::data::decode(p, self.size))).collect();
            let mut pixels = Vec::with_capacity(chunk.len() * s * s * 3);
            let mut count = 0;
            for (path, px) in decoded {
                match px {
                    Ok(px) => {
                        pixels.extend(px.iter().map(|&v| f32::from(v)));
                        kept.push(path);
                        count += 1;
                    }
                    Err(why) => skipped.push((path, why)),
                }
            }
            if count > 0 {
                let x = self.preprocess.to_tensor(&pixels, count, s, s)?;
                let f = self.model.prefix(&x, self.blocks)?;
                parts.push(models::mean_over_positions(f)?);
            }
            progress((n * batch + chunk.len()).min(paths.len()));
        }
        if parts.is_empty() {
            return Err(Error::data(
                paths.first().map_or(Path::new("."), PathBuf::as_path),
                "no image decoded, so no features",
            ));
        }
        Ok(Embeddings { features: Tensor::cat(&parts, 0)?, paths: kept, skipped })
    }
}

impl Embeddings {
    /// Writes `features` (`[images, channels]`, f32) to a safetensors file
    /// and, beside it, `<stem>.csv` (`index,path,class`: the class is the
    /// image's folder below `root` when it sits in one). Both atomically.
    pub fn save(&self, file: &Path, root: &Path) -> Result<PathBuf> {
        crate::formats::weights::save_safetensors(
            &[("features".to_string(), self.features.clone())],
            candle_core::DType::F32,
            file,
        )?;
        let mut csv = String::from("index,path,class\n");
        for (i, p) in self.paths.iter().enumerate() {
            let class = p
                .strip_prefix(root)
                .ok()
                .filter(|rel| rel.components().count() > 1)
                .and_then(|rel| rel.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            csv +=
                &format!("{i},{},{}\n", crate::fs::csv_field(&p.display().to_string()), crate::fs::csv_field(&class));
        }
        let index = file.with_extension("csv");
        crate::fs::atomic_write(&index, csv.as_bytes())?;
        Ok(index)
    }
}
