//! The model's matrix products (`kernels::linear_matmul`) on the CPU
//! against a float64 oracle, on random inputs, both weight layouts, and
//! shapes that leave partial tiles on every edge.
//!
//! f32: within f32 rounding of the exact product (`k * 2^-24` of the sum of
//! the terms' magnitudes). bf16: where the CPU has AMX, against the exact
//! product with the weights rounded to bf16 (the kernel's documented
//! arithmetic), within `2^-15` of the terms' magnitudes (the activations'
//! two-part bf16 keeps about 16 bits); elsewhere the bf16 request must give
//! exactly the f32 result.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use distillery_ops::kernels::matmul::bf16_on_cpu;
use distillery_ops::kernels::{Precision, WeightLayout, linear_matmul};
use distillery_ops::rng::SplitMix64;

/// `(m, k, n)`: one row, odd sizes, sizes past one 32 x 32 block.
const SHAPES: [(usize, usize, usize); 5] = [
    (1, 64, 48),
    (7, 5, 3),
    (33, 100, 70),
    (70, 576, 37),
    (128, 96, 288),
];

fn random(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// `x [m, k]` times `w` (`[k, n]` or `[n, k]`), with `w` mapped by `f`:
/// `(product, sum of |terms|)` per output, in f64.
fn oracle(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    layout: WeightLayout,
    f: impl Fn(f32) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                let wv = match layout {
                    WeightLayout::InOut => w[l * n + j],
                    WeightLayout::OutIn => w[j * k + l],
                };
                let term = x[i * k + l] as f64 * f(wv) as f64;
                out[i * n + j] += term;
                mag[i * n + j] += term.abs();
            }
        }
    }
    (out, mag)
}

fn product(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    layout: WeightLayout,
    precision: Precision,
) -> Vec<f32> {
    let device = Default::default();
    let xt = Tensor::<Flex, 2>::from_data(TensorData::new(x.to_vec(), [m, k]), &device);
    let dims = match layout {
        WeightLayout::InOut => [k, n],
        WeightLayout::OutIn => [n, k],
    };
    let wt = Tensor::<Flex, 2>::from_data(TensorData::new(w.to_vec(), dims), &device);
    let y = linear_matmul(xt, wt, layout, precision);
    assert_eq!(y.dims(), [m, n]);
    y.into_data().to_vec::<f32>().unwrap()
}

fn assert_within(what: &str, got: &[f32], want: &[f64], mag: &[f64], rel: f64) {
    for (i, ((g, w), s)) in got.iter().zip(want).zip(mag).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= rel * s + 1e-30,
            "{what}: output {i} is {g}, exact {w} (error {err:.3e}, allowed {:.3e})",
            rel * s
        );
    }
}

#[test]
fn products_match_the_float64_oracle() {
    let mut rng = SplitMix64::new(17);
    for shape in SHAPES {
        let (m, k, n) = shape;
        let x = random(&mut rng, m * k);
        let w = random(&mut rng, k * n);
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let what = format!("{shape:?} {layout:?}");
            let f32_out = product(&x, &w, shape, layout, Precision::F32);
            let (exact, mag) = oracle(&x, &w, shape, layout, |v| v);
            assert_within(
                &format!("{what} f32"),
                &f32_out,
                &exact,
                &mag,
                k as f64 * 2f64.powi(-24),
            );

            let bf16_out = product(&x, &w, shape, layout, Precision::Bf16);
            if bf16_on_cpu() {
                let (rounded, mag) = oracle(&x, &w, shape, layout, round_bf16);
                let rel = 2f64.powi(-15) + k as f64 * 2f64.powi(-24);
                assert_within(&format!("{what} bf16"), &bf16_out, &rounded, &mag, rel);
                // And it is not the f32 product: the weights were rounded.
                assert!(bf16_out != f32_out, "{what}: bf16 gave the f32 product");
            } else {
                assert_eq!(
                    bf16_out, f32_out,
                    "{what}: without a bf16 path, bf16 must run the f32 product"
                );
            }
        }
    }
}

#[test]
fn a_new_weight_is_never_served_another_weights_packing() {
    // The packed weights are cached per weight buffer: a product with a
    // weight made after the first was dropped (its memory may be reused)
    // must use the new values.
    let shape = (32, 64, 32);
    let mut rng = SplitMix64::new(5);
    let x = random(&mut rng, 32 * 64);
    for round in 0..4 {
        let w = random(&mut rng, 64 * 32);
        for _ in 0..2 {
            let got = product(&x, &w, shape, WeightLayout::InOut, Precision::Bf16);
            let (want, mag) = oracle(&x, &w, shape, WeightLayout::InOut, |v| {
                if bf16_on_cpu() { round_bf16(v) } else { v }
            });
            assert_within(
                &format!("round {round}"),
                &got,
                &want,
                &mag,
                2f64.powi(-15) + 64.0 * 2f64.powi(-24),
            );
        }
    }
}
