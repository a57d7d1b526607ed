//! The KD loss against a sparse teacher on the CPU: `KdOps::kd_loss_sparse_fused`
//! for `Flex`, the rayon twin of the CubeCL kernel. What it computes is in
//! [`super::kd::kd_loss_sparse`]; the float64 oracle is
//! [`super::reference::kd_sparse_row`].
//!
//! Rows are split over rayon tasks. Per row, with `z = s / tau` and `ms` the
//! row's largest logit:
//! 1. one pass writes `e_v = e^((s_v - ms) / tau)` into the gradient row;
//! 2. the kept tokens' terms are added up in f64 and their entries zeroed,
//!    then the row is summed: the student's tail mass `Zt` is added up from
//!    its own terms, never formed as the total minus the kept ones (which
//!    cancels when the kept tokens hold nearly all of it), and the total is
//!    `Zs = kept + Zt`. Should every tail term underflow, they are measured
//!    again from the tail's own largest logit, so `ln P_tail` stays exact;
//! 3. the `K + 1` buckets' loss and coefficients in f64;
//! 4. one pass scales the tail entries by their common coefficient, and the
//!    kept entries are written one by one.
//!
//! Sums run as in the dense twin ([`super::kd_flex`]): f32 lanes within
//! blocks, f64 across them.

use super::fast_math::{exp2_nonpos, log_add_exp};
use super::importance_flex::host_f32;
use super::kd::{KdLoss, KdSpec};
use super::kd_flex_common::{Logits, host_logits, row_max, zeroed_gradient};
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use rayon::prelude::*;

/// Vector width the hot loops are written for (AVX2 f32).
const LANES: usize = 8;
/// Elements summed in f32 lanes before the partial sums move to f64.
const BLOCK: usize = 32 * LANES;
/// A tail sum (relative to the row's largest term) below which the tail is
/// measured again from its own largest logit: above it, the terms
/// `exp2_nonpos` flushed to 0 (`V` of them at most, each below 2^-126) are
/// at most `V 2^-66` of the sum, below 2^-49 up to 131 072 tokens.
const TINY_TAIL: f64 = 1.0 / (1u64 << 60) as f64;

/// One row's teacher: kept ids (ascending), their `ln q`, and `ln q_tail`.
#[derive(Clone, Copy)]
struct SparseRow<'a> {
    ids: &'a [u32],
    log_q: &'a [f32],
    log_tail: f32,
}

/// The student's side of a row after the passes over the vocabulary, all
/// in units of `z = s / tau`, logs in f64.
struct StudentBuckets {
    /// `ln Zs`, with `Zs = sum_v e^(z_v - z_max)`.
    ln_zs: f64,
    /// `z_max - z_ref`: the gradient row holds `e^(z_v - z_ref)` on the
    /// tail, where `z_ref` is the row's largest logit, or the tail's own
    /// when every tail term underflowed from the row's.
    ref_shift: f64,
    /// `ln Zt`, with `Zt = sum over the tail of e^(z_v - z_ref)`; `None`
    /// when the kept tokens are the whole vocabulary.
    ln_zt: Option<f64>,
}

/// What the bucket arithmetic gives a row besides the kept tokens' factors:
/// its loss, and the factor of the tail entries (which hold
/// `e^(z_v - z_ref)`), before the row's `w scale / tau`.
struct RowGradient {
    loss: f64,
    tail: f64,
}

