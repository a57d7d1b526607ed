//! The KD loss against a sparse teacher ([`super::kd::kd_loss_sparse`]) as a
//! CubeCL kernel: `KdOps::kd_loss_sparse_fused` for every `CubeBackend`
//! (wired in [`super::kd_cube`]).
//!
//! Each token row gets one row of a cube's units, laid out as in the dense
//! kernel. Per row, with `z = s / tau`:
//! 1. the units stream strided vectors of the row keeping two online
//!    softmax states, one over the kept tokens `(mk, Sk)` and one over the
//!    tail `(mt, St)`, merged across the units by the online-softmax combine
//!    rule; their union gives `ln Z = m + ln S`. Which tokens are kept is
//!    read from the row's ascending ids: each unit visits its elements in
//!    ascending order and keeps a cursor into the ids, moved to a vector's
//!    first element by a binary search bounded by what the ids' order and
//!    distinctness allow (at most the stride's worth of ids can lie in
//!    between, and with `K = V` the bounds pin it in one step);
//! 2. the units share out the `K` kept tokens, gather their logits and add
//!    up the buckets' loss terms (both KL terms for JSD), tree-summed; every
//!    unit then adds the tail bucket's term from the row's scalars;
//! 3. a last sweep with the same cursor writes the gradient row (zeros for
//!    rows of weight 0).
//!
//! Per-row weighted losses go to a buffer that a one-cube kernel sums.
//!
//! Numerics, all in f32. The student's tail mass is never a difference of
//! nearly equal sums: where the tail holds at least half the mass,
//! `ln P_tail = ln(1 - P_kept)` through an accurate `ln(1 + x)` (WGSL's
//! `log1p` is `ln(1 + x)`, which loses a small `x`'s digits), else
//! `ln P_tail = (mt - m) + ln St - ln S`, measured from the tail's own
//! maximum so it stays finite when every tail probability underflows. A
//! tail token's share of the tail, `p_v / P_tail = e^(z_v - mt) / St`, comes
//! from the tail's own statistics for the same reason. A kept token's
//! `u = ln Q - ln P` is formed as `((ln Q + hi) - (z - m)) + lo`, where
//! `ln S = hi + lo` is split at the float's exponent: the large terms cancel
//! first and `ln S` carries no rounding of its own size (~5e-7 at a
//! vocabulary of 5e4), so `u` is resolved to its own size. That matters
//! where the kept tokens' `Q` and `P` nearly agree and the row's loss is a
//! small difference of such terms (~1e-6 nats with one token kept of
//! 49 152 at logits of order 1). JSD's mixture logs split on `|u|`: for a
//! small one, `ln P - ln M = -ln(1 + beta (e^u - 1))` through series (the
//! tail bucket's `u` is often ~1e-5, where the dense kernel's formula would
//! cancel), else as the dense kernel does. Terms whose mass underflows to 0
//! are skipped, not multiplied by a possibly infinite log.
//!
//! Portability (DESIGN.md, Compute): every `sync_cube` sits in straight-line
//! code or in a loop unrolled at compile time; the runtime loops hold no
//! barrier. No plane ops. The vector width and the cube size come from the
//! runtime's properties.

use super::cube_common::{empty_f32, tree_sum_scalars};
use super::kd::KdSpec;
use super::kd_cube_common::{
    FORWARD, JSD, LOWEST, REVERSE, RowLayout, loss_code, sum_row_losses, to_f32,
};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// `|u|` below which JSD's mixture logs go through the series.
const SMALL_U: f32 = 0.5;
/// `ln 2` as `LN2_HI + LN2_LO`, `LN2_HI` with 10 significant bits so that
/// its products with a float's exponent are exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `ln(1 + x)` for `x > -1`, to a few ulps: `2 atanh(s)` with
/// `s = x / (2 + x)` by its series where `|s| < 1/4` (ten terms leave
/// `< 1e-11`), else `ln(1 + x)`, whose result is then at least 0.5 in size.
#[cube]
fn ln_1p(x: f32) -> f32 {
    let s = x / (f32::new(2.0) + x);
    let mut out = f32::ln(f32::new(1.0) + x);
    if f32::abs(s) < f32::new(0.25) {
        let s2 = s * s;
        let mut poly = f32::new(1.0 / 19.0);
        poly = poly * s2 + f32::new(1.0 / 17.0);
        poly = poly * s2 + f32::new(1.0 / 15.0);
        poly = poly * s2 + f32::new(1.0 / 13.0);
        poly = poly * s2 + f32::new(1.0 / 11.0);
        poly = poly * s2 + f32::new(1.0 / 9.0);
        poly = poly * s2 + f32::new(1.0 / 7.0);
        poly = poly * s2 + f32::new(1.0 / 5.0);
        poly = poly * s2 + f32::new(1.0 / 3.0);
        poly = poly * s2 + f32::new(1.0);
        out = f32::new(2.0) * s * poly;
    }
    out
}

