//! Writes a state dict the way `torch.save` does (the zip format PyTorch has
//! used since 1.6): `archive/data.pkl` (a protocol-2 pickle of an
//! `OrderedDict` whose values rebuild tensors with
//! `torch._utils._rebuild_tensor_v2` from persistent storages),
//! `archive/data/N` (each storage's little-endian bytes, 64-byte aligned as
//! PyTorch aligns them), `archive/byteorder` and `archive/version`.
//! `torch.load(path, weights_only=True)` reads it.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// A tensor to save: float32 values, or an int64 scalar (BatchNorm's
/// `num_batches_tracked`).
pub enum Value {
    F32(Tensor),
    I64(i64),
}

/// Pickle opcodes (protocol 2) used here.
mod op {
    pub(crate) const PROTO: u8 = 0x80;
    pub(crate) const GLOBAL: u8 = b'c';
    pub(crate) const EMPTY_TUPLE: u8 = b')';
    pub(crate) const REDUCE: u8 = b'R';
    pub(crate) const MARK: u8 = b'(';
    pub(crate) const TUPLE: u8 = b't';
    pub(crate) const BINUNICODE: u8 = b'X';
    pub(crate) const BININT: u8 = b'J';
    pub(crate) const NEWFALSE: u8 = 0x89;
    pub(crate) const BINPERSID: u8 = b'Q';
    pub(crate) const SETITEMS: u8 = b'u';
    pub(crate) const STOP: u8 = b'.';
}

struct Pickler(Vec<u8>);

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: usize) -> Result<()> {
        let v = i32::try_from(v).map_err(|_| Error::Export(format!("tensor dimension {v} too large to save")))?;
        self.0.push(op::BININT);
        self.0.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn int_tuple(&mut self, values: &[usize]) -> Result<()> {
        self.0.push(op::MARK);
        for &v in values {
            self.int(v)?;
        }
        self.0.push(op::TUPLE);
        Ok(())
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.0.push(op::EMPTY_TUPLE);
        self.0.push(op::REDUCE);
    }
    /// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`
    /// with the storage a persistent id `('storage', Type, key, 'cpu', numel)`.
    fn tensor(&mut self, storage_type: &str, key: &str, dims: &[usize]) -> Result<()> {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.0.push(op::MARK);
        self.0.push(op::MARK);
        self.string("storage");
        self.global("torch", storage_type);
        self.string(key);
        self.string("cpu");
        self.int(dims.iter().product::<usize>().max(1))?;
        self.0.push(op::TUPLE);
        self.0.push(op::BINPERSID);
        self.int(0)?;
        self.int_tuple(dims)?;
        let mut stride = vec![1usize; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * dims[i + 1];
        }
        self.int_tuple(&stride)?;
        self.0.push(op::NEWFALSE);
        self.empty_ordered_dict();
        self.0.push(op::TUPLE);
        self.0.push(op::REDUCE);
        Ok(())
    }
}

/// The `.pth` bytes of `tensors` (in order) as an `OrderedDict` state dict.
pub(crate) fn state_dict_bytes(tensors: &[(String, Value)]) -> Result<Vec<u8>> {
    let mut p = Pickler(vec![op::PROTO, 2]);
    p.empty_ordered_dict();
    p.0.push(op::MARK);
    let mut storages: Vec<Vec<u8>> = Vec::new();
    for (k, (name, value)) in tensors.iter().enumerate() {
        p.string(name);
        let key = k.to_string();
        match value {
            Value::F32(t) => {
                let dims = t.dims().to_vec();
                p.tensor("FloatStorage", &key, &dims)?;
                let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                storages.push(values.iter().flat_map(|v| v.to_le_bytes()).collect());
            }
            Value::I64(v) => {
                p.tensor("LongStorage", &key, &[])?;
                storages.push(v.to_le_bytes().to_vec());
            }
        }
    }
    p.0.push(op::SETITEMS);
    p.0.push(op::STOP);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let zip_err = |source| Error::Zip { what: "the .pth archive", source };
    let io_err = |e: std::io::Error| zip_err(zip::result::ZipError::Io(e));
    zip.start_file("archive/data.pkl", stored).map_err(zip_err)?;
    zip.write_all(&p.0).map_err(io_err)?;
    zip.start_file("archive/byteorder", stored).map_err(zip_err)?;
    zip.write_all(b"little").map_err(io_err)?;
    for (k, bytes) in storages.iter().enumerate() {
        zip.start_file(format!("archive/data/{k}"), stored.with_alignment(64)).map_err(zip_err)?;
        zip.write_all(bytes).map_err(io_err)?;
    }
    zip.start_file("archive/version", stored).map_err(zip_err)?;
    zip.write_all(b"3\n").map_err(io_err)?;
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

/// Writes `tensors` to `path` atomically.
pub fn save(tensors: &[(String, Value)], path: &Path) -> Result<()> {
    crate::fs::atomic_write(path, &state_dict_bytes(tensors)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// tlab's own `.pth` reader (the one that loads torchvision's files)
    /// reads back what the writer wrote.
    #[test]
    fn round_trips_through_the_pth_reader() {
        let a = Tensor::arange(0f32, 24.0, &Device::Cpu).unwrap().reshape((2, 3, 4)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        let tensors = vec![
            ("a.weight".to_string(), Value::F32(a.clone())),
            ("b.bias".into(), Value::F32(b.clone())),
            ("bn.num_batches_tracked".into(), Value::I64(7)),
        ];
        let dir = std::env::temp_dir().join(format!("tlab-torch-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pth");
        save(&tensors, &path).unwrap();
        let back = crate::formats::weights::load(&path).unwrap();
        let get = |k: &str| {
            back.get(k).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(get("a.weight"), a.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(back["a.weight"].dims(), &[2, 3, 4]);
        assert_eq!(get("b.bias"), vec![1.5, -2.0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
