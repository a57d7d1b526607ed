//! Loading a [`Llama`] from a Hugging Face folder and saving it as one.

use crate::io::hf_folder::CONFIG_FILE;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;

use super::config::LlamaConfig;
use super::llama::Llama;
use crate::io::hf_folder::{HfAssets, HfWriteOptions, read_assets, write_hf_folder};
use crate::io::safetensors_io::read_model_weights;

impl<B: Backend> Llama<B> {
    /// Reads `config.json` and the weights of `dir`, and its tokenizer files.
    pub fn load_hf(dir: &Path, device: &B::Device) -> Result<(Self, HfAssets)> {
        let config = LlamaConfig::from_file(&dir.join(CONFIG_FILE))?;
        let tensors = read_model_weights(dir)?;
        let model = Self::from_state_dict(config, tensors, device)
            .with_context(|| format!("building the model of {}", dir.display()))?;
        Ok((model, read_assets(dir)?))
    }

    /// Writes `config.json` (explicit `head_dim`), the weights in the dtype
    /// and shard size of `options`, and `assets`.
    pub fn save_hf(&self, dir: &Path, assets: &HfAssets, options: &HfWriteOptions) -> Result<()> {
        write_hf_folder(
            dir,
            &self.config.to_json(),
            &self.to_state_dict(),
            assets,
            options,
        )
    }
}
