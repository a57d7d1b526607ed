//! The causal grouped-query attention backward as CubeCL kernels, from the
//! forward's log-sum-exp (FlashAttention-2's backward, one unit per row
//! instead of shared-memory tiles):
//!
//! ```text
//! D_i  = dO_i . O_i                                  (attention_delta)
//! p_ij = exp(scale q_i . k_j - lse_i),  dp_ij = dO_i . v_j
//! ds_ij = p_ij (dp_ij - D_i)
//! dq_i = scale sum_j ds_ij k_j                       (attention_dq)
//! dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dO_i   (attention_dkv)
//! ```
//!
//! `attention_dq` has a unit per (batch, query head, query) that walks the
//! keys it saw, as the forward does; `attention_dkv` a unit per (batch,
//! key/value head, key) that walks every query that saw its key, over all
//! the query heads that share it, so the grouped heads' gradients are summed
//! in registers rather than through a repeated tensor. Nothing of size
//! `seq x keys` is made. Same portability rules as the forward: no shared
//! memory, no barrier, no plane ops.

use super::cube_common::{
    ROW_UNITS, dot_registers, empty_f32, f32_contiguous, lane_sum, row_grid, row_unit, to_dtype,
    vector_width, zeros_f32,
};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// The dot product of `d_vectors` vectors at `a[a_at..]` and `b[b_at..]`,
/// `b` read in its own float type and summed in f32.
#[cube]
fn dot<E: Float, N: Size>(
    a: &Tensor<Vector<f32, N>>,
    a_at: usize,
    b: &Tensor<Vector<E, N>>,
    b_at: usize,
    #[comptime] d_vectors: usize,
) -> f32 {
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    #[unroll]
    for t in 0..d_vectors {
        acc += a[a_at + t] * Vector::<f32, N>::cast_from(b[b_at + t]);
    }
    lane_sum(acc)
}

/// `delta[row] = dO[row, :] . O[row, :]` for every query row, `O` read in
/// its own dtype (where the forward wrote it rounded, as `o_proj` read
/// it) and summed in f32.
#[cube(launch)]
fn attention_delta<O: Float, N: Size>(
    grad_out: &Tensor<Vector<f32, N>>,
    out: &Tensor<Vector<O, N>>,
    delta: &mut Tensor<f32>,
    rows: u32,
    #[comptime] d_vectors: usize,
    #[define(O)] _out_dtype: StorageType,
) {
    let row = row_unit();
    if row >= rows {
        terminate!();
    }
    let at = row as usize * d_vectors;
    delta[row as usize] = dot(grad_out, at, out, at, d_vectors);
}

/// `dq` for every query: unit over (batch, head, query), queries fastest.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_dq<N: Size>(
    q: &Tensor<Vector<f32, N>>,
    k: &Tensor<Vector<f32, N>>,
    v: &Tensor<Vector<f32, N>>,
    grad_out: &Tensor<Vector<f32, N>>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dq: &mut Tensor<Vector<f32, N>>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    queries: u32,
    scale: f32,
    #[comptime] d_vectors: usize,
) {
    let unit = row_unit();
    if unit >= queries {
        terminate!();
    }
    let i = unit % seq;
    let head_row = unit / seq;
    let h = head_row % heads;
    let b = head_row / heads;
    let kv = h / (heads / kv_heads);
    let row = ((b * seq + i) * heads + h) as usize;
    let q_at = row * d_vectors;
    let scale_v = Vector::<f32, N>::empty().fill(scale);
    let mut query = Array::<Vector<f32, N>>::new(d_vectors);
    let mut acc = Array::<Vector<f32, N>>::new(d_vectors);
    #[unroll]
    for t in 0..d_vectors {
        // Scaled as the forward scaled it, so `p` is its weight exactly.
        query[t] = q[q_at + t] * scale_v;
        acc[t] = Vector::<f32, N>::empty().fill(f32::new(0.0));
    }
    let row_lse = lse[row];
    let row_delta = delta[row];
    let visible = keys - seq + i + 1;
    let key_stride = (kv_heads as usize) * d_vectors;
    let mut kv_at = (b as usize * keys as usize * kv_heads as usize + kv as usize) * d_vectors;
    for _ in 0..visible {
        let s = dot_registers(&query, k, kv_at, d_vectors);
        let p = f32::exp(s - row_lse);
        let dp = dot(grad_out, q_at, v, kv_at, d_vectors);
        let ds = Vector::<f32, N>::empty().fill(p * (dp - row_delta));
        #[unroll]
        for t in 0..d_vectors {
            acc[t] += ds * k[kv_at + t];
        }
        kv_at += key_stride;
    }
    #[unroll]
    for t in 0..d_vectors {
        dq[q_at + t] = acc[t] * scale_v;
    }
}

