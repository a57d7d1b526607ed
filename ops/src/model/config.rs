//! The Llama hyper-parameters, read from and written back to a Hugging Face
//! `config.json` under its own field names.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ModelError;

/// `config.json` of a `LlamaForCausalLM`.
///
/// Deserializing validates (see [`LlamaConfig::validate`]); keys this type
/// does not model are kept in `extra` and written back unchanged, so reading
/// then writing a config loses nothing. `head_dim` is optional in the JSON
/// (default `hidden_size / num_attention_heads`) but always written, because
/// after width pruning it no longer follows from the other sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawLlamaConfig")]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: String,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch_dtype: Option<String>,
    /// Every other key of the JSON object, in file order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One token id or several (Llama 3 lists three end-of-sequence ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// `rope_scaling`: `llama3` (Llama 3.1+ frequency-dependent scaling),
/// `linear`, or `default` (none). Newer files name the kind `rope_type`,
/// older ones `type`; both are kept as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RopeScaling {
    /// The Llama 3.1 scaling (factor 8, low 1, high 4, original context 8192).
    pub fn llama3(
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    ) -> Self {
        Self {
            rope_type: Some("llama3".into()),
            type_: None,
            factor: Some(factor),
            low_freq_factor: Some(low_freq_factor),
            high_freq_factor: Some(high_freq_factor),
            original_max_position_embeddings: Some(original_max_position_embeddings),
            extra: Map::new(),
        }
    }

    /// The scaling kind, `rope_type` first, then the older `type`.
    pub fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.type_.as_deref())
            .unwrap_or("default")
    }
}

/// What `config.json` may hold before defaults are filled in.
#[derive(Deserialize)]
struct RawLlamaConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    /// transformers 5's form of both: `{rope_theta, rope_type, factor, ...}`.
    #[serde(default)]
    rope_parameters: Option<Map<String, Value>>,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    torch_dtype: Option<String>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

// Defaults are those of transformers' LlamaConfig.
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}

impl TryFrom<RawLlamaConfig> for LlamaConfig {
    /// The problems found, as one message (serde adds its own context).
    type Error = String;

    fn try_from(raw: RawLlamaConfig) -> Result<Self, String> {
        let heads = raw.num_attention_heads;
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if heads > 0 && raw.hidden_size.is_multiple_of(heads) => raw.hidden_size / heads,
            None => {
                return Err(format!(
                    "head_dim is absent and hidden_size {} is not divisible by \
                     num_attention_heads {heads}; give head_dim explicitly",
                    raw.hidden_size
                ));
            }
        };
        let (rope_theta, rope_scaling) = match raw.rope_parameters {
            Some(parameters) => rope_from_parameters(parameters)?,
            None => (raw.rope_theta, raw.rope_scaling),
        };
        let config = LlamaConfig {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            // Absent means plain multi-head attention, as in transformers.
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim,
            hidden_act: raw.hidden_act,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: rope_theta.unwrap_or_else(default_rope_theta),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            vocab_size: raw.vocab_size,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
            pad_token_id: raw.pad_token_id,
            torch_dtype: raw.torch_dtype,
            extra: raw.extra,
        };
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems.join("; "))
        }
    }
}

/// `rope_theta` and `rope_scaling` from transformers 5's `rope_parameters`
/// (which replaces both in the configs it writes); a `default` rope type is
/// no scaling.
fn rope_from_parameters(
    mut parameters: Map<String, Value>,
) -> Result<(Option<f64>, Option<RopeScaling>), String> {
    let theta = match parameters.remove("rope_theta") {
        None => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| format!("rope_parameters.rope_theta {v} is not a number"))?,
        ),
    };
    let scaling: RopeScaling = serde_json::from_value(Value::Object(parameters))
        .map_err(|e| format!("rope_parameters: {e}"))?;
    Ok((theta, (scaling.kind() != "default").then_some(scaling)))
}

impl LlamaConfig {
    /// A config with transformers' defaults for everything but the sizes
    /// (untied, no biases, no rope scaling, `head_dim = hidden / heads`).
    pub fn new(
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        vocab_size: usize,
    ) -> Self {
        Self {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            hidden_act: default_hidden_act(),
            rms_norm_eps: default_rms_norm_eps(),
            rope_theta: default_rope_theta(),
            rope_scaling: None,
            max_position_embeddings: default_max_position_embeddings(),
            vocab_size,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            torch_dtype: None,
            extra: Map::new(),
        }
    }

    /// Parses and validates a `config.json` object.
    pub fn from_json(value: &Value) -> Result<Self, ModelError> {
        Self::deserialize(value).map_err(|e| ModelError::Config(e.to_string()))
    }

