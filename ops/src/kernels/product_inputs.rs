//! Row ops that write their result as the products after them read it
//! ([`ProductInputOps`]): RMSNorm before a layer's q, k and v projections
//! (and before gate and up), also of a residual add it sums as it reads
//! it, SwiGLU before down, and attention before `o_proj`.
//!
//! Where the products round their input (CUDA under `precision: bf16`,
//! `matmul_cube`), the row op's f32 result is written, read back once to
//! be rounded (a training step) or split into its two bf16 parts
//! (inference), and never read again. Here the row op writes the rounded
//! operand, or the parts, itself: per element 2 bytes written (4 for the
//! parts) instead of 4 written, 4 read and 2 (or 4) written, and one launch
//! fewer per row op. The values are the composition's bit for bit (the
//! same f32 arithmetic, then the same rounding); the default methods are
//! that composition, and what every backend without such products runs.
//!
//! Under autodiff the row op stays a node of its own, with the f32 op's
//! backward from its inputs; its result is the rounded operand, which the
//! products' nodes read as it is and send an f32 gradient. A residual add
//! the norm sums is a node of its own too, in the stream's shape, made by
//! the norm's pass; the norm's backward sums the stream's gradient into
//! its own (`RowOps::rms_norm_backward`'s `residual`).

use super::attention::{AttentionOps, checked_scale};
use super::matmul::{
    Activations, MatmulOps, Precision, Results, WeightLayout, assert_fits, shared_products_as,
};
use super::rows::{RowOps, as_rows};
use super::{float, tensor};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorMetadata};

pub trait ProductInputOps: RowOps + MatmulOps + AttentionOps {
    /// `rms_norm(x, norm_weight)` (`x: [rows, hidden]`) times each of
    /// `weights` (all stored as `layout`), in `precision`: what
    /// [`super::matmul::linear_matmul_shared_as`] gives of [`RowOps::rms_norm`]'s result,
    /// the activations carried as `activations` says in inference (under
    /// autodiff, rounded once), the results written as `results` says.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_products(
        x: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f32,
        weights: Vec<FloatTensor<Self>>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
        results: Results,
    ) -> Vec<FloatTensor<Self>> {
        composed_rms_norm_products::<Self>(
            x,
            norm_weight,
            eps,
            weights,
            layout,
            precision,
            activations,
            results,
        )
    }

    /// `x + delta` (both `[..., hidden]`: a residual add, in the stream's
    /// shape) and [`ProductInputOps::rms_norm_products`] of that sum's
    /// rows: `(sum, products)`, the sum in `x`'s shape. Where the norm is
    /// a kernel of its own, it adds the two as it reads them and writes
    /// the sum in the same pass, which a pass of its own would write and
    /// the norm read back.
    #[allow(clippy::too_many_arguments)]
    fn sum_rms_norm_products(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f32,
        weights: Vec<FloatTensor<Self>>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
        results: Results,
    ) -> (FloatTensor<Self>, Vec<FloatTensor<Self>>) {
        composed_sum_rms_norm_products::<Self>(
            x,
            delta,
            norm_weight,
            eps,
            weights,
            layout,
            precision,
            activations,
            results,
        )
    }

    /// `swiglu(gate, up)` (both `[rows, width]`) times the weight (stored
    /// as `layout`), in `precision`: what [`super::matmul::linear_matmul_as`] gives of
    /// [`RowOps::swiglu`]'s result, as
    /// [`ProductInputOps::rms_norm_products`] is RMSNorm's.
    fn swiglu_product(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
    ) -> FloatTensor<Self> {
        composed_swiglu_product::<Self>(gate, up, weight, layout, precision, activations)
    }

    /// For a training step's products (the inner backend of autodiff):
    /// RMSNorm's result as [`MatmulOps::trained_operand`] leaves it.
    fn rms_norm_trained(
        x: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f32,
        precision: Precision,
    ) -> FloatTensor<Self> {
        Self::trained_operand(Self::rms_norm(x, norm_weight, eps), precision)
    }

    /// For a training step: `x + delta` (both `[rows, hidden]`, f32) and
    /// [`ProductInputOps::rms_norm_trained`] of the sum, `(sum, normed)`,
    /// the sum taken as the norm reads it where the norm is a kernel of
    /// its own.
    fn sum_rms_norm_trained(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        norm_weight: FloatTensor<Self>,
        eps: f32,
        precision: Precision,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_sum_rms_norm_trained::<Self>(x, delta, norm_weight, eps, precision)
    }

    /// SwiGLU's result as [`MatmulOps::trained_operand`] leaves it, as
    /// [`ProductInputOps::rms_norm_trained`] is RMSNorm's.
    fn swiglu_trained(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        precision: Precision,
    ) -> FloatTensor<Self> {
        Self::trained_operand(Self::swiglu(gate, up), precision)
    }

    /// Causal attention ([`AttentionOps::causal_attention`], in
    /// `attention`) and its output's rows, `[batch * seq, heads * d]`, times
    /// the weight (stored as `layout`), in `precision`: what
    /// [`super::matmul::linear_matmul_as`] gives of the attention's output
    /// (`o_proj`), as [`ProductInputOps::rms_norm_products`] is RMSNorm's.
    #[allow(clippy::too_many_arguments)]
    fn attention_product(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        attention: Precision,
        weight: FloatTensor<Self>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
    ) -> FloatTensor<Self> {
        composed_attention_product::<Self>(
            q,
            k,
            v,
            scale,
            attention,
            weight,
            layout,
            precision,
            activations,
        )
    }

    /// The attention's output (`[batch, seq, heads, d]`, in `attention`)
    /// as [`MatmulOps::trained_operand`] leaves it for products in
    /// `precision`, and its log-sum-exp when `with_lse`, as
    /// [`ProductInputOps::rms_norm_trained`] is RMSNorm's.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_trained(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        with_lse: bool,
        attention: Precision,
        precision: Precision,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (out, lse) = Self::causal_attention(q, k, v, scale, with_lse, attention);
        (Self::trained_operand(out, precision), lse)
    }
}

