//! The kernels that run only on CUDA (the tensor-core attention, the
//! 16-bit operand casts) as the CUDA C++ that CubeCL's CUDA runtime hands
//! to NVRTC, made without a GPU (features `cuda` and `wgpu` together).
//!
//! The `cmma` kernels cannot run on lavapipe: WGSL has no cooperative
//! matrices. Their emulations run there against float64, but whether the
//! `cmma` versions compile for CUDA was only known on a GPU machine, where
//! device time is scarce. Here each kernel is expanded as its `launch`
//! would expand it (CubeCL's `#[cube(launch)]` builds the same kernel
//! struct), on a wgpu client for the argument bindings, then compiled by
//! CubeCL's CUDA compiler ([`CudaCompiler`]) with the options its runtime
//! sets for the target architecture. [`nvrtc_ptx`] compiles the source with
//! NVRTC (loaded at run time, as the CUDA runtime loads it), which needs no
//! device either. `scripts/gpu/cuda_compile_check.sh` installs NVRTC and
//! the headers, runs `tests/kernels_cuda_source.rs`, and reads the
//! registers and spills off `ptxas`.
//!
//! Where this differs from a launch on a GPU: the expansion sees lavapipe's
//! device properties instead of the GPU's. The kernels here read none of
//! them (their plans and plane width are arguments and constants).

use super::attention_cube::{TILE_GRADIENTS, TILE_OPERANDS};
use super::attention_tiles_cube::{TilePlan, forward_cuda_source, saturating_cast_cuda_source};
use super::attention_tiles_cube_backward::{BackwardTilePlan, backward_cuda_sources};
use super::matmul_parts_cube::side_by_side_cuda_source;
use burn::tensor::DType;
use cubecl::cuda::CudaCompiler;
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::{Compiler, CubeTask};
use std::ffi::{CStr, CString};

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
    /// The static shared memory the kernel declares, in bytes.
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

    /// A contiguous tensor argument of `shape` over a small buffer: the
    /// expansion reads an argument's layout and vector width, not its data.
    pub(super) fn tensor(&self, shape: &[usize]) -> TensorArg<WgpuRuntime> {
        let mut strides = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        let handle = self.client.empty(16);
        // SAFETY: the argument is only registered and expanded, never
        // launched, so no kernel reads past the buffer.
        unsafe { TensorArg::from_raw_parts(handle, strides.into(), shape.to_vec().into()) }
    }
}

/// `kernel` compiled by CubeCL's CUDA compiler for `arch`, as its runtime
/// compiles a checked launch.
pub(super) fn cuda_source<K: CubeKernel + 'static>(
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

/// The tensor-core attention kernels for head size `d`, as CUDA C++ for
/// `arch`: the forward under `forward`, then the backward's `dq` and
/// `dk`/`dv` under `backward`, with the operand types CUDA's dispatch
/// gives them under bf16 (f16 scores and weighted values, bf16 gradient
/// products). The plans' `matrix_units` is not read: these are the `cmma`
/// kernels.
pub fn attention_tile_sources(
    d: usize,
    forward: TilePlan,
    backward: BackwardTilePlan,
    arch: CudaArch,
) -> Result<Vec<CudaKernelSource>, String> {
    let operands = [TILE_OPERANDS, TILE_GRADIENTS];
    let mut sources = vec![forward_cuda_source(d, forward, TILE_OPERANDS, arch)?];
    sources.extend(backward_cuda_sources(d, backward, operands, arch)?);
    Ok(sources)
}

/// The element-wise kernels that run only on CUDA in their 16-bit types,
/// as CUDA C++ for `arch`: the attention operands' cast to f16 and bf16,
/// and the two-part product's operands in bf16 (its parts and its stacked
/// weight, in vectors of 1 and 4). On lavapipe they run in f16 at most.
pub fn sixteen_bit_sources(arch: CudaArch) -> Result<Vec<CudaKernelSource>, String> {
    let mut sources = Vec::new();
    for dtype in [DType::F16, DType::BF16] {
        sources.push(saturating_cast_cuda_source(dtype, arch)?);
    }
    for width in [1, 4] {
        for split in [true, false] {
            sources.push(side_by_side_cuda_source(DType::BF16, width, split, arch)?);
        }
    }
    Ok(sources)
}

/// `source` compiled to PTX by NVRTC for `arch`, with the headers under
/// `include` (a CUDA toolkit's `include` folder: `cuda_fp16.h`, `mma.h`),
/// and the options CubeCL's runtime passes. NVRTC's log is the error. NVRTC
/// is loaded at the first call from the library path (`libnvrtc.so.13` or
/// another version CubeCL's CUDA build accepts); it panics where none is
/// found.
pub fn nvrtc_ptx(
    source: &CudaKernelSource,
    arch: CudaArch,
    include: &std::path::Path,
) -> Result<String, String> {
    let code = CString::new(source.source.as_str())
        .map_err(|_| format!("{}: the source holds a NUL byte", source.label))?;
    let target = format!("--gpu-architecture={}", arch.nvrtc_target());
    let include = format!("--include-path={}", include.display());
    let options = [target.as_str(), include.as_str(), "-lineinfo"];
    // SAFETY: NVRTC's C API through cudarc: the program is created from a
    // NUL-terminated source that outlives it and is read back before it is
    // destroyed.
    unsafe {
        let program = cudarc::nvrtc::result::create_program(code.as_c_str(), None)
            .map_err(|err| format!("{}: NVRTC refused the program: {err:?}", source.label))?;
        let compiled = cudarc::nvrtc::result::compile_program(program, &options);
        let result = match compiled {
            Ok(()) => cudarc::nvrtc::result::get_ptx(program)
                .map(|ptx| CStr::from_ptr(ptx.as_ptr()).to_string_lossy().into_owned())
                .map_err(|err| format!("{}: NVRTC gave no PTX: {err:?}", source.label)),
            Err(_) => {
                let log = cudarc::nvrtc::result::get_program_log(program)
                    .map(|log| CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_else(|err| format!("(no log: {err:?})"));
                Err(format!(
                    "{} does not compile for {}:\n{log}",
                    source.label,
                    arch.nvrtc_target()
                ))
            }
        };
        let _ = cudarc::nvrtc::result::destroy_program(program);
        result
    }
}
