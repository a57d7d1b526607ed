//! The row ops that write the products' operands
//! (`kernels::product_inputs`) against their composition, for any backend:
//! RMSNorm (of a tensor, or of a residual add it sums) then one input's
//! products with several weights, SwiGLU then a product, attention then
//! `o_proj`. The fused ops promise the composition's values bit for bit
//! (the same f32 arithmetic, then the same rounding), in inference and
//! under autodiff (the products and every gradient), so that is what is
//! asserted; the composition itself is checked against float64 by
//! `matmul_support` and the row kernels' tests. Shared by the CPU test
//! (`kernels_matmul`), the CubeCL one (`kernels_matmul_cube`) and
//! `kernels_bf16_as_f16`, where the fused kernels write f16 and the check
//! that the bf16 request rounded at all can fail.
//!
//! Products asked for rounded results (`Results::Rounded`, gate and up)
//! are checked against the f32 results cast to the rounded dtype, bit for
//! bit (the product rounds its f32 sums as it stores them, as a cast
//! does), and SwiGLU reading such results against SwiGLU of their f32
//! values; under autodiff, every gradient too.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData, TensorMetadata, TensorPrimitive};
use distillery_ops::kernels::{
    Activations, MatmulOps, Precision, ProductInputOps, Results, WeightLayout, attention_product,
    causal_attention_in, linear_matmul, linear_matmul_as, linear_matmul_shared,
    linear_matmul_shared_as, rms_norm, rms_norm_products, sum_rms_norm_products, swiglu,
    swiglu_product,
};
use distillery_ops::rng::SplitMix64;

fn random(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

fn values<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(DType::F32)
    };
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// `t` in `dtype` (cast only where it is not).
fn in_dtype<B: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<B, D>,
    dtype: DType,
) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// Where products asked for rounded results write them: the 16-bit dtype
/// of `B`'s bf16 products on `device` when `writes_rounded` (the backend
/// writes them so: the CubeCL ones), the operands were rounded once
/// (`rounded_once`: a training step, or inference with
/// `Activations::Rounded`) and the products run in bf16; else f32.
fn rounded_results_dtype<B: MatmulOps>(
    device: &B::Device,
    writes_rounded: bool,
    precision: Precision,
    rounded_once: bool,
) -> DType {
    match B::reduced_dtype(device) {
        Some(reduced) if writes_rounded && rounded_once && precision == Precision::Bf16 => reduced,
        _ => DType::F32,
    }
}

/// Panics unless `got` is `want` bit for bit, naming the first difference.
fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let differ = got
        .iter()
        .zip(want)
        .filter(|(g, w)| g.to_bits() != w.to_bits())
        .count();
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: {differ} of {} entries differ, the first at {i}: {} against {}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Panics unless each of `got` is within `ulps` f32 ulps of the largest
/// magnitude in `want` of its counterpart, naming the worst entry.
fn assert_within_ulps(what: &str, got: &[f32], want: &[f32], ulps: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let largest = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    let bound = ulps * f32::EPSILON * largest;
    let worst = (0..got.len()).max_by(|&a, &b| {
        let (da, db) = ((got[a] - want[a]).abs(), (got[b] - want[b]).abs());
        da.total_cmp(&db)
    });
    if let Some(i) = worst.filter(|&i| (got[i] - want[i]).abs() > bound || got[i].is_nan()) {
        panic!(
            "{what}: entry {i} is {} against {}, past {ulps} ulps of the largest, {largest}",
            got[i], want[i]
        );
    }
}

fn weight_dims(k: usize, n: usize, layout: WeightLayout) -> [usize; 2] {
    match layout {
        WeightLayout::InOut => [k, n],
        WeightLayout::OutIn => [n, k],
    }
}

/// Whether `B`'s bf16 request rounds on `device`.
fn rounds<B: MatmulOps>(device: &B::Device) -> bool {
    B::product_precision(device, Precision::Bf16) == Precision::Bf16
}

/// Whose kernels a backend runs, as the checks below need to know.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(dead_code)] // Each test binary names the one it runs.
pub enum Kernels {
    /// The CPU's: f32 results whatever a layer asks for, and arithmetic
    /// exactly as written (Rust neither contracts nor reassociates).
    Cpu,
    /// CubeCL's: rounded results where asked, and compilers (Mesa's NIR,
    /// NVRTC) free to contract or reassociate a kernel's float arithmetic,
    /// so that a gradient a kernel sums can differ from the composition's
    /// separate add in its last bit.
    Cube,
}

