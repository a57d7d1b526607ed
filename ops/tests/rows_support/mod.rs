//! RMSNorm, rotary embedding and SwiGLU in float64: the oracles the row
//! kernels' tests (CPU and CubeCL) share. Their gradients are checked by
//! finite differences in `kernels_fused`. And [`check_rope_pair`] and
//! [`check_rms_norm_residual`], run by both on their backends.
#![allow(dead_code)]

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::rows::composite as rows_composite;
use distillery_ops::kernels::{RowOps, rope, rope_pair};

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

/// [`rope_pair`] against the float64 rotation on a backend `B` and its
/// autodiff `AB`: queries and keys of one attention with their own head
/// counts (key/value heads shared by 1, 3 and 4 query heads), head sizes
/// 64 and 128, odd lengths. Written in each of `dtypes`: in f32 within
/// [`TOL`] of the oracle; in a 16-bit dtype, bit for bit the f32 rotation
/// clamped to that dtype's range and cast (values past f16's range
/// included). Under autodiff in f32, the gradients of `sum(yq gq) +
/// sum(yk gk)`: the inverse rotations of `gq` and `gk`; written in each
/// of `grad_dtypes` (as a product's backward reads them), those f32
/// gradients cast, bit for bit.
///
/// [`TOL`]: crate::attention_support::TOL
pub fn check_rope_pair<B, AB>(device: &B::Device, dtypes: &[DType], grad_dtypes: &[DType])
where
    B: RowOps,
    AB: AutodiffBackend<InnerBackend = B> + RowOps,
{
    use crate::attention_support::{assert_close, random, read};
    // (batch, seq, q_heads, k_heads, d, scale): the last case's values
    // reach 1e5, past f16's largest (65,504).
    for (batch, seq, q_heads, k_heads, d, scale) in [
        (2, 37, 3, 3, 64, 1.0),
        (1, 9, 12, 3, 128, 1.0),
        (3, 5, 4, 1, 64, 2.0),
        (1, 1, 9, 3, 64, 1.0),
        (1, 7, 2, 2, 64, 1e5),
    ] {
        let (qd, kd) = ([batch, seq, q_heads, d], [batch, seq, k_heads, d]);
        let (cos, sin) = rope_tables(seq, d);
        let neg_sin: Vec<f64> = sin.iter().map(|v| -v).collect();
        let mut rng = distillery_ops::rng::SplitMix64::new(41 + (q_heads * d) as u64);
        let q = random(&mut rng, qd.iter().product(), scale);
        let k = random(&mut rng, kd.iter().product(), scale);
        let (gq, gk) = (
            random(&mut rng, q.len(), 1.0),
            random(&mut rng, k.len(), 1.0),
        );
        let want_q = rope_oracle(&q, [seq, q_heads, d], &cos, &sin);
        let want_k = rope_oracle(&k, [seq, k_heads, d], &cos, &sin);
        let what = |t: &str| format!("rope_pair q {qd:?} k {kd:?} x{scale}: {t}");
        let t = |v: &[f64], dims: [usize; 4]| tensor4::<B>(v, dims, device);
        let table = |v: &[f64]| tensor2::<B>(v, [seq, d], device);

        for &dtype in dtypes {
            let (yq, yk) = rope_pair(t(&q, qd), t(&k, kd), table(&cos), table(&sin), dtype, None);
            assert_eq!(yq.dtype(), dtype, "{}", what("the queries' dtype"));
            assert_eq!(yk.dtype(), dtype, "{}", what("the keys' dtype"));
            if dtype == DType::F32 {
                if scale <= 2.0 {
                    assert_close(&what("queries"), &read(yq), &want_q);
                    assert_close(&what("keys"), &read(yk), &want_k);
                }
                continue;
            }
            for (name, y, x, dims) in [("queries", yq, &q, qd), ("keys", yk, &k, kd)] {
                let f32_rotation = rope(t(x, dims), table(&cos), table(&sin));
                let want = rows_composite::saturating_cast(f32_rotation, dtype);
                let (got, want) = (read(y), read(want));
                let differs = got.iter().zip(&want).position(|(g, w)| g != w);
                assert!(
                    differs.is_none(),
                    "{}",
                    what(&format!(
                        "{name} in {dtype:?} against the f32 rotation cast: entry {differs:?} is {:?}, not {:?}",
                        differs.map(|i| got[i]),
                        differs.map(|i| want[i])
                    ))
                );
                assert!(
                    got.iter().all(|v| v.is_finite()),
                    "{}",
                    what(&format!(
                        "{name} in {dtype:?}: a value past the range is not clamped"
                    ))
                );
            }
        }
        if scale > 2.0 {
            continue;
        }

        // `(dq, dk)` of `sum(yq gq) + sum(yk gk)`, written in `grads`.
        let train = |grads: Option<DType>| {
            let grad_in = |v: &[f64], dims: [usize; 4]| {
                Tensor::<AB, 4>::from_inner(tensor4::<B>(v, dims, device)).require_grad()
            };
            let (qt, kt) = (grad_in(&q, qd), grad_in(&k, kd));
            let table = |v: &[f64]| Tensor::<AB, 2>::from_inner(tensor2::<B>(v, [seq, d], device));
            let (yq, yk) = rope_pair(
                qt.clone(),
                kt.clone(),
                table(&cos),
                table(&sin),
                DType::F32,
                grads,
            );
            assert_close(
                &what("autodiff queries"),
                &read(yq.clone().inner()),
                &want_q,
            );
            let g = |v: &[f64], dims| Tensor::<AB, 4>::from_inner(tensor4::<B>(v, dims, device));
            let loss = (yq * g(&gq, qd)).sum() + (yk * g(&gk, kd)).sum();
            let grads = loss.backward();
            (qt.grad(&grads).unwrap(), kt.grad(&grads).unwrap())
        };
        let (dq, dk) = train(None);
        assert_eq!(dq.dtype(), DType::F32, "{}", what("dq's dtype"));
        let want_dq = rope_oracle(&gq, [seq, q_heads, d], &cos, &neg_sin);
        let want_dk = rope_oracle(&gk, [seq, k_heads, d], &cos, &neg_sin);
        assert_close(&what("dq"), &read(dq.clone()), &want_dq);
        assert_close(&what("dk"), &read(dk.clone()), &want_dk);
        // Written in a product's gradient dtype: the cast of the f32
        // gradients, bit for bit, as the product would make it.
        for &dtype in grad_dtypes {
            let (dq16, dk16) = train(Some(dtype));
            for (name, got, f32_grad) in [("dq", dq16, &dq), ("dk", dk16, &dk)] {
                assert_eq!(got.dtype(), dtype, "{}", what(&format!("{name}'s dtype")));
                let (got, want) = (read(got), read(f32_grad.clone().cast(dtype)));
                assert!(
                    got == want,
                    "{}",
                    what(&format!(
                        "{name} in {dtype:?} is not the f32 gradient cast, bit for bit"
                    ))
                );
            }
        }
    }
}

