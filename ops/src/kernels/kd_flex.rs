//! The fused KD loss on the CPU: [`KdOps`] for `Flex`, a rayon twin of the
//! CubeCL kernel.
//!
//! Rows are split over rayon tasks. Per row, in log2 units
//! (`a = (s - max s) log2(e) / tau`, `b` likewise from `t`, both <= 0 so no
//! exponential overflows):
//! 1. the two maxima;
//! 2. one pass computing `2^a`, `2^b`, their sums `Zs`, `Zt` and the loss's
//!    inner sum, storing `2^a` in the gradient row and `2^b` in a per-task
//!    scratch row, while prefetching the next row's logits from memory;
//! 3. one pass (two for JSD) writing the gradient from the stored values.
//!
//! A row's logits (384 KiB at V = 49 152) are read from memory once and then
//! stay in the core's L2 cache; the prefetch overlaps that read with the
//! previous row's arithmetic.
//!
//! Sums run in f32 over blocks of [`BLOCK`] elements, eight lanes wide, and
//! are carried in f64 between blocks; the row's loss and the total are f64.
//! `2^x` is a degree-5 minimax polynomial after range reduction, `ln` is
//! Cephes' `logf` (relative error about 2e-7 each), written so that the
//! compiler vectorizes them; with FMA where the CPU has it (so the last bits
//! of a result may differ between machines with and without FMA).
//!
//! Memory: besides the inputs and the `[N, V]` f32 gradient, each task holds
//! [`scratch_rows`] rows of `V` f32. The gradient is written into the
//! student's own buffer when the op receives the only reference to f32
//! student logits (as a training step does), so then nothing of size
//! `N x V` is allocated at all.

use super::fast_math::{exp2_nonpos, ln_pos};
use super::importance_flex::host_f32;
use super::kd::{KdLoss, KdOps, KdSpec};
use super::kd_flex_common::{Logits, host_logits, row_max, zeroed_gradient};
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

/// Vector width the hot loops are written for (AVX2 f32).
const LANES: usize = 8;

/// Elements summed in f32 lanes before the partial sums move to f64: short
/// enough that f32 rounding stays near 1e-7 of the sum.
const BLOCK: usize = 32 * LANES;

/// How many `V`-long f32 scratch rows a task holds for the given input
/// dtypes: one for the stored exponentials or log-ratios, one per input
/// converted from f16/bf16, and one copy of the student row when the
/// gradient overwrites the student's buffer.
pub fn scratch_rows(student: DType, teacher: DType, in_place: bool) -> usize {
    1 + usize::from(student != DType::F32 || in_place) + usize::from(teacher != DType::F32)
}

/// What every row of one call shares.
#[derive(Clone, Copy)]
struct RowSpec {
    loss: KdLoss,
    inv_tau: f32,
    /// `log2(e) / tau`: logits to log2 units.
    log2_scale: f32,
}

/// The next row's logits, `(first byte, bytes)` each, to prefetch while
/// this row is computed (empty when there is none).
#[derive(Clone, Copy)]
struct NextRow {
    s: (*const u8, usize),
    t: (*const u8, usize),
}

impl NextRow {
    const NONE: NextRow = NextRow {
        s: (std::ptr::null(), 0),
        t: (std::ptr::null(), 0),
    };

    /// Asks for the cache lines of elements `begin..end` of both rows
    /// (`vocab` elements each).
    #[inline(always)]
    fn prefetch(&self, begin: usize, end: usize, vocab: usize) {
        const LINE: usize = 64;
        for (ptr, len) in [self.s, self.t] {
            // Elements are 2 or 4 bytes, so len / vocab is exact.
            let size = len / vocab.max(1);
            let mut offset = begin * size / LINE * LINE;
            while offset < (end * size).min(len) {
                prefetch_l2(ptr.wrapping_add(offset));
                offset += LINE;
            }
        }
    }
}

