#![cfg(any(feature = "wgpu", feature = "cuda"))]
//! The CubeCL KD loss on `Cuda` in a cuda build (a GPU machine), else on
//! `Wgpu` (Mesa's lavapipe on a CPU-only machine),
//! against the float64 oracle: every loss, temperature and scaling, vocab
//! sizes that are and are not multiples of the cube and the vector width,
//! logits up to 1e4 (near one-hot softmaxes whose small probabilities
//! underflow), rows of weight 0 and a fully masked batch.

use burn::tensor::{FloatDType, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::kd::{KdLoss, KdOps, KdSpec};
use distillery_ops::kernels::reference;
use distillery_ops::rng::SplitMix64;

mod cube_support;
mod kd_support;

use cube_support::{Cube, device, device_present};
use kd_support::{GRAD_TOL, LOSS_TOL, SCALES, TEMPERATURES, logits, weights};

/// `(vocab, rows)`: rows enough to fill several cubes for small
/// vocabularies, few for the large ones (the oracle runs in f64 on the CPU).
const SHAPES: [(usize, usize); 4] = [(7, 37), (1000, 9), (49_152, 3), (50_257, 3)];

fn tensor<const D: usize>(values: &[f32], dims: [usize; D]) -> Tensor<Cube, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &device())
}

/// The op on the CubeCL backend: `(loss, grad)` read back.
fn fused(
    student: Tensor<Cube, 2>,
    teacher: Tensor<Cube, 2>,
    weights: Tensor<Cube, 1>,
    spec: KdSpec,
) -> (f32, Vec<f32>) {
    let (loss, grad) = <Cube as KdOps>::kd_loss_fused(
        student.into_primitive().tensor(),
        teacher.into_primitive().tensor(),
        weights.into_primitive().tensor(),
        spec,
    );
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

/// What a gradient entry's error is measured against, per entry of a row
/// of weight `w`: the unit `w scale / tau` (forward KL and JSD entries
/// stay within about one), the entry itself where larger, and for reverse KL
/// the terms it is the difference of, `unit p (|ln p - ln q| + L)`. Those
/// reach ~1e4 units at logits of 1e4, where f32 resolves them (and so the
/// difference `p (ln p - ln q - L)`, however small) only to ~1e-7 of that.
fn grad_scale(student: &[f32], teacher: &[f32], w: f32, spec: KdSpec) -> Vec<f64> {
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

/// Errors of one call against the oracle: `(loss error relative to
/// max(|loss|, loss_floor), largest gradient error as in [`GRAD_TOL`])`.
/// Panics on a non-finite output, on a nonzero gradient in a masked row, and
/// past the tolerances.
fn check(
    student: &[f32],
    teacher: &[f32],
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
    loss_floor: f64,
    what: &str,
) -> (f64, f64) {
    let rows = weights.len();
    let (loss, grad) = fused(
        tensor(student, [rows, vocab]),
        tensor(teacher, [rows, vocab]),
        tensor(weights, [rows]),
        spec,
    );
    let (want_loss, want_grad) = reference::kd_loss(student, teacher, weights, vocab, spec);
    assert!(loss.is_finite(), "{what}: loss {loss}");
    assert_eq!(grad.len(), rows * vocab, "{what}: gradient size");
    let loss_err = if want_loss == 0.0 {
        assert_eq!(loss, 0.0, "{what}: loss of a masked batch");
        0.0
    } else {
        (loss as f64 - want_loss).abs() / want_loss.abs().max(loss_floor)
    };
    assert!(
        loss_err <= LOSS_TOL,
        "{what}: loss {loss} vs {want_loss} (relative error {loss_err:.2e})"
    );
    let mut grad_err = 0.0f64;
    for (n, &w) in weights.iter().enumerate() {
        let row = n * vocab..(n + 1) * vocab;
        let (got, want) = (&grad[row.clone()], &want_grad[row.clone()]);
        if w == 0.0 {
            assert!(
                got.iter().all(|&g| g == 0.0),
                "{what}: nonzero gradient in masked row {n}"
            );
            continue;
        }
        let scale = grad_scale(&student[row.clone()], &teacher[row], w, spec);
        for (v, ((&g, &e), &unit)) in got.iter().zip(want).zip(&scale).enumerate() {
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

/// All shapes, scales, temperatures and both scalings for one loss.
fn sweep(loss: KdLoss, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for (vocab, rows) in SHAPES {
        let w = weights(rows);
        for scale in SCALES {
            let student = logits(&mut rng, rows * vocab, scale);
            let teacher = logits(&mut rng, rows * vocab, scale);
            let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
            for temperature in TEMPERATURES {
                for tau_squared in [false, true] {
                    let spec = KdSpec {
                        loss,
                        temperature,
                        tau_squared,
                    };
                    let what = format!(
                        "{loss:?} V={vocab} rows={rows} scale={scale} tau={temperature} \
                         tau^2={tau_squared}"
                    );
                    let (l, g) = check(&student, &teacher, &w, vocab, spec, 0.0, &what);
                    worst_loss = worst_loss.max(l);
                    worst_grad = worst_grad.max(g);
                }
            }
            eprintln!(
                "{loss:?} V={vocab} scale={scale}: loss relative error {worst_loss:.1e}, \
                 gradient error {worst_grad:.1e}"
            );
        }
    }
}

#[test]
fn forward_kl_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::ForwardKl, 1);
}

#[test]
fn reverse_kl_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::ReverseKl, 2);
}

#[test]
fn symmetric_jsd_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::Jsd { beta: 0.5 }, 3);
}

