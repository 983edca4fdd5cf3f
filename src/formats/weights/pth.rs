//! PyTorch checkpoints (`.pth`/`.pt`) in both of their on-disk formats.
//!
//! * **zip** (torch ≥ 1.6): `archive/data.pkl` holds the pickled state dict and
//!   each storage is a separate member `archive/data/<key>`.
//! * **legacy** (torch < 1.6, still what many published weights use, e.g.
//!   torchvision's `mobilenet_v2-b0353104.pth`): one stream of
//!   `magic number pickle | protocol pickle | sys-info pickle | state-dict pickle |
//!   storage-key list pickle`, followed by every storage as a little-endian
//!   `u64` element count and its raw little-endian bytes.
//!
//! candle's pickle VM (`candle_core::pickle::Stack`) evaluates the pickles;
//! this module walks the resulting objects itself because candle's own loader
//! only understands the zip format and only contiguous (or fully transposed)
//! tensors, while published checkpoints contain arbitrary permuted strides
//! (the EfficientNet-Lite files store TF-ordered convolution kernels).

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The legacy format's magic number, `0x1950a86a20f9469cfc6c`, as the
/// little-endian bytes of its pickle `LONG1` payload.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The only legacy protocol version torch has ever written.
const LEGACY_PROTOCOL: i64 = 1001;

/// Which of the two container formats a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PthFormat {
    Zip,
    Legacy,
}

/// Sniffs the format from the first bytes; `None` when it is neither.
pub fn detect(bytes: &[u8]) -> Option<PthFormat> {
    if bytes.starts_with(b"PK\x03\x04") {
        Some(PthFormat::Zip)
    } else if bytes.len() > 4 && bytes[0] == 0x80 && bytes[2] == 0x8a && bytes[3] == 10 {
        Some(PthFormat::Legacy)
    } else {
        None
    }
}

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Debug, Clone)]
struct TensorSpec {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    offset: usize,
    storage_key: String,
}

/// Reads every tensor of a `.pth` file, in state-dict order.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_bytes(&bytes).map_err(|message| Error::weights(path, message))
}

/// Parses a checkpoint held in memory. Errors are plain messages; [`read`]
/// adds the file name.
pub fn read_bytes(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    match detect(bytes) {
        Some(PthFormat::Zip) => read_zip(bytes),
        Some(PthFormat::Legacy) => read_legacy(bytes),
        None => Err("not a PyTorch checkpoint: neither a zip archive nor a legacy pickle stream".into()),
    }
}

fn read_zip(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("bad zip archive: {e}"))?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or("zip archive has no data.pkl: not a torch.save checkpoint")?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    let pickle = read_member(&mut zip, &pkl_name, 1 << 30)?;
    let specs = tensor_specs(parse_pickle(&mut Cursor::new(&pickle[..]))?)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        if !storages.contains_key(&spec.storage_key) {
            let member = format!("{prefix}data/{}", spec.storage_key);
            let data = read_member(&mut zip, &member, bytes.len() as u64)?;
            storages.insert(spec.storage_key.clone(), data);
        }
        let tensor = materialise(&spec, &storages[&spec.storage_key])?;
        out.push((spec.name, tensor));
    }
    Ok(out)
}

fn read_member(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    limit: u64,
) -> std::result::Result<Vec<u8>, String> {
    let member = zip.by_name(name).map_err(|e| format!("zip member {name}: {e}"))?;
    if member.size() > limit {
        return Err(format!("zip member {name} claims {} bytes, more than the file holds", member.size()));
    }
    let mut data = Vec::with_capacity(member.size() as usize);
    member.take(limit).read_to_end(&mut data).map_err(|e| format!("zip member {name}: {e}"))?;
    Ok(data)
}

