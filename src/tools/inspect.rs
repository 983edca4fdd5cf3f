//! `tlab inspect FILE`: the tensors of a weights file, and which of tlab's
//! architectures it loads into (with its ImageNet classifier, or as a
//! backbone only), under whichever naming scheme it uses (torchvision, timm,
//! Keras-converted…).

use std::collections::HashMap;
use std::path::Path;

use crate::error::Result;
use crate::formats::weights;
use crate::models::{self, layers::ParamLoader};

/// One tensor of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub dims: Vec<usize>,
}

/// What `tlab inspect` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub format: weights::Format,
    pub tensors: Vec<TensorInfo>,
    /// `arch (with ImageNet classifier|backbone only, naming)` for every
    /// architecture the file loads into completely.
    pub fits: Vec<String>,
}

/// Reads `file` and tries it against every architecture.
pub fn inspect(file: &Path) -> Result<Inspection> {
    let format = weights::detect(file)?;
    let loaded = weights::load_ordered(file)?;
    let tensors = loaded
        .iter()
        .map(|(name, t)| TensorInfo {
            name: name.clone(),
            dtype: format!("{:?}", t.dtype()).to_lowercase(),
            dims: t.dims().to_vec(),
        })
        .collect();
    let map: HashMap<_, _> = loaded.into_iter().collect();
    let mut fits = Vec::new();
    for arch in models::ARCHITECTURES {
        let (renamed, naming) = models::naming::to_reference(arch, map.clone())?;
        for with_classifier in [true, false] {
            let mut p = ParamLoader::from_tensors(file.display().to_string(), renamed.clone());
            let Ok(b) = models::build_backbone(arch, &mut p, with_classifier) else { continue };
            if !with_classifier {
                p.skip_prefix(b.classifier_prefix());
            }
            if p.finish(true, None).is_ok() {
                let part = if with_classifier { "with ImageNet classifier" } else { "backbone only" };
                fits.push(format!("{arch} ({part}, {})", naming.name()));
                break;
            }
        }
    }
    Ok(Inspection { format, tensors, fits })
}

impl Inspection {
    /// The listing as printed: a line per tensor, the total, the fits.
    pub fn lines(&self, file: &Path) -> Vec<String> {
        let mut out = vec![format!("{}: {} with {} tensors", file.display(), self.format.name(), self.tensors.len())];
        let count = |t: &TensorInfo| t.dims.iter().product::<usize>();
        for t in &self.tensors {
            out.push(format!("  {:<50} {:<5} {:<20} {}", t.name, t.dtype, format!("{:?}", t.dims), count(t)));
        }
        out.push(format!("total {} values", self.tensors.iter().map(count).sum::<usize>()));
        out.push(match self.fits.is_empty() {
            true => format!("fits no known architecture ({})", models::ARCHITECTURES.join(", ")),
            false => format!("fits: {}", self.fits.join(", ")),
        });
        out
    }
}
