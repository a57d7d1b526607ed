//! Causal grouped-query attention as a backend extension ([`AttentionOps`]),
//! forward and backward, in the layout the projections produce.
//!
//! `q: [batch, seq, heads, d]`, `k, v: [batch, keys, kv_heads, d]` with
//! `keys >= seq` (the last `seq` keys are the queries' own positions, the
//! first `keys - seq` a cache of earlier ones) and `heads` a multiple of
//! `kv_heads`: query head `h` reads key/value head `h / (heads / kv_heads)`.
//! Query `i` attends to keys `0 ..= keys - seq + i`, with scores
//! `scale * q . k` and softmax weights; the output is `[batch, seq, heads,
//! d]`, which `o_proj` reads as `[batch, seq, heads * d]` without a copy.
//!
//! The forward also returns, when asked, each query's log-sum-exp of its
//! scaled scores, `[batch, seq, heads]` f32: with it the backward recomputes
//! the softmax weights block by block instead of keeping them.
//!
//! The output and every gradient are in `v`'s dtype. `q` and `k` may come
//! in the dtype the scores' products read ([`AttentionOps::attention_operands`],
//! written so by the rotary embedding, `kernels::rows::RowOps::rope_pair`),
//! which spares the op a cast of its own.
//!
//! The op takes the model's [`Precision`]. With bf16, the CUDA backend runs
//! the products on tensor cores where the shapes fit the tiles (lengths
//! multiples of 16, head size a multiple of 16 up to 128): the scores and
//! the weighted values with f16 operands (`attention_tiles_cube`), the
//! backward's products with gradients with bf16 operands
//! (`attention_tiles_cube_backward`), all with f32 sums and the softmax in
//! f32. The CPU and wgpu compute in f32 whatever the precision.
//!
//! Backends without a kernel of their own run the default methods: the
//! textbook computation with tensor ops (keys and values repeated per query
//! head, a `[batch, heads, seq, keys]` score tensor). The CPU backend runs
//! `attention_flex`, which repeats nothing and materializes no score matrix
//! beyond one block of queries; the CubeCL backends run `attention_cube`,
//! which makes none at all, forward or backward.

use super::{Precision, float, tensor};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, FloatTensor};
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorData};

/// The two halves of the op: the forward, and the gradients of its inputs.
pub trait AttentionOps: Backend {
    /// The output `[batch, seq, heads, d]` and, when `with_lse`, the
    /// log-sum-exp of each query's scores `[batch, seq, heads]` f32.
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        with_lse: bool,
        precision: Precision,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let _ = precision; // the composition computes in v's dtype
        let (q, k, v) = composite::in_values_dtype::<Self>(q, k, v);
        let (out, lse) = composite::forward::<Self>(q, k, v, scale, with_lse);
        (float(out), lse.map(float))
    }

    /// The dtype in which the op reads `q` and `k` without a cast of its
    /// own, where it is not f32, for `[seq, keys, head size]` in
    /// `precision` on `device`: the operands of its scores' products on
    /// tensor cores. `None`: f32.
    fn attention_operands(
        device: &Self::Device,
        shape: [usize; 3],
        precision: Precision,
    ) -> Option<DType> {
        let _ = (device, shape, precision);
        None
    }

    /// How the op (forward and backward) computes in `precision` on
    /// `device` for `[seq, keys, head size]`, in words for benches and
    /// logs.
    fn attention_arithmetic(
        device: &Self::Device,
        shape: [usize; 3],
        precision: Precision,
    ) -> &'static str {
        let _ = (device, shape, precision);
        "f32"
    }

    /// `(dq, dk, dv)` given the forward's inputs, output, log-sum-exp and
    /// the gradient of the output. The output may come in another dtype
    /// than `v`'s (rounded, as `o_proj` read it:
    /// `kernels::product_inputs::ProductInputOps::attention_product`), and
    /// is read as it is.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        scale: f32,
        precision: Precision,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The composite gets the row sums from the weights instead of `out`,
        // and computes in v's dtype.
        let _ = (out, precision);
        let (q, k, v) = composite::in_values_dtype::<Self>(q, k, v);
        let (dq, dk, dv) =
            composite::backward::<Self>(q, k, v, tensor(lse), tensor(grad_out), scale);
        (float(dq), float(dk), float(dv))
    }
}

/// Causal grouped-query attention (see the module docs for shapes), the
/// usual `1 / sqrt(d)` scale, in f32. Under `Autodiff` the gradient flows
/// to `q`, `k` and `v` through [`AttentionOps::causal_attention_backward`].
///
/// Panics when the shapes disagree.
pub fn causal_attention<B: AttentionOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    causal_attention_in(q, k, v, Precision::F32)
}

