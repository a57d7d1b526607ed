//! The fused knowledge-distillation loss (METHOD.md 7.1) as a Burn backend
//! extension ([`KdOps`]).
//!
//! For each row `n` (one token position) with student logits `s[n, :]` and
//! teacher logits `t[n, :]` over a vocabulary of `V`, at temperature `tau`:
//! `p = softmax(s / tau)`, `q = softmax(t / tau)`, and
//! - forward KL: `L_n = KL(q || p) = sum_v q (log q - log p)`, gradient with
//!   respect to `s`: `(p - q) / tau`;
//! - reverse KL: `L_n = KL(p || q)`, gradient `p (log p - log q - L_n) / tau`;
//! - JSD(beta): with `m = beta q + (1 - beta) p`,
//!   `L_n = beta KL(q || m) + (1 - beta) KL(p || m)`, gradient
//!   `(1 - beta) p (log(p / m) - KL(p || m)) / tau`.
//!
//! Rows carry weights `w[n]` (0 for masked tokens, `1 / count` for a token
//! mean): the op returns `loss = sum_n w[n] L_n` (times `tau^2` when
//! [`KdSpec::tau_squared`]) and the gradient of that loss with respect to the
//! student logits, `[N, V]` f32. The backward only scales that gradient by the
//! upstream one, so nothing else of size `N x V` is ever allocated. Inputs may
//! be any float dtype; everything accumulates in f32 (f64 in the CPU twin's
//! per-row sums).

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Shape, Tensor, TensorPrimitive};
use serde::{Deserialize, Serialize};

/// Which divergence between the teacher's and the student's distributions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KdLoss {
    /// `KL(teacher || student)`: the paper's choice.
    ForwardKl,
    /// `KL(student || teacher)`.
    ReverseKl,
    /// Generalized Jensen-Shannon divergence with mixture
    /// `m = beta teacher + (1 - beta) student`:
    /// `beta KL(teacher || m) + (1 - beta) KL(student || m)`;
    /// beta in (0, 1), 0.5 is the symmetric JSD.
    Jsd { beta: f32 },
}

/// The loss, its temperature, and whether the loss is multiplied by
/// `tau^2` (Hinton's scaling, which keeps gradient magnitudes comparable
/// across temperatures; ModelOpt's logits loss does not apply it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdSpec {
    pub loss: KdLoss,
    pub temperature: f32,
    pub tau_squared: bool,
}

impl KdSpec {
    /// The factor applied to the sum of row losses (and their gradient).
    pub fn scale(&self) -> f32 {
        if self.tau_squared {
            self.temperature * self.temperature
        } else {
            1.0
        }
    }

    /// Checks what the op assumes: a finite temperature above 0 and, for
    /// JSD, beta strictly between 0 and 1.
    pub fn validate(&self) -> Result<(), String> {
        let tau = self.temperature;
        if !(tau.is_finite() && tau > 0.0) {
            return Err(format!(
                "the temperature must be finite and above 0, found {tau}"
            ));
        }
        if let KdLoss::Jsd { beta } = self.loss
            && !(beta > 0.0 && beta < 1.0)
        {
            return Err(format!("JSD's beta must lie in (0, 1), found {beta}"));
        }
        Ok(())
    }
}

