#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The model's matrix products on `Cuda` in a cuda build (a GPU machine),
//! else on `Wgpu` (Mesa's lavapipe), against the float64 oracle (the checks
//! of `matmul_support`): f32, and bf16 operands with f32 sums where the
//! device computes in bf16 (CUDA); where it does not (wgpu), the bf16
//! request must give exactly the f32 result. In inference and under
//! autodiff with both gradients. And the inference product's two-part
//! kernel path and the training products' rounded path on their own, in
//! f16 where there is no bf16; RMSNorm and SwiGLU written as the products
//! read them, against their composition (in f16 in `kernels_bf16_as_f16`).

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::{
    Wanted, WeightLayout, activation_parts, parts_product, rounded_product,
    rounded_product_backward, two_part_product,
};
use distillery_ops::rng::SplitMix64;

mod cube_support;
mod matmul_support;
mod product_inputs_support;

use cube_support::{Cube, device, device_present};
use matmul_support::{
    assert_within, check_products, check_shared, check_training, exact, random, runs_bf16,
};

#[test]
fn products_match_the_float64_oracle() {
    if !device_present() {
        return;
    }
    // A CUDA device is one with bf16 arithmetic: there the bf16 path itself
    // is under test, not its f32 fallback.
    if cfg!(feature = "cuda") {
        assert!(runs_bf16::<Cube>(&device()), "CUDA runs no bf16 products");
    }
    check_products::<Cube>(&device());
}

#[test]
fn training_products_and_gradients_match_the_float64_oracle() {
    if !device_present() {
        return;
    }
    check_training::<Autodiff<Cube>>(&device());
}

#[test]
fn shared_products_equal_the_products_alone_and_sum_their_gradients() {
    if !device_present() {
        return;
    }
    check_shared::<Cube, Autodiff<Cube>>(&device(), &device());
}

#[test]
fn row_ops_writing_the_products_operands_equal_their_composition() {
    if !device_present() {
        return;
    }
    product_inputs_support::check_product_inputs::<Cube, Autodiff<Cube>>(
        &device(),
        &device(),
        product_inputs_support::Kernels::Cube,
    );
}

/// `x` rounded to `dtype` (f16 or bf16) and back, as the device rounds.
fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        other => panic!("no 16-bit rounding for {other:?}"),
    }
}

/// The inference product's kernel path on its own: the activations in two
/// parts side by side, the weight stacked twice, one product. In bf16 on
/// CUDA; on wgpu, which has no bf16, in f16 (lavapipe has it), so that the
/// split, the stacking and both weight layouts are checked on every run.
/// The oracle rounds the same parts on the host and sums in float64.
#[test]
fn the_two_part_product_equals_its_rounded_parts_in_float64() {
    if !device_present() {
        return;
    }
    let dtype = sixteen_bit();
    let mut rng = SplitMix64::new(77);
    // Inner sizes with vector widths 4 and 1; magnitudes 1..100 keep f16's
    // parts in its range.
    for (rows, k, n) in [(7, 12, 5), (33, 75, 64), (1, 300, 3)] {
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let x: Vec<f32> = (0..rows * k)
                .map(|_| {
                    let sign = if rng.next_f64() < 0.5 { -1.0 } else { 1.0 };
                    (sign * 10f64.powf(rng.next_f64() * 2.0)) as f32
                })
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect();
            let w_dims = match layout {
                WeightLayout::InOut => [k, n],
                WeightLayout::OutIn => [n, k],
            };
            // w[c, j] of the product, wherever it is stored.
            let w_at = |c: usize, j: usize| match layout {
                WeightLayout::InOut => w[c * n + j],
                WeightLayout::OutIn => w[j * k + c],
            };
            let y = two_part_product(
                on_device(&x, [rows, k]).into_primitive().tensor(),
                on_device(&w, w_dims).into_primitive().tensor(),
                layout,
                dtype,
            );
            let y = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(y));
            assert_eq!(y.dims(), [rows, n], "the product's shape");
            let got = y.into_data().convert::<f32>().to_vec::<f32>().unwrap();
            // The parts made once for several products (a layer's shared
            // input) give each product exactly.
            let parts = activation_parts(on_device(&x, [rows, k]).into_primitive().tensor(), dtype);
            for _ in 0..2 {
                let w = on_device(&w, w_dims).into_primitive().tensor();
                let y = parts_product(parts.clone(), w, layout, dtype);
                let y = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(y));
                assert_eq!(
                    y.into_data().to_vec::<f32>().unwrap(),
                    got,
                    "{dtype:?} {layout:?}: the product from shared parts"
                );
            }
            for r in 0..rows {
                for j in 0..n {
                    let (mut want, mut scale) = (0.0f64, 0.0f64);
                    for c in 0..k {
                        let v = x[r * k + c];
                        let hi = round_to(dtype, v);
                        let lo = round_to(dtype, v - hi);
                        let wr = round_to(dtype, w_at(c, j)) as f64;
                        want += (hi as f64 + lo as f64) * wr;
                        scale += (v as f64 * wr).abs();
                    }
                    let err = (got[r * n + j] as f64 - want).abs() / scale;
                    assert!(
                        err <= 1e-6,
                        "{dtype:?} {layout:?} [{rows}, {k}] x [{k}, {n}], ({r}, {j}): {} against {want} (error {err:e} of the terms' magnitude)",
                        got[r * n + j]
                    );
                }
            }
        }
    }
}

