//! The causal grouped-query attention forward on matrix-multiply units:
//! scores and weighted values as 16 x 16 x 16 tile products with 16-bit
//! operands and f32 sums (tensor cores on CUDA), for the bf16 precision.
//!
//! A cube is `planes` planes of 32 units; it owns `16 planes` consecutive
//! queries of one head, a plane 16 of them. Key/value head `h / (heads /
//! kv_heads)` is read in place from the projections' `[batch, positions,
//! heads, d]` layout; nothing is repeated and no mask is made. Two passes
//! over the visible keys, a tile of `16 tile_frags` keys at a time:
//!
//! 1. the scores `S = Q K^T` of the tile go to shared memory, and each
//!    query's running max and sum of `exp(scale s - max)` are updated;
//!    the log-sum-exp `lse` follows (written out for the backward when
//!    asked for);
//! 2. the scores again, the weights `p = exp(scale s - lse)` (zero where
//!    masked) rounded to the operand type in shared memory, and `O += P V`
//!    in f32 accumulators that stay in registers.
//!
//! Computing the scores twice costs a third more products than the
//! one-pass online softmax, but the accumulators are never rescaled: a
//! `cmma` accumulator's values cannot be addressed by row. The products are
//! cheap on tensor cores; the passes over shared memory are not.
//!
//! Two kernels with one structure: [`attention_tiles`] on the `cmma`
//! instructions, and [`attention_tiles_emulated`] on their emulation in
//! shared memory (`mma_tiles_cube`), which the tests run on lavapipe. Every
//! offset, stride and step outside the products is shared code; the one
//! difference is that the emulation reads the plane's queries from `q` at
//! each product, where the `cmma` path keeps them in registers.
//!
//! Shapes: `seq` a multiple of `16 planes`, `keys` of `16 tile_frags`, `d`
//! of 16 and at most 128 ([`tile_plan`] says whether a call fits, and
//! picks the sizes).

use super::cube_common::{cube_grid, empty_f32, strided_grid};
use super::kd_cube_common::LOWEST;
use super::mma_tiles_cube::{
    PLANE_UNITS, TILE, TILE_VALUES, accumulate_products, emulated_accumulate_products,
    emulated_product_tile, emulated_store_rows, emulated_zero_accumulators, has_matrix_units,
    load_rows, product_tile, scratch, scratch_bytes, store_rows, zero_accumulators,
};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// The largest head size the kernels take: its fragments (queries and
/// accumulators, `d / 16` each) stay in registers.
pub const MAX_HEAD_DIM: usize = 128;

/// Where a cube's and a plane's work lies, from the launch's sizes.
#[derive(CubeType, Clone, Copy)]
pub(super) struct Place {
    /// The plane's first query, within the sequence.
    pub(super) first_row: u32,
    /// Offset of that query's head vector in `q` and `out`.
    pub(super) q_at: usize,
    /// Offset of key 0's vector of the key/value head in `k` and `v`.
    pub(super) kv_at: usize,
    /// Elements between consecutive positions in `q` (and `out`), and in
    /// `k` and `v`.
    pub(super) q_stride: usize,
    pub(super) kv_stride: usize,
    /// `keys - seq`: query `i` sees keys `..= past + i`.
    pub(super) past: u32,
    /// Key tiles the cube walks: enough for its last query.
    pub(super) tiles: u32,
    /// Offset of the plane's rows in the shared score and weight tiles.
    pub(super) tile_at: usize,
}

#[cube]
pub(super) fn place(
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] key_tile: usize,
) -> Place {
    let block = CUBE_POS_X;
    let h = CUBE_POS_Y;
    let b = CUBE_POS_Z;
    let plane = UNIT_POS_Y;
    let cube_rows = planes * TILE as u32;
    let first_row = block * cube_rows + plane * TILE as u32;
    let kv = h / (heads / kv_heads);
    let past = keys - seq;
    let last_row = block * cube_rows + cube_rows - 1;
    Place {
        first_row,
        q_at: (((b * seq + first_row) * heads + h) as usize) * d,
        kv_at: (((b * keys) * kv_heads + kv) as usize) * d,
        q_stride: heads as usize * d,
        kv_stride: kv_heads as usize * d,
        past,
        tiles: (past + last_row) / key_tile as u32 + 1,
        tile_at: plane as usize * TILE * key_tile,
    }
}