/// The fused KD loss as a backend extension.
pub trait KdOps: Backend {
    /// `student`, `teacher`: `[N, V]` logits of one shape (any float dtype);
    /// `weights`: `[N]` f32, non-negative. Returns `(loss, grad)`: `loss`
    /// `[1]` f32 as in the module docs, `grad` `[N, V]` f32, its gradient
    /// with respect to `student` (zero on rows of weight 0).
    fn kd_loss_fused(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        spec: KdSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The KD loss against a sparse teacher (see [`kd_loss_sparse`]):
    /// `student` `[N, V]` logits (any float dtype); `ids` `[N, K]` kept
    /// token ids, ascending and distinct in each row, below `V`;
    /// `log_probs` `[N, K]` f32, the teacher's log-probabilities of those
    /// tokens at the spec's temperature; `log_tail` `[N]` f32, the log of
    /// the teacher's mass on every other token (`-inf` when there is none);
    /// `weights` `[N]` f32. Returns `(loss, grad)` as
    /// [`KdOps::kd_loss_fused`] does.
    fn kd_loss_sparse_fused(
        student: FloatTensor<Self>,
        ids: IntTensor<Self>,
        log_probs: FloatTensor<Self>,
        log_tail: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        spec: KdSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The whole backward: `grad` (from [`KdOps::kd_loss_fused`]) times
    /// `upstream`, the `[1]` f32 gradient of the loss, broadcast.
    fn kd_scale_grad(grad: FloatTensor<Self>, upstream: FloatTensor<Self>) -> FloatTensor<Self> {
        let upstream = Self::float_reshape(upstream, Shape::new([1, 1]));
        Self::float_mul(grad, upstream)
    }
}

/// The KD loss of `student` against `teacher` logits (`[N, V]` each, any
/// float dtype), rows weighted by `weights` (`[N]`): a `[1]` f32 tensor, see
/// the module docs. Under `Autodiff` its gradient flows to `student` only.
///
/// Panics when the shapes disagree, the vocabulary is empty, or `spec` is
/// invalid ([`KdSpec::validate`]).
pub fn kd_loss<B: KdOps>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    weights: Tensor<B, 1>,
    spec: KdSpec,
) -> Tensor<B, 1> {
    let [rows, vocab] = student.dims();
    assert_eq!(
        teacher.dims(),
        [rows, vocab],
        "KD loss: teacher logits {:?} do not match the student's {:?}",
        teacher.dims(),
        [rows, vocab]
    );
    assert_eq!(
        weights.dims(),
        [rows],
        "KD loss: {:?} weights for {rows} rows of logits (one per row expected)",
        weights.dims()
    );
    assert!(vocab > 0, "KD loss: logits over an empty vocabulary");
    if let Err(e) = spec.validate() {
        panic!("KD loss: {e}");
    }
    let (loss, _grad) = B::kd_loss_fused(
        student.into_primitive().tensor(),
        teacher.into_primitive().tensor(),
        weights.into_primitive().tensor(),
        spec,
    );
    Tensor::from_primitive(TensorPrimitive::Float(loss))
}

/// A teacher distribution kept sparse, as `teacher_logits` stores it: for
/// each of `N` positions, `K` token ids (ascending), their log-probabilities
/// at the distillation temperature, and the log of the mass left on every
/// other token.
pub struct SparseTeacher<B: Backend> {
    /// `[N, K]`, ascending and distinct in each row.
    pub ids: Tensor<B, 2, Int>,
    /// `[N, K]` f32: `ln q` of each kept token.
    pub log_probs: Tensor<B, 2>,
    /// `[N]` f32: `ln (1 - sum of the kept q)`, computed without that
    /// subtraction; `-inf` when the kept tokens are the whole vocabulary.
    pub log_tail: Tensor<B, 1>,
}

/// The KD loss of `student` logits (`[N, V]`) against a sparse teacher.
///
/// The teacher is known on `K` kept tokens per position plus the total mass
/// of the rest (its tail). The loss is the chosen divergence between the
/// two distributions coarsened to `K + 1` buckets: each kept token, and one
/// bucket for the tail holding the teacher's tail mass and the student's
/// own mass on those tokens. This treats the tail the only way that needs
/// no guess about how the teacher spreads it: for forward KL it equals
/// `KL(q~ || p)` where `q~` spreads the teacher's tail mass like the
/// student does, so the tail tokens' gradient is `p_v (1 - q_tail /
/// p_tail) / tau`, and every kept token's is `(p_v - q_v) / tau` as in
/// full KD. With `K = V` the tail is empty and the loss and gradient are
/// full KD's. The coarsened divergence never exceeds the full one (the
/// data-processing inequality), so top-K KD under-weights the teacher's
/// preferences inside its tail, and only those.
///
/// Rows are weighted as in [`kd_loss`]; under `Autodiff` the gradient flows
/// to `student` only. Panics when the shapes disagree or `spec` is invalid.
pub fn kd_loss_sparse<B: KdOps>(
    student: Tensor<B, 2>,
    teacher: SparseTeacher<B>,
    weights: Tensor<B, 1>,
    spec: KdSpec,
) -> Tensor<B, 1> {
    let [rows, vocab] = student.dims();
    let [id_rows, kept] = teacher.ids.dims();
    assert_eq!(
        (id_rows, teacher.log_probs.dims(), teacher.log_tail.dims()),
        (rows, [rows, kept], [rows]),
        "sparse KD loss: the teacher's ids, log-probabilities and tails do not cover the student's {rows} rows alike"
    );
    assert!(
        kept <= vocab,
        "sparse KD loss: {kept} kept tokens over a vocabulary of {vocab}"
    );
    assert_eq!(
        weights.dims(),
        [rows],
        "sparse KD loss: {:?} weights for {rows} rows of logits",
        weights.dims()
    );
    if let Err(e) = spec.validate() {
        panic!("sparse KD loss: {e}");
    }
    let (loss, _grad) = B::kd_loss_sparse_fused(
        student.into_primitive().tensor(),
        teacher.ids.into_primitive(),
        teacher.log_probs.into_primitive().tensor(),
        teacher.log_tail.into_primitive().tensor(),
        weights.into_primitive().tensor(),
        spec,
    );
    Tensor::from_primitive(TensorPrimitive::Float(loss))
}

/// Under autodiff the loss runs on the inner backend; the student is
/// tracked, the teacher and the weights are not. The gradient the forward
/// computed is kept as the op's state, and the backward only scales it by
/// the upstream gradient.
mod on_autodiff {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::tensor::backend::AutodiffBackend;

