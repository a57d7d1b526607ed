//! Shared by the model tests: a seeded RNG, tiny random Llama configs and
//! weights, and an independent float64 reference forward written with plain
//! loops (nothing shared with the code under test).
#![allow(dead_code)]

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use distillery_ops::io::{HostTensor, StateDict};
use distillery_ops::model::{Llama, LlamaConfig, tokens_tensor};
use serde_json::json;

pub type B = Flex;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// xorshift64*: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(vocab) as u32).collect()
    }
}

/// Parses a config the way a `config.json` would be read.
pub fn config(value: serde_json::Value) -> LlamaConfig {
    serde_json::from_value(value).expect("valid test config")
}

/// Grouped-query attention, untied head.
pub fn cfg_gqa() -> LlamaConfig {
    config(json!({
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false
    }))
}

/// Odd sizes, one kv head, explicit head_dim (12 != 40 / 5), tied head.
pub fn cfg_odd_tied() -> LlamaConfig {
    config(json!({
        "hidden_size": 40, "intermediate_size": 72, "num_hidden_layers": 3,
        "num_attention_heads": 5, "num_key_value_heads": 1, "head_dim": 12,
        "vocab_size": 61, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
        "tie_word_embeddings": true
    }))
}

/// Biases everywhere and Llama 3 rope scaling with a short original context,
/// so that every band of the scaling is exercised at short positions.
pub fn cfg_bias_llama3() -> LlamaConfig {
    config(json!({
        "hidden_size": 48, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 16,
        "vocab_size": 37, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "attention_bias": true, "mlp_bias": true, "tie_word_embeddings": false,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    }))
}

/// Plain multi-head attention (kv heads = heads), head_dim absent from the JSON.
pub fn cfg_mha() -> LlamaConfig {
    config(json!({
        "hidden_size": 24, "intermediate_size": 56, "num_hidden_layers": 1,
        "num_attention_heads": 3, "vocab_size": 29, "tie_word_embeddings": true
    }))
}

pub fn all_configs() -> Vec<(&'static str, LlamaConfig)> {
    vec![
        ("gqa", cfg_gqa()),
        ("odd_tied", cfg_odd_tied()),
        ("bias_llama3", cfg_bias_llama3()),
        ("mha", cfg_mha()),
    ]
}

/// Every tensor the config calls for, under Hugging Face names, with random
/// values scaled by 1/sqrt(fan_in) (norm weights around 1) so activations
/// stay of order one through the layers.
pub fn random_weights(c: &LlamaConfig, rng: &mut Rng) -> StateDict {
    let mut sd = StateDict::new();
    let mut put = |name: String, shape: Vec<usize>, rng: &mut Rng, kind: Kind| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match kind {
            Kind::Norm => (0..n).map(|_| 1.0 + 0.2 * rng.uniform()).collect(),
            Kind::Bias => (0..n).map(|_| 0.1 * rng.uniform()).collect(),
            Kind::Matrix(fan_in) => {
                let s = 1.7 / (fan_in as f32).sqrt();
                (0..n).map(|_| s * rng.uniform()).collect()
            }
            Kind::Embed => (0..n).map(|_| rng.uniform()).collect(),
        };
        sd.insert(name, HostTensor::new(shape, data));
    };
    let (h, f, q, kv, v) = (
        c.hidden_size,
        c.intermediate_size,
        c.q_dim(),
        c.kv_dim(),
        c.vocab_size,
    );
    put(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        rng,
        Kind::Embed,
    );
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        put(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            rng,
            Kind::Norm,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            rng,
            Kind::Norm,
        );
        for (name, out, inp, bias) in [
            ("self_attn.q_proj", q, h, c.attention_bias),
            ("self_attn.k_proj", kv, h, c.attention_bias),
            ("self_attn.v_proj", kv, h, c.attention_bias),
            ("self_attn.o_proj", h, q, c.attention_bias),
            ("mlp.gate_proj", f, h, c.mlp_bias),
            ("mlp.up_proj", f, h, c.mlp_bias),
            ("mlp.down_proj", h, f, c.mlp_bias),
        ] {
            put(
                format!("{p}.{name}.weight"),
                vec![out, inp],
                rng,
                Kind::Matrix(inp),
            );
            if bias {
                put(format!("{p}.{name}.bias"), vec![out], rng, Kind::Bias);
            }
        }
    }
    put("model.norm.weight".into(), vec![h], rng, Kind::Norm);
    if !c.tie_word_embeddings {
        put("lm_head.weight".into(), vec![v, h], rng, Kind::Matrix(h));
    }
    sd
}

#[derive(Clone, Copy)]
enum Kind {
    Norm,
    Bias,
    Matrix(usize),
    Embed,
}