/// [`ProductInputOps::attention_product`] as its two ops: the attention,
/// then the product of its rows with the activations carried as
/// `activations` says (rounded once: the output as
/// [`ProductInputOps::causal_attention_trained`] writes it, which the
/// product reads without rounding it again).
#[allow(clippy::too_many_arguments)]
pub(super) fn composed_attention_product<B: ProductInputOps>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f32,
    attention: Precision,
    weight: FloatTensor<B>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
) -> FloatTensor<B> {
    let [batch, seq, heads, d]: [usize; 4] = q.shape().dims();
    let (context, _) = match activations {
        Activations::Rounded => {
            B::causal_attention_trained(q, k, v, scale, false, attention, precision)
        }
        Activations::TwoParts => B::causal_attention(q, k, v, scale, false, attention),
    };
    let rows = B::float_reshape(context, [batch * seq, heads * d].into());
    let mut ys = shared_products_as::<B>(
        rows,
        vec![weight],
        layout,
        precision,
        activations,
        Results::F32,
    );
    ys.pop().expect("one product")
}

/// [`ProductInputOps::rms_norm_products`] as its two ops.
#[allow(clippy::too_many_arguments)]
pub(super) fn composed_rms_norm_products<B: RowOps + MatmulOps>(
    x: FloatTensor<B>,
    norm_weight: FloatTensor<B>,
    eps: f32,
    weights: Vec<FloatTensor<B>>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
    results: Results,
) -> Vec<FloatTensor<B>> {
    let normed = B::rms_norm(x, norm_weight, eps);
    shared_products_as::<B>(normed, weights, layout, precision, activations, results)
}

/// [`ProductInputOps::sum_rms_norm_products`] as the add, then
/// [`ProductInputOps::rms_norm_products`] of the sum.
#[allow(clippy::too_many_arguments)]
pub(super) fn composed_sum_rms_norm_products<B: ProductInputOps>(
    x: FloatTensor<B>,
    delta: FloatTensor<B>,
    norm_weight: FloatTensor<B>,
    eps: f32,
    weights: Vec<FloatTensor<B>>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
    results: Results,
) -> (FloatTensor<B>, Vec<FloatTensor<B>>) {
    let sum = B::float_add(x, delta);
    let products = B::rms_norm_products(
        as_rows::<B>(sum.clone()),
        norm_weight,
        eps,
        weights,
        layout,
        precision,
        activations,
        results,
    );
    (sum, products)
}

