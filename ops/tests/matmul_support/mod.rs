//! The model's matrix products (`kernels::linear_matmul`) against a float64
//! oracle on random inputs, both weight layouts, and shapes that leave
//! partial tiles on every edge, for any backend: the checks the CPU test
//! (`kernels_matmul`) and the CubeCL test (`kernels_matmul_cube`) share,
//! and `kernels_bf16_as_f16`, where f16 stands in for bf16 (the rounding
//! below is then f16's: `reduced_rounding`).
//!
//! f32: within f32 rounding of the exact product (`k * 2^-24` of the sum of
//! the terms' magnitudes). bf16, where the backend runs it
//! (`MatmulOps::product_precision`): against the exact product with the
//! weights rounded to bf16 (the documented arithmetic), within `2^-15` of
//! the terms' magnitudes (the activations' two-part bf16 keeps about 16
//! bits); where it does not, the bf16 request must give exactly the f32
//! result.
//!
//! Training: under autodiff, the product and both gradients, every operand
//! rounded once to bf16 where the backend runs bf16 (mixed-precision
//! training's arithmetic), within f32 summation error of the float64
//! product of the rounded operands; f32 everywhere else.
//!
//! One input's products with several weights (`linear_matmul_shared`):
//! exactly the products one at a time in inference, and under autodiff the
//! sum of their gradients for the input.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use distillery_ops::kernels::{
    MatmulOps, Precision, WeightLayout, linear_matmul, linear_matmul_shared,
};
use distillery_ops::rng::SplitMix64;

/// `(m, k, n)`: one row, odd sizes, sizes past one 32 x 32 block.
pub const SHAPES: [(usize, usize, usize); 5] = [
    (1, 64, 48),
    (7, 5, 3),
    (33, 100, 70),
    (70, 576, 37),
    (128, 96, 288),
];

pub fn random(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Whether `B` runs bf16 products on `device`.
pub fn runs_bf16<B: MatmulOps>(device: &B::Device) -> bool {
    B::product_precision(device, Precision::Bf16) == Precision::Bf16
}

/// A value rounded as `B`'s bf16 products round their operands on
/// `device`: to bf16 (or f16, the CubeCL backends' test stand-in, see
/// `kernels_bf16_as_f16`), or not at all where they run in f32.
pub fn reduced_rounding<B: MatmulOps>(device: &B::Device) -> fn(f32) -> f32 {
    match B::reduced_dtype(device) {
        Some(DType::BF16) => round_bf16,
        Some(DType::F16) => |x| half::f16::from_f32(x).to_f32(),
        Some(other) => panic!("no rounding to {other:?}"),
        None => |x| x,
    }
}

/// `x [m, k]` times `w` (`[k, n]` or `[n, k]`), with `w` mapped by `f`:
/// `(product, sum of |terms|)` per output, in f64.
pub fn oracle(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    layout: WeightLayout,
    f: impl Fn(f32) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let wk = |l: usize, j: usize| match layout {
        WeightLayout::InOut => w[l * n + j],
        WeightLayout::OutIn => w[j * k + l],
    };
    exact((m, k, n), |i, l| x[i * k + l], |l, j| f(wk(l, j)))
}

/// `a [m, k]` times `b [k, n]`, both given by element functions (after any
/// rounding): `(product, sum of |terms|)` per output, in f64.
pub fn exact(
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

fn weight_dims((_, k, n): (usize, usize, usize), layout: WeightLayout) -> [usize; 2] {
    match layout {
        WeightLayout::InOut => [k, n],
        WeightLayout::OutIn => [n, k],
    }
}

/// The product on `B` in `precision`.
pub fn product<B: MatmulOps>(
    x: &[f32],
    w: &[f32],
    shape: (usize, usize, usize),
    layout: WeightLayout,
    precision: Precision,
    device: &B::Device,
) -> Vec<f32> {
    let (m, k, n) = shape;
    let xt = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [m, k]), device);
    let wt = Tensor::<B, 2>::from_data(
        TensorData::new(w.to_vec(), weight_dims(shape, layout)),
        device,
    );
    let y = linear_matmul(xt, wt, layout, precision);
    assert_eq!(y.dims(), [m, n]);
    y.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

pub fn assert_within(what: &str, got: &[f32], want: &[f64], mag: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(mag).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= rel * s + 1e-30,
            "{what}: output {i} is {g}, exact {w} (error {err:.3e}, allowed {:.3e})",
            rel * s
        );
    }
}

