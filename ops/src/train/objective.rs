//! What a training step minimizes. Each objective turns a micro-batch into
//! a loss whose sum over the micro-batches of a global batch is the mean
//! over its target tokens (the weights in [`MicroBatch`] carry the 1/count).

use anyhow::Result;
use burn::backend::Autodiff;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::data::MicroBatch;
use crate::backend::ComputeBackend;
use crate::kernels::kd::{KdSpec, kd_loss, kd_loss_sparse};
use crate::kernels::linear_kd::{LinearKd, TeacherRows, linear_kd_loss};
use crate::kernels::matmul::inference_weight;
use crate::model::Llama;
use crate::teacher_logits::TeacherLogitsStore;
use crate::teacher_logits::batch::sparse_teacher;

/// A loss over a micro-batch for the student under training.
pub trait Objective<B: ComputeBackend> {
    fn loss(
        &self,
        student: &Llama<Autodiff<B>>,
        batch: &MicroBatch<B>,
    ) -> Result<Tensor<Autodiff<B>, 1>>;

    /// The training rows the objective can train on: rows `0..n` of the
    /// split, or `None` for all of them.
    fn rows_covered(&self) -> Option<usize> {
        None
    }
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
    fn loss(
        &self,
        student: &Llama<Autodiff<B>>,
        batch: &MicroBatch<B>,
    ) -> Result<Tensor<Autodiff<B>, 1>> {
        let logits = student.forward(Tensor::from_inner(batch.inputs.clone()));
        Ok(weighted_cross_entropy(
            logits,
            Tensor::from_inner(batch.targets.clone()),
            Tensor::from_inner(batch.weights.clone()),
        ))
    }
}

/// `kd + ce_weight * ce`, the cross-entropy of the student's own logits
/// `[rows, seq, vocab]` added only when its weight is above 0.
fn with_cross_entropy<B: ComputeBackend>(
    kd: Tensor<Autodiff<B>, 1>,
    ce_weight: f64,
    student_logits: Tensor<Autodiff<B>, 3>,
    batch: &MicroBatch<B>,
) -> Tensor<Autodiff<B>, 1> {
    if ce_weight <= 0.0 {
        return kd;
    }
    let ce = weighted_cross_entropy(
        student_logits,
        Tensor::from_inner(batch.targets.clone()),
        Tensor::from_inner(batch.weights.clone()),
    );
    kd + ce.mul_scalar(ce_weight)
}

/// The KD loss (plus `ce_weight` times the cross-entropy) of the student's
/// head on its final hidden states against `teacher`, `chunk_rows`
/// positions at a time ([`crate::kernels::linear_kd`]).
fn chunked<B: ComputeBackend>(
    student: &Llama<Autodiff<B>>,
    batch: &MicroBatch<B>,
    teacher: TeacherRows<B>,
    spec: KdSpec,
    vocab: usize,
    ce_weight: f64,
    chunk_rows: usize,
) -> Tensor<Autodiff<B>, 1> {
    let hidden = student.hidden_states(Tensor::from_inner(batch.inputs.clone()));
    let [rows, seq, width] = hidden.dims();
    let n = rows * seq;
    let job = LinearKd {
        teacher,
        weights: batch.weights.clone(),
        spec,
        vocab,
        cross_entropy: (ce_weight > 0.0).then(|| (ce_weight, batch.targets.clone().reshape([n]))),
        chunk_rows,
    };
    linear_kd_loss(
        hidden.reshape([n, width]),
        student.head_weight(),
        student.precision,
        job,
    )
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
    /// Run both heads and the loss this many positions at a time
    /// ([`crate::kernels::linear_kd`]); `None`: all at once.
    pub head_chunk_rows: Option<usize>,
}

impl<B: ComputeBackend> Objective<B> for Distillation<B> {
    fn loss(
        &self,
        student: &Llama<Autodiff<B>>,
        batch: &MicroBatch<B>,
    ) -> Result<Tensor<Autodiff<B>, 1>> {
        if let Some(chunk_rows) = self.head_chunk_rows {
            let hidden = self.teacher.hidden_states(batch.inputs.clone());
            let [rows, seq, width] = hidden.dims();
            let (precision, activations) = (self.teacher.precision, self.teacher.activations);
            let teacher = TeacherRows::Head {
                hidden: hidden.reshape([rows * seq, width]),
                // Rounded once for every chunk, where the products round
                // it (a tied head is held in f32).
                head: inference_weight(self.teacher.head_weight(), precision, activations),
                precision,
                activations,
            };
            return Ok(chunked(
                student,
                batch,
                teacher,
                self.spec,
                self.vocab,
                self.ce_weight,
                chunk_rows,
            ));
        }
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
        let kd = kd_loss(
            student_flat,
            Tensor::from_inner(teacher_logits),
            Tensor::from_inner(batch.weights.clone()),
            self.spec,
        );
        Ok(with_cross_entropy(
            kd,
            self.ce_weight,
            student_logits,
            batch,
        ))
    }
}

/// Knowledge distillation from a teacher's stored top-K logits
/// (`teacher_logits`), with the sparse KD loss
/// ([`crate::kernels::kd::kd_loss_sparse`]) and an optional cross-entropy
/// term. Trains on the rows the store covers.
pub struct StoredDistillation {
    pub store: TeacherLogitsStore,
    /// Its temperature is the store's.
    pub spec: KdSpec,
    pub ce_weight: f64,
    /// As in [`Distillation::head_chunk_rows`].
    pub head_chunk_rows: Option<usize>,
}

impl<B: ComputeBackend> Objective<B> for StoredDistillation {
    fn loss(
        &self,
        student: &Llama<Autodiff<B>>,
        batch: &MicroBatch<B>,
    ) -> Result<Tensor<Autodiff<B>, 1>> {
        let [_, positions] = batch.inputs.dims();
        let device = batch.inputs.device();
        if let Some(chunk_rows) = self.head_chunk_rows {
            let teacher = sparse_teacher::<B>(&self.store, &batch.rows, positions, &device)?;
            let vocab = student.config.vocab_size;
            let teacher = TeacherRows::Sparse(teacher);
            return Ok(chunked(
                student,
                batch,
                teacher,
                self.spec,
                vocab,
                self.ce_weight,
                chunk_rows,
            ));
        }
        let teacher = sparse_teacher::<Autodiff<B>>(&self.store, &batch.rows, positions, &device)?;
        let student_logits = student.forward(Tensor::from_inner(batch.inputs.clone()));
        let [rows, seq, vocab] = student_logits.dims();
        let kd = kd_loss_sparse(
            student_logits.clone().reshape([rows * seq, vocab]),
            teacher,
            Tensor::from_inner(batch.weights.clone()),
            self.spec,
        );
        Ok(with_cross_entropy(
            kd,
            self.ce_weight,
            student_logits,
            batch,
        ))
    }

    fn rows_covered(&self) -> Option<usize> {
        Some(self.store.header.rows)
    }
}
