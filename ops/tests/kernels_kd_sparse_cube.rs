#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The CubeCL KD loss against a sparse (top-K) teacher on `Cuda` in a cuda
//! build (a GPU machine), else on `Wgpu` (Mesa's lavapipe on a CPU-only
//! machine), against the float64 oracle: every loss, temperature and
//! scaling, vocab sizes that are and are not multiples of the cube and the
//! vector width, 1 to all of the vocabulary kept, logits up to 1e4 (near
//! one-hot softmaxes whose small probabilities underflow), rows of weight 0
//! and a fully masked batch; with every token kept, against the dense
//! kernel.

use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::kd::{KdLoss, KdOps, KdSpec};
use distillery_ops::kernels::reference;
use distillery_ops::rng::SplitMix64;

mod kd_support;

use kd_support::{GRAD_TOL, LOSS_TOL, SCALES, TEMPERATURES, logits, weights};

/// `(vocab, rows)`: rows enough to fill several cubes for the small
/// vocabulary, few for the large ones (the oracle runs in f64 on the CPU).
const SHAPES: [(usize, usize); 3] = [(7, 37), (1000, 9), (49_152, 3)];
/// Kept tokens per row (those above the vocabulary are skipped; `usize::MAX`
/// stands for all of it).
const KEPT: [usize; 4] = [1, 16, 64, usize::MAX];

const LOSSES: [KdLoss; 4] = [
    KdLoss::ForwardKl,
    KdLoss::ReverseKl,
    KdLoss::Jsd { beta: 0.5 },
    KdLoss::Jsd { beta: 0.1 },
];

/// The CubeCL backend under test.
#[cfg(feature = "cuda")]
type Cube = burn::backend::Cuda;
#[cfg(not(feature = "cuda"))]
type Cube = burn::backend::Wgpu;

/// Whether the backend's device is there; each test starts by asking. In a
/// cuda build these tests are the GPU check: without a CUDA device they
/// skip, and fail under `CI=true` (as scripts/gpu/bench.sh runs them)
/// rather than pass vacuously.
#[cfg(feature = "cuda")]
fn device_present() -> bool {
    let found = distillery_ops::device::resolve(distillery_engine::Device::Cuda);
    testkit::require_device("a CUDA device", found).is_some()
}
/// Wgpu needs a Vulkan driver, which the test command (scripts/test.sh)
/// checks for before it runs these tests.
#[cfg(not(feature = "cuda"))]
fn device_present() -> bool {
    true
}

#[cfg(feature = "cuda")]
fn device() -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice::new(0)
}
#[cfg(not(feature = "cuda"))]
fn device() -> burn::backend::wgpu::WgpuDevice {
    burn::backend::wgpu::WgpuDevice::default()
}

fn tensor<const D: usize>(values: &[f32], dims: [usize; D]) -> Tensor<Cube, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &device())
}

/// A sparse teacher for `rows` rows: ids `[rows, k]`, their `ln q`
/// `[rows, k]` and the tails' `ln q` `[rows]`.
struct Sparse {
    k: usize,
    ids: Vec<u32>,
    log_q: Vec<f32>,
    log_tail: Vec<f32>,
}

/// The `k` largest of each row of `teacher` logits, at temperature `tau`.
fn sparsify(teacher: &[f32], vocab: usize, k: usize, tau: f32) -> Sparse {
    let mut out = Sparse {
        k,
        ids: Vec::new(),
        log_q: Vec::new(),
        log_tail: Vec::new(),
    };
    for row in teacher.chunks_exact(vocab) {
        let (ids, log_q, tail) = reference::sparse_teacher_row(row, k, tau as f64);
        out.ids.extend(ids);
        out.log_q.extend(log_q);
        out.log_tail.push(tail);
    }
    out
}