/// `dk`, `dv` for every key: unit over (batch, key/value head, key), keys
/// fastest; each walks the queries that saw its key, for every query head
/// of its group.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_dkv<N: Size>(
    q: &Tensor<Vector<f32, N>>,
    k: &Tensor<Vector<f32, N>>,
    v: &Tensor<Vector<f32, N>>,
    grad_out: &Tensor<Vector<f32, N>>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    dk: &mut Tensor<Vector<f32, N>>,
    dv: &mut Tensor<Vector<f32, N>>,
    seq: u32,
    keys: u32,
    heads: u32,
    kv_heads: u32,
    key_rows: u32,
    scale: f32,
    #[comptime] d_vectors: usize,
) {
    let unit = row_unit();
    if unit >= key_rows {
        terminate!();
    }
    let j = unit % keys;
    let head_row = unit / keys;
    let kv = head_row % kv_heads;
    let b = head_row / kv_heads;
    let group = heads / kv_heads;
    let kv_at = (((b * keys + j) * kv_heads + kv) as usize) * d_vectors;
    let scale_v = Vector::<f32, N>::empty().fill(scale);
    let zero_v = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut key = Array::<Vector<f32, N>>::new(d_vectors);
    let mut value = Array::<Vector<f32, N>>::new(d_vectors);
    let mut acc_k = Array::<Vector<f32, N>>::new(d_vectors);
    let mut acc_v = Array::<Vector<f32, N>>::new(d_vectors);
    #[unroll]
    for t in 0..d_vectors {
        key[t] = k[kv_at + t];
        value[t] = v[kv_at + t];
        acc_k[t] = zero_v;
        acc_v[t] = zero_v;
    }
    // Query i sees key j when j <= keys - seq + i.
    let past = keys - seq;
    let mut first = 0u32;
    if j > past {
        first = j - past;
    }
    for i in first..seq {
        for r in 0..group {
            let row = ((b * seq + i) * heads + kv * group + r) as usize;
            let q_at = row * d_vectors;
            let mut s_v = zero_v;
            let mut dp_v = zero_v;
            #[unroll]
            for t in 0..d_vectors {
                s_v += (q[q_at + t] * scale_v) * key[t];
                dp_v += grad_out[q_at + t] * value[t];
            }
            let (s, dp) = (lane_sum(s_v), lane_sum(dp_v));
            let p = f32::exp(s - lse[row]);
            let p_v = Vector::<f32, N>::empty().fill(p);
            let ds_v = Vector::<f32, N>::empty().fill(p * (dp - delta[row]));
            #[unroll]
            for t in 0..d_vectors {
                acc_v[t] += p_v * grad_out[q_at + t];
                acc_k[t] += ds_v * q[q_at + t];
            }
        }
    }
    #[unroll]
    for t in 0..d_vectors {
        dk[kv_at + t] = acc_k[t] * scale_v;
        dv[kv_at + t] = acc_v[t];
    }
}

/// `D = dO . O` for every query row, `[batch, seq, heads]` f32, of
/// `grad_out` and `out` (`[batch, seq, heads, d]`, any float dtype: `out`
/// is read in its own, with no cast of its own). `grad_out` may come in
/// any shape of as many values (`o_proj`'s rows).
pub(super) fn delta_of<R: CubeRuntime>(
    grad_out: CubeTensor<R>,
    out: CubeTensor<R>,
) -> CubeTensor<R> {
    let [batch, seq, heads, d]: [usize; 4] = out.shape().dims();
    let (grad_out, out) = (f32_contiguous(grad_out), into_contiguous(out));
    let out_dtype = out.dtype;
    let delta = empty_f32(&out, Shape::new([batch, seq, heads]));
    let rows = batch * seq * heads;
    if rows == 0 || d == 0 {
        return delta;
    }
    let client = out.client.clone();
    let width = vector_width(&client, DType::F32, d);
    let (count, dim) = row_grid(&client, rows, ROW_UNITS, "attention's backward");
    attention_delta::launch::<R>(
        &client,
        count,
        dim,
        width,
        grad_out.into_tensor_arg(),
        out.into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        rows as u32,
        d / width,
        out_dtype.into(),
    );
    delta
}

/// See [`super::attention::AttentionOps::causal_attention_backward`].
#[allow(clippy::too_many_arguments)]
pub(super) fn causal_attention_backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad_out: CubeTensor<R>,
    scale: f32,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    // Every gradient in v's dtype (see `super::attention`).
    let dtype = v.dtype;
    let [batch, seq, heads, d]: [usize; 4] = q.shape().dims();
    let [_, keys, kv_heads, _]: [usize; 4] = k.shape().dims();
    let (q, k, v) = (f32_contiguous(q), f32_contiguous(k), f32_contiguous(v));
    // `out` is read by `delta_of` alone, in its own dtype.
    let (lse, grad_out) = (f32_contiguous(lse), f32_contiguous(grad_out));
    let queries = batch * seq * heads;
    let key_rows = batch * keys * kv_heads;
    let dq = empty_f32(&q, Shape::new([batch, seq, heads, d]));
    if queries == 0 || d == 0 {
        // No query saw any key.
        let dk = zeros_f32(&q, Shape::new([batch, keys, kv_heads, d]));
        let dv = zeros_f32(&q, Shape::new([batch, keys, kv_heads, d]));
        return (
            to_dtype(dq, dtype),
            to_dtype(dk, dtype),
            to_dtype(dv, dtype),
        );
    }
    let dk = empty_f32(&q, Shape::new([batch, keys, kv_heads, d]));
    let dv = empty_f32(&q, Shape::new([batch, keys, kv_heads, d]));
    {
        let client = q.client.clone();
        let width = vector_width(&client, DType::F32, d);
        let d_vectors = d / width;
        let delta = delta_of(grad_out.clone(), out);
        let (count, dim) = row_grid(&client, queries, ROW_UNITS, "attention's backward");
        attention_dq::launch::<R>(
            &client,
            count,
            dim,
            width,
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            grad_out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            seq as u32,
            keys as u32,
            heads as u32,
            kv_heads as u32,
            queries as u32,
            scale,
            d_vectors,
        );
        let (count, dim) = row_grid(&client, key_rows, ROW_UNITS, "attention's backward");
        attention_dkv::launch::<R>(
            &client,
            count,
            dim,
            width,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            grad_out.into_tensor_arg(),
            lse.into_tensor_arg(),
            delta.into_tensor_arg(),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            seq as u32,
            keys as u32,
            heads as u32,
            kv_heads as u32,
            key_rows as u32,
            scale,
            d_vectors,
        );
    }
    (
        to_dtype(dq, dtype),
        to_dtype(dk, dtype),
        to_dtype(dv, dtype),
    )
}