/// Every check below, on `inner` (inference) and under autodiff (`AB`,
/// over `inner`'s backend, on the same `device`).
pub fn check_product_inputs<B, AB>(inner: &B::Device, device: &AB::Device, kernels: Kernels)
where
    B: ProductInputOps,
    AB: AutodiffBackend<InnerBackend = B> + ProductInputOps,
{
    let writes_rounded = kernels == Kernels::Cube;
    // (rows, hidden): widths read in vectors of 2 and of 4.
    for (rows, hidden) in [(37, 70), (9, 64)] {
        check_norm_products::<B, AB>(rows, hidden, inner, device, writes_rounded);
    }
    for (rows, hidden) in [(37, 70), (9, 64)] {
        check_sum_norm_products::<B, AB>(rows, hidden, inner, device, kernels);
    }
    // (rows, width): an odd width (vectors of one), and one of 4s.
    for (rows, width) in [(13, 5), (40, 96)] {
        check_swiglu_product::<B, AB>(rows, width, inner, device, writes_rounded);
    }
    // [batch, seq, heads, kv_heads, d]: grouped-query ratios 3 and 1, an
    // odd length.
    for shape in [[2, 7, 6, 2, 16], [1, 12, 3, 3, 8]] {
        check_attention_product::<B, AB>(shape, inner, device, kernels);
    }
}

