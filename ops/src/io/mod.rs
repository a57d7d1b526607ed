//! Model and data I/O: GGUF, safetensors, tokenizers, datasets.
pub mod chat;
pub mod dataset;
pub mod gguf;
pub mod gguf_llama;
pub mod gguf_quant;
pub mod gguf_tokenizer;
pub mod gguf_write;
pub mod hf_architecture;
pub mod hf_folder;
pub mod host_tensor;
pub mod safetensors_io;
pub mod scores;

pub use host_tensor::{HostTensor, StateDict};