/// The sparse op on the CubeCL backend, its student given as a tensor:
/// `(loss, grad)` read back.
fn fused_sparse_on(
    student: Tensor<Cube, 2>,
    teacher: &Sparse,
    weights: &[f32],
    spec: KdSpec,
) -> (f32, Vec<f32>) {
    let rows = weights.len();
    let ids: Vec<i32> = teacher.ids.iter().map(|&id| id as i32).collect();
    let ids = Tensor::<Cube, 2, Int>::from_data(TensorData::new(ids, [rows, teacher.k]), &device());
    let (loss, grad) = <Cube as KdOps>::kd_loss_sparse_fused(
        student.into_primitive().tensor(),
        ids.into_primitive(),
        tensor(&teacher.log_q, [rows, teacher.k])
            .into_primitive()
            .tensor(),
        tensor(&teacher.log_tail, [rows]).into_primitive().tensor(),
        tensor(weights, [rows]).into_primitive().tensor(),
        spec,
    );
    read_back(loss, grad)
}

fn fused_sparse(
    student: &[f32],
    teacher: &Sparse,
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
) -> (f32, Vec<f32>) {
    let student = tensor(student, [weights.len(), vocab]);
    fused_sparse_on(student, teacher, weights, spec)
}

/// The dense op on the CubeCL backend.
fn fused_dense(
    student: &[f32],
    teacher: &[f32],
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
) -> (f32, Vec<f32>) {
    let rows = weights.len();
    let (loss, grad) = <Cube as KdOps>::kd_loss_fused(
        tensor(student, [rows, vocab]).into_primitive().tensor(),
        tensor(teacher, [rows, vocab]).into_primitive().tensor(),
        tensor(weights, [rows]).into_primitive().tensor(),
        spec,
    );
    read_back(loss, grad)
}

fn read_back(
    loss: burn::tensor::ops::FloatTensor<Cube>,
    grad: burn::tensor::ops::FloatTensor<Cube>,
) -> (f32, Vec<f32>) {
    let loss = Tensor::<Cube, 1>::from_primitive(TensorPrimitive::Float(loss))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(loss.len(), 1);
    let grad = Tensor::<Cube, 2>::from_primitive(TensorPrimitive::Float(grad))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    (loss[0], grad)
}

