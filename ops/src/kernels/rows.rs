//! The decoder's per-row elementwise steps as one op each ([`RowOps`]),
//! forward and backward: RMSNorm, rotary embedding and SwiGLU's gate.
//!
//! Composed of tensor ops, each is several passes over memory and, under
//! autodiff, several saved intermediates; fused, it is one pass that keeps
//! only its inputs for the backward. The default methods are those
//! compositions (the tests compare the CPU kernels of `rows_flex` and the
//! CubeCL kernels of `rows_cube` against them and against float64).
//!
//! - `rms_norm(x, w) = x / sqrt(mean(x^2) + eps) * w` over the last axis,
//!   statistics in f32 (transformers' LlamaRMSNorm).
//! - `rope(x, cos, sin)`: `x: [batch, seq, heads, d]`, `cos, sin: [seq, d]`,
//!   `x * cos + swap_halves(x) * sin` per head, where `swap_halves([a, b]) =
//!   [b, a]` and `sin` carries rotate-half's sign (negative on the first
//!   half). A rotation, so its backward is itself with `-sin`.
//! - `swiglu(gate, up) = silu(gate) * up`.

use super::{float, tensor};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, FloatDType, Shape, Tensor, TensorMetadata};

pub trait RowOps: Backend {
    /// `x: [rows, hidden]`, `weight: [hidden]`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        float(composite::rms_norm::<Self, 2>(
            tensor(x),
            tensor(weight),
            eps,
        ))
    }

    /// `(dx, dweight)` from `x`, `weight` and the output's gradient; with
    /// `residual` (f32 of `x`'s shape, `x` f32 too), `dx + residual`: the
    /// gradient that `x` has from its other consumers (the residual
    /// stream's next add), summed as `dx` is written rather than by a
    /// pass of its own. The sum is the f32 add of the two; a kernel
    /// compiler may contract it with `dx`'s arithmetic, so on a GPU it
    /// can differ from the separate add's in its last bit.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
        residual: Option<FloatTensor<Self>>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) =
            composite::rms_norm_backward::<Self>(tensor(x), tensor(weight), tensor(grad), eps);
        let dx = match residual {
            Some(residual) => Self::float_add(float(dx), residual),
            None => float(dx),
        };
        (dx, float(dw))
    }

    /// `x: [batch, seq, heads, d]`, `cos`, `sin`: `[seq, d]`.
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        float(composite::rope::<Self>(tensor(x), tensor(cos), tensor(sin)))
    }

    /// The inverse rotation of [`RowOps::rope`] (`sin` negated): its
    /// backward, computed as `grad`'s dtype computes it and written in
    /// `dtype` (a plain cast: the one the gradient's consumer would make).
    fn rope_inverse(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        dtype: DType,
    ) -> FloatTensor<Self> {
        let rotated = Self::rope(grad, cos, Self::float_neg(sin));
        if rotated.dtype() == dtype {
            rotated
        } else {
            Self::float_cast(rotated, dtype.into())
        }
    }

    /// [`RowOps::rope`] of the queries `q` and the keys `k` of one
    /// attention (`[batch, seq, heads, d]` each, their head counts may
    /// differ) with the same tables, both written in `dtype`, computed in
    /// f32. A backend that fuses them does both in one pass. A 16-bit
    /// `dtype` is the one attention reads its scores' operands in
    /// ([`super::AttentionOps::attention_operands`]): values past its
    /// finite range become its largest of their sign, as attention's own
    /// cast of its operands clamps them. `grads` is for autodiff: the
    /// dtype the backward writes q's and k's gradients in (the one their
    /// products round them to, [`super::MatmulOps::trained_gradient`]),
    /// or the incoming gradient's where `None`; a backend without a graph
    /// has no use for it.
    fn rope_pair(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        dtype: DType,
        grads: Option<DType>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = grads;
        let rotated = |x| {
            let y = tensor::<Self, 4>(Self::rope(x, cos.clone(), sin.clone()));
            float(composite::saturating_cast(y, dtype))
        };
        (rotated(q), rotated(k))
    }

    /// `silu(gate) * up` of two tensors of one shape: `[batch, seq, width]`
    /// in the model, `[rows, width]` before a product
    /// (`kernels::product_inputs`).
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        float(silu(tensor::<Self, 3>(gate)) * tensor::<Self, 3>(up))
    }

    /// `(dgate, dup)` from the inputs and the output's gradient.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dg, du) = composite::swiglu_backward::<Self>(tensor(gate), tensor(up), tensor(grad));
        (float(dg), float(du))
    }
}