/// [`ProductInputOps::sum_rms_norm_trained`] as the add, then
/// [`ProductInputOps::rms_norm_trained`] of the sum.
pub(super) fn composed_sum_rms_norm_trained<B: ProductInputOps>(
    x: FloatTensor<B>,
    delta: FloatTensor<B>,
    norm_weight: FloatTensor<B>,
    eps: f32,
    precision: Precision,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let sum = B::float_add(x, delta);
    let normed = B::rms_norm_trained(sum.clone(), norm_weight, eps, precision);
    (sum, normed)
}

/// [`ProductInputOps::swiglu_product`] as its two ops.
pub(super) fn composed_swiglu_product<B: RowOps + MatmulOps>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    weight: FloatTensor<B>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
) -> FloatTensor<B> {
    let act = B::swiglu(gate, up);
    let mut ys = shared_products_as::<B>(
        act,
        vec![weight],
        layout,
        precision,
        activations,
        Results::F32,
    );
    ys.pop().expect("one product")
}

/// `rms_norm(x, norm_weight)` (`x: [rows, hidden]`) times each of
/// `weights` (all stored as `layout`), in `precision` with the activations
/// carried as `activations` says, the norm written as the products read it
/// ([`ProductInputOps::rms_norm_products`]), the results as `results` says.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_products<B: ProductInputOps, const N: usize>(
    x: Tensor<B, 2>,
    norm_weight: Tensor<B, 1>,
    eps: f32,
    weights: [Tensor<B, 2>; N],
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
    results: Results,
) -> [Tensor<B, 2>; N] {
    assert_norm_products_fit(x.dims()[1], &norm_weight, &weights, layout);
    let products = B::rms_norm_products(
        float(x),
        float(norm_weight),
        eps,
        weights.map(float).into(),
        layout,
        precision,
        activations,
        results,
    );
    products_array(products)
}

/// Panics unless a norm of rows of `hidden` by `norm_weight`, and the
/// products of its result with `weights`, fit those rows.
fn assert_norm_products_fit<B: ProductInputOps, const N: usize>(
    hidden: usize,
    norm_weight: &Tensor<B, 1>,
    weights: &[Tensor<B, 2>; N],
    layout: WeightLayout,
) {
    assert_eq!(
        norm_weight.dims(),
        [hidden],
        "RMSNorm before products: {:?} norm weights for rows of {hidden}",
        norm_weight.dims()
    );
    for w in weights {
        assert_fits(hidden, w, layout);
    }
}

/// The `N` products an op made, as tensors.
fn products_array<B: ProductInputOps, const N: usize>(
    products: Vec<FloatTensor<B>>,
) -> [Tensor<B, 2>; N] {
    let products: Vec<Tensor<B, 2>> = products.into_iter().map(tensor).collect();
    products
        .try_into()
        .unwrap_or_else(|p: Vec<_>| panic!("{N} products asked for, {} made", p.len()))
}

/// `x + delta` (both `[..., hidden]`: a residual add) and
/// [`rms_norm_products`] of that sum's rows, the sum written by the pass
/// that normalizes it ([`ProductInputOps::sum_rms_norm_products`]):
/// `(sum, products)`, the sum in `x`'s shape, the products `[rows, out]`
/// written as `results` says.
#[allow(clippy::too_many_arguments)]
pub fn sum_rms_norm_products<B: ProductInputOps, const D: usize, const N: usize>(
    x: Tensor<B, D>,
    delta: Tensor<B, D>,
    norm_weight: Tensor<B, 1>,
    eps: f32,
    weights: [Tensor<B, 2>; N],
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
    results: Results,
) -> (Tensor<B, D>, [Tensor<B, 2>; N]) {
    assert_eq!(
        x.dims(),
        delta.dims(),
        "RMSNorm of a sum before products: x and delta differ in shape"
    );
    assert_norm_products_fit(x.dims()[D - 1], &norm_weight, &weights, layout);
    let (sum, products) = B::sum_rms_norm_products(
        float(x),
        float(delta),
        float(norm_weight),
        eps,
        weights.map(float).into(),
        layout,
        precision,
        activations,
        results,
    );
    (tensor(sum), products_array(products))
}