pub fn build(c: &LlamaConfig, sd: &StateDict) -> Llama<B> {
    Llama::from_state_dict(c.clone(), sd.clone(), &device()).expect("model builds")
}

/// Logits of the model under test, `[batch][seq * vocab]` flattened per row.
pub fn model_logits(model: &Llama<B>, rows: &[&[u32]]) -> Vec<f32> {
    let logits = model.forward(tokens_tensor(rows, &device()));
    to_vec(logits)
}

/// Every parameter's gradient (in the model's visiting order) of
/// `sum(logits * weights)` over `rows`, with fixed pseudo-random weights:
/// every logit contributes, so every parameter has a gradient.
pub fn parameter_gradients<BA: distillery_ops::model::ModelBackend + AutodiffBackend>(
    model: &Llama<BA>,
    rows: &[&[u32]],
    device: &BA::Device,
) -> Vec<Vec<f32>> {
    let logits = model.forward(tokens_tensor(rows, device));
    let n = logits.shape().num_elements();
    let weights: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let weights = Tensor::<BA, 1>::from_data(burn::tensor::TensorData::new(weights, [n]), device)
        .reshape(logits.dims());
    let grads = (logits * weights).sum().backward();
    struct Collect<'a, BA: AutodiffBackend> {
        grads: &'a BA::Gradients,
        out: &'a mut Vec<Vec<f32>>,
    }
    impl<BA: AutodiffBackend> ModuleVisitor<BA> for Collect<'_, BA> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<BA, D>>) {
            let g = param
                .val()
                .grad(self.grads)
                .expect("every parameter has a gradient");
            assert_eq!(g.dtype(), burn::tensor::DType::F32, "a gradient's dtype");
            self.out.push(g.into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut out = Vec::new();
    model.visit(&mut Collect {
        grads: &grads,
        out: &mut out,
    });
    out
}

pub fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 data")
}

/// max |a - b| / max |b|: the error relative to the scale of the reference.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
    diff / scale
}

pub fn rel_err_f32(a: &[f32], b: &[f32]) -> f64 {
    let b64: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    rel_err(a, &b64)
}

// ---------------------------------------------------------------------------
// The float64 reference.

/// Per-layer activations of the reference, each `[seq][width]` flattened.
#[derive(Default, Clone)]
pub struct RefLayer {
    pub layer_input: Vec<f64>,
    pub input_layernorm: Vec<f64>,
    pub o_proj_input: Vec<f64>,
    pub post_attention_layernorm: Vec<f64>,
    pub down_proj_input: Vec<f64>,
    pub layer_output: Vec<f64>,
}

pub struct RefOutput {
    /// `[seq][vocab]` flattened.
    pub logits: Vec<f64>,
    pub layers: Vec<RefLayer>,
    /// `[seq][hidden]` flattened.
    pub final_norm: Vec<f64>,
}

fn w(sd: &StateDict, name: &str) -> Vec<f64> {
    sd.get(name)
        .unwrap_or_else(|| panic!("reference: no {name}"))
        .data
        .iter()
        .map(|&v| v as f64)
        .collect()
}

fn wopt(sd: &StateDict, name: &str) -> Option<Vec<f64>> {
    sd.get(name)
        .map(|t| t.data.iter().map(|&v| v as f64).collect())
}

/// `y[t][o] = sum_i x[t][i] * w[o][i] + b[o]`.
fn linear(x: &[f64], seq: usize, inp: usize, w: &[f64], out: usize, b: Option<&[f64]>) -> Vec<f64> {
    let mut y = vec![0.0; seq * out];
    for t in 0..seq {
        for o in 0..out {
            let mut acc = b.map_or(0.0, |b| b[o]);
            for i in 0..inp {
                acc += x[t * inp + i] * w[o * inp + i];
            }
            y[t * out + o] = acc;
        }
    }
    y
}

fn rmsnorm(x: &[f64], seq: usize, dim: usize, w: &[f64], eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; seq * dim];
    for t in 0..seq {
        let row = &x[t * dim..(t + 1) * dim];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..dim {
            y[t * dim + i] = row[i] * inv * w[i];
        }
    }
    y
}

/// Inverse frequencies, with the Llama 3 scaling written from its definition.
pub fn ref_inv_freq(c: &LlamaConfig) -> Vec<f64> {
    let d = c.head_dim;
    (0..d / 2)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f64 / d as f64);
            match &c.rope_scaling {
                Some(s) if s.kind() == "llama3" => {
                    let factor = s.factor.unwrap();
                    let lo = s.low_freq_factor.unwrap();
                    let hi = s.high_freq_factor.unwrap();
                    let ctx = s.original_max_position_embeddings.unwrap() as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < ctx / hi {
                        f
                    } else if wavelen > ctx / lo {
                        f / factor
                    } else {
                        let smooth = (ctx / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                }
                Some(s) if s.kind() == "linear" => f / s.factor.unwrap(),
                _ => f,
            }
        })
        .collect()
}

