//! What a model file or folder holds, read from headers only (no weights are
//! loaded, so inspecting a multi-GB checkpoint is instant): architecture,
//! parameter counts by kind, storage types, and per-layer shapes.

use crate::io::gguf::GgufFile;
use crate::io::gguf_llama::{hf_tensor_name, llama_config};
use crate::io::hf_folder::CONFIG_FILE;
use crate::io::safetensors_io::{INDEX_FILE, SINGLE_FILE, ShardIndex};
use crate::model::LlamaConfig;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor as stored.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `F32`, `BF16`, `Q4_1`, ...
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// `gguf` or `hf`.
    pub format: &'static str,
    pub config: LlamaConfig,
    pub tensors: Vec<StoredTensor>,
}

/// Parameter counts by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ParameterCounts {
    pub embedding: usize,
    pub attention: usize,
    pub mlp: usize,
    pub norms: usize,
    pub lm_head: usize,
    pub total: usize,
}

impl ModelSummary {
    /// Reads a GGUF file or a Hugging Face folder.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            read_hf(path)
        } else {
            read_gguf(path)
        }
    }

    pub fn parameter_counts(&self) -> ParameterCounts {
        let mut c = ParameterCounts::default();
        for t in &self.tensors {
            let n: usize = t.shape.iter().product();
            let slot = if t.name == "model.embed_tokens.weight" {
                &mut c.embedding
            } else if t.name == "lm_head.weight" {
                &mut c.lm_head
            } else if t.name.contains(".self_attn.") {
                &mut c.attention
            } else if t.name.contains(".mlp.") {
                &mut c.mlp
            } else if t.name.contains("norm") {
                &mut c.norms
            } else {
                continue;
            };
            *slot += n;
            c.total += n;
        }
        c
    }

    /// Storage types and how many tensors use each.
    pub fn dtypes(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in &self.tensors {
            *out.entry(t.dtype.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Shapes of layer `i`'s tensors, by the name after `model.layers.{i}.`.
    pub fn layer_shapes(&self, i: usize) -> BTreeMap<String, Vec<usize>> {
        let prefix = format!("model.layers.{i}.");
        self.tensors
            .iter()
            .filter_map(|t| Some((t.name.strip_prefix(&prefix)?.to_string(), t.shape.clone())))
            .collect()
    }
}

fn read_gguf(path: &Path) -> Result<ModelSummary> {
    let file = GgufFile::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = LlamaConfig::from_json(&llama_config(&file)?)?;
    let tensors = file
        .tensors()
        .iter()
        .map(|t| StoredTensor {
            name: hf_tensor_name(&t.name).unwrap_or_else(|| t.name.clone()),
            shape: t.shape(),
            dtype: t.ggml_type.name().to_string(),
        })
        .collect();
    Ok(ModelSummary {
        format: "gguf",
        config,
        tensors,
    })
}

fn read_hf(dir: &Path) -> Result<ModelSummary> {
    let config = LlamaConfig::from_file(&dir.join(CONFIG_FILE))?;
    let files: Vec<String> = if dir.join(SINGLE_FILE).is_file() {
        vec![SINGLE_FILE.to_string()]
    } else if dir.join(INDEX_FILE).is_file() {
        let index: ShardIndex =
            serde_json::from_slice(&std::fs::read(dir.join(INDEX_FILE))?).context(INDEX_FILE)?;
        let mut files: Vec<String> = index.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        files
    } else {
        bail!(
            "{} has neither {SINGLE_FILE} nor {INDEX_FILE}",
            dir.display()
        );
    };
    let mut tensors = Vec::new();
    for file in files {
        let path = dir.join(&file);
        let f = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: read-only map of a file we do not modify; only the header is parsed.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&map)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        for (name, info) in metadata.tensors() {
            tensors.push(StoredTensor {
                name,
                shape: info.shape.clone(),
                dtype: format!("{:?}", info.dtype),
            });
        }
    }
    tensors.sort_by_key(|a| natural_key(&a.name));
    Ok(ModelSummary {
        format: "hf",
        config,
        tensors,
    })
}

/// Sorts `layers.10` after `layers.9`.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (part.to_string(), 0),
        })
        .collect()
}
