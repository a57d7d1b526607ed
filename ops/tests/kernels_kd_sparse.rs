//! The KD loss against a sparse (top-K) teacher on the CPU, against the
//! float64 oracle (`kernels::reference::kd_sparse_loss`, written from the
//! bucket definition): every loss, temperature and scaling, vocabularies of
//! 7, 1000 and 49 152, K from 1 to the whole vocabulary, logits of scale 1,
//! 30 and 1e4 (where the student's tail mass underflows in f32), masked
//! rows, f16/bf16 students, and `kd_loss_sparse` under `Autodiff<Flex>`.
//! With K = V the loss and gradient are the dense op's.
//!
//! Tolerances are the dense test's: the loss within a relative 1e-5 of the
//! oracle; each gradient entry within 1e-6 of its scale
//! (`kd_sparse_support::grad_scale`).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::reference;
use distillery_ops::kernels::{KdLoss, KdOps, KdSpec, SparseTeacher, kd_loss_sparse};
use distillery_ops::rng::SplitMix64;

mod kd_sparse_support;
mod kd_support;

use kd_sparse_support::{Sparse, compare, grad_scale, sparsify};
use kd_support::{SCALES, TEMPERATURES, logits, weights};

const LOSSES: [KdLoss; 4] = [
    KdLoss::ForwardKl,
    KdLoss::ReverseKl,
    KdLoss::Jsd { beta: 0.5 },
    KdLoss::Jsd { beta: 0.1 },
];

fn float<const D: usize>(values: &[f32], dims: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Default::default())
}

fn int_ids(ids: &[u32], rows: usize, k: usize) -> Tensor<Flex, 2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(ids, [rows, k]), &Default::default())
}

/// The Flex op on primitives: `(loss, grad)` read back.
fn fused_sparse(
    student: Tensor<Flex, 2>,
    teacher: &Sparse,
    w: &[f32],
    spec: KdSpec,
) -> (f32, Vec<f32>) {
    let (rows, k) = (w.len(), teacher.k);
    let (loss, grad) = <Flex as KdOps>::kd_loss_sparse_fused(
        student.into_primitive().tensor(),
        int_ids(&teacher.ids, rows, k).into_primitive(),
        float(&teacher.log_q, [rows, k]).into_primitive().tensor(),
        float(&teacher.log_tail, [rows]).into_primitive().tensor(),
        float(w, [rows]).into_primitive().tensor(),
        spec,
    );
    let loss = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(loss))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let grad = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(grad))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    (loss[0], grad)
}

/// The Flex op's `(loss, grad)` against the oracle's, each gradient entry
/// held to [`grad_scale`].
#[allow(clippy::too_many_arguments)]
fn check(
    got: (f32, &[f32]),
    teacher: &Sparse,
    student: &[f32],
    w: &[f32],
    vocab: usize,
    spec: KdSpec,
    what: &str,
) -> (f64, f64) {
    let want = reference::kd_sparse_loss(
        student,
        &teacher.ids,
        &teacher.log_q,
        &teacher.log_tail,
        w,
        vocab,
        spec,
    );
    let k = teacher.k;
    let scale = |n: usize| {
        let (row, kept) = (n * vocab..(n + 1) * vocab, n * k..(n + 1) * k);
        grad_scale(
            &student[row],
            &teacher.ids[kept.clone()],
            &teacher.log_q[kept],
            teacher.log_tail[n],
            w[n],
            spec,
        )
    };
    compare(got, (want.0, &want.1), w, vocab, scale, what)
}

