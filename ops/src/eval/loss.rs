//! Next-token cross-entropy of a model over token rows: the held-out loss
//! that perplexity, depth importance and training evaluations are made of.

use crate::model::{Llama, ModelBackend, tokens_tensor};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Summed negative log-likelihood (nats) and number of predicted tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NllSum {
    pub nll: f64,
    pub tokens: usize,
}

impl NllSum {
    pub fn add(&mut self, other: NllSum) {
        self.nll += other.nll;
        self.tokens += other.tokens;
    }

    /// Mean loss per predicted token.
    pub fn mean(&self) -> f64 {
        self.nll / self.tokens.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.mean().exp()
    }
}

/// Loss of predicting `row[t + 1]` from `row[..=t]`, for every row; rows are
/// processed `batch` at a time and must share one length.
pub fn next_token_nll<B: ModelBackend>(model: &Llama<B>, rows: &[&[u32]], batch: usize) -> NllSum {
    let device = model.device();
    let mut total = NllSum::default();
    for chunk in rows.chunks(batch.max(1)) {
        let seq = chunk[0].len();
        assert!(
            chunk.iter().all(|r| r.len() == seq),
            "rows of one batch share a length"
        );
        if seq < 2 {
            continue;
        }
        let inputs: Vec<&[u32]> = chunk.iter().map(|r| &r[..seq - 1]).collect();
        let logits = model.forward(tokens_tensor(&inputs, &device));
        let targets: Vec<&[u32]> = chunk.iter().map(|r| &r[1..]).collect();
        total.add(nll_of_logits(logits, tokens_tensor(&targets, &device)));
    }
    total
}

/// Each row's loss of predicting `row[t + 1]` from `row[..=t]` (as
/// [`next_token_nll`] sums them), for paired comparisons over rows: rows
/// are processed `batch` at a time and must share one length. Each
/// position's NLL is read back and summed in f64.
pub fn next_token_nll_rows<B: ModelBackend>(
    model: &Llama<B>,
    rows: &[&[u32]],
    batch: usize,
) -> Vec<NllSum> {
    let device = model.device();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch.max(1)) {
        let seq = chunk[0].len();
        assert!(
            chunk.iter().all(|r| r.len() == seq),
            "rows of one batch share a length"
        );
        if seq < 2 {
            out.extend(chunk.iter().map(|_| NllSum::default()));
            continue;
        }
        let inputs: Vec<&[u32]> = chunk.iter().map(|r| &r[..seq - 1]).collect();
        let logits = model.forward(tokens_tensor(&inputs, &device));
        let targets: Vec<&[u32]> = chunk.iter().map(|r| &r[1..]).collect();
        let nll = nll_per_position(logits, tokens_tensor(&targets, &device));
        out.extend(nll.chunks(seq - 1).map(|row| NllSum {
            nll: row.iter().sum(),
            tokens: row.len(),
        }));
    }
    out
}

/// `logits: [batch, seq, vocab]`, `targets: [batch, seq]` -> each
/// position's NLL, row-major.
pub fn nll_per_position<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Vec<f64> {
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs.gather(2, targets.unsqueeze_dim(2));
    picked
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("float logits")
        .into_iter()
        .map(|x| -x)
        .collect()
}

/// `logits: [batch, seq, vocab]`, `targets: [batch, seq]` -> summed NLL.
pub fn nll_of_logits<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> NllSum {
    let [batch, seq, _] = logits.dims();
    let log_probs = log_softmax(logits, 2);
    let picked = log_probs.gather(2, targets.unsqueeze_dim(2));
    let nll = -picked.sum().into_scalar().to_f64();
    NllSum {
        nll,
        tokens: batch * seq,
    }
}

trait ToF64 {
    fn to_f64(self) -> f64;
}

impl<E: burn::tensor::ElementConversion> ToF64 for E {
    fn to_f64(self) -> f64 {
        self.elem::<f64>()
    }
}