fn read_legacy(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    // The magic number is skipped by hand: candle's LONG1 decoder shifts past
    // 64 bits on this 10-byte integer (an overflow panic in debug builds).
    let magic_len = 4 + LEGACY_MAGIC.len() + 1;
    if bytes.len() < magic_len || bytes[4..14] != LEGACY_MAGIC || bytes[14] != b'.' {
        return Err("legacy PyTorch stream with a wrong magic number (file corrupt or not a checkpoint)".into());
    }
    let mut cursor = Cursor::new(&bytes[magic_len..]);
    let protocol = parse_pickle(&mut cursor)?;
    match protocol {
        Object::Int(v) if i64::from(v) == LEGACY_PROTOCOL => {}
        Object::Long(v) if v == LEGACY_PROTOCOL => {}
        other => return Err(format!("unsupported legacy protocol version {other:?} (expected 1001)")),
    }
    let sys_info = parse_pickle(&mut cursor)?;
    if let Object::Dict(entries) = &sys_info {
        let big_endian =
            entries.iter().any(|(k, v)| *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(false));
        if big_endian {
            return Err("big-endian checkpoints are not supported".into());
        }
    }
    let specs = tensor_specs(parse_pickle(&mut cursor)?)?;
    let keys = match parse_pickle(&mut cursor)? {
        Object::List(keys) | Object::Tuple(keys) => keys
            .into_iter()
            .map(|k| k.unicode().map_err(|o| format!("storage key is not a string: {o:?}")))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => return Err(format!("expected the storage key list, found {other:?}")),
    };
    let dtypes: HashMap<&str, DType> = specs.iter().map(|s| (s.storage_key.as_str(), s.dtype)).collect();

    // Storages follow in key order, each as `u64 count` + raw data.
    let data = &bytes[magic_len + cursor.position() as usize..];
    let mut pos = 0usize;
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for key in &keys {
        let dtype = *dtypes
            .get(key.as_str())
            .ok_or_else(|| format!("storage {key} is not used by any tensor, its element type is unknown"))?;
        let count_bytes =
            data.get(pos..pos + 8).ok_or_else(|| format!("file truncated in the header of storage {key}"))?;
        let count = u64::from_le_bytes(count_bytes.try_into().expect("8-byte slice"));
        pos += 8;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size_in_bytes()))
            .ok_or_else(|| format!("storage {key} claims an impossible size ({count} elements)"))?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| format!("file truncated: storage {key} needs {len} bytes, {} remain", data.len() - pos))?;
        storages.insert(key.as_str(), &data[pos..end]);
        pos = end;
    }
    specs
        .into_iter()
        .map(|spec| {
            let storage = storages
                .get(spec.storage_key.as_str())
                .ok_or_else(|| format!("tensor {} refers to missing storage {}", spec.name, spec.storage_key))?;
            Ok((spec.name.clone(), materialise(&spec, storage)?))
        })
        .collect()
}

/// Runs candle's pickle VM on one pickle. The VM indexes and shifts without
/// checks in places, so a panic on hostile input becomes an error here.
fn parse_pickle(cursor: &mut Cursor<&[u8]>) -> std::result::Result<Object, String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stack = Stack::empty();
        // candle's `read_loop`, one opcode at a time, refusing a LONG1 wider
        // than 8 bytes: candle shifts it into an i64, which overflows (a
        // panic with overflow checks; found by the `pth` fuzz target).
        loop {
            let rest = &cursor.get_ref()[cursor.position() as usize..];
            if let [0x8a, n, ..] = rest {
                if *n > 8 {
                    candle_core::bail!("integer of {n} bytes (LONG1) is out of range");
                }
            }
            if stack.read(cursor)? {
                break;
            }
        }
        stack.finalize()
    }));
    match result {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(e)) => Err(format!("malformed pickle: {e}")),
        Err(_) => Err("malformed pickle (the pickle reader gave up)".into()),
    }
}

