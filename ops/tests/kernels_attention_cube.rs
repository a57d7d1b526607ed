#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The CubeCL causal attention kernels on `Cuda` in a cuda build (a GPU
//! machine), else on `Wgpu` (Mesa's lavapipe), against the float64 oracle
//! on random inputs: the output and the log-sum-exp, grouped-query ratios
//! 1, 2, 3 and 4, head sizes 8 to 128, odd sequence lengths, caches of
//! earlier keys, one query; and, under autodiff, the gradients of the
//! queries, keys and values (the backward kernels).
//!
//! Tolerance: within 1e-5 of the largest oracle entry of each tensor, as
//! for the CPU kernel (f32 sums of up to a few hundred terms of size ~1).

use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor};
use distillery_ops::kernels::{AttentionOps, Precision, causal_attention};

mod attention_support;
mod cube_support;

use attention_support::{
    ATTENTION_SHAPES, Shape, assert_close, attention_inputs, attention_oracle,
    attention_oracle_grads, attention_oracle_lse, read,
};
use cube_support::{Cube, device_present, tensor};

/// Beyond the CPU tests' shapes: grouped-query ratio 4, head sizes 128 and
/// 64 with odd sequence lengths.
const MORE_SHAPES: [Shape; 2] = [
    Shape {
        batch: 2,
        seq: 33,
        past: 5,
        heads: 8,
        kv_heads: 2,
        d: 128,
    },
    Shape {
        batch: 1,
        seq: 77,
        past: 0,
        heads: 9,
        kv_heads: 3,
        d: 64,
    },
];

fn shapes() -> impl Iterator<Item = Shape> {
    ATTENTION_SHAPES.into_iter().chain(MORE_SHAPES)
}

#[test]
fn the_cube_forward_and_its_log_sum_exp_match_the_oracle() {
    if !device_present() {
        return;
    }
    for (n, s) in shapes().enumerate() {
        let [q, k, v, _] = attention_inputs(s, 300 + n as u64);
        let prim = |x: &[f64], dims| tensor::<Cube, 4>(x, dims).into_primitive().tensor();
        let (out, lse) = Cube::causal_attention(
            prim(&q, [s.batch, s.seq, s.heads, s.d]),
            prim(&k, [s.batch, s.keys(), s.kv_heads, s.d]),
            prim(&v, [s.batch, s.keys(), s.kv_heads, s.d]),
            1.0 / (s.d as f32).sqrt(),
            true,
            Precision::F32,
        );
        let out = Tensor::<Cube, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(out));
        assert_close(
            &format!("{s:?} output"),
            &read(out),
            &attention_oracle(s, &q, &k, &v),
        );
        let lse = Tensor::<Cube, 3>::from_primitive(burn::tensor::TensorPrimitive::Float(
            lse.expect("asked for"),
        ));
        assert_close(
            &format!("{s:?} log-sum-exp"),
            &read(lse),
            &attention_oracle_lse(s, &q, &k),
        );
    }
}

#[test]
fn the_cube_attention_trains_with_the_oracle_gradients() {
    if !device_present() {
        return;
    }
    type Ad = Autodiff<Cube>;
    for (n, s) in shapes().enumerate() {
        let [q, k, v, g] = attention_inputs(s, 400 + n as u64);
        let qt = tensor::<Ad, 4>(&q, [s.batch, s.seq, s.heads, s.d]).require_grad();
        let kt = tensor::<Ad, 4>(&k, [s.batch, s.keys(), s.kv_heads, s.d]).require_grad();
        let vt = tensor::<Ad, 4>(&v, [s.batch, s.keys(), s.kv_heads, s.d]).require_grad();
        let out = causal_attention(qt.clone(), kt.clone(), vt.clone());
        assert_close(
            &format!("{s:?} output"),
            &read(out.clone().inner()),
            &attention_oracle(s, &q, &k, &v),
        );
        let loss = (out * tensor::<Ad, 4>(&g, [s.batch, s.seq, s.heads, s.d])).sum();
        let grads = loss.backward();
        let want = attention_oracle_grads(s, &q, &k, &v, &g);
        for ((name, t), want) in [("dq", qt), ("dk", kt), ("dv", vt)].into_iter().zip(want) {
            let got = read(t.grad(&grads).expect("a gradient"));
            assert_close(&format!("{s:?} {name}"), &got, &want);
        }
    }
}