/// RMSNorm of `x: [..., hidden]` (any rank) by `weight: [hidden]`.
pub fn rms_norm<B: RowOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    let hidden = x.dims()[D - 1];
    assert_eq!(
        weight.dims(),
        [hidden],
        "RMSNorm: {:?} weights for rows of {hidden}",
        weight.dims()
    );
    let dims = x.dims();
    let rows = x.reshape([dims[..D - 1].iter().product::<usize>(), hidden]);
    let y: Tensor<B, 2> = tensor(B::rms_norm(float(rows), float(weight), eps));
    y.reshape(dims)
}

/// `x: [..., hidden]` as `[rows, hidden]` (the rows of a residual stream
/// of any rank, as RMSNorm reads them).
pub(super) fn as_rows<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let dims = x.shape().as_slice().to_vec();
    let hidden = dims.last().copied().unwrap_or(1);
    let rows = dims[..dims.len().saturating_sub(1)].iter().product();
    B::float_reshape(x, Shape::new([rows, hidden]))
}

/// Rotary embedding of `x: [batch, seq, heads, d]` with tables `cos`, `sin`
/// `[seq, d]` (see the module docs).
pub fn rope<B: RowOps>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 4> {
    check_rope_tables(x.dims(), &cos, &sin);
    tensor(B::rope(float(x), float(cos), float(sin)))
}

/// Panics unless `cos` and `sin` are `[seq, d]` tables for heads of
/// `x_dims: [batch, seq, heads, d]`, `d` even.
fn check_rope_tables<B: Backend>(x_dims: [usize; 4], cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) {
    let [_, seq, _, d] = x_dims;
    assert!(
        cos.dims() == [seq, d] && sin.dims() == [seq, d],
        "rope: tables {:?} and {:?} for {x_dims:?} (expected [{seq}, {d}])",
        cos.dims(),
        sin.dims(),
    );
    assert!(d % 2 == 0, "rope: head dimension {d} is odd");
}

/// [`rope`] of the queries and keys of one attention, written in `dtype`,
/// their gradients under autodiff in `grads` where given (see
/// [`RowOps::rope_pair`]).
pub fn rope_pair<B: RowOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    dtype: DType,
    grads: Option<DType>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let ([qb, seq, _, d], [kb, k_seq, _, kd]) = (q.dims(), k.dims());
    assert!(
        qb == kb && seq == k_seq && d == kd,
        "rope: keys {:?} do not fit queries {:?}",
        k.dims(),
        q.dims()
    );
    check_rope_tables(q.dims(), &cos, &sin);
    let (q, k) = B::rope_pair(float(q), float(k), float(cos), float(sin), dtype, grads);
    (tensor(q), tensor(k))
}

/// `silu(gate) * up` of two tensors of one shape.
pub fn swiglu<B: RowOps>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    assert_eq!(
        gate.dims(),
        up.dims(),
        "SwiGLU: gate {:?} and up {:?} differ in shape",
        gate.dims(),
        up.dims()
    );
    tensor(B::swiglu(float(gate), float(up)))
}

/// The compositions of Burn's tensor ops: the default for backends without
/// kernels, and the tests' oracle for the kernels.
pub mod composite {
    use super::*;

    /// `1 / sqrt(mean(x^2) + eps)` per row, f32: `[..., 1]`.
    fn inv_rms<B: Backend, const D: usize>(x: &Tensor<B, D>, eps: f32) -> Tensor<B, D> {
        let x = x.clone().cast(FloatDType::F32);
        (x.square().mean_dim(D - 1) + eps).sqrt().recip()
    }