/// Inference products on `B`, f32 and bf16, against the oracle.
pub fn check_products<B: MatmulOps>(device: &B::Device) {
    let bf16 = runs_bf16::<B>(device);
    let mut rng = SplitMix64::new(17);
    for shape in SHAPES {
        let (m, k, n) = shape;
        let x = random(&mut rng, m * k);
        let w = random(&mut rng, k * n);
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            let what = format!("{shape:?} {layout:?}");
            let f32_out = product::<B>(&x, &w, shape, layout, Precision::F32, device);
            let (exact, mag) = oracle(&x, &w, shape, layout, |v| v);
            assert_within(
                &format!("{what} f32"),
                &f32_out,
                &exact,
                &mag,
                k as f64 * 2f64.powi(-24),
            );

            let bf16_out = product::<B>(&x, &w, shape, layout, Precision::Bf16, device);
            if bf16 {
                let (rounded, mag) = oracle(&x, &w, shape, layout, reduced_rounding::<B>(device));
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

/// A training step's product under autodiff, in `precision`: the output,
/// and the gradients of `sum(y * r)` (so `dy = r`) for `x` and the weight.
fn trained_product<B: AutodiffBackend + MatmulOps>(
    x: &[f32],
    w: &[f32],
    r: &[f32],
    shape: (usize, usize, usize),
    layout: WeightLayout,
    precision: Precision,
    device: &B::Device,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (m, k, n) = shape;
    let xt = Tensor::<B, 2>::from_data(TensorData::new(x.to_vec(), [m, k]), device).require_grad();
    let wt = Tensor::<B, 2>::from_data(
        TensorData::new(w.to_vec(), weight_dims(shape, layout)),
        device,
    )
    .require_grad();
    let rt = Tensor::<B, 2>::from_data(TensorData::new(r.to_vec(), [m, n]), device);
    let y = linear_matmul(xt.clone(), wt.clone(), layout, precision);
    let grads = (y.clone() * rt).sum().backward();
    // Every result in f32, whatever the product rounded: a 16-bit
    // gradient would reach the optimizer in the wrong dtype.
    fn vec<I: Backend>(t: Tensor<I, 2>) -> Vec<f32> {
        assert_eq!(
            t.dtype(),
            DType::F32,
            "a training product's result or gradient"
        );
        t.into_data().to_vec::<f32>().unwrap()
    }
    (
        vec(y.inner()),
        vec(xt.grad(&grads).expect("x's gradient")),
        vec(wt.grad(&grads).expect("the weight's gradient")),
    )
}

/// Training products and both gradients on `B`, f32 and bf16, against the
/// oracle of the (once-rounded, for bf16 where `B` rounds) operands.
pub fn check_training<B: AutodiffBackend + MatmulOps>(device: &B::Device) {
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
                let round = reduced_rounding::<B>(device);
                let q = |v: f32| {
                    if precision == Precision::Bf16 {
                        round(v)
                    } else {
                        v
                    }
                };
                let (y, dx, dw) =
                    trained_product::<B>(&x, &w, &r, shape, layout, precision, device);

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

/// One input's products with three weights of different widths
/// (`linear_matmul_shared`, as a layer's q, k and v): in inference exactly
/// `linear_matmul` of each; under autodiff (`AB`, over `B`) the products
/// and the gradients of `sum_i sum(y_i * r_i)` (the input's the sum of the
/// three) against the float64 oracle of the operands rounded as
/// [`check_training`]'s. f32 and bf16 (its fallback where `B` has none).
/// `inner` and `device` are the same device, as each backend names it.
pub fn check_shared<B: MatmulOps, AB: AutodiffBackend<InnerBackend = B> + MatmulOps>(
    inner: &B::Device,
    device: &AB::Device,
) {
    let (m, k) = (37, 70);
    let widths = [70, 23, 23];
    let mut rng = SplitMix64::new(31);
    let x = random(&mut rng, m * k);
    let ws: Vec<Vec<f32>> = widths.iter().map(|&n| random(&mut rng, k * n)).collect();
    let rs: Vec<Vec<f32>> = widths.iter().map(|&n| random(&mut rng, m * n)).collect();
    let rel = |terms: usize| 2.0 * terms as f64 * 2f64.powi(-24);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let dims = |n: usize| weight_dims((m, k, n), layout);
        for precision in [Precision::F32, Precision::Bf16] {
            let what = format!("{layout:?} {precision:?}");
            // Inference: each product exactly as on its own.
            let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [m, k]), inner);
            let wts: [Tensor<B, 2>; 3] = std::array::from_fn(|i| {
                Tensor::from_data(TensorData::new(ws[i].clone(), dims(widths[i])), inner)
            });
            let shared = linear_matmul_shared(xt.clone(), wts.clone(), layout, precision);
            for (i, (y, w)) in shared.into_iter().zip(wts).enumerate() {
                let alone = linear_matmul(xt.clone(), w, layout, precision);
                assert_eq!(y.dims(), [m, widths[i]], "{what}: product {i}'s shape");
                assert_eq!(
                    y.into_data().to_vec::<f32>().unwrap(),
                    alone.into_data().to_vec::<f32>().unwrap(),
                    "{what}: shared product {i} differs from the product alone"
                );
            }

            // Training: the products and every gradient.
            let round = reduced_rounding::<B>(inner);
            let q = |v: f32| {
                if precision == Precision::Bf16 {
                    round(v)
                } else {
                    v
                }
            };
            let xt = Tensor::<AB, 2>::from_data(TensorData::new(x.clone(), [m, k]), device)
                .require_grad();
            let wts: [Tensor<AB, 2>; 3] = std::array::from_fn(|i| {
                Tensor::from_data(TensorData::new(ws[i].clone(), dims(widths[i])), device)
                    .require_grad()
            });
            let ys = linear_matmul_shared(xt.clone(), wts.clone(), layout, precision);
            let mut loss = None;
            for (i, y) in ys.iter().enumerate() {
                let r = Tensor::<AB, 2>::from_data(
                    TensorData::new(rs[i].clone(), [m, widths[i]]),
                    device,
                );
                let term = (y.clone() * r).sum();
                loss = Some(match loss {
                    Some(l) => l + term,
                    None => term,
                });
            }
            let grads = loss.expect("three products").backward();
            let values = |t: Tensor<B, 2>| {
                assert_eq!(
                    t.dtype(),
                    DType::F32,
                    "{what}: a result or gradient's dtype"
                );
                t.into_data().to_vec::<f32>().unwrap()
            };
            let mut dx_want = vec![0.0f64; m * k];
            let mut dx_mag = vec![0.0f64; m * k];
            for i in 0..3 {
                let (n, w, r) = (widths[i], &ws[i], &rs[i]);
                let wk = |l: usize, j: usize| match layout {
                    WeightLayout::InOut => w[l * n + j],
                    WeightLayout::OutIn => w[j * k + l],
                };
                let (want, mag) = exact((m, k, n), |a, l| q(x[a * k + l]), |l, j| q(wk(l, j)));
                let y = values(ys[i].clone().inner());
                assert_within(&format!("{what}: y{i}"), &y, &want, &mag, rel(k));
                let (want, mag) = exact((m, n, k), |a, j| q(r[a * n + j]), |j, l| q(wk(l, j)));
                for e in 0..m * k {
                    dx_want[e] += want[e];
                    dx_mag[e] += mag[e];
                }
                let (want, mag) = exact((k, m, n), |l, a| q(x[a * k + l]), |a, j| q(r[a * n + j]));
                let (want, mag) = match layout {
                    WeightLayout::InOut => (want, mag),
                    WeightLayout::OutIn => (transpose(&want, k, n), transpose(&mag, k, n)),
                };
                let dw = values(wts[i].grad(&grads).expect("a weight's gradient"));
                assert_within(&format!("{what}: dw{i}"), &dw, &want, &mag, rel(m));
            }
            let dx = values(xt.grad(&grads).expect("x's gradient"));
            let terms: usize = widths.iter().sum();
            assert_within(
                &format!("{what}: dx"),
                &dx,
                &dx_want,
                &dx_mag,
                rel(terms + 3),
            );
        }
    }
}
