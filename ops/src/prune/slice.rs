//! Slicing a state dict to the kept indices (METHOD.md section 5), in
//! Hugging Face names with linear weights stored `[out, in]`:
//!
//! | tensor | rows | columns |
//! |---|---|---|
//! | `embed_tokens`, `lm_head` `[V, D]` | all | Hk |
//! | every RMSNorm `[D]` | Hk | |
//! | `q_proj` `[H*d, D]` | Qk (heads expanded to `h*d..h*d+d`) | Hk |
//! | `k_proj`, `v_proj` `[G*d, D]` | kept kv groups, expanded | Hk |
//! | `o_proj` `[D, H*d]` | Hk | Qk |
//! | `gate_proj`, `up_proj` `[F, D]` | Nk | Hk |
//! | `down_proj` `[D, F]` | Hk | Nk |
//!
//! Biases follow their weight's rows. Layers are renumbered in order; a tied
//! model's single matrix serves both the embedding and the head, so it stays
//! tied. An index list that keeps a whole axis in order moves the tensor
//! without copying it.

use super::select::Keep;
use crate::io::{HostTensor, StateDict};
use crate::model::LlamaConfig;
use anyhow::{Result, bail};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Slices `tensors` (a model of `config`) to `keep`; returns the pruned
/// config and tensors. Every tensor must fit `config`; tensors that do not
/// depend on a pruned axis (rotary `inv_freq` buffers) are carried over, with
/// their layer renumbered.
pub fn apply(
    config: &LlamaConfig,
    tensors: StateDict,
    keep: &Keep,
) -> Result<(LlamaConfig, StateDict)> {
    let problems = config.tensor_problems(&tensors);
    if !problems.is_empty() {
        bail!(
            "the weights do not match the config:\n  {}",
            problems.join("\n  ")
        );
    }
    keep.check(config)?;
    let pruned = keep.pruned_config(config);
    let d = config.head_dim;

    let hidden = changed(&keep.hidden, config.hidden_size);
    // Source layer -> (new index, the layer's index lists).
    let layers: BTreeMap<usize, (usize, LayerIndices)> = keep
        .layers
        .iter()
        .enumerate()
        .map(|(new, k)| {
            let indices = LayerIndices {
                ffn: changed(&k.ffn, config.intermediate_size),
                q: changed(&expand(&k.heads, d), config.q_dim()),
                kv: changed(&expand(&k.kv_groups, d), config.kv_dim()),
            };
            (k.source, (new, indices))
        })
        .collect();
    let hidden = hidden.as_deref();

    let out: Vec<(String, HostTensor)> = tensors
        .into_par_iter()
        .filter_map(|(name, t)| {
            if let Some((source, rest)) = layer_name(&name) {
                let (new, idx) = layers.get(&source)?;
                let (rows, cols) = idx.axes(rest, hidden);
                return Some((format!("model.layers.{new}.{rest}"), gather(t, rows, cols)));
            }
            let (rows, cols) = match name.as_str() {
                "model.embed_tokens.weight" | "lm_head.weight" => (None, hidden),
                "model.norm.weight" => (hidden, None),
                _ => (None, None),
            };
            Some((name, gather(t, rows, cols)))
        })
        .collect();
    let out: StateDict = out.into_iter().collect();

    let problems = pruned.tensor_problems(&out);
    if !problems.is_empty() {
        bail!(
            "internal error: the pruned weights do not match the pruned config:\n  {}",
            problems.join("\n  ")
        );
    }
    pruned.validate()?;
    Ok((pruned, out))
}

/// One layer's index lists; `None` keeps the axis as it is.
struct LayerIndices {
    ffn: Option<Vec<usize>>,
    /// Query rows of `q_proj` (columns of `o_proj`).
    q: Option<Vec<usize>>,
    /// Key and value rows.
    kv: Option<Vec<usize>>,
}

