//! Reading and writing weight files: safetensors (memory-mapped) and PyTorch
//! checkpoints in both the zip and the legacy format ([`pth`]); fetching
//! remote ones ([`hub`], with the `hub` feature).

#[cfg(feature = "hub")]
pub mod hub;
pub mod pth;
pub mod torch_save;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::recipe::WeightsSource;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::fs::atomic_write;

/// The container formats tlab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    PthZip,
    PthLegacy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::PthZip => "PyTorch zip checkpoint",
            Format::PthLegacy => "PyTorch legacy checkpoint",
        }
    }
}

/// Detects the format from the file's first bytes (not its extension, which
/// users get wrong: `.pt`, `.pth`, `.bin`, `.ckpt` all occur).
pub fn detect(path: &Path) -> Result<Format> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
    let head = &head[..n];
    if let Some(fmt) = pth::detect(head) {
        return Ok(match fmt {
            pth::PthFormat::Zip => Format::PthZip,
            pth::PthFormat::Legacy => Format::PthLegacy,
        });
    }
    // safetensors: u64 header length, then a JSON object.
    if n >= 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    if n == 0 {
        return Err(Error::weights(path, "file is empty"));
    }
    Err(Error::weights(path, "not a weights file: expected safetensors or a PyTorch checkpoint (.pth/.pt)"))
}

/// The local file of a weights source: a path as is; `hf:` and URL sources
/// fetched into their cache first (see [`hub`]).
pub(crate) fn resolve_source(source: &WeightsSource) -> Result<PathBuf> {
    #[cfg(feature = "hub")]
    {
        hub::resolve(source, &hub::FetchOptions::from_env())
    }
    #[cfg(not(feature = "hub"))]
    match source {
        WeightsSource::Path(p) => Ok(p.clone()),
        other => Err(Error::NoHub(format!("{other:?}"))),
    }
}

/// Every tensor of a weights file, by name.
pub fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(load_ordered(path)?.into_iter().collect())
}

/// Every tensor of a weights file, in file order.
pub fn load_ordered(path: &Path) -> Result<Vec<(String, Tensor)>> {
    match detect(path)? {
        Format::Safetensors => {
            let map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
                .map_err(|e| Error::weights(path, format!("bad safetensors file: {e}")))?;
            let mut v: Vec<_> = map.into_iter().collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(v)
        }
        Format::PthZip | Format::PthLegacy => pth::read(path),
    }
}

/// Writes tensors as safetensors, atomically, converting floating tensors to `dtype`.
pub fn save_safetensors(tensors: &[(String, Tensor)], dtype: DType, path: &Path) -> Result<()> {
    let mut out: HashMap<String, Tensor> = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = match t.dtype() {
            d if d.is_float() => t.to_dtype(dtype)?,
            DType::U8 | DType::U32 | DType::I64 => t.clone(),
            // Anything safetensors-incompatible here (rare integer types) is widened.
            _ => t.to_dtype(DType::I64)?,
        };
        out.insert(name.clone(), t.contiguous()?);
    }
    let bytes = safetensors::serialize(out.iter().map(|(k, v)| (k.as_str(), SafeView(v))), None)
        .map_err(|e| Error::weights(path, format!("cannot serialise: {e}")))?;
    atomic_write(path, &bytes)
}

/// Adapts a candle tensor to `safetensors::View` without candle's own
/// non-atomic `save`.
struct SafeView<'a>(&'a Tensor);

impl safetensors::View for SafeView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.0.dtype() {
            DType::U8 => safetensors::Dtype::U8,
            DType::U32 => safetensors::Dtype::U32,
            DType::I64 => safetensors::Dtype::I64,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F16 => safetensors::Dtype::F16,
            DType::F64 => safetensors::Dtype::F64,
            _ => safetensors::Dtype::F32,
        }
    }
    fn shape(&self) -> &[usize] {
        self.0.dims()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Owned(tensor_bytes(self.0))
    }
    fn data_len(&self) -> usize {
        self.0.elem_count() * self.0.dtype().size_in_bytes()
    }
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    fn flat<T: candle_core::WithDType>(t: &Tensor, f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
        t.flatten_all().and_then(|t| t.to_vec1::<T>()).map(|v| v.into_iter().flat_map(f).collect()).unwrap_or_default()
    }
    match t.dtype() {
        DType::U8 => flat::<u8>(t, |v| vec![v]),
        DType::U32 => flat::<u32>(t, |v| v.to_le_bytes().to_vec()),
        DType::I64 => flat::<i64>(t, |v| v.to_le_bytes().to_vec()),
        DType::BF16 => flat::<half::bf16>(t, |v| v.to_le_bytes().to_vec()),
        DType::F16 => flat::<half::f16>(t, |v| v.to_le_bytes().to_vec()),
        DType::F64 => flat::<f64>(t, |v| v.to_le_bytes().to_vec()),
        _ => flat::<f32>(t, |v| v.to_le_bytes().to_vec()),
    }
}
