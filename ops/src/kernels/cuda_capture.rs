//! Kernels compiled by CubeCL's CUDA compiler without a GPU, for
//! [`super::cuda_source`]: each kernel module expands its own kernels with
//! [`Capture`] (their kernel structs are private to it) and hands them to
//! [`compile_for_cuda`].

use cubecl::cuda::CudaCompiler;
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::{Compiler, CubeTask};

/// CubeCL's CUDA compiler options (a type of `cubecl-cpp`, which the crate
/// does not name directly).
type CudaOptions = <CudaCompiler as Compiler>::CompilationOptions;

/// The GPU generation a source is compiled for: what CubeCL's CUDA runtime
/// turns on for it, and NVRTC's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaArch {
    /// sm_80 (A100): tensor cores for f16 and bf16, no clusters.
    Ampere,
    /// sm_90a (H100, H200): what the runtime compiles for on Hopper.
    Hopper,
}

impl CudaArch {
    pub const ALL: [CudaArch; 2] = [CudaArch::Ampere, CudaArch::Hopper];

    /// NVRTC's `--gpu-architecture`, as CubeCL's runtime writes it (the
    /// `a` suffix from sm_90 on).
    pub fn nvrtc_target(self) -> &'static str {
        match self {
            CudaArch::Ampere => "sm_80",
            CudaArch::Hopper => "sm_90a",
        }
    }

    /// The opt-in shared memory a cube may take on this generation's
    /// largest parts (A100: 163 KB; H100, H200: 227 KB), in bytes: the
    /// limit CubeCL's CUDA runtime reports and the plans are fitted to.
    pub fn shared_memory_limit(self) -> usize {
        match self {
            CudaArch::Ampere => 163 * 1024,
            CudaArch::Hopper => 227 * 1024,
        }
    }

    /// The compiler options CubeCL's CUDA runtime sets on a device of this
    /// generation (`cubecl-cuda`'s `runtime.rs`, version 0.10.0).
    fn options(self) -> CudaOptions {
        let mut options = CudaOptions {
            warp_size: 32,
            ..Default::default()
        };
        let features = &mut options.supports_features;
        features.fast_math = true;
        // Both generations are past 7.0 (grid constants) and 7.5 (fast
        // tanh, with a CUDA 12.8 or later build).
        features.grid_constants = true;
        features.fast_tanh = true;
        if self == CudaArch::Hopper {
            features.clusters = true;
            features.elect_sync = true;
        }
        options
    }
}

/// One kernel's CUDA C++.
#[derive(Debug, Clone)]
pub struct CudaKernelSource {
    /// What the kernel is, with its plan, for messages and file names.
    pub label: String,
    /// The kernel's entry point in the source.
    pub entry_point: String,
    pub source: String,
    /// The shared memory a cube of the kernel takes, in bytes: what the
    /// runtime launches it with, checked against the device's limit.
    pub shared_memory_bytes: usize,
}

/// A kernel's launch arguments registered as a launch registers them, on a
/// wgpu client that only provides the bindings: nothing is launched.
pub(super) struct Capture {
    pub(super) client: ComputeClient<WgpuRuntime>,
    pub(super) settings: KernelSettings,
    pub(super) launcher: KernelLauncher<WgpuRuntime>,
}

impl Capture {
    /// Settings as `#[cube(launch)]` makes them (32-bit addresses), with
    /// `define` registering the kernel's runtime-defined types.
    pub(super) fn new(dim: CubeDim, mut define: impl FnMut(&mut Scope)) -> Self {
        let client = WgpuRuntime::client(&WgpuDevice::default());
        let settings = KernelSettings::default()
            .cube_dim(dim)
            .address_type(AddressType::U32);
        let mut launcher = KernelLauncher::<WgpuRuntime>::new(settings.clone());
        launcher.with_scope(|scope| {
            scope.device_properties(client.properties());
            define(scope);
        });
        Self {
            client,
            settings,
            launcher,
        }
    }

    /// A contiguous tensor argument of `shape` over a small buffer,
    /// registered as the kernel's argument type `T`: the expansion reads an
    /// argument's layout and vector width, not its data.
    pub(super) fn tensor<T>(&mut self, shape: &[usize]) -> T::CompilationArg
    where
        T: LaunchArg<RuntimeArg<WgpuRuntime> = TensorArg<WgpuRuntime>>,
    {
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        let handle = self.client.empty(16);
        // SAFETY: the argument is only registered and expanded, never
        // launched, so no kernel reads past the buffer.
        let arg =
            unsafe { TensorArg::from_raw_parts(handle, strides.into(), shape.to_vec().into()) };
        T::register(arg, &mut self.launcher)
    }
}

/// `kernel` compiled by CubeCL's CUDA compiler for `arch`, as its runtime
/// compiles a checked launch.
pub(super) fn compile_for_cuda<K: CubeKernel + 'static>(
    label: String,
    kernel: K,
    arch: CudaArch,
) -> Result<CudaKernelSource, String> {
    let task = KernelTask::<CudaCompiler, K>::new(kernel);
    let compiled = task
        .compile(
            &mut Default::default(),
            &arch.options(),
            ExecutionMode::Checked,
            AddressType::U32.unsigned_type(),
        )
        .map_err(|err| format!("{label}: CubeCL's CUDA compiler failed: {err}"))?;
    let shared_memory_bytes = compiled
        .repr
        .as_ref()
        .map(|repr| repr.shared_memory_size())
        .unwrap_or(0);
    Ok(CudaKernelSource {
        label,
        entry_point: compiled.entrypoint_name,
        source: compiled.source,
        shared_memory_bytes,
    })
}
