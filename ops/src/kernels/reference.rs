//! Float64 oracles for the kernels: plain loops over host slices, written to
//! be read against METHOD.md, not to be fast. The tests compare every kernel
//! (the rayon twin, the CubeCL kernel) with these.

pub use super::fast_math::log_add_exp;
use super::importance::{Aggregation, COSINE_EPS};
use super::kd::{KdLoss, KdSpec};

/// Sequence aggregate of one channel: `values` are `x[b, :, c]`.
///
/// mean: `(1/S) sum |x|`; l2: `sqrt(sum x^2)`; var: `(1/S) sum (x - mean)^2`
/// (population variance, two passes).
pub fn sequence_aggregate(values: &[f64], agg: Aggregation) -> f64 {
    let n = values.len() as f64;
    match agg {
        Aggregation::Mean => values.iter().map(|v| v.abs()).sum::<f64>() / n,
        Aggregation::L2 => values.iter().map(|v| v * v).sum::<f64>().sqrt(),
        Aggregation::Var => {
            let mean = values.iter().sum::<f64>() / n;
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n
        }
    }
}

/// One hook call of the channel statistics, accumulated into `s1`, `s2`.
///
/// `x` is `[batch, seq, channels]`, row-major. For every row `b` and channel
/// `c`, `a = sequence_aggregate(x[b, :, c])`; then `s1[c] += a`, `s2[c] += a^2`.
pub fn channel_stats_accumulate(
    x: &[f32],
    [batch, seq, channels]: [usize; 3],
    seq_agg: Aggregation,
    s1: &mut [f64],
    s2: &mut [f64],
) {
    assert_eq!(x.len(), batch * seq * channels);
    assert_eq!(s1.len(), channels);
    assert_eq!(s2.len(), channels);
    let mut column = vec![0.0f64; seq];
    for b in 0..batch {
        for c in 0..channels {
            for (s, slot) in column.iter_mut().enumerate() {
                *slot = x[(b * seq + s) * channels + c] as f64;
            }
            let a = sequence_aggregate(&column, seq_agg);
            s1[c] += a;
            s2[c] += a * a;
        }
    }
}

/// Batch aggregation of the accumulated sums over `samples` rows:
/// mean `S1/N`, l2 `sqrt(S2)`, var `S2/N - (S1/N)^2`.
pub fn batch_aggregate(s1: &[f64], s2: &[f64], samples: u64, agg: Aggregation) -> Vec<f64> {
    let n = samples as f64;
    s1.iter()
        .zip(s2)
        .map(|(&s1, &s2)| match agg {
            Aggregation::Mean => s1 / n,
            Aggregation::L2 => s2.sqrt(),
            Aggregation::Var => s2 / n - (s1 / n) * (s1 / n),
        })
        .collect()
}

/// `1 - cos(u, v)`, with cos = 1 when both vectors are zero and the norms'
/// product guarded by [`COSINE_EPS`] otherwise.
pub fn cosine_distance(u: &[f32], v: &[f32]) -> f64 {
    assert_eq!(u.len(), v.len());
    let (mut dot, mut uu, mut vv) = (0.0f64, 0.0f64, 0.0f64);
    for (&a, &b) in u.iter().zip(v) {
        let (a, b) = (a as f64, b as f64);
        dot += a * b;
        uu += a * a;
        vv += b * b;
    }
    if uu == 0.0 && vv == 0.0 {
        return 0.0;
    }
    1.0 - dot / (uu.sqrt() * vv.sqrt()).max(COSINE_EPS)
}

/// Sum over the tokens of `[batch, seq, channels]` inputs of
/// `1 - cos(h_in[b, s, :], h_out[b, s, :])`.
pub fn cosine_distance_sum(h_in: &[f32], h_out: &[f32], channels: usize) -> f64 {
    assert_eq!(h_in.len(), h_out.len());
    if channels == 0 {
        return 0.0;
    }
    h_in.chunks_exact(channels)
        .zip(h_out.chunks_exact(channels))
        .map(|(u, v)| cosine_distance(u, v))
        .sum()
}

