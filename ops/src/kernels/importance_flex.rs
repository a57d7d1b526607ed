//! The importance reductions on the CPU: [`ImportanceOps`] for `Flex`, as a
//! rayon twin of the CubeCL kernels. Reads the tensor's host data in place
//! (f32; other dtypes are cast first), accumulates in f64 inside a call, and
//! adds into the f32 accumulators.

use super::importance::{Aggregation, COSINE_EPS, ImportanceOps};
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, TensorMetadata};
use rayon::prelude::*;

/// Rows a rayon task reads at least (about 64 KiB), so that small inputs do
/// not drown in scheduling.
const MIN_TASK_BYTES: usize = 64 << 10;

/// Per-channel sums over batch rows of one call: `x` `[B, S, C]` row-major,
/// `a[b, c]` the `seq_agg` aggregate of `x[b, :, c]`. Returns
/// `(sum_b a[b, :], sum_b a[b, :]^2)` in f64.
///
/// Parallel over (batch row, sequence chunk) tasks; each task sums its rows
/// per channel (contiguous, vectorizable), then the chunks of a batch row are
/// combined and the sequence aggregate taken. Var sums `x - x[b, 0, c]` and
/// its square, which keeps the variance accurate under large offsets.
pub fn channel_sums_host(
    x: &[f32],
    [batch, seq, channels]: [usize; 3],
    seq_agg: Aggregation,
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(x.len(), batch * seq * channels, "x is not [B, S, C]");
    let mut sum_a = vec![0.0f64; channels];
    let mut sum_a2 = vec![0.0f64; channels];
    if batch == 0 || seq == 0 || channels == 0 {
        return (sum_a, sum_a2);
    }

    // Split every batch row into chunks of rows: enough tasks for all
    // threads, none smaller than MIN_TASK_BYTES.
    let threads = rayon::current_num_threads();
    let min_rows = (MIN_TASK_BYTES / (channels * 4)).max(1);
    let rows_per_task = (batch * seq).div_ceil(4 * threads).max(min_rows).min(seq);
    let chunks = seq.div_ceil(rows_per_task);
    let var = seq_agg == Aggregation::Var;

    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..batch * chunks)
        .into_par_iter()
        .map(|task| {
            let (b, chunk) = (task / chunks, task % chunks);
            let row0 = b * seq;
            let begin = chunk * rows_per_task;
            let end = (begin + rows_per_task).min(seq);
            let rows = &x[(row0 + begin) * channels..(row0 + end) * channels];
            let mut p1 = vec![0.0f64; channels];
            let mut p2 = if var {
                vec![0.0f64; channels]
            } else {
                Vec::new()
            };
            let shift = &x[row0 * channels..(row0 + 1) * channels];
            simd::chunk_sums(rows, shift, seq_agg, &mut p1, &mut p2);
            (p1, p2)
        })
        .collect();

    let n = seq as f64;
    let mut q1 = vec![0.0f64; channels];
    let mut q2 = vec![0.0f64; channels];
    for per_row in partials.chunks_exact(chunks) {
        q1.fill(0.0);
        q2.fill(0.0);
        for (p1, p2) in per_row {
            add_assign(&mut q1, p1);
            if var {
                add_assign(&mut q2, p2);
            }
        }
        for c in 0..channels {
            let a = match seq_agg {
                Aggregation::Mean => q1[c] / n,
                Aggregation::L2 => q1[c].sqrt(),
                Aggregation::Var => {
                    let mean = q1[c] / n;
                    (q2[c] / n - mean * mean).max(0.0)
                }
            };
            sum_a[c] += a;
            sum_a2[c] += a * a;
        }
    }
    (sum_a, sum_a2)
}

fn add_assign(acc: &mut [f64], add: &[f64]) {
    for (a, b) in acc.iter_mut().zip(add) {
        *a += b;
    }
}

/// The sums of one task's rows into `p1` (and `p2` for var), f64:
/// mean `sum |x|`, l2 `sum x^2`, var `sum d`, `sum d^2` with `d = x - shift`.
#[inline(always)]
fn chunk_sums(rows: &[f32], shift: &[f32], agg: Aggregation, p1: &mut [f64], p2: &mut [f64]) {
    match agg {
        Aggregation::Mean => sum_rows(rows, p1, |v| v.abs()),
        Aggregation::L2 => sum_rows(rows, p1, |v| v * v),
        Aggregation::Var => sum_shifted_rows(rows, shift, p1, p2),
    }
}

