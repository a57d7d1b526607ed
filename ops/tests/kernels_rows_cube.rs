#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The CubeCL row kernels (RMSNorm, rotary embedding, SwiGLU) on `Cuda` in a
//! cuda build (a GPU machine), else on `Wgpu` (Mesa's lavapipe), against
//! the float64 oracles on random inputs: the forward on the plain backend,
//! and forward and backward (the gradients of `sum(y * G)` for a random `G`)
//! under autodiff. Shapes cover rows shorter than a cube, rows a unit walks
//! several times (4096), odd widths (vectors of one), more rows than one
//! chunk of the weight gradient, head sizes 6 to 128, and rotary tables
//! sliced at an offset (as a cache's positions are).
//!
//! Tolerance: within 1e-5 of the largest oracle entry of each tensor, as
//! for the CPU kernels.

use burn::backend::Autodiff;
use burn::tensor::DType;
use distillery_ops::kernels::{rms_norm, rope, swiglu};
use distillery_ops::rng::SplitMix64;

mod attention_support;
mod cube_support;
mod rows_support;

use attention_support::{assert_close, random, read};
use cube_support::{Cube, device, device_present, tensor};
use rows_support::{
    check_rms_norm_residual, check_rope_pair, rms_oracle, rms_oracle_grads, rope_oracle,
    rope_tables, silu, swiglu_oracle_grads,
};

type Ad = Autodiff<Cube>;

#[test]
fn rms_norm_kernels_match_oracle() {
    if !device_present() {
        return;
    }
    // (rows, hidden): a short row, SmolLM2's width, an odd width, a row each
    // unit walks four times, and 200 rows (four chunks of the weight
    // gradient, the last one short).
    for (rows, hidden) in [(37, 96), (2, 576), (70, 5), (3, 4096), (200, 64)] {
        let eps = 1e-5;
        let mut rng = SplitMix64::new(11 + hidden as u64);
        let x = random(&mut rng, rows * hidden, 2.0);
        let w = random(&mut rng, hidden, 1.0);
        let g = random(&mut rng, rows * hidden, 1.0);
        let want = rms_oracle(&x, &w, eps);
        let (want_dx, want_dw) = rms_oracle_grads(&x, &w, &g, eps);
        let what = |t: &str| format!("rms_norm {rows}x{hidden} {t}");

        let y = rms_norm(
            tensor::<Cube, 2>(&x, [rows, hidden]),
            tensor::<Cube, 1>(&w, [hidden]),
            eps as f32,
        );
        assert_close(&what("output"), &read(y), &want);

        let xt = tensor::<Ad, 3>(&x, [1, rows, hidden]).require_grad();
        let wt = tensor::<Ad, 1>(&w, [hidden]).require_grad();
        let y = rms_norm(xt.clone(), wt.clone(), eps as f32);
        assert_close(&what("autodiff output"), &read(y.clone().inner()), &want);
        let grads = (y * tensor::<Ad, 3>(&g, [1, rows, hidden]))
            .sum()
            .backward();
        assert_close(&what("dx"), &read(xt.grad(&grads).unwrap()), &want_dx);
        assert_close(&what("dw"), &read(wt.grad(&grads).unwrap()), &want_dw);
    }
}

#[test]
fn rms_norm_backward_kernel_sums_a_residual_gradient() {
    if !device_present() {
        return;
    }
    // A compiler may contract the kernel's arithmetic: not bit for bit.
    check_rms_norm_residual::<Cube>(&device(), false);
}

