//! Building a [`Llama`] from a [`StateDict`] under Hugging Face names, and
//! exporting it back.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::attention::Attention;
use super::config::LlamaConfig;
use super::decoder::DecoderLayer;
use super::error::ModelError;
use super::layers::{Linear, RmsNorm};
use super::llama::Llama;
use super::mlp::Mlp;
use super::rope::Rope;
use crate::io::{HostTensor, StateDict};
use crate::kernels::Precision;
use crate::kernels::matmul::Activations;

/// Takes tensors out of a state dict by name, checking shapes.
struct Taker<'a, B: Backend> {
    tensors: StateDict,
    device: &'a B::Device,
}

impl<B: Backend> Taker<'_, B> {
    /// The data of `name`, which must have `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.into(),
                expected: shape.to_vec(),
            })?;
        if t.shape != shape {
            return Err(ModelError::WrongShape {
                name: name.into(),
                expected: shape.to_vec(),
                actual: t.shape,
            });
        }
        Ok(t.data)
    }

    fn t1(&mut self, name: &str, n: usize) -> Result<Tensor<B, 1>, ModelError> {
        // Moves the buffer: no copy on the way into the tensor.
        let data = TensorData::new(self.take(name, &[n])?, [n]);
        Ok(Tensor::from_data(data, self.device))
    }

    fn t2(&mut self, name: &str, rows: usize, cols: usize) -> Result<Tensor<B, 2>, ModelError> {
        let data = TensorData::new(self.take(name, &[rows, cols])?, [rows, cols]);
        Ok(Tensor::from_data(data, self.device))
    }

    /// A Hugging Face `[out, in]` linear weight, as the `[in, out]` the
    /// model keeps.
    fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear<B>, ModelError> {
        let data = self.take(&format!("{prefix}.weight"), &[out, inp])?;
        let weight = Tensor::from_data(
            TensorData::new(transpose(&data, out, inp), [inp, out]),
            self.device,
        );
        let bias = if bias {
            Some(self.t1(&format!("{prefix}.bias"), out)?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }

    fn norm(&mut self, name: &str, n: usize, eps: f64) -> Result<RmsNorm<B>, ModelError> {
        Ok(RmsNorm::new(self.t1(name, n)?, eps))
    }
}

impl<B: Backend> Llama<B> {
    /// Builds the model from Hugging Face-named tensors (`[out, in]` linear
    /// weights, transposed here to the model's `[in, out]`). Every expected
    /// tensor must be present with its exact shape and nothing else may be
    /// left over, except what transformers ignores too: `lm_head.weight` of a
    /// tied model and `rotary_emb.inv_freq` buffers.
    pub fn from_state_dict(
        config: LlamaConfig,
        tensors: StateDict,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let c = &config;
        let (h, f, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let mut tk = Taker::<B> { tensors, device };

        let embed_tokens =
            Param::from_tensor(tk.t2("model.embed_tokens.weight", c.vocab_size, h)?);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let ab = c.attention_bias;
            let mb = c.mlp_bias;
            layers.push(DecoderLayer {
                input_layernorm: tk.norm(
                    &format!("{p}.input_layernorm.weight"),
                    h,
                    c.rms_norm_eps,
                )?,
                self_attn: Attention {
                    q_proj: tk.linear(&format!("{p}.self_attn.q_proj"), q, h, ab)?,
                    k_proj: tk.linear(&format!("{p}.self_attn.k_proj"), kv, h, ab)?,
                    v_proj: tk.linear(&format!("{p}.self_attn.v_proj"), kv, h, ab)?,
                    o_proj: tk.linear(&format!("{p}.self_attn.o_proj"), h, q, ab)?,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                    precision: Precision::F32,
                },
                post_attention_layernorm: tk.norm(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    c.rms_norm_eps,
                )?,
                mlp: Mlp {
                    gate_proj: tk.linear(&format!("{p}.mlp.gate_proj"), f, h, mb)?,
                    up_proj: tk.linear(&format!("{p}.mlp.up_proj"), f, h, mb)?,
                    down_proj: tk.linear(&format!("{p}.mlp.down_proj"), h, f, mb)?,
                },
            });
        }
        let norm = tk.norm("model.norm.weight", h, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            // Some tied checkpoints still carry a copy; transformers drops it.
            if let Some(t) = tk.tensors.remove("lm_head.weight")
                && t.shape != [c.vocab_size, h]
            {
                return Err(ModelError::WrongShape {
                    name: "lm_head.weight".into(),
                    expected: vec![c.vocab_size, h],
                    actual: t.shape,
                });
            }
            None
        } else {
            Some(Param::from_tensor(tk.t2(
                "lm_head.weight",
                c.vocab_size,
                h,
            )?))
        };

        let leftover: Vec<String> = tk
            .tensors
            .into_keys()
            .filter(|name| !name.ends_with("rotary_emb.inv_freq"))
            .collect();
        if !leftover.is_empty() {
            return Err(ModelError::UnexpectedTensors { names: leftover });
        }

        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Rope::new(&config),
            config,
            precision: Precision::F32,
            activations: Activations::TwoParts,
        })
    }

    /// The weights under Hugging Face names and shapes; a tied model has no
    /// `lm_head.weight`.
    pub fn to_state_dict(&self) -> StateDict {
        let mut out = StateDict::new();
        put(
            &mut out,
            "model.embed_tokens.weight".into(),
            self.embed_tokens.val(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let linears = [
                ("self_attn.q_proj", &layer.self_attn.q_proj),
                ("self_attn.k_proj", &layer.self_attn.k_proj),
                ("self_attn.v_proj", &layer.self_attn.v_proj),
                ("self_attn.o_proj", &layer.self_attn.o_proj),
                ("mlp.gate_proj", &layer.mlp.gate_proj),
                ("mlp.up_proj", &layer.mlp.up_proj),
                ("mlp.down_proj", &layer.mlp.down_proj),
            ];
            for (name, lin) in linears {
                // Reading a transposed view makes the backend produce a
                // fresh contiguous buffer, handed over without another copy.
                put(
                    &mut out,
                    format!("{p}.{name}.weight"),
                    lin.weight.val().transpose(),
                );
                if let Some(b) = &lin.bias {
                    put(&mut out, format!("{p}.{name}.bias"), b.val());
                }
            }
            let norms = [
                ("input_layernorm", &layer.input_layernorm),
                ("post_attention_layernorm", &layer.post_attention_layernorm),
            ];
            for (name, norm) in norms {
                put(&mut out, format!("{p}.{name}.weight"), norm.weight.val());
            }
        }
        put(&mut out, "model.norm.weight".into(), self.norm.weight.val());
        if let Some(head) = &self.lm_head {
            put(&mut out, "lm_head.weight".into(), head.val());
        }
        out
    }
}

fn put<B: Backend, const D: usize>(out: &mut StateDict, name: String, t: Tensor<B, D>) {
    let data = t.into_data();
    let shape = data.shape.to_vec();
    let data = data
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor data");
    out.insert(name, HostTensor::new(shape, data));
}

/// `src: [rows, cols]` -> `[cols, rows]`, in cache-sized tiles, output rows
/// in parallel.
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut dst = vec![0.0f32; rows * cols];
    if dst.is_empty() {
        return dst;
    }
    dst.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(block, chunk)| {
            let c0 = block * TILE;
            let n_cols = chunk.len() / rows;
            for r0 in (0..rows).step_by(TILE) {
                for c in 0..n_cols {
                    let out = &mut chunk[c * rows..(c + 1) * rows];
                    for r in r0..(r0 + TILE).min(rows) {
                        out[r] = src[r * cols + c0 + c];
                    }
                }
            }
        });
    dst
}