/// Rows narrower than this are read from four quarters of a task at once
/// (see [`row_quads`]); wider ones four adjacent rows at a time. Measured
/// with `bench importance` (docs/BENCHMARKS.md): quarters cut the time of a
/// [8, 512, 1536] call (6 KiB rows) by 15-36%, were level with adjacent rows
/// at 16 KiB rows (within the noise), and at 56 KiB rows level with the
/// sequence mean but up to 14% slower with l2 and var.
const QUARTERS_BELOW_ROW_BYTES: usize = 16 << 10;

/// The rows of `rows` four at a time, and the rows left over (fewer than
/// four).
///
/// Narrow rows come from the four contiguous quarters of `rows`, row `i` of
/// each, so that every one of the four read streams runs straight through
/// its quarter and the hardware prefetcher follows it across rows. Four
/// adjacent rows would make all four streams jump ahead by four rows every
/// pass, and the prefetcher loses them once per row, which costs much when
/// a row is short. Wide rows are long streams either way, and adjacent rows
/// keep the reads in one region of memory.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn row_quads(
    rows: &[f32],
    channels: usize,
) -> (
    impl Iterator<Item = ((&[f32], &[f32]), (&[f32], &[f32]))>,
    &[f32],
) {
    let quads = rows.len() / channels / 4;
    // Quad `i`, row `k` is row `i * step + k * stride` of `rows`.
    let (step, stride) = if channels * 4 < QUARTERS_BELOW_ROW_BYTES {
        (1, quads)
    } else {
        (4, 1)
    };
    let row = move |r: usize| &rows[r * channels..(r + 1) * channels];
    let iter = (0..quads).map(move |i| {
        let first = i * step;
        (
            (row(first), row(first + stride)),
            (row(first + 2 * stride), row(first + 3 * stride)),
        )
    });
    (iter, &rows[4 * quads * channels..])
}

/// `acc[c] += sum over rows of f(row[c])`, four rows per pass over `acc`.
#[inline(always)]
fn sum_rows(rows: &[f32], acc: &mut [f64], f: impl Fn(f64) -> f64 + Copy) {
    let channels = acc.len();
    let (quads, leftover) = row_quads(rows, channels);
    for ((r0, r1), (r2, r3)) in quads {
        let quad_rows = r0.iter().zip(r1).zip(r2).zip(r3);
        for (a, (((&x0, &x1), &x2), &x3)) in acc.iter_mut().zip(quad_rows) {
            *a += (f(x0 as f64) + f(x1 as f64)) + (f(x2 as f64) + f(x3 as f64));
        }
    }
    for row in leftover.chunks_exact(channels) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += f(v as f64);
        }
    }
}

/// `acc1[c] += sum (row[c] - shift[c])`, `acc2[c] += sum (row[c] - shift[c])^2`,
/// four rows per pass over the accumulators.
#[inline(always)]
fn sum_shifted_rows(rows: &[f32], shift: &[f32], acc1: &mut [f64], acc2: &mut [f64]) {
    let channels = acc1.len();
    let shift: Vec<f64> = shift.iter().map(|&k| k as f64).collect();
    let (quads, leftover) = row_quads(rows, channels);
    for ((r0, r1), (r2, r3)) in quads {
        let accs = acc1.iter_mut().zip(acc2.iter_mut());
        let columns = r0.iter().zip(r1).zip(r2.iter().zip(r3)).zip(&shift);
        for ((a1, a2), (((&x0, &x1), (&x2, &x3)), &k)) in accs.zip(columns) {
            let (d0, d1) = (x0 as f64 - k, x1 as f64 - k);
            let (d2, d3) = (x2 as f64 - k, x3 as f64 - k);
            *a1 += (d0 + d1) + (d2 + d3);
            *a2 += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
        }
    }
    for row in leftover.chunks_exact(channels) {
        let accs = acc1.iter_mut().zip(acc2.iter_mut());
        for ((a1, a2), (&x, &k)) in accs.zip(row.iter().zip(&shift)) {
            let d = x as f64 - k;
            *a1 += d;
            *a2 += d * d;
        }
    }
}

/// The hot loops for the widest vector instructions the CPU has
/// ([`crate::kernels::cpu_dispatch`]). Same arithmetic in every version, so
/// results do not depend on the machine.
mod simd {
    use super::Aggregation;

    use crate::kernels::cpu_dispatch::dispatch;

