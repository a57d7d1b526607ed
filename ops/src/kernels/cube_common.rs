//! Pieces the CubeCL kernels share: a shared-memory tree sum, a one-cube
//! sum kernel, a unit's index in a grid of rows, and the host-side choices
//! of cube size, grid, vector width and buffers.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, zeros_client};
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

/// Units of a 1-D cube: the largest power of two up to `wanted` that the
/// device allows.
pub fn units_per_cube<R: CubeRuntime>(client: &ComputeClient<R>, wanted: u32) -> u32 {
    let hardware = &client.properties().hardware;
    floor_pow2(
        wanted
            .min(hardware.max_units_per_cube)
            .min(hardware.max_cube_dim.0),
    )
}

/// A 1-D grid-strided launch over `items`: `(cubes, units per cube)`, at
/// most `max_cubes` cubes of up to `units` units (its units loop over the
/// rest), at least one cube.
pub fn strided_grid<R: CubeRuntime>(
    client: &ComputeClient<R>,
    items: usize,
    units: u32,
    max_cubes: u32,
) -> (u32, u32) {
    let cube = units_per_cube(client, units);
    let cubes = (items.div_ceil(cube as usize) as u32)
        .clamp(1, max_cubes)
        .min(client.properties().hardware.max_cube_count.0);
    (cubes, cube)
}

/// One launch's grid over several tensors, each with its own run of
/// cubes: tensor `t` of `vectors[t]` vectors gets `cubes[t]` cubes (a
/// [`strided_grid`] of at most `max_cubes` cubes of `units`), numbered
/// from `first[t]`; `total` cubes in all.
pub struct CubeRuns {
    pub cubes: Vec<u32>,
    pub first: Vec<u32>,
    pub total: u32,
}

pub fn cube_runs<R: CubeRuntime>(
    client: &ComputeClient<R>,
    vectors: &[u32],
    units: u32,
    max_cubes: u32,
) -> CubeRuns {
    let cubes: Vec<u32> = vectors
        .iter()
        .map(|&n| strided_grid(client, n as usize, units, max_cubes).0)
        .collect();
    let mut first = Vec::with_capacity(cubes.len());
    let mut total = 0;
    for &c in &cubes {
        first.push(total);
        total += c;
    }
    CubeRuns {
        cubes,
        first,
        total,
    }
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

/// How many items (tensors, or groups of tensors) one launch can take:
/// `wanted`, or fewer where the device binds fewer buffers, at least one.
/// Each item takes `bindings_per_item` buffers, and the launch `shared`
/// more plus CubeCL's metadata buffer.
pub fn items_per_launch<R: CubeRuntime>(
    client: &ComputeClient<R>,
    wanted: usize,
    bindings_per_item: usize,
    shared: usize,
) -> usize {
    let bindings = client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(shared + 1) / bindings_per_item)
        .min(wanted)
        .max(1)
}

/// `items` in launches of at most `per_launch`, each of one vector width
/// ([`vector_width`] of the item's length in elements, `len`): `(width,
/// items)` per launch, the items in their order within each width.
pub fn group_by_width<R: CubeRuntime, T>(
    client: &ComputeClient<R>,
    items: Vec<T>,
    len: impl Fn(&T) -> usize,
    per_launch: usize,
) -> Vec<(usize, Vec<T>)> {
    let mut by_width: Vec<(usize, Vec<T>)> = Vec::new();
    for item in items {
        let width = vector_width(client, DType::F32, len(&item));
        match by_width.iter_mut().find(|(w, _)| *w == width) {
            Some((_, list)) => list.push(item),
            None => by_width.push((width, vec![item])),
        }
    }
    let mut launches = Vec::new();
    for (width, list) in by_width {
        let mut list = list.into_iter().peekable();
        while list.peek().is_some() {
            launches.push((width, list.by_ref().take(per_launch.max(1)).collect()));
        }
    }
    launches
}

/// An uninitialized contiguous f32 tensor on `like`'s device.
pub fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// The sum of a vector's lanes.
#[cube]
pub fn lane_sum<N: Size>(v: Vector<f32, N>) -> f32 {
    let mut s = f32::new(0.0);
    #[unroll]
    for lane in 0..N::value() {
        s += v[lane];
    }
    s
}

/// The dot product of `d_vectors` vectors held in registers (`row`) and
/// the same number stored at `t[at..]`.
#[cube]
pub fn dot_registers<N: Size>(
    row: &Array<Vector<f32, N>>,
    t: &Tensor<Vector<f32, N>>,
    at: usize,
    #[comptime] d_vectors: usize,
) -> f32 {
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    #[unroll]
    for i in 0..d_vectors {
        acc += row[i] * t[at + i];
    }
    lane_sum(acc)
}

/// An all-zero contiguous f32 tensor on `like`'s device.
pub fn zeros_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    zeros_client(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// `t` as a contiguous f32 tensor (cast and copied only where needed).
pub fn f32_contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = if t.dtype == DType::F32 {
        t
    } else {
        cast(t, DType::F32)
    };
    into_contiguous(t)
}

/// `t` (f32) cast to `dtype`, for a result in its input's dtype.
pub fn to_dtype<R: CubeRuntime>(t: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    if t.dtype == dtype { t } else { cast(t, dtype) }
}

/// Units per cube of the kernels with one unit per row (the attention's):
/// enough to fill a warp twice over, few enough that the rows of a cube
/// (consecutive positions of one head) share their cache lines.
pub const ROW_UNITS: u32 = 64;

/// This unit's index in a [`row_grid`]: one unit per row.
#[cube]
pub fn row_unit() -> u32 {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X
}

/// A 2-D grid of 1-D cubes of at most `units` units (a power of
/// two the device allows) with one unit per row, for `rows` rows. Panics
/// when the rows exceed the device's grid.
pub fn row_grid<R: CubeRuntime>(
    client: &ComputeClient<R>,
    rows: usize,
    units: u32,
    what: &str,
) -> (CubeCount, CubeDim) {
    let cube = units_per_cube(client, units);
    let cubes = rows.div_ceil(cube as usize);
    (cube_grid(client, cubes, what), CubeDim::new_1d(cube))
}

/// A 2-D grid of at least `cubes` cubes, x first: the cube's index is
/// `CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X` (cubes past `cubes` have no
/// work). Panics when the cubes exceed the device's grid.
pub fn cube_grid<R: CubeRuntime>(client: &ComputeClient<R>, cubes: usize, what: &str) -> CubeCount {
    let hardware = &client.properties().hardware;
    let cubes = u32::try_from(cubes).unwrap_or(u32::MAX);
    let grid_x = cubes.min(hardware.max_cube_count.0);
    let grid_y = cubes.div_ceil(grid_x.max(1));
    assert!(
        grid_y <= hardware.max_cube_count.1,
        "{what} over {cubes} cubes exceeds the device's grid"
    );
    CubeCount::Static(grid_x, grid_y, 1)
}
