//! The fused linear KD (the student's head and the KD loss a chunk of rows
//! at a time) against the unfused head and loss it stands in for, on random
//! inputs through `Autodiff<Flex>`: the loss and the gradients of the
//! hidden states and the head. Chunks that divide the rows and ones that
//! leave a short last chunk, one row per chunk and all rows in one; a
//! teacher with a padded vocabulary (the shared columns only); every
//! divergence, a temperature with Hinton's scaling, the cross-entropy mix,
//! a sparse (top-K) teacher; and bf16 products where the CPU has AMX.
//!
//! The unfused path is the one the trainer runs without chunks, whose KD
//! loss is tested against float64 in `kernels_kd` and `kernels_kd_sparse`.
//! Tolerance: 1e-5 of the largest entry (only the order of the head
//! gradient's sums over rows differs).

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use distillery_ops::kernels::kd::{KdLoss, KdSpec, SparseTeacher, kd_loss, kd_loss_sparse};
use distillery_ops::kernels::linear_kd::{LinearKd, TeacherRows, linear_kd_loss};
use distillery_ops::kernels::matmul::bf16_on_cpu;
use distillery_ops::kernels::reference::sparse_teacher_row;
use distillery_ops::kernels::{Activations, Precision, WeightLayout, linear_matmul};
use distillery_ops::rng::SplitMix64;
use distillery_ops::train::objective::weighted_cross_entropy;

type Ad = Autodiff<Flex>;

const TOL: f64 = 1e-5;

#[derive(Clone, Copy, Debug)]
struct Case {
    rows: usize,
    chunk: usize,
    width: usize,
    vocab: usize,
    teacher_width: usize,
    teacher_vocab: usize,
    spec: KdSpec,
    ce_weight: f64,
    /// Kept tokens of a sparse teacher; `None`: the live teacher's head.
    top_k: Option<usize>,
    precision: Precision,
}

fn spec(loss: KdLoss, temperature: f32, tau_squared: bool) -> KdSpec {
    KdSpec {
        loss,
        temperature,
        tau_squared,
    }
}

fn random(rng: &mut SplitMix64, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * scale) as f32)
        .collect()
}

fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    values: &[f32],
    dims: [usize; D],
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), &Default::default())
}

fn read<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let unit = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    let err = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= TOL * unit,
        "{what}: off by {err:.3e}, {:.3e} of the largest entry {unit:.3e}",
        err / unit
    );
}

/// One case's inputs.
struct Inputs {
    hidden: Vec<f32>,
    head: Vec<f32>,
    teacher_hidden: Vec<f32>,
    teacher_head: Vec<f32>,
    weights: Vec<f32>,
    targets: Vec<i64>,
}

impl Inputs {
    fn new(c: &Case, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let weights = (0..c.rows)
            .map(|i| {
                if i % 7 == 3 {
                    0.0 // a masked position
                } else {
                    (rng.next_f64() / c.rows as f64) as f32
                }
            })
            .collect();
        Self {
            hidden: random(&mut rng, c.rows * c.width, 1.0),
            head: random(&mut rng, c.vocab * c.width, 0.6),
            teacher_hidden: random(&mut rng, c.rows * c.teacher_width, 1.0),
            teacher_head: random(&mut rng, c.teacher_vocab * c.teacher_width, 0.6),
            weights,
            targets: (0..c.rows)
                .map(|_| (rng.next_f64() * c.vocab as f64) as i64)
                .collect(),
        }
    }

    /// The teacher's logits `[rows, shared]`, as the live teacher makes them.
    fn teacher_logits(&self, c: &Case) -> Tensor<Flex, 2> {
        let logits = linear_matmul(
            tensor::<Flex, 2>(&self.teacher_hidden, [c.rows, c.teacher_width]),
            tensor::<Flex, 2>(&self.teacher_head, [c.teacher_vocab, c.teacher_width]),
            WeightLayout::OutIn,
            c.precision,
        );
        logits.slice([0..c.rows, 0..shared(c)])
    }

    /// The teacher's top-K rows, on backend `B`.
    fn sparse<B: burn::tensor::backend::Backend>(&self, c: &Case, k: usize) -> SparseTeacher<B> {
        let logits: Vec<f32> = self.teacher_logits(c).into_data().to_vec().unwrap();
        let (mut ids, mut log_probs, mut log_tail) = (Vec::new(), Vec::new(), Vec::new());
        for row in logits.chunks(shared(c)) {
            let (i, lp, tail) = sparse_teacher_row(row, k, c.spec.temperature as f64);
            ids.extend(i.into_iter().map(i64::from));
            log_probs.extend(lp);
            log_tail.push(tail);
        }
        let device = Default::default();
        SparseTeacher {
            ids: Tensor::from_data(TensorData::new(ids, [c.rows, k]), &device),
            log_probs: Tensor::from_data(TensorData::new(log_probs, [c.rows, k]), &device),
            log_tail: Tensor::from_data(TensorData::new(log_tail, [c.rows]), &device),
        }
    }
}

/// The columns both vocabularies have.
fn shared(c: &Case) -> usize {
    c.vocab.min(c.teacher_vocab)
}

