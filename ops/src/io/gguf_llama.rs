//! Loads a Llama-architecture GGUF as the equivalent Hugging Face checkpoint:
//! a `config.json`, f32 weights under Hugging Face names and layouts (q/k
//! RoPE permutation undone), the tokenizer and its `tokenizer_config.json`.

use std::path::Path;

use serde_json::{Value, json};
use thiserror::Error;
use tokenizers::Tokenizer;

use crate::io::gguf::{GgufError, GgufFile, GgufValue, TensorInfo};
use crate::io::gguf_tokenizer::{GgufTokenizerError, tokenizer_config, tokenizer_from_gguf};
use crate::io::{HostTensor, StateDict};

/// llama.cpp's per-frequency RoPE divisors (written for Llama-3 rope scaling);
/// folded into the config, not a model parameter.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// A GGUF model in Hugging Face form.
pub struct GgufLlama {
    /// A `LlamaForCausalLM` config.json.
    pub config: Value,
    /// f32 weights by Hugging Face name; `lm_head.weight` only when untied.
    pub tensors: StateDict,
    pub tokenizer: Tokenizer,
    /// A Hugging Face tokenizer_config.json (chat template, special tokens).
    pub tokenizer_config: Value,
}

#[derive(Debug, Error)]
pub enum LlamaLoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] GgufTokenizerError),
    #[error("general.architecture is {0:?}; only \"llama\" is supported")]
    Architecture(String),
    #[error("invalid model metadata: {0}")]
    Metadata(String),
    #[error("tensor {0} is missing")]
    MissingTensor(String),
    #[error("tensor {0} is not part of a Llama model")]
    UnexpectedTensor(String),
    #[error("tensor {tensor}: shape {found:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
}

type Result<T> = std::result::Result<T, LlamaLoadError>;

fn meta(msg: impl Into<String>) -> LlamaLoadError {
    LlamaLoadError::Metadata(msg.into())
}

/// Opens `path` and converts it; see [`load_llama_from`].
pub fn load_llama(path: &Path) -> Result<GgufLlama> {
    load_llama_from(&GgufFile::open(path)?)
}

/// Converts a parsed GGUF: config, dequantized weights, tokenizer.
pub fn load_llama_from(gguf: &GgufFile) -> Result<GgufLlama> {
    let config = llama_config(gguf)?;
    let dims = Dims::from_config(&config, gguf.tensors().len())?;
    let tensors = load_tensors(gguf, &dims)?;
    Ok(GgufLlama {
        config,
        tensors,
        tokenizer: tokenizer_from_gguf(gguf)?,
        tokenizer_config: tokenizer_config(gguf)?,
    })
}

/// The Hugging Face `LlamaForCausalLM` config described by the GGUF metadata.
pub fn llama_config(gguf: &GgufFile) -> Result<Value> {
    let arch = gguf.require_str("general.architecture")?;
    if arch != "llama" {
        return Err(LlamaLoadError::Architecture(arch.to_string()));
    }
    let key = |k: &str| format!("llama.{k}");
    let hidden = gguf.require_u64(&key("embedding_length"))?;
    let n_layer = gguf.require_u64(&key("block_count"))?;
    let ffn = gguf.require_u64(&key("feed_forward_length"))?;
    let n_head = gguf.require_u64(&key("attention.head_count"))?;
    let n_kv = gguf
        .get_u64(&key("attention.head_count_kv"))?
        .unwrap_or(n_head);
    if n_head == 0 || n_kv == 0 || n_head % n_kv != 0 {
        return Err(meta(format!(
            "{n_head} attention heads cannot share {n_kv} key/value heads"
        )));
    }
    let head_dim = match gguf.get_u64(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden % n_head == 0 => hidden / n_head,
        None => {
            return Err(meta(format!(
                "hidden size {hidden} is not a multiple of {n_head} heads"
            )));
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(meta(format!(
            "head_dim {head_dim} must be even and non-zero"
        )));
    }
    let rope_dim = gguf
        .get_u64(&key("rope.dimension_count"))?
        .unwrap_or(head_dim);
    if rope_dim != head_dim {
        return Err(meta(format!(
            "partial rotary embedding (rope.dimension_count {rope_dim} != head_dim {head_dim}) is not supported"
        )));
    }
    let eps = decimal(gguf, &key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| meta("llama.attention.layer_norm_rms_epsilon is missing"))?;
    let theta = decimal(gguf, &key("rope.freq_base"))?.unwrap_or(10000.0);
    let vocab = match gguf.tensor_info("token_embd.weight") {
        Some(t) if t.ne.len() == 2 => t.ne[1],
        Some(t) => {
            return Err(meta(format!(
                "token_embd.weight has dims {:?}, not 2",
                t.ne
            )));
        }
        None => return Err(LlamaLoadError::MissingTensor("token_embd.weight".into())),
    };
    let tied = gguf.tensor_info("output.weight").is_none();
    let token_id = |k: &str| gguf.get_u64(&format!("tokenizer.ggml.{k}"));
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": token_id("bos_token_id")?,
        "eos_token_id": token_id("eos_token_id")?,
        "pad_token_id": token_id("padding_token_id")?,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "max_position_embeddings": gguf.require_u64(&key("context_length"))?,
        "mlp_bias": false,
        "num_attention_heads": n_head,
        "num_hidden_layers": n_layer,
        "num_key_value_heads": n_kv,
        "pretraining_tp": 1,
        "rms_norm_eps": eps,
        "rope_scaling": rope_scaling(gguf, theta, head_dim)?,
        "rope_theta": theta,
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "use_cache": true,
        "vocab_size": vocab,
    }))
}

