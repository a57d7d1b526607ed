#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The attention forward on 16 x 16 x 16 tile products
//! (`attention_tiles_cube`) against the float64 oracle, on random inputs:
//! grouped-query ratios 1, 3 and 4, head sizes 16, 64 and 128, caches of
//! earlier keys, and plans with more than one plane per cube and more than
//! one fragment per tile.
//!
//! The backward (`attention_tiles_cube_backward`) likewise: dq, dk and dv
//! from the forward's output and log-sum-exp, against the float64
//! gradients.
//!
//! On wgpu (Mesa's lavapipe, no matrix-multiply units) the products run on
//! their emulation, in f32 and with f16 operands; in a cuda build the same
//! checks run there, and so do the kernels on tensor cores with the
//! operands the bf16 precision gives them (f16 scores, bf16 gradients).

use burn::tensor::{DType, Tensor, TensorPrimitive};
use distillery_ops::kernels::{
    AttentionOps, Precision, TENSOR_CORES, TilePlan, causal_attention_tiles,
    causal_attention_tiles_backward, tile_plan, tile_plan_backward,
};

mod attention_support;
mod cube_support;

use attention_support::{
    Shape, TOL, assert_close_within, attention_inputs, attention_oracle, attention_oracle_grads,
    attention_oracle_lse, read,
};
use cube_support::{Cube, device_present, tensor};

/// Shapes the tiles take: lengths multiples of 16.
const SHAPES: [Shape; 4] = [
    // Grouped-query ratio 3, 32 queries: two planes a cube where they fit.
    Shape {
        batch: 2,
        seq: 32,
        past: 0,
        heads: 6,
        kv_heads: 2,
        d: 64,
    },
    // Ratio 4, head size 128, a cache of 16 earlier keys (80 keys: tiles
    // of 16).
    Shape {
        batch: 1,
        seq: 64,
        past: 16,
        heads: 4,
        kv_heads: 1,
        d: 128,
    },
    // Ratio 1, head size 16, 48 queries: one plane a cube.
    Shape {
        batch: 1,
        seq: 48,
        past: 0,
        heads: 2,
        kv_heads: 2,
        d: 16,
    },
    // The SmolLM2 heads: 9 on 3, 64 wide, 64 positions.
    Shape {
        batch: 1,
        seq: 64,
        past: 0,
        heads: 9,
        kv_heads: 3,
        d: 64,
    },
];

type Prim = burn::tensor::ops::FloatTensor<Cube>;

fn prim(x: &[f64], dims: [usize; 4]) -> Prim {
    tensor::<Cube, 4>(x, dims).into_primitive().tensor()
}

fn values<const D: usize>(t: Prim) -> Vec<f64> {
    read(Tensor::<Cube, D>::from_primitive(TensorPrimitive::Float(t)))
}

/// `x` rounded to `dtype` (f16 or bf16) and back.
fn rounded(x: &[f64], dtype: DType) -> Vec<f64> {
    x.iter()
        .map(|&x| match dtype {
            DType::F16 => f64::from(half::f16::from_f64(x).to_f32()),
            DType::BF16 => f64::from(half::bf16::from_f64(x).to_f32()),
            _ => x,
        })
        .collect()
}

/// Runs the tiles on shape `s` with operands in `dtype` (the plan made
/// with `emulate`), checks output and log-sum-exp within `tol` of the
/// oracle on `oracle_dtype`-rounded inputs, and returns the plan.
fn check(
    s: Shape,
    seed: u64,
    dtype: DType,
    emulate: bool,
    oracle_dtype: DType,
    tol: f64,
) -> TilePlan {
    let [q, k, v, _] = attention_inputs(s, seed);
    let (qp, kp, vp) = (
        prim(&q, [s.batch, s.seq, s.heads, s.d]),
        prim(&k, [s.batch, s.keys(), s.kv_heads, s.d]),
        prim(&v, [s.batch, s.keys(), s.kv_heads, s.d]),
    );
    let plan = tile_plan(&qp.client, s.seq, s.keys(), s.d, dtype, emulate)
        .unwrap_or_else(|| panic!("{s:?}: no tile plan"));
    let scale = 1.0 / (s.d as f32).sqrt();
    let (out, lse) = causal_attention_tiles(qp, kp, vp, scale, true, dtype, DType::F32, plan);
    let (q, k, v) = (
        rounded(&q, oracle_dtype),
        rounded(&k, oracle_dtype),
        rounded(&v, oracle_dtype),
    );
    let what = format!("{s:?} in {dtype:?}, {plan:?}");
    assert_close_within(
        &format!("{what}: output"),
        &values::<4>(out),
        &attention_oracle(s, &q, &k, &v),
        tol,
    );
    assert_close_within(
        &format!("{what}: log-sum-exp"),
        &values::<3>(lse.expect("asked for")),
        &attention_oracle_lse(s, &q, &k),
        tol,
    );
    plan
}