#[test]
fn skewed_jsd_matches_the_oracle() {
    if !device_present() {
        return;
    }
    sweep(KdLoss::Jsd { beta: 0.1 }, 4);
}

/// A teacher close to the student: losses of 1e-3 to 1e-1 nats, formed
/// from O(1) terms that cancel, so f32 resolves them to about 1e-7 nats
/// rather than relatively; the loss is checked to 1e-6 nats per unit of
/// weight and scale.
#[test]
fn close_distributions_match_the_oracle() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(5);
    let (vocab, rows) = (50_257, 2);
    let student = logits(&mut rng, rows * vocab, 10.0);
    let teacher: Vec<f32> = student
        .iter()
        .zip(logits(&mut rng, rows * vocab, 0.3))
        .map(|(s, d)| s + d)
        .collect();
    let w = [0.5, 0.5];
    for loss in [
        KdLoss::ForwardKl,
        KdLoss::ReverseKl,
        KdLoss::Jsd { beta: 0.5 },
        KdLoss::Jsd { beta: 0.1 },
    ] {
        for temperature in TEMPERATURES {
            let spec = KdSpec {
                loss,
                temperature,
                tau_squared: true,
            };
            let what = format!("close {loss:?} tau={temperature}");
            let floor = 0.1 * spec.scale() as f64;
            let (l, g) = check(&student, &teacher, &w, vocab, spec, floor, &what);
            eprintln!("{what}: loss relative error {l:.1e}, gradient error {g:.1e}");
        }
    }
}

#[test]
fn a_fully_masked_batch_gives_zeros() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(6);
    for (vocab, rows) in [(7, 5), (1000, 3)] {
        let student = logits(&mut rng, rows * vocab, 1e4);
        let teacher = logits(&mut rng, rows * vocab, 1e4);
        let w = vec![0.0; rows];
        for loss in [
            KdLoss::ForwardKl,
            KdLoss::ReverseKl,
            KdLoss::Jsd { beta: 0.5 },
        ] {
            let spec = KdSpec {
                loss,
                temperature: 1.0,
                tau_squared: true,
            };
            let (l, grad) = fused(
                tensor(&student, [rows, vocab]),
                tensor(&teacher, [rows, vocab]),
                tensor(&w, [rows]),
                spec,
            );
            assert_eq!(l, 0.0, "{loss:?} V={vocab}");
            assert!(grad.iter().all(|&g| g == 0.0), "{loss:?} V={vocab}");
        }
    }
}

