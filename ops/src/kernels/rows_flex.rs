//! RMSNorm, rotary embedding and SwiGLU on the CPU: [`RowOps`] for `Flex`,
//! one pass per op over rows split among rayon tasks, the row loops compiled
//! for the CPU's vector tier ([`super::cpu_dispatch`]).
//!
//! A forward writes into its input's buffer when it holds the only
//! reference (inference), into a new one otherwise (training keeps the
//! input for the backward). Sums over rows (RMSNorm's weight gradient) run
//! over fixed blocks of rows and add the blocks in order, so results do not
//! depend on the thread count or on scheduling.

use super::fast_math::{exp2_nonpos, fmadd};
use super::importance_flex::{f32_slice as slice, host_f32};
use super::rows::RowOps;
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

/// Rows per rayon task (and per block of RMSNorm's weight-gradient sums).
const ROWS_PER_TASK: usize = 16;

/// `x` as contiguous f32, owned by the caller to overwrite when nobody else
/// holds it; `None` when a new buffer is needed.
fn writable(x: FlexTensor) -> Result<FlexTensor, FlexTensor> {
    let x = host_f32(x);
    if x.is_unique() { Ok(x) } else { Err(x) }
}

/// Runs `row(out_row, index)` over rows of `width` of `out`, in parallel.
fn for_rows(out: &mut [f32], width: usize, row: impl Fn(&mut [f32], usize) + Sync) {
    if width == 0 {
        return;
    }
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (i, r) in rows.chunks_exact_mut(width).enumerate() {
                row(r, task * ROWS_PER_TASK + i);
            }
        });
}

/// The result's buffer: `x` itself when writable, else a copy of it, so
/// that each kernel computes in place.
fn output_from(x: FlexTensor) -> FlexTensor {
    match writable(x) {
        Ok(x) => x,
        Err(shared) => {
            FlexTensor::from_data(TensorData::new(slice(&shared).to_vec(), shared.shape()))
        }
    }
}

/// Back to the caller's dtype when the input was not f32.
fn in_dtype(t: FlexTensor, dtype: DType) -> FlexTensor {
    if dtype == DType::F32 {
        t
    } else {
        Flex::float_cast(t, dtype.into())
    }
}

/// `sum(x^2)` of a row, in f32 lanes.
#[inline(always)]
fn sum_squares<const FMA: bool>(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = fmadd::<FMA>(c[i], c[i], lanes[i]);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `1 / sqrt(mean(x^2) + eps)`.
#[inline(always)]
fn inv_rms<const FMA: bool>(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_squares::<FMA>(x) / x.len() as f32 + eps).sqrt()
}

/// One row of RMSNorm, in place.
#[inline(always)]
fn rms_norm_row<const FMA: bool>(x: &mut [f32], w: &[f32], eps: f32) {
    let r = inv_rms::<FMA>(x, eps);
    x.iter_mut().zip(w).for_each(|(v, w)| *v = *v * r * w);
}

/// One row of RMSNorm's backward: `dx` (written over `g`) and the row's
/// `dw` terms added to `dw`.
#[inline(always)]
fn rms_norm_backward_row<const FMA: bool>(
    x: &[f32],
    w: &[f32],
    g: &mut [f32],
    dw: &mut [f32],
    eps: f32,
) {
    let r = inv_rms::<FMA>(x, eps);
    let mut dot = 0.0f32;
    for ((&x, &w), (g, dw)) in x.iter().zip(w).zip(g.iter().zip(dw.iter_mut())) {
        *dw = fmadd::<FMA>(*g * x, r, *dw);
        dot = fmadd::<FMA>(x * w, *g, dot);
    }
    let c = r * r * r * dot / x.len() as f32;
    for ((&x, &w), g) in x.iter().zip(w).zip(g.iter_mut()) {
        *g = fmadd::<FMA>(r * w, *g, -c * x);
    }
}