#[test]
fn the_emulated_tiles_match_the_oracle_in_f32() {
    if !device_present() {
        return;
    }
    let mut planes = Vec::new();
    for (n, s) in SHAPES.into_iter().enumerate() {
        let plan = check(s, 700 + n as u64, DType::F32, true, DType::F32, TOL);
        assert!(!plan.matrix_units, "an emulated plan runs on matrix units");
        planes.push((plan.planes, plan.tile_frags));
    }
    // The shapes cover more than one plane a cube and more than one
    // fragment a key tile, whatever the device's shared memory allows.
    assert!(planes.iter().any(|&(p, _)| p > 1), "{planes:?}");
    assert!(planes.iter().any(|&(_, f)| f > 1), "{planes:?}");
}

/// f16 operands, rounded as the device rounds them: the oracle on the
/// rounded inputs, off only by the weights' rounding to f16 (2^-11).
#[test]
fn the_emulated_tiles_match_the_oracle_with_f16_operands() {
    if !device_present() {
        return;
    }
    for (n, s) in SHAPES.into_iter().enumerate() {
        check(s, 800 + n as u64, DType::F16, true, DType::F16, 2e-3);
    }
}

/// The kernel itself, on tensor cores where the device has them (CUDA,
/// bf16 operands), within the 1e-2 of the float64 oracle on the
/// unrounded inputs. On a device without them, the plan says so.
#[test]
fn the_tiles_on_matrix_units_match_the_oracle_with_bf16_operands() {
    if !device_present() {
        return;
    }
    for (n, s) in SHAPES.into_iter().enumerate() {
        let q = prim(&[0.0; 16 * 16], [1, 16, 1, 16]);
        let plan = tile_plan(&q.client, s.seq, s.keys(), s.d, DType::BF16, false).expect("a plan");
        if !cfg!(feature = "cuda") {
            assert!(!plan.matrix_units, "lavapipe has no matrix-multiply units");
            continue;
        }
        assert!(plan.matrix_units, "a CUDA device without bf16 tensor cores");
        check(s, 900 + n as u64, DType::BF16, false, DType::F32, 1e-2);
    }
}

/// The output written in a 16-bit dtype (as `o_proj` reads it) is the f32
/// output rounded, bit for bit: emulated on any device, in f16 with f32
/// and f16 operands; on tensor cores in a cuda build, in bf16 with the
/// operands bf16 training gives them. The log-sum-exp does not change.
#[test]
fn the_output_written_rounded_is_the_f32_output_rounded() {
    if !device_present() {
        return;
    }
    let mut runs = vec![
        (DType::F32, true, DType::F16),
        (DType::F16, true, DType::F16),
    ];
    if cfg!(feature = "cuda") {
        runs.push((DType::F16, false, DType::BF16));
    }
    for (n, s) in SHAPES.into_iter().enumerate() {
        for &(operands, emulate, out_dtype) in &runs {
            let [q, k, v, _] = attention_inputs(s, 1300 + n as u64);
            let inputs = || {
                (
                    prim(&q, [s.batch, s.seq, s.heads, s.d]),
                    prim(&k, [s.batch, s.keys(), s.kv_heads, s.d]),
                    prim(&v, [s.batch, s.keys(), s.kv_heads, s.d]),
                )
            };
            let client = inputs().0.client;
            let plan = tile_plan(&client, s.seq, s.keys(), s.d, operands, emulate).expect("a plan");
            let scale = 1.0 / (s.d as f32).sqrt();
            let run = |dtype| {
                let (q, k, v) = inputs();
                causal_attention_tiles(q, k, v, scale, true, operands, dtype, plan)
            };
            let (full, full_lse) = run(DType::F32);
            let (out, lse) = run(out_dtype);
            let what = format!("{s:?}, {operands:?} operands, {plan:?}, out {out_dtype:?}");
            assert_eq!(out.dtype, out_dtype, "{what}");
            let want = rounded(&values::<4>(full), out_dtype);
            let got = values::<4>(out);
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{what}: {differ} of {} values differ", got.len());
            assert_eq!(
                values::<3>(lse.expect("asked for")),
                values::<3>(full_lse.expect("asked for")),
                "{what}: log-sum-exp"
            );
        }
    }
}

