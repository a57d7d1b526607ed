#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The model's matrix products on `Cuda` in a cuda build (a GPU machine),
//! else on `Wgpu` (Mesa's lavapipe), against the float64 oracle (the checks
//! of `matmul_support`): f32, and bf16 operands with f32 sums where the
//! device computes in bf16 (CUDA); where it does not (wgpu), the bf16
//! request must give exactly the f32 result. In inference and under
//! autodiff with both gradients.

use burn::backend::Autodiff;

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