/// [`causal_attention`] in `precision` (see the module docs).
pub fn causal_attention_in<B: AttentionOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    precision: Precision,
) -> Tensor<B, 4> {
    let scale = checked_scale(&q, &k, &v);
    let (out, _) = B::causal_attention(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        scale,
        false,
        precision,
    );
    tensor(out)
}

/// The usual scale `1 / sqrt(d)` of attention over `q`, `k` and `v`
/// (see the module docs for their shapes). Panics when the shapes
/// disagree.
pub(super) fn checked_scale<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> f32 {
    let [batch, seq, heads, d] = q.dims();
    let [kb, keys, kv_heads, kd] = k.dims();
    assert_eq!(
        v.dims(),
        k.dims(),
        "attention: values {:?} and keys {:?} differ in shape",
        v.dims(),
        k.dims()
    );
    assert!(
        kb == batch && kd == d,
        "attention: keys {:?} do not fit queries {:?}",
        k.dims(),
        q.dims()
    );
    assert!(
        keys >= seq,
        "attention: {keys} keys for {seq} queries (every query needs its own key)"
    );
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "attention: {heads} query heads cannot share {kv_heads} key/value heads evenly"
    );
    1.0 / (d as f32).sqrt()
}

/// The textbook computation, with Burn's tensor ops: the default for
/// backends without a kernel, and the tests' oracle for the kernels.
pub mod composite {
    use super::*;

    /// `q`, `k` and `v` as tensors, the first two cast to `v`'s dtype.
    #[allow(clippy::type_complexity)]
    pub fn in_values_dtype<B: Backend>(
        q: FloatTensor<B>,
        k: FloatTensor<B>,
        v: FloatTensor<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let v = tensor::<B, 4>(v);
        let dtype = v.dtype();
        let cast = |x: FloatTensor<B>| {
            let x = tensor::<B, 4>(x);
            if x.dtype() == dtype { x } else { x.cast(dtype) }
        };
        (cast(q), cast(k), v)
    }

    /// `[batch, kv_heads, keys, d]` -> `[batch, heads, keys, d]`: each
    /// key/value head repeated for the query heads it serves.
    fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
        if n_rep == 1 {
            return x;
        }
        let [batch, kv, keys, d] = x.dims();
        x.unsqueeze_dim::<5>(2)
            .expand([batch, kv, n_rep, keys, d])
            .reshape([batch, kv * n_rep, keys, d])
    }

    /// True where query `i` may not see key `j` (`j > keys - seq + i`):
    /// `[1, 1, seq, keys]`.
    fn future<B: Backend>(seq: usize, keys: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
        let past = keys - seq;
        let mask: Vec<bool> = (0..seq)
            .flat_map(|i| (0..keys).map(move |j| j > past + i))
            .collect();
        Tensor::from_data(TensorData::new(mask, [1, 1, seq, keys]), device)
    }

    /// Queries, keys and values in the `[batch, heads, positions, d]`
    /// layout, keys and values repeated per query head.
    #[allow(clippy::type_complexity)]
    fn per_head<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let n_rep = q.dims()[2] / k.dims()[2];
        (
            q.swap_dims(1, 2),
            repeat_kv(k.swap_dims(1, 2), n_rep),
            repeat_kv(v.swap_dims(1, 2), n_rep),
        )
    }

    /// Masked, scaled scores `[batch, heads, seq, keys]` (minus infinity
    /// where masked).
    fn scores<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>, scale: f32) -> Tensor<B, 4> {
        let [_, _, seq, _] = q.dims();
        let keys = k.dims()[2];
        let s = q.clone().matmul(k.clone().swap_dims(2, 3)) * scale;
        s.mask_fill(future::<B>(seq, keys, &q.device()), f32::NEG_INFINITY)
    }

    /// See [`AttentionOps::causal_attention`].
    pub fn forward<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        scale: f32,
        with_lse: bool,
    ) -> (Tensor<B, 4>, Option<Tensor<B, 3>>) {
        let (q, k, v) = per_head(q, k, v);
        if !with_lse {
            let options = AttentionModuleOptions {
                scale: Some(scale as f64),
                softcap: None,
                is_causal: true, // aligned to the bottom right, as here
            };
            let out = attention(q, k, v, None, None, options);
            return (out.swap_dims(1, 2), None);
        }
        let s = scores(&q, &k, scale).cast(FloatDType::F32);
        let max = s.clone().max_dim(3);
        let sum = (s.clone() - max.clone()).exp().sum_dim(3);
        let lse = max + sum.log(); // [batch, heads, seq, 1]
        let p = (s - lse.clone()).exp().cast(v.dtype());
        let out = p.matmul(v).swap_dims(1, 2);
        let lse = lse.squeeze_dim::<3>(3).swap_dims(1, 2);
        (out, Some(lse))
    }

    /// See [`AttentionOps::causal_attention_backward`].
    pub fn backward<B: Backend>(
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        lse: Tensor<B, 3>,
        grad_out: Tensor<B, 4>,
        scale: f32,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, keys, kv_heads, d] = k.dims();
        let n_rep = q.dims()[2] / kv_heads;
        let (q, k, v) = per_head(q, k, v);
        let dout = grad_out.swap_dims(1, 2);
        let lse = lse.swap_dims(1, 2).unsqueeze_dim::<4>(3);
        let p = (scores(&q, &k, scale).cast(FloatDType::F32) - lse).exp();
        let dv = p.clone().swap_dims(2, 3).matmul(dout.clone());
        let dp = dout.matmul(v.swap_dims(2, 3));
        let row = (dp.clone() * p.clone()).sum_dim(3);
        let ds = p * (dp - row) * scale;
        let dq = ds.clone().matmul(k).swap_dims(1, 2);
        let dk = ds.swap_dims(2, 3).matmul(q);
        // Each key/value head's gradient sums over the query heads it served.
        let fold = |x: Tensor<B, 4>| {
            x.reshape([batch, kv_heads, n_rep, keys, d])
                .sum_dim(2)
                .reshape([batch, kv_heads, keys, d])
                .swap_dims(1, 2)
        };
        (dq, fold(dk), fold(dv))
    }
}