/// Every loss, temperature, scaling and logit scale at one vocabulary and
/// K, the student passed shared (a separate gradient) and as the only
/// reference (the gradient overwrites it): both must agree bit for bit.
fn sweep(vocab: usize, rows: usize, k: usize, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let w = weights(rows);
    let mut worst = (0.0f64, 0.0f64);
    for scale in SCALES {
        let student = logits(&mut rng, rows * vocab, scale);
        let teacher = logits(&mut rng, rows * vocab, scale);
        for tau in TEMPERATURES {
            let t = sparsify(&teacher, vocab, k, tau);
            for loss in LOSSES {
                for tau_squared in [false, true] {
                    let spec = KdSpec {
                        loss,
                        temperature: tau,
                        tau_squared,
                    };
                    let what = format!(
                        "V {vocab}, K {k}, scale {scale}, {loss:?}, tau {tau}, tau^2 {tau_squared}"
                    );
                    let shared = float(&student, [rows, vocab]);
                    let keep = shared.clone();
                    let got = fused_sparse(shared, &t, &w, spec);
                    drop(keep);
                    let owned = fused_sparse(float(&student, [rows, vocab]), &t, &w, spec);
                    assert_eq!(got.0.to_bits(), owned.0.to_bits(), "{what}: in place");
                    assert!(
                        got.1
                            .iter()
                            .zip(&owned.1)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}: the in-place gradient differs"
                    );
                    let e = check((got.0, &got.1), &t, &student, &w, vocab, spec, &what);
                    worst = (worst.0.max(e.0), worst.1.max(e.1));
                }
            }
        }
    }
    println!(
        "V {vocab}, K {k}: largest loss error {:.2e}, gradient error {:.2e} of the tolerance scale",
        worst.0, worst.1
    );
}

#[test]
fn flex_matches_the_oracle_on_a_small_vocabulary() {
    for k in [1, 3, 6, 7] {
        sweep(7, 13, k, 11 + k as u64);
    }
}

#[test]
fn flex_matches_the_oracle_on_1000_tokens() {
    for k in [1, 16, 64, 1000] {
        sweep(1000, 4, k, 21 + k as u64);
    }
}

#[test]
fn flex_matches_the_oracle_on_49152_tokens() {
    for k in [16, 256] {
        sweep(49_152, 2, k, 31 + k as u64);
    }
}

/// A student that ranks like the teacher at logits of 1e4: every tail
/// probability underflows in f32 from the row's largest logit, so the
/// tail's mass is measured from its own largest one.
#[test]
fn an_underflowing_student_tail_is_measured_in_log_space() {
    let (vocab, rows, k) = (1000, 3, 16);
    let mut rng = SplitMix64::new(5);
    let teacher = logits(&mut rng, rows * vocab, 1e4);
    let student: Vec<f32> = teacher.iter().map(|&t| t * 0.9 + 1.0).collect();
    let w = weights(rows);
    for loss in LOSSES {
        for tau in TEMPERATURES {
            let spec = KdSpec {
                loss,
                temperature: tau,
                tau_squared: false,
            };
            let t = sparsify(&teacher, vocab, k, tau);
            let got = fused_sparse(float(&student, [rows, vocab]), &t, &w, spec);
            let what = format!("{loss:?} {tau}");
            check((got.0, &got.1), &t, &student, &w, vocab, spec, &what);
        }
    }
}

/// With every token kept, the sparse loss is the dense one on the same
/// teacher, in loss and gradient.
#[test]
fn keeping_the_whole_vocabulary_is_full_kd() {
    let (vocab, rows) = (1000, 5);
    let mut rng = SplitMix64::new(7);
    let w = weights(rows);
    for scale in [1.0, 30.0] {
        let student = logits(&mut rng, rows * vocab, scale);
        let teacher = logits(&mut rng, rows * vocab, scale);
        for loss in LOSSES {
            for tau in TEMPERATURES {
                let spec = KdSpec {
                    loss,
                    temperature: tau,
                    tau_squared: true,
                };
                let t = sparsify(&teacher, vocab, vocab, tau);
                assert!(
                    t.log_tail.iter().all(|&x| x == f32::NEG_INFINITY),
                    "no tail at K = V"
                );
                let got = fused_sparse(float(&student, [rows, vocab]), &t, &w, spec);
                let (dense_loss, dense_grad) = <Flex as KdOps>::kd_loss_fused(
                    float(&student, [rows, vocab]).into_primitive().tensor(),
                    float(&teacher, [rows, vocab]).into_primitive().tensor(),
                    float(&w, [rows]).into_primitive().tensor(),
                    spec,
                );
                let dense_loss =
                    Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(dense_loss))
                        .into_data()
                        .into_vec::<f32>()
                        .unwrap()[0];
                let dense_grad: Vec<f64> =
                    Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(dense_grad))
                        .into_data()
                        .into_vec::<f32>()
                        .unwrap()
                        .into_iter()
                        .map(f64::from)
                        .collect();
                // With every token kept the buckets are the tokens, and the
                // sparse scale is the dense test's.
                let entry_scale = |n: usize| {
                    let row = n * vocab..(n + 1) * vocab;
                    grad_scale(
                        &student[row.clone()],
                        &t.ids[row.clone()],
                        &t.log_q[row],
                        t.log_tail[n],
                        w[n],
                        spec,
                    )
                };
                let what = format!("K = V against dense, scale {scale}, {loss:?}, tau {tau}");
                compare(
                    (got.0, &got.1),
                    (dense_loss as f64, &dense_grad),
                    &w,
                    vocab,
                    entry_scale,
                    &what,
                );
            }
        }
    }
}

