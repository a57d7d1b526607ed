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

mod cube_support;
mod kd_sparse_support;
mod kd_support;

use cube_support::{Cube, device, device_present};
use kd_sparse_support::{Sparse, compare, grad_scale, sparsify};
use kd_support::{LOSS_TOL, SCALES, TEMPERATURES, logits, weights};

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

fn tensor<const D: usize>(values: &[f32], dims: [usize; D]) -> Tensor<Cube, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &device())
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
/// tolerances.
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
                    // With every token kept the buckets are the tokens, and
                    // the sparse scale is the dense test's.
                    let scale = |n: usize| {
                        let (row, kept) = (n * vocab..(n + 1) * vocab, n * vocab..(n + 1) * vocab);
                        grad_scale(
                            &student[row],
                            &sparse.ids[kept.clone()],
                            &sparse.log_q[kept],
                            sparse.log_tail[n],
                            w[n],
                            spec,
                        )
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