/// One position's heads: rotated in place.
#[inline(always)]
fn rope_row<const FMA: bool>(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len() / 2;
    let (c1, c2) = cos.split_at(half);
    let (s1, s2) = sin.split_at(half);
    for head in x.chunks_exact_mut(cos.len()) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = fmadd::<FMA>(x1, c1[i], x2 * s1[i]);
            b[i] = fmadd::<FMA>(x2, c2[i], x1 * s2[i]);
        }
    }
}

/// The logistic function `1 / (1 + e^-x)`, without overflow.
#[inline(always)]
fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    let e = exp2_nonpos::<FMA>(-x.abs() * std::f32::consts::LOG2_E);
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

/// `g = silu(g) * u` in place.
#[inline(always)]
fn swiglu_row<const FMA: bool>(g: &mut [f32], u: &[f32]) {
    g.iter_mut()
        .zip(u)
        .for_each(|(g, u)| *g = *g * sigmoid::<FMA>(*g) * u);
}

/// `dy -> (dgate, dup)`: `dgate` over `dy`, `dup` into `du`.
#[inline(always)]
fn swiglu_backward_row<const FMA: bool>(g: &[f32], u: &[f32], dy: &mut [f32], du: &mut [f32]) {
    for ((&g, &u), (dy, du)) in g.iter().zip(u).zip(dy.iter_mut().zip(du.iter_mut())) {
        let s = sigmoid::<FMA>(g);
        *du = *dy * g * s;
        *dy = *dy * u * s * fmadd::<FMA>(g, 1.0 - s, 1.0);
    }
}

mod simd {
    use crate::kernels::cpu_dispatch::dispatch;

    dispatch! {
        /// [`super::rms_norm_row`].
        fn rms_norm_row(x: &mut [f32], w: &[f32], eps: f32) -> () = super::rms_norm_row::<true>, baseline = super::baseline::rms_norm_row;
    }
    dispatch! {
        /// [`super::rms_norm_backward_row`].
        fn rms_norm_backward_row(x: &[f32], w: &[f32], g: &mut [f32], dw: &mut [f32], eps: f32) -> () = super::rms_norm_backward_row::<true>, baseline = super::baseline::rms_norm_backward_row;
    }
    dispatch! {
        /// [`super::rope_row`].
        fn rope_row(x: &mut [f32], cos: &[f32], sin: &[f32]) -> () = super::rope_row::<true>, baseline = super::baseline::rope_row;
    }
    dispatch! {
        /// [`super::swiglu_row`].
        fn swiglu_row(g: &mut [f32], u: &[f32]) -> () = super::swiglu_row::<true>, baseline = super::baseline::swiglu_row;
    }
    dispatch! {
        /// [`super::swiglu_backward_row`].
        fn swiglu_backward_row(g: &[f32], u: &[f32], dy: &mut [f32], du: &mut [f32]) -> () = super::swiglu_backward_row::<true>, baseline = super::baseline::swiglu_backward_row;
    }
}

/// The row kernels without the vector tiers: fused multiply-adds are
/// instructions on aarch64, a slow libm call on baseline x86-64.
mod baseline {
    const FMA: bool = cfg!(target_arch = "aarch64");

    pub fn rms_norm_row(x: &mut [f32], w: &[f32], eps: f32) {
        super::rms_norm_row::<FMA>(x, w, eps)
    }
    pub fn rms_norm_backward_row(x: &[f32], w: &[f32], g: &mut [f32], dw: &mut [f32], eps: f32) {
        super::rms_norm_backward_row::<FMA>(x, w, g, dw, eps)
    }
    pub fn rope_row(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        super::rope_row::<FMA>(x, cos, sin)
    }
    pub fn swiglu_row(g: &mut [f32], u: &[f32]) {
        super::swiglu_row::<FMA>(g, u)
    }
    pub fn swiglu_backward_row(g: &[f32], u: &[f32], dy: &mut [f32], du: &mut [f32]) {
        super::swiglu_backward_row::<FMA>(g, u, dy, du)
    }
}

/// The row length of a tensor of any rank: SwiGLU is elementwise, with
/// rows of the last axis (`[batch, seq, width]` in the model,
/// `[rows, width]` before a product, `kernels::product_inputs`).
fn last_dim(t: &FlexTensor) -> usize {
    t.shape().as_slice().last().copied().unwrap_or(1)
}

