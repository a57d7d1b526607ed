//! [`ProductInputOps`] for every `CubeBackend<R, ..>`: where the products
//! round their operands (`matmul_cube`'s `reduced`: bf16 on CUDA, f16 as
//! its test stand-in), RMSNorm and SwiGLU write their result in that dtype
//! (`rows_cube`'s `rms_norm_as`, `swiglu_as`): rounded once for a training
//! step's products and for inference's with [`Activations::Rounded`], or as
//! the two parts `[hi | lo]` the inference product reads by default
//! (`matmul_parts_cube::parts_product`). Elsewhere, the two ops. RMSNorm
//! of a residual add sums it as it reads it and writes the sum, in f32 as
//! the add would (`rows_cube`'s `sum_rms_norm_as`), whatever the products'
//! arithmetic. Attention writes its output rounded where the products
//! round it once (`attention_cube`'s `causal_attention_as`).

use super::attention_cube::causal_attention_as;
use super::cube_common::to_dtype;
use super::matmul::{Activations, Precision, Results, WeightLayout, shared_products_as};
use super::matmul_cube::{reduced, rounded_product};
use super::matmul_parts_cube::parts_product;
use super::product_inputs::{
    ProductInputOps, composed_rms_norm_products, composed_sum_rms_norm_products,
    composed_sum_rms_norm_trained, composed_swiglu_product,
};
use super::rows::{RowOps, as_rows};
use super::rows_cube::{rms_norm_as, sum_rms_norm_as, swiglu_as};
use burn::tensor::DType;
use burn::tensor::TensorMetadata;
use burn::tensor::ops::FloatTensorOps;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

impl<R, F, I, BT> ProductInputOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn rms_norm_products(
        x: CubeTensor<R>,
        norm_weight: CubeTensor<R>,
        eps: f32,
        weights: Vec<CubeTensor<R>>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
        results: Results,
    ) -> Vec<CubeTensor<R>> {
        let Some(reduced) = reduced::<Self>(&x.device, precision) else {
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
        };
        let dtype = x.dtype;
        let parts = activations == Activations::TwoParts;
        let operand = rms_norm_as(x, norm_weight, eps, reduced, parts);
        let out = results_dtype(reduced, parts, results, dtype);
        operand_products(operand, weights, layout, reduced, parts, out)
    }

    fn sum_rms_norm_products(
        x: CubeTensor<R>,
        delta: CubeTensor<R>,
        norm_weight: CubeTensor<R>,
        eps: f32,
        weights: Vec<CubeTensor<R>>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
        results: Results,
    ) -> (CubeTensor<R>, Vec<CubeTensor<R>>) {
        if x.dtype != DType::F32 || delta.dtype != DType::F32 {
            // The composition adds in the inputs' dtype; the kernel in f32.
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
        // The stream's rows, and the sum back in its shape.
        let shape = x.shape();
        let (x, delta) = (as_rows::<Self>(x), as_rows::<Self>(delta));
        let Some(reduced) = reduced::<Self>(&x.device, precision) else {
            let (sum, normed) = sum_rms_norm_as(x, delta, norm_weight, eps, DType::F32, false);
            let products = shared_products_as::<Self>(
                normed,
                weights,
                layout,
                precision,
                activations,
                results,
            );
            return (Self::float_reshape(sum, shape), products);
        };
        let parts = activations == Activations::TwoParts;
        let (sum, operand) = sum_rms_norm_as(x, delta, norm_weight, eps, reduced, parts);
        let out = results_dtype(reduced, parts, results, DType::F32);
        let products = operand_products(operand, weights, layout, reduced, parts, out);
        (Self::float_reshape(sum, shape), products)
    }

    fn sum_rms_norm_trained(
        x: CubeTensor<R>,
        delta: CubeTensor<R>,
        norm_weight: CubeTensor<R>,
        eps: f32,
        precision: Precision,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        if x.dtype != DType::F32 || delta.dtype != DType::F32 {
            // The composition adds in the inputs' dtype; the kernel in f32.
            return composed_sum_rms_norm_trained::<Self>(x, delta, norm_weight, eps, precision);
        }
        let dtype = reduced::<Self>(&x.device, precision).unwrap_or(DType::F32);
        sum_rms_norm_as(x, delta, norm_weight, eps, dtype, false)
    }

    fn swiglu_product(
        gate: CubeTensor<R>,
        up: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
        activations: Activations,
    ) -> CubeTensor<R> {
        let Some(reduced) = reduced::<Self>(&gate.device, precision) else {
            return composed_swiglu_product::<Self>(
                gate,
                up,
                weight,
                layout,
                precision,
                activations,
            );
        };
        let parts = activations == Activations::TwoParts;
        let operand = swiglu_as(gate, up, reduced, parts);
        // In f32, as a residual add reads it: gate and up may be products'
        // rounded results (`Results::Rounded`).
        product(operand, weight, layout, reduced, parts, DType::F32)
    }

    fn rms_norm_trained(
        x: CubeTensor<R>,
        norm_weight: CubeTensor<R>,
        eps: f32,
        precision: Precision,
    ) -> CubeTensor<R> {
        match reduced::<Self>(&x.device, precision) {
            Some(reduced) => rms_norm_as(x, norm_weight, eps, reduced, false),
            None => Self::rms_norm(x, norm_weight, eps),
        }
    }

    fn swiglu_trained(
        gate: CubeTensor<R>,
        up: CubeTensor<R>,
        precision: Precision,
    ) -> CubeTensor<R> {
        match reduced::<Self>(&gate.device, precision) {
            Some(reduced) => swiglu_as(gate, up, reduced, false),
            None => Self::swiglu(gate, up),
        }
    }

    fn causal_attention_trained(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        scale: f32,
        with_lse: bool,
        attention: Precision,
        precision: Precision,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
        // Written rounded by the kernel, as the products read it; else in
        // v's dtype, as `causal_attention` writes it.
        let out = reduced::<Self>(&q.device, precision).unwrap_or(v.dtype);
        causal_attention_as(q, k, v, scale, with_lse, attention, out)
    }
}

/// The dtype products of an operand rounded to `reduced` write their
/// results in, as `results` says, for inputs in `dtype`: rounded only
/// where the operand was rounded once (not `parts`).
fn results_dtype(reduced: DType, parts: bool, results: Results, dtype: DType) -> DType {
    match results {
        Results::Rounded if !parts => reduced,
        _ => dtype,
    }
}

/// The products of one operand a row op wrote in `reduced` with each of
/// `weights`, in `out`.
fn operand_products<R: CubeRuntime>(
    operand: CubeTensor<R>,
    weights: Vec<CubeTensor<R>>,
    layout: WeightLayout,
    reduced: DType,
    parts: bool,
    out: DType,
) -> Vec<CubeTensor<R>> {
    weights
        .into_iter()
        .map(|w| product(operand.clone(), w, layout, reduced, parts, out))
        .collect()
}

/// The product of an operand a row op wrote in `reduced`, in `out`: of
/// its two parts (`parts`), or rounded once (written in `out` by the
/// product itself, so a rounded result costs no pass of its own).
fn product<R: CubeRuntime>(
    operand: CubeTensor<R>,
    weight: CubeTensor<R>,
    layout: WeightLayout,
    reduced: DType,
    parts: bool,
    out: DType,
) -> CubeTensor<R> {
    if parts {
        to_dtype(parts_product(operand, weight, layout, reduced), out)
    } else {
        rounded_product(operand, weight, layout, reduced, out)
    }
}
