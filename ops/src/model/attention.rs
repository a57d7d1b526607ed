//! Causal self-attention with grouped-query heads and RoPE.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::kernels::{Precision, Results, causal_attention_in};

use super::ModelBackend;
use super::cache::LayerKv;
use super::layers::{Linear, ProductInput};
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
    /// The arithmetic of the attention's own products, scores and
    /// weighted values (see [`crate::kernels::attention`]).
    pub precision: Precision,
}

impl<B: ModelBackend> Attention<B> {
    /// The block: `x: [batch, seq, hidden]` (or its norm still to apply,
    /// see [`ProductInput`]) -> `[batch, seq, hidden]`, the attention's
    /// output written as `o_proj` reads it ([`Linear::forward_attention`]),
    /// for a caller that does not want that output itself. See
    /// [`Attention::context`] for the cache.
    pub fn forward(
        &self,
        x: ProductInput<'_, B>,
        rope: &RopeTables<B>,
        cache: Option<&mut LayerKv<B>>,
    ) -> Tensor<B, 3> {
        let [q, k, v] = self.operands(x, rope, cache);
        self.o_proj.forward_attention(q, k, v, self.precision)
    }

    /// Everything up to the `o_proj` input: `x: [batch, seq, hidden]`
    /// (or its norm still to apply, see [`ProductInput`]) ->
    /// `[batch, seq, heads * head_dim]`, in f32.
    ///
    /// With a cache, the new keys and values are appended to it and the
    /// queries attend to everything cached (query `i` of this call sees
    /// cached keys `..= past + i`). Grouped-query heads share their key/value
    /// head inside the kernel ([`causal_attention_in`]); nothing is repeated.
    pub fn context(
        &self,
        x: ProductInput<'_, B>,
        rope: &RopeTables<B>,
        cache: Option<&mut LayerKv<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, _] = x.dims();
        let [q, k, v] = self.operands(x, rope, cache);
        let width = self.num_heads * self.head_dim;
        causal_attention_in(q, k, v, self.precision).reshape([batch, seq, width])
    }

    /// The attention's `q: [batch, seq, heads, head_dim]` and `k`, `v`:
    /// `[batch, keys, kv_heads, head_dim]`, rotated, with the cache's
    /// earlier keys and values in front (see [`Attention::context`]).
    fn operands(
        &self,
        x: ProductInput<'_, B>,
        rope: &RopeTables<B>,
        cache: Option<&mut LayerKv<B>>,
    ) -> [Tensor<B, 4>; 3] {
        let [batch, seq, _] = x.dims();
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);

        // [batch, seq, heads, head_dim] throughout: the projections' own
        // layout, which the attention kernel reads without a copy.
        // x prepared once for the three products (Linear::forward_shared).
        let [q, k, v] =
            Linear::forward_shared([&self.q_proj, &self.k_proj, &self.v_proj], x, Results::F32);
        let (q, k) = (
            q.reshape([batch, seq, h, d]),
            k.reshape([batch, seq, kv, d]),
        );
        // Rotated straight into the dtype in which attention reads its
        // scores' operands, where it has one of its own: not with a cache,
        // whose keys keep one dtype across calls of any length.
        let operands = match cache {
            None => B::attention_operands(&q.device(), [seq, seq, d], self.precision),
            Some(_) => None,
        };
        let dtype = operands.unwrap_or(q.dtype());
        let grads = self.query_key_gradients(&q.device());
        let (q, k) = rope.apply_pair(q, k, dtype, grads);
        let v = v.reshape([batch, seq, kv, d]);

        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        [q, k, v]
    }

    /// The dtype in which the q and k products' backward reads their
    /// results' gradients
    /// ([`crate::kernels::MatmulOps::trained_gradient`]: bf16 on CUDA),
    /// so that the rotation's backward writes them so, in place of a cast
    /// of its f32 result by each product. `None` where they read them as
    /// they come, or where a bias would sum them (in their dtype).
    fn query_key_gradients(&self, device: &B::Device) -> Option<DType> {
        let (q, k) = (&self.q_proj, &self.k_proj);
        if q.bias.is_some() || k.bias.is_some() || q.precision != k.precision {
            return None;
        }
        B::trained_gradient(device, q.precision)
    }

    /// `o_proj`: `[batch, seq, heads * head_dim]` -> `[batch, seq, hidden]`.
    pub fn output(&self, context: Tensor<B, 3>) -> Tensor<B, 3> {
        self.o_proj.forward(context)
    }
}