fn check_norm_products<B, AB>(
    rows: usize,
    hidden: usize,
    inner: &B::Device,
    device: &AB::Device,
    writes_rounded: bool,
) where
    B: ProductInputOps,
    AB: AutodiffBackend<InnerBackend = B> + ProductInputOps,
{
    let eps = 1e-5;
    let widths = [hidden, 23, 7];
    let mut rng = SplitMix64::new(41 + hidden as u64);
    let x = random(&mut rng, rows * hidden, 3.0);
    let nw = random(&mut rng, hidden, 1.5);
    let ws: Vec<Vec<f32>> = widths
        .iter()
        .map(|&n| random(&mut rng, hidden * n, 1.0))
        .collect();
    let rs: Vec<Vec<f32>> = widths
        .iter()
        .map(|&n| random(&mut rng, rows * n, 1.0))
        .collect();
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let mut f32_products = Vec::new();
        for precision in [Precision::F32, Precision::Bf16] {
            let what =
                format!("RMSNorm [{rows}, {hidden}] then products, {layout:?} {precision:?}");

            // Inference.
            let xt = Tensor::<B, 2>::from_data(TensorData::new(x.clone(), [rows, hidden]), inner);
            let nwt = Tensor::<B, 1>::from_data(TensorData::new(nw.clone(), [hidden]), inner);
            let wts: [Tensor<B, 2>; 3] = std::array::from_fn(|i| {
                let dims = weight_dims(hidden, widths[i], layout);
                Tensor::from_data(TensorData::new(ws[i].clone(), dims), inner)
            });
            let normed = rms_norm(xt.clone(), nwt.clone(), eps);
            let mut two_parts = Vec::new();
            for activations in [Activations::TwoParts, Activations::Rounded] {
                let what = format!("{what}, activations {activations:?}");
                let fused = rms_norm_products(
                    xt.clone(),
                    nwt.clone(),
                    eps,
                    wts.clone(),
                    layout,
                    precision,
                    activations,
                    Results::F32,
                );
                let composed = linear_matmul_shared_as(
                    normed.clone(),
                    wts.clone(),
                    layout,
                    precision,
                    activations,
                    Results::F32,
                );
                for (i, (f, c)) in fused.into_iter().zip(composed).enumerate() {
                    assert_eq!(f.dims(), [rows, widths[i]], "{what}: product {i}'s shape");
                    assert_eq!(f.dtype(), DType::F32, "{what}: product {i}'s dtype");
                    let f = values(f);
                    let what_i = format!("{what}: product {i} against the composition");
                    assert_same(&what_i, &f, &values(c));
                    if precision == Precision::F32 {
                        if activations == Activations::TwoParts {
                            f32_products.push(f);
                        } else {
                            assert_same(&what_i, &f, &f32_products[i]);
                        }
                    } else if rounds::<B>(inner) {
                        assert_ne!(
                            f, f32_products[i],
                            "{what}: product {i} is the f32 one: nothing was rounded"
                        );
                        if activations == Activations::TwoParts {
                            two_parts.push(f);
                        } else {
                            assert_ne!(
                                f, two_parts[i],
                                "{what}: product {i} is the two parts' one"
                            );
                        }
                    }
                }

                // Rounded results: the f32 ones rounded, where rounded.
                let dtype = rounded_results_dtype::<B>(
                    inner,
                    writes_rounded,
                    precision,
                    activations == Activations::Rounded,
                );
                let want = linear_matmul_shared_as(
                    normed.clone(),
                    wts.clone(),
                    layout,
                    precision,
                    activations,
                    Results::F32,
                );
                let fused = rms_norm_products(
                    xt.clone(),
                    nwt.clone(),
                    eps,
                    wts.clone(),
                    layout,
                    precision,
                    activations,
                    Results::Rounded,
                );
                let of_tensor = linear_matmul_shared_as(
                    normed.clone(),
                    wts.clone(),
                    layout,
                    precision,
                    activations,
                    Results::Rounded,
                );
                for (i, ((f, t), w)) in fused.into_iter().zip(of_tensor).zip(want).enumerate() {
                    let w = values(in_dtype(w, dtype));
                    for (how, y) in [("fused", f), ("of the norm's tensor", t)] {
                        let what = format!("{what}: product {i} {how}, rounded results");
                        assert_eq!(y.dtype(), dtype, "{what}: dtype");
                        assert_same(&format!("{what} against f32's rounded"), &values(y), &w);
                    }
                }
            }
            // The operand a training step's products read.
            let trained = B::rms_norm_trained(
                xt.into_primitive().tensor(),
                nwt.into_primitive().tensor(),
                eps,
                precision,
            );
            let want = B::trained_operand(normed.into_primitive().tensor(), precision);
            assert_eq!(
                trained.dtype(),
                want.dtype(),
                "{what}: the trained operand's dtype"
            );
            assert_same(
                &format!("{what}: the trained operand against the norm rounded"),
                &values(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
                    trained,
                ))),
                &values(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(want))),
            );

            // Training: the products and every gradient of
            // `sum_i sum(y_i * r_i)`, fused against composed; rounded
            // results against the f32 ones cast (a node of their own).
            for results in [Results::F32, Results::Rounded] {
                let dtype = match results {
                    Results::F32 => DType::F32,
                    Results::Rounded => {
                        rounded_results_dtype::<AB>(device, writes_rounded, precision, true)
                    }
                };
                let what = format!("{what}, {results:?} results");
                let run = |fused: bool| {
                    let xt = Tensor::<AB, 2>::from_data(
                        TensorData::new(x.clone(), [rows, hidden]),
                        device,
                    )
                    .require_grad();
                    let nwt =
                        Tensor::<AB, 1>::from_data(TensorData::new(nw.clone(), [hidden]), device)
                            .require_grad();
                    let wts: [Tensor<AB, 2>; 3] = std::array::from_fn(|i| {
                        let dims = weight_dims(hidden, widths[i], layout);
                        Tensor::from_data(TensorData::new(ws[i].clone(), dims), device)
                            .require_grad()
                    });
                    let ys = if fused {
                        rms_norm_products(
                            xt.clone(),
                            nwt.clone(),
                            eps,
                            wts.clone(),
                            layout,
                            precision,
                            Activations::TwoParts,
                            results,
                        )
                    } else {
                        let normed = rms_norm(xt.clone(), nwt.clone(), eps);
                        linear_matmul_shared(normed, wts.clone(), layout, precision)
                            .map(|y| in_dtype(y, dtype))
                    };
                    let mut out: Vec<Vec<f32>> = Vec::new();
                    let mut loss = None;
                    for (i, y) in ys.into_iter().enumerate() {
                        let r = Tensor::<AB, 2>::from_data(
                            TensorData::new(rs[i].clone(), [rows, widths[i]]),
                            device,
                        );
                        assert_eq!(y.dtype(), dtype, "{what}: training product {i}'s dtype");
                        out.push(values(y.clone().inner()));
                        // In f32 before the product with r: Burn reads a
                        // binary op's right operand as the left's dtype.
                        let term = (in_dtype(y, DType::F32) * r).sum();
                        loss = Some(match loss {
                            Some(l) => l + term,
                            None => term,
                        });
                    }
                    let grads = loss.expect("three products").backward();
                    let grad = |g: Option<Tensor<B, 2>>, name: &str| {
                        let g = g.unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
                        assert_eq!(g.dtype(), DType::F32, "{what}: {name}'s gradient dtype");
                        values(g)
                    };
                    out.push(grad(xt.grad(&grads), "x"));
                    let dnw = nwt.grad(&grads).expect("the norm weight's gradient");
                    assert_eq!(
                        dnw.dtype(),
                        DType::F32,
                        "{what}: the norm weight's gradient dtype"
                    );
                    out.push(values(dnw));
                    for (i, w) in wts.iter().enumerate() {
                        out.push(grad(w.grad(&grads), &format!("weight {i}")));
                    }
                    out
                };
                let (fused, composed) = (run(true), run(false));
                let names = ["y0", "y1", "y2", "dx", "dnorm", "dw0", "dw1", "dw2"];
                for ((f, c), name) in fused.iter().zip(&composed).zip(names) {
                    assert_same(
                        &format!("{what}: training {name} against the composition's"),
                        f,
                        c,
                    );
                }
            }
        }
    }
}

