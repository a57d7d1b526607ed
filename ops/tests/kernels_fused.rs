//! The model's fused ops (causal grouped-query attention, RMSNorm, RoPE,
//! SwiGLU) against float64 oracles written here, on random inputs: the CPU
//! kernels called through `Autodiff<Flex>` (forward, and the backward of
//! `sum(y * G)` for a random `G`), and the tensor-op compositions the
//! CubeCL backends run. The oracles' own gradients are checked by central
//! finite differences first.
//!
//! Tolerances: outputs and gradients within 1e-5 of the largest oracle
//! entry of their tensor (f32 arithmetic over sums of up to a few hundred
//! terms of magnitude ~1).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use distillery_ops::kernels::attention::composite as attention_composite;
use distillery_ops::kernels::rows::composite as rows_composite;
use distillery_ops::kernels::{causal_attention, rms_norm, rope, swiglu};
use distillery_ops::rng::SplitMix64;

mod attention_support;
mod rows_support;

use attention_support::{
    ATTENTION_SHAPES, Shape, assert_close, attention_inputs, attention_oracle,
    attention_oracle_grads, dot, random, read,
};
use rows_support::{
    rms_oracle, rms_oracle_grads, rope_oracle, rope_tables, silu, swiglu_oracle_grads,
};

type Ad = Autodiff<Flex>;

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    values: &[f64],
    dims: [usize; D],
) -> Tensor<B, D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, dims), &Default::default())
}

