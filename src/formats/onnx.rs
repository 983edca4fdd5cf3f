//! ONNX graphs, written without Python: the messages of the official
//! `onnx.proto` that a CNN classifier needs (field numbers as in that file,
//! encoded with `prost`), and a small builder that tracks each value's shape
//! so padding that depends on the input size (TensorFlow's "SAME") can be
//! spelled out at export time.
//!
//! The builder emits only standard ops of the default domain (opset 17):
//! `Conv`, `Relu`, `Clip`, `Add`, `MaxPool`, `GlobalAveragePool`, `Flatten`,
//! `Gemm`, `Softmax`, and for the optional preprocessing `Cast`, `Transpose`,
//! `Sub`, `Div`.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::kernels::Padding;

/// The opset the exporter targets unless told otherwise.
pub const DEFAULT_OPSET: i64 = 17;
/// ONNX IR version 8 goes with opsets 15–18.
const IR_VERSION: i64 = 8;

/// `TensorProto.DataType` values used here.
pub mod dtype {
    pub(crate) const FLOAT: i32 = 1;
    pub(crate) const UINT8: i32 = 2;
    pub(crate) const INT64: i32 = 7;
    pub(crate) const FLOAT16: i32 = 10;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto`; `r#type` is the `AttributeType` (1 FLOAT, 2 INT, 7 INTS).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One dimension: a number, or a name for a size chosen at run time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// Stride, padding and groups of a convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub pad: Padding,
    pub groups: usize,
}

/// A value in the graph under construction: its name and its shape without
/// the batch dimension (`[c, h, w]` for maps, `[n]` for vectors).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: values.to_vec(), r#type: 7, ..Default::default() }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: value, r#type: 2, ..Default::default() }
}

/// A graph being built, op by op, in forward order.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Store weights as float16 (half the file; ONNX Runtime computes in
    /// float32 after a `Cast`).
    fp16: bool,
    counter: usize,
}

impl Graph {
    pub fn new(fp16: bool) -> Graph {
        Graph { fp16, ..Default::default() }
    }