/// RMSNorm of a residual add `x + delta` then two products: the sum and
/// the products against the add, then [`rms_norm_products`] of its result,
/// bit for bit, in inference (f32 and bf16, both activation modes) and
/// under autodiff (the sum, the products, and the gradients of `x`,
/// `delta` and the norm's weight, of a loss that reads the sum too, as the
/// next residual add does). The gradients of `x` and `delta`, which the
/// norm's backward sums with the next add's, are bit for bit on
/// [`Kernels::Cpu`], within two f32 ulps of their largest on
/// [`Kernels::Cube`].
fn check_sum_norm_products<B, AB>(
    rows: usize,
    hidden: usize,
    inner: &B::Device,
    device: &AB::Device,
    kernels: Kernels,
) where
    B: ProductInputOps,
    AB: AutodiffBackend<InnerBackend = B> + ProductInputOps,
{
    let writes_rounded = kernels == Kernels::Cube;
    let eps = 1e-5;
    let widths = [hidden, 11];
    let mut rng = SplitMix64::new(71 + hidden as u64);
    let x = random(&mut rng, rows * hidden, 3.0);
    let delta = random(&mut rng, rows * hidden, 2.0);
    let nw = random(&mut rng, hidden, 1.5);
    let ws: Vec<Vec<f32>> = widths
        .iter()
        .map(|&n| random(&mut rng, hidden * n, 1.0))
        .collect();
    let r = random(&mut rng, rows * hidden, 1.0);
    let layout = WeightLayout::InOut;
    for (precision, results) in [Precision::F32, Precision::Bf16]
        .into_iter()
        .flat_map(|p| [(p, Results::F32), (p, Results::Rounded)])
    {
        for activations in [Activations::TwoParts, Activations::Rounded] {
            let what = format!(
                "RMSNorm of a sum [{rows}, {hidden}] then products, {precision:?}, {activations:?}, {results:?} results"
            );
            let dtype = match results {
                Results::F32 => DType::F32,
                Results::Rounded => rounded_results_dtype::<B>(
                    inner,
                    writes_rounded,
                    precision,
                    activations == Activations::Rounded,
                ),
            };
            let t = |v: &[f32], d: [usize; 2]| {
                Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), d), inner)
            };
            let (xt, dt) = (t(&x, [rows, hidden]), t(&delta, [rows, hidden]));
            let nwt = Tensor::<B, 1>::from_data(TensorData::new(nw.clone(), [hidden]), inner);
            let wts: [Tensor<B, 2>; 2] =
                std::array::from_fn(|i| t(&ws[i], weight_dims(hidden, widths[i], layout)));
            let (sum, fused) = sum_rms_norm_products(
                xt.clone(),
                dt.clone(),
                nwt.clone(),
                eps,
                wts.clone(),
                layout,
                precision,
                activations,
                results,
            );
            let want_sum = xt + dt;
            let composed = rms_norm_products(
                want_sum.clone(),
                nwt,
                eps,
                wts,
                layout,
                precision,
                activations,
                results,
            );
            assert_eq!(sum.dtype(), DType::F32, "{what}: the sum's dtype");
            assert_same(
                &format!("{what}: the sum against the add"),
                &values(sum),
                &values(want_sum),
            );
            for (i, (f, c)) in fused.into_iter().zip(composed).enumerate() {
                assert_eq!(f.dtype(), dtype, "{what}: product {i}'s dtype");
                assert_same(
                    &format!("{what}: product {i} against the composition"),
                    &values(f),
                    &values(c),
                );
            }
        }

        // Training: the same, fused against composed, with every gradient,
        // in the model's shapes: the stream `[1, rows, hidden]`, its sum
        // read again by the next residual add (a deeper node, whose
        // gradient the fused norm's backward sums).
        let run = |fused: bool| {
            let t = |v: &[f32], d: [usize; 2]| {
                Tensor::<AB, 2>::from_data(TensorData::new(v.to_vec(), d), device).require_grad()
            };
            let stream = |v: &[f32]| {
                Tensor::<AB, 3>::from_data(TensorData::new(v.to_vec(), [1, rows, hidden]), device)
                    .require_grad()
            };
            let (xt, dt) = (stream(&x), stream(&delta));
            let nwt = Tensor::<AB, 1>::from_data(TensorData::new(nw.clone(), [hidden]), device)
                .require_grad();
            let wts: [Tensor<AB, 2>; 2] =
                std::array::from_fn(|i| t(&ws[i], weight_dims(hidden, widths[i], layout)));
            let (sum, ys) = if fused {
                sum_rms_norm_products(
                    xt.clone(),
                    dt.clone(),
                    nwt.clone(),
                    eps,
                    wts,
                    layout,
                    precision,
                    Activations::TwoParts,
                    results,
                )
            } else {
                let sum = xt.clone() + dt.clone();
                let ys = rms_norm_products(
                    sum.clone().reshape([rows, hidden]),
                    nwt.clone(),
                    eps,
                    wts,
                    layout,
                    precision,
                    Activations::TwoParts,
                    results,
                );
                (sum, ys)
            };
            let rt =
                Tensor::<AB, 3>::from_data(TensorData::new(r.clone(), [1, rows, hidden]), device);
            let mut out = vec![values(sum.clone().inner())];
            let [y0, y1] = ys;
            out.push(values(y0.clone().inner()));
            out.push(values(y1.clone().inner()));
            // `widths[0]` is `hidden`: y0 is the block's output.
            let next = sum + in_dtype(y0, DType::F32).reshape([1, rows, hidden]);
            let loss = (next * rt).sum() + in_dtype(y1, DType::F32).sum();
            let grads = loss.backward();
            out.push(values(xt.grad(&grads).expect("x's gradient")));
            out.push(values(dt.grad(&grads).expect("delta's gradient")));
            out.push(values(
                nwt.grad(&grads).expect("the norm weight's gradient"),
            ));
            out
        };
        let (fused, composed) = (run(true), run(false));
        let names = ["sum", "y0", "y1", "dx", "ddelta", "dnorm"];
        for ((f, c), name) in fused.iter().zip(&composed).zip(names) {
            let what = format!(
                "RMSNorm of a sum [{rows}, {hidden}], {precision:?}, {results:?} results: training {name} against the composition's"
            );
            let summed_in_kernel = name == "dx" || name == "ddelta";
            if summed_in_kernel && kernels == Kernels::Cube {
                assert_within_ulps(&what, f, c, 2.0);
            } else {
                assert_same(&what, f, c);
            }
        }
    }
}

