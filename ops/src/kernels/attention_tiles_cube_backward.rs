//! The causal grouped-query attention backward on matrix-multiply units,
//! the twin of `attention_tiles_cube`'s forward: FlashAttention-2's
//! backward from the forward's log-sum-exp, its products as 16 x 16 x 16
//! tile products with f32 sums.
//!
//! ```text
//! D_i  = dO_i . O_i                                  (attention_delta)
//! p_ij = exp(scale q_i . k_j - lse_i),  dp_ij = dO_i . v_j
//! ds_ij = scale p_ij (dp_ij - D_i)
//! dq_i = sum_j ds_ij k_j                             (attention_tiles_dq)
//! dk_j = sum_i ds_ij q_i,  dv_j = sum_i p_ij dO_i    (attention_tiles_dkv)
//! ```
//!
//! Two operand types: the scores are recomputed from `q` and `k` in the
//! forward's (`S`, f16 on CUDA), so that they match the log-sum-exp it
//! saved; the products with gradients (`dp`, `dq`, `dk`, `dv`) take `G`
//! (bf16 on CUDA), whose range holds small gradients that f16 would lose.
//!
//! `attention_tiles_dq` has the forward's cubes (16 queries of one head a
//! plane) and walks the keys in tiles; `attention_tiles_dkv` has 16 keys of
//! one key/value head a plane and walks, for each query head that shares
//! them, the query tiles that see any of the cube's keys, summing the heads'
//! gradients in its accumulators. Nothing of size `seq x keys` is made, and
//! nothing is written twice, so no atomics.
//!
//! As with the forward, each kernel is written twice with one structure, on
//! the `cmma` instructions and on their emulation (`mma_tiles_cube`), which
//! the tests run on lavapipe.

use super::attention_cube_backward::delta_of;
use super::attention_tiles_cube::{
    TilePlan, fit_plan, operands, place, shared_memory_limit, tiles_take,
};
use super::cube_common::{empty_f32, f32_contiguous, zeros_f32};
use super::mma_tiles_cube::{
    PLANE_UNITS, TILE, TILE_VALUES, accumulate_products, emulated_accumulate_products,
    emulated_product_tile, emulated_store_rows, emulated_zero_accumulators, has_matrix_units,
    load_rows, product_tile, scratch, scratch_bytes, store_rows, zero_accumulators,
};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// The shared memory of the element-wise steps: two f32 tiles (scores,
/// `dp`) and two in `G` (the weights `p`, the `ds`) per plane.
#[derive(CubeType)]
struct GradStage<G: Float> {
    scores: SharedMemory<f32>,
    dp: SharedMemory<f32>,
    p: SharedMemory<G>,
    ds: SharedMemory<G>,
}

#[cube]
fn grad_stage<G: Float>(#[comptime] planes: u32, #[comptime] tile: usize) -> GradStage<G> {
    let values = comptime!(planes as usize * TILE * tile);
    GradStage::<G> {
        scores: SharedMemory::<f32>::new(values),
        dp: SharedMemory::<f32>::new(values),
        p: SharedMemory::<G>::new(values),
        ds: SharedMemory::<G>::new(values),
    }
}

/// Shared memory of [`grad_stage`] per plane for tiles `tile` wide, in
/// bytes.
fn grad_stage_bytes(tile: usize, g_bytes: usize) -> usize {
    TILE * tile * (2 * 4 + 2 * g_bytes)
}