/// Queries and keys held in f16, as the rotary embedding writes them where
/// attention reads f16 operands (`AttentionOps::attention_operands`), with
/// f32 values: the output and every gradient are f32 (the values' dtype)
/// and within the f32 tolerance of the oracle on the f16-rounded queries
/// and keys. Gradients rounded to f16 on the way would miss it by ~5e-4.
#[test]
fn the_cube_attention_reads_f16_queries_and_keys_and_answers_in_f32() {
    if !device_present() {
        return;
    }
    type Ad = Autodiff<Cube>;
    let round =
        |x: &[f64]| -> Vec<f64> { x.iter().map(|&v| half::f16::from_f64(v).to_f64()).collect() };
    for (n, s) in shapes().enumerate() {
        let [q, k, v, g] = attention_inputs(s, 500 + n as u64);
        let (q, k) = (round(&q), round(&k));
        let (q_dims, kv_dims) = (
            [s.batch, s.seq, s.heads, s.d],
            [s.batch, s.keys(), s.kv_heads, s.d],
        );
        let f16_leaf = |x: &[f64], dims| {
            Tensor::<Ad, 4>::from_inner(tensor::<Cube, 4>(x, dims).cast(DType::F16)).require_grad()
        };
        let (qt, kt) = (f16_leaf(&q, q_dims), f16_leaf(&k, kv_dims));
        let vt = tensor::<Ad, 4>(&v, kv_dims).require_grad();
        let out = causal_attention(qt.clone(), kt.clone(), vt.clone());
        assert_eq!(out.dtype(), DType::F32, "{s:?}: the output's dtype");
        assert_close(
            &format!("{s:?} output of f16 queries and keys"),
            &read(out.clone().inner()),
            &attention_oracle(s, &q, &k, &v),
        );
        let loss = (out * tensor::<Ad, 4>(&g, q_dims)).sum();
        let grads = loss.backward();
        let want = attention_oracle_grads(s, &q, &k, &v, &g);
        for ((name, t), want) in [("dq", qt), ("dk", kt), ("dv", vt)].into_iter().zip(want) {
            let got = t.grad(&grads).expect("a gradient");
            assert_eq!(got.dtype(), DType::F32, "{s:?}: {name}'s dtype");
            assert_close(
                &format!("{s:?} {name} of f16 queries and keys"),
                &read(got),
                &want,
            );
        }
    }
}

/// The backward given the forward's output in f16 (as the forward writes
/// it for `o_proj` where the products round it,
/// `ProductInputOps::causal_attention_trained`), with the gradient of the
/// output as rows (`o_proj`'s), gives the gradients it gives of that
/// output's values in f32, bit for bit: the row sums `dO . O` read it in
/// its own dtype.
#[test]
fn the_cube_backward_reads_an_f16_output_as_its_values() {
    if !device_present() {
        return;
    }
    type Prim = burn::tensor::ops::FloatTensor<Cube>;
    let values = |t: Prim| {
        read(Tensor::<Cube, 4>::from_primitive(
            burn::tensor::TensorPrimitive::Float(t),
        ))
    };
    for (n, s) in shapes().enumerate() {
        let [q, k, v, g] = attention_inputs(s, 600 + n as u64);
        let (q_dims, kv_dims) = (
            [s.batch, s.seq, s.heads, s.d],
            [s.batch, s.keys(), s.kv_heads, s.d],
        );
        let prim = |x: &[f64], dims| tensor::<Cube, 4>(x, dims).into_primitive().tensor();
        let scale = 1.0 / (s.d as f32).sqrt();
        let (out, lse) = Cube::causal_attention(
            prim(&q, q_dims),
            prim(&k, kv_dims),
            prim(&v, kv_dims),
            scale,
            true,
            Precision::F32,
        );
        let lse = lse.expect("asked for");
        let out16 = Tensor::<Cube, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(out))
            .cast(DType::F16);
        let out32 = out16.clone().cast(DType::F32);
        let rows = [s.batch * s.seq, s.heads * s.d];
        let backward = |out: Tensor<Cube, 4>| {
            Cube::causal_attention_backward(
                prim(&q, q_dims),
                prim(&k, kv_dims),
                prim(&v, kv_dims),
                out.into_primitive().tensor(),
                lse.clone(),
                tensor::<Cube, 2>(&g, rows).into_primitive().tensor(),
                scale,
                Precision::F32,
            )
        };
        let (dq16, dk16, dv16) = backward(out16);
        let (dq32, dk32, dv32) = backward(out32);
        for (name, got, want) in [("dq", dq16, dq32), ("dk", dk16, dk32), ("dv", dv16, dv32)] {
            let (got, want) = (values(got), values(want));
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{s:?} {name}: {differ} of {} differ", got.len());
            assert!(got.iter().any(|&x| x != 0.0), "{s:?} {name}: all zero");
        }
    }
}
