//! A Hugging Face model folder: `config.json`, safetensors weights (single or
//! sharded), `tokenizer.json`, `tokenizer_config.json` and the other small
//! JSON files transformers keeps beside them.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::host_tensor::StateDict;
use super::safetensors_io::{DiskDtype, read_model_weights, write_model_weights};

/// The model's shape, in transformers' field names.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer, in the `tokenizers` library's format.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Special tokens and the chat template.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The chat template as transformers 5 saves it, beside tokenizer_config.json.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Other JSON files carried through unchanged when present.
pub const OTHER_JSON_FILES: [&str; 2] = ["generation_config.json", "special_tokens_map.json"];

/// Everything in the folder besides the config and the weights.
#[derive(Debug, Clone, Default)]
pub struct HfAssets {
    pub tokenizer: Option<Tokenizer>,
    pub tokenizer_config: Option<Value>,
    /// By file name, from [`OTHER_JSON_FILES`].
    pub other_json: BTreeMap<String, Value>,
}

/// A model folder in memory.
#[derive(Debug, Clone)]
pub struct HfFolder {
    /// `config.json`, as read.
    pub config: Value,
    pub tensors: StateDict,
    pub assets: HfAssets,
}

/// How to write the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfWriteOptions {
    pub dtype: DiskDtype,
    /// Split into shards above this many bytes; `None` writes one file.
    pub max_shard_bytes: Option<u64>,
}

impl Default for HfWriteOptions {
    /// f32 (stages hand models to each other losslessly), shards of 5 GB as
    /// transformers' `save_pretrained`.
    fn default() -> Self {
        Self {
            dtype: DiskDtype::F32,
            max_shard_bytes: Some(5_000_000_000),
        }
    }
}

/// Reads `config.json`, the weights and whichever tokenizer and JSON files exist.
pub fn read_hf_folder(dir: &Path) -> Result<HfFolder> {
    let config = read_json(&dir.join(CONFIG_FILE))?;
    let tensors = read_model_weights(dir)?;
    let assets = read_assets(dir)?;
    Ok(HfFolder {
        config,
        tensors,
        assets,
    })
}

/// Reads the tokenizer and the other JSON files of a folder, if present.
pub fn read_assets(dir: &Path) -> Result<HfAssets> {
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = if tokenizer_path.is_file() {
        Some(
            Tokenizer::from_file(&tokenizer_path)
                .map_err(|e| anyhow!("cannot load {}: {e}", tokenizer_path.display()))?,
        )
    } else {
        None
    };
    let tokenizer_config = read_tokenizer_config(dir)?;
    let mut other_json = BTreeMap::new();
    for name in OTHER_JSON_FILES {
        let path = dir.join(name);
        if path.is_file() {
            other_json.insert(name.to_string(), read_json(&path)?);
        }
    }
    Ok(HfAssets {
        tokenizer,
        tokenizer_config,
        other_json,
    })
}

/// `tokenizer_config.json`, with the chat template of `chat_template.jinja`
/// (where transformers 5 saves it) when the JSON has none.
pub fn read_tokenizer_config(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    let mut config = if path.is_file() {
        Some(read_json(&path)?)
    } else {
        None
    };
    let template_path = dir.join(CHAT_TEMPLATE_FILE);
    let has_template = config
        .as_ref()
        .is_some_and(|c| c.get("chat_template").is_some_and(|t| !t.is_null()));
    if !has_template && template_path.is_file() {
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("cannot read {}", template_path.display()))?;
        let config = config.get_or_insert_with(|| Value::Object(Default::default()));
        config
            .as_object_mut()
            .ok_or_else(|| anyhow!("{} must be a JSON object", path.display()))?
            .insert("chat_template".into(), Value::String(template));
    }
    Ok(config)
}

/// Writes a folder transformers can load. `config` is written with its
/// `torch_dtype` (and `dtype`, if present) set to the dtype on disk; when it says
/// `tie_word_embeddings`, `lm_head.weight` is left out even if present.
pub fn write_hf_folder(
    dir: &Path,
    config: &Value,
    tensors: &StateDict,
    assets: &HfAssets,
    options: &HfWriteOptions,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut config = config.clone();
    let obj = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("config.json must be a JSON object"))?;
    obj.insert("torch_dtype".into(), options.dtype.torch_name().into());
    // transformers 5 names it `dtype`; a stale one would override the above.
    if obj.contains_key("dtype") {
        obj.insert("dtype".into(), options.dtype.torch_name().into());
    }
    let tied = obj
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(false);

    let weights = tensors
        .iter()
        .filter(|(name, _)| !(tied && name.as_str() == "lm_head.weight"))
        .map(|(name, t)| (name.as_str(), t));
    write_model_weights(dir, weights, options.dtype, options.max_shard_bytes)?;

    write_json(&dir.join(CONFIG_FILE), &config)?;
    if let Some(tokenizer) = &assets.tokenizer {
        let path = dir.join(TOKENIZER_FILE);
        tokenizer
            .save(&path, false)
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(tc) = &assets.tokenizer_config {
        write_json(&dir.join(TOKENIZER_CONFIG_FILE), tc)?;
    }
    for (name, value) in &assets.other_json {
        if name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("{name:?} must be a plain file name");
        }
        write_json(&dir.join(name), value)?;
    }
    Ok(())
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
