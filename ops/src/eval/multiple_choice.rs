//! Log-likelihood scoring of benchmark items, as lm-eval-harness does it.
//!
//! Each candidate (context, continuation) becomes one sequence: the context
//! and the context followed by the continuation are encoded, and the
//! continuation's tokens are what the second has beyond the first
//! (whitespace at the end of the context moves to the continuation first).
//! The tokenizer's own prefix (a BOS, if it adds one) leads; an empty context
//! is the BOS or end-of-text token alone. Sequences longer than the model's
//! context keep their last tokens.
//!
//! Sequences are scored in batches, longest first, padded on the right (the
//! attention is causal, so padding after a sequence cannot change it), and
//! only the positions that predict continuation tokens go through the
//! language-model head.

use super::tasks::{TaskItem, TaskKind};
use super::tokenize::EvalTokenizer;
use crate::model::{Llama, ModelBackend, tokens_tensor};
use anyhow::{Result, bail};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use std::time::Instant;

/// One sequence to score: its tokens end with the continuation's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub tokens: Vec<u32>,
    /// How many of the last tokens are the continuation (at least 1).
    pub continuation: usize,
}

impl Request {
    /// Tokens that go through the model (all but the last).
    pub fn input_len(&self) -> usize {
        self.tokens.len() - 1
    }
}

/// A continuation's log-likelihood and whether greedy decoding yields it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub logprob: f64,
    pub greedy: bool,
}

/// Encodes (context, continuation) pairs into requests of at most
/// `max_len` input tokens; `empty_context` is the token an empty context
/// becomes when the tokenizer adds no prefix.
pub fn encode_requests(
    tok: &EvalTokenizer,
    pairs: &[(&str, &str)],
    max_len: usize,
    empty_context: u32,
) -> Result<Vec<Request>> {
    let mut moved = Vec::with_capacity(pairs.len());
    for &(context, continuation) in pairs {
        let kept = context.trim_end();
        let continuation = format!("{}{continuation}", &context[kept.len()..]);
        moved.push((kept, continuation));
    }
    let mut texts: Vec<String> = Vec::with_capacity(2 * pairs.len());
    for (context, continuation) in &moved {
        texts.push(context.to_string());
        texts.push(format!("{context}{continuation}"));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = tok.encode_all(&refs)?;
    let prefix = tok.prefix();
    let mut requests = Vec::with_capacity(pairs.len());
    for (i, (context, continuation)) in moved.iter().enumerate() {
        let (context_ids, whole_ids) = (&ids[2 * i], &ids[2 * i + 1]);
        let (mut tokens, continuation_ids): (Vec<u32>, Vec<u32>) = if context.is_empty() {
            let start = if prefix.is_empty() {
                vec![empty_context]
            } else {
                prefix.to_vec()
            };
            (start, tok.encode(continuation)?)
        } else {
            let mut tokens = prefix.to_vec();
            tokens.extend_from_slice(context_ids);
            let cut = context_ids.len().min(whole_ids.len());
            (tokens, whole_ids[cut..].to_vec())
        };
        let n = continuation_ids.len();
        if n == 0 {
            bail!("the continuation {continuation:?} encodes to no tokens");
        }
        if n > max_len {
            bail!(
                "the continuation {continuation:?} has {n} tokens, more than the model's context ({max_len})"
            );
        }
        tokens.extend_from_slice(&continuation_ids);
        if tokens.len() > max_len + 1 {
            tokens.drain(..tokens.len() - (max_len + 1));
        }
        requests.push(Request {
            tokens,
            continuation: n,
        });
    }
    Ok(requests)
}

/// Scores every request, `batch` sequences per forward pass; `done` hears
/// how many requests each pass finished.
pub fn score_requests<B: ModelBackend>(
    model: &Llama<B>,
    requests: &[Request],
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Vec<Scored> {
    let device = model.device();
    let mut order: Vec<usize> = (0..requests.len()).collect();
    // Longest first: a batch holds similar lengths (little padding), and the
    // largest batch comes first, so running out of memory shows at once.
    order.sort_by_key(|&i| std::cmp::Reverse(requests[i].input_len()));
    let mut out = vec![
        Scored {
            logprob: 0.0,
            greedy: false,
        };
        requests.len()
    ];
    for chunk in order.chunks(batch.max(1)) {
        let width = requests[chunk[0]].input_len();
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&i| {
                let r = &requests[i];
                let mut row = r.tokens[..r.input_len()].to_vec();
                row.resize(width, 0);
                row
            })
            .collect();
        let row_refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        for (r, &i) in chunk.iter().enumerate() {
            let req = &requests[i];
            let len = req.input_len();
            for j in 0..req.continuation {
                positions.push((r * width + len - req.continuation + j) as i64);
                targets.push(req.tokens[len + 1 - req.continuation + j] as i64);
            }
        }
        let n = positions.len();
        let hidden = model.hidden_states(tokens_tensor(&row_refs, &device));
        let [b, s, d] = hidden.dims();
        let picked_hidden = hidden.reshape([b * s, d]).select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), &device),
        );
        let log_probs = log_softmax(model.logits(picked_hidden.reshape([1, n, d])), 2);
        let greedy: Vec<i64> = log_probs
            .clone()
            .argmax(2)
            .into_data()
            .iter::<i64>()
            .collect();
        let target_tensor =
            Tensor::<B, 3, Int>::from_data(TensorData::new(targets.clone(), [1, n, 1]), &device);
        let picked: Vec<f64> = log_probs
            .gather(2, target_tensor)
            .into_data()
            .iter::<f64>()
            .collect();
        let mut at = 0;
        for &i in chunk {
            let k = requests[i].continuation;
            out[i] = Scored {
                logprob: picked[at..at + k].iter().sum(),
                greedy: (at..at + k).all(|p| greedy[p] == targets[p]),
            };
            at += k;
        }
        done(chunk.len());
    }
    out
}

