//! The model's matrix products on the CubeCL backends ([`MatmulOps`] for
//! every `CubeBackend<R, ..>`): Burn's f32 matmul, or, where the device
//! computes in bf16 (CUDA: tensor cores), bf16 operands with f32
//! accumulation and an f32 result, the arithmetic [`Precision::Bf16`]
//! documents for the CPU's AMX path:
//!
//! - a training step's product and both of its gradients round every
//!   operand once (`x`, the weight, `dy`), as mixed-precision training does.
//!   The forward's rounded `x` and weight are what the backward reads
//!   ([`MatmulOps::trained_operand`]): rounding them again there would cost
//!   two more launches and passes over memory per product, and holding
//!   `x` in bf16 halves what a product keeps for its backward;
//! - inference carries the activations in two bf16 parts, `x = hi + lo`
//!   (about 16 bits), and sums the two products in f32, so that logits
//!   stay close to f32's (the weight is rounded once): one product of the
//!   parts side by side with the weight stacked twice
//!   (`matmul_parts_cube`); the products of one input with several
//!   weights ([`MatmulOps::linear_matmul_shared`]) split it once.
//!
//! Every operand is cast to bf16 explicitly before the product: Burn 0.21's
//! matmul reads its right operand as if it had the left operand's dtype,
//! unchecked, so a missed cast would read f32 bytes as bf16 pairs. The
//! result is asked for in f32 (`matmul`'s output dtype), so the sums are
//! not rounded to bf16; except where a layer asks for its results rounded
//! ([`Results::Rounded`]: gate and up, which only SwiGLU reads) and the
//! product rounds its operands once (a training step; inference with
//! `Activations::Rounded`): then the f32 sums are rounded as they are
//! stored, as PyTorch's autocast stores them.
//!
//! On a device without bf16 arithmetic (wgpu) the bf16 request runs the
//! f32 product, as on a CPU without AMX. The rounded training products
//! take their 16-bit dtype as an argument ([`rounded_product`],
//! [`rounded_product_backward`]), so that the tests run them on wgpu in
//! f16. And `DISTILLERY_BF16_AS_F16=1` runs the whole bf16 path in f16 on
//! a device that has f16 but not bf16 (lavapipe), so that the tests cover
//! it on every run, not only on a GPU. A test switch, not a mode to train
//! in: f16 rounds like bf16 with 3 more bits, but overflows past 65,504.

use super::cube_common::to_dtype;
use super::matmul::{
    MatmulOps, Precision, Results, Wanted, WeightLayout, f32_backward, f32_product,
};
use super::matmul_parts_cube::{activation_parts, parts_product, two_part_product};
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
use burn_cubecl::ops::permute;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use std::sync::OnceLock;

/// Whether `DISTILLERY_BF16_AS_F16=1` asks for f16 as bf16's stand-in
/// (read once).
fn f16_stands_in() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("DISTILLERY_BF16_AS_F16").as_deref() == Ok("1"))
}

/// `a b` with both operands in `reduced` (each cast explicitly, unless it
/// already is), summed in f32 and written in f32.
fn reduced_product<R: CubeRuntime>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    reduced: DType,
) -> CubeTensor<R> {
    reduced_product_into(a, b, reduced, DType::F32)
}

/// [`reduced_product`] written in `out`: f32, or `reduced` (the f32 sums
/// rounded as they are stored, as a cast of the f32 result rounds them).
fn reduced_product_into<R: CubeRuntime>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    reduced: DType,
    out: DType,
) -> CubeTensor<R> {
    let (a, b) = (to_dtype(a, reduced), to_dtype(b, reduced));
    matmul(a, b, None, MatmulStrategy::default(), out).unwrap_or_else(|e| {
        panic!("a {reduced:?} product with a {out:?} result cannot run here: {e:?}")
    })
}

/// A matrix's transpose, as a strided view (the matmul reads it in place).
fn transposed<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    permute(t, &[1, 0])
}

/// The weight as the right operand of `x w`: itself or its transpose.
fn right_operand<R: CubeRuntime>(weight: CubeTensor<R>, layout: WeightLayout) -> CubeTensor<R> {
    match layout {
        WeightLayout::InOut => weight,
        WeightLayout::OutIn => transposed(weight),
    }
}

/// A training step's product `x w` (or `x w^T`, as `layout` says) with
/// both operands rounded to `reduced` (bf16 on CUDA), once: an operand
/// already in `reduced` (from [`MatmulOps::trained_operand`]) is read as
/// it is. Summed in f32 and written in `out`: f32, or `reduced` for
/// [`Results::Rounded`].
pub fn rounded_product<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    layout: WeightLayout,
    reduced: DType,
    out: DType,
) -> CubeTensor<R> {
    reduced_product_into(x, right_operand(weight, layout), reduced, out)
}

