//! The student's `lm_head` and the KD loss together, a chunk of rows at a
//! time ("fused linear KD"), so that the `[rows, vocab]` logits are never
//! held whole: neither the student's nor the teacher's nor their gradient.
//! With a 128k vocabulary those are the largest tensors of a step (4 GiB
//! each in f32 at 8 x 1024 positions); here they are `[chunk, vocab]`.
//!
//! For each chunk of `c` rows, on the inner backend:
//!
//! ```text
//! z   = h_c W^T                          student logits [c, V]
//! t   = teacher's logits of the chunk    (its head on its hidden states,
//!                                         or a stored top-K row slice)
//! (L_c, g) = KD(z[:, ..vocab], t)        the fused KD kernel: loss and dL/dz
//! (+ ce_weight * cross-entropy of z, and its gradient)
//! dh_c = g W,  dW += g^T h_c
//! ```
//!
//! The loss is the sum of the chunks' (the rows' weights already carry the
//! mean). The gradients are computed in the forward, since a training loss
//! is always differentiated, and kept as the op's state; the backward only
//! scales them by the upstream gradient, as the KD op's does. The result
//! equals the unfused head and loss up to the order of the `dW` sums.

use super::kd::{KdOps, KdSpec, SparseTeacher};
use super::matmul::{
    Activations, MatmulOps, Precision, Results, Wanted, WeightLayout, linear_matmul_as,
};
use super::{float, tensor};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorPrimitive};
use std::ops::Range;

/// Where each chunk's teacher distribution comes from.
pub enum TeacherRows<B: Backend> {
    /// A live teacher's final hidden states `[N, Ht]` and its head
    /// `[Vt, Ht]` (out, in): its logits are made a chunk at a time.
    Head {
        hidden: Tensor<B, 2>,
        head: Tensor<B, 2>,
        precision: Precision,
        /// How the head's product carries `hidden` (the teacher's own
        /// [`super::matmul::Activations`]).
        activations: Activations,
    },
    /// Stored top-K rows (see [`super::kd::kd_loss_sparse`]).
    Sparse(SparseTeacher<B>),
}

/// Everything but the student: the teacher, the rows' weights, the loss.
pub struct LinearKd<B: Backend> {
    pub teacher: TeacherRows<B>,
    /// `[N]`, as for [`super::kd::kd_loss`].
    pub weights: Tensor<B, 1>,
    pub spec: KdSpec,
    /// The logit columns the KD compares: a teacher with a padded
    /// vocabulary is cut to the student's (`<=` both vocabularies).
    pub vocab: usize,
    /// `ce_weight` and the next-token targets `[N]`: adds `ce_weight` times
    /// the student's weighted cross-entropy over its whole vocabulary.
    pub cross_entropy: Option<(f64, Tensor<B, 1, Int>)>,
    /// Rows per chunk (at least 1).
    pub chunk_rows: usize,
}