    /// Reads and validates a `config.json` file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Config(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    /// The JSON to write as `config.json`: every field (with an explicit
    /// `head_dim`), the kept extra keys, and the `architectures` and
    /// `model_type` that transformers needs to pick the class.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("a config always serializes");
        let obj = value.as_object_mut().expect("a config is a JSON object");
        if !obj.contains_key("architectures") {
            obj.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForCausalLM"]),
            );
        }
        if !obj.contains_key("model_type") {
            obj.insert("model_type".into(), Value::from("llama"));
        }
        value
    }

    /// Width of the concatenated query heads (`o_proj` input).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Number of parameters of the model this config describes.
    pub fn num_parameters(&self) -> usize {
        let (h, f, q, kv) = (
            self.hidden_size,
            self.intermediate_size,
            self.q_dim(),
            self.kv_dim(),
        );
        // q, k, v, o weights, then their biases (q, kv, kv, hidden entries).
        let attn = 2 * h * q
            + 2 * h * kv
            + if self.attention_bias {
                q + 2 * kv + h
            } else {
                0
            };
        let mlp = 3 * h * f + if self.mlp_bias { 2 * f + h } else { 0 };
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers * layer + h + head
    }

    /// Checks that the sizes describe a model this crate can run.
    pub fn validate(&self) -> Result<(), ModelError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Config(problems.join("; ")))
        }
    }

    /// Every reason this config cannot be run, all at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if self.num_key_value_heads > 0
            && !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            problems.push(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        // Rotate-half RoPE pairs the first and second halves of each head.
        if !self.head_dim.is_multiple_of(2) {
            problems.push(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            problems.push(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            problems.push(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if self.hidden_act != "silu" {
            problems.push(format!(
                "hidden_act {:?} is not supported (Llama uses \"silu\")",
                self.hidden_act
            ));
        }
        match self.extra.get("model_type").and_then(Value::as_str) {
            None | Some("llama") => {}
            // What `export` writes for shapes transformers' Llama refuses.
            Some("mistral") => problems.extend(self.sliding_window_problem()),
            Some(kind) => problems.push(format!(
                "model_type {kind:?} is not supported (expected \"llama\", or \"mistral\" \
                 without a sliding window)"
            )),
        }
        if let Some(scaling) = &self.rope_scaling {
            problems.extend(scaling.problems());
        }
        problems
    }
}

impl LlamaConfig {
    /// A Mistral config is the Llama computation only while its sliding
    /// window covers the whole context (`null`, or at least
    /// `max_position_embeddings`); transformers' default is 4096 tokens.
    fn sliding_window_problem(&self) -> Option<String> {
        const MISTRAL_DEFAULT_WINDOW: u64 = 4096;
        let window = match self.extra.get("sliding_window") {
            Some(Value::Null) => return None,
            Some(v) => v.as_u64(),
            None => Some(MISTRAL_DEFAULT_WINDOW),
        };
        match window {
            Some(w) if w >= self.max_position_embeddings as u64 => None,
            Some(w) => Some(format!(
                "sliding_window {w} is shorter than max_position_embeddings {}; \
                 sliding-window attention is not supported",
                self.max_position_embeddings
            )),
            None => Some("sliding_window must be null or a token count".into()),
        }
    }
}

impl RopeScaling {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let positive = |name: &str, v: Option<f64>, problems: &mut Vec<String>| match v {
            Some(v) if v > 0.0 && v.is_finite() => {}
            Some(v) => problems.push(format!("rope_scaling.{name} {v} must be positive")),
            None => problems.push(format!("rope_scaling.{name} is missing")),
        };
        match self.kind() {
            "default" => {}
            "linear" => positive("factor", self.factor, &mut problems),
            "llama3" => {
                positive("factor", self.factor, &mut problems);
                positive("low_freq_factor", self.low_freq_factor, &mut problems);
                positive("high_freq_factor", self.high_freq_factor, &mut problems);
                match self.original_max_position_embeddings {
                    Some(n) if n > 0 => {}
                    _ => problems.push(
                        "rope_scaling.original_max_position_embeddings must be positive".into(),
                    ),
                }
                if let (Some(lo), Some(hi)) = (self.low_freq_factor, self.high_freq_factor)
                    && hi <= lo
                {
                    problems.push(format!(
                        "rope_scaling.high_freq_factor {hi} must exceed low_freq_factor {lo}"
                    ));
                }
            }
            other => problems.push(format!(
                "rope_scaling type {other:?} is not supported (llama3, linear or default)"
            )),
        }
        problems
    }
}