/// A float value as the decimal it was written from: an f32 1e-5 widens to
/// 9.999999747378752e-06, so f32 values go through their shortest decimal.
fn decimal(gguf: &GgufFile, key: &str) -> Result<Option<f64>> {
    Ok(match gguf.get(key) {
        Some(GgufValue::F32(x)) => Some(f32_decimal(*x)),
        _ => gguf.get_f64(key)?,
    })
}

fn f32_decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// `rope_scaling` from `llama.rope.scaling.*` metadata, or recovered from a
/// `rope_freqs.weight` tensor (how llama.cpp stores Llama-3 scaling).
fn rope_scaling(gguf: &GgufFile, theta: f64, head_dim: u64) -> Result<Value> {
    let kind = gguf.get_str("llama.rope.scaling.type")?;
    let factor = match decimal(gguf, "llama.rope.scaling.factor")? {
        Some(f) => Some(f),
        None => decimal(gguf, "llama.rope.scale_linear")?,
    };
    let orig = gguf.get_u64("llama.rope.scaling.original_context_length")?;
    let need_factor = || factor.ok_or_else(|| meta("llama.rope.scaling.factor is missing"));
    match kind.unwrap_or("none") {
        "linear" => Ok(json!({"rope_type": "linear", "factor": need_factor()?})),
        "yarn" => Ok(json!({
            "rope_type": "yarn",
            "factor": need_factor()?,
            "original_max_position_embeddings": orig,
        })),
        "llama3" => Ok(json!({
            "rope_type": "llama3",
            "factor": need_factor()?,
            "low_freq_factor": decimal(gguf, "llama.rope.scaling.low_freq_factor")?,
            "high_freq_factor": decimal(gguf, "llama.rope.scaling.high_freq_factor")?,
            "original_max_position_embeddings": orig,
        })),
        "none" => {
            if let Some(info) = gguf.tensor_info(ROPE_FREQS) {
                let freqs = gguf.dequantize_info(info)?;
                if freqs.data.len() as u64 != head_dim / 2 {
                    return Err(shape_err(info, vec![head_dim as usize / 2]));
                }
                llama3_from_factors(&freqs.data, theta, head_dim as usize)
            } else if kind.is_none() && factor.is_some_and(|f| f != 1.0) {
                // Older files carry only `rope.scale_linear`.
                Ok(json!({"rope_type": "linear", "factor": need_factor()?}))
            } else {
                Ok(Value::Null)
            }
        }
        other => Err(meta(format!(
            "rope scaling type {other:?} is not supported"
        ))),
    }
}