/// Log-softmax of `logits / tau` in f64 (max-shifted).
pub fn log_softmax(logits: &[f32], tau: f64) -> Vec<f64> {
    let z: Vec<f64> = logits.iter().map(|&x| x as f64 / tau).collect();
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// One row of the KD loss: `(L, dL/ds)` for student logits `s` and teacher
/// logits `t` of one position, by the formulas in [`super::kd`], written
/// from the definitions (the JSD gradient by the chain rule through the
/// softmax, not from the closed form the kernels use).
pub fn kd_row(s: &[f32], t: &[f32], spec: KdSpec) -> (f64, Vec<f64>) {
    assert_eq!(s.len(), t.len());
    let tau = spec.temperature as f64;
    let (lp, lq) = (log_softmax(s, tau), log_softmax(t, tau));
    let p: Vec<f64> = lp.iter().map(|v| v.exp()).collect();
    let q: Vec<f64> = lq.iter().map(|v| v.exp()).collect();
    // Terms with a zero probability are zero (their logs may be -inf when
    // logits of magnitude 1e4 underflow).
    let kl = |a: &[f64], la: &[f64], lb: &[f64]| -> f64 {
        (0..a.len())
            .filter(|&v| a[v] > 0.0)
            .map(|v| a[v] * (la[v] - lb[v]))
            .sum()
    };
    // dL/dp (as if p were free), then through the softmax and the 1/tau.
    let (loss, dl_dp): (f64, Vec<f64>) = match spec.loss {
        KdLoss::ForwardKl => (
            kl(&q, &lq, &lp),
            (0..p.len()).map(|v| -q[v] / p[v]).collect(),
        ),
        KdLoss::ReverseKl => (
            kl(&p, &lp, &lq),
            (0..p.len()).map(|v| lp[v] - lq[v] + 1.0).collect(),
        ),
        KdLoss::Jsd { beta } => {
            let beta = beta as f64;
            // ln m in log space: m underflows where both p and q do.
            let lm: Vec<f64> = (0..p.len())
                .map(|v| {
                    let (a, b) = (beta.ln() + lq[v], (1.0 - beta).ln() + lp[v]);
                    let hi = a.max(b);
                    hi + ((a - hi).exp() + (b - hi).exp()).ln()
                })
                .collect();
            let loss = beta * kl(&q, &lq, &lm) + (1.0 - beta) * kl(&p, &lp, &lm);
            let grad = (0..p.len())
                .map(|v| {
                    let (q_m, p_m) = ((lq[v] - lm[v]).exp(), (lp[v] - lm[v]).exp());
                    -beta * q_m * (1.0 - beta)
                        + (1.0 - beta) * (lp[v] - lm[v] + 1.0 - p_m * (1.0 - beta))
                })
                .collect();
            (loss, grad)
        }
    };
    // Softmax Jacobian: dL/dz_k = p_k (g_k - sum_j p_j g_j), z = s / tau.
    // For forward KL, p_k g_k = -q_k exactly; guard 0 * inf when p underflows.
    let g: Vec<f64> = match spec.loss {
        KdLoss::ForwardKl => (0..p.len()).map(|v| -q[v]).collect(),
        _ => (0..p.len())
            .map(|v| if p[v] > 0.0 { p[v] * dl_dp[v] } else { 0.0 })
            .collect(),
    };
    let mean: f64 = g.iter().sum();
    let grad = (0..p.len()).map(|v| (g[v] - p[v] * mean) / tau).collect();
    (loss, grad)
}

/// The whole op: `rows x vocab` logits, per-row weights. Returns
/// `(sum_n w_n L_n, w_n dL_n/ds)` times the spec's scale.
pub fn kd_loss(
    student: &[f32],
    teacher: &[f32],
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
) -> (f64, Vec<f64>) {
    assert_eq!(student.len(), teacher.len());
    assert_eq!(student.len(), weights.len() * vocab);
    let scale = spec.scale() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; student.len()];
    for (n, &w) in weights.iter().enumerate() {
        let row = n * vocab..(n + 1) * vocab;
        if w == 0.0 {
            continue;
        }
        let (l, g) = kd_row(&student[row.clone()], &teacher[row.clone()], spec);
        loss += scale * w as f64 * l;
        for (o, gv) in grad[row].iter_mut().zip(g) {
            *o = scale * w as f64 * gv;
        }
    }
    (loss, grad)
}