/// Identical logits: zero loss and gradient up to rounding, for every loss.
#[test]
fn identical_distributions_give_zero() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(7);
    let (vocab, rows) = (1000, 4);
    let x = logits(&mut rng, rows * vocab, 30.0);
    let w = vec![0.25; rows];
    for loss in [
        KdLoss::ForwardKl,
        KdLoss::ReverseKl,
        KdLoss::Jsd { beta: 0.5 },
    ] {
        let spec = KdSpec {
            loss,
            temperature: 1.0,
            tau_squared: false,
        };
        let (l, grad) = fused(
            tensor(&x, [rows, vocab]),
            tensor(&x, [rows, vocab]),
            tensor(&w, [rows]),
            spec,
        );
        assert!(l.abs() <= 1e-6, "{loss:?}: loss {l}");
        let worst = grad.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(worst <= 1e-7, "{loss:?}: gradient {worst}");
    }
}

/// Transposed views and a student in another dtype than the teacher are
/// read as their contiguous f32 equivalents.
#[test]
fn non_contiguous_and_mixed_dtype_inputs() {
    if !device_present() {
        return;
    }
    let mut rng = SplitMix64::new(8);
    let (vocab, rows) = (1000, 5);
    let student = logits(&mut rng, rows * vocab, 30.0);
    let teacher = logits(&mut rng, rows * vocab, 30.0);
    let w = weights(rows);
    let spec = KdSpec {
        loss: KdLoss::ReverseKl,
        temperature: 2.0,
        tau_squared: true,
    };
    let (want_loss, want_grad) = reference::kd_loss(&student, &teacher, &w, vocab, spec);

    // Stored as [V, N], viewed as [N, V].
    let transpose = |x: &[f32]| -> Vec<f32> {
        let mut t = vec![0.0; x.len()];
        for n in 0..rows {
            for v in 0..vocab {
                t[v * rows + n] = x[n * vocab + v];
            }
        }
        t
    };
    let (loss, grad) = fused(
        tensor(&transpose(&student), [vocab, rows]).swap_dims(0, 1),
        tensor(&transpose(&teacher), [vocab, rows]).swap_dims(0, 1),
        tensor(&w, [rows]),
        spec,
    );
    assert!((loss as f64 - want_loss).abs() <= LOSS_TOL * want_loss.abs());
    let worst = grad
        .iter()
        .zip(&want_grad)
        .fold(0.0f64, |m, (&g, &e)| m.max((g as f64 - e).abs()));
    assert!(worst <= 1e-6, "transposed: gradient error {worst:e}");

    // An f16 student (where the device has f16) against an f32 teacher: the
    // oracle sees the rounded student.
    let student16 = tensor(&student, [rows, vocab]).cast(FloatDType::F16);
    let rounded = student16
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let (want_loss, want_grad) = reference::kd_loss(&rounded, &teacher, &w, vocab, spec);
    let (loss, grad) = fused(
        student16,
        tensor(&teacher, [rows, vocab]),
        tensor(&w, [rows]),
        spec,
    );
    assert!((loss as f64 - want_loss).abs() <= LOSS_TOL * want_loss.abs());
    let worst = grad
        .iter()
        .zip(&want_grad)
        .fold(0.0f64, |m, (&g, &e)| m.max((g as f64 - e).abs()));
    assert!(worst <= 1e-6, "f16 student: gradient error {worst:e}");

    // Both in f16: read as they are, widened in the kernel.
    let teacher16 = tensor(&teacher, [rows, vocab]).cast(FloatDType::F16);
    let rounded_t = teacher16
        .clone()
        .cast(FloatDType::F32)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let (want_loss, want_grad) = reference::kd_loss(&rounded, &rounded_t, &w, vocab, spec);
    let student16 = tensor(&student, [rows, vocab]).cast(FloatDType::F16);
    let (loss, grad) = fused(student16, teacher16, tensor(&w, [rows]), spec);
    assert!((loss as f64 - want_loss).abs() <= LOSS_TOL * want_loss.abs());
    let worst = grad
        .iter()
        .zip(&want_grad)
        .fold(0.0f64, |m, (&g, &e)| m.max((g as f64 - e).abs()));
    assert!(worst <= 1e-6, "f16 logits: gradient error {worst:e}");
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
    let (loss, grad) = fused(
        tensor(&[], [0, 11]),
        tensor(&[], [0, 11]),
        tensor(&[], [0]),
        spec,
    );
    assert_eq!(loss, 0.0);
    assert!(grad.is_empty());
}
