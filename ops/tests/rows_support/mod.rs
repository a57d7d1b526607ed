//! RMSNorm, rotary embedding and SwiGLU in float64: the oracles the row
//! kernels' tests (CPU and CubeCL) share. Their gradients are checked by
//! finite differences in `kernels_fused`.

pub fn rms_oracle(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let n = w.len();
    x.chunks(n)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, w)| v * r * w)
        })
        .collect()
}

/// Gradients of `sum(rms(x, w) * g)`: `(dx, dw)`.
pub fn rms_oracle_grads(x: &[f64], w: &[f64], g: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let n = w.len();
    let (mut dx, mut dw) = (Vec::with_capacity(x.len()), vec![0.0; n]);
    for (row, gr) in x.chunks(n).zip(g.chunks(n)) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
        let s: f64 = (0..n).map(|c| row[c] * w[c] * gr[c]).sum();
        for c in 0..n {
            dx.push(r * w[c] * gr[c] - row[c] * r.powi(3) / n as f64 * s);
            dw[c] += gr[c] * row[c] * r;
        }
    }
    (dx, dw)
}

/// cos and sin tables `[seq, d]` as the model builds them (sin negative on
/// the first half).
pub fn rope_tables(seq: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let half = d / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for pos in 0..seq {
        let angle = |i: usize| pos as f64 / 10_000f64.powf((2 * (i % half)) as f64 / d as f64);
        cos.extend((0..d).map(|i| angle(i).cos()));
        sin.extend((0..d).map(|i| {
            if i < half {
                -angle(i).sin()
            } else {
                angle(i).sin()
            }
        }));
    }
    (cos, sin)
}

/// Rotate-half RoPE on `[batch, seq, heads, d]`.
pub fn rope_oracle(x: &[f64], [seq, heads, d]: [usize; 3], cos: &[f64], sin: &[f64]) -> Vec<f64> {
    let half = d / 2;
    let mut y = vec![0.0; x.len()];
    for (n, head) in x.chunks(d).enumerate() {
        let pos = (n / heads) % seq;
        for c in 0..d {
            let partner = if c < half { c + half } else { c - half };
            y[n * d + c] = head[c] * cos[pos * d + c] + head[partner] * sin[pos * d + c];
        }
    }
    y
}

pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Gradients of `sum(silu(gate) * up * g)`: `(dgate, dup)`.
pub fn swiglu_oracle_grads(gate: &[f64], up: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dsilu = |x: f64| {
        let s = 1.0 / (1.0 + (-x).exp());
        s * (1.0 + x * (1.0 - s))
    };
    let dgate = (0..gate.len())
        .map(|i| g[i] * up[i] * dsilu(gate[i]))
        .collect();
    let dup = (0..gate.len()).map(|i| g[i] * silu(gate[i])).collect();
    (dgate, dup)
}