/// Pass 1, after a score tile is in `scores`: each of the plane's first 16
/// units folds its query's visible scores into the running max `row_max`
/// and sum `row_sum` (both per query, in shared memory).
#[cube]
fn fold_row_stats(
    scores: &SharedMemory<f32>,
    row_max: &mut SharedMemory<f32>,
    row_sum: &mut SharedMemory<f32>,
    at: &Place,
    tile: u32,
    scale: f32,
    #[comptime] key_tile: usize,
) {
    let r = UNIT_POS_X;
    if r < TILE as u32 {
        let row = UNIT_POS_Y as usize * TILE + r as usize;
        let horizon = at.past + at.first_row + r;
        let first_key = tile * key_tile as u32;
        let mut m = row_max[row];
        let mut l = row_sum[row];
        for c in 0..key_tile {
            if first_key + c as u32 <= horizon {
                let s = scores[at.tile_at + r as usize * key_tile + c] * scale;
                if s > m {
                    l *= f32::exp(m - s);
                    m = s;
                }
                l += f32::exp(s - m);
            }
        }
        row_max[row] = m;
        row_sum[row] = l;
    }
}

/// After pass 1: `row_lse = max + ln sum` for the plane's queries, and
/// written to `lse` when asked for.
#[cube]
fn finish_row_stats(
    row_max: &SharedMemory<f32>,
    row_sum: &SharedMemory<f32>,
    row_lse: &mut SharedMemory<f32>,
    lse: &mut Tensor<f32>,
    at: &Place,
    #[comptime] d: usize,
    #[comptime] with_lse: bool,
) {
    let r = UNIT_POS_X;
    if r < TILE as u32 {
        let row = UNIT_POS_Y as usize * TILE + r as usize;
        let value = row_max[row] + f32::ln(row_sum[row]);
        row_lse[row] = value;
        if comptime!(with_lse) {
            // `lse` is `[batch, seq, heads]`: the query's head vector index.
            lse[(at.q_at + r as usize * at.q_stride) / d] = value;
        }
    }
}

/// Pass 2, after a score tile is in `scores`: the plane's weights
/// `exp(scale s - lse)`, zero past each query's horizon, into `weights` in
/// the operand type.
#[cube]
fn write_weights<E: Float>(
    scores: &SharedMemory<f32>,
    weights: &mut SharedMemory<E>,
    row_lse: &SharedMemory<f32>,
    at: &Place,
    tile: u32,
    scale: f32,
    #[comptime] key_tile: usize,
) {
    let first_key = tile * key_tile as u32;
    let values = TILE * key_tile;
    let mut e = UNIT_POS_X as usize;
    while e < values {
        let r = e / key_tile;
        let c = e % key_tile;
        let mut p = f32::new(0.0);
        if first_key + c as u32 <= at.past + at.first_row + r as u32 {
            let lse = row_lse[UNIT_POS_Y as usize * TILE + r];
            p = f32::exp(scores[at.tile_at + e] * scale - lse);
        }
        weights[at.tile_at + e] = E::cast_from(p);
        e += PLANE_UNITS as usize;
    }
}

/// Both passes' shared memory besides the fragments: a score and a weight
/// tile per plane, and three values per query.
#[derive(CubeType)]
struct Stage<E: Float> {
    scores: SharedMemory<f32>,
    weights: SharedMemory<E>,
    row_max: SharedMemory<f32>,
    row_sum: SharedMemory<f32>,
    row_lse: SharedMemory<f32>,
}

#[cube]
fn stage<E: Float>(#[comptime] planes: u32, #[comptime] key_tile: usize) -> Stage<E> {
    let rows = comptime!(planes as usize * TILE);
    let mut row_max = SharedMemory::<f32>::new(rows);
    let mut row_sum = SharedMemory::<f32>::new(rows);
    if UNIT_POS_X < TILE as u32 {
        let row = UNIT_POS_Y as usize * TILE + UNIT_POS_X as usize;
        row_max[row] = f32::new(LOWEST);
        row_sum[row] = f32::new(0.0);
    }
    Stage::<E> {
        scores: SharedMemory::<f32>::new(rows * key_tile),
        weights: SharedMemory::<E>::new(rows * key_tile),
        row_max,
        row_sum,
        row_lse: SharedMemory::<f32>::new(rows),
    }
}

