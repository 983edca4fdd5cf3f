//! File formats tlab reads and writes without Python: weights (safetensors,
//! PyTorch checkpoints, the Hub), ONNX graphs and NumPy arrays.

pub mod npy;
pub mod onnx;
pub mod weights;
