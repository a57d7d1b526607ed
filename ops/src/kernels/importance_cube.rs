//! The importance reductions as CubeCL kernels: [`ImportanceOps`] for every
//! `CubeBackend<R, ..>` (Burn's `Wgpu` and `Cuda` without its `fusion`
//! feature). Inputs in any float dtype are read as they are and summed in
//! f32; accumulators are f32 and updated in place when owned.
//!
//! Portability (DESIGN.md, Compute): every `sync_cube` sits in straight-line
//! code or in a loop unrolled at compile time (the cube's y or x extent is a
//! comptime power of two); the runtime loops hold no barrier. No plane ops.
//! The vector width and the cube size come from the runtime's properties.

use super::cube_common::{empty_f32, floor_pow2, sum_to_first, tree_sum_scalars, vector_width};
use super::importance::{Aggregation, ImportanceOps};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// Rows of the sequence each unit sums before the cube reduces (channel
/// statistics): sets how many cubes split a long sequence.
const ROWS_PER_UNIT: usize = 16;
/// Most units per cube these kernels ask for.
const MAX_UNITS: u32 = 256;

// Sequence aggregations, as comptime codes.
const MEAN: u32 = 0;
const L2: u32 = 1;
const VAR: u32 = 2;

fn agg_code(agg: Aggregation) -> u32 {
    match agg {
        Aggregation::Mean => MEAN,
        Aggregation::L2 => L2,
        Aggregation::Var => VAR,
    }
}

/// `smem[base + lane * spacing] += smem[base + (lane + stride) * spacing]`
/// for strides `2^(levels-1) .. 1`: the sum of `2^levels` slots ends in
/// lane 0. Every unit of the cube must call it (it holds the barriers);
/// `active` says whether this unit's lane takes part.
#[cube]
fn tree_sum_vectors<N: Size>(
    smem: &mut SharedMemory<Vector<f32, N>>,
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

/// Channel statistics, pass 1: partial sequence sums.
///
/// `x` `[B, S, C]` (C contiguous), read as vectors of `N` channels.
/// Cube `(i, b, k)` covers channel vectors `i * cube_x ..` of batch row `b`
/// and sequence rows `k * rows_per_split ..`; its units split those rows by
/// `UNIT_POS_Y`, then the cube sums over y. Writes `p1[k, b, :]` (and
/// `p2[k, b, :]` for var): mean `sum |x|`, l2 `sum x^2`, var `sum d` and
/// `sum d^2` with `d = x - x[b, 0, c]`.
#[cube(launch)]
fn seq_partial_sums<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    p1: &mut Tensor<Vector<f32, N>>,
    p2: &mut Tensor<Vector<f32, N>>,
    channel_vectors: u32,
    rows_per_split: u32,
    #[comptime] agg: u32,
    #[comptime] cube_x: u32,
    #[comptime] levels_y: u32,
    #[define(F)] _dtype: StorageType,
) {
    let width = N::value();
    let cv = CUBE_POS_X * cube_x + UNIT_POS_X;
    let b = CUBE_POS_Y as usize;
    let split = CUBE_POS_Z as usize;
    let batch = CUBE_COUNT_Y as usize;
    let seq = x.shape(1);
    let begin = split * rows_per_split as usize;
    let end = min(begin + rows_per_split as usize, seq);
    let live = cv < channel_vectors;

    let zero = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut acc1 = zero;
    let mut acc2 = zero;
    if live {
        let row = b * x.stride(0) + cv as usize * width;
        let step = x.stride(1);
        let shift = Vector::<f32, N>::cast_from(x[row / width]);
        let mut s = begin + UNIT_POS_Y as usize;
        while s < end {
            let v = Vector::<f32, N>::cast_from(x[(row + s * step) / width]);
            if comptime!(agg == MEAN) {
                acc1 += Vector::abs(v);
            } else if comptime!(agg == L2) {
                acc1 += v * v;
            } else {
                let d = v - shift;
                acc1 += d;
                acc2 += d * d;
            }
            s += CUBE_DIM_Y as usize;
        }
    }

    let units = comptime!((cube_x << levels_y) as usize);
    let mut smem1 = SharedMemory::<Vector<f32, N>>::new(units);
    let mut smem2 = SharedMemory::<Vector<f32, N>>::new(units);
    let slot = (UNIT_POS_Y * cube_x + UNIT_POS_X) as usize;
    smem1[slot] = acc1;
    smem2[slot] = acc2;
    sync_cube();
    tree_sum_vectors::<N>(&mut smem1, UNIT_POS_Y, UNIT_POS_X, cube_x, true, levels_y);
    if comptime!(agg == VAR) {
        tree_sum_vectors::<N>(&mut smem2, UNIT_POS_Y, UNIT_POS_X, cube_x, true, levels_y);
    }

    if live && UNIT_POS_Y == 0 {
        let out = (split * batch + b) * channel_vectors as usize + cv as usize;
        p1[out] = smem1[UNIT_POS_X as usize];
        if comptime!(agg == VAR) {
            p2[out] = smem2[UNIT_POS_X as usize];
        }
    }
}