/// `out` and `lse` on the devices' matrix-multiply units (see the module
/// docs). `q: [batch, seq, heads, d]`, `k, v: [batch, keys, kv_heads, d]`
/// contiguous in `E`; `out: [batch, seq, heads, d]` in `O` (the f32 sums
/// rounded as they are stored) and `lse: [batch, seq, heads]` f32. Cube
/// `(query block, head, batch)` of `32 x planes` units.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles<E: Float, O: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    out: &mut Tensor<O>,
    lse: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] key_frags: usize,
    #[comptime] with_lse: bool,
    #[define(E, O)] _types: [StorageType; 2],
) {
    let key_tile = key_frags * TILE;
    let at = place(seq, keys, heads, kv_heads, d, planes, key_tile);
    let mut st = stage::<E>(planes, key_tile);
    // The plane's 16 queries, kept in registers for both passes.
    let query = load_rows::<E>(q, at.q_at, at.q_stride, d);
    sync_cube();

    for tile in 0..at.tiles {
        let first = tile as usize * key_tile;
        product_tile::<E>(
            &query,
            k,
            at.kv_at,
            at.kv_stride,
            first,
            &mut st.scores,
            at.tile_at,
            d,
            key_frags,
        );
        sync_cube();
        fold_row_stats(
            &st.scores,
            &mut st.row_max,
            &mut st.row_sum,
            &at,
            tile,
            scale,
            key_tile,
        );
        sync_cube();
    }
    finish_row_stats(
        &st.row_max,
        &st.row_sum,
        &mut st.row_lse,
        lse,
        &at,
        d,
        with_lse,
    );
    sync_cube();

    let acc = zero_accumulators(d);
    for tile in 0..at.tiles {
        let first = tile as usize * key_tile;
        product_tile::<E>(
            &query,
            k,
            at.kv_at,
            at.kv_stride,
            first,
            &mut st.scores,
            at.tile_at,
            d,
            key_frags,
        );
        sync_cube();
        write_weights::<E>(
            &st.scores,
            &mut st.weights,
            &st.row_lse,
            &at,
            tile,
            scale,
            key_tile,
        );
        sync_cube();
        accumulate_products::<E>(
            &st.weights,
            at.tile_at,
            v,
            at.kv_at,
            at.kv_stride,
            first,
            &acc,
            d,
            key_frags,
        );
        sync_cube();
    }
    store_rows(&acc, out, at.q_at, at.q_stride, d);
}

/// [`attention_tiles`] with every `cmma` step replaced by its emulation
/// (`mma_tiles_cube`), fragments in shared memory: the same result on any
/// device, for the tests.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles_emulated<E: Float, O: Float>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    out: &mut Tensor<O>,
    lse: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] key_frags: usize,
    #[comptime] with_lse: bool,
    #[define(E, O)] _types: [StorageType; 2],
) {
    let key_tile = key_frags * TILE;
    let at = place(seq, keys, heads, kv_heads, d, planes, key_tile);
    let mut st = stage::<E>(planes, key_tile);
    let mut scratch = scratch::<E>(planes);
    // Per plane: the accumulators, d / 16 fragments.
    let plane_values = comptime!(d / TILE * TILE_VALUES);
    let mut acc = SharedMemory::<f32>::new(comptime!(planes as usize * plane_values));
    let acc_at = UNIT_POS_Y as usize * plane_values;
    sync_cube();

    for tile in 0..at.tiles {
        let first = tile as usize * key_tile;
        emulated_product_tile::<E>(
            q,
            at.q_at,
            at.q_stride,
            k,
            at.kv_at,
            at.kv_stride,
            first,
            &mut scratch,
            &mut st.scores,
            at.tile_at,
            d,
            key_frags,
        );
        fold_row_stats(
            &st.scores,
            &mut st.row_max,
            &mut st.row_sum,
            &at,
            tile,
            scale,
            key_tile,
        );
        sync_cube();
    }
    finish_row_stats(
        &st.row_max,
        &st.row_sum,
        &mut st.row_lse,
        lse,
        &at,
        d,
        with_lse,
    );
    emulated_zero_accumulators(&mut acc, acc_at, d);
    sync_cube();

    for tile in 0..at.tiles {
        let first = tile as usize * key_tile;
        emulated_product_tile::<E>(
            q,
            at.q_at,
            at.q_stride,
            k,
            at.kv_at,
            at.kv_stride,
            first,
            &mut scratch,
            &mut st.scores,
            at.tile_at,
            d,
            key_frags,
        );
        write_weights::<E>(
            &st.scores,
            &mut st.weights,
            &st.row_lse,
            &at,
            tile,
            scale,
            key_tile,
        );
        sync_cube();
        emulated_accumulate_products::<E>(
            &st.weights,
            at.tile_at,
            v,
            at.kv_at,
            at.kv_stride,
            first,
            &mut scratch,
            &mut acc,
            acc_at,
            d,
            key_frags,
        );
    }
    emulated_store_rows(&acc, acc_at, out, at.q_at, at.q_stride, d);
}

