//! Model and data I/O: GGUF, safetensors, tokenizers, datasets.
pub mod host_tensor;

pub use host_tensor::{HostTensor, StateDict};
