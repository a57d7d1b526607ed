//! The fused KD loss as a CubeCL kernel: [`KdOps`] for every
//! `CubeBackend<R, ..>` (Burn's `Wgpu` and `Cuda` without `fusion`).
//!
//! Each token row gets one row of a cube's units (one cube per row unless
//! the vocabulary is smaller than the cube): they stream strided vectors of
//! the vocabulary keeping online softmax statistics, merge them, and a last
//! sweep writes the gradient row; JSD needs the mixture's log and so one
//! more sweep. Per-row weighted losses go to a buffer that a one-cube kernel
//! sums. Logits of one dtype are read as they are and widened to f32 per
//! element (so nothing of size `N x V` is allocated beyond the gradient);
//! logits of two dtypes are cast to f32 first.
//!
//! Numerics. Forward and reverse KL keep, for the distribution `x` the loss
//! averages over (teacher for forward, student for reverse) and the other
//! one `y`: the max `mx` and rescaled sum `sx`, the max `my` and sum `sy`,
//! `r = y` at the argmax of `x`, and `b = sum e^(x - mx) D` with
//! `D = (x - mx) - (y - r)`. `D` is measured from the argmax, so for the
//! near one-hot distributions of logits around 1e4 the term that carries the
//! mass is exactly 0 rather than a difference of two numbers near 1e4 (which
//! f32 would round by ~1e-3). Then
//! `L = b / sx + (my - r) + ln(sy / sx)`, and the reverse gradient is
//! `p (D - b / sx) / tau`. JSD works from `u = ln q - ln p`, split on the sign
//! of `ln(beta q) - ln((1 - beta) p)` so that every `log1p(exp(.))` has an
//! argument in (0, 1]; its only per-row log is `ln(S_s / S_t)`. Terms whose
//! probability underflows to 0 are skipped, not multiplied by a possibly
//! infinite log.
//!
//! Portability (DESIGN.md, Compute): every `sync_cube` sits in straight-line
//! code or in a loop unrolled at compile time; the runtime loops hold no
//! barrier. No plane ops. The vector width and the cube size come from the
//! runtime's properties.