/// Channel statistics, pass 2: per channel vector, sum the partials of each
/// batch row, take its sequence aggregate `a`, and add `sum_b a` to `s1`,
/// `sum_b a^2` to `s2` (both `[C]`, contiguous).
#[cube(launch)]
fn accumulate_rows<N: Size>(
    p1: &Tensor<Vector<f32, N>>,
    p2: &Tensor<Vector<f32, N>>,
    s1: &mut Tensor<Vector<f32, N>>,
    s2: &mut Tensor<Vector<f32, N>>,
    channel_vectors: u32,
    batch: u32,
    splits: u32,
    seq: f32,
    #[comptime] agg: u32,
) {
    let cv = ABSOLUTE_POS_X;
    if cv >= channel_vectors {
        terminate!();
    }
    let zero = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let n = Vector::<f32, N>::empty().fill(seq);
    let mut t1 = zero;
    let mut t2 = zero;
    for b in 0..batch {
        let mut q1 = zero;
        let mut q2 = zero;
        for k in 0..splits {
            let at = ((k * batch + b) * channel_vectors + cv) as usize;
            q1 += p1[at];
            if comptime!(agg == VAR) {
                q2 += p2[at];
            }
        }
        let a = if comptime!(agg == MEAN) {
            q1 / n
        } else if comptime!(agg == L2) {
            Vector::sqrt(q1)
        } else {
            let mean = q1 / n;
            max(q2 / n - mean * mean, zero)
        };
        t1 += a;
        t2 += a * a;
    }
    let cv = cv as usize;
    s1[cv] = s1[cv] + t1;
    s2[cv] = s2[cv] + t2;
}