/// Under autodiff the op runs on the inner backend with its log-sum-exp;
/// the backward gets the inputs, the output and the log-sum-exp as state.
pub(super) mod on_autodiff {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::tensor::TensorMetadata;
    use burn::tensor::backend::AutodiffBackend;

    #[derive(Debug)]
    struct AttentionBackward {
        scale: f32,
        precision: Precision,
    }

    /// What the backward needs: `q`, `k`, `v`, the output, the log-sum-exp.
    type Saved<B> = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    impl<B: AttentionOps> Backward<B, 3> for AttentionBackward {
        type State = Saved<B>;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_q, node_k, node_v] = ops.parents;
            let (q, k, v, out, lse) = ops.state;
            // In the output's shape: a product reading its rows (`o_proj`,
            // `kernels::product_inputs`) sends its gradient as rows.
            let grad_out = B::float_reshape(grads.consume::<B>(&ops.node), out.shape());
            let (dq, dk, dv) = B::causal_attention_backward(
                q,
                k,
                v,
                out,
                lse,
                grad_out,
                self.scale,
                self.precision,
            );
            for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    /// Attention of `q`, `k` and `v` as a node of the graph, whose forward
    /// is `forward` (the inner backend's, given `with_lse`) and whose
    /// backward is [`AttentionOps::causal_attention_backward`] from the
    /// inputs, the output `forward` wrote (in whatever dtype) and its
    /// log-sum-exp: the output, and the log-sum-exp where it was made
    /// (always where the graph tracks the op, else when `with_lse`).
    pub(in crate::kernels) fn attention_node<B: AttentionOps, C: CheckpointStrategy>(
        q: FloatTensor<Autodiff<B, C>>,
        k: FloatTensor<Autodiff<B, C>>,
        v: FloatTensor<Autodiff<B, C>>,
        scale: f32,
        precision: Precision,
        with_lse: bool,
        forward: impl FnOnce(
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            bool,
        ) -> (FloatTensor<B>, Option<FloatTensor<B>>),
    ) -> (FloatTensor<Autodiff<B, C>>, Option<FloatTensor<B>>) {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        let prep = AttentionBackward { scale, precision }
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.primitive, k.primitive, v.primitive);
                let (out, lse) = forward(q.clone(), k.clone(), v.clone(), true);
                let lse = lse.expect("the log-sum-exp was asked for");
                let state = (q, k, v, out.clone(), lse.clone());
                (prep.finish(state, out), Some(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (out, lse) = forward(q.primitive, k.primitive, v.primitive, with_lse);
                (prep.finish(out), lse)
            }
        }
    }

    impl<B: AttentionOps, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
        fn attention_operands(
            device: &Self::Device,
            shape: [usize; 3],
            precision: Precision,
        ) -> Option<DType> {
            B::attention_operands(device, shape, precision)
        }

        fn attention_arithmetic(
            device: &Self::Device,
            shape: [usize; 3],
            precision: Precision,
        ) -> &'static str {
            B::attention_arithmetic(device, shape, precision)
        }

        fn causal_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f32,
            with_lse: bool,
            precision: Precision,
        ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
            let (out, lse) =
                attention_node::<B, C>(q, k, v, scale, precision, with_lse, |q, k, v, lse| {
                    B::causal_attention(q, k, v, scale, lse, precision)
                });
            (out, lse.filter(|_| with_lse).map(Self::from_inner))
        }
    }
}
