//! What the sparse KD kernel tests (the Flex twin and the CubeCL kernel)
//! share: teachers made sparse by the oracle, the scale each gradient entry
//! is held to, and the comparison with the oracle.

use distillery_ops::kernels::kd::{KdLoss, KdSpec};
use distillery_ops::kernels::reference;

use crate::kd_support::{GRAD_TOL, LOSS_TOL};

/// A sparse teacher for `rows` rows: ids `[rows, k]`, their `ln q`
/// `[rows, k]` and the tails' `ln q` `[rows]`.
pub struct Sparse {
    pub k: usize,
    pub ids: Vec<u32>,
    pub log_q: Vec<f32>,
    pub log_tail: Vec<f32>,
}

/// The `k` largest of each row of `teacher` logits, at temperature `tau`.
pub fn sparsify(teacher: &[f32], vocab: usize, k: usize, tau: f32) -> Sparse {
    let mut out = Sparse {
        k,
        ids: Vec::new(),
        log_q: Vec::new(),
        log_tail: Vec::new(),
    };
    for row in teacher.chunks_exact(vocab) {
        let (ids, log_q, tail) = reference::sparse_teacher_row(row, k, tau as f64);
        out.ids.extend(ids);
        out.log_q.extend(log_q);
        out.log_tail.push(tail);
    }
    out
}

/// What a gradient entry's error is measured against, as the dense test
/// does, per entry of a row of weight `w`: the unit `w scale / tau`, the
/// entry itself where larger, and for reverse KL the terms it is the
/// difference of, `unit p_v (|ln P_b - ln Q_b| + L)` with `b` the entry's
/// bucket (reaching ~1e4 units at logits of 1e4, where f32 resolves them
/// only to ~1e-7 of that).
pub fn grad_scale(
    s: &[f32],
    ids: &[u32],
    log_q: &[f32],
    log_tail: f32,
    w: f32,
    spec: KdSpec,
) -> Vec<f64> {
    let unit = w as f64 * spec.scale() as f64 / spec.temperature as f64;
    if spec.loss != KdLoss::ReverseKl {
        return vec![unit; s.len()];
    }
    let lp = reference::log_softmax(s, spec.temperature as f64);
    // Each token's `ln Q_b - ln P_b` (its bucket's), the tail's by default.
    let mut kept = vec![false; s.len()];
    for &id in ids {
        kept[id as usize] = true;
    }
    let tail_lp = (0..s.len())
        .filter(|&v| !kept[v])
        .map(|v| lp[v])
        .fold(f64::NEG_INFINITY, reference::log_add_exp);
    let mut gap = vec![(log_tail as f64 - tail_lp).abs(); s.len()];
    for (&id, &lq) in ids.iter().zip(log_q) {
        gap[id as usize] = (lq as f64 - lp[id as usize]).abs();
    }
    let loss = reference::kd_sparse_row(s, ids, log_q, log_tail, spec).0;
    (0..s.len())
        .map(|v| {
            let terms = lp[v].exp() * (gap[v] + loss.abs());
            unit * if terms.is_finite() {
                terms.max(1.0)
            } else {
                1.0
            }
        })
        .collect()
}

/// The errors of `got = (loss, grad)` against `want`: `(relative loss
/// error, largest gradient error as in [`GRAD_TOL`])`, the latter measured against `scale(row)`. Panics on a
/// non-finite output, on a nonzero gradient in a masked row, and past the
/// tolerances.
pub fn compare(
    got: (f32, &[f32]),
    want: (f64, &[f64]),
    weights: &[f32],
    vocab: usize,
    scale: impl Fn(usize) -> Vec<f64>,
    what: &str,
) -> (f64, f64) {
    let ((loss, grad), (want_loss, want_grad)) = (got, want);
    let rows = weights.len();
    assert!(loss.is_finite(), "{what}: loss {loss}");
    assert_eq!(grad.len(), rows * vocab, "{what}: gradient size");
    let loss_err = if want_loss == 0.0 {
        assert_eq!(loss, 0.0, "{what}: loss of a masked batch");
        0.0
    } else {
        (loss as f64 - want_loss).abs() / want_loss.abs()
    };
    assert!(
        loss_err <= LOSS_TOL,
        "{what}: loss {loss} vs {want_loss} (relative error {loss_err:.2e})"
    );
    let mut grad_err = 0.0f64;
    for (n, &w) in weights.iter().enumerate() {
        let row = n * vocab..(n + 1) * vocab;
        let (got, want) = (&grad[row.clone()], &want_grad[row]);
        if w == 0.0 {
            assert!(
                got.iter().all(|&g| g == 0.0),
                "{what}: nonzero gradient in masked row {n}"
            );
            continue;
        }
        for (v, ((&g, &e), &unit)) in got.iter().zip(want).zip(&scale(n)).enumerate() {
            assert!(g.is_finite(), "{what}: gradient [{n}, {v}] = {g}");
            let err = (g as f64 - e).abs() / unit.max(e.abs());
            assert!(
                err <= GRAD_TOL,
                "{what}: gradient [{n}, {v}] {g} vs {e} (error {err:.2e})"
            );
            grad_err = grad_err.max(err);
        }
    }
    (loss_err, grad_err)
}