fn check_swiglu_product<B, AB>(
    rows: usize,
    width: usize,
    inner: &B::Device,
    device: &AB::Device,
    writes_rounded: bool,
) where
    B: ProductInputOps,
    AB: AutodiffBackend<InnerBackend = B> + ProductInputOps,
{
    let n = 19;
    let mut rng = SplitMix64::new(59 + width as u64);
    let gate = random(&mut rng, rows * width, 4.0);
    let up = random(&mut rng, rows * width, 2.0);
    let w = random(&mut rng, width * n, 1.0);
    let r = random(&mut rng, rows * n, 1.0);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let dims = weight_dims(width, n, layout);
        let mut f32_product = Vec::new();
        for precision in [Precision::F32, Precision::Bf16] {
            let what = format!("SwiGLU [{rows}, {width}] then a product, {layout:?} {precision:?}");

            // Inference.
            let t = |v: &[f32], d: [usize; 2]| {
                Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), d), inner)
            };
            let (g, u, wt) = (t(&gate, [rows, width]), t(&up, [rows, width]), t(&w, dims));
            let act = swiglu2(g.clone(), u.clone());
            let mut two_parts = Vec::new();
            for activations in [Activations::TwoParts, Activations::Rounded] {
                let what = format!("{what}, activations {activations:?}");
                let fused = swiglu_product(
                    g.clone(),
                    u.clone(),
                    wt.clone(),
                    layout,
                    precision,
                    activations,
                );
                assert_eq!(fused.dims(), [rows, n], "{what}: shape");
                assert_eq!(fused.dtype(), DType::F32, "{what}: dtype");
                let composed =
                    linear_matmul_as(act.clone(), wt.clone(), layout, precision, activations);
                let fused = values(fused);
                assert_same(
                    &format!("{what}: against the composition"),
                    &fused,
                    &values(composed),
                );
                if precision == Precision::F32 {
                    if activations == Activations::TwoParts {
                        f32_product = fused;
                    } else {
                        assert_same(&format!("{what}: against f32's"), &fused, &f32_product);
                    }
                } else if rounds::<B>(inner) {
                    assert_ne!(
                        fused, f32_product,
                        "{what}: the f32 product: nothing was rounded"
                    );
                    if activations == Activations::TwoParts {
                        two_parts = fused;
                    } else {
                        assert_ne!(fused, two_parts, "{what}: the two parts' product");
                    }
                }
            }
            let trained = B::swiglu_trained(
                g.into_primitive().tensor(),
                u.into_primitive().tensor(),
                precision,
            );
            let want = B::trained_operand(act.into_primitive().tensor(), precision);
            assert_eq!(
                trained.dtype(),
                want.dtype(),
                "{what}: the trained operand's dtype"
            );
            assert_same(
                &format!("{what}: the trained operand against SwiGLU rounded"),
                &values(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(
                    trained,
                ))),
                &values(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(want))),
            );

            // Training: the fused product against the composition.
            let run = |fused: bool| {
                swiglu_training::<AB>(
                    &what,
                    [&gate, &up, &w, &r],
                    [rows, width, n],
                    dims,
                    device,
                    |g, u, wt| {
                        if fused {
                            swiglu_product(g, u, wt, layout, precision, Activations::TwoParts)
                        } else {
                            linear_matmul(swiglu2(g, u), wt, layout, precision)
                        }
                    },
                )
            };
            assert_training_same(&what, "the composition's", &run(true), &run(false));
        }
    }
    check_swiglu_of_rounded::<B, AB>(rows, width, inner, device, writes_rounded);
}