use super::cube_common::{empty_f32, tree_sum_scalars};
use super::kd::{KdOps, KdSpec};
use super::kd_cube_common::{
    FORWARD, JSD, LOWEST, REVERSE, RowLayout, loss_code, sum_row_losses, to_f32,
};
use burn::tensor::{Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// `(ln p - ln m, ln q - ln m)` for `m = beta q + (1 - beta) p`, from
/// `u = ln q - ln p`: whichever of `beta q`, `(1 - beta) p` is larger is
/// factored out, so the correction `log1p(exp(-|t|))` never overflows and
/// the larger side's log ratio stays O(1) however far apart `p` and `q` are.
#[cube]
fn mixture_log_ratios(u: f32, ln_beta: f32, ln_1m_beta: f32) -> (f32, f32) {
    let t = u + (ln_beta - ln_1m_beta);
    let p_wins = t <= f32::new(0.0);
    let l = f32::log1p(f32::exp(select(p_wins, t, -t)));
    let lp_if_p = -ln_1m_beta - l;
    let lq_if_q = -ln_beta - l;
    (
        select(p_wins, lp_if_p, lq_if_q - u),
        select(p_wins, u + lp_if_p, lq_if_q),
    )
}

/// The KD loss of rows, with their gradient.
///
/// `student`, `teacher` `[rows, V]` contiguous, read as vectors of `N`;
/// `weights` `[rows]` f32. Cube unit `(x, y)` works on row
/// `cube * cube_y + y`, on its vectors `x, x + cube_x, ..`. Writes
/// `grad[row, :]` (zero for rows of weight 0) and
/// `row_loss[row] = w scale L_row`.
#[cube(launch)]
fn kd_rows<F: Float, N: Size>(
    student: &Tensor<Vector<F, N>>,
    teacher: &Tensor<Vector<F, N>>,
    weights: &Tensor<f32>,
    grad: &mut Tensor<Vector<f32, N>>,
    row_loss: &mut Tensor<f32>,
    rows: u32,
    vocab_vectors: u32,
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
    if active {
        end = vocab_vectors as usize;
    }
    let base = row as usize * vocab_vectors as usize;
    let inv = Vector::<f32, N>::empty().fill(inv_tau);
    let zero = f32::new(0.0);

    // Sweep 1: online statistics of this unit's share of the row. `x` is
    // the teacher for forward KL and the student otherwise.
    let mut mx = f32::new(LOWEST);
    let mut sx = f32::new(0.0);
    let mut my = f32::new(LOWEST);
    let mut sy = f32::new(0.0);
    let mut r = f32::new(0.0);
    let mut b = f32::new(0.0);
    let mut k = UNIT_POS_X as usize;
    while k < end {
        let zs = Vector::<f32, N>::cast_from(student[base + k]) * inv;
        let zt = Vector::<f32, N>::cast_from(teacher[base + k]) * inv;
        #[unroll]
        for l in 0..N::value() {
            let mut x = zs[l];
            let mut y = zt[l];
            if comptime!(loss == FORWARD) {
                x = zt[l];
                y = zs[l];
            }
            if x > mx {
                let c = f32::exp(mx - x);
                if comptime!(loss != JSD) {
                    // Moving the reference shifts every D by
                    // (mx - r) - (x - y); an empty state has nothing to move.
                    if sx > zero {
                        b = c * (b + sx * ((mx - r) - (x - y)));
                    }
                    r = y;
                }
                sx *= c;
                mx = x;
            }
            let e = f32::exp(x - mx);
            sx += e;
            if comptime!(loss != JSD) {
                b += select(e > zero, e * ((x - mx) - (y - r)), zero);
            }
            if y > my {
                sy *= f32::exp(my - y);
                my = y;
            }
            sy += f32::exp(y - my);
        }
        k += cube_x as usize;
    }

    // Merge the units of each cube row (online-softmax combine rule).
    let mut s_mx = SharedMemory::<f32>::new(units);
    let mut s_sx = SharedMemory::<f32>::new(units);
    let mut s_my = SharedMemory::<f32>::new(units);
    let mut s_sy = SharedMemory::<f32>::new(units);
    let mut s_r = SharedMemory::<f32>::new(units);
    let mut s_b = SharedMemory::<f32>::new(units);
    let row_base = UNIT_POS_Y * cube_x;
    let slot = (row_base + UNIT_POS_X) as usize;
    s_mx[slot] = mx;
    s_sx[slot] = sx;
    s_my[slot] = my;
    s_sy[slot] = sy;
    s_r[slot] = r;
    s_b[slot] = b;
    sync_cube();
    #[unroll]
    for level in 0..levels_x {
        let stride = 1u32 << (levels_x - 1 - level);
        if UNIT_POS_X < stride {
            let here = slot;
            let there = slot + stride as usize;
            let ma = s_mx[here];
            let mb = s_mx[there];
            let m = max(ma, mb);
            let ca = f32::exp(ma - m);
            let cb = f32::exp(mb - m);
            let sa = s_sx[here];
            let sb = s_sx[there];
            if comptime!(loss != JSD) {
                let ra = s_r[here];
                let rb = s_r[there];
                let mut rm = rb;
                if ma >= mb {
                    rm = ra;
                }
                let delta = m - rm;
                let mut bm = zero;
                if sa > zero {
                    bm += ca * (s_b[here] + sa * ((ma - ra) - delta));
                }
                if sb > zero {
                    bm += cb * (s_b[there] + sb * ((mb - rb) - delta));
                }
                s_b[here] = bm;
                s_r[here] = rm;
            }
            s_sx[here] = sa * ca + sb * cb;
            s_mx[here] = m;
            let ya = s_my[here];
            let yb = s_my[there];
            let ym = max(ya, yb);
            s_sy[here] = s_sy[here] * f32::exp(ya - ym) + s_sy[there] * f32::exp(yb - ym);
            s_my[here] = ym;
        }
        sync_cube();
    }
    let head = row_base as usize;
    let row_mx = s_mx[head];
    let row_sx = s_sx[head];
    let row_my = s_my[head];
    let row_sy = s_sy[head];
    let row_r = s_r[head];
    let row_b = s_b[head];

    // Student and teacher statistics under their own names.
    let mut ms = row_mx;
    let mut ss = row_sx;
    let mut mt = row_my;
    let mut st = row_sy;
    if comptime!(loss == FORWARD) {
        ms = row_my;
        ss = row_sy;
        mt = row_mx;
        st = row_sx;
    }
    let mut inv_ss = zero;
    let mut inv_st = zero;
    let mut mean_d = zero;
    if active {
        inv_ss = f32::new(1.0) / ss;
        inv_st = f32::new(1.0) / st;
        mean_d = row_b / row_sx;
    }

    let mut row_l = zero;
    let mut kl_pm = zero;
    let mut c0 = zero;
    if comptime!(loss != JSD) {
        if active {
            row_l = mean_d + (row_my - row_r) + f32::ln(row_sy / row_sx);
        }
    } else {
        // Sweep 2 (JSD): KL(q || m) and KL(p || m), with
        // ln q - ln p = (zt - mt) - (zs - ms) + ln(S_s / S_t).
        if active {
            c0 = f32::ln(ss / st);
        }
        let mut kq = zero;
        let mut kp = zero;
        let mut j = UNIT_POS_X as usize;
        while j < end {
            let zs = Vector::<f32, N>::cast_from(student[base + j]) * inv;
            let zt = Vector::<f32, N>::cast_from(teacher[base + j]) * inv;
            #[unroll]
            for l in 0..N::value() {
                let es = zs[l] - ms;
                let et = zt[l] - mt;
                let (lp_lm, lq_lm) = mixture_log_ratios((et - es) + c0, ln_beta, ln_1m_beta);
                let p = f32::exp(es) * inv_ss;
                let q = f32::exp(et) * inv_st;
                if p > zero {
                    kp += p * lp_lm;
                }
                if q > zero {
                    kq += q * lq_lm;
                }
            }
            j += cube_x as usize;
        }
        let mut s_kq = SharedMemory::<f32>::new(units);
        let mut s_kp = SharedMemory::<f32>::new(units);
        s_kq[slot] = kq;
        s_kp[slot] = kp;
        sync_cube();
        tree_sum_scalars(&mut s_kq, UNIT_POS_X, row_base, 1, true, levels_x);
        tree_sum_scalars(&mut s_kp, UNIT_POS_X, row_base, 1, true, levels_x);
        kl_pm = s_kp[head];
        row_l = beta * s_kq[head] + (f32::new(1.0) - beta) * kl_pm;
    }

    if live && UNIT_POS_X == 0 {
        let mut out = zero;
        if active {
            out = w * scale * row_l;
        }
        row_loss[row as usize] = out;
    }

    // Sweep 3: the gradient row (zeros for rows of weight 0).
    let coef = w * scale * inv_tau;
    let mut grad_end = 0usize;
    if live {
        grad_end = vocab_vectors as usize;
    }
    let mut i = UNIT_POS_X as usize;
    while i < grad_end {
        let mut g = Vector::<f32, N>::empty().fill(zero);
        if active {
            let zs = Vector::<f32, N>::cast_from(student[base + i]) * inv;
            let zt = Vector::<f32, N>::cast_from(teacher[base + i]) * inv;
            #[unroll]
            for l in 0..N::value() {
                let es = zs[l] - ms;
                let p = f32::exp(es) * inv_ss;
                let mut v = zero;
                if comptime!(loss == FORWARD) {
                    v = p - f32::exp(zt[l] - mt) * inv_st;
                } else if comptime!(loss == REVERSE) {
                    if p > zero {
                        v = p * ((es - (zt[l] - row_r)) - mean_d);
                    }
                } else if p > zero {
                    let (lp_lm, _lq_lm) =
                        mixture_log_ratios((zt[l] - mt) - es + c0, ln_beta, ln_1m_beta);
                    v = (f32::new(1.0) - beta) * p * (lp_lm - kl_pm);
                }
                g[l] = coef * v;
            }
        }
        grad[base + i] = g;
        i += cube_x as usize;
    }
}

fn kd_loss_fused<R: CubeRuntime>(
    student: CubeTensor<R>,
    teacher: CubeTensor<R>,
    weights: CubeTensor<R>,
    spec: KdSpec,
) -> (CubeTensor<R>, CubeTensor<R>) {
    if let Err(e) = spec.validate() {
        panic!("KD loss: {e}");
    }
    let (code, beta) = loss_code(spec.loss);
    // One dtype for both logits, so one kernel reads them.
    let (student, teacher) = if student.dtype == teacher.dtype {
        (student, teacher)
    } else {
        (to_f32(student), to_f32(teacher))
    };
    let (student, teacher) = (into_contiguous(student), into_contiguous(teacher));
    let [rows, vocab]: [usize; 2] = student.shape().dims();
    let teacher_dims: [usize; 2] = teacher.shape().dims();
    assert_eq!(
        teacher_dims,
        [rows, vocab],
        "KD: student and teacher logits differ in shape"
    );
    let weights = into_contiguous(to_f32(weights));
    assert_eq!(
        weights.shape().num_elements(),
        rows,
        "KD: one weight per row of logits"
    );

    let grad = empty_f32(&student, Shape::new([rows, vocab]));
    let row_loss = empty_f32(&student, Shape::new([rows.max(1)]));
    let client = student.client.clone();
    if let Some(layout) = RowLayout::new(&client, student.dtype, rows, vocab, "KD loss") {
        let (ln_beta, ln_1m_beta) = (beta.ln(), (1.0 - beta).ln());
        let dtype = student.dtype;
        kd_rows::launch::<R>(
            &client,
            layout.count.clone(),
            layout.dim,
            layout.width,
            student.into_tensor_arg(),
            teacher.into_tensor_arg(),
            weights.into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            row_loss.clone().into_tensor_arg(),
            rows as u32,
            layout.vocab_vectors as u32,
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

impl<R, F, I, BT> KdOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn kd_loss_fused(
        student: CubeTensor<R>,
        teacher: CubeTensor<R>,
        weights: CubeTensor<R>,
        spec: KdSpec,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        kd_loss_fused(student, teacher, weights, spec)
    }

    fn kd_loss_sparse_fused(
        student: CubeTensor<R>,
        ids: CubeTensor<R>,
        log_probs: CubeTensor<R>,
        log_tail: CubeTensor<R>,
        weights: CubeTensor<R>,
        spec: KdSpec,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        super::kd_sparse_cube::kd_loss_sparse_fused(
            student, ids, log_probs, log_tail, weights, spec,
        )
    }
}