/// `ds = scale p (dp - D)` and, when `with_p`, `p` itself, for the
/// plane's tile of `16 x tile` (row `r`, column `c`) in `st`, zero where
/// the query does not see the key (`key > past + query`). With `by_query`
/// the rows are queries (the dq kernel: query `query0 + r`, key `key0 +
/// c`); otherwise they are keys (the dk/dv kernel: key `key0 + r`, query
/// `query0 + c`). A query's `lse` and `D` are at `stats_at + query *
/// stats_stride`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_ds<G: Float>(
    st: &mut GradStage<G>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    stats_at: usize,
    stats_stride: usize,
    query0: u32,
    key0: u32,
    past: u32,
    scale: f32,
    #[comptime] tile: usize,
    #[comptime] by_query: bool,
    #[comptime] with_p: bool,
) {
    let base = UNIT_POS_Y as usize * TILE * tile;
    let values = TILE * tile;
    let mut e = UNIT_POS_X as usize;
    while e < values {
        let r = (e / tile) as u32;
        let c = (e % tile) as u32;
        let mut query = query0 + c;
        let mut key = key0 + r;
        if comptime!(by_query) {
            query = query0 + r;
            key = key0 + c;
        }
        let mut p = f32::new(0.0);
        let mut ds = f32::new(0.0);
        if key <= past + query {
            let stats = stats_at + query as usize * stats_stride;
            p = f32::exp(st.scores[base + e] * scale - lse[stats]);
            ds = scale * p * (st.dp[base + e] - delta[stats]);
        }
        st.ds[base + e] = G::cast_from(ds);
        if comptime!(with_p) {
            st.p[base + e] = G::cast_from(p);
        }
        e += PLANE_UNITS as usize;
    }
}

/// `dq` on matrix-multiply units: the forward's cubes. `q_s, k_s` in `S`,
/// `k_g, v_g, dout_g` in `G`, contiguous, in the projections' layouts;
/// `lse`, `delta`: `[batch, seq, heads]`; `dq` f32 like `q`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles_dq<S: Float, G: Float>(
    q_s: &Tensor<S>,
    k_s: &Tensor<S>,
    k_g: &Tensor<G>,
    v_g: &Tensor<G>,
    dout_g: &Tensor<G>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dq: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] key_frags: usize,
    #[define(S, G)] _types: [StorageType; 2],
) {
    let key_tile = key_frags * TILE;
    let at = place(seq, keys, heads, kv_heads, d, planes, key_tile);
    let mut st = grad_stage::<G>(planes, key_tile);
    let query = load_rows::<S>(q_s, at.q_at, at.q_stride, d);
    let dout = load_rows::<G>(dout_g, at.q_at, at.q_stride, d);
    let acc = zero_accumulators(d);
    // Query 0's `[batch, seq, heads]` index: `write_ds` adds the query's.
    let stats_at = at.q_at / d - at.first_row as usize * heads as usize;
    sync_cube();
    for tile in 0..at.tiles {
        let first = tile as usize * key_tile;
        product_tile::<S>(
            &query,
            k_s,
            at.kv_at,
            at.kv_stride,
            first,
            &mut st.scores,
            at.tile_at,
            d,
            key_frags,
        );
        product_tile::<G>(
            &dout,
            v_g,
            at.kv_at,
            at.kv_stride,
            first,
            &mut st.dp,
            at.tile_at,
            d,
            key_frags,
        );
        sync_cube();
        write_ds::<G>(
            &mut st,
            lse,
            delta,
            stats_at,
            heads as usize,
            at.first_row,
            first as u32,
            at.past,
            scale,
            key_tile,
            true,
            false,
        );
        sync_cube();
        accumulate_products::<G>(
            &st.ds,
            at.tile_at,
            k_g,
            at.kv_at,
            at.kv_stride,
            first,
            &acc,
            d,
            key_frags,
        );
        sync_cube();
    }
    store_rows(&acc, dq, at.q_at, at.q_stride, d);
}