    fn fresh(&mut self, op: &str) -> String {
        self.counter += 1;
        format!("{}_{}", op.to_ascii_lowercase(), self.counter)
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attributes: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.into(),
            attribute: attributes,
        });
        out
    }

    /// A float constant named `name` (state-dict names keep the graph
    /// readable in Netron). With `fp16` it is stored as float16 and cast.
    pub fn constant(&mut self, name: &str, t: &Tensor) -> Result<String> {
        let dims: Vec<i64> = t.dims().iter().map(|&d| d as i64).collect();
        let values = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        self.constant_values(name, &dims, &values)
    }

    fn constant_values(&mut self, name: &str, dims: &[i64], values: &[f32]) -> Result<String> {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Export(format!("`{name}` holds NaN or infinite values")));
        }
        let (data_type, raw_data) = if self.fp16 {
            (dtype::FLOAT16, values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect())
        } else {
            (dtype::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        };
        let stored = if self.fp16 { format!("{name}.f16") } else { name.to_string() };
        self.initializers.push(TensorProto { dims: dims.to_vec(), data_type, name: stored.clone(), raw_data });
        if self.fp16 {
            self.nodes.push(NodeProto {
                input: vec![stored],
                output: vec![name.to_string()],
                name: format!("{name}.cast"),
                op_type: "Cast".into(),
                attribute: vec![int("to", i64::from(dtype::FLOAT))],
            });
        }
        Ok(name.to_string())
    }

    /// `Conv` with weight `w` `[cout, cin/groups, kh, kw]` and bias `b` `[cout]`.
    pub fn conv(&mut self, x: &Value, name: &str, (w, b): (&Tensor, &Tensor), geometry: ConvGeometry) -> Result<Value> {
        let ConvGeometry { stride, pad, groups } = geometry;
        let (cout, kh, kw) = (w.dim(0)?, w.dim(2)?, w.dim(3)?);
        let (h, wd) = (x.shape[1], x.shape[2]);
        let out = |n: usize, before: usize, after: usize, k: usize| (n + before + after - k) / stride + 1;
        let shape = vec![cout, out(h, pad.top, pad.bottom, kh), out(wd, pad.left, pad.right, kw)];
        let w = self.constant(&format!("{name}.weight"), w)?;
        let b = self.constant(&format!("{name}.bias"), &b.flatten_all()?)?;
        let attributes = vec![
            ints("kernel_shape", &[kh as i64, kw as i64]),
            ints("strides", &[stride as i64, stride as i64]),
            ints("pads", &[pad.top as i64, pad.left as i64, pad.bottom as i64, pad.right as i64]),
            ints("dilations", &[1, 1]),
            int("group", groups as i64),
        ];
        let name = self.node("Conv", vec![x.name.clone(), w, b], attributes);
        Ok(Value { name, shape })
    }

    /// `clamp(x, lo, hi)`: nothing for (−∞, ∞), `Relu` for [0, ∞), else `Clip`.
    pub(crate) fn clamp(&mut self, x: Value, lo: f32, hi: f32) -> Result<Value> {
        if lo == f32::NEG_INFINITY && hi == f32::INFINITY {
            return Ok(x);
        }
        if lo == 0.0 && hi == f32::INFINITY {
            return Ok(self.relu(&x));
        }
        let (lo_name, hi_name) = (format!("clip.min.{lo}"), format!("clip.max.{hi}"));
        // Clip's bounds are float32 inputs, never cast.
        for (n, v) in [(&lo_name, lo), (&hi_name, hi)] {
            if !self.initializers.iter().any(|t| &t.name == n) {
                self.initializers.push(TensorProto {
                    dims: vec![],
                    data_type: dtype::FLOAT,
                    name: n.clone(),
                    raw_data: v.to_le_bytes().to_vec(),
                });
            }
        }
        let name = self.node("Clip", vec![x.name, lo_name, hi_name], vec![]);
        Ok(Value { name, shape: x.shape })
    }

    /// A float32 scalar initializer named after its value (shared by every use).
    fn scalar(&mut self, v: f32) -> String {
        let name = format!("scalar.{v}");
        if !self.initializers.iter().any(|t| t.name == name) {
            self.initializers.push(TensorProto {
                dims: vec![],
                data_type: dtype::FLOAT,
                name: name.clone(),
                raw_data: v.to_le_bytes().to_vec(),
            });
        }
        name
    }

    /// PyTorch's `Hardsigmoid`, `relu6(x + 3) / 6`, from opset-13 ops (the
    /// `HardSigmoid` op's default slope is 0.2, not 1/6).
    pub(crate) fn hard_sigmoid(&mut self, x: &Value) -> Result<Value> {
        let three = self.scalar(3.0);
        let six = self.scalar(6.0);
        let shifted = Value { name: self.node("Add", vec![x.name.clone(), three], vec![]), shape: x.shape.clone() };
        let clipped = self.clamp(shifted, 0.0, 6.0)?;
        Ok(Value { name: self.node("Div", vec![clipped.name, six], vec![]), shape: x.shape.clone() })
    }

    /// PyTorch's `Hardswish`, `x · relu6(x + 3) / 6` (`HardSwish` needs opset 14).
    pub(crate) fn hard_swish(&mut self, x: &Value) -> Result<Value> {
        let gate = self.hard_sigmoid(x)?;
        Ok(self.mul(x, &gate))
    }

    pub fn sigmoid(&mut self, x: &Value) -> Value {
        Value { name: self.node("Sigmoid", vec![x.name.clone()], vec![]), shape: x.shape.clone() }
    }

    /// A one-input op that keeps the shape (`Sqrt`, `Erf`, …).
    pub(crate) fn unary(&mut self, op: &str, x: &Value) -> Value {
        Value { name: self.node(op, vec![x.name.clone()], vec![]), shape: x.shape.clone() }
    }

    /// A broadcasting two-input op (`Sub`, `Div`, …) shaped like `a`.
    pub fn binary(&mut self, op: &str, a: &Value, b: &Value) -> Value {
        Value { name: self.node(op, vec![a.name.clone(), b.name.clone()], vec![]), shape: a.shape.clone() }
    }

    /// A float32 scalar as a value (shared by every use).
    pub(crate) fn scalar_value(&mut self, v: f32) -> Value {
        Value { name: self.scalar(v), shape: vec![] }
    }

    /// A named constant tensor as a value (a per-channel scale, …); `shape`
    /// without the batch dimension.
    pub(crate) fn tensor_value(&mut self, name: &str, t: &Tensor) -> Result<Value> {
        Ok(Value { name: self.constant(name, t)?, shape: t.dims().to_vec() })
    }

    /// Elementwise product, `b` broadcast over `a` (a `[c, 1, 1]` scale over a map).
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        Value { name: self.node("Mul", vec![a.name.clone(), b.name.clone()], vec![]), shape: a.shape.clone() }
    }

    /// Global average pooling that keeps the map's rank: `[c, 1, 1]`.
    pub(crate) fn global_avg_pool_keep(&mut self, x: &Value) -> Value {
        Value { name: self.node("GlobalAveragePool", vec![x.name.clone()], vec![]), shape: vec![x.shape[0], 1, 1] }
    }

    pub fn relu(&mut self, x: &Value) -> Value {
        Value { name: self.node("Relu", vec![x.name.clone()], vec![]), shape: x.shape.clone() }
    }

    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        Value { name: self.node("Add", vec![a.name.clone(), b.name.clone()], vec![]), shape: a.shape.clone() }
    }

    /// `MaxPool` (`floor` output size, padding never wins the maximum).
    pub(crate) fn max_pool(&mut self, x: &Value, k: usize, stride: usize, pad: Padding) -> Value {
        let out = |n: usize, before: usize, after: usize| (n + before + after - k) / stride + 1;
        let shape = vec![x.shape[0], out(x.shape[1], pad.top, pad.bottom), out(x.shape[2], pad.left, pad.right)];
        let attributes = vec![
            ints("kernel_shape", &[k as i64, k as i64]),
            ints("strides", &[stride as i64, stride as i64]),
            ints("pads", &[pad.top as i64, pad.left as i64, pad.bottom as i64, pad.right as i64]),
        ];
        Value { name: self.node("MaxPool", vec![x.name.clone()], attributes), shape }
    }

    /// `AveragePool` whose zero padding counts in the mean (PyTorch's
    /// `avg_pool2d` default, `count_include_pad`).
    pub(crate) fn avg_pool(&mut self, x: &Value, k: usize, stride: usize, pad: usize) -> Value {
        let out = |n: usize| (n + 2 * pad - k) / stride + 1;
        let shape = vec![x.shape[0], out(x.shape[1]), out(x.shape[2])];
        let attributes = vec![
            ints("kernel_shape", &[k as i64, k as i64]),
            ints("strides", &[stride as i64, stride as i64]),
            ints("pads", &[pad as i64; 4]),
            int("count_include_pad", 1),
        ];
        Value { name: self.node("AveragePool", vec![x.name.clone()], attributes), shape }
    }

    /// Feature maps of the same size joined along the channels.
    pub(crate) fn concat_channels(&mut self, parts: &[Value]) -> Value {
        let channels = parts.iter().map(|p| p.shape[0]).sum();
        let mut shape = parts[0].shape.clone();
        shape[0] = channels;
        let inputs = parts.iter().map(|p| p.name.clone()).collect();
        Value { name: self.node("Concat", inputs, vec![int("axis", 1)]), shape }
    }

    /// `x · scale[c] + shift[c]` per channel (constants named `name.scale`, `name.shift`).
    pub(crate) fn channel_affine(&mut self, x: &Value, name: &str, scale: &[f32], shift: &[f32]) -> Result<Value> {
        let c = scale.len() as i64;
        let scale = self.constant_values(&format!("{name}.scale"), &[1, c, 1, 1], scale)?;
        let shift = self.constant_values(&format!("{name}.shift"), &[1, c, 1, 1], shift)?;
        let scaled = self.node("Mul", vec![x.name.clone(), scale], vec![]);
        Ok(Value { name: self.node("Add", vec![scaled, shift], vec![]), shape: x.shape.clone() })
    }

    /// Global average pooling to a vector of channels.
    pub fn global_avg_pool(&mut self, x: &Value) -> Value {
        let pooled = self.node("GlobalAveragePool", vec![x.name.clone()], vec![]);
        let name = self.node("Flatten", vec![pooled], vec![int("axis", 1)]);
        Value { name, shape: vec![x.shape[0]] }
    }

    /// Global max ⊕ global average pooling (fastai's concat pooling).
    pub(crate) fn global_concat_pool(&mut self, x: &Value) -> Value {
        let max = self.node("GlobalMaxPool", vec![x.name.clone()], vec![]);
        let avg = self.node("GlobalAveragePool", vec![x.name.clone()], vec![]);
        let both = self.node("Concat", vec![max, avg], vec![int("axis", 1)]);
        let name = self.node("Flatten", vec![both], vec![int("axis", 1)]);
        Value { name, shape: vec![2 * x.shape[0]] }
    }

    /// The whole map as one vector (`c·h·w`, channel-major as in PyTorch).
    pub fn flatten(&mut self, x: &Value) -> Value {
        let name = self.node("Flatten", vec![x.name.clone()], vec![int("axis", 1)]);
        Value { name, shape: vec![x.shape.iter().product()] }
    }

    /// `x Wᵀ + b` with `w` `[out, in]`, as `Gemm` with `transB`.
    pub fn linear(&mut self, x: &Value, name: &str, w: &Tensor, b: &Tensor) -> Result<Value> {
        let out = w.dim(0)?;
        let w = self.constant(&format!("{name}.weight"), w)?;
        let b = self.constant(&format!("{name}.bias"), b)?;
        let name = self.node("Gemm", vec![x.name.clone(), w, b], vec![int("transB", 1)]);
        Ok(Value { name, shape: vec![out] })
    }

    pub fn softmax(&mut self, x: &Value) -> Value {
        Value { name: self.node("Softmax", vec![x.name.clone()], vec![int("axis", 1)]), shape: x.shape.clone() }
    }

    /// `x` with the shape `shape` (without the batch dimension, which is
    /// kept: a 0 in ONNX's `Reshape` copies it).
    pub fn reshape(&mut self, x: &Value, shape: &[usize]) -> Value {
        self.counter += 1;
        let name = format!("shape_{}", self.counter);
        let dims: Vec<i64> = std::iter::once(0).chain(shape.iter().map(|&d| d as i64)).collect();
        let raw_data = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: vec![dims.len() as i64],
            data_type: dtype::INT64,
            name: name.clone(),
            raw_data,
        });
        Value { name: self.node("Reshape", vec![x.name.clone(), name], vec![]), shape: shape.to_vec() }
    }

    /// `Transpose` with `perm` over every axis, the batch's (0) included.
    pub fn transpose(&mut self, x: &Value, perm: &[usize]) -> Value {
        let shape = perm[1..].iter().map(|&p| x.shape[p - 1]).collect();
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        Value { name: self.node("Transpose", vec![x.name.clone()], vec![ints("perm", &perm)]), shape }
    }

    /// `MatMul` of two values (batched over their leading axes).
    pub(crate) fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        let mut shape = a.shape.clone();
        if let (Some(last), Some(&cols)) = (shape.last_mut(), b.shape.last()) {
            *last = cols;
        }
        Value { name: self.node("MatMul", vec![a.name.clone(), b.name.clone()], vec![]), shape }
    }

    /// `x Wᵀ + b` over the last axis of `x` (tokens `[t, in]` → `[t, out]`),
    /// `MatMul` then `Add`, with `w` `[out, in]`.
    pub fn dense(&mut self, x: &Value, name: &str, w: &Tensor, b: &Tensor) -> Result<Value> {
        let wt = self.tensor_value(&format!("{name}.weight"), &w.t()?.contiguous()?)?;
        let b = self.tensor_value(&format!("{name}.bias"), b)?;
        let y = self.matmul(x, &wt);
        Ok(self.add(&y, &b))
    }

    /// The mean over the last axis, kept as an axis of 1: a `MatMul` by a
    /// column of 1/n (`ReduceMean` moved its axes to an input in opset 18,
    /// and tlab writes opsets 13 to 21).
    pub(crate) fn mean_last(&mut self, x: &Value) -> Result<Value> {
        let n = *x.shape.last().unwrap_or(&1);
        let column = Tensor::full(1.0 / n as f32, (n, 1), &candle_core::Device::Cpu)?;
        self.counter += 1;
        let column = self.tensor_value(&format!("mean_{}", self.counter), &column)?;
        Ok(self.matmul(x, &column))
    }

    /// `rows · x` for a constant `rows` `[r, t]` and tokens `x` `[t, d]`:
    /// `[r, d]` per image (a weighted sum over the tokens).
    pub(crate) fn mix_tokens(&mut self, name: &str, rows: &Tensor, x: &Value) -> Result<Value> {
        let r = self.tensor_value(name, rows)?;
        let shape = vec![rows.dim(0)?, x.shape[1]];
        Ok(Value { name: self.node("MatMul", vec![r.name, x.name.clone()], vec![]), shape })
    }

    /// Softmax over the last axis.
    pub(crate) fn softmax_last(&mut self, x: &Value) -> Value {
        Value { name: self.node("Softmax", vec![x.name.clone()], vec![int("axis", -1)]), shape: x.shape.clone() }
    }

    /// Values joined along `axis` (counting the batch as 0).
    pub fn concat(&mut self, parts: &[Value], axis: usize) -> Value {
        let mut shape = parts[0].shape.clone();
        shape[axis - 1] = parts.iter().map(|p| p.shape[axis - 1]).sum();
        let inputs = parts.iter().map(|p| p.name.clone()).collect();
        Value { name: self.node("Concat", inputs, vec![int("axis", axis as i64)]), shape }
    }

    /// `uint8` NHWC RGB → normalised float NCHW: `(x / 255 − mean) / std`,
    /// folded into one `Sub` and one `Div` on the 0–255 scale.
    pub fn preprocess(&mut self, input: &str, size: usize, mean: [f32; 3], std: [f32; 3]) -> Result<Value> {
        let cast = self.node("Cast", vec![input.into()], vec![int("to", i64::from(dtype::FLOAT))]);
        let nchw = self.node("Transpose", vec![cast], vec![ints("perm", &[0, 3, 1, 2])]);
        let m: Vec<f32> = mean.iter().map(|m| m * 255.0).collect();
        let s: Vec<f32> = std.iter().map(|s| s * 255.0).collect();
        // Kept float32 even with fp16 weights: they are tiny.
        let fp16 = std::mem::replace(&mut self.fp16, false);
        let m = self.constant_values("preprocess.mean", &[1, 3, 1, 1], &m)?;
        let s = self.constant_values("preprocess.std", &[1, 3, 1, 1], &s)?;
        self.fp16 = fp16;
        let centred = self.node("Sub", vec![nchw, m], vec![]);
        let name = self.node("Div", vec![centred, s], vec![]);
        Ok(Value { name, shape: vec![3, size, size] })
    }

    /// The finished model: `inputs`/`outputs` as `(name, element type,
    /// shape with the batch dimension first)`.
    pub fn finish(self, io: ModelIo, opset: i64, metadata: Vec<(String, String)>) -> ModelProto {
        let info = |(name, elem_type, dims): (String, i32, Vec<Dimension>)| ValueInfoProto {
            name,
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim: dims }) }),
            }),
        };
        let mut nodes = self.nodes;
        // The outputs keep their names: rename the producing nodes' outputs.
        for (wanted, produced) in &io.rename {
            for n in nodes.iter_mut() {
                for o in n.output.iter_mut().chain(n.input.iter_mut()) {
                    if o == produced {
                        *o = wanted.clone();
                    }
                }
            }
        }
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "tlab".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: String::new(),
            graph: Some(GraphProto {
                node: nodes,
                name: "tlab".into(),
                initializer: self.initializers,
                input: io.inputs.into_iter().map(info).collect(),
                output: io.outputs.into_iter().map(info).collect(),
            }),
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
            metadata_props: metadata.into_iter().map(|(key, value)| StringStringEntryProto { key, value }).collect(),
        }
    }
}