/// `ln x = hi + lo` for a normal `x`, resolved to the ulps of `lo` rather
/// than of `ln x`: `x = 2^e f` with `f` in `(0.75, 1.5]`, `hi = e LN2_HI`
/// (exact), `lo = e LN2_LO + ln f`. A row's `ln S` is ~10 at a vocabulary of
/// 5e4, where one rounding (5e-7) is as large as the whole loss of a row
/// whose kept tokens nearly agree.
#[cube]
fn ln_split(x: f32) -> (f32, f32) {
    let bits = u32::reinterpret(x);
    let mut e = f32::cast_from((bits >> 23) & 0xff) - f32::new(127.0);
    let mut f = f32::reinterpret((bits & 0x007f_ffff) | 0x3f80_0000);
    if f > f32::new(1.5) {
        f *= f32::new(0.5);
        e += f32::new(1.0);
    }
    (e * f32::new(LN2_HI), e * f32::new(LN2_LO) + f32::ln(f))
}

/// `ln Q - ln P` of a kept token, `ln P = d - (hi + lo)` with `d = z - m`:
/// `ln Q + hi` first, the two large terms that cancel.
#[cube]
fn kept_log_ratio(ln_q: f32, d: f32, hi: f32, lo: f32) -> f32 {
    ((ln_q + hi) - d) + lo
}

/// `e^u - 1` for `|u| <= SMALL_U`, by its Taylor series (twelve terms leave
/// `< 1e-11` relative).
#[cube]
fn exp_m1_small(u: f32) -> f32 {
    let mut poly = f32::new(1.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 12.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 11.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 10.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 9.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 8.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 7.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 6.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 5.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 4.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 3.0);
    poly = f32::new(1.0) + poly * u * f32::new(1.0 / 2.0);
    u * poly
}

/// One bucket's share of the row's loss, from `u = ln Q - ln P` and the
/// bucket's masses `p` (student) and `q` (teacher): `(term, term_q,
/// ln P - ln M)`. `term` is its part of the loss (of KL(p || m) for JSD),
/// `term_q` its part of JSD's KL(q || m) (0 otherwise), and the last the
/// mixture log ratio JSD's gradient needs (0 otherwise). A bucket whose mass
/// is 0 adds nothing.
#[cube]
fn bucket_terms(
    u: f32,
    p: f32,
    q: f32,
    beta: f32,
    ln_beta: f32,
    ln_1m_beta: f32,
    #[comptime] loss: u32,
) -> (f32, f32, f32) {
    let zero = f32::new(0.0);
    let mut term = zero;
    let mut term_q = zero;
    let mut lp_lm = zero;
    if comptime!(loss == FORWARD) {
        if q > zero {
            term = q * u;
        }
    } else if comptime!(loss == REVERSE) {
        if p > zero {
            term = -(p * u);
        }
    } else {
        let (lp, lq) = mixture_log_ratios(u, beta, ln_beta, ln_1m_beta);
        lp_lm = lp;
        if p > zero {
            term = p * lp;
        }
        if q > zero {
            term_q = q * lq;
        }
    }
    (term, term_q, lp_lm)
}