#[test]
fn rope_kernel_matches_oracle_forward_and_backward() {
    if !device_present() {
        return;
    }
    // (batch, seq, heads, d, offset): the tables are built for
    // `offset + seq` positions and sliced from `offset`.
    for (batch, seq, heads, d, offset) in [
        (2, 37, 3, 64, 0),
        (1, 5, 4, 128, 7),
        (3, 9, 2, 6, 2),
        (1, 1, 9, 64, 40),
    ] {
        let dims = [batch, seq, heads, d];
        let (cos_all, sin_all) = rope_tables(offset + seq, d);
        let (cos, sin) = (&cos_all[offset * d..], &sin_all[offset * d..]);
        let neg_sin: Vec<f64> = sin.iter().map(|v| -v).collect();
        let mut rng = SplitMix64::new(21 + d as u64);
        let x = random(&mut rng, batch * seq * heads * d, 1.0);
        let g = random(&mut rng, x.len(), 1.0);
        let want = rope_oracle(&x, [seq, heads, d], cos, sin);
        let want_dx = rope_oracle(&g, [seq, heads, d], cos, &neg_sin);
        let what = |t: &str| format!("rope {dims:?} from {offset} {t}");

        let sliced = |t: &[f64]| tensor::<Cube, 2>(t, [offset + seq, d]).narrow(0, offset, seq);
        let y = rope(
            tensor::<Cube, 4>(&x, dims),
            sliced(&cos_all),
            sliced(&sin_all),
        );
        assert_close(&what("output"), &read(y), &want);

        let table = |t: &[f64]| tensor::<Ad, 2>(t, [seq, d]);
        let xt = tensor::<Ad, 4>(&x, dims).require_grad();
        let y = rope(xt.clone(), table(cos), table(sin));
        assert_close(&what("autodiff output"), &read(y.clone().inner()), &want);
        let grads = (y * tensor::<Ad, 4>(&g, dims)).sum().backward();
        assert_close(&what("dx"), &read(xt.grad(&grads).unwrap()), &want_dx);
    }
}

#[test]
fn rope_pair_kernel_matches_oracle_and_writes_attention_operands() {
    if !device_present() {
        return;
    }
    // bf16 where the device has it (CUDA); lavapipe writes f16 only.
    let dtypes: &[DType] = if cfg!(feature = "cuda") {
        &[DType::F32, DType::F16, DType::BF16]
    } else {
        &[DType::F32, DType::F16]
    };
    // The gradients in the products' 16-bit dtype: f16 on lavapipe.
    let grad_dtypes: &[DType] = &dtypes[1..];
    check_rope_pair::<Cube, Ad>(&device(), dtypes, grad_dtypes);
}

#[test]
fn swiglu_kernels_match_oracle_forward_and_backward() {
    if !device_present() {
        return;
    }
    for dims in [[2, 19, 101], [1, 4, 1536], [1, 1, 3]] {
        let n = dims.iter().product();
        let mut rng = SplitMix64::new(31 + n as u64);
        // Gates up to +-30: the sigmoid saturates on both sides without
        // overflow.
        let gate = random(&mut rng, n, 30.0);
        let up = random(&mut rng, n, 1.0);
        let g = random(&mut rng, n, 1.0);
        let want: Vec<f64> = (0..n).map(|i| silu(gate[i]) * up[i]).collect();
        let (want_dgate, want_dup) = swiglu_oracle_grads(&gate, &up, &g);
        let what = |t: &str| format!("swiglu {dims:?} {t}");

        let y = swiglu(tensor::<Cube, 3>(&gate, dims), tensor::<Cube, 3>(&up, dims));
        assert_close(&what("output"), &read(y), &want);

        let gt = tensor::<Ad, 3>(&gate, dims).require_grad();
        let ut = tensor::<Ad, 3>(&up, dims).require_grad();
        let y = swiglu(gt.clone(), ut.clone());
        assert_close(&what("autodiff output"), &read(y.clone().inner()), &want);
        let grads = (y * tensor::<Ad, 3>(&g, dims)).sum().backward();
        assert_close(&what("dgate"), &read(gt.grad(&grads).unwrap()), &want_dgate);
        assert_close(&what("dup"), &read(ut.grad(&grads).unwrap()), &want_dup);
    }
}