/// Finds the state dict (possibly nested under `state_dict`/`model`, or a
/// `Build` carrying `_metadata`) and describes each tensor in it.
fn tensor_specs(obj: Object) -> std::result::Result<Vec<TensorSpec>, String> {
    let entries = state_dict_entries(obj).ok_or("the checkpoint holds no state dict (a dict of tensors)")?;
    let mut specs = Vec::new();
    for (key, value) in entries {
        let Ok(name) = key.unicode() else { continue };
        if let Some(spec) = tensor_spec(&name, value)? {
            specs.push(spec);
        }
    }
    if specs.is_empty() {
        return Err("the checkpoint's dict contains no tensors".into());
    }
    Ok(specs)
}

fn state_dict_entries(obj: Object) -> Option<Vec<(Object, Object)>> {
    match obj {
        Object::Dict(entries) => {
            // Training checkpoints wrap the weights: {"state_dict": {...}, "epoch": 3}.
            for wrapper in ["state_dict", "model_state_dict", "model", "module"] {
                if let Some((_, Object::Dict(_) | Object::Build { .. })) =
                    entries.iter().find(|(k, _)| *k == Object::Unicode(wrapper.into()))
                {
                    let (_, inner) = entries.into_iter().find(|(k, _)| *k == Object::Unicode(wrapper.into()))?;
                    return state_dict_entries(inner);
                }
            }
            Some(entries)
        }
        // OrderedDict with `_metadata` set through BUILD.
        Object::Build { callable, .. } => state_dict_entries(*callable),
        Object::Reduce { callable, args } => match *callable {
            Object::Class { class_name, .. } if class_name == "OrderedDict" => match *args {
                Object::Tuple(mut t) if !t.is_empty() => match t.remove(0) {
                    Object::List(items) => Some(
                        items
                            .into_iter()
                            .filter_map(|it| match it {
                                Object::Tuple(mut kv) if kv.len() == 2 => {
                                    let v = kv.pop()?;
                                    Some((kv.pop()?, v))
                                }
                                _ => None,
                            })
                            .collect(),
                    ),
                    _ => None,
                },
                _ => Some(vec![]),
            },
            _ => None,
        },
        _ => None,
    }
}

fn tensor_spec(name: &str, obj: Object) -> std::result::Result<Option<TensorSpec>, String> {
    let Object::Reduce { callable, args } = obj else { return Ok(None) };
    let Object::Class { module_name, class_name } = *callable else { return Ok(None) };
    let mut args = match *args {
        Object::Tuple(a) => a,
        _ => return Ok(None),
    };
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {}
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") if !args.is_empty() => {
            return tensor_spec(name, args.remove(0));
        }
        ("torch._tensor", "_rebuild_from_type_v2") if args.len() >= 3 => {
            let inner_args = args.remove(2);
            let func = args.remove(0);
            return tensor_spec(name, Object::Reduce { callable: Box::new(func), args: Box::new(inner_args) });
        }
        _ => return Ok(None),
    }
    if args.len() < 4 {
        return Err(format!("tensor {name}: malformed rebuild arguments"));
    }
    let bad = |what: &str| format!("tensor {name}: malformed {what}");
    let stride = int_list(args.remove(3)).ok_or_else(|| bad("stride"))?;
    let shape = int_list(args.remove(2)).ok_or_else(|| bad("shape"))?;
    let offset = int(args.remove(1)).ok_or_else(|| bad("storage offset"))?;
    let storage = match args.remove(0) {
        Object::PersistentLoad(id) => *id,
        _ => return Err(bad("storage reference")),
    };
    let Object::Tuple(mut id) = storage else { return Err(bad("storage reference")) };
    if id.len() < 5 {
        return Err(bad("storage reference"));
    }
    let key = id.remove(2).unicode().map_err(|_| bad("storage key"))?;
    let storage_type = match id.remove(1) {
        Object::Class { class_name, .. } => class_name,
        _ => return Err(bad("storage type")),
    };
    let dtype = match storage_type.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "ByteStorage" | "BoolStorage" => DType::U8,
        other => return Err(format!("tensor {name}: unsupported storage type {other}")),
    };
    if shape.len() != stride.len() {
        return Err(format!("tensor {name}: shape {shape:?} and stride {stride:?} differ in rank"));
    }
    Ok(Some(TensorSpec { name: name.to_owned(), dtype, shape, stride, offset, storage_key: key }))
}