/// The graph's inputs and outputs, and which internal values become the
/// named outputs.
pub struct ModelIo {
    pub inputs: Vec<(String, i32, Vec<Dimension>)>,
    pub outputs: Vec<(String, i32, Vec<Dimension>)>,
    /// `(output name, value that produces it)`.
    pub rename: Vec<(String, String)>,
}

/// A fixed dimension.
pub(crate) fn dim(n: usize) -> Dimension {
    Dimension { dim_value: Some(n as i64), dim_param: None }
}

/// A named dimension chosen at run time.
pub(crate) fn dim_param(name: &str) -> Dimension {
    Dimension { dim_value: None, dim_param: Some(name.into()) }
}

/// A convolution for [`run_with`]: `(x, weight, geometry)` → output without bias.
pub(crate) type ConvFn<'a> = &'a dyn Fn(&Tensor, &Tensor, ConvGeometry) -> Result<Tensor>;

/// Runs a model tlab exported, so `tlab predict` can check a shipped
/// `.onnx` without its run directory: convolutions on tlab's CPU kernels,
/// everything else on candle's ops. See [`run_with`].
pub fn run(model: &ModelProto, input: Tensor) -> Result<std::collections::HashMap<String, Tensor>> {
    run_with(model, input, &|x, w, g| Ok(crate::kernels::conv2d(x, w, g.stride, g.pad, g.groups)?))
}