/// One row of the KD loss against a sparse teacher: `(L, dL/ds)`, written
/// from the definition in [`super::kd::kd_loss_sparse`]: both distributions
/// coarsened to the kept tokens (`ids`, with the teacher's `log_q`) plus one
/// tail bucket (the teacher's `log_tail`, the student's mass off `ids`),
/// the divergence of the buckets, and its gradient through the buckets'
/// Jacobian `dP_b / dz_v = p_v ([v in b] - P_b)`, `z = s / tau`.
pub fn kd_sparse_row(
    s: &[f32],
    ids: &[u32],
    log_q: &[f32],
    log_tail: f32,
    spec: KdSpec,
) -> (f64, Vec<f64>) {
    assert_eq!(ids.len(), log_q.len());
    let tau = spec.temperature as f64;
    let lp = log_softmax(s, tau);
    let p: Vec<f64> = lp.iter().map(|v| v.exp()).collect();
    // Bucket of each token: its place among the kept, or the tail (K).
    let k = ids.len();
    let mut bucket = vec![k; s.len()];
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(bucket[id as usize], k, "token {id} kept twice");
        bucket[id as usize] = i;
    }
    let has_tail = k < s.len();
    let buckets = k + usize::from(has_tail);
    // The student's bucket log-masses, the tail's as a log-sum-exp.
    let mut lpb: Vec<f64> = ids.iter().map(|&id| lp[id as usize]).collect();
    if has_tail {
        let tail: Vec<f64> = (0..s.len())
            .filter(|&v| bucket[v] == k)
            .map(|v| lp[v])
            .collect();
        lpb.push(tail.iter().cloned().fold(f64::NEG_INFINITY, log_add_exp));
    }
    let mut lqb: Vec<f64> = log_q.iter().map(|&v| v as f64).collect();
    if has_tail {
        lqb.push(log_tail as f64);
    }
    let pb: Vec<f64> = lpb.iter().map(|v| v.exp()).collect();
    let qb: Vec<f64> = lqb.iter().map(|v| v.exp()).collect();
    let kl = |a: &[f64], la: &[f64], lb: &[f64]| -> f64 {
        (0..buckets)
            .filter(|&b| a[b] > 0.0)
            .map(|b| a[b] * (la[b] - lb[b]))
            .sum()
    };
    // `P_b dL/dP_b` per bucket (the product is what stays finite when a
    // bucket's mass underflows).
    let (loss, pg): (f64, Vec<f64>) = match spec.loss {
        KdLoss::ForwardKl => (kl(&qb, &lqb, &lpb), qb.iter().map(|q| -q).collect()),
        KdLoss::ReverseKl => (
            kl(&pb, &lpb, &lqb),
            (0..buckets)
                .map(|b| {
                    if pb[b] > 0.0 {
                        pb[b] * (lpb[b] - lqb[b] + 1.0)
                    } else {
                        0.0
                    }
                })
                .collect(),
        ),
        KdLoss::Jsd { beta } => {
            let beta = beta as f64;
            let lm: Vec<f64> = (0..buckets)
                .map(|b| log_add_exp(beta.ln() + lqb[b], (1.0 - beta).ln() + lpb[b]))
                .collect();
            let loss = beta * kl(&qb, &lqb, &lm) + (1.0 - beta) * kl(&pb, &lpb, &lm);
            // dL/dP_b = -beta (1 - beta) Q_b / M_b
            //           + (1 - beta) (ln P_b / M_b + 1 - (1 - beta) P_b / M_b).
            let pg = (0..buckets)
                .map(|b| {
                    if pb[b] == 0.0 {
                        return 0.0;
                    }
                    let (q_m, p_m) = ((lqb[b] - lm[b]).exp(), (lpb[b] - lm[b]).exp());
                    let d = -beta * q_m * (1.0 - beta)
                        + (1.0 - beta) * (lpb[b] - lm[b] + 1.0 - p_m * (1.0 - beta));
                    pb[b] * d
                })
                .collect();
            (loss, pg)
        }
    };
    // dL/dz_v = sum_b dL/dP_b p_v ([v in b] - P_b)
    //         = p_v dL/dP_b(v) - p_v sum_b P_b dL/dP_b.
    let mean: f64 = pg.iter().sum();
    let grad = (0..s.len())
        .map(|v| {
            let b = bucket[v];
            // p_v dL/dP_b = (p_v / P_b) (P_b dL/dP_b), the ratio in log
            // space: it stays finite where both masses underflow.
            let own = (lp[v] - lpb[b]).exp() * pg[b];
            (own - p[v] * mean) / tau
        })
        .collect();
    (loss, grad)
}

/// The sparse op over `rows` rows of `vocab` logits and `k` kept tokens
/// each: `(sum_n w_n L_n, w_n dL_n/ds)` times the spec's scale.
pub fn kd_sparse_loss(
    student: &[f32],
    ids: &[u32],
    log_q: &[f32],
    log_tail: &[f32],
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
) -> (f64, Vec<f64>) {
    let rows = weights.len();
    assert_eq!(student.len(), rows * vocab);
    assert_eq!(log_tail.len(), rows);
    let k = ids.len() / rows.max(1);
    assert_eq!(ids.len(), rows * k);
    assert_eq!(log_q.len(), rows * k);
    let scale = spec.scale() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; student.len()];
    for (n, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        let (row, kept) = (n * vocab..(n + 1) * vocab, n * k..(n + 1) * k);
        let (l, g) = kd_sparse_row(
            &student[row.clone()],
            &ids[kept.clone()],
            &log_q[kept],
            log_tail[n],
            spec,
        );
        loss += scale * w as f64 * l;
        for (o, gv) in grad[row].iter_mut().zip(g) {
            *o = scale * w as f64 * gv;
        }
    }
    (loss, grad)
}

/// A dense teacher row made sparse, in f64: the `k` largest logits' ids
/// (ascending), their log-probabilities at `tau`, and the log of the rest's
/// mass. Ties at the cut go to the lower id.
pub fn sparse_teacher_row(t: &[f32], k: usize, tau: f64) -> (Vec<u32>, Vec<f32>, f32) {
    let lq = log_softmax(t, tau);
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&a, &b| t[b].total_cmp(&t[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order[..k].to_vec();
    kept.sort_unstable();
    let tail = order[k..]
        .iter()
        .map(|&v| lq[v])
        .fold(f64::NEG_INFINITY, log_add_exp);
    (
        kept.iter().map(|&v| v as u32).collect(),
        kept.iter().map(|&v| lq[v] as f32).collect(),
        tail as f32,
    )
}