/// `(ln P - ln M, ln Q - ln M)` for `M = beta Q + (1 - beta) P`, from
/// `u = ln Q - ln P`. A small `|u|` (where both are small and the dense
/// kernel's difference of O(1) logs would cancel) goes through
/// `ln P - ln M = -ln(1 + beta (e^u - 1))`; otherwise whichever of
/// `beta Q`, `(1 - beta) P` is larger is factored out, so the correction
/// `ln(1 + e^(-|t|))` never overflows however far apart `P` and `Q` are.
#[cube]
fn mixture_log_ratios(u: f32, beta: f32, ln_beta: f32, ln_1m_beta: f32) -> (f32, f32) {
    let t = u + (ln_beta - ln_1m_beta);
    let p_wins = t <= f32::new(0.0);
    let l = f32::log1p(f32::exp(select(p_wins, t, -t)));
    let lp_if_p = -ln_1m_beta - l;
    let lq_if_q = -ln_beta - l;
    let mut lp = select(p_wins, lp_if_p, lq_if_q - u);
    let mut lq = select(p_wins, u + lp_if_p, lq_if_q);
    if f32::abs(u) < f32::new(SMALL_U) {
        lp = -ln_1p(beta * exp_m1_small(u));
        lq = u + lp;
    }
    (lp, lq)
}

