//! The fused KD loss on the CPU against the float64 oracle
//! (`kernels::reference::kd_loss`): the Flex twin called directly, and
//! `kd_loss` on `Autodiff<Flex>` with its hand-written backward. Every loss
//! (JSD at beta 0.5 and 0.1), temperatures 0.5, 1 and 2 with and without the
//! `tau^2` scaling, vocabularies of 7, 49 152 and 50 257, logits of scale 1,
//! 30 and 1e4 (near one-hot softmaxes whose small probabilities underflow),
//! masked rows, a fully masked batch, f16/bf16 inputs, and a
//! finite-difference check of the backward.
//!
//! Tolerances: the loss within a relative 1e-5 of the oracle; every gradient
//! entry within 1e-6 of the row's unit `w * scale / tau` (the largest a
//! forward-KL or JSD entry can be). Reverse KL's entries
//! `p (ln p - ln q - L) / tau` are not bounded by the unit: their scale is
//! the row's largest oracle entry or `|L|` units, whichever is larger, since
//! f32 exponentials carry `L` to about 1e-7 of itself (and `L` reaches
//! 2e4 / tau at logits of 1e4).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{FloatDType, Tensor, TensorData, TensorPrimitive};
use distillery_ops::kernels::reference;
use distillery_ops::kernels::{KdLoss, KdOps, KdSpec, kd_loss};
use distillery_ops::rng::SplitMix64;

mod kd_support;

use kd_support::{GRAD_TOL, LOSS_TOL, SCALES, TEMPERATURES, logits, weights};

type Ad = Autodiff<Flex>;

const LOSSES: [KdLoss; 4] = [
    KdLoss::ForwardKl,
    KdLoss::ReverseKl,
    KdLoss::Jsd { beta: 0.5 },
    KdLoss::Jsd { beta: 0.1 },
];

fn tensor<B: KdOps, const D: usize>(values: &[f32], dims: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Default::default())
}

fn read(t: Tensor<Flex, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// The Flex op on primitives: `(loss, grad)` read back.
fn fused(
    student: Tensor<Flex, 2>,
    teacher: Tensor<Flex, 2>,
    weights: Tensor<Flex, 1>,
    spec: KdSpec,
) -> (f32, Vec<f32>) {
    let (loss, grad) = <Flex as KdOps>::kd_loss_fused(
        student.into_primitive().tensor(),
        teacher.into_primitive().tensor(),
        weights.into_primitive().tensor(),
        spec,
    );
    let loss = read(Tensor::from_primitive(TensorPrimitive::Float(loss)));
    assert_eq!(loss.len(), 1, "the loss is a [1] tensor");
    let grad = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(grad))
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    (loss[0], grad)
}

/// Checks `(loss, grad)` against the oracle's `(want_loss, want_grad)`
/// times `factor` (the upstream gradient); returns `(loss relative error,
/// largest gradient error in units of the row's tolerance scale)`.
#[allow(clippy::too_many_arguments)]
fn compare(
    loss: f32,
    grad: &[f32],
    want: &(f64, Vec<f64>),
    (student, teacher): (&[f32], &[f32]),
    weights: &[f32],
    vocab: usize,
    spec: KdSpec,
    factor: f64,
    what: &str,
) -> (f64, f64) {
    let (want_loss, want_grad) = (want.0 * factor, &want.1);
    assert!(loss.is_finite(), "{what}: loss {loss}");
    assert_eq!(grad.len(), weights.len() * vocab, "{what}: gradient size");
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
    let unit = spec.scale() as f64 / spec.temperature as f64;
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
        let largest = want.iter().fold(0.0f64, |m, e| m.max(e.abs())) * factor;
        let row_loss = match spec.loss {
            KdLoss::ReverseKl => {
                let row = n * vocab..(n + 1) * vocab;
                reference::kd_row(&student[row.clone()], &teacher[row], spec).0
            }
            _ => 0.0,
        };
        let scale = (w as f64 * unit * factor * row_loss.abs().max(1.0)).max(largest);
        for (v, (&g, &e)) in got.iter().zip(want).enumerate() {
            assert!(g.is_finite(), "{what}: gradient [{n}, {v}] = {g}");
            let err = (g as f64 - e * factor).abs() / scale;
            assert!(
                err <= GRAD_TOL,
                "{what}: gradient [{n}, {v}] {g} vs {} (error {err:.2e} of {scale:.2e})",
                e * factor
            );
            grad_err = grad_err.max(err);
        }
    }
    (loss_err, grad_err)
}

