//! The model's matrix products on the CubeCL backends ([`MatmulOps`] for
//! every `CubeBackend<R, ..>`): Burn's f32 matmul, or, where the device
//! computes in bf16 (CUDA: tensor cores), bf16 operands with f32
//! accumulation and an f32 result, the arithmetic [`Precision::Bf16`]
//! documents for the CPU's AMX path:
//!
//! - a training step's product and both of its gradients round every
//!   operand once (`x`, the weight, `dy`), as mixed-precision training does;
//! - inference carries the activations in two bf16 parts, `x = hi + lo`
//!   (about 16 bits), and sums the two products in f32, so that logits
//!   stay close to f32's (the weight is rounded once): one product of the
//!   parts side by side with the weight stacked twice
//!   (`matmul_parts_cube`).
//!
//! Every operand is cast to bf16 explicitly before the product: Burn 0.21's
//! matmul reads its right operand as if it had the left operand's dtype,
//! unchecked, so a missed cast would read f32 bytes as bf16 pairs. The
//! result is asked for in f32 (`matmul`'s output dtype), so the sums are
//! never rounded to bf16.
//!
//! On a device without bf16 arithmetic (wgpu) the bf16 request runs the
//! f32 product, as on a CPU without AMX.

use super::cube_common::to_dtype;
use super::matmul::{MatmulOps, Precision, Wanted, WeightLayout, f32_backward, f32_product};
use super::matmul_parts_cube::two_part_product;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensorOps;
use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// The reduced dtype of [`Precision::Bf16`] products.
const REDUCED: DType = DType::BF16;

/// `a b` with both operands rounded to bf16 (each cast explicitly), summed
/// and written in f32.
fn reduced_product<R: CubeRuntime>(a: CubeTensor<R>, b: CubeTensor<R>) -> CubeTensor<R> {
    let (a, b) = (to_dtype(a, REDUCED), to_dtype(b, REDUCED));
    matmul(a, b, None, MatmulStrategy::default(), DType::F32)
        .unwrap_or_else(|e| panic!("a bf16 product with an f32 result cannot run here: {e:?}"))
}

/// The weight as the right operand of `x w`: itself or its transpose (a
/// strided view; the matmul reads it in place).
fn right_operand<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    weight: CubeTensor<R>,
    layout: WeightLayout,
) -> CubeTensor<R> {
    match layout {
        WeightLayout::InOut => weight,
        WeightLayout::OutIn => CubeBackend::<R, F, I, BT>::float_transpose(weight),
    }
}

impl<R, F, I, BT> MatmulOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn product_precision(device: &Self::Device, precision: Precision) -> Precision {
        match precision {
            Precision::Bf16 if Self::supports_dtype(device, REDUCED) => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    fn linear_matmul(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
    ) -> CubeTensor<R> {
        if Self::product_precision(&x.device, precision) == Precision::F32 {
            return f32_product::<Self>(x, weight, layout);
        }
        let dtype = x.dtype;
        to_dtype(two_part_product(x, weight, layout, REDUCED), dtype)
    }

    fn linear_matmul_trained(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
    ) -> CubeTensor<R> {
        if Self::product_precision(&x.device, precision) == Precision::F32 {
            return f32_product::<Self>(x, weight, layout);
        }
        let dtype = x.dtype;
        to_dtype(
            reduced_product(x, right_operand::<R, F, I, BT>(weight, layout)),
            dtype,
        )
    }

    fn linear_matmul_backward(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
        dy: CubeTensor<R>,
        want: Wanted,
    ) -> (Option<CubeTensor<R>>, Option<CubeTensor<R>>) {
        if Self::product_precision(&x.device, precision) == Precision::F32 {
            return f32_backward::<Self>(x, weight, layout, dy, want);
        }
        let (x_dtype, w_dtype) = (x.dtype, weight.dtype);
        let t = Self::float_transpose;
        // Each operand rounded once, whichever products it enters.
        let dy = to_dtype(dy, REDUCED);
        let dx = want.x.then(|| {
            let w = match layout {
                WeightLayout::InOut => t(weight.clone()),
                WeightLayout::OutIn => weight.clone(),
            };
            to_dtype(reduced_product(dy.clone(), w), x_dtype)
        });
        let dw = want.weight.then(|| {
            let dw = match layout {
                WeightLayout::InOut => reduced_product(t(x), dy),
                WeightLayout::OutIn => reduced_product(t(dy), x),
            };
            to_dtype(dw, w_dtype)
        });
        (dx, dw)
    }
}