/// `swiglu(gate, up)` (both `[rows, width]`) times the weight (stored as
/// `layout`), in `precision` with the activations carried as `activations`
/// says, SwiGLU written as the product reads it
/// ([`ProductInputOps::swiglu_product`]).
pub fn swiglu_product<B: ProductInputOps>(
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
) -> Tensor<B, 2> {
    assert_eq!(
        gate.dims(),
        up.dims(),
        "SwiGLU before a product: gate {:?} and up {:?} differ in shape",
        gate.dims(),
        up.dims()
    );
    assert_fits(gate.dims()[1], &weight, layout);
    tensor(B::swiglu_product(
        float(gate),
        float(up),
        float(weight),
        layout,
        precision,
        activations,
    ))
}

/// Causal attention of `q: [batch, seq, heads, d]`, `k, v: [batch, keys,
/// kv_heads, d]` (see [`super::attention`]) in `attention`, and its
/// output's rows times the weight (stored as `layout`), in `precision`
/// with the activations carried as `activations` says, the attention's
/// output written as the product reads it
/// ([`ProductInputOps::attention_product`]): `[batch * seq, out]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_product<B: ProductInputOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    attention: Precision,
    weight: Tensor<B, 2>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
) -> Tensor<B, 2> {
    let scale = checked_scale(&q, &k, &v);
    let [_, _, heads, d] = q.dims();
    assert_fits(heads * d, &weight, layout);
    tensor(B::attention_product(
        float(q),
        float(k),
        float(v),
        scale,
        attention,
        float(weight),
        layout,
        precision,
        activations,
    ))
}

impl ProductInputOps for burn::backend::Flex {}

/// Under autodiff, where the products round their operands, the row op is
/// a node whose result is already rounded, and each product a node that
/// reads it as it is, sending back an f32 gradient (a training step rounds
/// the activations once, whatever [`Activations`] says); elsewhere the two
/// ops as they always were.
mod on_autodiff {
    use super::*;
    use crate::kernels::attention::on_autodiff::attention_node;
    use crate::kernels::matmul::on_autodiff::product_node;
    use crate::kernels::rows::on_autodiff::{residual_sum_node, rms_norm_node, swiglu_node};
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::tensor::DType;

    /// Each of `weights` times `normed`, a norm node whose result is the
    /// products' rounded operand, as a node that reads it as it is and
    /// sends back a gradient in `dtype` (the f32 norm's).
    fn rounded_products<B: ProductInputOps, C: CheckpointStrategy>(
        normed: &FloatTensor<Autodiff<B, C>>,
        dtype: DType,
        weights: Vec<FloatTensor<Autodiff<B, C>>>,
        layout: WeightLayout,
        precision: Precision,
        results: Results,
    ) -> Vec<FloatTensor<Autodiff<B, C>>> {
        weights
            .into_iter()
            .map(|w| {
                product_node::<B, C>(
                    normed,
                    normed.primitive.clone(),
                    dtype,
                    w,
                    layout,
                    precision,
                    results,
                )
            })
            .collect()
    }

    /// Whether products in `precision` round their operands on `x`'s device.
    fn rounds<B: MatmulOps>(x: &FloatTensor<B>, precision: Precision) -> bool {
        B::product_precision(&B::float_device(x), precision) != Precision::F32
    }

    impl<B: ProductInputOps, C: CheckpointStrategy> ProductInputOps for Autodiff<B, C> {
        fn rms_norm_products(
            x: FloatTensor<Self>,
            norm_weight: FloatTensor<Self>,
            eps: f32,
            weights: Vec<FloatTensor<Self>>,
            layout: WeightLayout,
            precision: Precision,
            activations: Activations,
            results: Results,
        ) -> Vec<FloatTensor<Self>> {
            if !rounds::<B>(&x.primitive, precision) {
                return composed_rms_norm_products::<Self>(
                    x,
                    norm_weight,
                    eps,
                    weights,
                    layout,
                    precision,
                    activations,
                    results,
                );
            }
            // The f32 norm's dtype: its gradient's and the products'.
            let dtype = x.primitive.dtype();
            let normed = rms_norm_node::<B, C>(x, norm_weight, eps, |x, w| {
                B::rms_norm_trained(x, w, eps, precision)
            });
            rounded_products::<B, C>(&normed, dtype, weights, layout, precision, results)
        }