/// [`swiglu`] of `[rows, width]` tensors.
fn swiglu2<B: burn::tensor::backend::Backend + ProductInputOps>(
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [rows, width] = gate.dims();
    swiglu(gate.unsqueeze_dim::<3>(0), up.unsqueeze_dim::<3>(0)).reshape([rows, width])
}

/// SwiGLU reading gate and up as rounded results (`Results::Rounded`),
/// where the backend writes them: the op, and the product after it,
/// against SwiGLU of their values in f32, bit for bit; under autodiff,
/// the gradients of gate, up (through their rounding) and the weight too.
fn check_swiglu_of_rounded<B, AB>(
    rows: usize,
    width: usize,
    inner: &B::Device,
    device: &AB::Device,
    writes_rounded: bool,
) where
    B: ProductInputOps,
    AB: AutodiffBackend<InnerBackend = B> + ProductInputOps,
{
    let precision = Precision::Bf16;
    let reduced = rounded_results_dtype::<B>(inner, writes_rounded, precision, true);
    if reduced == DType::F32 {
        return;
    }
    let n = 19;
    let mut rng = SplitMix64::new(61 + width as u64);
    let gate = random(&mut rng, rows * width, 4.0);
    let up = random(&mut rng, rows * width, 2.0);
    let w = random(&mut rng, width * n, 1.0);
    let r = random(&mut rng, rows * n, 1.0);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let dims = weight_dims(width, n, layout);
        let what = format!("SwiGLU [{rows}, {width}] of {reduced:?} inputs, {layout:?}");
        let t = |v: &[f32], d: [usize; 2]| {
            Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), d), inner)
        };
        let (g, u, wt) = (
            t(&gate, [rows, width]).cast(reduced),
            t(&up, [rows, width]).cast(reduced),
            t(&w, dims),
        );
        let (g32, u32) = (g.clone().cast(DType::F32), u.clone().cast(DType::F32));
        let act = swiglu2(g.clone(), u.clone());
        assert_eq!(act.dtype(), reduced, "{what}: SwiGLU's dtype");
        let want_act = swiglu2(g32.clone(), u32.clone());
        assert_same(
            &format!("{what}: SwiGLU against its f32 inputs' rounded"),
            &values(act),
            &values(want_act.clone().cast(reduced)),
        );
        for activations in [Activations::TwoParts, Activations::Rounded] {
            let what = format!("{what}, activations {activations:?}");
            let fused = swiglu_product(
                g.clone(),
                u.clone(),
                wt.clone(),
                layout,
                precision,
                activations,
            );
            assert_eq!(fused.dtype(), DType::F32, "{what}: the product's dtype");
            let want =
                linear_matmul_as(want_act.clone(), wt.clone(), layout, precision, activations);
            assert_same(
                &format!("{what}: the product against f32 inputs'"),
                &values(fused),
                &values(want),
            );
        }

        // Training: gate and up rounded by a cast node (as a product with
        // rounded results gives them), against their f32 values.
        let run = |fused: bool| {
            swiglu_training::<AB>(
                &what,
                [&gate, &up, &w, &r],
                [rows, width, n],
                dims,
                device,
                |g, u, wt| {
                    let (gr, ur) = (g.cast(reduced), u.cast(reduced));
                    if fused {
                        swiglu_product(gr, ur, wt, layout, precision, Activations::TwoParts)
                    } else {
                        let act = swiglu2(gr.cast(DType::F32), ur.cast(DType::F32));
                        linear_matmul(act, wt, layout, precision)
                    }
                },
            )
        };
        assert_training_same(&what, "f32 inputs'", &run(true), &run(false));
    }
}

