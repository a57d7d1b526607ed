//! What plan-time checks can learn about the models that reach a stage,
//! from the recipe alone: configs read from the files a `load_model` stage
//! names, followed through the ops that keep the vocabulary.

use distillery_engine::TypedOp;
use distillery_engine::op::UpstreamInfo;
use std::path::Path;

use super::VOCAB_KEEPING;
use super::load_model::{LoadModel, ModelSource};
use crate::io::gguf::GgufFile;
use crate::io::gguf_llama::llama_config;
use crate::io::hf_folder::CONFIG_FILE;
use crate::model::LlamaConfig;

/// The config of the model a `load_model` stage loads, when it is cheap to
/// read (`source: hf` or `gguf`). `None` otherwise, or when it cannot be
/// read (the `load_model` stage reports that itself).
pub fn loaded_config(up: &UpstreamInfo, recipe_dir: &Path) -> Option<LlamaConfig> {
    let params = up.params_of::<LoadModel>()?;
    let path = recipe_dir.join(params.path?);
    let json = match params.source {
        ModelSource::Hf => {
            serde_json::from_slice(&std::fs::read(path.join(CONFIG_FILE)).ok()?).ok()?
        }
        ModelSource::Gguf => llama_config(&GgufFile::open(&path).ok()?).ok()?,
        ModelSource::Artifact => return None,
    };
    LlamaConfig::from_json(&json).ok()
}

/// The vocabulary size of the model `up` produces, followed back through
/// vocabulary-keeping ops to its `load_model` stage.
pub fn model_vocab(up: &UpstreamInfo, recipe_dir: &Path) -> Option<usize> {
    if up.op == LoadModel::NAME {
        return loaded_config(up, recipe_dir).map(|c| c.vocab_size);
    }
    let (_, slot) = VOCAB_KEEPING.iter().find(|(op, _)| *op == up.op)?;
    model_vocab(up.inputs.get(*slot)?.first()?, recipe_dir)
}