/// Block importance, pass 1: `1 - cos` of rows, summed per cube.
///
/// `u`, `v` `[rows, C]` contiguous, read as vectors of `N`. Unit `(x, y)` of
/// cube `k` sums its lanes' share of row `k * cube_y + y`; the cube sums
/// over x (dot, |u|^2, |v|^2 of the row), lane 0 takes the row's distance
/// (0 when both are zero, the norms' product floored at 1e-8), then the cube
/// sums over y into `partial[k]`.
#[cube(launch)]
fn cosine_rows<F: Float, N: Size>(
    u: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    partial: &mut Tensor<f32>,
    rows: u32,
    channel_vectors: u32,
    #[comptime] levels_x: u32,
    #[comptime] levels_y: u32,
    #[define(F)] _dtype: StorageType,
) {
    let cube_x = comptime!(1u32 << levels_x);
    let cube = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    let row = cube * CUBE_DIM_Y + UNIT_POS_Y;
    let live = row < rows;

    let zero = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut dot = zero;
    let mut uu = zero;
    let mut vv = zero;
    if live {
        let base = row as usize * channel_vectors as usize;
        let mut k = UNIT_POS_X as usize;
        while k < channel_vectors as usize {
            let a = Vector::<f32, N>::cast_from(u[base + k]);
            let b = Vector::<f32, N>::cast_from(v[base + k]);
            dot += a * b;
            uu += a * a;
            vv += b * b;
            k += cube_x as usize;
        }
    }
    let mut dot_s = f32::new(0.0);
    let mut uu_s = f32::new(0.0);
    let mut vv_s = f32::new(0.0);
    #[unroll]
    for l in 0..N::value() {
        dot_s += dot[l];
        uu_s += uu[l];
        vv_s += vv[l];
    }

    let units = comptime!((1u32 << (levels_x + levels_y)) as usize);
    let mut smem_dot = SharedMemory::<f32>::new(units);
    let mut smem_uu = SharedMemory::<f32>::new(units);
    let mut smem_vv = SharedMemory::<f32>::new(units);
    let mut smem_row = SharedMemory::<f32>::new(comptime!((1u32 << levels_y) as usize));
    let row_base = UNIT_POS_Y * cube_x;
    let slot = (row_base + UNIT_POS_X) as usize;
    smem_dot[slot] = dot_s;
    smem_uu[slot] = uu_s;
    smem_vv[slot] = vv_s;
    sync_cube();
    tree_sum_scalars(&mut smem_dot, UNIT_POS_X, row_base, 1, true, levels_x);
    tree_sum_scalars(&mut smem_uu, UNIT_POS_X, row_base, 1, true, levels_x);
    tree_sum_scalars(&mut smem_vv, UNIT_POS_X, row_base, 1, true, levels_x);

    if UNIT_POS_X == 0 {
        let mut distance = f32::new(0.0);
        let d = smem_dot[row_base as usize];
        let a = smem_uu[row_base as usize];
        let b = smem_vv[row_base as usize];
        if live && (a != f32::new(0.0) || b != f32::new(0.0)) {
            let norms = max(f32::sqrt(a) * f32::sqrt(b), f32::new(1e-8));
            distance = f32::new(1.0) - d / norms;
        }
        smem_row[UNIT_POS_Y as usize] = distance;
    }
    sync_cube();
    tree_sum_scalars(&mut smem_row, UNIT_POS_Y, 0, 1, UNIT_POS_X == 0, levels_y);
    if UNIT_POS_X == 0 && UNIT_POS_Y == 0 {
        partial[cube as usize] = smem_row[0];
    }
}

/// Units per cube these kernels may use on this device (a power of two).
fn max_units<R: CubeRuntime>(client: &ComputeClient<R>) -> u32 {
    floor_pow2(
        client
            .properties()
            .hardware
            .max_units_per_cube
            .min(MAX_UNITS),
    )
}

/// An f32, contiguous accumulator this call may write in place (a copy when
/// it is shared).
fn owned_f32<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = if t.dtype == DType::F32 {
        t
    } else {
        cast(t, DType::F32)
    };
    let t = into_contiguous(t);
    if t.can_mut() && t.is_contiguous_buffer() {
        t
    } else {
        t.copy()
    }
}

fn channel_stats<R: CubeRuntime>(
    x: CubeTensor<R>,
    seq_agg: Aggregation,
    s1: CubeTensor<R>,
    s2: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let x = into_contiguous(x);
    let [batch, seq, channels]: [usize; 3] = x.shape().dims();
    let (s1, s2) = (owned_f32(s1), owned_f32(s2));
    if batch == 0 || seq == 0 || channels == 0 {
        return (s1, s2);
    }
    let client = x.client.clone();
    let hardware = &client.properties().hardware;
    let width = vector_width(&client, x.dtype, channels);
    let channel_vectors = channels / width;

    // Cube: x over channel vectors (coalesced), y over sequence rows.
    let units = max_units(&client);
    let cube_x = (channel_vectors as u32)
        .next_power_of_two()
        .min(32)
        .min(floor_pow2(hardware.max_cube_dim.0))
        .min(units);
    let cube_y = floor_pow2((units / cube_x).min(hardware.max_cube_dim.1))
        .min((seq as u32).next_power_of_two());
    let levels_y = cube_y.trailing_zeros();
    let rows_per_split = cube_y as usize * ROWS_PER_UNIT;
    let splits = seq.div_ceil(rows_per_split);
    let (grid_x, grid_y, grid_z) = (
        channel_vectors.div_ceil(cube_x as usize) as u32,
        batch as u32,
        splits as u32,
    );
    let max = hardware.max_cube_count;
    assert!(
        grid_x <= max.0 && grid_y <= max.1 && grid_z <= max.2,
        "channel statistics of [{batch}, {seq}, {channels}] exceed the device's grid {max:?}"
    );

    let var = seq_agg == Aggregation::Var;
    let partial_shape = Shape::new([splits, batch, channels]);
    let p1 = empty_f32(&x, partial_shape.clone());
    let p2 = if var {
        empty_f32(&x, partial_shape)
    } else {
        empty_f32(&x, Shape::new([width]))
    };
    let dtype = x.dtype;
    seq_partial_sums::launch::<R>(
        &client,
        CubeCount::Static(grid_x, grid_y, grid_z),
        CubeDim::new_2d(cube_x, cube_y),
        width,
        x.into_tensor_arg(),
        p1.clone().into_tensor_arg(),
        p2.clone().into_tensor_arg(),
        channel_vectors as u32,
        rows_per_split as u32,
        agg_code(seq_agg),
        cube_x,
        levels_y,
        dtype.into(),
    );

    let cube = units.min(floor_pow2(hardware.max_cube_dim.0));
    accumulate_rows::launch::<R>(
        &client,
        CubeCount::new_1d(channel_vectors.div_ceil(cube as usize) as u32),
        CubeDim::new_1d(cube),
        width,
        p1.into_tensor_arg(),
        p2.into_tensor_arg(),
        s1.clone().into_tensor_arg(),
        s2.clone().into_tensor_arg(),
        channel_vectors as u32,
        batch as u32,
        splits as u32,
        seq as f32,
        agg_code(seq_agg),
    );
    (s1, s2)
}