/// A training step through `product(gate, up, weight)`: the product `y`,
/// then the gradients of `sum(y * r)` for gate, up and the weight, each
/// checked to be f32 like its parameter.
fn swiglu_training<AB: AutodiffBackend>(
    what: &str,
    [gate, up, w, r]: [&[f32]; 4],
    [rows, width, n]: [usize; 3],
    dims: [usize; 2],
    device: &AB::Device,
    product: impl Fn(Tensor<AB, 2>, Tensor<AB, 2>, Tensor<AB, 2>) -> Tensor<AB, 2>,
) -> Vec<Vec<f32>> {
    let t = |v: &[f32], d: [usize; 2]| {
        Tensor::<AB, 2>::from_data(TensorData::new(v.to_vec(), d), device).require_grad()
    };
    let (g, u, wt) = (t(gate, [rows, width]), t(up, [rows, width]), t(w, dims));
    let y = product(g.clone(), u.clone(), wt.clone());
    assert_eq!(
        y.dtype(),
        DType::F32,
        "{what}: the training product's dtype"
    );
    let rt = Tensor::<AB, 2>::from_data(TensorData::new(r.to_vec(), [rows, n]), device);
    let grads = (y.clone() * rt).sum().backward();
    let mut out = vec![values(y.inner())];
    for (name, p) in [("gate", &g), ("up", &u), ("weight", &wt)] {
        let d = p
            .grad(&grads)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        assert_eq!(d.dtype(), DType::F32, "{what}: {name}'s gradient dtype");
        out.push(values(d));
    }
    out
}

/// [`swiglu_training`]'s outputs of the fused product against those of
/// its reference, bit for bit.
fn assert_training_same(what: &str, reference: &str, fused: &[Vec<f32>], want: &[Vec<f32>]) {
    for ((f, c), name) in fused.iter().zip(want).zip(["y", "dgate", "dup", "dw"]) {
        assert_same(
            &format!("{what}: training {name} against {reference}"),
            f,
            c,
        );
    }
}

