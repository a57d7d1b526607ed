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
use burn::tensor::ops::FloatTensor;
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
}