/// Log-softmax of `logits / tau` in f64.
fn log_softmax(logits: &[f32], tau: f64) -> Vec<f64> {
    let z: Vec<f64> = logits.iter().map(|&x| x as f64 / tau).collect();
    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// `ln (e^a + e^b)` in f64, `-inf` when both are.
fn log_add_exp(a: f64, b: f64) -> f64 {
    let hi = a.max(b);
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + ((a - hi).exp() + (b - hi).exp()).ln()
}

/// What a gradient entry's error is measured against, as the dense test
/// does, per entry of a row of weight `w`: the unit `w scale / tau`, the
/// entry itself where larger, and for reverse KL the terms it is the
/// difference of, `unit p_v (|ln P_b - ln Q_b| + L)` with `b` the entry's
/// bucket (reaching ~1e4 units at logits of 1e4, where f32 resolves them
/// only to ~1e-7 of that).
fn grad_scale(
    s: &[f32],
    ids: &[u32],
    log_q: &[f32],
    log_tail: f32,
    w: f32,
    spec: KdSpec,
) -> Vec<f64> {
    let unit = w as f64 * spec.scale() as f64 / spec.temperature as f64;
    if spec.loss != KdLoss::ReverseKl {
        return vec![unit; s.len()];
    }
    let lp = log_softmax(s, spec.temperature as f64);
    // Each token's `ln Q_b - ln P_b` (its bucket's), the tail's by default.
    let mut kept = vec![false; s.len()];
    for &id in ids {
        kept[id as usize] = true;
    }
    let tail_lp = (0..s.len())
        .filter(|&v| !kept[v])
        .map(|v| lp[v])
        .fold(f64::NEG_INFINITY, log_add_exp);
    let mut gap = vec![(log_tail as f64 - tail_lp).abs(); s.len()];
    for (&id, &lq) in ids.iter().zip(log_q) {
        gap[id as usize] = (lq as f64 - lp[id as usize]).abs();
    }
    let loss = reference::kd_sparse_row(s, ids, log_q, log_tail, spec).0;
    (0..s.len())
        .map(|v| {
            let terms = lp[v].exp() * (gap[v] + loss.abs());
            unit * if terms.is_finite() {
                terms.max(1.0)
            } else {
                1.0
            }
        })
        .collect()
}

/// The errors of `got = (loss, grad)` against `want`: `(relative loss
/// error, largest gradient error as in [`GRAD_TOL`])`, the latter measured against `scale(row)`. Panics on a
/// non-finite output, on a nonzero gradient in a masked row, and past the
/// tolerances.
fn compare(
    got: (f32, &[f32]),
    want: (f64, &[f64]),
    weights: &[f32],
    vocab: usize,
    scale: impl Fn(usize) -> Vec<f64>,
    what: &str,
) -> (f64, f64) {
    let ((loss, grad), (want_loss, want_grad)) = (got, want);
    let rows = weights.len();
    assert!(loss.is_finite(), "{what}: loss {loss}");
    assert_eq!(grad.len(), rows * vocab, "{what}: gradient size");
    let loss_err = if want_loss == 0.0 {
        assert_eq!(loss, 0.0, "{what}: loss of a masked batch");
        0.0
    } else {
        (loss as f64 - want_loss).abs() / want_loss.abs()
    };
    assert!(
        loss_err <= LOSS_TOL,
        "{what}: loss {loss} vs {want_loss} (relative error {loss_err:.2e})"
    );
    let mut grad_err = 0.0f64;
    for (n, &w) in weights.iter().enumerate() {
        let row = n * vocab..(n + 1) * vocab;
        let (got, want) = (&grad[row.clone()], &want_grad[row]);
        if w == 0.0 {
            assert!(
                got.iter().all(|&g| g == 0.0),
                "{what}: nonzero gradient in masked row {n}"
            );
            continue;
        }
        for (v, ((&g, &e), &unit)) in got.iter().zip(want).zip(&scale(n)).enumerate() {
            assert!(g.is_finite(), "{what}: gradient [{n}, {v}] = {g}");
            let err = (g as f64 - e).abs() / unit.max(e.abs());
            assert!(
                err <= GRAD_TOL,
                "{what}: gradient [{n}, {v}] {g} vs {e} (error {err:.2e})"
            );
            grad_err = grad_err.max(err);
        }
    }
    (loss_err, grad_err)
}

/// One call against the oracle.
fn check(
    student: &[f32],
    teacher: &Sparse,
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
    what: &str,
) -> (f64, f64) {
    let (loss, grad) = fused_sparse(student, teacher, weights, vocab, spec);
    let (want_loss, want_grad) = reference::kd_sparse_loss(
        student,
        &teacher.ids,
        &teacher.log_q,
        &teacher.log_tail,
        weights,
        vocab,
        spec,
    );
    let k = teacher.k;
    let scale = |n: usize| {
        grad_scale(
            &student[n * vocab..(n + 1) * vocab],
            &teacher.ids[n * k..(n + 1) * k],
            &teacher.log_q[n * k..(n + 1) * k],
            teacher.log_tail[n],
            weights[n],
            spec,
        )
    };
    compare(
        (loss, &grad),
        (want_loss, &want_grad),
        weights,
        vocab,
        scale,
        what,
    )
}

/// The kept counts for a vocabulary: those of [`KEPT`] that fit, and all.
fn kept_counts(vocab: usize) -> Vec<usize> {
    let mut out: Vec<usize> = KEPT.iter().map(|&k| k.min(vocab)).collect();
    out.dedup();
    out
}

/// All shapes, scales, temperatures, scalings and kept counts for one loss.
fn sweep(loss: KdLoss, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for (vocab, rows) in SHAPES {
        let w = weights(rows);
        for scale in SCALES {
            let student = logits(&mut rng, rows * vocab, scale);
            let teacher = logits(&mut rng, rows * vocab, scale);
            for k in kept_counts(vocab) {
                let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
                for temperature in TEMPERATURES {
                    let sparse = sparsify(&teacher, vocab, k, temperature);
                    for tau_squared in [false, true] {
                        let spec = KdSpec {
                            loss,
                            temperature,
                            tau_squared,
                        };
                        let what = format!(
                            "{loss:?} V={vocab} K={k} rows={rows} scale={scale} \
                             tau={temperature} tau^2={tau_squared}"
                        );
                        let (l, g) = check(&student, &sparse, &w, vocab, spec, &what);
                        worst_loss = worst_loss.max(l);
                        worst_grad = worst_grad.max(g);
                    }
                }
                eprintln!(
                    "{loss:?} V={vocab} K={k} scale={scale}: loss relative error \
                     {worst_loss:.1e}, gradient error {worst_grad:.1e}"
                );
            }
        }
    }
}

#[test]
fn forward_kl_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::ForwardKl, 11);
}

