//! The Burn backend a resolved device means: Flex on the CPU, Cuda (feature
//! `cuda`) on an NVIDIA GPU. Code that runs a model is written once, generic
//! over the backend, as an [`OnBackend`] task. Wgpu (feature `wgpu`) is no
//! recipe's device: benches run tasks on it by name ([`on_wgpu`]), to
//! exercise the CubeCL kernels where no CUDA device is at hand.

use crate::kernels::adamw::AdamWOps;
use crate::kernels::importance::ImportanceOps;
use crate::kernels::kd::KdOps;
use crate::memory::MemoryOps;
use crate::model::ModelBackend;
use distillery_engine::Device;

/// The CPU backend (pure Rust, gemm kernels).
pub type Cpu = burn::backend::Flex;

/// What a backend must offer for every stage: Burn's tensor ops plus our
/// kernels (the model's fused ops, the importance reductions, the fused KD
/// loss and the AdamW update), and its memory figure for the benches.
pub trait ComputeBackend: ModelBackend + ImportanceOps + KdOps + AdamWOps + MemoryOps {}

impl<B: ModelBackend + ImportanceOps + KdOps + AdamWOps + MemoryOps> ComputeBackend for B {}

/// A computation generic over the backend.
pub trait OnBackend {
    type Output;
    fn run<B: ComputeBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `task` on the backend for `device` (already resolved: never `Auto`).
pub fn on_device<T: OnBackend>(device: Device, task: T) -> anyhow::Result<T::Output> {
    match device {
        Device::Cpu => Ok(task.run::<Cpu>(Default::default())),
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            Ok(task.run::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(0)))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => {
            anyhow::bail!("this build has no CUDA support (rebuild with `--features cuda`)")
        }
        Device::Auto => anyhow::bail!("the device must be resolved before running (`auto` given)"),
    }
}

/// Runs `task` on Burn's Wgpu backend, default adapter (on a machine
/// without a GPU, Mesa's software Vulkan).
#[cfg(feature = "wgpu")]
pub fn on_wgpu<T: OnBackend>(task: T) -> T::Output {
    task.run::<burn::backend::Wgpu>(Default::default())
}
