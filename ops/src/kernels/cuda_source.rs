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
//! CubeCL's CUDA compiler (`cuda_capture`) with the options its runtime
//! sets for the target architecture. [`nvrtc_ptx`] compiles the source with
//! NVRTC (loaded at run time, as the CUDA runtime loads it), which needs no
//! device either. `scripts/gpu/cuda_compile_check.sh` installs NVRTC and
//! the headers, runs `tests/kernels_cuda_source.rs`, and reads the
//! registers and spills off `ptxas`.
//!
//! Where this differs from a launch on a GPU: the expansion sees lavapipe's
//! device properties instead of the GPU's. The kernels here read none of
//! them (their plans and plane width are arguments and constants).

pub use super::cuda_capture::{CudaArch, CudaKernelSource};

use super::attention_cube::{TILE_GRADIENTS, TILE_OPERANDS};
use super::attention_tiles_cube::{TilePlan, forward_cuda_source, saturating_cast_cuda_source};
use super::attention_tiles_cube_backward::{BackwardTilePlan, backward_cuda_sources};
use super::matmul_parts_cube::side_by_side_cuda_source;
use super::rows_cube::bf16_writers_cuda_source;
use burn::tensor::DType;
use std::ffi::{CStr, CString};

/// The tensor-core attention kernels for head size `d`, as CUDA C++ for
/// `arch`: the forward under `forward` for inference and for training (the
/// latter writes the log-sum-exp), each writing its output in f32 and in
/// bf16 (as `o_proj`'s rounded operand), then the backward's `dq` and
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
    let mut sources = Vec::new();
    for with_lse in [false, true] {
        for out in [DType::F32, DType::BF16] {
            sources.push(forward_cuda_source(
                d,
                forward,
                [TILE_OPERANDS, out],
                with_lse,
                arch,
            )?);
        }
    }
    sources.extend(backward_cuda_sources(d, backward, operands, arch)?);
    Ok(sources)
}

/// The element-wise kernels that run only on CUDA in their 16-bit types,
/// as CUDA C++ for `arch`: the attention operands' cast to f16 and bf16,
/// the two-part product's operands in bf16 (its parts and its stacked
/// weight), RMSNorm and SwiGLU writing the products' bf16 operands
/// (rounded, and in two parts), and the rotary embedding writing
/// attention's f16 and bf16 operands, each in vectors of 1 and 4. On
/// lavapipe they run in f16 at most.
pub fn sixteen_bit_sources(arch: CudaArch) -> Result<Vec<CudaKernelSource>, String> {
    let mut sources = Vec::new();
    for dtype in [DType::F16, DType::BF16] {
        sources.push(saturating_cast_cuda_source(dtype, arch)?);
    }
    for width in [1, 4] {
        for split in [true, false] {
            sources.push(side_by_side_cuda_source(DType::BF16, width, split, arch)?);
        }
        sources.extend(bf16_writers_cuda_source(width, arch)?);
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
