//! Pieces the CubeCL kernels share: a shared-memory tree sum, a one-cube
//! sum kernel, and the
//! host-side choices of cube size, vector width and output buffers.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// `smem[base + lane * spacing] += smem[base + (lane + stride) * spacing]`
/// for strides `2^(levels-1) .. 1`, on `active` units: the sum of `2^levels`
/// slots ends in lane 0. Every unit of the cube must call it (it holds the
/// barriers; a barrier inside a runtime loop miscompiles, so the loop is
/// unrolled at compile time).
#[cube]
pub fn tree_sum_scalars(
    smem: &mut SharedMemory<f32>,
    lane: u32,
    base: u32,
    spacing: u32,
    active: bool,
    #[comptime] levels: u32,
) {
    #[unroll]
    for level in 0..levels {
        let stride = 1u32 << (levels - 1 - level);
        if active && lane < stride {
            let here = (base + lane * spacing) as usize;
            let there = (base + (lane + stride) * spacing) as usize;
            smem[here] = smem[here] + smem[there];
        }
        sync_cube();
    }
}

/// One cube of `2^levels` units: `out[0] = sum(values[..count])`, or
/// `out[0] += ...` when `accumulate`.
#[cube(launch)]
pub fn sum_to_first(
    values: &Tensor<f32>,
    out: &mut Tensor<f32>,
    count: u32,
    #[comptime] accumulate: bool,
    #[comptime] levels: u32,
) {
    let mut sum = f32::new(0.0);
    let mut i = UNIT_POS_X;
    while i < count {
        sum += values[i as usize];
        i += CUBE_DIM_X;
    }
    let mut smem = SharedMemory::<f32>::new(comptime!((1u32 << levels) as usize));
    smem[UNIT_POS_X as usize] = sum;
    sync_cube();
    tree_sum_scalars(&mut smem, UNIT_POS_X, 0, 1, true, levels);
    if UNIT_POS_X == 0 {
        if accumulate {
            out[0] = out[0] + smem[0];
        } else {
            out[0] = smem[0];
        }
    }
}

/// Largest power of two `<= n` (n >= 1).
pub fn floor_pow2(n: u32) -> u32 {
    1 << (31 - n.max(1).leading_zeros())
}

/// The widest vector the runtime loads well for `dtype` (and for f32
/// results) that divides `len`, the length of the contiguous dimension.
pub fn vector_width<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType, len: usize) -> usize {
    client
        .io_optimized_vector_sizes(dtype.size().max(4))
        .filter(|w| len.is_multiple_of(*w))
        .max()
        .unwrap_or(1)
}

/// An uninitialized contiguous f32 tensor on `like`'s device.
pub fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}