/// The dtype a product rounding to `reduced` writes its result in, as
/// `results` says.
pub(super) fn result_dtype(reduced: DType, results: Results) -> DType {
    match results {
        Results::F32 => DType::F32,
        Results::Rounded => reduced,
    }
}

/// The gradients of [`rounded_product`] given the output's, `dy` (rounded
/// to `reduced` once, for both products): `dx = dy w^T` and `dw = x^T dy`
/// (`dw = dy^T x` for a weight stored `[out, in]`, in its own layout), in
/// f32, each computed only when `want` says so. `x` and the weight are
/// read in `reduced` as [`rounded_product`] reads them.
pub fn rounded_product_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    layout: WeightLayout,
    reduced: DType,
    dy: CubeTensor<R>,
    want: Wanted,
) -> (Option<CubeTensor<R>>, Option<CubeTensor<R>>) {
    let dy = to_dtype(dy, reduced);
    let dx = want.x.then(|| {
        let w = match layout {
            WeightLayout::InOut => transposed(weight),
            WeightLayout::OutIn => weight,
        };
        reduced_product(dy.clone(), w, reduced)
    });
    let dw = want.weight.then(|| match layout {
        WeightLayout::InOut => reduced_product(transposed(x), dy, reduced),
        WeightLayout::OutIn => reduced_product(transposed(dy), x, reduced),
    });
    (dx, dw)
}

/// The 16-bit dtype a product asked for in `precision` rounds to on
/// `device`, or `None` where it runs in f32.
pub(super) fn reduced<B: MatmulOps>(device: &B::Device, precision: Precision) -> Option<DType> {
    match precision {
        Precision::Bf16 => B::reduced_dtype(device),
        Precision::F32 => None,
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
        match reduced::<Self>(device, precision) {
            Some(_) => Precision::Bf16,
            None => Precision::F32,
        }
    }

    fn reduced_dtype(device: &Self::Device) -> Option<DType> {
        if Self::supports_dtype(device, DType::BF16) {
            Some(DType::BF16)
        } else if f16_stands_in() && Self::supports_dtype(device, DType::F16) {
            Some(DType::F16)
        } else {
            None
        }
    }

    fn trained_gradient(device: &Self::Device, precision: Precision) -> Option<DType> {
        // `rounded_product_backward` casts `dy` to this.
        reduced::<Self>(device, precision)
    }

    fn trained_operand(t: CubeTensor<R>, precision: Precision) -> CubeTensor<R> {
        match reduced::<Self>(&t.device, precision) {
            Some(reduced) => to_dtype(t, reduced),
            None => t,
        }
    }

    fn linear_matmul(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
    ) -> CubeTensor<R> {
        let Some(reduced) = reduced::<Self>(&x.device, precision) else {
            return f32_product::<Self>(x, weight, layout);
        };
        let dtype = x.dtype;
        to_dtype(two_part_product(x, weight, layout, reduced), dtype)
    }

    fn linear_matmul_shared(
        x: CubeTensor<R>,
        weights: Vec<CubeTensor<R>>,
        layout: WeightLayout,
        precision: Precision,
        _results: Results,
    ) -> Vec<CubeTensor<R>> {
        // Inference's two parts: f32 results, whatever `results` says.
        let Some(reduced) = reduced::<Self>(&x.device, precision) else {
            return weights
                .into_iter()
                .map(|w| f32_product::<Self>(x.clone(), w, layout))
                .collect();
        };
        let dtype = x.dtype;
        // The activations split once for every product.
        let parts = activation_parts(x, reduced);
        weights
            .into_iter()
            .map(|w| to_dtype(parts_product(parts.clone(), w, layout, reduced), dtype))
            .collect()
    }

    fn linear_matmul_trained(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
        results: Results,
    ) -> CubeTensor<R> {
        match reduced::<Self>(&x.device, precision) {
            Some(reduced) => {
                rounded_product(x, weight, layout, reduced, result_dtype(reduced, results))
            }
            None => f32_product::<Self>(x, weight, layout),
        }
    }

    fn linear_matmul_backward(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        layout: WeightLayout,
        precision: Precision,
        dy: CubeTensor<R>,
        want: Wanted,
    ) -> (Option<CubeTensor<R>>, Option<CubeTensor<R>>) {
        match reduced::<Self>(&x.device, precision) {
            Some(reduced) => rounded_product_backward(x, weight, layout, reduced, dy, want),
            None => f32_backward::<Self>(x, weight, layout, dy, want),
        }
    }
}