/// [`attention_tiles_dq`] on the emulation.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles_dq_emulated<S: Float, G: Float>(
    q_s: &Tensor<S>,
    k_s: &Tensor<S>,
    k_g: &Tensor<G>,
    v_g: &Tensor<G>,
    dout_g: &Tensor<G>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dq: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] key_frags: usize,
    #[define(S, G)] _types: [StorageType; 2],
) {
    let key_tile = key_frags * TILE;
    let at = place(seq, keys, heads, kv_heads, d, planes, key_tile);
    let mut st = grad_stage::<G>(planes, key_tile);
    let mut scratch_s = scratch::<S>(planes);
    let mut scratch_g = scratch::<G>(planes);
    let plane_values = comptime!(d / TILE * TILE_VALUES);
    let mut acc = SharedMemory::<f32>::new(comptime!(planes as usize * plane_values));
    let acc_at = UNIT_POS_Y as usize * plane_values;
    emulated_zero_accumulators(&mut acc, acc_at, d);
    // Query 0's `[batch, seq, heads]` index: `write_ds` adds the query's.
    let stats_at = at.q_at / d - at.first_row as usize * heads as usize;
    sync_cube();
    for tile in 0..at.tiles {
        let first = tile as usize * key_tile;
        emulated_product_tile::<S>(
            q_s,
            at.q_at,
            at.q_stride,
            k_s,
            at.kv_at,
            at.kv_stride,
            first,
            &mut scratch_s,
            &mut st.scores,
            at.tile_at,
            d,
            key_frags,
        );
        emulated_product_tile::<G>(
            dout_g,
            at.q_at,
            at.q_stride,
            v_g,
            at.kv_at,
            at.kv_stride,
            first,
            &mut scratch_g,
            &mut st.dp,
            at.tile_at,
            d,
            key_frags,
        );
        write_ds::<G>(
            &mut st,
            lse,
            delta,
            stats_at,
            heads as usize,
            at.first_row,
            first as u32,
            at.past,
            scale,
            key_tile,
            true,
            false,
        );
        sync_cube();
        emulated_accumulate_products::<G>(
            &st.ds,
            at.tile_at,
            k_g,
            at.kv_at,
            at.kv_stride,
            first,
            &mut scratch_g,
            &mut acc,
            acc_at,
            d,
            key_frags,
        );
    }
    emulated_store_rows(&acc, acc_at, dq, at.q_at, at.q_stride, d);
}

/// Where a dk/dv cube's and plane's work lies.
#[derive(CubeType, Clone, Copy)]
struct KeyPlace {
    /// The plane's first key.
    first_key: u32,
    /// Offset of that key's vector in `k`, `v`, `dk` and `dv`.
    k_at: usize,
    kv_stride: usize,
    /// Offset of query 0's vector of the group's first head in `q` and
    /// `dout`, the elements between positions, and between heads.
    q_at: usize,
    q_stride: usize,
    /// `[batch, seq, heads]` index of query 0 of the group's first head.
    stats_at: usize,
    past: u32,
    /// Query heads per key/value head.
    group: u32,
    /// The query tiles walked: from the first that sees any of the cube's
    /// keys, to the last.
    first_tile: u32,
    tiles: u32,
    /// Offset of the plane's rows in the shared tiles.
    tile_at: usize,
}

#[cube]
fn key_place(
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] query_tile: usize,
) -> KeyPlace {
    let block = CUBE_POS_X;
    let kv = CUBE_POS_Y;
    let b = CUBE_POS_Z;
    let cube_keys = planes * TILE as u32;
    let cube_first = block * cube_keys;
    let first_key = cube_first + UNIT_POS_Y * TILE as u32;
    let group = heads / kv_heads;
    let past = keys - seq;
    // Query i sees key j when j <= past + i: the cube's first key is seen
    // from query `cube_first - past` on.
    let mut first_query = 0u32;
    if cube_first > past {
        first_query = cube_first - past;
    }
    KeyPlace {
        first_key,
        k_at: (((b * keys + first_key) * kv_heads + kv) as usize) * d,
        kv_stride: kv_heads as usize * d,
        q_at: (((b * seq) * heads + kv * group) as usize) * d,
        q_stride: heads as usize * d,
        stats_at: ((b * seq) * heads + kv * group) as usize,
        past,
        group,
        first_tile: first_query / query_tile as u32,
        tiles: seq / query_tile as u32,
        tile_at: UNIT_POS_Y as usize * TILE * query_tile,
    }
}