impl LayerIndices {
    /// The rows and columns kept of the layer tensor named `rest`
    /// (`self_attn.q_proj.weight`).
    fn axes<'a>(
        &'a self,
        rest: &str,
        hidden: Option<&'a [usize]>,
    ) -> (Option<&'a [usize]>, Option<&'a [usize]>) {
        let (ffn, q, kv) = (self.ffn.as_deref(), self.q.as_deref(), self.kv.as_deref());
        match rest {
            "input_layernorm.weight"
            | "input_layernorm.bias"
            | "post_attention_layernorm.weight"
            | "post_attention_layernorm.bias" => (hidden, None),
            "self_attn.q_proj.weight" => (q, hidden),
            "self_attn.q_proj.bias" => (q, None),
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => (kv, hidden),
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => (kv, None),
            "self_attn.o_proj.weight" => (hidden, q),
            "self_attn.o_proj.bias" => (hidden, None),
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (ffn, hidden),
            "mlp.gate_proj.bias" | "mlp.up_proj.bias" => (ffn, None),
            "mlp.down_proj.weight" => (hidden, ffn),
            "mlp.down_proj.bias" => (hidden, None),
            // Rotary buffers depend on head_dim only, which is unchanged.
            _ => (None, None),
        }
    }
}

/// `model.layers.{i}.{rest}` -> `(i, rest)`.
fn layer_name(name: &str) -> Option<(usize, &str)> {
    let tail = name.strip_prefix("model.layers.")?;
    let (index, rest) = tail.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// Head (or group) indices expanded to their `head_dim` rows.
fn expand(units: &[usize], d: usize) -> Vec<usize> {
    units.iter().flat_map(|&u| u * d..(u + 1) * d).collect()
}

/// `None` when `indices` is `0..size` in order (nothing to do).
fn changed(indices: &[usize], size: usize) -> Option<Vec<usize>> {
    let identity = indices.len() == size && indices.iter().enumerate().all(|(i, &j)| i == j);
    (!identity).then(|| indices.to_vec())
}

/// Rows and columns of a 1-D or 2-D tensor (a 1-D tensor has rows only);
/// `None` keeps the dimension whole.
fn gather(t: HostTensor, rows: Option<&[usize]>, cols: Option<&[usize]>) -> HostTensor {
    if rows.is_none() && cols.is_none() {
        return t;
    }
    if t.shape.len() == 1 {
        let rows = rows.expect("a 1-D tensor is sliced on its only dimension");
        return HostTensor::new(vec![rows.len()], rows.iter().map(|&i| t.data[i]).collect());
    }
    let (n_rows, n_cols) = (t.shape[0], t.shape[1]);
    let out_rows = rows.map_or(n_rows, <[usize]>::len);
    let out_cols = cols.map_or(n_cols, <[usize]>::len);
    let mut data = Vec::with_capacity(out_rows * out_cols);
    for i in 0..out_rows {
        let src = rows.map_or(i, |r| r[i]);
        let row = &t.data[src * n_cols..(src + 1) * n_cols];
        match cols {
            None => data.extend_from_slice(row),
            Some(cols) => data.extend(cols.iter().map(|&j| row[j])),
        }
    }
    HostTensor::new(vec![out_rows, out_cols], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_picks_rows_then_columns() {
        let t = HostTensor::new(vec![3, 4], (0..12).map(|v| v as f32).collect());
        let g = gather(t.clone(), Some(&[2, 0]), Some(&[3, 1]));
        assert_eq!(g.shape, vec![2, 2]);
        assert_eq!(g.data, vec![11.0, 9.0, 3.0, 1.0]);
        assert_eq!(gather(t.clone(), None, None), t);
        let v = HostTensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(gather(v, Some(&[3, 0]), None).data, vec![4.0, 1.0]);
    }

    #[test]
    fn layer_names_parse() {
        assert_eq!(
            layer_name("model.layers.12.mlp.up_proj.weight"),
            Some((12, "mlp.up_proj.weight"))
        );
        assert_eq!(layer_name("model.norm.weight"), None);
    }
}