/// Runs `model` with `conv` for its convolutions. Only the ops the exporter
/// writes are supported (anything else is a clear error); the input is fed
/// as `input`, and every graph output is returned by name. Tests pass
/// candle's own convolution, so the check does not share tlab's kernels.
pub fn run_with(
    model: &ModelProto,
    input: Tensor,
    conv: ConvFn<'_>,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let graph = model.graph.as_ref().ok_or_else(|| bad("no graph".into()))?;
    let mut values = initializers(graph)?;
    values.insert("input".into(), input);
    for node in &graph.node {
        let args = node
            .input
            .iter()
            .map(|name| values.get(name).cloned().ok_or_else(|| bad(format!("`{name}` is used before it is computed"))))
            .collect::<Result<Vec<Tensor>>>()?;
        let y = eval_node(node, &args, conv)?;
        let out = node.output.first().ok_or_else(|| bad(format!("{} has no output", node.name)))?;
        values.insert(out.clone(), y);
    }
    graph
        .output
        .iter()
        .map(|o| {
            values
                .remove(&o.name)
                .map(|t| (o.name.clone(), t))
                .ok_or_else(|| bad(format!("output `{}` is never computed", o.name)))
        })
        .collect()
}

/// An error about the model being interpreted.
fn bad(m: String) -> Error {
    Error::OnnxModel(m)
}