/// `dk` and `dv` on matrix-multiply units: cube `(key block, key/value
/// head, batch)`, 16 keys a plane. Inputs as [`attention_tiles_dq`]'s,
/// with `q_g` (`q` in `G`) for `dk`; `dk, dv` f32 like `k`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles_dkv<S: Float, G: Float>(
    q_s: &Tensor<S>,
    k_s: &Tensor<S>,
    q_g: &Tensor<G>,
    v_g: &Tensor<G>,
    dout_g: &Tensor<G>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<f32>,
    dv: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] query_frags: usize,
    #[define(S, G)] _types: [StorageType; 2],
) {
    let query_tile = query_frags * TILE;
    let at = key_place(seq, keys, heads, kv_heads, d, planes, query_tile);
    let mut st = grad_stage::<G>(planes, query_tile);
    let keys_s = load_rows::<S>(k_s, at.k_at, at.kv_stride, d);
    let values = load_rows::<G>(v_g, at.k_at, at.kv_stride, d);
    let acc_k = zero_accumulators(d);
    let acc_v = zero_accumulators(d);
    sync_cube();
    for g in 0..at.group {
        let q_at = at.q_at + g as usize * d;
        let stats_at = at.stats_at + g as usize;
        for tile in at.first_tile..at.tiles {
            let first = tile as usize * query_tile;
            // Transposed scores and dp: a row per key, a column per query.
            product_tile::<S>(
                &keys_s,
                q_s,
                q_at,
                at.q_stride,
                first,
                &mut st.scores,
                at.tile_at,
                d,
                query_frags,
            );
            product_tile::<G>(
                &values,
                dout_g,
                q_at,
                at.q_stride,
                first,
                &mut st.dp,
                at.tile_at,
                d,
                query_frags,
            );
            sync_cube();
            write_ds::<G>(
                &mut st,
                lse,
                delta,
                stats_at,
                heads as usize,
                first as u32,
                at.first_key,
                at.past,
                scale,
                query_tile,
                false,
                true,
            );
            sync_cube();
            accumulate_products::<G>(
                &st.p,
                at.tile_at,
                dout_g,
                q_at,
                at.q_stride,
                first,
                &acc_v,
                d,
                query_frags,
            );
            accumulate_products::<G>(
                &st.ds,
                at.tile_at,
                q_g,
                q_at,
                at.q_stride,
                first,
                &acc_k,
                d,
                query_frags,
            );
            sync_cube();
        }
    }
    store_rows(&acc_k, dk, at.k_at, at.kv_stride, d);
    store_rows(&acc_v, dv, at.k_at, at.kv_stride, d);
}

/// [`attention_tiles_dkv`] on the emulation.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_tiles_dkv_emulated<S: Float, G: Float>(
    q_s: &Tensor<S>,
    k_s: &Tensor<S>,
    q_g: &Tensor<G>,
    v_g: &Tensor<G>,
    dout_g: &Tensor<G>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<f32>,
    dv: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] planes: u32,
    #[comptime] query_frags: usize,
    #[define(S, G)] _types: [StorageType; 2],
) {
    let query_tile = query_frags * TILE;
    let at = key_place(seq, keys, heads, kv_heads, d, planes, query_tile);
    let mut st = grad_stage::<G>(planes, query_tile);
    let mut scratch_s = scratch::<S>(planes);
    let mut scratch_g = scratch::<G>(planes);
    // Per plane: dk's accumulators, then dv's.
    let plane_values = comptime!(d / TILE * TILE_VALUES);
    let mut acc = SharedMemory::<f32>::new(comptime!(planes as usize * 2 * plane_values));
    let k_acc = UNIT_POS_Y as usize * 2 * plane_values;
    let v_acc = k_acc + plane_values;
    emulated_zero_accumulators(&mut acc, k_acc, d);
    emulated_zero_accumulators(&mut acc, v_acc, d);
    sync_cube();
    for g in 0..at.group {
        let q_at = at.q_at + g as usize * d;
        let stats_at = at.stats_at + g as usize;
        for tile in at.first_tile..at.tiles {
            let first = tile as usize * query_tile;
            emulated_product_tile::<S>(
                k_s,
                at.k_at,
                at.kv_stride,
                q_s,
                q_at,
                at.q_stride,
                first,
                &mut scratch_s,
                &mut st.scores,
                at.tile_at,
                d,
                query_frags,
            );
            emulated_product_tile::<G>(
                v_g,
                at.k_at,
                at.kv_stride,
                dout_g,
                q_at,
                at.q_stride,
                first,
                &mut scratch_g,
                &mut st.dp,
                at.tile_at,
                d,
                query_frags,
            );
            write_ds::<G>(
                &mut st,
                lse,
                delta,
                stats_at,
                heads as usize,
                first as u32,
                at.first_key,
                at.past,
                scale,
                query_tile,
                false,
                true,
            );
            sync_cube();
            emulated_accumulate_products::<G>(
                &st.p,
                at.tile_at,
                dout_g,
                q_at,
                at.q_stride,
                first,
                &mut scratch_g,
                &mut acc,
                v_acc,
                d,
                query_frags,
            );
            emulated_accumulate_products::<G>(
                &st.ds,
                at.tile_at,
                q_g,
                q_at,
                at.q_stride,
                first,
                &mut scratch_g,
                &mut acc,
                k_acc,
                d,
                query_frags,
            );
        }
    }
    emulated_store_rows(&acc, k_acc, dk, at.k_at, at.kv_stride, d);
    emulated_store_rows(&acc, v_acc, dv, at.k_at, at.kv_stride, d);
}