#[test]
fn reverse_kl_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::ReverseKl, 12);
}

#[test]
fn symmetric_jsd_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::Jsd { beta: 0.5 }, 13);
}

#[test]
fn skewed_jsd_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::Jsd { beta: 0.1 }, 14);
}

/// With every token kept there is no tail, and the loss and gradient are
/// full KD's: the dense kernel's on the teacher's logits, to the same
/// tolerances (its gradient scale as the dense test measures it).
#[test]
fn every_token_kept_matches_the_dense_kernel() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(15);
    for (vocab, rows) in SHAPES {
        let w = weights(rows);
        for scale in SCALES {
            let student = logits(&mut rng, rows * vocab, scale);
            let teacher = logits(&mut rng, rows * vocab, scale);
            for loss in LOSSES {
                let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
                for temperature in TEMPERATURES {
                    let sparse = sparsify(&teacher, vocab, vocab, temperature);
                    let spec = KdSpec {
                        loss,
                        temperature,
                        tau_squared: true,
                    };
                    let what =
                        format!("all kept {loss:?} V={vocab} scale={scale} tau={temperature}");
                    let (loss, grad) = fused_sparse(&student, &sparse, &w, vocab, spec);
                    let (want_loss, want_grad) = fused_dense(&student, &teacher, &w, vocab, spec);
                    let want_grad: Vec<f64> = want_grad.iter().map(|&g| g as f64).collect();
                    let scale = |n: usize| {
                        let row = n * vocab..(n + 1) * vocab;
                        dense_grad_scale(&student[row.clone()], &teacher[row], w[n], spec)
                    };
                    let (l, g) = compare(
                        (loss, &grad),
                        (want_loss as f64, &want_grad),
                        &w,
                        vocab,
                        scale,
                        &what,
                    );
                    worst_loss = worst_loss.max(l);
                    worst_grad = worst_grad.max(g);
                }
                eprintln!(
                    "all kept {loss:?} V={vocab} scale={scale}: loss relative difference \
                     {worst_loss:.1e}, gradient difference {worst_grad:.1e}"
                );
            }
        }
    }
}

/// The dense test's gradient scale: the unit `w scale / tau`, and for
/// reverse KL `unit p (|ln p - ln q| + L)` where larger.
fn dense_grad_scale(student: &[f32], teacher: &[f32], w: f32, spec: KdSpec) -> Vec<f64> {
    let unit = w as f64 * spec.scale() as f64 / spec.temperature as f64;
    if spec.loss != KdLoss::ReverseKl {
        return vec![unit; student.len()];
    }
    let tau = spec.temperature as f64;
    let (lp, lq) = (log_softmax(student, tau), log_softmax(teacher, tau));
    let loss = reference::kd_row(student, teacher, spec).0;
    (0..student.len())
        .map(|v| unit * (1.0f64).max(lp[v].exp() * ((lp[v] - lq[v]).abs() + loss.abs())))
        .collect()
}

