//! Causal grouped-query attention on the CPU: [`AttentionOps`] for `Flex`.
//!
//! Forward: rayon tasks over (batch row, block of [`QUERY_BLOCK`] queries);
//! each task runs every head over its queries, so its output rows
//! `[queries, heads, d]` are one contiguous slice. Per head, the block's
//! scores against the keys it may see (`[block, visible keys]`, the only
//! score storage) come from one gemm reading the keys in place, with the
//! head's key/value head picked by stride (nothing is repeated); a
//! vectorized softmax per row (masking the keys beyond each query); one more
//! gemm for the weighted values, written straight into the output rows.
//!
//! Backward (as FlashAttention-2's, with the forward's log-sum-exp): tasks
//! over (batch row, query head). Per query block, the weights are
//! recomputed from the scores and the log-sum-exp, then four gemms give
//! `dV += P^T dO`, `dP = dO V^T`, `dQ = dS K` and `dK += dS^T Q` with
//! `dS = scale P (dP - rowsum(dO * O))`. Each task writes `dQ` of its head
//! and keeps `dK`, `dV` of its head to itself; a last pass sums those over
//! the query heads that share a key/value head.
//!
//! Inputs of other float dtypes are computed in f32.

use super::Precision;
use super::attention::AttentionOps;
use super::fast_math::{exp2_nonpos, fmadd, ln_pos};
use super::importance_flex::{f32_slice as slice, host_f32};
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

/// Queries per block: the score block is `QUERY_BLOCK x keys` f32 (64 KiB
/// at 256 keys), small enough to stay in L2 between its gemms.
const QUERY_BLOCK: usize = 64;

/// Shapes of one call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    seq: usize,
    keys: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
}

impl Dims {
    fn of(q: &FlexTensor, k: &FlexTensor) -> Self {
        let [batch, seq, heads, d]: [usize; 4] = q.shape().dims();
        let [_, keys, kv_heads, _]: [usize; 4] = k.shape().dims();
        Self {
            batch,
            seq,
            keys,
            heads,
            kv_heads,
            d,
        }
    }