/// The loss `[1]` and, as `want` says, its gradients with respect to the
/// student's hidden states `[N, H]` and head `[V, H]`, computed a chunk at a
/// time on `B` (no autodiff).
pub fn loss_and_grads<B: KdOps + MatmulOps>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    precision: Precision,
    job: &LinearKd<B>,
    want: Wanted,
) -> (Tensor<B, 1>, Option<Tensor<B, 2>>, Option<Tensor<B, 2>>) {
    let [rows, width] = hidden.dims();
    let [student_vocab, head_width] = head.dims();
    assert_eq!(
        width, head_width,
        "linear KD: hidden states of width {width} for a head of width {head_width}"
    );
    assert!(
        job.vocab > 0 && job.vocab <= student_vocab,
        "linear KD: {} shared logit columns for a student vocabulary of {student_vocab}",
        job.vocab
    );
    assert_eq!(job.weights.dims(), [rows], "linear KD: one weight per row");
    assert!(job.chunk_rows > 0, "linear KD: chunks of 0 rows");
    if let Err(e) = job.spec.validate() {
        panic!("linear KD: {e}");
    }
    let device = hidden.device();
    let mut loss = Tensor::<B, 1>::zeros([1], &device);
    let mut d_hidden = Vec::new();
    let mut d_head: Option<Tensor<B, 2>> = None;
    // Rounded once for every chunk's product and gradients (where the
    // products round their operands), not twice a chunk.
    let head = B::trained_operand(float(head), precision);
    for start in (0..rows).step_by(job.chunk_rows) {
        let chunk = start..(start + job.chunk_rows).min(rows);
        let h = hidden.clone().slice([chunk.clone(), 0..width]);
        let h = B::trained_operand(float(h), precision);
        let logits: Tensor<B, 2> = tensor(B::linear_matmul_trained(
            h.clone(),
            head.clone(),
            WeightLayout::OutIn,
            precision,
            Results::F32,
        ));
        let (chunk_loss, mut grad) = chunk_kd(&logits, chunk.clone(), job);
        if job.vocab < student_vocab {
            // Columns past the shared ones have no KD gradient.
            let c = chunk.len();
            let rest = Tensor::zeros([c, student_vocab - job.vocab], &device);
            grad = Tensor::cat(vec![grad, rest], 1);
        }
        loss = loss + chunk_loss;
        if let Some((ce_weight, targets)) = &job.cross_entropy {
            let w = job.weights.clone().slice([chunk.clone()]);
            let t = targets.clone().slice([chunk.clone()]);
            let (ce, ce_grad) = cross_entropy_and_grad(logits, t, w);
            loss = loss + ce.mul_scalar(*ce_weight);
            grad = grad + ce_grad.mul_scalar(*ce_weight);
        }
        let (dh, dw) = B::linear_matmul_backward(
            h,
            head.clone(),
            WeightLayout::OutIn,
            precision,
            float(grad),
            want,
        );
        if let Some(dh) = dh {
            d_hidden.push(tensor::<B, 2>(dh));
        }
        if let Some(dw) = dw {
            let dw = tensor::<B, 2>(dw);
            d_head = Some(match d_head {
                Some(sum) => sum + dw,
                None => dw,
            });
        }
    }
    let d_hidden = (want.x && !d_hidden.is_empty()).then(|| Tensor::cat(d_hidden, 0));
    (loss, d_hidden, d_head)
}

/// The KD loss of one chunk's student logits `[c, V]` (its first `vocab`
/// columns) and its gradient `[c, vocab]`.
fn chunk_kd<B: KdOps + MatmulOps>(
    logits: &Tensor<B, 2>,
    chunk: Range<usize>,
    job: &LinearKd<B>,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let c = chunk.len();
    let student = logits.clone().slice([0..c, 0..job.vocab]);
    let weights = float(job.weights.clone().slice([chunk.clone()]));
    let (loss, grad) = match &job.teacher {
        TeacherRows::Head {
            hidden,
            head,
            precision,
            activations,
        } => {
            let width = hidden.dims()[1];
            let teacher = linear_matmul_as(
                hidden.clone().slice([chunk.clone(), 0..width]),
                head.clone(),
                WeightLayout::OutIn,
                *precision,
                *activations,
            );
            let teacher = teacher.slice([0..c, 0..job.vocab]);
            B::kd_loss_fused(float(student), float(teacher), weights, job.spec)
        }
        TeacherRows::Sparse(t) => {
            let k = t.ids.dims()[1];
            B::kd_loss_sparse_fused(
                float(student),
                t.ids.clone().slice([chunk.clone(), 0..k]).into_primitive(),
                float(t.log_probs.clone().slice([chunk.clone(), 0..k])),
                float(t.log_tail.clone().slice([chunk])),
                weights,
                job.spec,
            )
        }
    };
    (tensor(loss), tensor(grad))
}