/// `(loss, d_hidden, d_head)` of the unfused head and loss.
fn unfused(c: &Case, x: &Inputs) -> (f64, Vec<f64>, Vec<f64>) {
    let hidden = tensor::<Ad, 2>(&x.hidden, [c.rows, c.width]).require_grad();
    let head = tensor::<Ad, 2>(&x.head, [c.vocab, c.width]).require_grad();
    let logits = linear_matmul(
        hidden.clone(),
        head.clone(),
        WeightLayout::OutIn,
        c.precision,
    );
    let student = logits.clone().slice([0..c.rows, 0..shared(c)]);
    let weights = tensor::<Ad, 1>(&x.weights, [c.rows]);
    let mut loss = match c.top_k {
        None => kd_loss(
            student,
            Tensor::from_inner(x.teacher_logits(c)),
            weights.clone(),
            c.spec,
        ),
        Some(k) => kd_loss_sparse(student, x.sparse::<Ad>(c, k), weights.clone(), c.spec),
    };
    if c.ce_weight > 0.0 {
        let targets = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(x.targets.clone(), [1, c.rows]),
            &Default::default(),
        );
        let ce = weighted_cross_entropy(logits.reshape([1, c.rows, c.vocab]), targets, weights);
        loss = loss + ce.mul_scalar(c.ce_weight);
    }
    let grads = loss.backward();
    (
        read(loss.inner())[0],
        read(hidden.grad(&grads).unwrap()),
        read(head.grad(&grads).unwrap()),
    )
}

/// `(loss, d_hidden, d_head)` of the fused linear KD.
fn fused(c: &Case, x: &Inputs) -> (f64, Vec<f64>, Vec<f64>) {
    let hidden = tensor::<Ad, 2>(&x.hidden, [c.rows, c.width]).require_grad();
    let head = tensor::<Ad, 2>(&x.head, [c.vocab, c.width]).require_grad();
    let teacher = match c.top_k {
        None => TeacherRows::Head {
            hidden: tensor::<Flex, 2>(&x.teacher_hidden, [c.rows, c.teacher_width]),
            head: tensor::<Flex, 2>(&x.teacher_head, [c.teacher_vocab, c.teacher_width]),
            precision: c.precision,
            activations: Activations::TwoParts,
        },
        Some(k) => TeacherRows::Sparse(x.sparse::<Flex>(c, k)),
    };
    let targets = Tensor::<Flex, 1, Int>::from_data(
        TensorData::new(x.targets.clone(), [c.rows]),
        &Default::default(),
    );
    let job = LinearKd {
        teacher,
        weights: tensor::<Flex, 1>(&x.weights, [c.rows]),
        spec: c.spec,
        vocab: shared(c),
        cross_entropy: (c.ce_weight > 0.0).then_some((c.ce_weight, targets)),
        chunk_rows: c.chunk,
    };
    let loss = linear_kd_loss(hidden.clone(), head.clone(), c.precision, job);
    let grads = loss.backward();
    (
        read(loss.inner())[0],
        read(hidden.grad(&grads).unwrap()),
        read(head.grad(&grads).unwrap()),
    )
}

fn cases() -> Vec<Case> {
    let base = Case {
        rows: 37,
        chunk: 8,
        width: 24,
        vocab: 101,
        teacher_width: 32,
        teacher_vocab: 105,
        spec: spec(KdLoss::ForwardKl, 1.0, false),
        ce_weight: 0.0,
        top_k: None,
        precision: Precision::F32,
    };
    let mut cases = vec![
        base,
        Case {
            chunk: 37,
            spec: spec(KdLoss::Jsd { beta: 0.3 }, 2.0, true),
            ce_weight: 0.25,
            ..base
        },
        Case {
            rows: 5,
            chunk: 1,
            spec: spec(KdLoss::ReverseKl, 1.0, false),
            teacher_vocab: 101,
            ..base
        },
        Case {
            chunk: 16,
            top_k: Some(16),
            ce_weight: 0.1,
            teacher_vocab: 101,
            ..base
        },
    ];
    if bf16_on_cpu() {
        cases.push(Case {
            precision: Precision::Bf16,
            width: 64,
            teacher_width: 64,
            ..base
        });
    }
    cases
}

#[test]
fn the_fused_head_and_loss_equal_the_unfused_ones() {
    for (n, c) in cases().into_iter().enumerate() {
        let x = Inputs::new(&c, 50 + n as u64);
        let (want_loss, want_dh, want_dw) = unfused(&c, &x);
        let (loss, dh, dw) = fused(&c, &x);
        assert_close(&format!("{c:?} loss"), &[loss], &[want_loss]);
        assert_close(&format!("{c:?} d_hidden"), &dh, &want_dh);
        assert_close(&format!("{c:?} d_head"), &dw, &want_dw);
    }
}

#[test]
fn without_autodiff_the_fused_loss_is_the_loss_alone() {
    let c = cases()[0];
    let x = Inputs::new(&c, 9);
    let (want, _, _) = unfused(&c, &x);
    let job = LinearKd {
        teacher: TeacherRows::Head {
            hidden: tensor::<Flex, 2>(&x.teacher_hidden, [c.rows, c.teacher_width]),
            head: tensor::<Flex, 2>(&x.teacher_head, [c.teacher_vocab, c.teacher_width]),
            precision: c.precision,
            activations: Activations::TwoParts,
        },
        weights: tensor::<Flex, 1>(&x.weights, [c.rows]),
        spec: c.spec,
        vocab: shared(&c),
        cross_entropy: None,
        chunk_rows: c.chunk,
    };
    // Not tracked: the hidden states and the head require no gradient.
    let loss = linear_kd_loss(
        tensor::<Ad, 2>(&x.hidden, [c.rows, c.width]),
        tensor::<Ad, 2>(&x.head, [c.vocab, c.width]),
        c.precision,
        job,
    );
    assert_close("untracked loss", &[read(loss.inner())[0]], &[want]);
}