    pub fn rms_norm<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        weight: Tensor<B, 1>,
        eps: f32,
    ) -> Tensor<B, D> {
        let r = inv_rms(&x, eps);
        x * r * weight.unsqueeze::<D>()
    }

    /// `x, grad: [rows, hidden]`.
    pub fn rms_norm_backward<B: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 1>,
        grad: Tensor<B, 2>,
        eps: f32,
    ) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let hidden = x.dims()[1];
        let r = inv_rms(&x, eps);
        let dw = (grad.clone() * x.clone() * r.clone())
            .sum_dim(0)
            .squeeze_dim::<1>(0);
        let gw = grad * weight.unsqueeze::<2>();
        // d/dx of x r: r gw - x r^3 / n * sum(x gw).
        let dot = (x.clone() * gw.clone()).sum_dim(1);
        let dx = gw * r.clone() - x * (r.powi_scalar(3) * dot / hidden as f32);
        (dx, dw)
    }

    pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 4> {
        let [_, seq, _, d] = x.dims();
        let half = d / 2;
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        let table = |t: Tensor<B, 2>| t.reshape([1, seq, 1, d]);
        x * table(cos) + swapped * table(sin)
    }

    /// `x` cast to `dtype`, values past a 16-bit dtype's finite range
    /// first clamped to it (see [`RowOps::rope_pair`]).
    pub fn saturating_cast<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        dtype: DType,
    ) -> Tensor<B, D> {
        if x.dtype() == dtype {
            return x;
        }
        let largest = match dtype {
            DType::F16 => half::f16::MAX.to_f32(),
            DType::BF16 => half::bf16::MAX.to_f32(),
            _ => f32::MAX,
        };
        x.clamp(-largest, largest).cast(dtype)
    }

    pub fn swiglu_backward<B: Backend>(
        gate: Tensor<B, 3>,
        up: Tensor<B, 3>,
        grad: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let sig = sigmoid(gate.clone());
        let silu = gate.clone() * sig.clone();
        // silu'(g) = sig (1 + g (1 - sig))
        let dsilu = sig.clone() * (gate * (sig.neg() + 1.0) + 1.0);
        (grad.clone() * up * dsilu, grad * silu)
    }
}

/// Under autodiff each op runs on the inner backend and keeps its inputs
/// (and nothing else) for the backward.
pub(super) mod on_autodiff {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::tensor::backend::AutodiffBackend;

    #[derive(Debug)]
    struct RmsNormBackward {
        eps: f32,
    }