/// The buckets' loss, the kept tokens' gradient factors (into `kept`) and
/// the tail's, for one row. `ln_p[k]` are the kept tokens' `ln P`.
fn bucket_terms(
    loss_kind: KdLoss,
    ln_p: &[f64],
    teacher: SparseRow,
    student: &StudentBuckets,
    kept: &mut [f64],
) -> RowGradient {
    let ln_pt = student
        .ln_zt
        .map(|ln_zt| ln_zt - student.ref_shift - student.ln_zs);
    let ln_qt = teacher.log_tail as f64;
    // `p_v / e^(z_v - z_ref)` on the tail, and `p_v / P_tail` there.
    let p_per_entry = (-student.ref_shift - student.ln_zs).exp();
    let ratio_per_entry = student.ln_zt.map_or(0.0, |ln_zt| (-ln_zt).exp());
    let lq = |k: usize| teacher.log_q[k] as f64;
    match loss_kind {
        KdLoss::ForwardKl => {
            let mut loss = 0.0;
            for (k, g) in kept.iter_mut().enumerate() {
                let q = lq(k).exp();
                if q > 0.0 {
                    loss += q * (lq(k) - ln_p[k]);
                }
                *g = ln_p[k].exp() - q;
            }
            let qt = ln_qt.exp();
            if let Some(ln_pt) = ln_pt
                && qt > 0.0
            {
                loss += qt * (ln_qt - ln_pt);
            }
            RowGradient {
                loss,
                tail: p_per_entry - qt * ratio_per_entry,
            }
        }
        KdLoss::ReverseKl => {
            let term = |lp: f64, lq: f64| {
                let p = lp.exp();
                if p > 0.0 { p * (lp - lq) } else { 0.0 }
            };
            let mut loss: f64 = (0..kept.len()).map(|k| term(ln_p[k], lq(k))).sum();
            if let Some(ln_pt) = ln_pt {
                loss += term(ln_pt, ln_qt);
            }
            for (k, g) in kept.iter_mut().enumerate() {
                let p = ln_p[k].exp();
                *g = if p > 0.0 {
                    p * (ln_p[k] - lq(k) - loss)
                } else {
                    0.0
                };
            }
            let tail = ln_pt.map_or(0.0, |ln_pt| p_per_entry * (ln_pt - ln_qt - loss));
            RowGradient { loss, tail }
        }
        KdLoss::Jsd { beta } => {
            let beta = beta as f64;
            let (ln_b, ln_1mb) = (beta.ln(), (1.0 - beta).ln());
            // (KL(p || m) term, KL(q || m) term, ln P - ln M) of a bucket.
            let terms = |lp: f64, lq: f64| {
                let lm = log_add_exp(ln_b + lq, ln_1mb + lp);
                let (p, q) = (lp.exp(), lq.exp());
                let kp = if p > 0.0 { p * (lp - lm) } else { 0.0 };
                let kq = if q > 0.0 { q * (lq - lm) } else { 0.0 };
                (kp, kq, lp - lm)
            };
            let (mut kl_pm, mut kl_qm) = (0.0, 0.0);
            for (k, g) in kept.iter_mut().enumerate() {
                let (kp, kq, lr) = terms(ln_p[k], lq(k));
                kl_pm += kp;
                kl_qm += kq;
                *g = lr;
            }
            let mut tail_ratio = 0.0;
            if let Some(ln_pt) = ln_pt {
                let (kp, kq, lr) = terms(ln_pt, ln_qt);
                kl_pm += kp;
                kl_qm += kq;
                tail_ratio = lr;
            }
            for (k, g) in kept.iter_mut().enumerate() {
                let p = ln_p[k].exp();
                *g = if p > 0.0 {
                    (1.0 - beta) * p * (*g - kl_pm)
                } else {
                    0.0
                };
            }
            RowGradient {
                loss: beta * kl_qm + (1.0 - beta) * kl_pm,
                tail: ln_pt.map_or(0.0, |_| (1.0 - beta) * p_per_entry * (tail_ratio - kl_pm)),
            }
        }
    }
}

/// Per-task buffers.
struct Scratch {
    /// A copy of the student row, or its f32 conversion (empty when the
    /// row can be read in place).
    s: Vec<f32>,
    /// The kept tokens' `ln P`.
    ln_p: Vec<f64>,
    /// Their gradient factors.
    kept: Vec<f64>,
}

/// One row: writes `coef * dL/dz` into `out` (`V` long) and returns `L`.
#[inline(always)]
fn sparse_row<const FMA: bool>(
    s: &[f32],
    teacher: SparseRow,
    out: &mut [f32],
    spec: KdSpec,
    coef: f32,
    scratch_p: &mut [f64],
    scratch_kept: &mut [f64],
) -> f64 {
    let inv_tau = 1.0 / spec.temperature as f64;
    let c = (std::f64::consts::LOG2_E * inv_tau) as f32;
    let ms = row_max(s);
    let exp2 = exp2_nonpos::<FMA>;
    // The largest logit's term is exactly 1 (the polynomial's 2^0 is off
    // by an ulp), which near one-hot rows would turn into their whole loss.
    fill_exp(s, out, |v| if v == ms { 1.0 } else { exp2((v - ms) * c) });
    // The kept terms are added in f64, exactly; near one-hot rows, whose
    // loss is tiny, keep their largest term there rather than in an f32
    // lane that would round the small ones added to it.
    let mut kept_sum = 0.0f64;
    for &id in teacher.ids {
        kept_sum += out[id as usize] as f64;
        out[id as usize] = 0.0;
    }
    let has_tail = teacher.ids.len() < s.len();
    let mut ref_shift = 0.0;
    let mut zt = if has_tail { row_sum(out) } else { 0.0 };
    let zs = kept_sum + zt;
    if has_tail && zt < TINY_TAIL {
        // Terms below 2^-126 of the row's largest are flushed to 0; when
        // the tail's sum is this small, those could be a real share of it,
        // so the tail is measured again from its own largest logit.
        let mt = tail_max(s, teacher.ids);
        ref_shift = (ms as f64 - mt as f64) * inv_tau;
        zt = fill_tail_exp(s, teacher.ids, out, |v| {
            if v == mt { 1.0 } else { exp2((v - mt) * c) }
        });
    }
    let student = StudentBuckets {
        ln_zs: zs.ln(),
        ref_shift,
        ln_zt: has_tail.then(|| zt.ln()),
    };
    let ln_p = &mut scratch_p[..teacher.ids.len()];
    for (lp, &id) in ln_p.iter_mut().zip(teacher.ids) {
        *lp = (s[id as usize] as f64 - ms as f64) * inv_tau - student.ln_zs;
    }
    let kept = &mut scratch_kept[..teacher.ids.len()];
    let g = bucket_terms(spec.loss, ln_p, teacher, &student, kept);
    let tail_coef = (coef as f64 * g.tail) as f32;
    scale_row(out, tail_coef);
    for (&id, &k) in teacher.ids.iter().zip(kept.iter()) {
        out[id as usize] = (coef as f64 * k) as f32;
    }
    g.loss
}