fn cosine_distance<R: CubeRuntime>(
    h_in: CubeTensor<R>,
    h_out: CubeTensor<R>,
    acc: CubeTensor<R>,
) -> CubeTensor<R> {
    let acc = owned_f32(acc);
    let (h_in, h_out) = if h_in.dtype == h_out.dtype {
        (h_in, h_out)
    } else {
        (cast(h_in, DType::F32), cast(h_out, DType::F32))
    };
    let (u, v) = (into_contiguous(h_in), into_contiguous(h_out));
    let [batch, seq, channels]: [usize; 3] = u.shape().dims();
    let rows = batch * seq;
    if rows == 0 || channels == 0 {
        // No tokens, or empty vectors (cos = 1): nothing to add.
        return acc;
    }
    let client = u.client.clone();
    let hardware = &client.properties().hardware;
    let width = vector_width(&client, u.dtype, channels);
    let channel_vectors = channels / width;

    // Cube: x across a row's channel vectors, y over rows.
    let units = max_units(&client);
    let cube_x = (channel_vectors as u32)
        .next_power_of_two()
        .min(32)
        .min(floor_pow2(hardware.max_cube_dim.0))
        .min(units);
    let cube_y = floor_pow2((units / cube_x).min(hardware.max_cube_dim.1))
        .min((rows as u32).next_power_of_two());
    let cubes = rows.div_ceil(cube_y as usize) as u32;
    let grid_x = cubes.min(hardware.max_cube_count.0);
    let grid_y = cubes.div_ceil(grid_x);
    let partial = empty_f32(&u, Shape::new([(grid_x * grid_y) as usize]));
    let dtype = u.dtype;
    cosine_rows::launch::<R>(
        &client,
        CubeCount::Static(grid_x, grid_y, 1),
        CubeDim::new_2d(cube_x, cube_y),
        width,
        u.into_tensor_arg(),
        v.into_tensor_arg(),
        partial.clone().into_tensor_arg(),
        rows as u32,
        channel_vectors as u32,
        cube_x.trailing_zeros(),
        cube_y.trailing_zeros(),
        dtype.into(),
    );

    let cube = units.min(floor_pow2(hardware.max_cube_dim.0));
    sum_to_first::launch::<R>(
        &client,
        CubeCount::new_single(),
        CubeDim::new_1d(cube),
        partial.into_tensor_arg(),
        acc.clone().into_tensor_arg(),
        grid_x * grid_y,
        true,
        cube.trailing_zeros(),
    );
    acc
}

impl<R, F, I, BT> ImportanceOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn channel_stats_accumulate(
        x: CubeTensor<R>,
        seq_agg: Aggregation,
        s1: CubeTensor<R>,
        s2: CubeTensor<R>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        channel_stats(x, seq_agg, s1, s2)
    }

    fn cosine_distance_accumulate(
        h_in: CubeTensor<R>,
        h_out: CubeTensor<R>,
        acc: CubeTensor<R>,
    ) -> CubeTensor<R> {
        cosine_distance(h_in, h_out, acc)
    }
}
