//! [`ProductInputOps`] for every `CubeBackend<R, ..>`: where the products
//! round their operands (`matmul_cube`'s `reduced`: bf16 on CUDA, f16 as
//! its test stand-in), RMSNorm and SwiGLU write their result in that dtype
//! (`rows_cube`'s `rms_norm_as`, `swiglu_as`): rounded once for a training
//! step's products and for inference's with [`Activations::Rounded`], or as
//! the two parts `[hi | lo]` the inference product reads by default
//! (`matmul_parts_cube::parts_product`). Elsewhere, the two ops. RMSNorm
//! of a residual add sums it as it reads it and writes the sum, in f32 as
//! the add would (`rows_cube`'s `sum_rms_norm_as`), whatever the products'
//! arithmetic.

use super::cube_common::to_dtype;
use super::matmul::{Activations, Precision, WeightLayout, shared_products_as};
use super::matmul_cube::{reduced, rounded_product};
use super::matmul_parts_cube::parts_product;
use super::product_inputs::{
    ProductInputOps, composed_rms_norm_products, composed_sum_rms_norm_products,
    composed_swiglu_product,
};
use super::rows::RowOps;
use super::rows_cube::{rms_norm_as, sum_rms_norm_as, swiglu_as};
use burn::tensor::DType;
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
            );
        };
        let dtype = x.dtype;
        let parts = activations == Activations::TwoParts;
        let operand = rms_norm_as(x, norm_weight, eps, reduced, parts);
        operand_products(operand, weights, layout, reduced, parts, dtype)
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
            );
        }
        let Some(reduced) = reduced::<Self>(&x.device, precision) else {
            let (sum, normed) = sum_rms_norm_as(x, delta, norm_weight, eps, DType::F32, false);
            let products =
                shared_products_as::<Self>(normed, weights, layout, precision, activations);
            return (sum, products);
        };
        let parts = activations == Activations::TwoParts;
        let (sum, operand) = sum_rms_norm_as(x, delta, norm_weight, eps, reduced, parts);
        let products = operand_products(operand, weights, layout, reduced, parts, DType::F32);
        (sum, products)
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
        let dtype = gate.dtype;
        let parts = activations == Activations::TwoParts;
        let operand = swiglu_as(gate, up, reduced, parts);
        to_dtype(product(operand, weight, layout, reduced, parts), dtype)
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
}

/// The products of one operand a row op wrote in `reduced` with each of
/// `weights`, in `dtype`.
fn operand_products<R: CubeRuntime>(
    operand: CubeTensor<R>,
    weights: Vec<CubeTensor<R>>,
    layout: WeightLayout,
    reduced: DType,
    parts: bool,
    dtype: DType,
) -> Vec<CubeTensor<R>> {
    weights
        .into_iter()
        .map(|w| to_dtype(product(operand.clone(), w, layout, reduced, parts), dtype))
        .collect()
}

/// The product of an operand a row op wrote in `reduced`: its two parts
/// (`parts`), or rounded once.
fn product<R: CubeRuntime>(
    operand: CubeTensor<R>,
    weight: CubeTensor<R>,
    layout: WeightLayout,
    reduced: DType,
    parts: bool,
) -> CubeTensor<R> {
    if parts {
        parts_product(operand, weight, layout, reduced)
    } else {
        rounded_product(operand, weight, layout, reduced)
    }
}
