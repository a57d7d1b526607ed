//! Causal self-attention with grouped-query heads and RoPE.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::cache::LayerKv;
use super::layers::Linear;
use super::rope::RopeTables;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// hidden -> heads * head_dim
    pub q_proj: Linear<B>,
    /// hidden -> kv_heads * head_dim
    pub k_proj: Linear<B>,
    /// hidden -> kv_heads * head_dim
    pub v_proj: Linear<B>,
    /// heads * head_dim -> hidden
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// Everything up to the `o_proj` input: `x: [batch, seq, hidden]` ->
    /// `[batch, seq, heads * head_dim]`.
    ///
    /// With a cache, the new keys and values are appended to it and the
    /// queries attend to everything cached (the causal mask is aligned to the
    /// bottom-right, so query `i` of this call sees cached keys `..= past + i`).
    pub fn context(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: Option<&mut LayerKv<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);

        let q = self.q_proj.forward(x.clone()).reshape([batch, seq, h, d]);
        let k = self.k_proj.forward(x.clone()).reshape([batch, seq, kv, d]);
        let v = self.v_proj.forward(x).reshape([batch, seq, kv, d]);

        // [batch, heads, seq, head_dim], the layout of the attention op.
        let q = rope.apply(q);
        let k = rope.apply(k);
        let v = v.swap_dims(1, 2);

        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };

        let k = repeat_kv(k, h / kv);
        let v = repeat_kv(v, h / kv);
        let options = AttentionModuleOptions {
            scale: None, // 1 / sqrt(head_dim)
            softcap: None,
            is_causal: true,
        };
        let out = attention(q, k, v, None, None, options);
        // [batch, heads, seq, d] -> [batch, seq, heads * d]
        out.swap_dims(1, 2).reshape([batch, seq, h * d])
    }

    /// `o_proj`: `[batch, seq, heads * head_dim]` -> `[batch, seq, hidden]`.
    pub fn output(&self, context: Tensor<B, 3>) -> Tensor<B, 3> {
        self.o_proj.forward(context)
    }
}

/// Each key/value head serves `n_rep` consecutive query heads:
/// `[batch, kv_heads, seq, d]` -> `[batch, kv_heads * n_rep, seq, d]`.
/// (Burn has no grouped-query attention op; the expand is a view and the
/// reshape materializes it once.)
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [batch, kv, seq, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv, n_rep, seq, d])
        .reshape([batch, kv * n_rep, seq, d])
}