/// Units per cube of the operands' cast, and most cubes per launch.
const CAST_UNITS: u32 = 256;
const CAST_MAX_CUBES: u32 = 8192;

/// `out[i] = E(x[i])`, clamped to `E`'s finite range: a value past it
/// becomes the largest one of its sign rather than an infinity (f16 ends at
/// 65,504), so that one outlier costs accuracy, not the whole row.
#[cube(launch)]
fn saturating_cast<E: Float>(
    x: &Tensor<f32>,
    out: &mut Tensor<E>,
    len: u32,
    #[define(E)] _dtype: StorageType,
) {
    let stride = CUBE_COUNT_Y * CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X;
    let largest = f32::cast_from(E::max_value());
    while i < len {
        let v = x[i as usize];
        out[i as usize] = E::cast_from(clamp(v, -largest, largest));
        i += stride;
    }
}

/// `t` as the products' contiguous operand in `dtype`: an f32 tensor
/// through [`saturating_cast`], any other one through Burn's cast.
pub(super) fn operands<R: CubeRuntime>(t: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    if t.dtype == dtype {
        return into_contiguous(t);
    }
    if t.dtype != DType::F32 {
        return into_contiguous(cast(t, dtype));
    }
    let t = into_contiguous(t);
    let client = t.client.clone();
    let len = t.shape().num_elements();
    let out = empty_device_contiguous_dtype(client.clone(), t.device.clone(), t.shape(), dtype);
    if len > 0 {
        let (cubes, cube) = strided_grid(&client, len, CAST_UNITS, CAST_MAX_CUBES);
        saturating_cast::launch::<R>(
            &client,
            cube_grid(&client, cubes as usize, "the attention operands' cast"),
            CubeDim::new_1d(cube),
            t.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            u32::try_from(len).expect("an attention operand of over 2^32 values"),
            dtype.into(),
        );
    }
    out
}

/// How a call is laid out: a cube owns `planes` planes of 16 rows (of
/// queries, or of keys in the backward's key/value kernel) and walks the
/// other side in tiles of `tile_frags` fragments of 16 rows; the products
/// run on matrix-multiply units or on their emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePlan {
    pub planes: u32,
    pub tile_frags: usize,
    pub matrix_units: bool,
}

/// Whether the tiles take `d` and these lengths: `d` a multiple of 16 up to
/// [`MAX_HEAD_DIM`], `seq` positive, both lengths multiples of 16.
pub(super) fn tiles_take(seq: usize, keys: usize, d: usize) -> bool {
    d > 0
        && d.is_multiple_of(TILE)
        && d <= MAX_HEAD_DIM
        && seq > 0
        && seq.is_multiple_of(TILE)
        && keys.is_multiple_of(TILE)
}