/// The graph's initializers (float32 or float16) by name.
fn initializers(graph: &GraphProto) -> Result<std::collections::HashMap<String, Tensor>> {
    use candle_core::Device;
    let mut values = std::collections::HashMap::new();
    for t in &graph.initializer {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let tensor = match t.data_type {
            dtype::FLOAT => {
                let v: Vec<f32> =
                    t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?
            }
            dtype::FLOAT16 => {
                let v: Vec<half::f16> =
                    t.raw_data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect();
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?
            }
            // Shapes (`Reshape`): kept as float, which holds them exactly.
            dtype::INT64 => {
                let v: Vec<f32> = t
                    .raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                    .collect();
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?
            }
            other => return Err(bad(format!("initializer `{}` has data type {other}, not float", t.name))),
        };
        values.insert(t.name.clone(), tensor);
    }
    Ok(values)
}

/// One node of the graph on its input values `args`.
fn eval_node(node: &NodeProto, args: &[Tensor], conv: ConvFn<'_>) -> Result<Tensor> {
    use candle_core::DType;
    let arg = |i: usize| -> Result<Tensor> {
        args.get(i).cloned().ok_or_else(|| bad(format!("{} has no input {i}", node.name)))
    };
    let ints = |n: &NodeProto, name: &str| -> Vec<usize> {
        n.attribute
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.ints.iter().map(|&i| i.max(0) as usize).collect())
            .unwrap_or_default()
    };
    let int =
        |n: &NodeProto, name: &str, default: i64| n.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i);
    let y = match node.op_type.as_str() {
        "Conv" => {
            let (x, w, b) = (arg(0)?, arg(1)?, arg(2)?);
            let pads = ints(node, "pads");
            let strides = ints(node, "strides");
            if pads.len() != 4 || strides.is_empty() {
                return Err(bad(format!("{}: pads/strides missing", node.name)));
            }
            let pad = Padding { top: pads[0], left: pads[1], bottom: pads[2], right: pads[3] };
            let geometry = ConvGeometry { stride: strides[0], pad, groups: int(node, "group", 1).max(1) as usize };
            let y = conv(&x, &w, geometry)?;
            y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?
        }
        "Relu" => arg(0)?.relu()?,
        "Clip" => {
            let (lo, hi) = (arg(1)?.to_scalar::<f32>()?, arg(2)?.to_scalar::<f32>()?);
            arg(0)?.clamp(lo, hi)?
        }
        "Add" => arg(0)?.broadcast_add(&arg(1)?)?,
        "Sub" => arg(0)?.broadcast_sub(&arg(1)?)?,
        "Mul" => arg(0)?.broadcast_mul(&arg(1)?)?,
        "Sigmoid" => candle_nn::ops::sigmoid(&arg(0)?)?,
        "Sqrt" => arg(0)?.sqrt()?,
        "Erf" => arg(0)?.erf()?,
        "Div" => arg(0)?.broadcast_div(&arg(1)?)?,
        "MaxPool" => {
            let pads = ints(node, "pads");
            let (k, s) = (ints(node, "kernel_shape"), ints(node, "strides"));
            if pads.len() != 4 || k.is_empty() || s.is_empty() {
                return Err(bad(format!("{}: pads/kernel/strides missing", node.name)));
            }
            pad_planes(&arg(0)?, &pads, f32::NEG_INFINITY)?.max_pool2d_with_stride(k[0], s[0])?
        }
        "AveragePool" => {
            let pads = ints(node, "pads");
            let (k, s) = (ints(node, "kernel_shape"), ints(node, "strides"));
            if pads.len() != 4 || k.is_empty() || s.is_empty() || int(node, "count_include_pad", 0) != 1 {
                return Err(bad(format!("{}: pads/kernel/strides missing, or padding not counted", node.name)));
            }
            pad_planes(&arg(0)?, &pads, 0.0)?.avg_pool2d_with_stride(k[0], s[0])?
        }
        "GlobalAveragePool" => arg(0)?.mean_keepdim(3)?.mean_keepdim(2)?,
        "GlobalMaxPool" => arg(0)?.max_keepdim(3)?.max_keepdim(2)?,
        "Concat" => {
            let axis = node.attribute.iter().find(|a| a.name == "axis").map_or(1, |a| a.i) as usize;
            let parts = (0..node.input.len()).map(&arg).collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, axis)?
        }
        "Flatten" => arg(0)?.flatten_from(1)?,
        "Gemm" => arg(0)?.matmul(&arg(1)?.t()?)?.broadcast_add(&arg(2)?)?,
        "Softmax" => softmax(&arg(0)?, int(node, "axis", -1))?,
        "MatMul" => arg(0)?.broadcast_matmul(&arg(1)?)?,
        "Reshape" => reshape(&arg(0)?, &arg(1)?)?,
        "Cast" => arg(0)?.to_dtype(DType::F32)?,
        "Transpose" => {
            let (x, p) = (arg(0)?, ints(node, "perm"));
            if p.len() != x.rank() {
                return Err(bad(format!("{}: perm must name each of the {} axes", node.name, x.rank())));
            }
            x.permute(p)?.contiguous()?
        }
        other => return Err(bad(format!("op {other} is not one tlab exports"))),
    };
    Ok(y)
}

