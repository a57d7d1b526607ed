//! A stored Llama model as a llama.cpp GGUF file: the `llama` architecture
//! keys (with `head_dim` as `attention.key_length` / `value_length`, which
//! pruned shapes need), tensors under llama.cpp names with q/k rows
//! permuted for its interleaved RoPE, Llama-3 rope scaling as the
//! `rope_freqs` tensor, and the tokenizer. `io::gguf_llama` reads it back.

use anyhow::{Context, Result, bail};

use super::ExportDtype;
use super::gguf_vocab::tokenizer_metadata;
use crate::io::HostTensor;
use crate::io::gguf::{GgmlType, GgufValue};
use crate::io::gguf_llama::{gguf_tensor_name, permute_qk};
use crate::io::gguf_quant::encode;
use crate::io::gguf_write::GgufWriter;
use crate::io::hf_folder::HfFolder;
use crate::model::LlamaConfig;

/// `general.file_type` (llama.cpp's `llama_ftype`).
fn file_type(dtype: ExportDtype) -> u32 {
    match dtype {
        ExportDtype::F32 => 0,
        ExportDtype::F16 => 1,
        ExportDtype::Q4_0 => 2,
        ExportDtype::Q8_0 => 7,
        ExportDtype::BF16 => 32,
    }
}

/// The GGUF image of `folder` in `dtype`, and notes for the log.
pub fn gguf_writer(
    folder: &HfFolder,
    config: &LlamaConfig,
    dtype: ExportDtype,
    name: &str,
) -> Result<(GgufWriter, Vec<String>)> {
    if config.attention_bias || config.mlp_bias {
        bail!("GGUF export does not carry attention or MLP biases, and this model has them");
    }
    let tokenizer = folder
        .assets
        .tokenizer
        .as_ref()
        .context("the model has no tokenizer.json, which a GGUF file must carry")?;
    let mut w = GgufWriter::new();
    for (key, value) in model_metadata(config, dtype, name) {
        w.add(&key, value)?;
    }
    for (key, value) in
        tokenizer_metadata(tokenizer, folder.assets.tokenizer_config.as_ref(), config)?
    {
        w.add(&key, value)?;
    }
    let mut kept_wide = Vec::new();
    for (hf_name, tensor) in &folder.tensors {
        if config.tie_word_embeddings && hf_name == "lm_head.weight" {
            continue;
        }
        let name = gguf_tensor_name(hf_name)
            .with_context(|| format!("tensor {hf_name} has no llama.cpp name"))?;
        let tensor = match hf_name.rsplit('.').nth(1) {
            Some("q_proj") => permute_qk(tensor, config.num_attention_heads)?,
            Some("k_proj") => permute_qk(tensor, config.num_key_value_heads)?,
            _ => tensor.clone(),
        };
        // Rows that do not split into whole blocks stay F16, as in
        // llama.cpp's conversion.
        let mut ty = wanted_type(&name, &tensor, dtype);
        let row = tensor.shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(ty.block_size()) {
            ty = GgmlType::F16;
            kept_wide.push(name.clone());
        }
        let data = encode(ty, &tensor.data).with_context(|| format!("tensor {name}"))?;
        w.add_tensor(&name, &tensor.shape, ty, data)?;
    }
    if let Some(freqs) = llama3_rope_factors(config) {
        let data = encode(GgmlType::F32, &freqs)?;
        w.add_tensor("rope_freqs.weight", &[freqs.len()], GgmlType::F32, data)?;
    }
    let mut notes = Vec::new();
    if !kept_wide.is_empty() {
        notes.push(format!(
            "{} tensors have rows that are not a multiple of 32 and are stored as F16 instead \
             of {dtype}: {}",
            kept_wide.len(),
            kept_wide.join(", ")
        ));
    }
    Ok((w, notes))
}

/// The type `dtype` asks for: norms and other vectors stay F32 (as in
/// llama.cpp's conversion); a Q4_0 file keeps its embedding and output
/// matrices at Q8_0, where 4 bits cost the most.
fn wanted_type(name: &str, tensor: &HostTensor, dtype: ExportDtype) -> GgmlType {
    if tensor.shape.len() < 2 {
        return GgmlType::F32;
    }
    match dtype {
        ExportDtype::F32 => GgmlType::F32,
        ExportDtype::F16 => GgmlType::F16,
        ExportDtype::BF16 => GgmlType::BF16,
        ExportDtype::Q8_0 => GgmlType::Q8_0,
        ExportDtype::Q4_0 if name == "token_embd.weight" || name == "output.weight" => {
            GgmlType::Q8_0
        }
        ExportDtype::Q4_0 => GgmlType::Q4_0,
    }
}

fn model_metadata(
    config: &LlamaConfig,
    dtype: ExportDtype,
    name: &str,
) -> Vec<(String, GgufValue)> {
    let u32_of = |n: usize| GgufValue::U32(n as u32);
    let llama = |key: &str, value: GgufValue| (format!("llama.{key}"), value);
    let mut out = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        (
            "general.type".to_string(),
            GgufValue::String("model".into()),
        ),
        ("general.name".to_string(), GgufValue::String(name.into())),
        llama("block_count", u32_of(config.num_hidden_layers)),
        llama("context_length", u32_of(config.max_position_embeddings)),
        llama("embedding_length", u32_of(config.hidden_size)),
        llama("feed_forward_length", u32_of(config.intermediate_size)),
        llama("attention.head_count", u32_of(config.num_attention_heads)),
        llama(
            "attention.head_count_kv",
            u32_of(config.num_key_value_heads),
        ),
        llama("rope.freq_base", GgufValue::F32(config.rope_theta as f32)),
        llama(
            "attention.layer_norm_rms_epsilon",
            GgufValue::F32(config.rms_norm_eps as f32),
        ),
        llama("attention.key_length", u32_of(config.head_dim)),
        llama("attention.value_length", u32_of(config.head_dim)),
        (
            "general.file_type".to_string(),
            GgufValue::U32(file_type(dtype)),
        ),
        llama("vocab_size", u32_of(config.vocab_size)),
        llama("rope.dimension_count", u32_of(config.head_dim)),
    ];
    if let Some(scaling) = &config.rope_scaling
        && scaling.kind() == "linear"
    {
        out.push(llama(
            "rope.scaling.type",
            GgufValue::String("linear".into()),
        ));
        out.push(llama(
            "rope.scaling.factor",
            GgufValue::F32(scaling.factor.unwrap_or(1.0) as f32),
        ));
    }
    out.push((
        "general.quantization_version".to_string(),
        GgufValue::U32(2),
    ));
    out
}

/// Llama-3 rope scaling as llama.cpp stores it: one divisor per frequency
/// (`LlamaModel.generate_extra_tensors` in its conversion script).
fn llama3_rope_factors(config: &LlamaConfig) -> Option<Vec<f32>> {
    let s = config
        .rope_scaling
        .as_ref()
        .filter(|s| s.kind() == "llama3")?;
    let factor = s.factor?;
    let low = s.low_freq_factor?;
    let high = s.high_freq_factor?;
    let old_context = s.original_max_position_embeddings? as f64;
    let (low_wavelen, high_wavelen) = (old_context / low, old_context / high);
    let dim = config.head_dim;
    Some(
        (0..dim / 2)
            .map(|i| {
                let freq = config.rope_theta.powf(-((2 * i) as f64) / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let divisor = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor
                } else {
                    let smooth = (old_context / wavelen - low) / (high - low);
                    1.0 / ((1.0 - smooth) / factor + smooth)
                };
                divisor as f32
            })
            .collect(),
    )
}
