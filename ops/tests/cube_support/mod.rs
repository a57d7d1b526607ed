//! The CubeCL backend the kernel tests run on: `Cuda` in a cuda build (a
//! GPU machine), else `Wgpu` (Mesa's lavapipe on a CPU-only machine).

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
