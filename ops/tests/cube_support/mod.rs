//! The CubeCL backend the kernel tests run on: `Cuda` in a cuda build (a
//! GPU machine), else `Wgpu` (Mesa's lavapipe on a CPU-only machine).
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};

/// The CubeCL backend under test.
#[cfg(feature = "cuda")]
pub type Cube = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
pub type Cube = burn::backend::Wgpu;

/// Whether the backend's device is there; each test starts by asking. In a
/// cuda build these tests are the GPU check: without a CUDA device they
/// skip, and fail under `CI=true` (as scripts/gpu/bench.sh runs them)
/// rather than pass vacuously.
#[cfg(feature = "cuda")]
pub fn device_present() -> bool {
    let found = distillery_ops::device::resolve(distillery_engine::Device::Cuda);
    testkit::require_device("a CUDA device", found).is_some()
}
/// Wgpu needs a Vulkan driver, which the test command (scripts/test.sh)
/// checks for before it runs these tests.
#[cfg(not(feature = "cuda"))]
pub fn device_present() -> bool {
    true
}

pub fn device() -> burn::tensor::Device<Cube> {
    Default::default()
}

/// `values` (float64) as an f32 tensor of shape `dims` on the device, for
/// the backend under test or its autodiff.
pub fn tensor<
    B: burn::tensor::backend::Backend<Device = burn::tensor::Device<Cube>>,
    const D: usize,
>(
    values: &[f64],
    dims: [usize; D],
) -> Tensor<B, D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, dims), &device())
}