    /// Keys before the first query's own (a cache).
    fn past(&self) -> usize {
        self.keys - self.seq
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Row strides of queries and of keys/values (one position).
    fn q_row(&self) -> usize {
        self.heads * self.d
    }

    fn kv_row(&self) -> usize {
        self.kv_heads * self.d
    }
}

/// `dst[m, n] = beta * sum_k lhs[m, k] rhs[k, n]` (or `dst += ...` when
/// `accumulate`), row-major strides given as (row, column), one thread.
///
/// # Safety
/// Every pointer must address its matrix of the given shape and strides.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_strides: [usize; 2],
    lhs: *const f32,
    lhs_strides: [usize; 2],
    rhs: *const f32,
    rhs_strides: [usize; 2],
    beta: f32,
    accumulate: bool,
) {
    let s = |x: usize| x as isize;
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            s(dst_strides[1]),
            s(dst_strides[0]),
            accumulate,
            lhs,
            s(lhs_strides[1]),
            s(lhs_strides[0]),
            rhs,
            s(rhs_strides[1]),
            s(rhs_strides[0]),
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Forward of one (batch row, query block): every head. `out` is the
/// block's `[rows, heads, d]`, `lse` its `[rows, heads]`, `scores` scratch
/// of at least `rows * keys`.
#[allow(clippy::too_many_arguments)]
fn forward_block(
    dims: Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    first: usize,
    out: &mut [f32],
    lse: &mut [f32],
    scores: &mut [f32],
    scale: f32,
) {
    let rows = out.len() / dims.q_row();
    // The last query of the block sees this many keys; earlier ones fewer.
    let visible = dims.past() + first + rows;
    let (q_row, kv_row, d) = (dims.q_row(), dims.kv_row(), dims.d);
    let k_base = b * dims.keys * kv_row;
    for h in 0..dims.heads {
        let g = h / dims.group();
        let q_at = (b * dims.seq + first) * q_row + h * d;
        let kv_at = k_base + g * d;
        let s = &mut scores[..rows * visible];
        // SAFETY: q rows [first, first + rows) of head h, keys/values
        // [0, visible) of head g, and the score block, all in bounds.
        unsafe {
            gemm(
                [rows, visible, d],
                s.as_mut_ptr(),
                [visible, 1],
                q[q_at..].as_ptr(),
                [q_row, 1],
                k[kv_at..].as_ptr(),
                [1, kv_row], // K^T: d down, keys across
                scale,
                false,
            );
        }
        for (r, row) in s.chunks_exact_mut(visible).enumerate() {
            let seen = visible - rows + r + 1;
            lse[r * dims.heads + h] = simd::softmax_prefix(row, seen);
        }
        // SAFETY: as above; the output rows of head h.
        unsafe {
            gemm(
                [rows, d, visible],
                out[h * d..].as_mut_ptr(),
                [q_row, 1],
                s.as_ptr(),
                [visible, 1],
                v[kv_at..].as_ptr(),
                [kv_row, 1],
                1.0,
                false,
            );
        }
    }
}

/// Softmax in place over `row[..seen]`, zeros after it; returns the
/// log-sum-exp of `row[..seen]`.
#[inline(always)]
fn softmax_prefix<const FMA: bool>(row: &mut [f32], seen: usize) -> f32 {
    let (live, masked) = row.split_at_mut(seen);
    masked.fill(0.0);
    let max = live.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0f32;
    for x in live.iter_mut() {
        let e = exp2_nonpos::<FMA>((*x - max) * std::f32::consts::LOG2_E);
        *x = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
    max + ln_pos::<FMA>(sum)
}

/// `row[j] = scale * p[j] * (row[j] - delta)` with `p[j] = exp(s[j] -
/// lse)` recomputed from the scores in `s` (which become `p`), over
/// `..seen`; zeros after it in both.
#[inline(always)]
fn score_gradient<const FMA: bool>(
    s: &mut [f32],
    dp: &mut [f32],
    seen: usize,
    lse: f32,
    delta: f32,
    scale: f32,
) {
    let (s_live, s_masked) = s.split_at_mut(seen);
    let (dp_live, dp_masked) = dp.split_at_mut(seen);
    s_masked.fill(0.0);
    dp_masked.fill(0.0);
    for (x, g) in s_live.iter_mut().zip(dp_live.iter_mut()) {
        let p = exp2_nonpos::<FMA>((*x - lse) * std::f32::consts::LOG2_E);
        *x = p;
        *g = scale * p * (*g - delta);
    }
}

/// `sum_i a[i] b[i]` in f32 lanes.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            lanes[i] = fmadd::<FMA>(x[i], y[i], lanes[i]);
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

mod simd {
    use crate::kernels::cpu_dispatch::dispatch;

    dispatch! {
        /// [`super::softmax_prefix`].
        fn softmax_prefix(row: &mut [f32], seen: usize) -> f32 = super::softmax_prefix::<true>, baseline = super::softmax_prefix_baseline;
    }
    dispatch! {
        /// [`super::score_gradient`].
        fn score_gradient(s: &mut [f32], dp: &mut [f32], seen: usize, lse: f32, delta: f32, scale: f32) -> () = super::score_gradient::<true>, baseline = super::score_gradient_baseline;
    }
    dispatch! {
        /// [`super::dot`].
        fn dot(a: &[f32], b: &[f32]) -> f32 = super::dot::<true>, baseline = super::dot_baseline;
    }
}

// Without the vector tiers: fused multiply-adds are instructions on
// aarch64, a slow libm call on baseline x86-64.
const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

fn softmax_prefix_baseline(row: &mut [f32], seen: usize) -> f32 {
    softmax_prefix::<BASELINE_FMA>(row, seen)
}

fn score_gradient_baseline(
    s: &mut [f32],
    dp: &mut [f32],
    seen: usize,
    lse: f32,
    delta: f32,
    scale: f32,
) {
    score_gradient::<BASELINE_FMA>(s, dp, seen, lse, delta, scale)
}

fn dot_baseline(a: &[f32], b: &[f32]) -> f32 {
    dot::<BASELINE_FMA>(a, b)
}

/// The forward over the whole batch: `(out [batch, seq, heads, d], lse
/// [batch, seq, heads])`.
fn forward_host(dims: Dims, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0.0f32; dims.batch * dims.seq * dims.q_row()];
    let mut lse = vec![0.0f32; dims.batch * dims.seq * dims.heads];
    if out.is_empty() {
        return (out, lse);
    }
    let block = QUERY_BLOCK.min(dims.seq);
    let per_row = |len: usize| dims.seq * len;
    out.par_chunks_mut(per_row(dims.q_row()))
        .zip(lse.par_chunks_mut(per_row(dims.heads)))
        .enumerate()
        .for_each(|(b, (out, lse))| {
            out.par_chunks_mut(block * dims.q_row())
                .zip(lse.par_chunks_mut(block * dims.heads))
                .enumerate()
                .for_each_init(Vec::new, |scores, (blk, (out, lse))| {
                    scores.resize(block * dims.keys, 0.0);
                    forward_block(dims, q, k, v, b, blk * block, out, lse, scores, scale);
                });
        });
    (out, lse)
}

/// One (batch row, query head)'s gradients: `dq [seq, d]` of the head,
/// and its own shares of `dk`, `dv` (`[keys, d]` each).
struct HeadGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// What the backward reads, all `f32` in the op's layouts.
struct Saved<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// The backward of one (batch row, query head), block by block.
fn backward_head(dims: Dims, x: &Saved, b: usize, h: usize, scale: f32) -> HeadGrads {
    let (q_row, kv_row, d) = (dims.q_row(), dims.kv_row(), dims.d);
    let g = h / dims.group();
    let mut grads = HeadGrads {
        dq: vec![0.0; dims.seq * d],
        dk: vec![0.0; dims.keys * d],
        dv: vec![0.0; dims.keys * d],
    };
    let block = QUERY_BLOCK.min(dims.seq);
    let mut s = vec![0.0f32; block * dims.keys];
    let mut dp = vec![0.0f32; block * dims.keys];
    let kv_at = b * dims.keys * kv_row + g * d;
    for first in (0..dims.seq).step_by(block) {
        let rows = block.min(dims.seq - first);
        let visible = dims.past() + first + rows;
        let q_at = (b * dims.seq + first) * q_row + h * d;
        let s = &mut s[..rows * visible];
        let dp = &mut dp[..rows * visible];
        // SAFETY (every gemm below): rows [first, first + rows) of head h in
        // q, out and dout, keys [0, visible) of head g, the head's gradient
        // buffers and the two score blocks, all in bounds.
        unsafe {
            gemm(
                [rows, visible, d],
                s.as_mut_ptr(),
                [visible, 1],
                x.q[q_at..].as_ptr(),
                [q_row, 1],
                x.k[kv_at..].as_ptr(),
                [1, kv_row],
                scale,
                false,
            );
            gemm(
                [rows, visible, d],
                dp.as_mut_ptr(),
                [visible, 1],
                x.dout[q_at..].as_ptr(),
                [q_row, 1],
                x.v[kv_at..].as_ptr(),
                [1, kv_row],
                1.0,
                false,
            );
        }
        for r in 0..rows {
            let at = q_at + r * q_row;
            let delta = simd::dot(&x.dout[at..at + d], &x.out[at..at + d]);
            let lse = x.lse[(b * dims.seq + first + r) * dims.heads + h];
            let seen = visible - rows + r + 1;
            let span = r * visible..(r + 1) * visible;
            simd::score_gradient(&mut s[span.clone()], &mut dp[span], seen, lse, delta, scale);
        }
        // s now holds P, dp holds dS.
        unsafe {
            gemm(
                [visible, d, rows],
                grads.dv.as_mut_ptr(),
                [d, 1],
                s.as_ptr(),
                [1, visible], // P^T
                x.dout[q_at..].as_ptr(),
                [q_row, 1],
                1.0,
                true,
            );
            gemm(
                [rows, d, visible],
                grads.dq[first * d..].as_mut_ptr(),
                [d, 1],
                dp.as_ptr(),
                [visible, 1],
                x.k[kv_at..].as_ptr(),
                [kv_row, 1],
                1.0,
                false,
            );
            gemm(
                [visible, d, rows],
                grads.dk.as_mut_ptr(),
                [d, 1],
                dp.as_ptr(),
                [1, visible], // dS^T
                x.q[q_at..].as_ptr(),
                [q_row, 1],
                1.0,
                true,
            );
        }
    }
    grads
}

/// The backward over the whole batch: `(dq, dk, dv)` in the layouts of
/// `q`, `k`, `v`.
fn backward_host(dims: Dims, x: &Saved, scale: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut dq = vec![0.0f32; dims.batch * dims.seq * dims.q_row()];
    let mut dk = vec![0.0f32; dims.batch * dims.keys * dims.kv_row()];
    let mut dv = vec![0.0f32; dk.len()];
    if dq.is_empty() {
        return (dq, dk, dv);
    }
    let heads: Vec<HeadGrads> = (0..dims.batch * dims.heads)
        .into_par_iter()
        .map(|task| backward_head(dims, x, task / dims.heads, task % dims.heads, scale))
        .collect();
    let d = dims.d;
    dq.par_chunks_mut(dims.seq * dims.q_row())
        .zip(dk.par_chunks_mut(dims.keys * dims.kv_row()))
        .zip(dv.par_chunks_mut(dims.keys * dims.kv_row()))
        .enumerate()
        .for_each(|(b, ((dq, dk), dv))| {
            let own = &heads[b * dims.heads..(b + 1) * dims.heads];
            for (h, grads) in own.iter().enumerate() {
                for (i, row) in grads.dq.chunks_exact(d).enumerate() {
                    let at = i * dims.q_row() + h * d;
                    dq[at..at + d].copy_from_slice(row);
                }
                let g = h / dims.group();
                for (j, (k_row, v_row)) in grads
                    .dk
                    .chunks_exact(d)
                    .zip(grads.dv.chunks_exact(d))
                    .enumerate()
                {
                    let at = j * dims.kv_row() + g * d;
                    dk[at..at + d]
                        .iter_mut()
                        .zip(k_row)
                        .for_each(|(o, x)| *o += x);
                    dv[at..at + d]
                        .iter_mut()
                        .zip(v_row)
                        .for_each(|(o, x)| *o += x);
                }
            }
        });
    (dq, dk, dv)
}

/// `data` of `shape` as a tensor of `dtype` (cast from f32 when it is not).
fn tensor_of(data: Vec<f32>, shape: Vec<usize>, dtype: DType) -> FlexTensor {
    let t = FlexTensor::from_data(TensorData::new(data, shape));
    match dtype {
        DType::F32 => t,
        other => Flex::float_cast(t, other.into()),
    }
}

impl AttentionOps for Flex {
    fn causal_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        scale: f32,
        with_lse: bool,
        _precision: Precision, // f32 on the CPU
    ) -> (FlexTensor, Option<FlexTensor>) {
        let dims = Dims::of(&q, &k);
        let dtype = q.dtype();
        let (q, k, v) = (host_f32(q), host_f32(k), host_f32(v));
        let (out, lse) = forward_host(dims, slice(&q), slice(&k), slice(&v), scale);
        let out = tensor_of(out, vec![dims.batch, dims.seq, dims.heads, dims.d], dtype);
        let lse = with_lse.then(|| {
            FlexTensor::from_data(TensorData::new(lse, [dims.batch, dims.seq, dims.heads]))
        });
        (out, lse)
    }

    fn causal_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        grad_out: FlexTensor,
        scale: f32,
        _precision: Precision, // f32 on the CPU
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dims = Dims::of(&q, &k);
        let (q_type, k_type) = (q.dtype(), k.dtype());
        let [q, k, v, out, lse, dout] = [q, k, v, out, lse, grad_out].map(host_f32);
        let saved = Saved {
            q: slice(&q),
            k: slice(&k),
            v: slice(&v),
            out: slice(&out),
            lse: slice(&lse),
            dout: slice(&dout),
        };
        let (dq, dk, dv) = backward_host(dims, &saved, scale);
        let kv_shape = vec![dims.batch, dims.keys, dims.kv_heads, dims.d];
        (
            tensor_of(dq, vec![dims.batch, dims.seq, dims.heads, dims.d], q_type),
            tensor_of(dk, kv_shape.clone(), k_type),
            tensor_of(dv, kv_shape, k_type),
        )
    }
}