/// Rotates each head of `x: [seq][heads * d]` in place, position `start + t`.
fn rope(x: &mut [f64], seq: usize, heads: usize, d: usize, inv_freq: &[f64], start: usize) {
    let half = d / 2;
    for t in 0..seq {
        for hh in 0..heads {
            let base = t * heads * d + hh * d;
            for i in 0..half {
                let angle = (start + t) as f64 * inv_freq[i];
                let (s, c) = angle.sin_cos();
                let a = x[base + i];
                let b = x[base + i + half];
                x[base + i] = a * c - b * s;
                x[base + i + half] = b * c + a * s;
            }
        }
    }
}

/// The whole model on one token sequence, in f64.
pub fn reference_forward(c: &LlamaConfig, sd: &StateDict, tokens: &[u32]) -> RefOutput {
    let (h, f, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
    let (q_dim, kv_dim) = (nh * d, nkv * d);
    let seq = tokens.len();
    let inv_freq = ref_inv_freq(c);
    let embed = w(sd, "model.embed_tokens.weight");

    let mut x = vec![0.0; seq * h];
    for (t, &tok) in tokens.iter().enumerate() {
        x[t * h..(t + 1) * h].copy_from_slice(&embed[tok as usize * h..(tok as usize + 1) * h]);
    }
    let mut layers = Vec::new();
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let lin = |x: &[f64], name: &str, inp: usize, out: usize| {
            let wt = w(sd, &format!("{p}.{name}.weight"));
            let b = wopt(sd, &format!("{p}.{name}.bias"));
            linear(x, seq, inp, &wt, out, b.as_deref())
        };
        let mut rec = RefLayer {
            layer_input: x.clone(),
            ..Default::default()
        };

        let n = rmsnorm(
            &x,
            seq,
            h,
            &w(sd, &format!("{p}.input_layernorm.weight")),
            c.rms_norm_eps,
        );
        rec.input_layernorm = n.clone();
        let mut q = lin(&n, "self_attn.q_proj", h, q_dim);
        let mut k = lin(&n, "self_attn.k_proj", h, kv_dim);
        let v = lin(&n, "self_attn.v_proj", h, kv_dim);
        rope(&mut q, seq, nh, d, &inv_freq, 0);
        rope(&mut k, seq, nkv, d, &inv_freq, 0);

        let mut ctx = vec![0.0; seq * q_dim];
        let scale = 1.0 / (d as f64).sqrt();
        for hh in 0..nh {
            let g = hh / (nh / nkv); // the kv head this query head reads
            for t in 0..seq {
                let scores: Vec<f64> = (0..=t)
                    .map(|j| {
                        (0..d)
                            .map(|i| q[t * q_dim + hh * d + i] * k[j * kv_dim + g * d + i])
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..d {
                    ctx[t * q_dim + hh * d + i] =
                        (0..=t).map(|j| e[j] / z * v[j * kv_dim + g * d + i]).sum();
                }
            }
        }
        rec.o_proj_input = ctx.clone();
        let o = lin(&ctx, "self_attn.o_proj", q_dim, h);
        for i in 0..seq * h {
            x[i] += o[i];
        }

        let n2 = rmsnorm(
            &x,
            seq,
            h,
            &w(sd, &format!("{p}.post_attention_layernorm.weight")),
            c.rms_norm_eps,
        );
        rec.post_attention_layernorm = n2.clone();
        let gate = lin(&n2, "mlp.gate_proj", h, f);
        let up = lin(&n2, "mlp.up_proj", h, f);
        let act: Vec<f64> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        rec.down_proj_input = act.clone();
        let down = lin(&act, "mlp.down_proj", f, h);
        for i in 0..seq * h {
            x[i] += down[i];
        }
        rec.layer_output = x.clone();
        layers.push(rec);
    }
    let final_norm = rmsnorm(&x, seq, h, &w(sd, "model.norm.weight"), c.rms_norm_eps);
    let head_name = if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    let logits = linear(&final_norm, seq, h, &w(sd, head_name), c.vocab_size, None);
    RefOutput {
        logits,
        layers,
        final_norm,
    }
}

// ---------------------------------------------------------------------------
// Shared assets.

#[path = "../assets_support/mod.rs"]
mod assets_support;
#[allow(unused_imports)]
pub use assets_support::{Npy, byte_level_chars, read_npy};

/// A three-word word-level tokenizer, for model folders that need one.
pub fn tiny_tokenizer() -> tokenizers::Tokenizer {
    let json = r#"{
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "[UNK]": 2},
                  "unk_token": "[UNK]"}
    }"#;
    json.parse().expect("tokenizer json")
}