/// Accuracies over a task's items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TaskScores {
    pub n: usize,
    pub acc: f64,
    /// `sqrt(acc (1 - acc) / (n - 1))`, the standard error of the mean of
    /// 0/1 outcomes as lm-eval-harness reports it; absent for one item.
    pub acc_stderr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
}

/// The standard error of a proportion `p` over `n` 0/1 outcomes, with the
/// sample (n - 1) variance.
pub fn stderr(p: f64, n: usize) -> Option<f64> {
    (n >= 2).then(|| (p * (1.0 - p) / (n as f64 - 1.0)).max(0.0).sqrt())
}

/// Index of the largest value; the first on ties (as `numpy.argmax`).
fn argmax(values: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.into_iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// The metrics of `items` from their candidates' scores (`scores[i][c]`).
/// `acc_norm` divides each log-likelihood by the byte length of the
/// continuation as the file gives it.
pub fn task_scores(kind: TaskKind, items: &[TaskItem], scores: &[Vec<Scored>]) -> TaskScores {
    assert_eq!(items.len(), scores.len(), "one score list per item");
    let n = items.len();
    let mut right = 0usize;
    let mut right_norm = 0usize;
    for (item, s) in items.iter().zip(scores) {
        match kind {
            TaskKind::Greedy => right += usize::from(s[0].greedy),
            TaskKind::MultipleChoice | TaskKind::Partial => {
                right += usize::from(argmax(s.iter().map(|x| x.logprob)) == item.gold);
                let norm = argmax(
                    s.iter()
                        .zip(&item.candidates)
                        .map(|(x, c)| x.logprob / c.continuation.len() as f64),
                );
                right_norm += usize::from(norm == item.gold);
            }
        }
    }
    let share = |k: usize| k as f64 / n.max(1) as f64;
    let (acc, acc_norm) = (share(right), share(right_norm));
    let norm = kind.has_acc_norm();
    TaskScores {
        n,
        acc,
        acc_stderr: stderr(acc, n),
        acc_norm: norm.then_some(acc_norm),
        acc_norm_stderr: if norm { stderr(acc_norm, n) } else { None },
    }
}

/// A task's scores and what scoring it cost.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRun {
    #[serde(flatten)]
    pub scores: TaskScores,
    /// Sequences scored (one per candidate).
    pub sequences: usize,
    /// Tokens through the model, padding left out.
    pub tokens: usize,
    pub seconds: f64,
    pub items_per_s: f64,
    pub tokens_per_s: f64,
}

/// Where a task's candidates are scored.
pub struct ScoringSetup<'a> {
    pub tokenizer: &'a EvalTokenizer,
    /// Put between context and continuation (lm-eval's target delimiter).
    pub delimiter: &'a str,
    /// Sequences per forward pass.
    pub batch: usize,
    /// The model's context, in tokens.
    pub max_len: usize,
    /// What an empty context becomes (see [`encode_requests`]).
    pub empty_context: u32,
}

/// Encodes and scores every candidate of `items`; `done` hears how many
/// sequences each forward pass finished.
pub fn run_task<B: ModelBackend>(
    model: &Llama<B>,
    kind: TaskKind,
    items: &[TaskItem],
    setup: &ScoringSetup,
    done: &mut dyn FnMut(usize),
) -> Result<TaskRun> {
    let started = Instant::now();
    let continuations: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            item.candidates
                .iter()
                .map(|c| format!("{}{}", setup.delimiter, c.continuation))
                .collect()
        })
        .collect();
    let pairs: Vec<(&str, &str)> = items
        .iter()
        .zip(&continuations)
        .flat_map(|(item, conts)| {
            item.candidates
                .iter()
                .zip(conts)
                .map(|(c, cont)| (c.context.as_str(), cont.as_str()))
        })
        .collect();
    let requests = encode_requests(setup.tokenizer, &pairs, setup.max_len, setup.empty_context)?;
    let flat = score_requests(model, &requests, setup.batch, done);
    let mut scores = Vec::with_capacity(items.len());
    let mut at = 0;
    for item in items {
        scores.push(flat[at..at + item.candidates.len()].to_vec());
        at += item.candidates.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = requests.iter().map(Request::input_len).sum();
    Ok(TaskRun {
        scores: task_scores(kind, items, &scores),
        sequences: requests.len(),
        tokens,
        seconds,
        items_per_s: items.len() as f64 / seconds.max(1e-9),
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
    })
}