/// Central finite differences of `f` at a few coordinates of `x` against
/// the analytic gradient `grad`.
fn check_by_differences(what: &str, x: &[f64], grad: &[f64], f: impl Fn(&[f64]) -> f64) {
    let h = 1e-6;
    let mut x = x.to_vec();
    for i in (0..x.len()).step_by(x.len().div_ceil(23)) {
        let keep = x[i];
        x[i] = keep + h;
        let up = f(&x);
        x[i] = keep - h;
        let down = f(&x);
        x[i] = keep;
        let numeric = (up - down) / (2.0 * h);
        assert!(
            (numeric - grad[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "{what}: oracle gradient {i} is {} but finite differences give {numeric}",
            grad[i]
        );
    }
}

// ---------------------------------------------------------------- attention

#[test]
fn attention_oracle_gradients_match_finite_differences() {
    let s = Shape {
        batch: 1,
        seq: 4,
        past: 2,
        heads: 4,
        kv_heads: 2,
        d: 3,
    };
    let [q, k, v, g] = attention_inputs(s, 7);
    let [dq, dk, dv] = attention_oracle_grads(s, &q, &k, &v, &g);
    check_by_differences("dq", &q, &dq, |x| dot(&attention_oracle(s, x, &k, &v), &g));
    check_by_differences("dk", &k, &dk, |x| dot(&attention_oracle(s, &q, x, &v), &g));
    check_by_differences("dv", &v, &dv, |x| dot(&attention_oracle(s, &q, &k, x), &g));
}

#[test]
fn cpu_attention_matches_oracle_forward_and_backward() {
    for (n, s) in ATTENTION_SHAPES.into_iter().enumerate() {
        let [q, k, v, g] = attention_inputs(s, 100 + n as u64);
        let want = attention_oracle(s, &q, &k, &v);
        let [dq, dk, dv] = attention_oracle_grads(s, &q, &k, &v, &g);
        let qt = tensor::<Ad, 4>(&q, [s.batch, s.seq, s.heads, s.d]).require_grad();
        let kt = tensor::<Ad, 4>(&k, [s.batch, s.keys(), s.kv_heads, s.d]).require_grad();
        let vt = tensor::<Ad, 4>(&v, [s.batch, s.keys(), s.kv_heads, s.d]).require_grad();
        let out = causal_attention(qt.clone(), kt.clone(), vt.clone());
        assert_close(&format!("{s:?} output"), &read(out.clone().inner()), &want);
        let loss = (out * tensor::<Ad, 4>(&g, [s.batch, s.seq, s.heads, s.d])).sum();
        let grads = loss.backward();
        for (name, t, want) in [("dq", qt, dq), ("dk", kt, dk), ("dv", vt, dv)] {
            let got = read(t.grad(&grads).expect("a gradient"));
            assert_close(&format!("{s:?} {name}"), &got, &want);
        }
    }
}

#[test]
fn inference_attention_matches_oracle() {
    // Without autodiff the kernel skips the log-sum-exp.
    let s = ATTENTION_SHAPES[2];
    let [q, k, v, _] = attention_inputs(s, 5);
    let out = causal_attention(
        tensor::<Flex, 4>(&q, [s.batch, s.seq, s.heads, s.d]),
        tensor::<Flex, 4>(&k, [s.batch, s.keys(), s.kv_heads, s.d]),
        tensor::<Flex, 4>(&v, [s.batch, s.keys(), s.kv_heads, s.d]),
    );
    assert_close(
        "inference output",
        &read(out),
        &attention_oracle(s, &q, &k, &v),
    );
}

#[test]
fn attention_composite_matches_oracle() {
    for (n, s) in ATTENTION_SHAPES.into_iter().enumerate() {
        let [q, k, v, g] = attention_inputs(s, 200 + n as u64);
        let scale = 1.0 / (s.d as f32).sqrt();
        let q4 = || tensor::<Flex, 4>(&q, [s.batch, s.seq, s.heads, s.d]);
        let k4 = || tensor::<Flex, 4>(&k, [s.batch, s.keys(), s.kv_heads, s.d]);
        let v4 = || tensor::<Flex, 4>(&v, [s.batch, s.keys(), s.kv_heads, s.d]);
        let want = attention_oracle(s, &q, &k, &v);
        let (plain, _) = attention_composite::forward(q4(), k4(), v4(), scale, false);
        assert_close(&format!("{s:?} composite output"), &read(plain), &want);
        let (out, lse) = attention_composite::forward(q4(), k4(), v4(), scale, true);
        assert_close(
            &format!("{s:?} composite output with lse"),
            &read(out),
            &want,
        );
        let g4 = tensor::<Flex, 4>(&g, [s.batch, s.seq, s.heads, s.d]);
        let (dq, dk, dv) = attention_composite::backward(q4(), k4(), v4(), lse.unwrap(), g4, scale);
        let want = attention_oracle_grads(s, &q, &k, &v, &g);
        for ((name, got), want) in [("dq", dq), ("dk", dk), ("dv", dv)].into_iter().zip(want) {
            assert_close(&format!("{s:?} composite {name}"), &read(got), &want);
        }
    }
}

// ---------------------------------------------------------------- row ops

#[test]
fn row_oracle_gradients_match_finite_differences() {
    let mut rng = SplitMix64::new(3);
    let (rows, n, eps) = (3, 8, 1e-5);
    let x = random(&mut rng, rows * n, 2.0);
    let w = random(&mut rng, n, 1.0);
    let g = random(&mut rng, rows * n, 1.0);
    let (dx, dw) = rms_oracle_grads(&x, &w, &g, eps);
    check_by_differences("rms dx", &x, &dx, |x| dot(&rms_oracle(x, &w, eps), &g));
    check_by_differences("rms dw", &w, &dw, |w| dot(&rms_oracle(&x, w, eps), &g));

    let dims = [5, 2, 8];
    let (cos, sin) = rope_tables(5, 8);
    let neg_sin: Vec<f64> = sin.iter().map(|v| -v).collect();
    let x = random(&mut rng, 2 * 5 * 2 * 8, 1.0);
    let g = random(&mut rng, x.len(), 1.0);
    let dx = rope_oracle(&g, dims, &cos, &neg_sin);
    check_by_differences("rope dx", &x, &dx, |x| {
        dot(&rope_oracle(x, dims, &cos, &sin), &g)
    });

    let gate = random(&mut rng, 40, 4.0);
    let up = random(&mut rng, 40, 1.0);
    let g = random(&mut rng, 40, 1.0);
    let (dgate, dup) = swiglu_oracle_grads(&gate, &up, &g);
    let value =
        |gate: &[f64], up: &[f64]| (0..40).map(|i| silu(gate[i]) * up[i] * g[i]).sum::<f64>();
    check_by_differences("swiglu dgate", &gate, &dgate, |x| value(x, &up));
    check_by_differences("swiglu dup", &up, &dup, |x| value(&gate, x));
}

#[test]
fn rms_norm_matches_oracle_forward_and_backward() {
    // 37 rows: not a multiple of the kernel's rows per task.
    for (rows, hidden) in [(37, 96), (2, 576), (70, 5)] {
        let eps = 1e-5;
        let mut rng = SplitMix64::new(11 + hidden as u64);
        let x = random(&mut rng, rows * hidden, 2.0);
        let w = random(&mut rng, hidden, 1.0);
        let g = random(&mut rng, rows * hidden, 1.0);
        let want = rms_oracle(&x, &w, eps);
        let (want_dx, want_dw) = rms_oracle_grads(&x, &w, &g, eps);

        let xt = tensor::<Ad, 3>(&x, [1, rows, hidden]).require_grad();
        let wt = tensor::<Ad, 1>(&w, [hidden]).require_grad();
        let y = rms_norm(xt.clone(), wt.clone(), eps as f32);
        assert_close("rms_norm output", &read(y.clone().inner()), &want);
        let grads = (y * tensor::<Ad, 3>(&g, [1, rows, hidden]))
            .sum()
            .backward();
        assert_close("rms_norm dx", &read(xt.grad(&grads).unwrap()), &want_dx);
        assert_close("rms_norm dw", &read(wt.grad(&grads).unwrap()), &want_dw);

        // Inference: the kernel overwrites its (uniquely held) input.
        let y = rms_norm(
            tensor::<Flex, 2>(&x, [rows, hidden]),
            tensor::<Flex, 1>(&w, [hidden]),
            eps as f32,
        );
        assert_close("rms_norm in place", &read(y), &want);

        let x2 = || tensor::<Flex, 2>(&x, [rows, hidden]);
        let w1 = || tensor::<Flex, 1>(&w, [hidden]);
        assert_close(
            "rms_norm composite",
            &read(rows_composite::rms_norm(x2(), w1(), eps as f32)),
            &want,
        );
        let (dx, dw) = rows_composite::rms_norm_backward(
            x2(),
            w1(),
            tensor::<Flex, 2>(&g, [rows, hidden]),
            eps as f32,
        );
        assert_close("rms_norm composite dx", &read(dx), &want_dx);
        assert_close("rms_norm composite dw", &read(dw), &want_dw);
    }
}

#[test]
fn rope_matches_oracle_forward_and_backward() {
    let (batch, seq, heads, d) = (2, 37, 3, 64);
    let dims = [batch, seq, heads, d];
    let (cos, sin) = rope_tables(seq, d);
    let neg_sin: Vec<f64> = sin.iter().map(|v| -v).collect();
    let mut rng = SplitMix64::new(21);
    let x = random(&mut rng, batch * seq * heads * d, 1.0);
    let g = random(&mut rng, x.len(), 1.0);
    let want = rope_oracle(&x, [seq, heads, d], &cos, &sin);
    let want_dx = rope_oracle(&g, [seq, heads, d], &cos, &neg_sin);

    let table = |t: &[f64]| tensor::<Ad, 2>(t, [seq, d]);
    let xt = tensor::<Ad, 4>(&x, dims).require_grad();
    let y = rope(xt.clone(), table(&cos), table(&sin));
    assert_close("rope output", &read(y.clone().inner()), &want);
    let grads = (y * tensor::<Ad, 4>(&g, dims)).sum().backward();
    assert_close("rope dx", &read(xt.grad(&grads).unwrap()), &want_dx);

    let y = rope(
        tensor::<Flex, 4>(&x, dims),
        tensor::<Flex, 2>(&cos, [seq, d]),
        tensor::<Flex, 2>(&sin, [seq, d]),
    );
    assert_close("rope in place", &read(y), &want);
    let y = rows_composite::rope(
        tensor::<Flex, 4>(&x, dims),
        tensor::<Flex, 2>(&cos, [seq, d]),
        tensor::<Flex, 2>(&sin, [seq, d]),
    );
    assert_close("rope composite", &read(y), &want);
}

#[test]
fn rms_norm_backward_sums_a_residual_gradient() {
    rows_support::check_rms_norm_residual::<Flex>(&Default::default(), true);
}

#[test]
fn rope_pair_matches_oracle_forward_and_backward() {
    // The CPU rotates in f32 only: attention reads f32 operands there.
    // The gradients in bf16 through the default inverse rotation's cast.
    rows_support::check_rope_pair::<Flex, Ad>(&Default::default(), &[DType::F32], &[DType::BF16]);
}

#[test]
fn swiglu_matches_oracle_forward_and_backward() {
    let dims = [2, 19, 101];
    let n = dims.iter().product();
    let mut rng = SplitMix64::new(31);
    // Gates up to +-30: the sigmoid saturates on both sides without overflow.
    let gate = random(&mut rng, n, 30.0);
    let up = random(&mut rng, n, 1.0);
    let g = random(&mut rng, n, 1.0);
    let want: Vec<f64> = (0..n).map(|i| silu(gate[i]) * up[i]).collect();
    let (want_dgate, want_dup) = swiglu_oracle_grads(&gate, &up, &g);

    let gt = tensor::<Ad, 3>(&gate, dims).require_grad();
    let ut = tensor::<Ad, 3>(&up, dims).require_grad();
    let y = swiglu(gt.clone(), ut.clone());
    assert_close("swiglu output", &read(y.clone().inner()), &want);
    let grads = (y * tensor::<Ad, 3>(&g, dims)).sum().backward();
    assert_close("swiglu dgate", &read(gt.grad(&grads).unwrap()), &want_dgate);
    assert_close("swiglu dup", &read(ut.grad(&grads).unwrap()), &want_dup);

    let y = swiglu(tensor::<Flex, 3>(&gate, dims), tensor::<Flex, 3>(&up, dims));
    assert_close("swiglu in place", &read(y), &want);
    let (dg, du) = rows_composite::swiglu_backward(
        tensor::<Flex, 3>(&gate, dims),
        tensor::<Flex, 3>(&up, dims),
        tensor::<Flex, 3>(&g, dims),
    );
    assert_close("swiglu composite dgate", &read(dg), &want_dgate);
    assert_close("swiglu composite dup", &read(du), &want_dup);
}