#[inline(always)]
fn prefetch_l2(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing into the program and
    // never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T1>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Per-task buffers, `V` f32 each (empty when unused).
struct Scratch {
    work: Vec<f32>,
    s: Vec<f32>,
    t: Vec<f32>,
}

/// The loss over all rows, with the gradient written into `grad`.
///
/// `student` is `None` when `grad` holds the student's f32 logits on entry
/// (the gradient then replaces them row by row). Returns
/// `sum_n w[n] L_n * scale` in f64; rows of weight 0 get a zero gradient.
fn kd_host(
    student: Option<Logits>,
    teacher: Logits,
    weights: &[f32],
    grad: &mut [f32],
    vocab: usize,
    spec: KdSpec,
) -> f64 {
    let rows = weights.len();
    assert_eq!(grad.len(), rows * vocab, "gradient is not [N, V]");
    if rows == 0 || vocab == 0 {
        return 0.0;
    }
    let row = RowSpec {
        loss: spec.loss,
        inv_tau: 1.0 / spec.temperature,
        log2_scale: (std::f64::consts::LOG2_E / spec.temperature as f64) as f32,
    };
    let scale = spec.scale() as f64;
    let threads = rayon::current_num_threads();
    let rows_per_task = rows.div_ceil(4 * threads).max(1);
    let converts_s = !matches!(student, Some(Logits::F32(_)));
    let converts_t = !matches!(teacher, Logits::F32(_));
    let alloc = |needed: bool| {
        if needed {
            vec![0.0f32; vocab]
        } else {
            Vec::new()
        }
    };

    // Per-task sums collected in task order, then added in that order: the
    // total does not depend on how rayon scheduled the tasks.
    let partials: Vec<f64> = grad
        .par_chunks_mut(rows_per_task * vocab)
        .enumerate()
        .map_init(
            || Scratch {
                work: vec![0.0f32; vocab],
                s: alloc(converts_s),
                t: alloc(converts_t),
            },
            |scratch, (task, out)| {
                let mut sum = 0.0f64;
                let first = task * rows_per_task;
                let task_rows = out.len() / vocab;
                // Only for prefetching: never read or written through.
                let out_base: *const f32 = out.as_ptr();
                for (i, out_row) in out.chunks_exact_mut(vocab).enumerate() {
                    let n = first + i;
                    let w = weights[n];
                    if w == 0.0 {
                        if student.is_none() {
                            out_row.fill(0.0);
                        }
                        continue;
                    }
                    let next = (i + 1..task_rows)
                        .find(|&j| weights[first + j] != 0.0)
                        .map_or(NextRow::NONE, |j| NextRow {
                            s: match &student {
                                Some(s) => s.row_bytes(first + j, vocab),
                                None => (out_base.wrapping_add(j * vocab).cast(), vocab * 4),
                            },
                            t: teacher.row_bytes(first + j, vocab),
                        });
                    let s_row: &[f32] = match &student {
                        Some(s) => s.row(n, vocab, &mut scratch.s),
                        None => {
                            scratch.s.copy_from_slice(out_row);
                            &scratch.s
                        }
                    };
                    let t_row = teacher.row(n, vocab, &mut scratch.t);
                    let coef = (w as f64 * scale) as f32 * row.inv_tau;
                    let work = &mut scratch.work;
                    let loss = simd::kd_row(s_row, t_row, out_row, work, row, coef, next);
                    sum += w as f64 * scale * loss;
                }
                sum
            },
        )
        .collect();
    partials.iter().sum()
}

/// One row: writes `coef * dL/dz` (z = s / tau) into `out` and returns the
/// row's loss `L`. `s`, `t`, `out`, `work` are `V` long. `FMA`: whether
/// multiply-adds may be fused.
#[inline(always)]
fn kd_row<const FMA: bool>(
    s: &[f32],
    t: &[f32],
    out: &mut [f32],
    work: &mut [f32],
    row: RowSpec,
    coef: f32,
    next: NextRow,
) -> f64 {
    let (ms, mt) = (row_max(s), row_max(t));
    let it = row.inv_tau;
    // 2^a = e^((s - ms) / tau).
    let c = row.log2_scale;
    let ln2 = std::f64::consts::LN_2;
    let exp2 = exp2_nonpos::<FMA>;
    match row.loss {
        KdLoss::ForwardKl => {
            // L = sum q (b - a) - ln Zt + ln Zs, with sum q (b - a) = A / Zt.
            let sums = blocked_sums::<true>(s, t, out, work, next, |sv, tv| {
                let a = (sv - ms) * c;
                let b = (tv - mt) * c;
                let (es, et) = (exp2(a), exp2(b));
                // 0 where q underflows (or t is -inf), never 0 * inf.
                let term = if et > 0.0 { et * (b - a) } else { 0.0 };
                (es, et, [es, et, term])
            });
            let [zs, zt, acc] = sums;
            let loss = ln2 * acc / zt - zt.ln() + zs.ln();
            let (cs, ct) = ((coef as f64 / zs) as f32, (coef as f64 / zt) as f32);
            for (o, &w) in out.iter_mut().zip(work.iter()) {
                *o = *o * cs - w * ct;
            }
            loss
        }
        KdLoss::ReverseKl => {
            // L = sum p (a - b) + ln Zt - ln Zs; gradient p (a - b + ln Zt -
            // ln Zs - L) / tau.
            let sums = blocked_sums::<false>(s, t, out, work, next, |sv, tv| {
                let a = (sv - ms) * c;
                let b = (tv - mt) * c;
                let (es, et) = (exp2(a), exp2(b));
                let term = if es > 0.0 { es * (a - b) } else { 0.0 };
                (es, 0.0, [es, et, term])
            });
            let [zs, zt, acc] = sums;
            let shift = zt.ln() - zs.ln();
            let loss = ln2 * acc / zs + shift;
            // a - b reaches 2e4 / tau at logits of 1e4, where f32 resolves
            // it to 1e-3: the log-ratio minus L is formed in f64 (exact from
            // the f32 logits) and rounded once.
            let (d0, it64, k) = (ms as f64 - mt as f64, it as f64, shift - loss);
            let cs = (coef as f64 / zs) as f32;
            map_row(s, t, out, |sv, tv, es| {
                let r = (((sv as f64 - tv as f64) - d0) * it64 + k) as f32;
                if es > 0.0 { cs * es * r } else { 0.0 }
            });
            loss
        }
        KdLoss::Jsd { beta } => {
            let sums = blocked_sums::<true>(s, t, out, work, next, |sv, tv| {
                let es = exp2((sv - ms) * c);
                let et = exp2((tv - mt) * c);
                (es, et, [es, et, 0.0])
            });
            let [zs, zt, _] = sums;
            let (izs, izt) = ((1.0 / zs) as f32, (1.0 / zt) as f32);
            // KL(p || m) and KL(q || m); work[v] becomes ln(p / m). Terms of
            // p or q below the smallest normal f32 are dropped (< 1e-37
            // each), which keeps m > 0 wherever a ratio is taken.
            let [kl_pm, kl_qm, _] = blocked_map(out, work, |es, et| {
                let p = es * izs;
                let q = et * izt;
                // Not beta q + (1 - beta) p: 1 - beta rounds in f32, and
                // weights that do not sum to 1 shift every ln(p / m) alike.
                let m = p + beta * (q - p);
                let (p_ok, q_ok) = (p >= f32::MIN_POSITIVE, q >= f32::MIN_POSITIVE);
                let lp = ln_pos::<FMA>(if p_ok { p / m } else { 1.0 });
                let lq = ln_pos::<FMA>(if q_ok { q / m } else { 1.0 });
                let lp = if p_ok { lp } else { 0.0 };
                let lq = if q_ok { lq } else { 0.0 };
                (lp, [p * lp, q * lq, 0.0])
            });
            let loss = beta as f64 * kl_qm + (1.0 - beta as f64) * kl_pm;
            let k = kl_pm as f32;
            let c = (coef as f64 * (1.0 - beta as f64) / zs) as f32;
            for (o, &lp) in out.iter_mut().zip(work.iter()) {
                *o = c * *o * (lp - k);
            }
            loss
        }
    }
}

/// Three sums in eight lanes: f32 within a block, f64 across blocks.
struct LaneSums {
    block: [[f32; LANES]; 3],
    total: [[f64; LANES]; 3],
}

impl LaneSums {
    #[inline(always)]
    fn new() -> Self {
        Self {
            block: [[0.0; LANES]; 3],
            total: [[0.0; LANES]; 3],
        }
    }

    #[inline(always)]
    fn add(&mut self, lane: usize, terms: [f32; 3]) {
        for (block, term) in self.block.iter_mut().zip(terms) {
            block[lane] += term;
        }
    }

    #[inline(always)]
    fn end_block(&mut self) {
        for k in 0..3 {
            for l in 0..LANES {
                self.total[k][l] += self.block[k][l] as f64;
            }
        }
        self.block = [[0.0; LANES]; 3];
    }

    #[inline(always)]
    fn sums(&self) -> [f64; 3] {
        self.total.map(|lanes| lanes.iter().sum())
    }
}

/// `(out[v], work[v], terms) = f(s[v], t[v])` over the row (`work` left
/// alone unless `WORK`); returns the sums of the three terms.
#[inline(always)]
fn blocked_sums<const WORK: bool>(
    s: &[f32],
    t: &[f32],
    out: &mut [f32],
    work: &mut [f32],
    next: NextRow,
    f: impl Fn(f32, f32) -> (f32, f32, [f32; 3]),
) -> [f64; 3] {
    let mut sums = LaneSums::new();
    let blocks = s
        .chunks(BLOCK)
        .zip(t.chunks(BLOCK))
        .zip(out.chunks_mut(BLOCK).zip(work.chunks_mut(BLOCK)));
    for (b, ((sb, tb), (ob, wb))) in blocks.enumerate() {
        next.prefetch(b * BLOCK, (b + 1) * BLOCK, s.len());
        let mut sc = sb.chunks_exact(LANES);
        let mut tc = tb.chunks_exact(LANES);
        let mut oc = ob.chunks_exact_mut(LANES);
        let mut wc = wb.chunks_exact_mut(LANES);
        for (((sv, tv), ov), wv) in (&mut sc).zip(&mut tc).zip(&mut oc).zip(&mut wc) {
            for l in 0..LANES {
                let (o, w, terms) = f(sv[l], tv[l]);
                ov[l] = o;
                if WORK {
                    wv[l] = w;
                }
                sums.add(l, terms);
            }
        }
        let tail = sc.remainder().iter().zip(tc.remainder());
        let tail_out = oc.into_remainder().iter_mut().zip(wc.into_remainder());
        for (l, ((&sv, &tv), (ov, wv))) in tail.zip(tail_out).enumerate() {
            let (o, w, terms) = f(sv, tv);
            *ov = o;
            if WORK {
                *wv = w;
            }
            sums.add(l, terms);
        }
        sums.end_block();
    }
    sums.sums()
}

/// `(work[v], terms) = f(out[v], work[v])` over the row; returns the sums
/// of the three terms.
#[inline(always)]
fn blocked_map(out: &[f32], work: &mut [f32], f: impl Fn(f32, f32) -> (f32, [f32; 3])) -> [f64; 3] {
    let mut sums = LaneSums::new();
    for (ob, wb) in out.chunks(BLOCK).zip(work.chunks_mut(BLOCK)) {
        let mut oc = ob.chunks_exact(LANES);
        let mut wc = wb.chunks_exact_mut(LANES);
        for (ov, wv) in (&mut oc).zip(&mut wc) {
            for l in 0..LANES {
                let (w, terms) = f(ov[l], wv[l]);
                wv[l] = w;
                sums.add(l, terms);
            }
        }
        let tail = oc.remainder().iter().zip(wc.into_remainder());
        for (l, (&ov, wv)) in tail.enumerate() {
            let (w, terms) = f(ov, *wv);
            *wv = w;
            sums.add(l, terms);
        }
        sums.end_block();
    }
    sums.sums()
}

/// `out[v] = f(s[v], t[v], out[v])` over the row.
#[inline(always)]
fn map_row(s: &[f32], t: &[f32], out: &mut [f32], f: impl Fn(f32, f32, f32) -> f32) {
    let mut sc = s.chunks_exact(LANES);
    let mut tc = t.chunks_exact(LANES);
    let mut oc = out.chunks_exact_mut(LANES);
    for ((sv, tv), ov) in (&mut sc).zip(&mut tc).zip(&mut oc) {
        for l in 0..LANES {
            ov[l] = f(sv[l], tv[l], ov[l]);
        }
    }
    let tail = sc.remainder().iter().zip(tc.remainder());
    for ((&sv, &tv), ov) in tail.zip(oc.into_remainder()) {
        *ov = f(sv, tv, *ov);
    }
}

/// The row kernel for the widest vector instructions the CPU has
/// ([`crate::kernels::cpu_dispatch`]), with fused multiply-adds where the CPU
/// has them.
mod simd {
    use super::{NextRow, RowSpec};

    use crate::kernels::cpu_dispatch::dispatch;

    dispatch! {
        /// [`super::kd_row`].
        fn kd_row(
            s: &[f32],
            t: &[f32],
            out: &mut [f32],
            work: &mut [f32],
            row: RowSpec,
            coef: f32,
            next: NextRow
        ) -> f64 = super::kd_row::<true>, baseline = super::kd_row_baseline;
    }
}

/// [`kd_row`] for CPUs without the vector tiers: fused multiply-adds are
/// instructions on aarch64, a slow libm call on x86-64 without FMA.
fn kd_row_baseline(
    s: &[f32],
    t: &[f32],
    out: &mut [f32],
    work: &mut [f32],
    row: RowSpec,
    coef: f32,
    next: NextRow,
) -> f64 {
    kd_row::<{ cfg!(target_arch = "aarch64") }>(s, t, out, work, row, coef, next)
}

impl KdOps for Flex {
    fn kd_loss_fused(
        student: FlexTensor,
        teacher: FlexTensor,
        weights: FlexTensor,
        spec: KdSpec,
    ) -> (FlexTensor, FlexTensor) {
        let [rows, vocab]: [usize; 2] = student.shape().dims();
        assert_eq!(
            teacher.shape().dims::<2>(),
            [rows, vocab],
            "KD loss: teacher and student logits differ in shape"
        );
        assert_eq!(
            weights.shape().dims::<1>(),
            [rows],
            "KD loss: one weight per row"
        );
        let weights = host_f32(weights);
        let w = weights.as_slice::<f32>().expect("contiguous f32 weights");
        let teacher = host_logits(teacher);
        let t = Logits::of(&teacher);
        let mut student = host_logits(student);

        let (loss, grad) = if student.dtype() == DType::F32 && student.is_unique() {
            let buf = student
                .try_storage_mut::<f32>()
                .expect("a uniquely owned buffer");
            let loss = kd_host(None, t, w, buf, vocab, spec);
            (loss, student)
        } else {
            let mut grad = zeroed_gradient(rows * vocab);
            let loss = kd_host(Some(Logits::of(&student)), t, w, &mut grad, vocab, spec);
            let grad = FlexTensor::from_data(TensorData::new(grad, [rows, vocab]));
            (loss, grad)
        };
        let loss = FlexTensor::from_data(TensorData::new(vec![loss as f32], [1]));
        (loss, grad)
    }

    fn kd_loss_sparse_fused(
        student: FlexTensor,
        ids: FlexTensor,
        log_probs: FlexTensor,
        log_tail: FlexTensor,
        weights: FlexTensor,
        spec: KdSpec,
    ) -> (FlexTensor, FlexTensor) {
        super::kd_sparse_flex::kd_loss_sparse_fused(
            student, ids, log_probs, log_tail, weights, spec,
        )
    }

    fn kd_scale_grad(grad: FlexTensor, upstream: FlexTensor) -> FlexTensor {
        let upstream = host_f32(upstream);
        let up = upstream.as_slice::<f32>().expect("contiguous f32 data")[0];
        let mut grad = host_f32(grad);
        if up != 1.0 {
            grad.storage_mut::<f32>()
                .par_chunks_mut(1 << 16)
                .for_each(|c| c.iter_mut().for_each(|g| *g *= up));
        }
        grad
    }
}