/// The backward's two plans: `dq`'s cubes own queries and walk keys,
/// `dk`/`dv`'s own keys and walk queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackwardTilePlan {
    pub dq: TilePlan,
    pub dkv: TilePlan,
}

/// The backward's plans for `q: [batch, seq, heads, d]` against `keys`
/// keys, the scores in `scores` (the forward's operands) and the gradient
/// products in `grads`, or `None` where the tiles do not take the shapes
/// or the device's shared memory fits no plan. With `emulate`, or where the
/// device has no matrix-multiply units for both types, the products run on
/// their emulation.
pub fn tile_plan_backward<R: CubeRuntime>(
    client: &ComputeClient<R>,
    seq: usize,
    keys: usize,
    d: usize,
    scores: DType,
    grads: DType,
    emulate: bool,
) -> Option<BackwardTilePlan> {
    let matrix_units =
        !emulate && has_matrix_units(client, scores) && has_matrix_units(client, grads);
    let limit = shared_memory_limit(client);
    tile_plan_backward_within(limit, seq, keys, d, [scores, grads], matrix_units)
}

/// [`tile_plan_backward`] for a device whose cubes may take `limit` bytes
/// of shared memory, with the products on matrix-multiply units or not.
pub fn tile_plan_backward_within(
    limit: usize,
    seq: usize,
    keys: usize,
    d: usize,
    [scores, grads]: [DType; 2],
    matrix_units: bool,
) -> Option<BackwardTilePlan> {
    if !tiles_take(seq, keys, d) {
        return None;
    }
    let (s_bytes, g_bytes) = (scores.size(), grads.size());
    let emulation = |planes: usize, accumulators: usize| {
        if matrix_units {
            0
        } else {
            planes
                * (accumulators * d / TILE * TILE_VALUES * 4
                    + scratch_bytes(s_bytes)
                    + scratch_bytes(g_bytes))
        }
    };
    let dq = fit_plan(limit, seq, keys, matrix_units, |planes, frags| {
        planes * grad_stage_bytes(TILE * frags, g_bytes) + emulation(planes, 1)
    })?;
    let dkv = fit_plan(limit, keys, seq, matrix_units, |planes, frags| {
        planes * grad_stage_bytes(TILE * frags, g_bytes) + emulation(planes, 2)
    })?;
    Some(BackwardTilePlan { dq, dkv })
}