/// `out[v] = f(s[v])`.
#[inline(always)]
fn fill_exp(s: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(s) {
        *o = f(v);
    }
}

/// The sum of `x`.
#[inline(always)]
fn row_sum(x: &[f32]) -> f64 {
    let mut total = 0.0f64;
    for b in x.chunks(BLOCK) {
        let mut lanes = [0.0f32; LANES];
        let mut c = b.chunks_exact(LANES);
        for v in &mut c {
            for l in 0..LANES {
                lanes[l] += v[l];
            }
        }
        for (l, &v) in c.remainder().iter().enumerate() {
            lanes[l] += v;
        }
        total += lanes.iter().map(|&x| x as f64).sum::<f64>();
    }
    total
}

/// `x[v] *= k`.
#[inline(always)]
fn scale_row(x: &mut [f32], k: f32) {
    for v in x.iter_mut() {
        *v *= k;
    }
}

/// The positions `0..len` off the kept `ids` (ascending).
fn tail_positions(len: usize, ids: &[u32]) -> impl Iterator<Item = usize> + '_ {
    let mut kept = ids.iter().peekable();
    (0..len).filter(move |&v| kept.next_if(|&&id| id as usize == v).is_none())
}

/// The largest logit off the kept `ids`; only called when there is one.
fn tail_max(s: &[f32], ids: &[u32]) -> f32 {
    tail_positions(s.len(), ids).fold(f32::NEG_INFINITY, |m, v| m.max(s[v]))
}

