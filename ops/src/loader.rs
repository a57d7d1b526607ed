//! A runnable model from a path: a GGUF file or a Hugging Face folder (a
//! Model artifact is one), with its tokenizer files.

use crate::io::gguf_llama::load_llama;
use crate::io::hf_folder::HfAssets;
use crate::model::{Llama, LlamaConfig};
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use std::path::Path;

pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<(Llama<B>, HfAssets)> {
    if path.is_dir() {
        return Llama::load_hf(path, device);
    }
    let gguf = load_llama(path).with_context(|| format!("cannot load {}", path.display()))?;
    let config = LlamaConfig::from_json(&gguf.config)?;
    let model = Llama::from_state_dict(config, gguf.tensors, device)
        .with_context(|| format!("building the model of {}", path.display()))?;
    let assets = HfAssets {
        tokenizer: Some(gguf.tokenizer),
        tokenizer_config: Some(gguf.tokenizer_config),
        other_json: Default::default(),
    };
    Ok((model, assets))
}
