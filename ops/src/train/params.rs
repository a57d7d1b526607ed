//! The `train:` block every training op shares: budget, batch, optimizer,
//! schedule, evaluation and checkpoint cadence.

use crate::kernels::Precision;
use distillery_engine::ParamIssue;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long and how a training stage trains. Defaults follow METHOD.md 7.2
/// (AdamW with betas 0.9/0.95, weight decay 0.1 on matrices, warmup then
/// cosine decay to `min_lr`, clipping at 1.0), scaled to small models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Budget in training tokens (input positions), rounded up to whole
    /// optimizer steps. Give `tokens` or `steps`.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Budget in optimizer steps. Give `tokens` or `steps`.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Global batch in tokens per optimizer step, rounded up to whole rows.
    /// Give `batch_tokens` or `batch_rows` (default: 8 rows).
    #[serde(default)]
    pub batch_tokens: Option<u64>,
    /// Global batch in rows per optimizer step.
    #[serde(default)]
    pub batch_rows: Option<u64>,
    /// Rows per forward/backward pass; gradients accumulate over
    /// `batch_rows / micro_batch` passes. Memory grows with it, not the
    /// result.
    #[serde(default = "default_micro_batch")]
    pub micro_batch: usize,
    /// Tokens per row: rows are cut to this length (default: the
    /// dataset's).
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Learning rate at the end of the cosine decay.
    #[serde(default = "default_min_lr")]
    pub min_lr: f64,
    /// Steps of linear warmup from 0 to `lr`.
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
    /// Decoupled weight decay, applied to matrices (embeddings and
    /// projections) only, never to norms or biases.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// AdamW's `beta1`, `beta2`.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW's `epsilon`.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this (0 turns clipping off).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// Evaluate the held-out loss every this many steps (and at the end);
    /// 0 evaluates only at the start and the end.
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Held-out rows per evaluation (the first rows of the held-out split,
    /// the same at every evaluation).
    #[serde(default = "default_eval_rows")]
    pub eval_rows: usize,
    /// Write a checkpoint every this many steps (0: only when interrupted).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// The arithmetic of the matrix products (the model's and, in
    /// `distill`, its live teacher's): `f32`, or `bf16` where the CPU has
    /// AMX tiles or on CUDA, with f32 sums: the trained model's operands rounded once,
    /// as mixed-precision training does (on CUDA the MLP's gate and up are
    /// also written in bf16, as PyTorch's autocast writes them), the teacher's activations in two
    /// bf16 parts, as inference carries them. f32 on other devices, so a
    /// store shared across machines should not mix them. Norms, attention,
    /// the loss and the optimizer stay f32.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_micro_batch() -> usize {
    4
}
fn default_lr() -> f64 {
    1e-4
}
fn default_min_lr() -> f64 {
    1e-5
}
fn default_warmup() -> u64 {
    10
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_eval_every() -> u64 {
    50
}
fn default_eval_rows() -> usize {
    32
}
fn default_checkpoint_every() -> u64 {
    50
}

/// Rows per step when neither batch size is given.
pub const DEFAULT_BATCH_ROWS: u64 = 8;

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            tokens: None,
            steps: Some(100),
            batch_tokens: None,
            batch_rows: None,
            micro_batch: default_micro_batch(),
            seq_len: None,
            lr: default_lr(),
            min_lr: default_min_lr(),
            warmup_steps: default_warmup(),
            weight_decay: default_weight_decay(),
            betas: default_betas(),
            eps: default_eps(),
            grad_clip: default_grad_clip(),
            eval_every: default_eval_every(),
            eval_rows: default_eval_rows(),
            checkpoint_every: default_checkpoint_every(),
            precision: Precision::F32,
        }
    }
}

/// The budget and batch once the row length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub seq_len: usize,
    pub batch_rows: u64,
    pub micro_batch: usize,
    pub steps: u64,
}

impl TrainParams {
    /// Plan-time checks; `at` is the path of this block inside `with`.
    pub fn check(&self, at: &[&str]) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        let mut issue = |field: &str, message: String| {
            let mut path: Vec<&str> = at.to_vec();
            path.push(field);
            issues.push(ParamIssue::at(&path, message));
        };
        match (self.tokens, self.steps) {
            (Some(_), Some(_)) => issue("steps", "give `tokens` or `steps`, not both".into()),
            (None, None) => issue("tokens", "give a budget: `tokens` or `steps`".into()),
            (Some(0), _) => issue("tokens", "`tokens` must be at least 1".into()),
            (_, Some(0)) => issue("steps", "`steps` must be at least 1".into()),
            _ => {}
        }
        match (self.batch_tokens, self.batch_rows) {
            (Some(_), Some(_)) => issue(
                "batch_rows",
                "give `batch_tokens` or `batch_rows`, not both".into(),
            ),
            (Some(0), _) => issue("batch_tokens", "`batch_tokens` must be at least 1".into()),
            (_, Some(0)) => issue("batch_rows", "`batch_rows` must be at least 1".into()),
            _ => {}
        }
        if self.micro_batch == 0 {
            issue("micro_batch", "`micro_batch` must be at least 1".into());
        }
        if self.seq_len.is_some_and(|s| s < 2) {
            issue("seq_len", "`seq_len` must be at least 2".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            issue("lr", format!("`lr` must be positive, got {}", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            issue(
                "min_lr",
                format!(
                    "`min_lr` must be between 0 and `lr` ({}), got {}",
                    self.lr, self.min_lr
                ),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            issue("weight_decay", "`weight_decay` must be 0 or more".into());
        }
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                issue("betas", format!("beta{} must be in [0, 1), got {b}", i + 1));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            issue("eps", "`eps` must be positive".into());
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            issue(
                "grad_clip",
                "`grad_clip` must be 0 (off) or positive".into(),
            );
        }
        if self.eval_rows == 0 {
            issue("eval_rows", "`eval_rows` must be at least 1".into());
        }
        issues
    }

    /// Budget and batch for rows of `seq_len` tokens (`dataset_seq_len`
    /// unless the block cuts them shorter).
    pub fn resolve(&self, dataset_seq_len: usize) -> anyhow::Result<Resolved> {
        let seq_len = self.seq_len.unwrap_or(dataset_seq_len);
        if seq_len > dataset_seq_len {
            anyhow::bail!(
                "`train.seq_len` {seq_len} is longer than the dataset's rows ({dataset_seq_len})"
            );
        }
        let batch_rows = match (self.batch_tokens, self.batch_rows) {
            (Some(t), _) => t.div_ceil(seq_len as u64),
            (None, Some(r)) => r,
            (None, None) => DEFAULT_BATCH_ROWS,
        };
        let step_tokens = batch_rows * seq_len as u64;
        let steps = match (self.tokens, self.steps) {
            (Some(t), _) => t.div_ceil(step_tokens),
            (None, Some(s)) => s,
            (None, None) => anyhow::bail!("no budget: give `tokens` or `steps`"),
        };
        Ok(Resolved {
            seq_len,
            batch_rows,
            micro_batch: self.micro_batch.min(batch_rows as usize).max(1),
            steps,
        })
    }
}