/// The 16-bit dtype the kernel-path tests run in: bf16 on CUDA; on wgpu,
/// which has no bf16, f16 (lavapipe has it).
fn sixteen_bit() -> DType {
    let dtype = if cfg!(feature = "cuda") {
        DType::BF16
    } else {
        DType::F16
    };
    assert!(
        Cube::supports_dtype(&device(), dtype),
        "the device lacks {dtype:?}, which this test needs"
    );
    dtype
}

fn on_device(v: &[f32], dims: [usize; 2]) -> Tensor<Cube, 2> {
    Tensor::<Cube, 2>::from_data(TensorData::new(v.to_vec(), dims), &device())
}

/// A result's values, after checking that it is f32 (the sums' dtype).
fn f32_values(what: &str, t: burn::tensor::ops::FloatTensor<Cube>) -> Vec<f32> {
    let t = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(t));
    assert_eq!(t.dtype(), DType::F32, "{what}: the result's dtype");
    t.into_data().to_vec::<f32>().unwrap()
}

/// A training step's rounded products on their own: the product and both
/// gradients, every operand rounded once to the 16-bit dtype, summed in
/// f32. Both when the caller rounded `x` and the weight first (as the
/// trainer does, keeping them for the backward) and when the products
/// round them; against float64 of the host-rounded operands.
#[test]
fn the_rounded_training_products_equal_their_rounded_operands_in_float64() {
    if !device_present() {
        return;
    }
    let dtype = sixteen_bit();
    let q = |v: f32| round_to(dtype, v);
    let rel = |terms: usize| 2.0 * terms as f64 * 2f64.powi(-24);
    let mut rng = SplitMix64::new(91);
    for (m, k, n) in [(7, 12, 5), (33, 75, 64), (1, 300, 3), (70, 40, 33)] {
        let x = random(&mut rng, m * k);
        let w = random(&mut rng, k * n);
        let dy = random(&mut rng, m * n);
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let w_dims = match layout {
                WeightLayout::InOut => [k, n],
                WeightLayout::OutIn => [n, k],
            };
            // w[l, j] of the product, wherever it is stored.
            let wk = |l: usize, j: usize| match layout {
                WeightLayout::InOut => w[l * n + j],
                WeightLayout::OutIn => w[j * k + l],
            };
            for rounded_first in [false, true] {
                let what = format!(
                    "{dtype:?} {layout:?} [{m}, {k}] x [{k}, {n}], rounded first: {rounded_first}"
                );
                let operand = |v: &[f32], dims: [usize; 2]| {
                    let t = on_device(v, dims);
                    let t = if rounded_first { t.cast(dtype) } else { t };
                    t.into_primitive().tensor()
                };
                let (xt, wt) = (operand(&x, [m, k]), operand(&w, w_dims));
                let y = rounded_product(xt.clone(), wt.clone(), layout, dtype, DType::F32);
                // Asked for in `dtype` (a layer's rounded results): the
                // f32 result rounded, bit for bit.
                let y_rounded = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(
                    rounded_product(xt.clone(), wt.clone(), layout, dtype, dtype),
                ));
                assert_eq!(
                    y_rounded.dtype(),
                    dtype,
                    "{what}: the rounded result's dtype"
                );
                let y_cast = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(y.clone()))
                    .cast(dtype)
                    .cast(DType::F32);
                let y_rounded = y_rounded
                    .cast(DType::F32)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                let y_cast = y_cast.into_data().to_vec::<f32>().unwrap();
                assert!(
                    y_rounded
                        .iter()
                        .zip(&y_cast)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: the result written in {dtype:?} is not the f32 result rounded"
                );
                let (want, mag) = exact((m, k, n), |i, l| q(x[i * k + l]), |l, j| q(wk(l, j)));
                assert_within(
                    &format!("{what}: y"),
                    &f32_values(&what, y),
                    &want,
                    &mag,
                    rel(k),
                );

                let dyt = on_device(&dy, [m, n]).into_primitive().tensor();
                let both = Wanted {
                    x: true,
                    weight: true,
                };
                let (dx, dw) = rounded_product_backward(xt, wt, layout, dtype, dyt, both);
                // dx = dy w^T: [m, k], summed over n.
                let (want, mag) = exact((m, n, k), |i, j| q(dy[i * n + j]), |j, l| q(wk(l, j)));
                let dx = f32_values(&what, dx.expect("dx was asked for"));
                assert_within(&format!("{what}: dx"), &dx, &want, &mag, rel(n));
                // dw = x^T dy: [k, n], summed over m, in the weight's layout.
                let (want, mag) = exact((k, m, n), |l, i| q(x[i * k + l]), |i, j| q(dy[i * n + j]));
                let dw = f32_values(&what, dw.expect("dw was asked for"));
                let dw_at = |l: usize, j: usize| match layout {
                    WeightLayout::InOut => dw[l * n + j],
                    WeightLayout::OutIn => dw[j * k + l],
                };
                let dw: Vec<f32> = (0..k * n).map(|i| dw_at(i / n, i % n)).collect();
                assert_within(&format!("{what}: dw"), &dw, &want, &mag, rel(m));
            }
        }
    }
    // Only the gradients asked for are computed.
    let (x, w, dy) = (
        on_device(&[0.5; 6], [2, 3]),
        on_device(&[0.25; 12], [3, 4]),
        on_device(&[1.0; 8], [2, 4]),
    );
    let p = |t: Tensor<Cube, 2>| t.into_primitive().tensor();
    let (dx, dw) = rounded_product_backward(
        p(x),
        p(w),
        WeightLayout::InOut,
        dtype,
        p(dy),
        Wanted {
            x: false,
            weight: true,
        },
    );
    assert!(dx.is_none() && dw.is_some(), "only dw was asked for");
}