/// Attention then `o_proj` ([`attention_product`]) against the
/// composition ([`causal_attention_in`], then the product of its rows).
///
/// In inference the two agree bit for bit in both precisions and
/// activation modes (the attention's output rounded by its own kernel, as
/// the product's cast would round it), and so does the output
/// `causal_attention_trained` writes, against the f32 output rounded as
/// `trained_operand` rounds it; on CubeCL under bf16 it is written in the
/// 16-bit dtype.
///
/// In a training step the result and the weight's gradient agree bit for
/// bit. So do q's, k's and v's on the CPU and in f32; where the output is
/// written rounded (CubeCL under bf16), the backward's row sums
/// `dO . O` read the rounded output the product read, so those three are
/// held within 2^-8 of their largest instead.
fn check_attention_product<B, AB>(
    [batch, seq, heads, kv_heads, d]: [usize; 5],
    inner: &B::Device,
    device: &AB::Device,
    kernels: Kernels,
) where
    B: ProductInputOps,
    AB: AutodiffBackend<InnerBackend = B> + ProductInputOps,
{
    let n = 11;
    let width = heads * d;
    let q_dims = [batch, seq, heads, d];
    let kv_dims = [batch, seq, kv_heads, d];
    let mut rng = SplitMix64::new(71 + width as u64);
    let q = random(&mut rng, batch * seq * width, 1.5);
    let k = random(&mut rng, batch * seq * kv_heads * d, 1.5);
    let v = random(&mut rng, batch * seq * kv_heads * d, 2.0);
    let w = random(&mut rng, width * n, 1.0);
    let r = random(&mut rng, batch * seq * n, 1.0);
    let scale = 1.0 / (d as f32).sqrt();
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let dims = weight_dims(width, n, layout);
        for precision in [Precision::F32, Precision::Bf16] {
            let what = format!(
                "attention {q_dims:?} on {kv_dims:?} then o_proj, {layout:?} {precision:?}"
            );

            // Inference.
            let t4 = |x: &[f32], d: [usize; 4]| {
                Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), d), inner)
            };
            let (qt, kt, vt) = (t4(&q, q_dims), t4(&k, kv_dims), t4(&v, kv_dims));
            let wt = Tensor::<B, 2>::from_data(TensorData::new(w.clone(), dims), inner);
            let context = causal_attention_in(qt.clone(), kt.clone(), vt.clone(), precision)
                .reshape([batch * seq, width]);
            for activations in [Activations::TwoParts, Activations::Rounded] {
                let what = format!("{what}, activations {activations:?}");
                let fused = attention_product(
                    qt.clone(),
                    kt.clone(),
                    vt.clone(),
                    precision,
                    wt.clone(),
                    layout,
                    precision,
                    activations,
                );
                assert_eq!(fused.dims(), [batch * seq, n], "{what}: shape");
                assert_eq!(fused.dtype(), DType::F32, "{what}: dtype");
                let composed =
                    linear_matmul_as(context.clone(), wt.clone(), layout, precision, activations);
                assert_same(
                    &format!("{what}: against the composition"),
                    &values(fused),
                    &values(composed),
                );
            }
            let (trained, lse) = B::causal_attention_trained(
                qt.clone().into_primitive().tensor(),
                kt.clone().into_primitive().tensor(),
                vt.clone().into_primitive().tensor(),
                scale,
                true,
                precision,
                precision,
            );
            assert!(lse.is_some(), "{what}: the log-sum-exp was asked for");
            let want = B::trained_operand(context.clone().into_primitive().tensor(), precision);
            assert_eq!(
                trained.dtype(),
                want.dtype(),
                "{what}: the trained output's dtype"
            );
            let rounded =
                kernels == Kernels::Cube && precision == Precision::Bf16 && rounds::<B>(inner);
            assert_eq!(
                trained.dtype() != DType::F32,
                rounded,
                "{what}: the trained output is {:?}",
                trained.dtype()
            );
            assert_same(
                &format!("{what}: the trained output against the f32 output rounded"),
                &values(
                    Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(trained))
                        .reshape([batch * seq, width]),
                ),
                &values(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(want))),
            );

            // Training: the fused op against the composition.
            let run = |fused: bool| {
                let t = |x: &[f32], d: [usize; 4]| {
                    Tensor::<AB, 4>::from_data(TensorData::new(x.to_vec(), d), device)
                        .require_grad()
                };
                let (qt, kt, vt) = (t(&q, q_dims), t(&k, kv_dims), t(&v, kv_dims));
                let wt = Tensor::<AB, 2>::from_data(TensorData::new(w.clone(), dims), device)
                    .require_grad();
                let y = if fused {
                    attention_product(
                        qt.clone(),
                        kt.clone(),
                        vt.clone(),
                        precision,
                        wt.clone(),
                        layout,
                        precision,
                        Activations::TwoParts,
                    )
                } else {
                    let context =
                        causal_attention_in(qt.clone(), kt.clone(), vt.clone(), precision);
                    linear_matmul(
                        context.reshape([batch * seq, width]),
                        wt.clone(),
                        layout,
                        precision,
                    )
                };
                assert_eq!(
                    y.dtype(),
                    DType::F32,
                    "{what}: the training product's dtype"
                );
                let rt = Tensor::<AB, 2>::from_data(
                    TensorData::new(r.clone(), [batch * seq, n]),
                    device,
                );
                let grads = (y.clone() * rt).sum().backward();
                let mut out = vec![values(y.inner())];
                let gradient = |name: &str, d: Option<Tensor<B, 4>>| {
                    let d = d.unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
                    assert_eq!(d.dtype(), DType::F32, "{what}: {name}'s gradient dtype");
                    values(d)
                };
                out.push(gradient("q", qt.grad(&grads)));
                out.push(gradient("k", kt.grad(&grads)));
                out.push(gradient("v", vt.grad(&grads)));
                let dw = wt
                    .grad(&grads)
                    .unwrap_or_else(|| panic!("{what}: no gradient for the weight"));
                out.push(values(dw));
                out
            };
            let (fused, composed) = (run(true), run(false));
            for ((f, c), name) in fused
                .iter()
                .zip(&composed)
                .zip(["y", "dq", "dk", "dv", "dw"])
            {
                let what = format!("{what}: training {name} against the composition's");
                if rounded && matches!(name, "dq" | "dk" | "dv") {
                    // 2^-8 of the largest: 2^15 f32 ulps.
                    assert_within_ulps(&what, f, c, 32768.0);
                } else {
                    assert_same(&what, f, c);
                }
            }
        }
    }
}