    /// The loss `[1]` and its gradient with respect to the student.
    type LossAndGrad<B> = (FloatTensor<B>, FloatTensor<B>);

    #[derive(Debug)]
    struct KdBackward;

    impl<B: KdOps> Backward<B, 1> for KdBackward {
        type State = FloatTensor<B>;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = ops.state;
            unary::<B, _>(ops.parents, ops.node, grads, |upstream| {
                B::kd_scale_grad(grad, upstream)
            });
        }
    }

    impl<B: KdOps, C: CheckpointStrategy> KdOps for Autodiff<B, C> {
        fn kd_loss_fused(
            student: FloatTensor<Self>,
            teacher: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            spec: KdSpec,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (teacher, weights) = (Self::inner(teacher), Self::inner(weights));
            tracked::<B, C>(student, |s| B::kd_loss_fused(s, teacher, weights, spec))
        }

        fn kd_loss_sparse_fused(
            student: FloatTensor<Self>,
            ids: IntTensor<Self>,
            log_probs: FloatTensor<Self>,
            log_tail: FloatTensor<Self>,
            weights: FloatTensor<Self>,
            spec: KdSpec,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (log_probs, log_tail) = (Self::inner(log_probs), Self::inner(log_tail));
            let weights = Self::inner(weights);
            tracked::<B, C>(student, |s| {
                B::kd_loss_sparse_fused(s, ids, log_probs, log_tail, weights, spec)
            })
        }
    }

    /// `loss_and_grad` of the student's inner tensor, the loss tracked as a
    /// node of the student's whose backward scales the gradient the forward
    /// computed. Computing that gradient is the forward itself: nothing to
    /// recompute, so the op is compute bound and never checkpointed.
    fn tracked<B: KdOps, C: CheckpointStrategy>(
        student: FloatTensor<Autodiff<B, C>>,
        loss_and_grad: impl FnOnce(FloatTensor<B>) -> LossAndGrad<B>,
    ) -> LossAndGrad<Autodiff<B, C>> {
        let node = student.node.clone();
        let (loss, grad) = loss_and_grad(student.primitive);
        let loss = match KdBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(grad.clone(), loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        (loss, Autodiff::<B, C>::from_inner(grad))
    }
}
