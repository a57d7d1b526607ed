//! The causal grouped-query attention forward as one CubeCL kernel:
//! [`AttentionOps`] for every `CubeBackend<R, ..>`.
//!
//! One unit per (batch, query head, query) keeps its query and an output
//! accumulator of `d` values in registers and walks its keys once with the
//! online softmax (running max `m`, running sum `l`, the accumulator rescaled
//! whenever `m` moves), so no `[batch, heads, seq, keys]` score matrix, no
//! mask and no repeated keys or values are made: query head `h` reads
//! key/value head `h / (heads / kv_heads)` in place, in the projections'
//! `[batch, positions, heads, d]` layout. The units of a cube are
//! consecutive queries of one head, which read the same keys in the same
//! order, so the cache serves most of those reads. The log-sum-exp
//! `m + ln l` is written for the backward when asked.
//!
//! The backward (`attention_cube_backward`) recomputes the weights from
//! this log-sum-exp.
//!
//! Portability (DESIGN.md, Compute): no shared memory, no barrier, no plane
//! ops; the head size is a compile-time constant, so the per-unit arrays
//! live in registers.

use super::Precision;
use super::attention::AttentionOps;
use super::attention_tiles_cube::{TilePlan, causal_attention_tiles, tile_plan};
use super::attention_tiles_cube_backward::{
    BackwardTilePlan, causal_attention_tiles_backward, tile_plan_backward,
};
use super::cube_common::{
    ROW_UNITS, dot_registers, empty_f32, f32_contiguous, row_grid, row_unit, to_dtype, vector_width,
};
use super::kd_cube_common::LOWEST;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// `out[b, i, h, :]` and `lse[b, i, h]` for every query.
///
/// `q: [batch, seq, heads, d]`, `k, v: [batch, keys, kv_heads, d]`, all
/// contiguous f32 read as vectors of `N` (`d_vectors = d / N`); `out` like
/// `q`, in `O` (the f32 result rounded as it is written), `lse: [batch,
/// seq, heads]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_rows<O: Float, N: Size>(
    q: &Tensor<Vector<f32, N>>,
    k: &Tensor<Vector<f32, N>>,
    v: &Tensor<Vector<f32, N>>,
    out: &mut Tensor<Vector<O, N>>,
    lse: &mut Tensor<f32>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    queries: u32,
    scale: f32,
    #[comptime] d_vectors: usize,
    #[comptime] with_lse: bool,
    #[define(O)] _out_dtype: StorageType,
) {
    let unit = row_unit();
    if unit >= queries {
        terminate!();
    }
    // Units run over queries fastest, then heads, then batch rows.
    let i = unit % seq;
    let head_row = unit / seq;
    let h = head_row % heads;
    let b = head_row / heads;
    let kv = h / (heads / kv_heads);
    let row = ((b * seq + i) * heads + h) as usize;
    let q_base = row * d_vectors;
    let scale_v = Vector::<f32, N>::empty().fill(scale);
    let zero_v = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut query = Array::<Vector<f32, N>>::new(d_vectors);
    let mut acc = Array::<Vector<f32, N>>::new(d_vectors);
    #[unroll]
    for t in 0..d_vectors {
        query[t] = q[q_base + t] * scale_v;
        acc[t] = zero_v;
    }
    let mut m = f32::new(LOWEST);
    let mut l = f32::new(0.0);
    // Keys 0 ..= keys - seq + i: the cache, then the queries' own up to i.
    let visible = keys - seq + i + 1;
    let key_stride = (kv_heads as usize) * d_vectors;
    let mut kv_at = (b as usize * keys as usize * kv_heads as usize + kv as usize) * d_vectors;
    for _ in 0..visible {
        let s = dot_registers(&query, k, kv_at, d_vectors);
        if s > m {
            // The accumulator and the sum were relative to the old max.
            let c = f32::exp(m - s);
            let c_v = Vector::<f32, N>::empty().fill(c);
            #[unroll]
            for t in 0..d_vectors {
                acc[t] *= c_v;
            }
            l *= c;
            m = s;
        }
        let p = f32::exp(s - m);
        l += p;
        let p_v = Vector::<f32, N>::empty().fill(p);
        #[unroll]
        for t in 0..d_vectors {
            acc[t] += v[kv_at + t] * p_v;
        }
        kv_at += key_stride;
    }
    let inv_v = Vector::<f32, N>::empty().fill(f32::new(1.0) / l);
    #[unroll]
    for t in 0..d_vectors {
        out[q_base + t] = Vector::cast_from(acc[t] * inv_v);
    }
    if comptime!(with_lse) {
        lse[row] = m + f32::ln(l);
    }
}

/// See [`AttentionOps::causal_attention`], the output written in
/// `out_dtype`; the shapes were checked by [`super::causal_attention`] or
/// the caller.
pub(super) fn causal_attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: f32,
    with_lse: bool,
    out_dtype: DType,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let [batch, seq, heads, d]: [usize; 4] = q.shape().dims();
    let [_, keys, kv_heads, _]: [usize; 4] = k.shape().dims();
    let (q, k, v) = (f32_contiguous(q), f32_contiguous(k), f32_contiguous(v));
    let out = empty_device_contiguous_dtype(
        q.client.clone(),
        q.device.clone(),
        Shape::new([batch, seq, heads, d]),
        out_dtype,
    );
    let lse = empty_f32(&q, Shape::new([batch, seq, heads]));
    let queries = batch * seq * heads;
    if queries > 0 && d > 0 {
        let client = q.client.clone();
        let width = vector_width(&client, DType::F32, d);
        let (count, dim) = row_grid(&client, queries, ROW_UNITS, "attention");
        attention_rows::launch::<R>(
            &client,
            count,
            dim,
            width,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            seq as u32,
            keys as u32,
            heads as u32,
            kv_heads as u32,
            queries as u32,
            scale,
            d / width,
            with_lse,
            out_dtype.into(),
        );
    }
    (out, with_lse.then_some(lse))
}

