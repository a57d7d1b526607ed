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
//!
//! Training: under autodiff, the product and both gradients, every operand
//! rounded once to bf16 where the CPU has AMX (mixed-precision training's
//! arithmetic), within f32 summation error of the float64 product of the
//! rounded operands; f32 everywhere else.

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

/// `a [m, k]` times `b [k, n]`, both given by element functions (after any
/// rounding): `(product, sum of |terms|)` per output, in f64.
fn exact(
    (m, k, n): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut mag = vec![0.0; m * n];
    for i in 0..m {
        for l in 0..k {
            let ail = a(i, l) as f64;
            for j in 0..n {
                let term = ail * b(l, j) as f64;
                out[i * n + j] += term;
                mag[i * n + j] += term.abs();
            }
        }
    }
    (out, mag)
}

/// A training step's product under autodiff, in `precision`: the output,
/// and the gradients of `sum(y * r)` (so `dy = r`) for `x` and the weight.
fn trained_product(
    x: &[f32],
    w: &[f32],
    r: &[f32],
    (m, k, n): (usize, usize, usize),
    layout: WeightLayout,
    precision: Precision,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    type B = burn::backend::Autodiff<Flex>;
    let device = Default::default();
    let xt = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [m, k]), &device).require_grad();
    let dims = match layout {
        WeightLayout::InOut => [k, n],
        WeightLayout::OutIn => [n, k],
    };
    let wt = Tensor::<B, 2>::from_data(TensorData::new(w.to_vec(), dims), &device).require_grad();
    let rt = Tensor::<B, 2>::from_data(TensorData::new(r.to_vec(), [m, n]), &device);
    let y = linear_matmul(xt.clone(), wt.clone(), layout, precision);
    let grads = (y.clone() * rt).sum().backward();
    let vec = |t: Tensor<Flex, 2>| t.into_data().to_vec::<f32>().unwrap();
    (
        vec(y.inner()),
        vec(xt.grad(&grads).expect("x's gradient")),
        vec(wt.grad(&grads).expect("the weight's gradient")),
    )
}

#[test]
fn training_products_and_gradients_match_the_float64_oracle() {
    // The SHAPES, plus reductions over several chunks of 512 (`k` in the
    // forward and `dx`, the rows in `dw`).
    let shapes = SHAPES
        .iter()
        .copied()
        .chain([(40, 1100, 50), (600, 70, 33)]);
    let mut rng = SplitMix64::new(23);
    for shape in shapes {
        let (m, k, n) = shape;
        let x = random(&mut rng, m * k);
        let w = random(&mut rng, k * n);
        let r = random(&mut rng, m * n);
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            // `w (l, j)` as the product's `[k, n]` operand.
            let wk = |l: usize, j: usize| match layout {
                WeightLayout::InOut => w[l * n + j],
                WeightLayout::OutIn => w[j * k + l],
            };
            for precision in [Precision::F32, Precision::Bf16] {
                let what = format!("{shape:?} {layout:?} {precision:?}");
                let rounded = precision == Precision::Bf16 && bf16_on_cpu();
                let q = |v: f32| if rounded { round_bf16(v) } else { v };
                let (y, dx, dw) = trained_product(&x, &w, &r, shape, layout, precision);

                let (want, mag) = exact(shape, |i, l| q(x[i * k + l]), |l, j| q(wk(l, j)));
                let rel = |terms: usize| 2.0 * terms as f64 * 2f64.powi(-24);
                assert_within(&format!("{what}: y"), &y, &want, &mag, rel(k));
                // dx = dy w^T: [m, k], summed over n.
                let (want, mag) = exact((m, n, k), |i, j| q(r[i * n + j]), |j, l| q(wk(l, j)));
                assert_within(&format!("{what}: dx"), &dx, &want, &mag, rel(n));
                // dw = x^T dy ([k, n]), summed over m; stored in the weight's
                // layout.
                let (want, mag) = exact((k, m, n), |l, i| q(x[i * k + l]), |i, j| q(r[i * n + j]));
                let (want, mag) = match layout {
                    WeightLayout::InOut => (want, mag),
                    WeightLayout::OutIn => (transpose(&want, k, n), transpose(&mag, k, n)),
                };
                assert_within(&format!("{what}: dw"), &dw, &want, &mag, rel(m));
            }
        }
    }
}

/// `[rows, cols]` -> `[cols, rows]`.
fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols)
        .flat_map(|j| (0..rows).map(move |i| v[i * cols + j]))
        .collect()
}
