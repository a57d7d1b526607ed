//! Float64 oracles for the kernels: plain loops over host slices, written to
//! be read against METHOD.md, not to be fast. The tests compare every kernel
//! (the rayon twin, the CubeCL kernel) with these.

use super::importance::{Aggregation, COSINE_EPS};

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