/// [`super::attention::AttentionOps::causal_attention_backward`] on the
/// tiles: `(dq, dk, dv)` in f32, the scores recomputed with `q` and `k`
/// rounded to `scores` as the forward rounded them, the other products'
/// operands rounded to `grads`. The shapes must have been checked as
/// [`super::causal_attention`] does, and `plan` made by
/// [`tile_plan_backward`] for them.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_tiles_backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad_out: CubeTensor<R>,
    scale: f32,
    [scores, grads]: [DType; 2],
    plan: BackwardTilePlan,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [batch, seq, heads, d]: [usize; 4] = q.shape().dims();
    let [_, keys, kv_heads, _]: [usize; 4] = k.shape().dims();
    let dq = empty_f32(&q, Shape::new([batch, seq, heads, d]));
    if batch == 0 || heads == 0 {
        let dk = zeros_f32(&q, Shape::new([batch, keys, kv_heads, d]));
        let dv = zeros_f32(&q, Shape::new([batch, keys, kv_heads, d]));
        return (dq, dk, dv);
    }
    let dk = empty_f32(&q, Shape::new([batch, keys, kv_heads, d]));
    let dv = empty_f32(&q, Shape::new([batch, keys, kv_heads, d]));
    let client = q.client.clone();
    let delta = delta_of(grad_out.clone(), out);
    let lse = f32_contiguous(lse);
    let rounded = |t: &CubeTensor<R>, dtype| operands(t.clone(), dtype);
    let (q_s, k_s) = (rounded(&q, scores), rounded(&k, scores));
    let (q_g, k_g, v_g, dout_g) = (
        rounded(&q, grads),
        rounded(&k, grads),
        rounded(&v, grads),
        rounded(&grad_out, grads),
    );
    let sizes = |plan: TilePlan, own: usize, second: usize| {
        (
            CubeCount::Static(
                (own / (TILE * plan.planes as usize)) as u32,
                second as u32,
                batch as u32,
            ),
            CubeDim::new_2d(PLANE_UNITS, plan.planes),
        )
    };
    let types = [scores.into(), grads.into()];
    let (count, dim) = sizes(plan.dq, seq, heads);
    macro_rules! launch_dq {
        ($kernel:ident) => {
            $kernel::launch::<R>(
                &client,
                count,
                dim,
                q_s.clone().into_tensor_arg(),
                k_s.clone().into_tensor_arg(),
                k_g.into_tensor_arg(),
                v_g.clone().into_tensor_arg(),
                dout_g.clone().into_tensor_arg(),
                lse.clone().into_tensor_arg(),
                delta.clone().into_tensor_arg(),
                dq.clone().into_tensor_arg(),
                seq as u32,
                keys as u32,
                heads as u32,
                kv_heads as u32,
                scale,
                d,
                plan.dq.planes,
                plan.dq.tile_frags,
                types,
            )
        };
    }
    if plan.dq.matrix_units {
        launch_dq!(attention_tiles_dq);
    } else {
        launch_dq!(attention_tiles_dq_emulated);
    }
    // `keys >= seq > 0` (the plan requires queries): the grid is never empty.
    let (count, dim) = sizes(plan.dkv, keys, kv_heads);
    macro_rules! launch_dkv {
        ($kernel:ident) => {
            $kernel::launch::<R>(
                &client,
                count,
                dim,
                q_s.into_tensor_arg(),
                k_s.into_tensor_arg(),
                q_g.into_tensor_arg(),
                v_g.into_tensor_arg(),
                dout_g.into_tensor_arg(),
                lse.into_tensor_arg(),
                delta.into_tensor_arg(),
                dk.clone().into_tensor_arg(),
                dv.clone().into_tensor_arg(),
                seq as u32,
                keys as u32,
                heads as u32,
                kv_heads as u32,
                scale,
                d,
                plan.dkv.planes,
                plan.dkv.tile_frags,
                types,
            )
        };
    }
    if plan.dkv.matrix_units {
        launch_dkv!(attention_tiles_dkv);
    } else {
        launch_dkv!(attention_tiles_dkv_emulated);
    }
    (dq, dk, dv)
}