/// The largest plan (planes first, then tile length) for a cube owning
/// `own` rows and walking `walked`, whose shared memory,
/// `bytes(planes, tile_frags)`, is at most `limit` bytes.
pub(super) fn fit_plan(
    limit: usize,
    own: usize,
    walked: usize,
    matrix_units: bool,
    bytes: impl Fn(usize, usize) -> usize,
) -> Option<TilePlan> {
    // More rows per cube share each tile's loads; longer tiles take fewer
    // steps.
    for planes in [4usize, 2, 1] {
        if !own.is_multiple_of(TILE * planes) {
            continue;
        }
        for tile_frags in [4usize, 2, 1] {
            if walked.is_multiple_of(TILE * tile_frags) && bytes(planes, tile_frags) <= limit {
                return Some(TilePlan {
                    planes: planes as u32,
                    tile_frags,
                    matrix_units,
                });
            }
        }
    }
    None
}

/// The shared memory a cube of these kernels may take on `client`'s
/// device, in bytes.
pub(super) fn shared_memory_limit<R: CubeRuntime>(client: &ComputeClient<R>) -> usize {
    client.properties().hardware.max_shared_memory_size
}

/// The forward's plan for `q: [batch, seq, heads, d]` against `keys`
/// keys with operands in `dtype`, or `None` where the kernels do not apply
/// ([`tiles_take`]) or no plan fits the device's shared memory. With
/// `emulate` the products run on their emulation even where the device has
/// units.
pub fn tile_plan<R: CubeRuntime>(
    client: &ComputeClient<R>,
    seq: usize,
    keys: usize,
    d: usize,
    dtype: DType,
    emulate: bool,
) -> Option<TilePlan> {
    let matrix_units = !emulate && has_matrix_units(client, dtype);
    tile_plan_within(
        shared_memory_limit(client),
        seq,
        keys,
        d,
        dtype,
        matrix_units,
    )
}

/// [`tile_plan`] for a device whose cubes may take `limit` bytes of shared
/// memory, with the products on matrix-multiply units or not.
pub fn tile_plan_within(
    limit: usize,
    seq: usize,
    keys: usize,
    d: usize,
    dtype: DType,
    matrix_units: bool,
) -> Option<TilePlan> {
    if !tiles_take(seq, keys, d) {
        return None;
    }
    let operand = dtype.size();
    fit_plan(limit, seq, keys, matrix_units, |planes, tile_frags| {
        let rows = planes * TILE;
        // A score and a weight tile, and three values per query.
        let mut bytes = rows * TILE * tile_frags * (4 + operand) + rows * 3 * 4;
        if !matrix_units {
            // The emulation's accumulators and scratch.
            bytes += planes * (d / TILE * TILE_VALUES * 4 + scratch_bytes(operand));
        }
        bytes
    })
}

/// The forward of [`super::attention::AttentionOps::causal_attention`]
/// with the products' operands rounded to `dtype` (bf16 on CUDA; f16 and
/// f32 run too), as `plan` lays it out: the output `[batch, seq, heads, d]`
/// in `out_dtype` (its f32 sums rounded as they are stored, as a cast of
/// the f32 output would round them) and, when `with_lse`, the log-sum-exp
/// `[batch, seq, heads]`. The shapes must have been checked as
/// [`super::causal_attention`] does, and the plan made by [`tile_plan`]
/// for them.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_tiles<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: f32,
    with_lse: bool,
    dtype: DType,
    out_dtype: DType,
    plan: TilePlan,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let [batch, seq, heads, d]: [usize; 4] = q.shape().dims();
    let [_, keys, kv_heads, _]: [usize; 4] = k.shape().dims();
    let (q, k, v) = (operands(q, dtype), operands(k, dtype), operands(v, dtype));
    let out = empty_device_contiguous_dtype(
        q.client.clone(),
        q.device.clone(),
        Shape::new([batch, seq, heads, d]),
        out_dtype,
    );
    let lse = empty_f32(&q, Shape::new([batch, seq, heads]));
    if batch > 0 && heads > 0 {
        let client = q.client.clone();
        let count = CubeCount::Static(
            (seq / (TILE * plan.planes as usize)) as u32,
            heads as u32,
            batch as u32,
        );
        let dim = CubeDim::new_2d(PLANE_UNITS, plan.planes);
        // One argument list for both kernels, which share their signature.
        macro_rules! launch {
            ($kernel:ident) => {
                $kernel::launch::<R>(
                    &client,
                    count,
                    dim,
                    q.into_tensor_arg(),
                    k.into_tensor_arg(),
                    v.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    lse.clone().into_tensor_arg(),
                    seq as u32,
                    keys as u32,
                    heads as u32,
                    kv_heads as u32,
                    scale,
                    d,
                    plan.planes,
                    plan.tile_frags,
                    with_lse,
                    [dtype.into(), out_dtype.into()],
                )
            };
        }
        if plan.matrix_units {
            launch!(attention_tiles);
        } else {
            launch!(attention_tiles_emulated);
        }
    }
    (out, with_lse.then_some(lse))
}