#[test]
fn half_precision_students_match_the_oracle() {
    let (vocab, rows, k) = (1000, 4, 64);
    let mut rng = SplitMix64::new(9);
    let w = weights(rows);
    let student = logits(&mut rng, rows * vocab, 30.0);
    let teacher = logits(&mut rng, rows * vocab, 30.0);
    let t = sparsify(&teacher, vocab, k, 1.0);
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        let half = float(&student, [rows, vocab]).cast(dtype);
        // The oracle sees the values the kernel reads.
        let rounded: Vec<f32> = half
            .clone()
            .cast(FloatDType::F32)
            .into_data()
            .into_vec()
            .unwrap();
        for loss in LOSSES {
            let spec = KdSpec {
                loss,
                temperature: 1.0,
                tau_squared: false,
            };
            let got = fused_sparse(half.clone(), &t, &w, spec);
            let what = format!("{dtype:?} {loss:?}");
            check((got.0, &got.1), &t, &rounded, &w, vocab, spec, &what);
        }
    }
}

/// `kd_loss_sparse` on `Autodiff<Flex>`: the gradient reaching the student
/// is the oracle's, times the upstream factor.
#[test]
fn autodiff_backward_matches_the_oracle() {
    type Ad = Autodiff<Flex>;
    let (vocab, rows, k) = (1000, 4, 16);
    let mut rng = SplitMix64::new(13);
    let w = weights(rows);
    let student = logits(&mut rng, rows * vocab, 30.0);
    let teacher = logits(&mut rng, rows * vocab, 30.0);
    let spec = KdSpec {
        loss: KdLoss::ForwardKl,
        temperature: 2.0,
        tau_squared: true,
    };
    let t = sparsify(&teacher, vocab, k, spec.temperature);
    let device = Default::default();
    let x = Tensor::<Ad, 2>::from_data(TensorData::new(student.clone(), [rows, vocab]), &device)
        .require_grad();
    let ids: Vec<i64> = t.ids.iter().map(|&v| v as i64).collect();
    let teacher = SparseTeacher {
        ids: Tensor::from_data(TensorData::new(ids, [rows, k]), &device),
        log_probs: Tensor::from_data(TensorData::new(t.log_q.clone(), [rows, k]), &device),
        log_tail: Tensor::from_data(TensorData::new(t.log_tail.clone(), [rows]), &device),
    };
    let weights = Tensor::from_data(TensorData::new(w.clone(), [rows]), &device);
    let loss = kd_loss_sparse(x.clone(), teacher, weights, spec);
    let grads = loss.clone().mul_scalar(3.0).backward();
    let grad: Vec<f64> = x
        .grad(&grads)
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(|g| g as f64 / 3.0)
        .collect();
    let loss: f32 = loss.into_scalar();
    let grad32: Vec<f32> = grad.iter().map(|&g| g as f32).collect();
    check((loss, &grad32), &t, &student, &w, vocab, spec, "autodiff");
}

#[test]
#[should_panic(expected = "not ascending")]
fn unsorted_ids_are_refused() {
    let student = float(&[0.0; 8], [2, 4]);
    let unsorted = Sparse {
        k: 2,
        ids: vec![2, 1, 0, 3],
        log_q: vec![-1.0; 4],
        log_tail: vec![-1.0; 2],
    };
    fused_sparse(
        student,
        &unsorted,
        &[0.5, 0.5],
        KdSpec {
            loss: KdLoss::ForwardKl,
            temperature: 1.0,
            tau_squared: false,
        },
    );
}