/// The kept position of the first id at least `j` in the row's ids
/// `ids[kb..kb + kept]`, given that `ids[kb + ptr] < j` and that `ptr` is
/// that position for `next <= j`. The ids are distinct, ascending and below
/// `vocab`, so at most `j - next` of them lie in `[next, j)` and at least
/// `j + kept - vocab` lie below `j`: a binary search between those bounds.
#[cube]
fn seek(ids: &Tensor<u32>, kb: usize, ptr: u32, next: u32, j: u32, kept: u32, vocab: u32) -> u32 {
    let mut lo = ptr + 1;
    if j + kept > vocab + lo {
        lo = j + kept - vocab;
    }
    let mut hi = ptr + (j - next);
    if hi > kept {
        hi = kept;
    }
    if lo > hi {
        lo = hi;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if ids[kb + mid as usize] < j {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The id at kept position `ptr`, or `vocab` (no token's id) past the end.
#[cube]
fn id_at(ids: &Tensor<u32>, kb: usize, ptr: u32, kept: u32, vocab: u32) -> u32 {
    let mut id = vocab;
    if ptr < kept {
        id = ids[kb + ptr as usize];
    }
    id
}

/// The sparse KD loss of rows, with their gradient.
///
/// `student` `[rows, V]` contiguous, read as vectors of `N`; `ids`,
/// `log_probs` `[rows, kept]`; `log_tail`, `weights` `[rows]`. Cube unit
/// `(x, y)` works on row `cube * cube_y + y`, on its vectors
/// `x, x + cube_x, ..` and its kept positions `x, x + cube_x, ..`. Writes
/// `grad[row, :]` (zero for rows of weight 0) and
/// `row_loss[row] = w scale L_row`.
#[cube(launch)]
fn kd_sparse_rows<F: Float, N: Size>(
    student: &Tensor<Vector<F, N>>,
    ids: &Tensor<u32>,
    log_probs: &Tensor<f32>,
    log_tail: &Tensor<f32>,
    weights: &Tensor<f32>,
    grad: &mut Tensor<Vector<f32, N>>,
    row_loss: &mut Tensor<f32>,
    rows: u32,
    vocab_vectors: u32,
    kept: u32,
    inv_tau: f32,
    scale: f32,
    beta: f32,
    ln_beta: f32,
    ln_1m_beta: f32,
    #[comptime] loss: u32,
    #[comptime] levels_x: u32,
    #[comptime] levels_y: u32,
    #[define(F)] _dtype: StorageType,
) {
    let cube_x = comptime!(1u32 << levels_x);
    let units = comptime!((1u32 << (levels_x + levels_y)) as usize);
    let width = N::value() as u32;
    let cube = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    let row = cube * CUBE_DIM_Y + UNIT_POS_Y;
    let live = row < rows;
    let mut w = f32::new(0.0);
    if live {
        w = weights[row as usize];
    }
    let active = live && w != f32::new(0.0);
    // Rows past the end and rows of weight 0 skip the statistics; the
    // latter still get their zero gradient below.
    let mut end = 0usize;
    let mut end_kept = 0u32;
    if active {
        end = vocab_vectors as usize;
        end_kept = kept;
    }
    let vocab = vocab_vectors * width;
    let base = row as usize * vocab_vectors as usize;
    let kb = row as usize * kept as usize;
    let inv = Vector::<f32, N>::empty().fill(inv_tau);
    let zero = f32::new(0.0);
    let one = f32::new(1.0);

    // Sweep 1: online softmax states of this unit's kept and tail tokens.
    let mut mk = f32::new(LOWEST);
    let mut sk = f32::new(0.0);
    let mut mt = f32::new(LOWEST);
    let mut st = f32::new(0.0);
    let mut ptr = 0u32;
    let mut next = 0u32;
    let mut cur = id_at(ids, kb, ptr, end_kept, vocab);
    let mut i = UNIT_POS_X as usize;
    while i < end {
        let j0 = i as u32 * width;
        if cur < j0 {
            ptr = seek(ids, kb, ptr, next, j0, kept, vocab);
            cur = id_at(ids, kb, ptr, kept, vocab);
        }
        let zs = Vector::<f32, N>::cast_from(student[base + i]) * inv;
        #[unroll]
        for l in 0..N::value() {
            let z = zs[l];
            if cur == j0 + l as u32 {
                if z > mk {
                    sk *= f32::exp(mk - z);
                    mk = z;
                }
                sk += f32::exp(z - mk);
                ptr += 1;
                cur = id_at(ids, kb, ptr, kept, vocab);
            } else {
                if z > mt {
                    st *= f32::exp(mt - z);
                    mt = z;
                }
                st += f32::exp(z - mt);
            }
        }
        next = j0 + width;
        i += cube_x as usize;
    }

    // Merge the units of each cube row (online-softmax combine rule).
    let mut s_mk = SharedMemory::<f32>::new(units);
    let mut s_sk = SharedMemory::<f32>::new(units);
    let mut s_mt = SharedMemory::<f32>::new(units);
    let mut s_st = SharedMemory::<f32>::new(units);
    let row_base = UNIT_POS_Y * cube_x;
    let slot = (row_base + UNIT_POS_X) as usize;
    s_mk[slot] = mk;
    s_sk[slot] = sk;
    s_mt[slot] = mt;
    s_st[slot] = st;
    sync_cube();
    #[unroll]
    for level in 0..levels_x {
        let stride = 1u32 << (levels_x - 1 - level);
        if UNIT_POS_X < stride {
            let here = slot;
            let there = slot + stride as usize;
            let ka = s_mk[here];
            let kz = s_mk[there];
            let km = max(ka, kz);
            s_sk[here] = s_sk[here] * f32::exp(ka - km) + s_sk[there] * f32::exp(kz - km);
            s_mk[here] = km;
            let ta = s_mt[here];
            let tz = s_mt[there];
            let tm = max(ta, tz);
            s_st[here] = s_st[here] * f32::exp(ta - tm) + s_st[there] * f32::exp(tz - tm);
            s_mt[here] = tm;
        }
        sync_cube();
    }
    let head = row_base as usize;
    let row_mk = s_mk[head];
    let row_sk = s_sk[head];
    let row_mt = s_mt[head];
    let row_st = s_st[head];

    // The row's softmax: `ln Z = m + ln S`, and both parts' sums measured
    // from `m`.
    let has_tail = kept < vocab;
    let m = max(row_mk, row_mt);
    let sk_m = row_sk * f32::exp(row_mk - m);
    let st_m = row_st * f32::exp(row_mt - m);
    // `ln S = ln_s_hi + ln_s_lo`.
    let mut ln_s_hi = zero;
    let mut ln_s_lo = zero;
    let mut inv_s = zero;
    // `ln St`, the log of the tail's sum measured from its own max.
    let mut ln_st = zero;
    let mut ln_p_tail = zero;
    let mut ln_q_tail = zero;
    if active {
        let s = sk_m + st_m;
        let (hi, lo) = ln_split(s);
        ln_s_hi = hi;
        ln_s_lo = lo;
        inv_s = one / s;
        if has_tail {
            let (hi_t, lo_t) = ln_split(row_st);
            ln_st = hi_t + lo_t;
            ln_q_tail = log_tail[row as usize];
            if st_m >= sk_m {
                ln_p_tail = ln_1p(-(sk_m * inv_s));
            } else {
                ln_p_tail = (row_mt - m) + ((hi_t - ln_s_hi) + (lo_t - ln_s_lo));
            }
        }
    }

    // Sweep 2: the kept buckets' terms. `acc` is the loss (KL(p || m) for
    // JSD), `acc_q` JSD's KL(q || m).
    let mut acc = zero;
    let mut acc_q = zero;
    let mut k = UNIT_POS_X;
    while k < end_kept {
        let id = ids[kb + k as usize];
        let lane = id % width;
        let vec = student[base + (id / width) as usize];
        let mut z = zero;
        #[unroll]
        for l in 0..N::value() {
            if lane == l as u32 {
                z = f32::cast_from(vec[l]);
            }
        }
        let d = z * inv_tau - m;
        let ln_q = log_probs[kb + k as usize];
        let u = kept_log_ratio(ln_q, d, ln_s_hi, ln_s_lo);
        let p = f32::exp(d) * inv_s;
        let q = f32::exp(ln_q);
        let (term, term_q, _) = bucket_terms(u, p, q, beta, ln_beta, ln_1m_beta, loss);
        acc += term;
        acc_q += term_q;
        k += cube_x;
    }
    let mut s_acc = SharedMemory::<f32>::new(units);
    s_acc[slot] = acc;
    sync_cube();
    tree_sum_scalars(&mut s_acc, UNIT_POS_X, row_base, 1, true, levels_x);
    let mut kept_l = s_acc[head];
    let mut kept_q = zero;
    if comptime!(loss == JSD) {
        let mut s_acc_q = SharedMemory::<f32>::new(units);
        s_acc_q[slot] = acc_q;
        sync_cube();
        tree_sum_scalars(&mut s_acc_q, UNIT_POS_X, row_base, 1, true, levels_x);
        kept_q = s_acc_q[head];
    }

    // The tail bucket's term, from the row's scalars (every unit).
    let u_tail = ln_q_tail - ln_p_tail;
    let mut lp_lm_tail = zero;
    if active && has_tail {
        let p_tail = f32::exp(ln_p_tail);
        let q_tail = f32::exp(ln_q_tail);
        let (term, term_q, lp_lm) =
            bucket_terms(u_tail, p_tail, q_tail, beta, ln_beta, ln_1m_beta, loss);
        kept_l += term;
        kept_q += term_q;
        lp_lm_tail = lp_lm;
    }
    // `row_l` is the row's loss; `kl_pm` JSD's KL(p || m).
    let mut row_l = kept_l;
    let kl_pm = kept_l;
    if comptime!(loss == JSD) {
        row_l = beta * kept_q + (one - beta) * kl_pm;
    }

    if live && UNIT_POS_X == 0 {
        let mut out = zero;
        if active {
            out = w * scale * row_l;
        }
        row_loss[row as usize] = out;
    }

    // Sweep 3: the gradient row (zeros for rows of weight 0), with the
    // cursor of sweep 1 walked again.
    let coef = w * scale * inv_tau;
    let mut grad_end = 0usize;
    if live {
        grad_end = vocab_vectors as usize;
    }
    ptr = 0u32;
    next = 0u32;
    cur = id_at(ids, kb, ptr, end_kept, vocab);
    let mut i = UNIT_POS_X as usize;
    while i < grad_end {
        let mut g = Vector::<f32, N>::empty().fill(zero);
        if active {
            let j0 = i as u32 * width;
            if cur < j0 {
                ptr = seek(ids, kb, ptr, next, j0, kept, vocab);
                cur = id_at(ids, kb, ptr, kept, vocab);
            }
            let zs = Vector::<f32, N>::cast_from(student[base + i]) * inv;
            #[unroll]
            for l in 0..N::value() {
                let z = zs[l];
                let d = z - m;
                let p = f32::exp(d) * inv_s;
                let mut v = zero;
                if cur == j0 + l as u32 {
                    let ln_q = log_probs[kb + ptr as usize];
                    if comptime!(loss == FORWARD) {
                        v = p - f32::exp(ln_q);
                    } else if p > zero {
                        let u = kept_log_ratio(ln_q, d, ln_s_hi, ln_s_lo);
                        if comptime!(loss == REVERSE) {
                            v = p * (-u - row_l);
                        } else {
                            let (lp_lm, _lq_lm) = mixture_log_ratios(u, beta, ln_beta, ln_1m_beta);
                            v = (one - beta) * p * (lp_lm - kl_pm);
                        }
                    }
                    ptr += 1;
                    cur = id_at(ids, kb, ptr, kept, vocab);
                } else if comptime!(loss == FORWARD) {
                    // p_v - Q_tail p_v / P_tail, the share from the tail's
                    // own statistics.
                    v = p - f32::exp(((z - row_mt) - ln_st) + ln_q_tail);
                } else if p > zero {
                    if comptime!(loss == REVERSE) {
                        v = p * (-u_tail - row_l);
                    } else {
                        v = (one - beta) * p * (lp_lm_tail - kl_pm);
                    }
                }
                g[l] = coef * v;
            }
            next = j0 + width;
        }
        grad[base + i] = g;
        i += cube_x as usize;
    }
}

pub(super) fn kd_loss_sparse_fused<R: CubeRuntime>(
    student: CubeTensor<R>,
    ids: CubeTensor<R>,
    log_probs: CubeTensor<R>,
    log_tail: CubeTensor<R>,
    weights: CubeTensor<R>,
    spec: KdSpec,
) -> (CubeTensor<R>, CubeTensor<R>) {
    if let Err(e) = spec.validate() {
        panic!("sparse KD loss: {e}");
    }
    let (code, beta) = loss_code(spec.loss);
    let student = into_contiguous(student);
    let [rows, vocab]: [usize; 2] = student.shape().dims();
    let [id_rows, kept]: [usize; 2] = ids.shape().dims();
    assert_eq!(
        (
            id_rows,
            log_probs.shape().dims::<2>(),
            log_tail.shape().num_elements()
        ),
        (rows, [rows, kept], rows),
        "sparse KD: the teacher's ids, log-probabilities and tails do not cover the student's {rows} rows alike"
    );
    assert!(
        kept <= vocab,
        "sparse KD: {kept} kept tokens over a vocabulary of {vocab}"
    );
    let weights = into_contiguous(to_f32(weights));
    assert_eq!(
        weights.shape().num_elements(),
        rows,
        "sparse KD: one weight per row of logits"
    );
    // Empty ids are never read (and not worth a cast).
    let ids = if rows * kept == 0 {
        ids
    } else {
        into_contiguous(cast(ids, DType::U32))
    };
    let log_probs = into_contiguous(to_f32(log_probs));
    let log_tail = into_contiguous(to_f32(log_tail));

    let grad = empty_f32(&student, Shape::new([rows, vocab]));
    let row_loss = empty_f32(&student, Shape::new([rows.max(1)]));
    let client = student.client.clone();
    if let Some(layout) = RowLayout::new(&client, student.dtype, rows, vocab, "sparse KD loss") {
        let (ln_beta, ln_1m_beta) = (beta.ln(), (1.0 - beta).ln());
        let dtype = student.dtype;
        kd_sparse_rows::launch::<R>(
            &client,
            layout.count.clone(),
            layout.dim,
            layout.width,
            student.into_tensor_arg(),
            ids.into_tensor_arg(),
            log_probs.into_tensor_arg(),
            log_tail.into_tensor_arg(),
            weights.into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            row_loss.clone().into_tensor_arg(),
            rows as u32,
            layout.vocab_vectors as u32,
            kept as u32,
            1.0 / spec.temperature,
            spec.scale(),
            beta,
            ln_beta,
            ln_1m_beta,
            code,
            layout.levels_x(),
            layout.levels_y(),
            dtype.into(),
        );
    }
    let total = sum_row_losses(&client, row_loss, if vocab == 0 { 0 } else { rows });
    (total, grad)
}