#[test]
fn shapes_the_tiles_do_not_take_get_no_plan() {
    if !device_present() {
        return;
    }
    let q = prim(&[0.0; 16 * 16], [1, 16, 1, 16]);
    let plan = |seq, keys, d| tile_plan(&q.client, seq, keys, d, DType::F32, true);
    assert_eq!(plan(33, 33, 64), None, "an odd sequence");
    assert_eq!(plan(32, 40, 64), None, "keys not a multiple of 16");
    assert_eq!(plan(32, 32, 72), None, "a head size not a multiple of 16");
    assert_eq!(plan(32, 32, 144), None, "a head size over 128");
    assert_eq!(plan(0, 0, 64), None, "no queries");
    let fitted = plan(48, 80, 64).expect("48 queries on 80 keys");
    assert_eq!((fitted.planes, fitted.tile_frags), (1, 1));
}

/// f16 ends at 65,504: a query or key past it is clamped to it in the cast
/// to the operands, so its row stays finite (one-hot on its largest score)
/// and the others are untouched.
#[test]
fn operands_past_the_f16_range_are_clamped() {
    if !device_present() {
        return;
    }
    let s = SHAPES[0];
    let [mut q, mut k, v, _] = attention_inputs(s, 1000);
    q[5] = 1.0e6;
    k[s.d + 3] = -2.0e6;
    let (qp, kp, vp) = (
        prim(&q, [s.batch, s.seq, s.heads, s.d]),
        prim(&k, [s.batch, s.keys(), s.kv_heads, s.d]),
        prim(&v, [s.batch, s.keys(), s.kv_heads, s.d]),
    );
    let plan = tile_plan(&qp.client, s.seq, s.keys(), s.d, DType::F16, true).expect("a plan");
    let (out, _) = causal_attention_tiles(
        qp,
        kp,
        vp,
        1.0 / (s.d as f32).sqrt(),
        false,
        DType::F16,
        DType::F32,
        plan,
    );
    let out = values::<4>(out);
    assert!(
        out.iter().all(|x| x.is_finite()),
        "an operand past f16's range made a non-finite output"
    );
    let clamp = |x: &[f64]| {
        rounded(
            &x.iter()
                .map(|x| x.clamp(-65504.0, 65504.0))
                .collect::<Vec<_>>(),
            DType::F16,
        )
    };
    let want = attention_oracle(s, &clamp(&q), &clamp(&k), &rounded(&v, DType::F16));
    assert_close_within("clamped operands: output", &out, &want, 2e-3);
}