/// ONNX `Softmax` over `axis` (negative: from the end).
fn softmax(x: &Tensor, axis: i64) -> Result<Tensor> {
    let axis = if axis < 0 { x.rank() as i64 + axis } else { axis };
    Ok(candle_nn::ops::softmax(x, axis.max(0) as usize)?)
}

/// ONNX `Reshape` to `shape` (read as floats; a 0 copies the input's dimension).
fn reshape(x: &Tensor, shape: &Tensor) -> Result<Tensor> {
    let dims: Vec<usize> = shape
        .to_vec1::<f32>()?
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 0.0 { x.dims().get(i).copied().unwrap_or(1) } else { d as usize })
        .collect();
    Ok(x.reshape(dims)?)
}

/// Pads dims 2 and 3 of `x` with `value` (`pads` = [top, left, bottom, right]).
fn pad_planes(x: &Tensor, pads: &[usize], value: f32) -> Result<Tensor> {
    let mut x = x.clone();
    for (dim, before, after) in [(2, pads[0], pads[2]), (3, pads[1], pads[3])] {
        if before == 0 && after == 0 {
            continue;
        }
        let mut parts = Vec::new();
        let mut shape = x.dims().to_vec();
        if before > 0 {
            shape[dim] = before;
            parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
        }
        parts.push(x.clone());
        if after > 0 {
            shape[dim] = after;
            parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
        }
        x = Tensor::cat(&parts, dim)?;
    }
    Ok(x)
}