/// Recovers Llama-3 rope-scaling parameters from llama.cpp's per-frequency
/// divisors. They are 1 for short wavelengths, `factor` for long ones, and
/// `1 / ((1 - s) / factor + s)` in between, with
/// `s = (orig / wavelen - low) / (high - low)`. Only the ratios of `orig`,
/// `low` and `high` are identifiable, so `low_freq_factor` is taken as 1
/// (as in every released Llama 3.x).
pub fn llama3_from_factors(factors: &[f32], theta: f64, head_dim: usize) -> Result<Value> {
    let factor = factors.iter().fold(1f32, |m, &f| m.max(f)) as f64;
    if !factor.is_finite() || factor <= 1.0 || factors.iter().any(|&f| f.is_nan() || f < 1.0) {
        return Err(meta(format!(
            "{ROPE_FREQS} does not hold Llama-3 scaling factors"
        )));
    }
    // Points of the smooth ramp: (1 / wavelength, s).
    let tol = 1e-4;
    let ramp: Vec<(f64, f64)> = factors
        .iter()
        .enumerate()
        .filter(|&(_, &f)| (f as f64 - 1.0).abs() > tol && (f as f64 - factor).abs() > tol * factor)
        .map(|(i, &f)| {
            let freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
            let inv_wavelen = freq / (2.0 * std::f64::consts::PI);
            let s = (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (inv_wavelen, s)
        })
        .collect();
    if ramp.len() < 2 {
        return Err(meta(format!(
            "{ROPE_FREQS} has {} points between 1 and the scale factor; need 2 to recover Llama-3 scaling",
            ramp.len()
        )));
    }
    // Least squares s = a * x + b.
    let n = ramp.len() as f64;
    let (sx, sy) = ramp
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = ramp.iter().fold((0.0, 0.0), |(a, b), &(x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    let a = sxy / sxx;
    let b = my - a * mx;
    // With low = 1: b = -1 / (high - 1) and a = orig / (high - 1).
    if !(a > 0.0 && b < 0.0) {
        return Err(meta(format!(
            "{ROPE_FREQS} does not follow the Llama-3 ramp"
        )));
    }
    let high = 1.0 - 1.0 / b;
    let orig = (a * (high - 1.0)).round();
    let round = |x: f64| format!("{x:.5e}").parse::<f64>().unwrap_or(x);
    Ok(json!({
        "rope_type": "llama3",
        "factor": round(factor),
        "low_freq_factor": 1.0,
        "high_freq_factor": round(high),
        "original_max_position_embeddings": orig as u64,
    }))
}

/// Model sizes the tensor shapes are checked against.
struct Dims {
    hidden: usize,
    ffn: usize,
    n_layer: usize,
    n_head: usize,
    n_kv: usize,
    vocab: usize,
    /// Rows of q_proj (`n_head * head_dim`) and of k/v_proj.
    q_rows: usize,
    kv_rows: usize,
}

impl Dims {
    fn from_config(c: &Value, n_tensors: usize) -> Result<Self> {
        let get = |k: &str| {
            c[k].as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| meta(format!("config {k} is not a size")))
        };
        let (n_head, n_kv, head_dim) = (
            get("num_attention_heads")?,
            get("num_key_value_heads")?,
            get("head_dim")?,
        );
        let rows = |heads: usize| {
            heads
                .checked_mul(head_dim)
                .ok_or_else(|| meta(format!("{heads} heads of {head_dim} overflow")))
        };
        let n_layer = get("num_hidden_layers")?;
        // Every layer needs its own tensors; this also bounds the list of
        // expected names before it is built.
        if n_layer > n_tensors {
            return Err(meta(format!(
                "{n_layer} layers cannot be stored in {n_tensors} tensors"
            )));
        }
        Ok(Dims {
            hidden: get("hidden_size")?,
            ffn: get("intermediate_size")?,
            n_layer,
            n_head,
            n_kv,
            vocab: get("vocab_size")?,
            q_rows: rows(n_head)?,
            kv_rows: rows(n_kv)?,
        })
    }
}

/// Whole-model tensors: (llama.cpp name, Hugging Face name).
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer tensors, after `blk.N.` and `model.layers.N.`.
const LAYER_TENSORS: [(&str, &str); 9] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Where each convention's per-layer names start: llama.cpp, Hugging Face.
const LAYER_PREFIXES: [&str; 2] = ["blk.", "model.layers."];

/// `name` in the other convention; `from` is the side of the tables it is
/// written in (0 llama.cpp, 1 Hugging Face).
fn rename(name: &str, from: usize) -> Option<String> {
    let side = |pair: &(&'static str, &'static str)| if from == 0 { pair.0 } else { pair.1 };
    let other = |pair: &(&'static str, &'static str)| if from == 0 { pair.1 } else { pair.0 };
    if let Some(pair) = MODEL_TENSORS.iter().find(|p| side(p) == name) {
        return Some(other(pair).to_string());
    }
    let rest = name.strip_prefix(LAYER_PREFIXES[from])?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let pair = LAYER_TENSORS.iter().find(|p| side(p) == part)?;
    Some(format!(
        "{}{layer}.{}",
        LAYER_PREFIXES[1 - from],
        other(pair)
    ))
}

/// The Hugging Face name of a llama.cpp tensor.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    rename(gguf_name, 0)
}

/// The llama.cpp name of a Hugging Face tensor (the inverse of
/// [`hf_tensor_name`]).
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    rename(hf_name, 1)
}