/// Forward then backward on the tiles for shape `s`, the forward's
/// operands in `scores`, the gradient products' in `grads` (plans made
/// with `emulate`), against the float64 gradients of `rounding`-rounded
/// inputs within `tol`.
fn check_backward(
    s: Shape,
    seed: u64,
    [scores, grads]: [DType; 2],
    emulate: bool,
    rounding: DType,
    tol: f64,
) {
    let [q, k, v, g] = attention_inputs(s, seed);
    let q_dims = [s.batch, s.seq, s.heads, s.d];
    let kv_dims = [s.batch, s.keys(), s.kv_heads, s.d];
    let client = prim(&q, q_dims).client;
    let plan = tile_plan(&client, s.seq, s.keys(), s.d, scores, emulate).expect("a forward plan");
    let backward = tile_plan_backward(&client, s.seq, s.keys(), s.d, scores, grads, emulate)
        .unwrap_or_else(|| panic!("{s:?}: no backward plan"));
    let scale = 1.0 / (s.d as f32).sqrt();
    let (out, lse) = causal_attention_tiles(
        prim(&q, q_dims),
        prim(&k, kv_dims),
        prim(&v, kv_dims),
        scale,
        true,
        scores,
        DType::F32,
        plan,
    );
    let (dq, dk, dv) = causal_attention_tiles_backward(
        prim(&q, q_dims),
        prim(&k, kv_dims),
        prim(&v, kv_dims),
        out,
        lse.expect("asked for"),
        prim(&g, q_dims),
        scale,
        [scores, grads],
        backward,
    );
    let [q, k, v, g] = [&q, &k, &v, &g].map(|x| rounded(x, rounding));
    let [want_q, want_k, want_v] = attention_oracle_grads(s, &q, &k, &v, &g);
    let what = format!("{s:?} in {scores:?}/{grads:?}, {backward:?}");
    assert_close_within(&format!("{what}: dq"), &values::<4>(dq), &want_q, tol);
    assert_close_within(&format!("{what}: dk"), &values::<4>(dk), &want_k, tol);
    assert_close_within(&format!("{what}: dv"), &values::<4>(dv), &want_v, tol);
}

#[test]
fn the_emulated_backward_matches_the_oracle_in_f32() {
    if !device_present() {
        return;
    }
    for (n, s) in SHAPES.into_iter().enumerate() {
        check_backward(s, 1100 + n as u64, [DType::F32; 2], true, DType::F32, TOL);
    }
}

/// f16 operands throughout, against the gradients of the rounded inputs:
/// off by the rounding of the weights and the `ds` (2^-11 each).
#[test]
fn the_emulated_backward_matches_the_oracle_with_f16_operands() {
    if !device_present() {
        return;
    }
    for (n, s) in SHAPES.into_iter().enumerate() {
        check_backward(s, 1200 + n as u64, [DType::F16; 2], true, DType::F16, 2e-3);
    }
}

/// The kernels themselves on tensor cores where the device has them
/// (CUDA): the scores in f16 and the gradient products in bf16, as the
/// bf16 precision runs them, within 1e-2 of the float64 gradients of the
/// unrounded inputs.
#[test]
fn the_backward_on_matrix_units_matches_the_oracle() {
    if !device_present() || !cfg!(feature = "cuda") {
        return;
    }
    for (n, s) in SHAPES.into_iter().enumerate() {
        let client = prim(&[0.0; 256], [1, 16, 1, 16]).client;
        let plan = tile_plan_backward(
            &client,
            s.seq,
            s.keys(),
            s.d,
            DType::F16,
            DType::BF16,
            false,
        )
        .expect("a plan");
        assert!(
            plan.dq.matrix_units && plan.dkv.matrix_units,
            "no tensor cores for f16 and bf16"
        );
        check_backward(
            s,
            1300 + n as u64,
            [DType::F16, DType::BF16],
            false,
            DType::F32,
            1e-2,
        );
    }
}

/// The model's op picks the tiles exactly where the bf16 precision meets
/// tensor cores: on CUDA, not on lavapipe, and never in f32.
#[test]
fn the_op_runs_on_tensor_cores_only_in_bf16_where_there_are_some() {
    if !device_present() {
        return;
    }
    let device = cube_support::device();
    let bf16 = Cube::attention_arithmetic(&device, [512, 512, 64], Precision::Bf16);
    let f32 = Cube::attention_arithmetic(&device, [512, 512, 64], Precision::F32);
    let odd = Cube::attention_arithmetic(&device, [33, 33, 64], Precision::Bf16);
    assert_eq!(f32, "f32");
    assert_eq!(odd, "f32", "33 positions do not fit the tiles");
    if cfg!(feature = "cuda") {
        assert_eq!(bf16, TENSOR_CORES);
    } else {
        assert_eq!(bf16, "f32");
    }
}