    impl<B: RowOps> Backward<B, 2> for RmsNormBackward {
        /// `x` (`[..., hidden]`: a residual stream of any rank, so that
        /// the stream itself is the node's parent) and the weight.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_x, node_w] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x, w) = ops.state;
            let shape = x.shape();
            // The gradient `x` already has (a residual stream's, from the
            // next add, whose node is deeper and so went first): summed
            // by the norm's backward rather than by `register`'s add.
            // `Gradients` looks a node's gradient up by a tensor of the
            // node, so one is made for the lookup.
            let residual = node_x.as_ref().and_then(|node| {
                let mut key = <Autodiff<B> as AutodiffBackend>::from_inner(x.clone());
                key.node = node.clone();
                take_residual::<B>(grads, &key)
            });
            let (dx, dw) = B::rms_norm_backward(
                as_rows::<B>(x),
                w,
                grad,
                self.eps,
                residual.map(as_rows::<B>),
            );
            if let Some(node) = node_x {
                grads.register::<B>(node.id, B::float_reshape(dx, shape));
            }
            if let Some(node) = node_w {
                grads.register::<B>(node.id, dw);
            }
        }
    }

    /// The gradient registered for `key`'s node, taken out of `grads` for
    /// [`RowOps::rms_norm_backward`] to sum, where it is f32 of `key`'s
    /// shape (and `key` f32); otherwise left for `register` to add to.
    fn take_residual<B: Backend>(
        grads: &mut Gradients,
        key: &FloatTensor<Autodiff<B>>,
    ) -> Option<FloatTensor<B>> {
        let residual = grads.get::<B>(key)?;
        let fits = key.primitive.dtype() == DType::F32
            && residual.dtype() == DType::F32
            && residual.shape() == key.primitive.shape();
        if fits { grads.remove::<B>(key) } else { None }
    }

    /// A residual add `x + delta` as a node of the graph, its sum computed
    /// on the inner backend by the pass that normalizes it
    /// ([`super::super::ProductInputOps::sum_rms_norm_products`]): its
    /// backward sends its gradient to both, as Burn's add does for
    /// operands of one shape, without a launch.
    pub(in crate::kernels) fn residual_sum_node<B: Backend, C: CheckpointStrategy>(
        x: &FloatTensor<Autodiff<B, C>>,
        delta: &FloatTensor<Autodiff<B, C>>,
        sum: FloatTensor<B>,
    ) -> FloatTensor<Autodiff<B, C>> {
        ResidualSumBackward
            .prepare::<C>([x.node.clone(), delta.node.clone()])
            .compute_bound()
            .stateless(sum)
    }

    #[derive(Debug)]
    struct ResidualSumBackward;

    impl<B: Backend> Backward<B, 2> for ResidualSumBackward {
        type State = ();

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let [node_x, node_delta] = ops.parents;
            if let Some(node) = node_x {
                grads.register::<B>(node.id, grad.clone());
            }
            if let Some(node) = node_delta {
                grads.register::<B>(node.id, grad);
            }
        }
    }

    #[derive(Debug)]
    struct RopeBackward {
        /// The dtype the input's gradient is written in; the incoming
        /// gradient's where `None` (see [`RowOps::rope_pair`]).
        grads: Option<DType>,
    }

    impl<B: RowOps> Backward<B, 1> for RopeBackward {
        /// The tables `cos` and `sin`.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (cos, sin) = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                let dtype = self.grads.unwrap_or(grad.dtype());
                B::rope_inverse(grad, cos, sin, dtype)
            });
        }
    }

    /// The rotated `y` of `x` as a node of the graph (the rotation having
    /// run on the inner backend): its backward rotates the gradient back,
    /// in `grads` or the gradient's dtype whatever `y`'s (f32 where `y` is
    /// a 16-bit attention operand, see [`super::super::AttentionOps`]).
    fn rope_node<B: RowOps, C: CheckpointStrategy>(
        x: &FloatTensor<Autodiff<B, C>>,
        y: FloatTensor<B>,
        cos: &FloatTensor<B>,
        sin: &FloatTensor<B>,
        grads: Option<DType>,
    ) -> FloatTensor<Autodiff<B, C>> {
        match (RopeBackward { grads })
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((cos.clone(), sin.clone()), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    #[derive(Debug)]
    struct SwigluBackward;

    impl<B: RowOps> Backward<B, 2> for SwigluBackward {
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_gate, node_up] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (gate, up) = ops.state;
            let (dg, du) = B::swiglu_backward(gate, up, grad);
            if let Some(node) = node_gate {
                grads.register::<B>(node.id, dg);
            }
            if let Some(node) = node_up {
                grads.register::<B>(node.id, du);
            }
        }
    }

    /// RMSNorm as a node of the graph, its result `forward(x, weight)` on
    /// the inner backend: the f32 norm, or the norm written as the products
    /// after it read it (`kernels::product_inputs`). Either way the node's
    /// gradient is the f32 norm's, and its backward reads `x` and the
    /// weight. `x` may be `[..., hidden]` of any rank (a residual stream,
    /// the node's parent as it is) while `forward` normalizes its rows:
    /// the gradient comes back `[rows, hidden]`, `dx` goes out in `x`'s
    /// shape.
    pub(in crate::kernels) fn rms_norm_node<B: RowOps, C: CheckpointStrategy>(
        x: FloatTensor<Autodiff<B, C>>,
        weight: FloatTensor<Autodiff<B, C>>,
        eps: f32,
        forward: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [x.node.clone(), weight.node.clone()];
        let prep = RmsNormBackward { eps }
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.primitive, weight.primitive);
                let y = forward(x.clone(), w.clone());
                prep.finish((x, w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, weight.primitive)),
        }
    }

    /// SwiGLU as a node of the graph, as [`rms_norm_node`] is RMSNorm's.
    pub(in crate::kernels) fn swiglu_node<B: RowOps, C: CheckpointStrategy>(
        gate: FloatTensor<Autodiff<B, C>>,
        up: FloatTensor<Autodiff<B, C>>,
        forward: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    ) -> FloatTensor<Autodiff<B, C>> {
        let nodes = [gate.node.clone(), up.node.clone()];
        match SwigluBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (g, u) = (gate.primitive, up.primitive);
                let y = forward(g.clone(), u.clone());
                prep.finish((g, u), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(gate.primitive, up.primitive)),
        }
    }

    impl<B: RowOps, C: CheckpointStrategy> RowOps for Autodiff<B, C> {
        fn rms_norm(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            eps: f32,
        ) -> FloatTensor<Self> {
            rms_norm_node::<B, C>(x, weight, eps, |x, w| B::rms_norm(x, w, eps))
        }

        fn rope(
            x: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let (cos, sin) = (Self::inner(cos), Self::inner(sin));
            let y = B::rope(x.primitive.clone(), cos.clone(), sin.clone());
            rope_node::<B, C>(&x, y, &cos, &sin, None)
        }

        fn rope_pair(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            cos: FloatTensor<Self>,
            sin: FloatTensor<Self>,
            dtype: DType,
            grads: Option<DType>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            // One pass forward; two nodes, each rotating its own gradient
            // back (a node of the graph has one output).
            let (cos, sin) = (Self::inner(cos), Self::inner(sin));
            let (yq, yk) = B::rope_pair(
                q.primitive.clone(),
                k.primitive.clone(),
                cos.clone(),
                sin.clone(),
                dtype,
                None,
            );
            (
                rope_node::<B, C>(&q, yq, &cos, &sin, grads),
                rope_node::<B, C>(&k, yk, &cos, &sin, grads),
            )
        }

        fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            swiglu_node::<B, C>(gate, up, B::swiglu)
        }
    }
}