    dispatch! {
        /// [`super::chunk_sums`].
        fn chunk_sums(
            rows: &[f32],
            shift: &[f32],
            agg: Aggregation,
            p1: &mut [f64],
            p2: &mut [f64]
        ) -> () = super::chunk_sums;
    }

    dispatch! {
        /// [`super::rows_cosine_distance`].
        fn rows_cosine_distance(u: &[f32], v: &[f32], channels: usize) -> f64
            = super::rows_cosine_distance;
    }
}

/// Sum over the rows of `u`, `v` (`[rows, C]` row-major) of `1 - cos`, in
/// f64, parallel over chunks of rows.
pub fn cosine_distance_sum_host(u: &[f32], v: &[f32], channels: usize) -> f64 {
    assert_eq!(u.len(), v.len(), "h_in and h_out differ in size");
    if channels == 0 || u.is_empty() {
        return 0.0;
    }
    let rows = u.len() / channels;
    let threads = rayon::current_num_threads();
    let min_rows = (MIN_TASK_BYTES / (channels * 8)).max(1);
    let rows_per_task = rows.div_ceil(4 * threads).max(min_rows);
    let task_len = rows_per_task * channels;
    u.par_chunks(task_len)
        .zip(v.par_chunks(task_len))
        .map(|(u, v)| simd::rows_cosine_distance(u, v, channels))
        .sum()
}

/// Sum of [`row_cosine_distance`] over the rows of `u`, `v`.
#[inline(always)]
fn rows_cosine_distance(u: &[f32], v: &[f32], channels: usize) -> f64 {
    u.chunks_exact(channels)
        .zip(v.chunks_exact(channels))
        .map(|(a, b)| row_cosine_distance(a, b))
        .sum()
}

/// `1 - cos(a, b)` in f64: cos = 1 when both are zero, the norms' product
/// guarded by [`COSINE_EPS`].
#[inline(always)]
fn row_cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut dot = [0.0f64; LANES];
    let mut aa = [0.0f64; LANES];
    let mut bb = [0.0f64; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            let (x, y) = (xa[l] as f64, xb[l] as f64);
            dot[l] += x * y;
            aa[l] += x * x;
            bb[l] += y * y;
        }
    }
    for (l, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        let (x, y) = (x as f64, y as f64);
        dot[l] += x * y;
        aa[l] += x * x;
        bb[l] += y * y;
    }
    let (dot, aa, bb) = (
        dot.iter().sum::<f64>(),
        aa.iter().sum::<f64>(),
        bb.iter().sum::<f64>(),
    );
    if aa == 0.0 && bb == 0.0 {
        return 0.0;
    }
    1.0 - dot / (aa.sqrt() * bb.sqrt()).max(COSINE_EPS)
}

/// The tensor as contiguous f32 host data (a copy only when the dtype or
/// the layout asks for one).
pub(super) fn host_f32(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        Flex::float_cast(t, FloatDType::F32)
    };
    let contiguous = t.to_contiguous();
    drop(t);
    contiguous
}

/// A contiguous f32 tensor's elements (see [`host_f32`]).
pub(super) fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 data")
}

/// `acc[i] += add[i]` on an f32 accumulator, in place when it is not shared.
fn add_into(acc: FlexTensor, add: &[f64]) -> FlexTensor {
    let mut acc = host_f32(acc);
    for (o, a) in acc.storage_mut::<f32>().iter_mut().zip(add) {
        *o = (*o as f64 + a) as f32;
    }
    acc
}

impl ImportanceOps for Flex {
    fn channel_stats_accumulate(
        x: FlexTensor,
        seq_agg: Aggregation,
        s1: FlexTensor,
        s2: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let dims: [usize; 3] = x.shape().dims();
        let x = host_f32(x);
        let data = x.as_slice::<f32>().expect("contiguous f32 data");
        let (sum_a, sum_a2) = channel_sums_host(data, dims, seq_agg);
        (add_into(s1, &sum_a), add_into(s2, &sum_a2))
    }

    fn cosine_distance_accumulate(
        h_in: FlexTensor,
        h_out: FlexTensor,
        acc: FlexTensor,
    ) -> FlexTensor {
        let [_, _, channels]: [usize; 3] = h_in.shape().dims();
        let (u, v) = (host_f32(h_in), host_f32(h_out));
        let sum = cosine_distance_sum_host(
            u.as_slice::<f32>().expect("contiguous f32 data"),
            v.as_slice::<f32>().expect("contiguous f32 data"),
            channels,
        );
        add_into(acc, &[sum])
    }
}