/// The Flex op on f32 inputs against the oracle. The student is passed
/// once shared (the gradient gets its own buffer) and once as the only
/// reference (the gradient overwrites it); both must agree bit for bit.
fn check_flex(
    student: &[f32],
    teacher: &[f32],
    w: &[f32],
    vocab: usize,
    spec: KdSpec,
    what: &str,
) -> (f64, f64) {
    let rows = w.len();
    let shared = tensor::<Flex, 2>(student, [rows, vocab]);
    let keep = shared.clone();
    let (loss, grad) = fused(
        shared,
        tensor(teacher, [rows, vocab]),
        tensor(w, [rows]),
        spec,
    );
    let want = reference::kd_loss(student, teacher, w, vocab, spec);
    let inputs = (student, teacher);
    let errors = compare(loss, &grad, &want, inputs, w, vocab, spec, 1.0, what);
    // The kept handle still reads the logits: nothing wrote into them.
    assert_eq!(keep.into_data().into_vec::<f32>().unwrap(), student);

    let (loss2, grad2) = fused(
        tensor(student, [rows, vocab]),
        tensor(teacher, [rows, vocab]),
        tensor(w, [rows]),
        spec,
    );
    assert_eq!(loss2.to_bits(), loss.to_bits(), "{what}: in-place loss");
    assert!(
        grad2
            .iter()
            .zip(&grad)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: the in-place gradient differs"
    );
    errors
}