impl RowOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f32) -> FlexTensor {
        let dtype = x.dtype();
        let weight = host_f32(weight);
        let w = slice(&weight);
        let mut y = output_from(x);
        for_rows(y.storage_mut::<f32>(), w.len(), |row, _| {
            simd::rms_norm_row(row, w, eps)
        });
        in_dtype(y, dtype)
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f32,
        residual: Option<FlexTensor>,
    ) -> (FlexTensor, FlexTensor) {
        let (x_type, w_type) = (x.dtype(), weight.dtype());
        let residual = residual.map(|r| {
            assert!(
                x_type == DType::F32 && r.dtype() == DType::F32 && r.shape() == x.shape(),
                "RMSNorm backward: a residual gradient is summed only into an f32 dx of its shape"
            );
            host_f32(r)
        });
        let (x, weight) = (host_f32(x), host_f32(weight));
        let (xs, w) = (slice(&x), slice(&weight));
        let rs = residual.as_ref().map(slice);
        let hidden = w.len();
        let mut dx = output_from(grad);
        let block = (hidden * ROWS_PER_TASK).max(1);
        // One weight-gradient partial per block of rows, summed in order.
        let partials: Vec<Vec<f32>> = dx
            .storage_mut::<f32>()
            .par_chunks_mut(block)
            .enumerate()
            .map(|(b, g)| {
                let at = b * block..b * block + g.len();
                let mut dw = vec![0.0f32; hidden];
                for (g, x) in g
                    .chunks_exact_mut(hidden)
                    .zip(xs[at.clone()].chunks_exact(hidden))
                {
                    simd::rms_norm_backward_row(x, w, g, &mut dw, eps);
                }
                if let Some(rs) = rs {
                    g.iter_mut().zip(&rs[at]).for_each(|(d, r)| *d += r);
                }
                dw
            })
            .collect();
        let mut dw = vec![0.0f32; hidden];
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        let dw = FlexTensor::from_data(TensorData::new(dw, [hidden]));
        (in_dtype(dx, x_type), in_dtype(dw, w_type))
    }

    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let dtype = x.dtype();
        let [_, seq, heads, d]: [usize; 4] = x.shape().dims();
        let (cos, sin) = (host_f32(cos), host_f32(sin));
        let (cos, sin) = (slice(&cos), slice(&sin));
        let mut y = output_from(x);
        for_rows(y.storage_mut::<f32>(), heads * d, |row, i| {
            let at = (i % seq) * d;
            simd::rope_row(row, &cos[at..at + d], &sin[at..at + d]);
        });
        in_dtype(y, dtype)
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let dtype = gate.dtype();
        let width = last_dim(&gate);
        let up = host_f32(up);
        let u = slice(&up);
        let mut y = output_from(gate);
        for_rows(y.storage_mut::<f32>(), width, |row, i| {
            simd::swiglu_row(row, &u[i * width..(i + 1) * width]);
        });
        in_dtype(y, dtype)
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (g_type, u_type) = (gate.dtype(), up.dtype());
        let shape = gate.shape();
        let width = last_dim(&gate);
        let (gate, up) = (host_f32(gate), host_f32(up));
        let (g, u) = (slice(&gate), slice(&up));
        let mut dg = output_from(grad);
        let mut du = vec![0.0f32; g.len()];
        if width > 0 {
            dg.storage_mut::<f32>()
                .par_chunks_mut(width * ROWS_PER_TASK)
                .zip(du.par_chunks_mut(width * ROWS_PER_TASK))
                .enumerate()
                .for_each(|(task, (dy, du))| {
                    let at = task * width * ROWS_PER_TASK;
                    let n = dy.len();
                    simd::swiglu_backward_row(&g[at..at + n], &u[at..at + n], dy, du);
                });
        }
        let du = FlexTensor::from_data(TensorData::new(du, shape));
        (in_dtype(dg, g_type), in_dtype(du, u_type))
    }
}