/// The forward in `precision`, its output written in `out_dtype`: on
/// tensor cores where [`tensor_core_plan`] finds a plan, else one unit per
/// query.
#[allow(clippy::too_many_arguments)]
pub(super) fn causal_attention_as<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    scale: f32,
    with_lse: bool,
    precision: Precision,
    out_dtype: DType,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    match tensor_core_plan(&q.client, attention_shape(&q, &k), precision) {
        Some(plan) => {
            causal_attention_tiles(q, k, v, scale, with_lse, TILE_OPERANDS, out_dtype, plan)
        }
        None => causal_attention(q, k, v, scale, with_lse, out_dtype),
    }
}

/// The operands of the forward's products on tensor cores under the bf16
/// precision: f16, which tensor cores multiply as fast as bf16, with 8
/// times finer rounding (11 bits of mantissa against 8); values past
/// f16's range are clamped to it.
pub(super) const TILE_OPERANDS: DType = DType::F16;

/// [`AttentionOps::attention_arithmetic`] where both directions run on the
/// tiles.
pub const TENSOR_CORES: &str =
    "tensor cores (f16 operands for the scores, bf16 for the gradients' products, f32 sums)";

/// The operands of the backward's products with gradients on tensor cores
/// (`dp`, `dq`, `dk`, `dv`): bf16, whose range holds gradients far below
/// f16's smallest normal value. Its scores are recomputed in
/// [`TILE_OPERANDS`], as the forward computed them.
pub(super) const TILE_GRADIENTS: DType = DType::BF16;

/// `[seq, keys, head size]` of an attention call.
fn attention_shape<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>) -> [usize; 3] {
    let [_, seq, _, d]: [usize; 4] = q.shape().dims();
    [seq, k.shape().dims::<4>()[1], d]
}

/// Whether `DISTILLERY_ATTENTION_TILES=0` switched the tiles off (a switch
/// for timing both kernels with one build), read once.
fn tiles_switched_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("DISTILLERY_ATTENTION_TILES").as_deref() == Ok("0"))
}

/// The tile plan for the forward on tensor cores, where `precision` is
/// bf16, the device multiplies [`TILE_OPERANDS`] on them, the shapes fit
/// the tiles, and the tiles are not [switched off](tiles_switched_off).
fn tensor_core_plan<R: CubeRuntime>(
    client: &ComputeClient<R>,
    [seq, keys, d]: [usize; 3],
    precision: Precision,
) -> Option<TilePlan> {
    if precision != Precision::Bf16 || tiles_switched_off() {
        return None;
    }
    tile_plan(client, seq, keys, d, TILE_OPERANDS, false).filter(|plan| plan.matrix_units)
}

/// The backward's tile plans on tensor cores, on the terms of
/// [`tensor_core_plan`], for both operand types.
fn tensor_core_backward_plan<R: CubeRuntime>(
    client: &ComputeClient<R>,
    shape: [usize; 3],
    precision: Precision,
) -> Option<BackwardTilePlan> {
    tensor_core_plan(client, shape, precision)?;
    let [seq, keys, d] = shape;
    tile_plan_backward(client, seq, keys, d, TILE_OPERANDS, TILE_GRADIENTS, false)
        .filter(|plan| plan.dq.matrix_units && plan.dkv.matrix_units)
}

impl<R, F, I, BT> AttentionOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn causal_attention(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        scale: f32,
        with_lse: bool,
        precision: Precision,
    ) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
        let dtype = v.dtype; // the output's (see `super::attention`)
        causal_attention_as(q, k, v, scale, with_lse, precision, dtype)
    }

    fn attention_operands(
        device: &Self::Device,
        shape: [usize; 3],
        precision: Precision,
    ) -> Option<DType> {
        tensor_core_plan(&R::client(device), shape, precision).map(|_| TILE_OPERANDS)
    }

    fn attention_arithmetic(
        device: &Self::Device,
        shape: [usize; 3],
        precision: Precision,
    ) -> &'static str {
        let client = R::client(device);
        let forward = tensor_core_plan(&client, shape, precision).is_some();
        let backward = tensor_core_backward_plan(&client, shape, precision).is_some();
        match (forward, backward) {
            (true, true) => TENSOR_CORES,
            (true, false) => {
                "tensor cores in the forward (f16 operands, f32 sums), f32 in the backward"
            }
            _ => "f32",
        }
    }

    fn causal_attention_backward(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        out: CubeTensor<R>,
        lse: CubeTensor<R>,
        grad_out: CubeTensor<R>,
        scale: f32,
        precision: Precision,
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        if let Some(plan) = tensor_core_backward_plan(&q.client, attention_shape(&q, &k), precision)
        {
            let dtype = v.dtype;
            let (dq, dk, dv) = causal_attention_tiles_backward(
                q,
                k,
                v,
                out,
                lse,
                grad_out,
                scale,
                [TILE_OPERANDS, TILE_GRADIENTS],
                plan,
            );
            return (
                to_dtype(dq, dtype),
                to_dtype(dk, dtype),
                to_dtype(dv, dtype),
            );
        }
        super::attention_cube_backward::causal_attention_backward(
            q, k, v, out, lse, grad_out, scale,
        )
    }
}