fn sweep(vocab: usize, rows: usize, seed: u64, tau_squared: &[bool]) {
    let mut rng = SplitMix64::new(seed);
    let w = weights(rows);
    for scale in SCALES {
        let student = logits(&mut rng, rows * vocab, scale);
        let teacher = logits(&mut rng, rows * vocab, scale);
        for loss in LOSSES {
            let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
            for temperature in TEMPERATURES {
                for &tau_squared in tau_squared {
                    let spec = KdSpec {
                        loss,
                        temperature,
                        tau_squared,
                    };
                    let what = format!(
                        "{loss:?} V={vocab} rows={rows} scale={scale} tau={temperature} \
                         tau^2={tau_squared}"
                    );
                    let (l, g) = check_flex(&student, &teacher, &w, vocab, spec, &what);
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
fn flex_matches_the_oracle_on_a_small_vocabulary() {
    sweep(7, 37, 1, &[false, true]);
}

#[test]
fn flex_matches_the_oracle_on_49152_tokens() {
    sweep(49_152, 3, 2, &[false, true]);
}

#[test]
fn flex_matches_the_oracle_on_50257_tokens() {
    sweep(50_257, 3, 3, &[true]);
}

/// A teacher close to the student: small losses, where the row sums cancel
/// the most.
#[test]
fn flex_matches_the_oracle_on_close_distributions() {
    let mut rng = SplitMix64::new(4);
    let (vocab, rows) = (50_257, 2);
    let student = logits(&mut rng, rows * vocab, 10.0);
    let teacher: Vec<f32> = student
        .iter()
        .zip(logits(&mut rng, rows * vocab, 0.3))
        .map(|(s, d)| s + d)
        .collect();
    for loss in LOSSES {
        let spec = KdSpec {
            loss,
            temperature: 1.0,
            tau_squared: false,
        };
        let what = format!("{loss:?} close");
        let (l, g) = check_flex(&student, &teacher, &[0.5, 0.5], vocab, spec, &what);
        eprintln!("{what}: loss relative error {l:.1e}, gradient error {g:.1e}");
    }
}

/// Logits of magnitude 1e4 whose softmaxes are one-hot at different tokens
/// (every other probability underflows to 0), and rows where the teacher is
/// the student shifted by a constant: finite everywhere, as the oracle says.
#[test]
fn logits_of_1e4_give_no_nan() {
    let vocab = 1000;
    let mut student = vec![-1e4f32; 4 * vocab];
    let mut teacher = vec![-1e4f32; 4 * vocab];
    student[3] = 1e4;
    teacher[vocab - 1] = 1e4;
    student[vocab + 10] = 1e4;
    teacher[vocab + 10] = 1e4;
    let mut rng = SplitMix64::new(5);
    let noise = logits(&mut rng, vocab, 1e4);
    student[2 * vocab..3 * vocab].copy_from_slice(&noise);
    for (t, s) in teacher[2 * vocab..3 * vocab].iter_mut().zip(&noise) {
        *t = s - 5e3;
    }
    student[3 * vocab..].copy_from_slice(&logits(&mut rng, vocab, 1e4));
    teacher[3 * vocab..].copy_from_slice(&logits(&mut rng, vocab, 1e4));
    let w = [0.25f32; 4];
    for loss in LOSSES {
        for temperature in TEMPERATURES {
            let spec = KdSpec {
                loss,
                temperature,
                tau_squared: true,
            };
            let what = format!("{loss:?} tau={temperature} one-hot 1e4");
            check_flex(&student, &teacher, &w, vocab, spec, &what);
        }
    }
}

#[test]
fn a_fully_masked_batch_has_zero_loss_and_gradient() {
    let mut rng = SplitMix64::new(6);
    let (rows, vocab) = (4, 333);
    let student = logits(&mut rng, rows * vocab, 30.0);
    let teacher = logits(&mut rng, rows * vocab, 30.0);
    let w = [0.0f32; 4];
    for loss in LOSSES {
        let spec = KdSpec {
            loss,
            temperature: 2.0,
            tau_squared: true,
        };
        let (l, g) = fused(
            tensor(&student, [rows, vocab]),
            tensor(&teacher, [rows, vocab]),
            tensor(&w, [rows]),
            spec,
        );
        assert_eq!(l, 0.0);
        assert!(
            g.iter().all(|&v| v == 0.0),
            "{loss:?}: gradient of a masked batch"
        );

        let s = tensor::<Ad, 2>(&student, [rows, vocab]).require_grad();
        let l = kd_loss(
            s.clone(),
            tensor(&teacher, [rows, vocab]),
            tensor(&w, [rows]),
            spec,
        );
        let grads = l.clone().backward();
        assert_eq!(read(l.inner()), [0.0]);
        let g = s.grad(&grads).expect("a gradient for the student");
        assert!(
            g.into_data()
                .into_vec::<f32>()
                .unwrap()
                .iter()
                .all(|&v| v == 0.0),
            "{loss:?}: autodiff gradient of a masked batch"
        );
    }
}

/// f16 and bf16 logits (the op reads them without a full f32 copy) against
/// the oracle on the rounded values, for the student, the teacher or both.
#[test]
fn half_precision_inputs_match_the_oracle() {
    let mut rng = SplitMix64::new(7);
    let (rows, vocab) = (5, 49_152 + 3);
    let w = weights(rows);
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        for scale in [1.0, 30.0] {
            let student = logits(&mut rng, rows * vocab, scale);
            let teacher = logits(&mut rng, rows * vocab, scale);
            let rounded = |x: &[f32]| -> (Tensor<Flex, 2>, Vec<f32>) {
                let t = tensor::<Flex, 2>(x, [rows, vocab]).cast(dtype);
                let values = t
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap();
                (t, values)
            };
            let (s_half, s_values) = rounded(&student);
            let (t_half, t_values) = rounded(&teacher);
            for loss in LOSSES {
                let spec = KdSpec {
                    loss,
                    temperature: 2.0,
                    tau_squared: true,
                };
                let cases = [
                    ("both", s_half.clone(), t_half.clone(), &s_values, &t_values),
                    (
                        "student",
                        s_half.clone(),
                        tensor(&teacher, [rows, vocab]),
                        &s_values,
                        &teacher,
                    ),
                    (
                        "teacher",
                        tensor(&student, [rows, vocab]),
                        t_half.clone(),
                        &student,
                        &t_values,
                    ),
                ];
                for (which, s, t, s_want, t_want) in cases {
                    let what = format!("{loss:?} {dtype:?} {which} scale={scale}");
                    let (l, g) = fused(s, t, tensor(&w, [rows]), spec);
                    let want = reference::kd_loss(s_want, t_want, &w, vocab, spec);
                    let inputs = (s_want.as_slice(), t_want.as_slice());
                    compare(l, &g, &want, inputs, &w, vocab, spec, 1.0, &what);
                }
            }
        }
    }
}

/// `kd_loss` on `Autodiff<Flex>`: `(3 * loss).backward()` gives the
/// student 3 times the oracle's gradient; the teacher gets none. Once with
/// the student a leaf (its logits shared with the graph) and once computed
/// from a leaf (the op then owns them and writes the gradient over them).
#[test]
fn autodiff_backward_matches_the_oracle() {
    let mut rng = SplitMix64::new(8);
    for (vocab, rows) in [(7, 37), (50_257, 3)] {
        let w = weights(rows);
        for scale in [1.0, 30.0, 1e4] {
            let student = logits(&mut rng, rows * vocab, scale);
            let teacher = logits(&mut rng, rows * vocab, scale);
            for loss in LOSSES {
                for (temperature, tau_squared) in [(0.5, false), (1.0, true), (2.0, true)] {
                    let spec = KdSpec {
                        loss,
                        temperature,
                        tau_squared,
                    };
                    let want = reference::kd_loss(&student, &teacher, &w, vocab, spec);
                    for owned in [false, true] {
                        let what = format!(
                            "autodiff {loss:?} V={vocab} scale={scale} tau={temperature} \
                             tau^2={tau_squared} owned={owned}"
                        );
                        let leaf = tensor::<Ad, 2>(&student, [rows, vocab]).require_grad();
                        let t = tensor::<Ad, 2>(&teacher, [rows, vocab]).require_grad();
                        let s = if owned {
                            leaf.clone().mul_scalar(1.0)
                        } else {
                            leaf.clone()
                        };
                        let l = kd_loss(s, t.clone(), tensor(&w, [rows]), spec);
                        let value = read(l.clone().inner())[0];
                        let grads = l.mul_scalar(3.0).backward();
                        let g = leaf.grad(&grads).expect("a gradient for the student");
                        let g = g.into_data().into_vec::<f32>().unwrap();
                        let inputs = (student.as_slice(), teacher.as_slice());
                        let loss_err = (value as f64 - want.0).abs() / want.0.abs();
                        assert!(loss_err <= LOSS_TOL, "{what}: loss {value} vs {}", want.0);
                        compare(3.0 * value, &g, &want, inputs, &w, vocab, spec, 3.0, &what);
                        assert!(
                            t.grad(&grads).is_none(),
                            "{what}: the teacher got a gradient"
                        );
                    }
                }
            }
        }
    }
}

/// The autodiff gradient against central differences of the float64
/// oracle's loss: `(L(s + h e_k) - L(s - h e_k)) / 2h` for a few entries.
/// The oracle's loss is written from the definitions, so this checks the
/// closed-form gradients independently of the oracle's own gradient.
#[test]
fn backward_matches_finite_differences() {
    let mut rng = SplitMix64::new(9);
    let (rows, vocab) = (3, 11);
    let student = logits(&mut rng, rows * vocab, 2.0);
    let teacher = logits(&mut rng, rows * vocab, 2.0);
    let w = [0.5f32, 0.0, 0.5];
    for loss in LOSSES {
        for (temperature, tau_squared) in [(0.5, false), (1.0, true), (2.0, true)] {
            let spec = KdSpec {
                loss,
                temperature,
                tau_squared,
            };
            let s = tensor::<Ad, 2>(&student, [rows, vocab]).require_grad();
            let l = kd_loss(
                s.clone(),
                tensor(&teacher, [rows, vocab]),
                tensor(&w, [rows]),
                spec,
            );
            let grads = l.backward();
            let g = s
                .grad(&grads)
                .unwrap()
                .into_data()
                .into_vec::<f32>()
                .unwrap();
            for k in [0, 5, vocab - 1, vocab + 3, 2 * vocab, 2 * vocab + 7] {
                let h = 1e-3f32;
                let (mut plus, mut minus) = (student.clone(), student.clone());
                plus[k] += h;
                minus[k] -= h;
                let step = plus[k] as f64 - minus[k] as f64;
                let lp = reference::kd_loss(&plus, &teacher, &w, vocab, spec).0;
                let lm = reference::kd_loss(&minus, &teacher, &w, vocab, spec).0;
                let numeric = (lp - lm) / step;
                let unit = spec.scale() as f64 / temperature as f64;
                let err = (g[k] as f64 - numeric).abs() / unit;
                assert!(
                    err <= 1e-5,
                    "{loss:?} tau={temperature}: d/ds[{k}] {} vs finite difference {numeric} \
                     (error {err:.1e} of scale / tau)",
                    g[k]
                );
            }
        }
    }
}

#[test]
fn specs_are_validated() {
    let spec = |loss, temperature| KdSpec {
        loss,
        temperature,
        tau_squared: false,
    };
    assert!(spec(KdLoss::ForwardKl, 1.0).validate().is_ok());
    assert!(spec(KdLoss::Jsd { beta: 0.1 }, 0.5).validate().is_ok());
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(spec(KdLoss::ReverseKl, bad).validate().is_err(), "{bad}");
    }
    for beta in [0.0, 1.0, -0.5, f32::NAN] {
        assert!(
            spec(KdLoss::Jsd { beta }, 1.0).validate().is_err(),
            "{beta}"
        );
    }
}

#[test]
#[should_panic(expected = "do not match the student's")]
fn mismatched_shapes_panic() {
    let spec = KdSpec {
        loss: KdLoss::ForwardKl,
        temperature: 1.0,
        tau_squared: false,
    };
    kd_loss::<Flex>(
        tensor(&[0.0; 6], [2, 3]),
        tensor(&[0.0; 8], [2, 4]),
        tensor(&[1.0; 2], [2]),
        spec,
    );
}

#[test]
#[should_panic(expected = "temperature must be finite and above 0")]
fn an_invalid_spec_panics() {
    let spec = KdSpec {
        loss: KdLoss::ForwardKl,
        temperature: 0.0,
        tau_squared: false,
    };
    kd_loss::<Flex>(
        tensor(&[0.0; 6], [2, 3]),
        tensor(&[0.0; 6], [2, 3]),
        tensor(&[1.0; 2], [2]),
        spec,
    );
}