/// The Hugging Face shape every tensor of the model must have.
fn expected_shapes(d: &Dims, tied: bool) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv) = (d.hidden, d.q_rows, d.kv_rows);
    let mut v = vec![
        ("model.embed_tokens.weight".to_string(), vec![d.vocab, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !tied {
        v.push(("lm_head.weight".to_string(), vec![d.vocab, h]));
    }
    for i in 0..d.n_layer {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        v.extend([
            (l("input_layernorm.weight"), vec![h]),
            (l("post_attention_layernorm.weight"), vec![h]),
            (l("self_attn.q_proj.weight"), vec![q, h]),
            (l("self_attn.k_proj.weight"), vec![kv, h]),
            (l("self_attn.v_proj.weight"), vec![kv, h]),
            (l("self_attn.o_proj.weight"), vec![h, q]),
            (l("mlp.gate_proj.weight"), vec![d.ffn, h]),
            (l("mlp.up_proj.weight"), vec![d.ffn, h]),
            (l("mlp.down_proj.weight"), vec![h, d.ffn]),
        ]);
    }
    v
}

fn shape_err(t: &TensorInfo, expected: Vec<usize>) -> LlamaLoadError {
    LlamaLoadError::Shape {
        tensor: t.name.clone(),
        found: t.shape(),
        expected,
    }
}

fn load_tensors(gguf: &GgufFile, d: &Dims) -> Result<StateDict> {
    let tied = gguf.tensor_info("output.weight").is_none();
    let expected: std::collections::HashMap<String, Vec<usize>> =
        expected_shapes(d, tied).into_iter().collect();
    let mut out = StateDict::new();
    for info in gguf.tensors() {
        if info.name == ROPE_FREQS {
            continue;
        }
        let name = hf_tensor_name(&info.name)
            .filter(|n| expected.contains_key(n))
            .ok_or_else(|| LlamaLoadError::UnexpectedTensor(info.name.clone()))?;
        let want = &expected[&name];
        if &info.shape() != want {
            return Err(shape_err(info, want.clone()));
        }
        let mut t = gguf.dequantize_info(info)?;
        if name.ends_with("q_proj.weight") {
            t = unpermute_qk(&t, d.n_head)?;
        } else if name.ends_with("k_proj.weight") {
            t = unpermute_qk(&t, d.n_kv)?;
        }
        out.insert(name, t);
    }
    if let Some((missing, _)) = expected.iter().find(|(n, _)| !out.contains_key(*n)) {
        return Err(LlamaLoadError::MissingTensor(missing.clone()));
    }
    Ok(out)
}

/// llama.cpp's q/k row permutation for its interleaved RoPE, applied to a
/// Hugging Face (rotate-half) weight as its conversion script does:
/// `W.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2).reshape(out, in)`.
/// [`unpermute_qk`] is its inverse.
pub fn permute_qk(w: &HostTensor, n_head: usize) -> Result<HostTensor> {
    // Row 2i + j of a head comes from row j * half + i.
    reorder_qk_rows(w, n_head, |half, p| (p % 2) * half + p / 2)
}

/// Undoes llama.cpp's q/k row permutation for interleaved RoPE, giving
/// Hugging Face's rotate-half layout: rows of each head go from
/// (pair, 2) order to (2, pair) order, i.e.
/// `W.reshape(n_head, head_dim/2, 2, in).swapaxes(1, 2).reshape(out, in)`.
pub fn unpermute_qk(w: &HostTensor, n_head: usize) -> Result<HostTensor> {
    // Row j * half + i of a head comes from row 2i + j.
    reorder_qk_rows(w, n_head, |half, p| 2 * (p % half) + p / half)
}

/// Reorders the rows within each head: row `p` of a head comes from row
/// `source(head_dim / 2, p)` of the same head.
fn reorder_qk_rows(
    w: &HostTensor,
    n_head: usize,
    source: impl Fn(usize, usize) -> usize,
) -> Result<HostTensor> {
    let [rows, cols] = w.shape[..] else {
        return Err(meta(format!(
            "q/k weight of shape {:?} is not a matrix",
            w.shape
        )));
    };
    if n_head == 0 || rows % (2 * n_head) != 0 {
        return Err(meta(format!(
            "{rows} q/k rows do not split into {n_head} heads of pairs"
        )));
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut data = Vec::with_capacity(w.data.len());
    for h in 0..n_head {
        for p in 0..head_dim {
            let src = h * head_dim + source(half, p);
            data.extend_from_slice(&w.data[src * cols..(src + 1) * cols]);
        }
    }
    Ok(HostTensor::new(w.shape.clone(), data))
}