/// RMSNorm's backward summing a residual gradient
/// ([`RowOps::rms_norm_backward`] with `residual`): `dx` is the plain
/// backward's `dx` plus the residual, that f32 add bit for bit where
/// `sums_exactly` (the CPU; a CubeCL compiler may contract or reassociate
/// the kernel's arithmetic: there within two ulps of the row's largest),
/// and within [`TOL`] of the float64 `dx` plus it; `dw` is the plain
/// backward's. Rows of SmolLM2's width, an odd width, several
/// weight-gradient chunks, and no rows at all.
///
/// [`TOL`]: crate::attention_support::TOL
pub fn check_rms_norm_residual<B: RowOps>(device: &B::Device, sums_exactly: bool) {
    use crate::attention_support::{assert_close, random, read};
    for (rows, hidden) in [(37, 96), (2, 576), (70, 5), (200, 64), (0, 8)] {
        let eps = 1e-5;
        let mut rng = distillery_ops::rng::SplitMix64::new(91 + hidden as u64);
        let x = random(&mut rng, rows * hidden, 2.0);
        let w = random(&mut rng, hidden, 1.0);
        let g = random(&mut rng, rows * hidden, 1.0);
        let residual = random(&mut rng, rows * hidden, 3.0);
        let what = |t: &str| format!("rms_norm backward {rows}x{hidden} with a residual: {t}");
        let t = |v: &[f64]| {
            tensor2::<B>(v, [rows, hidden], device)
                .into_primitive()
                .tensor()
        };
        let w1 = || tensor1::<B>(&w, device).into_primitive().tensor();
        let backward = |residual: Option<&[f64]>| {
            let (dx, dw) = B::rms_norm_backward(t(&x), w1(), t(&g), eps as f32, residual.map(t));
            let dx: Tensor<B, 2> = Tensor::from_primitive(TensorPrimitive::Float(dx));
            let dw: Tensor<B, 1> = Tensor::from_primitive(TensorPrimitive::Float(dw));
            assert_eq!(dx.dtype(), DType::F32, "{}", what("dx's dtype"));
            (read(dx), read(dw))
        };
        let (plain_dx, plain_dw) = backward(None);
        let (dx, dw) = backward(Some(&residual));
        let summed: Vec<f64> = plain_dx
            .iter()
            .zip(&residual)
            .map(|(&d, &r)| f64::from(d as f32 + r as f32))
            .collect();
        let largest = |row: usize| {
            summed[row * hidden..(row + 1) * hidden]
                .iter()
                .fold(0.0f64, |m, v| m.max(v.abs()))
        };
        let ulps = if sums_exactly { 0.0 } else { 2.0 };
        let differs = (0..dx.len()).find(|&i| {
            let bound = ulps * f64::from(f32::EPSILON) * largest(i / hidden);
            (dx[i] - summed[i]).abs() > bound || dx[i].is_nan()
        });
        assert!(
            differs.is_none(),
            "{}",
            what(&format!(
                "dx at {differs:?} is {:?}, not the plain dx plus the residual, {:?} (within {ulps} ulps)",
                differs.map(|i| dx[i]),
                differs.map(|i| summed[i])
            ))
        );
        assert_eq!(dw, plain_dw, "{}", what("dw against the plain backward's"));
        let (want_dx, _) = rms_oracle_grads(&x, &w, &g, eps);
        let want: Vec<f64> = want_dx.iter().zip(&residual).map(|(d, r)| d + r).collect();
        assert_close(&what("dx against float64"), &dx, &want);
    }
}

fn tensor1<B: RowOps>(v: &[f64], device: &B::Device) -> Tensor<B, 1> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

fn tensor4<B: RowOps>(v: &[f64], dims: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, dims), device)
}

fn tensor2<B: RowOps>(v: &[f64], dims: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, dims), device)
}
