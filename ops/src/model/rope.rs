//! Rotary position embedding in the rotate-half form of Hugging Face Llama,
//! with the Llama 3 (and linear) `rope_scaling` frequency adjustment.

use std::f64::consts::PI;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::ModelBackend;
use super::config::LlamaConfig;
use crate::kernels::rope_pair;

/// The per-pair inverse frequencies of one head (`head_dim / 2` of them).
///
/// Only the frequencies are kept: cos and sin are computed on the host for
/// the positions of each call, which costs `seq * head_dim` evaluations
/// instead of a `max_position_embeddings`-long table in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

/// cos and sin for a run of positions, both `[seq, head_dim]`; `sin`
/// carries the sign of rotate-half: `-sin` on the first half of each
/// position.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
}

impl Rope {
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta;
        let mut inv_freq: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect();
        if let Some(scaling) = &config.rope_scaling {
            match scaling.kind() {
                "llama3" => {
                    // Validation guarantees these are present.
                    let factor = scaling.factor.unwrap_or(1.0);
                    let low = scaling.low_freq_factor.unwrap_or(1.0);
                    let high = scaling.high_freq_factor.unwrap_or(4.0);
                    let old_ctx = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
                    for f in &mut inv_freq {
                        *f = llama3_scale(*f, factor, low, high, old_ctx);
                    }
                }
                "linear" => {
                    let factor = scaling.factor.unwrap_or(1.0);
                    for f in &mut inv_freq {
                        *f /= factor;
                    }
                }
                _ => {}
            }
        }
        Self { inv_freq }
    }

    /// cos/sin for positions `start .. start + seq`, computed in f64 and
    /// rounded once to f32.
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        seq: usize,
        device: &B::Device,
    ) -> RopeTables<B> {
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = Vec::with_capacity(seq * dim);
        let mut sin = Vec::with_capacity(seq * dim);
        for pos in start..start + seq {
            let angles = self.inv_freq.iter().map(|f| pos as f64 * f);
            // HF duplicates the frequencies: emb = cat(freqs, freqs).
            cos.extend(angles.clone().map(|a| a.cos() as f32));
            cos.extend(angles.clone().map(|a| a.cos() as f32));
            sin.extend(angles.clone().map(|a| -a.sin() as f32));
            sin.extend(angles.map(|a| a.sin() as f32));
        }
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, [seq, dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [seq, dim]), device),
        }
    }
}

/// Llama 3's frequency-dependent scaling: long wavelengths (beyond the
/// original context / low_freq_factor) are slowed by `factor`, short ones
/// (below original context / high_freq_factor) are kept, and the band
/// between is interpolated smoothly.
fn llama3_scale(inv_freq: f64, factor: f64, low: f64, high: f64, old_ctx: f64) -> f64 {
    let wavelen = 2.0 * PI / inv_freq;
    let low_freq_wavelen = old_ctx / low;
    let high_freq_wavelen = old_ctx / high;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else {
        let smooth = (old_ctx / wavelen - low) / (high - low);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

impl<B: ModelBackend> RopeTables<B> {
    /// Rotates the queries `q` and keys `k` of one attention (`[batch,
    /// seq, heads, head_dim]` each, in place of their layout) and writes
    /// them in `dtype` ([`rope_pair`]): `x * cos + rotate_half(x) * sin`,
    /// where `rotate_half(x) = [-x2, x1]` (the minus sign lives in `sin`).
    /// In a training step their gradients are written in `grads` where
    /// given.
    pub fn apply_pair(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        dtype: DType,
        grads: Option<DType>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        rope_pair(q, k, self.cos.clone(), self.sin.clone(), dtype, grads)
    }
}