fn int(obj: Object) -> Option<usize> {
    obj.int_or_long().ok().and_then(|v| usize::try_from(v).ok())
}

fn int_list(obj: Object) -> Option<Vec<usize>> {
    match obj {
        Object::Tuple(items) | Object::List(items) => items.into_iter().map(int).collect(),
        _ => None,
    }
}

/// Copies a strided view of a storage into a contiguous tensor, checking
/// every index against the storage size first.
fn materialise(spec: &TensorSpec, storage: &[u8]) -> std::result::Result<Tensor, String> {
    let elem = spec.dtype.size_in_bytes();
    let numel: usize = spec
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("tensor {}: shape {:?} overflows", spec.name, spec.shape))?;
    let storage_elems = storage.len() / elem;
    if numel > 0 {
        let last = spec
            .shape
            .iter()
            .zip(&spec.stride)
            .try_fold(spec.offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc)));
        if last.is_none_or(|l| l >= storage_elems) {
            return Err(format!(
                "tensor {}: view (shape {:?}, stride {:?}, offset {}) runs past its storage of {} elements",
                spec.name, spec.shape, spec.stride, spec.offset, storage_elems
            ));
        }
    }
    let contiguous_stride = contiguous_strides(&spec.shape);
    let bytes: Vec<u8> = if spec.stride == contiguous_stride || numel <= 1 {
        storage[spec.offset * elem..(spec.offset + numel) * elem].to_vec()
    } else {
        let mut out = Vec::with_capacity(numel * elem);
        let mut index = vec![0usize; spec.shape.len()];
        for _ in 0..numel {
            let src = spec.offset + index.iter().zip(&spec.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[src * elem..(src + 1) * elem]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < spec.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    };
    Tensor::from_raw_buffer(&bytes, spec.dtype, &spec.shape, &Device::Cpu)
        .map_err(|e| format!("tensor {}: {e}", spec.name))
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_checkpoints() {
        assert!(read_bytes(b"hello world").unwrap_err().contains("not a PyTorch checkpoint"));
        assert!(read_bytes(&[0x80, 2, 0x8a, 10, 0, 0]).unwrap_err().contains("magic"));
    }

    #[test]
    fn truncated_legacy_stream_is_an_error() {
        let mut bytes = vec![0x80, 2, 0x8a, 10];
        bytes.extend_from_slice(&LEGACY_MAGIC);
        bytes.push(b'.');
        bytes.extend_from_slice(&[0x80, 2, b'M']);
        assert!(read_bytes(&bytes).is_err());
    }

    #[test]
    fn materialise_permuted_strides() {
        // A 2×3 tensor stored transposed: storage is [[0,3],[1,4],[2,5]] row-major.
        let storage: Vec<u8> = [0f32, 3., 1., 4., 2., 5.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let spec = TensorSpec {
            name: "t".into(),
            dtype: DType::F32,
            shape: vec![2, 3],
            stride: vec![1, 2],
            offset: 0,
            storage_key: "0".into(),
        };
        let t = materialise(&spec, &storage).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![0., 1., 2.], vec![3., 4., 5.]]);
    }

    #[test]
    fn materialise_rejects_out_of_bounds_views() {
        let storage = vec![0u8; 8];
        let spec = TensorSpec {
            name: "t".into(),
            dtype: DType::F32,
            shape: vec![3],
            stride: vec![1],
            offset: 0,
            storage_key: "0".into(),
        };
        assert!(materialise(&spec, &storage).unwrap_err().contains("runs past"));
    }
}