/// `out[v] = f(s[v])` off the kept `ids`, which stay 0; returns the sum.
fn fill_tail_exp(s: &[f32], ids: &[u32], out: &mut [f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0.0f64;
    for v in tail_positions(s.len(), ids) {
        out[v] = f(s[v]);
        total += out[v] as f64;
    }
    total
}

/// The row kernel for the widest vector instructions the CPU has.
mod simd {
    use super::{KdSpec, SparseRow};
    use crate::kernels::cpu_dispatch::dispatch;

    dispatch! {
        /// [`super::sparse_row`].
        fn sparse_row(
            s: &[f32],
            teacher: SparseRow,
            out: &mut [f32],
            spec: KdSpec,
            coef: f32,
            scratch_p: &mut [f64],
            scratch_kept: &mut [f64]
        ) -> f64 = super::sparse_row::<true>, baseline = super::sparse_row_baseline;
    }
}

/// [`sparse_row`] without fused multiply-adds where they would be a libm
/// call (x86-64 without FMA).
fn sparse_row_baseline(
    s: &[f32],
    teacher: SparseRow,
    out: &mut [f32],
    spec: KdSpec,
    coef: f32,
    scratch_p: &mut [f64],
    scratch_kept: &mut [f64],
) -> f64 {
    sparse_row::<{ cfg!(target_arch = "aarch64") }>(
        s,
        teacher,
        out,
        spec,
        coef,
        scratch_p,
        scratch_kept,
    )
}

/// Panics unless every row's ids are ascending, distinct and below `vocab`:
/// the passes above rely on it.
fn check_ids(ids: &[u32], kept: usize, vocab: usize) {
    for (n, row) in ids.chunks(kept.max(1)).enumerate() {
        let sorted = row.windows(2).all(|w| w[0] < w[1]);
        let in_range = row.last().is_none_or(|&id| (id as usize) < vocab);
        assert!(
            sorted && in_range,
            "sparse KD loss: the kept ids of row {n} are not ascending, distinct and below {vocab}"
        );
    }
}

/// The loss over all rows with the gradient written into `grad`, as the
/// dense twin's `kd_host` does (`student` `None`: `grad` holds the f32
/// student logits on entry).
#[allow(clippy::too_many_arguments)]
fn sparse_host(
    student: Option<Logits>,
    ids: &[u32],
    log_q: &[f32],
    log_tail: &[f32],
    weights: &[f32],
    grad: &mut [f32],
    vocab: usize,
    spec: KdSpec,
) -> f64 {
    let rows = weights.len();
    if rows == 0 || vocab == 0 {
        return 0.0;
    }
    let kept = ids.len() / rows;
    let scale = spec.scale() as f64;
    let inv_tau = 1.0 / spec.temperature;
    let threads = rayon::current_num_threads();
    let rows_per_task = rows.div_ceil(4 * threads).max(1);
    let copies_s = !matches!(student, Some(Logits::F32(_)));
    let partials: Vec<f64> = grad
        .par_chunks_mut(rows_per_task * vocab)
        .enumerate()
        .map_init(
            || Scratch {
                s: if copies_s {
                    vec![0.0; vocab]
                } else {
                    Vec::new()
                },
                ln_p: vec![0.0; kept],
                kept: vec![0.0; kept],
            },
            |scratch, (task, out)| {
                let mut sum = 0.0f64;
                for (i, out_row) in out.chunks_exact_mut(vocab).enumerate() {
                    let n = task * rows_per_task + i;
                    let w = weights[n];
                    if w == 0.0 {
                        out_row.fill(0.0);
                        continue;
                    }
                    let s_row: &[f32] = match &student {
                        Some(s) => s.row(n, vocab, &mut scratch.s),
                        None => {
                            scratch.s.copy_from_slice(out_row);
                            &scratch.s
                        }
                    };
                    let teacher = SparseRow {
                        ids: &ids[n * kept..(n + 1) * kept],
                        log_q: &log_q[n * kept..(n + 1) * kept],
                        log_tail: log_tail[n],
                    };
                    let coef = (w as f64 * scale) as f32 * inv_tau;
                    let loss = simd::sparse_row(
                        s_row,
                        teacher,
                        out_row,
                        spec,
                        coef,
                        &mut scratch.ln_p,
                        &mut scratch.kept,
                    );
                    sum += w as f64 * scale * loss;
                }
                sum
            },
        )
        .collect();
    partials.iter().sum()
}

/// `KdOps::kd_loss_sparse_fused` for `Flex`.
pub(super) fn kd_loss_sparse_fused(
    student: FlexTensor,
    ids: FlexTensor,
    log_probs: FlexTensor,
    log_tail: FlexTensor,
    weights: FlexTensor,
    spec: KdSpec,
) -> (FlexTensor, FlexTensor) {
    let [rows, vocab]: [usize; 2] = student.shape().dims();
    let [id_rows, kept]: [usize; 2] = ids.shape().dims();
    assert_eq!(id_rows, rows, "sparse KD loss: one row of ids per row");
    // N x K ids: small next to the logits, so a converted copy is cheap.
    let ids: Vec<u32> = ids
        .into_data()
        .convert::<u32>()
        .into_vec::<u32>()
        .expect("integer ids");
    check_ids(&ids, kept, vocab);
    let (log_probs, log_tail, weights) =
        (host_f32(log_probs), host_f32(log_tail), host_f32(weights));
    let slice =
        |t: &FlexTensor| -> Vec<f32> { t.as_slice::<f32>().expect("contiguous f32").to_vec() };
    let (lq, lt, w) = (slice(&log_probs), slice(&log_tail), slice(&weights));
    assert_eq!(
        lq.len(),
        rows * kept,
        "sparse KD loss: [N, K] log-probabilities"
    );
    assert_eq!(
        (lt.len(), w.len()),
        (rows, rows),
        "sparse KD loss: one tail and one weight per row"
    );
    let mut student = host_logits(student);
    let (loss, grad) = if student.dtype() == DType::F32 && student.is_unique() {
        let buf = student
            .try_storage_mut::<f32>()
            .expect("a uniquely owned buffer");
        let loss = sparse_host(None, &ids, &lq, &lt, &w, buf, vocab, spec);
        (loss, student)
    } else {
        let mut grad = zeroed_gradient(rows * vocab);
        let loss = sparse_host(
            Some(Logits::of(&student)),
            &ids,
            &lq,
            &lt,
            &w,
            &mut grad,
            vocab,
            spec,
        );
        (
            loss,
            FlexTensor::from_data(TensorData::new(grad, [rows, vocab])),
        )
    };
    let loss = FlexTensor::from_data(TensorData::new(vec![loss as f32], [1]));
    (loss, grad)
}