#[test]
fn a_fully_masked_batch_gives_zeros() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(16);
    for (vocab, rows, k) in [(7, 5, 3), (1000, 3, 64)] {
        let student = logits(&mut rng, rows * vocab, 1e4);
        let teacher = logits(&mut rng, rows * vocab, 1e4);
        let sparse = sparsify(&teacher, vocab, k, 1.0);
        let w = vec![0.0; rows];
        for loss in LOSSES {
            let spec = KdSpec {
                loss,
                temperature: 1.0,
                tau_squared: true,
            };
            let (l, grad) = fused_sparse(&student, &sparse, &w, vocab, spec);
            assert_eq!(l, 0.0, "{loss:?} V={vocab}");
            assert_eq!(grad.len(), rows * vocab);
            assert!(grad.iter().all(|&g| g == 0.0), "{loss:?} V={vocab}");
        }
    }
}

/// A transposed student view is read as its contiguous equivalent, and an
/// f16 student as it is (the oracle sees the rounded logits).
#[test]
fn non_contiguous_and_f16_students() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(17);
    let (vocab, rows, k) = (1000, 5, 16);
    let student = logits(&mut rng, rows * vocab, 30.0);
    let teacher = logits(&mut rng, rows * vocab, 30.0);
    let w = weights(rows);
    let spec = KdSpec {
        loss: KdLoss::Jsd { beta: 0.5 },
        temperature: 2.0,
        tau_squared: true,
    };
    let sparse = sparsify(&teacher, vocab, k, spec.temperature);
    let oracle = |student: &[f32]| {
        reference::kd_sparse_loss(
            student,
            &sparse.ids,
            &sparse.log_q,
            &sparse.log_tail,
            &w,
            vocab,
            spec,
        )
    };
    let worst = |grad: &[f32], want: &[f64]| {
        grad.iter()
            .zip(want)
            .fold(0.0f64, |m, (&g, &e)| m.max((g as f64 - e).abs()))
    };

    let (want_loss, want_grad) = oracle(&student);
    let mut transposed = vec![0.0; student.len()];
    for n in 0..rows {
        for v in 0..vocab {
            transposed[v * rows + n] = student[n * vocab + v];
        }
    }
    let view = tensor(&transposed, [vocab, rows]).swap_dims(0, 1);
    let (loss, grad) = fused_sparse_on(view, &sparse, &w, spec);
    assert!((loss as f64 - want_loss).abs() <= LOSS_TOL * want_loss.abs());
    let err = worst(&grad, &want_grad);
    assert!(err <= 1e-6, "transposed: gradient error {err:e}");

    let student16 = tensor(&student, [rows, vocab]).cast(FloatDType::F16);
    let rounded = student16
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let (want_loss, want_grad) = oracle(&rounded);
    let (loss, grad) = fused_sparse_on(student16, &sparse, &w, spec);
    assert!((loss as f64 - want_loss).abs() <= LOSS_TOL * want_loss.abs());
    let err = worst(&grad, &want_grad);
    assert!(err <= 1e-6, "f16 student: gradient error {err:e}");
}

#[test]
fn an_empty_batch_gives_zero() {
    if !device_present() {
        return;
    }
    let spec = KdSpec {
        loss: KdLoss::ForwardKl,
        temperature: 1.0,
        tau_squared: false,
    };
    let sparse = Sparse {
        k: 4,
        ids: Vec::new(),
        log_q: Vec::new(),
        log_tail: Vec::new(),
    };
    let (loss, grad) = fused_sparse(&[], &sparse, &[], 11, spec);
    assert_eq!(loss, 0.0);
    assert!(grad.is_empty());
}