/// The backward's `cmma` kernels for `plan` (`dq`'s, then `dk`/`dv`'s),
/// head size `d`, the scores' operands in `scores` and the gradient
/// products' in `grads`, as CUDA C++ for `arch` (`kernels::cuda_source`).
/// The lengths and head counts are launch values the sources do not depend
/// on.
#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub(super) fn backward_cuda_sources(
    d: usize,
    plan: BackwardTilePlan,
    [scores, grads]: [DType; 2],
    arch: super::cuda_capture::CudaArch,
) -> Result<[super::cuda_capture::CudaKernelSource; 2], String> {
    use super::cuda_capture::{Capture, compile_for_cuda};
    use cubecl::wgpu::WgpuRuntime;
    let types: [StorageType; 2] = [scores.into(), grads.into()];
    let (seq, heads, kv_heads) = (64usize, 3usize, 1usize);
    let q_shape = [1, seq, heads, d];
    let kv_shape = [1, seq, kv_heads, d];
    let stats_shape = [1, seq, heads];
    let label = |kernel: &str, plan: TilePlan| {
        format!(
            "{kernel} {scores:?}/{grads:?} d{d} planes{} frags{}",
            plan.planes, plan.tile_frags
        )
    };

    let dq = {
        use attention_tiles_dq::{_G, _S, AttentionTilesDq, G, S};
        let dim = CubeDim::new_2d(PLANE_UNITS, plan.dq.planes);
        let mut at = Capture::new(dim, |scope| {
            scope.register_type::<DynamicScalar<_S>>(types[0]);
            scope.register_type::<DynamicScalar<_G>>(types[1]);
        });
        let q_s = at.tensor::<Tensor<S>>(&q_shape);
        let k_s = at.tensor::<Tensor<S>>(&kv_shape);
        let k_g = at.tensor::<Tensor<G>>(&kv_shape);
        let v_g = at.tensor::<Tensor<G>>(&kv_shape);
        let dout_g = at.tensor::<Tensor<G>>(&q_shape);
        let lse = at.tensor::<Tensor<f32>>(&stats_shape);
        let delta = at.tensor::<Tensor<f32>>(&stats_shape);
        let dq = at.tensor::<Tensor<f32>>(&q_shape);
        let kernel = AttentionTilesDq::<WgpuRuntime>::new(
            at.settings.clone(),
            at.client.clone(),
            q_s,
            k_s,
            k_g,
            v_g,
            dout_g,
            lse,
            delta,
            dq,
            // seq, keys, heads, kv_heads, scale: scalars have no
            // compilation argument.
            (),
            (),
            (),
            (),
            (),
            d,
            plan.dq.planes,
            plan.dq.tile_frags,
            types,
        );
        compile_for_cuda(label("attention_tiles_dq", plan.dq), kernel, arch)?
    };

    let dkv = {
        use attention_tiles_dkv::{_G, _S, AttentionTilesDkv, G, S};
        let dim = CubeDim::new_2d(PLANE_UNITS, plan.dkv.planes);
        let mut at = Capture::new(dim, |scope| {
            scope.register_type::<DynamicScalar<_S>>(types[0]);
            scope.register_type::<DynamicScalar<_G>>(types[1]);
        });
        let q_s = at.tensor::<Tensor<S>>(&q_shape);
        let k_s = at.tensor::<Tensor<S>>(&kv_shape);
        let q_g = at.tensor::<Tensor<G>>(&q_shape);
        let v_g = at.tensor::<Tensor<G>>(&kv_shape);
        let dout_g = at.tensor::<Tensor<G>>(&q_shape);
        let lse = at.tensor::<Tensor<f32>>(&stats_shape);
        let delta = at.tensor::<Tensor<f32>>(&stats_shape);
        let dk = at.tensor::<Tensor<f32>>(&kv_shape);
        let dv = at.tensor::<Tensor<f32>>(&kv_shape);
        let kernel = AttentionTilesDkv::<WgpuRuntime>::new(
            at.settings.clone(),
            at.client.clone(),
            q_s,
            k_s,
            q_g,
            v_g,
            dout_g,
            lse,
            delta,
            dk,
            dv,
            // seq, keys, heads, kv_heads, scale: scalars have no
            // compilation argument.
            (),
            (),
            (),
            (),
            (),
            d,
            plan.dkv.planes,
            plan.dkv.tile_frags,
            types,
        );
        compile_for_cuda(label("attention_tiles_dkv", plan.dkv), kernel, arch)?
    };
    Ok([dq, dkv])
}