        fn sum_rms_norm_products(
            x: FloatTensor<Self>,
            delta: FloatTensor<Self>,
            norm_weight: FloatTensor<Self>,
            eps: f32,
            weights: Vec<FloatTensor<Self>>,
            layout: WeightLayout,
            precision: Precision,
            activations: Activations,
            results: Results,
        ) -> (FloatTensor<Self>, Vec<FloatTensor<Self>>) {
            if x.primitive.dtype() != DType::F32 || delta.primitive.dtype() != DType::F32 {
                return composed_sum_rms_norm_products::<Self>(
                    x,
                    delta,
                    norm_weight,
                    eps,
                    weights,
                    layout,
                    precision,
                    activations,
                    results,
                );
            }
            let shape = x.primitive.shape();
            let (sum, normed) = B::sum_rms_norm_trained(
                as_rows::<B>(x.primitive.clone()),
                as_rows::<B>(delta.primitive.clone()),
                norm_weight.primitive.clone(),
                eps,
                precision,
            );
            // The sum, in the stream's shape, is the norm's parent: the
            // norm's backward then finds there the gradient of the next
            // residual add, a deeper node whose backward ran first, and
            // sums it as it writes its own (`rows::on_autodiff`).
            let sum = residual_sum_node::<B, C>(&x, &delta, B::float_reshape(sum, shape));
            let normed = rms_norm_node::<B, C>(sum.clone(), norm_weight, eps, |_, _| normed);
            let products = if rounds::<B>(&x.primitive, precision) {
                rounded_products::<B, C>(&normed, DType::F32, weights, layout, precision, results)
            } else {
                shared_products_as::<Self>(normed, weights, layout, precision, activations, results)
            };
            (sum, products)
        }

        fn swiglu_product(
            gate: FloatTensor<Self>,
            up: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            layout: WeightLayout,
            precision: Precision,
            activations: Activations,
        ) -> FloatTensor<Self> {
            if !rounds::<B>(&gate.primitive, precision) {
                return composed_swiglu_product::<Self>(
                    gate,
                    up,
                    weight,
                    layout,
                    precision,
                    activations,
                );
            }
            // The f32 SwiGLU's dtype, its gradient's and the product's:
            // gate and up may be products' rounded results (`Results`).
            let dtype = DType::F32;
            let act = swiglu_node::<B, C>(gate, up, |g, u| B::swiglu_trained(g, u, precision));
            let rounded = act.primitive.clone();
            product_node::<B, C>(
                &act,
                rounded,
                dtype,
                weight,
                layout,
                precision,
                Results::F32,
            )
        }

        fn attention_product(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f32,
            attention: Precision,
            weight: FloatTensor<Self>,
            layout: WeightLayout,
            precision: Precision,
            activations: Activations,
        ) -> FloatTensor<Self> {
            // The node below sends back an f32 gradient: values in another
            // dtype take the composition, whose gradients follow theirs.
            if !rounds::<B>(&q.primitive, precision) || v.primitive.dtype() != DType::F32 {
                return composed_attention_product::<Self>(
                    q,
                    k,
                    v,
                    scale,
                    attention,
                    weight,
                    layout,
                    precision,
                    activations,
                );
            }
            // The attention's node holds its output rounded, as the
            // product reads it; the product sends back an f32 gradient (the
            // dtype of the attention's f32 arithmetic), and the attention's
            // backward reads that rounded output for its row sums.
            let [batch, seq, heads, d]: [usize; 4] = q.primitive.shape().dims();
            let (context, _) =
                attention_node::<B, C>(q, k, v, scale, attention, false, |q, k, v, lse| {
                    B::causal_attention_trained(q, k, v, scale, lse, attention, precision)
                });
            let rows = B::float_reshape(context.primitive.clone(), [batch * seq, heads * d].into());
            product_node::<B, C>(
                &context,
                rows,
                DType::F32,
                weight,
                layout,
                precision,
                Results::F32,
            )
        }
    }
}
