#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The model's matrix products on `Cuda` in a cuda build (a GPU machine),
//! else on `Wgpu` (Mesa's lavapipe), against the float64 oracle (the checks
//! of `matmul_support`): f32, and bf16 operands with f32 sums where the
//! device computes in bf16 (CUDA); where it does not (wgpu), the bf16
//! request must give exactly the f32 result. In inference and under
//! autodiff with both gradients. And the inference product's two-part
//! kernel path on its own, in f16 where there is no bf16.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::{WeightLayout, two_part_product};
use distillery_ops::rng::SplitMix64;

mod cube_support;
mod matmul_support;

use cube_support::{Cube, device, device_present};
use matmul_support::{check_products, check_training, runs_bf16};

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
    let dtype = if cfg!(feature = "cuda") {
        DType::BF16
    } else {
        DType::F16
    };
    assert!(
        Cube::supports_dtype(&device(), dtype),
        "the device lacks {dtype:?}, which this test needs"
    );
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
            let on_device = |v: &[f32], dims: [usize; 2]| {
                Tensor::<Cube, 2>::from_data(TensorData::new(v.to_vec(), dims), &device())
                    .into_primitive()
                    .tensor()
            };
            let y = two_part_product(
                on_device(&x, [rows, k]),
                on_device(&w, w_dims),
                layout,
                dtype,
            );
            let y = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(y));
            assert_eq!(y.dims(), [rows, n], "the product's shape");
            let got = y.into_data().convert::<f32>().to_vec::<f32>().unwrap();
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