/// `-sum_n w_n log softmax(z_n)[t_n]` and its gradient with respect to
/// `z`: `w_n (softmax(z_n) - onehot(t_n))`.
fn cross_entropy_and_grad<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    weights: Tensor<B, 1>,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [c, vocab] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let targets = targets.reshape([c, 1]);
    let w = weights.reshape([c, 1]);
    let picked = log_probs.clone().gather(1, targets.clone());
    let loss = (picked * w.clone()).sum().neg();
    let grad = log_probs.exp() * w.clone();
    let grad = grad.scatter(1, targets, w.neg(), IndexingUpdateOp::Add);
    debug_assert_eq!(grad.dims(), [c, vocab]);
    (loss, grad)
}

/// The KD loss of the student's head on `hidden` `[N, H]` (final-norm
/// states) with head weights `head` `[V, H]` (out, in), in chunks of rows:
/// a `[1]` tensor. Under `Autodiff` its gradient flows to `hidden` and
/// `head`.
pub fn linear_kd_loss<B: LinearKdOps>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    precision: Precision,
    job: LinearKd<B::Inner>,
) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(B::linear_kd(
        float(hidden),
        float(head),
        precision,
        job,
    )))
}

/// The backends [`linear_kd_loss`] runs on: a backend and the one its
/// teacher tensors live on (itself, or the inner backend under autodiff).
pub trait LinearKdOps: Backend {
    type Inner: KdOps + MatmulOps;
    fn linear_kd(
        hidden: burn::tensor::ops::FloatTensor<Self>,
        head: burn::tensor::ops::FloatTensor<Self>,
        precision: Precision,
        job: LinearKd<Self::Inner>,
    ) -> burn::tensor::ops::FloatTensor<Self>;
}

/// Under autodiff: one node with the hidden states and the head as
/// parents, whose state is the two gradients the forward computed.
mod on_autodiff {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::tensor::Shape;
    use burn::tensor::ops::FloatTensor;

    #[derive(Debug)]
    struct LinearKdBackward;

    impl<B: KdOps + MatmulOps> Backward<B, 2> for LinearKdBackward {
        /// `d_hidden`, `d_head` (each when its parent is tracked).
        type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_hidden, node_head] = ops.parents;
            let upstream = grads.consume::<B>(&ops.node);
            let upstream = B::float_reshape(upstream, Shape::new([1, 1]));
            let (d_hidden, d_head) = ops.state;
            for (node, grad) in [(node_hidden, d_hidden), (node_head, d_head)] {
                if let (Some(node), Some(grad)) = (node, grad) {
                    grads.register::<B>(node.id, B::float_mul(grad, upstream.clone()));
                }
            }
        }
    }

    impl<B: KdOps + MatmulOps, C: CheckpointStrategy> LinearKdOps for Autodiff<B, C> {
        type Inner = B;

        fn linear_kd(
            hidden: FloatTensor<Self>,
            head: FloatTensor<Self>,
            precision: Precision,
            job: LinearKd<B>,
        ) -> FloatTensor<Self> {
            let nodes = [hidden.node.clone(), head.node.clone()];
            let (hidden, head) = (tensor(hidden.primitive), tensor(head.primitive));
            match LinearKdBackward
                .prepare::<C>(nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    // An untracked parent's gradient is made and dropped:
                    // in training both the states and the head train.
                    let both = Wanted {
                        x: true,
                        weight: true,
                    };
                    let (loss, dh, dw) = loss_and_grads(hidden, head, precision, &job, both);
                    prep.finish((dh.map(float), dw.map(float)), float(loss))
                }
                OpsKind::UnTracked(prep) => {
                    let neither = Wanted {
                        x: false,
                        weight: false,
                    };
                    let (loss, _, _) = loss_and_grads(hidden, head, precision, &job, neither);
                    prep.finish(float(loss))
                }
            }
        }
    }
}