/// The forward's `cmma` kernel for `plan`, head size `d`, operands in
/// `dtype` and the output in `out_dtype`, writing the log-sum-exp
/// (training) or not (inference) as `with_lse` says, as CUDA C++ for
/// `arch` (`kernels::cuda_source`). The lengths and head counts are launch
/// values the source does not depend on.
#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub(super) fn forward_cuda_source(
    d: usize,
    plan: TilePlan,
    [dtype, out_dtype]: [DType; 2],
    with_lse: bool,
    arch: super::cuda_capture::CudaArch,
) -> Result<super::cuda_capture::CudaKernelSource, String> {
    use super::cuda_capture::{Capture, compile_for_cuda};
    use attention_tiles::{_E, _O, AttentionTiles, E, O};
    let types: [StorageType; 2] = [dtype.into(), out_dtype.into()];
    let dim = CubeDim::new_2d(PLANE_UNITS, plan.planes);
    let mut at = Capture::new(dim, |scope| {
        scope.register_type::<DynamicScalar<_E>>(types[0]);
        scope.register_type::<DynamicScalar<_O>>(types[1]);
    });
    let (seq, heads, kv_heads) = (64usize, 3usize, 1usize);
    let q_shape = [1, seq, heads, d];
    let kv_shape = [1, seq, kv_heads, d];
    let q = at.tensor::<Tensor<E>>(&q_shape);
    let k = at.tensor::<Tensor<E>>(&kv_shape);
    let v = at.tensor::<Tensor<E>>(&kv_shape);
    let out = at.tensor::<Tensor<O>>(&q_shape);
    let lse = at.tensor::<Tensor<f32>>(&q_shape[..3]);
    let kernel = AttentionTiles::<cubecl::wgpu::WgpuRuntime>::new(
        at.settings.clone(),
        at.client.clone(),
        q,
        k,
        v,
        out,
        lse,
        // seq, keys, heads, kv_heads, scale: scalars have no compilation
        // argument.
        (),
        (),
        (),
        (),
        (),
        d,
        plan.planes,
        plan.tile_frags,
        with_lse,
        types,
    );
    let lse = if with_lse { " lse" } else { "" };
    let label = format!(
        "attention_tiles {dtype:?} d{d} planes{} frags{}{lse} out {out_dtype:?}",
        plan.planes, plan.tile_frags
    );
    compile_for_cuda(label, kernel, arch)
}

/// [`saturating_cast`] to `dtype`, as CUDA C++ for `arch`
/// (`kernels::cuda_source`).
#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub(super) fn saturating_cast_cuda_source(
    dtype: DType,
    arch: super::cuda_capture::CudaArch,
) -> Result<super::cuda_capture::CudaKernelSource, String> {
    use super::cuda_capture::{Capture, compile_for_cuda};
    use saturating_cast::{_E, E, SaturatingCast};
    let operand: StorageType = dtype.into();
    let mut at = Capture::new(CubeDim::new_1d(CAST_UNITS), |scope| {
        scope.register_type::<DynamicScalar<_E>>(operand)
    });
    let x = at.tensor::<Tensor<f32>>(&[256]);
    let out = at.tensor::<Tensor<E>>(&[256]);
    let kernel = SaturatingCast::<cubecl::wgpu::WgpuRuntime>::new(
        at.settings.clone(),
        at.client.clone(),
        x,
        out,
        (), // len: scalars have no compilation argument
        operand,
    );
    compile_for_cuda(format!("saturating_cast {dtype:?}"), kernel, arch)
}
