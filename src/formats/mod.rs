//! File formats tlab reads and writes without Python: weights (safetensors,
//! PyTorch checkpoints, the Hub) and ONNX graphs.

pub mod onnx;
pub mod weights;
