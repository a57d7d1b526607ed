//! What a training step minimizes. Each objective turns a micro-batch into
//! a loss whose sum over the micro-batches of a global batch is the mean
//! over its target tokens (the weights in [`MicroBatch`] carry the 1/count).

use burn::backend::Autodiff;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::data::MicroBatch;
use crate::backend::ComputeBackend;
use crate::kernels::kd::{KdSpec, kd_loss};
use crate::model::Llama;

/// A loss over a micro-batch for the student under training.
pub trait Objective<B: ComputeBackend> {
    fn loss(&self, student: &Llama<Autodiff<B>>, batch: &MicroBatch<B>) -> Tensor<Autodiff<B>, 1>;
}

/// Weighted next-token cross-entropy of `logits` `[rows, seq, vocab]`:
/// `-sum_n w_n log p(target_n)`.
pub fn weighted_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    weights: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let [rows, seq, vocab] = logits.dims();
    let n = rows * seq;
    let log_probs = log_softmax(logits.reshape([n, vocab]), 1);
    let picked = log_probs.gather(1, targets.reshape([n, 1])).reshape([n]);
    (picked * weights).sum().neg()
}

/// Language-model cross-entropy: teacher correction and alignment.
pub struct CrossEntropy;

impl<B: ComputeBackend> Objective<B> for CrossEntropy {
    fn loss(&self, student: &Llama<Autodiff<B>>, batch: &MicroBatch<B>) -> Tensor<Autodiff<B>, 1> {
        let logits = student.forward(Tensor::from_inner(batch.inputs.clone()));
        weighted_cross_entropy(
            logits,
            Tensor::from_inner(batch.targets.clone()),
            Tensor::from_inner(batch.weights.clone()),
        )
    }
}

/// Knowledge distillation from a frozen teacher (run without autodiff), with
/// an optional cross-entropy term: `kd + ce_weight * ce`.
pub struct Distillation<B: ComputeBackend> {
    pub teacher: Llama<B>,
    pub spec: KdSpec,
    pub ce_weight: f64,
    /// Logit columns both models share: a teacher with a padded vocabulary
    /// is cut to the student's.
    pub vocab: usize,
}

impl<B: ComputeBackend> Objective<B> for Distillation<B> {
    fn loss(&self, student: &Llama<Autodiff<B>>, batch: &MicroBatch<B>) -> Tensor<Autodiff<B>, 1> {
        let teacher_logits = self.teacher.forward(batch.inputs.clone());
        let [rows, seq, teacher_vocab] = teacher_logits.dims();
        let n = rows * seq;
        let mut teacher_logits = teacher_logits.reshape([n, teacher_vocab]);
        if teacher_vocab != self.vocab {
            teacher_logits = teacher_logits.slice([0..n, 0..self.vocab]);
        }
        let student_logits = student.forward(Tensor::from_inner(batch.inputs.clone()));
        let student_vocab = student_logits.dims()[2];
        let mut student_flat = student_logits.clone().reshape([n, student_vocab]);
        if student_vocab != self.vocab {
            student_flat = student_flat.slice([0..n, 0..self.vocab]);
        }
        let weights = Tensor::from_inner(batch.weights.clone());
        let mut loss = kd_loss(
            student_flat,
            Tensor::from_inner(teacher_logits),
            weights.clone(),
            self.spec,
        );
        if self.ce_weight > 0.0 {
            let ce = weighted_cross_entropy(
                student_logits,
                Tensor::from_inner(batch.targets.clone()),
                weights,
            );
            loss = loss + ce.mul_scalar(self.ce_weight);
        }
        loss
    }
}
