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
//! The candidates of an item share its context: where that context is long
//! next to the candidates, their common leading tokens run through the
//! model once, into a key/value cache, and each candidate's remainder after
//! it. Other sequences are scored in batches, longest first. Batches are padded on the right (the attention is causal, so
//! padding after a sequence cannot change it), and only the positions that
//! predict continuation tokens go through the language-model head.

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
///
/// Consecutive requests that begin with the same tokens (the candidates of
/// one item, which share its context) are scored as a group when that at
/// least halves their tokens ([`Group::pays_off`]): the shared prefix goes
/// through the model once, into a key/value cache, and only each request's
/// remainder runs after it. The rest are batched longest first.
pub fn score_requests<B: ModelBackend>(
    model: &Llama<B>,
    requests: &[Request],
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Vec<Scored> {
    let mut out = vec![
        Scored {
            logprob: 0.0,
            greedy: false,
        };
        requests.len()
    ];
    let mut alone = Vec::new();
    for group in shared_prefix_groups(requests) {
        if !group.pays_off(requests) {
            alone.extend(group.members);
            continue;
        }
        for chunk in group.members.chunks(batch.max(1)) {
            score_after_prefix(model, requests, group.prefix, chunk, &mut out);
            done(chunk.len());
        }
    }
    score_batched(model, requests, &mut alone, batch, &mut out, done);
    out
}

/// Consecutive requests and the number of leading tokens they all share.
struct Group {
    members: Vec<usize>,
    /// Tokens every member begins with, short enough that each member's
    /// first predicting position (`input_len - continuation`) lies after
    /// it.
    prefix: usize,
}

impl Group {
    /// Whether sharing the prefix at least halves the tokens through the
    /// model: `(members - 1) * prefix >= prefix + remainders`. A group's
    /// passes are smaller than the batched path's (one sequence for the
    /// prefix, one item's candidates after it), and small passes use the
    /// CPU less well: on HellaSwag (contexts of about 30 tokens before
    /// four endings of about 25) grouping every item measured 6-11% fewer
    /// items/s than batching, while few-shot prompts of hundreds of tokens
    /// before short answers save most of their work.
    fn pays_off(&self, requests: &[Request]) -> bool {
        let remainders: usize = self
            .members
            .iter()
            .map(|&i| requests[i].input_len() - self.prefix)
            .sum();
        self.members.len() >= 2
            && (self.members.len() - 1) * self.prefix >= self.prefix + remainders
    }
}

/// The longest runs of consecutive requests sharing a prefix of at least
/// one token.
fn shared_prefix_groups(requests: &[Request]) -> Vec<Group> {
    // What a request may share: everything before its first predicting
    // position, which the remainder must include.
    let shareable = |r: &Request| r.input_len() - r.continuation;
    let mut groups: Vec<Group> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if let Some(g) = groups.last_mut() {
            let first = &requests[g.members[0]];
            let common = first
                .tokens
                .iter()
                .zip(&r.tokens)
                .take_while(|(a, b)| a == b)
                .count();
            let prefix = g.prefix.min(common).min(shareable(r));
            if prefix > 0 {
                g.prefix = prefix;
                g.members.push(i);
                continue;
            }
        }
        groups.push(Group {
            members: vec![i],
            prefix: shareable(r),
        });
    }
    groups
}

/// Scores `members`, which all begin with the same `prefix` tokens: the
/// prefix once into a cache, then the members' remainders as one batch.
fn score_after_prefix<B: ModelBackend>(
    model: &Llama<B>,
    requests: &[Request],
    prefix: usize,
    members: &[usize],
    out: &mut [Scored],
) {
    let device = model.device();
    let shared = &requests[members[0]].tokens[..prefix];
    let mut cache = model.new_cache();
    let _ = model.hidden_states_cached(tokens_tensor(&[shared], &device), &mut cache);
    let mut cache = cache.repeated(members.len());
    let width = members
        .iter()
        .map(|&i| requests[i].input_len() - prefix)
        .max()
        .unwrap_or(0);
    let rows: Vec<Vec<u32>> = members
        .iter()
        .map(|&i| {
            let r = &requests[i];
            let mut row = r.tokens[prefix..r.input_len()].to_vec();
            row.resize(width, 0);
            row
        })
        .collect();
    let row_refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let hidden = model.hidden_states_cached(tokens_tensor(&row_refs, &device), &mut cache);
    score_positions(model, hidden, requests, members, prefix, out);
}

/// Scores `indices` (reordered longest first) in batches of `batch`, each
/// sequence padded on the right to its batch's longest.
fn score_batched<B: ModelBackend>(
    model: &Llama<B>,
    requests: &[Request],
    indices: &mut [usize],
    batch: usize,
    out: &mut [Scored],
    done: &mut dyn FnMut(usize),
) {
    let device = model.device();
    // Longest first: a batch holds similar lengths (little padding), and the
    // largest batch comes first, so running out of memory shows at once.
    indices.sort_by_key(|&i| std::cmp::Reverse(requests[i].input_len()));
    for chunk in indices.chunks(batch.max(1)) {
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
        let hidden = model.hidden_states(tokens_tensor(&row_refs, &device));
        score_positions(model, hidden, requests, chunk, 0, out);
        done(chunk.len());
    }
}

/// The continuation log-likelihoods of `members`, whose input tokens from
/// `offset` on are the rows of `hidden` (`[members, width, hidden]`, padded
/// on the right): only the positions that predict continuation tokens go
/// through the language-model head.
fn score_positions<B: ModelBackend>(
    model: &Llama<B>,
    hidden: Tensor<B, 3>,
    requests: &[Request],
    members: &[usize],
    offset: usize,
    out: &mut [Scored],
) {
    let device = model.device();
    let [b, width, d] = hidden.dims();
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (r, &i) in members.iter().enumerate() {
        let req = &requests[i];
        let len = req.input_len();
        for j in 0..req.continuation {
            positions.push((r * width + len - req.continuation + j - offset) as i64);
            targets.push(req.tokens[len + 1 - req.continuation + j] as i64);
        }
    }
    let n = positions.len();
    let picked_hidden = hidden.reshape([b * width, d]).select(
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
    for &i in members {
        let k = requests[i].continuation;
        out[i] = Scored {
            logprob: picked[at..at + k].iter().sum(),
            greedy: (at..at + k).all(|p| greedy[p] == targets[p]),
        };
        at += k;
    }
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

/// Each item's outcome, for paired comparisons between models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemOutcomes {
    /// Whether the item was answered right.
    pub acc: Vec<bool>,
    /// The same by `acc_norm`, for tasks that have it.
    pub acc_norm: Option<Vec<bool>>,
    /// The item's chance of being right by a uniform guess: one over its
    /// candidates (0 for greedy match, which has no guess).
    pub chance: Vec<f64>,
}

/// Each item's outcome from its candidates' scores (`scores[i][c]`).
/// `acc_norm` divides each log-likelihood by the byte length of the
/// continuation as the file gives it.
pub fn item_outcomes(kind: TaskKind, items: &[TaskItem], scores: &[Vec<Scored>]) -> ItemOutcomes {
    assert_eq!(items.len(), scores.len(), "one score list per item");
    let mut out = ItemOutcomes {
        acc_norm: kind.has_acc_norm().then(Vec::new),
        ..Default::default()
    };
    for (item, s) in items.iter().zip(scores) {
        match kind {
            TaskKind::Greedy => {
                out.acc.push(s[0].greedy);
                out.chance.push(0.0);
            }
            TaskKind::MultipleChoice | TaskKind::Partial => {
                out.acc
                    .push(argmax(s.iter().map(|x| x.logprob)) == item.gold);
                let norm = argmax(
                    s.iter()
                        .zip(&item.candidates)
                        .map(|(x, c)| x.logprob / c.continuation.len() as f64),
                );
                if let Some(acc_norm) = &mut out.acc_norm {
                    acc_norm.push(norm == item.gold);
                }
                out.chance.push(1.0 / item.candidates.len().max(1) as f64);
            }
        }
    }
    out
}

/// The metrics of `items` from their outcomes.
pub fn task_scores(kind: TaskKind, outcomes: &ItemOutcomes) -> TaskScores {
    let n = outcomes.acc.len();
    let share = |right: &[bool]| right.iter().filter(|&&r| r).count() as f64 / n.max(1) as f64;
    let acc = share(&outcomes.acc);
    let acc_norm = outcomes.acc_norm.as_deref().map_or(0.0, share);
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
    /// Each item's outcome (for paired comparisons; stored in `items.json`,
    /// not in the metrics).
    #[serde(skip)]
    pub outcomes: ItemOutcomes,
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
    let outcomes = item_outcomes(kind, items, &scores);
    Ok(TaskRun {
        scores: task_scores(kind, &outcomes),
        outcomes,
        sequences: requests.len(),
        tokens,
        seconds,
        items_per_s: items.len() as f64 / seconds.max(1e-9),
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tokens: &[u32], continuation: usize) -> Request {
        Request {
            tokens: tokens.to_vec(),
            continuation,
        }
    }

    #[test]
    fn groups_follow_shared_prefixes_and_pay_off_only_when_long() {
        let context: Vec<u32> = (1..=20).collect();
        let with = |tail: &[u32]| [context.as_slice(), tail].concat();
        let requests = vec![
            request(&with(&[90, 91]), 2),
            request(&with(&[92]), 1),
            request(&with(&[93, 94, 95]), 3),
            request(&[7, 8, 9], 1),
            request(&[7, 8, 10], 1),
        ];
        let groups = shared_prefix_groups(&requests);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].members, vec![0, 1, 2]);
        // Everything before the first predicting position of each: the
        // context but its last token, whose position predicts the answer's
        // first.
        assert_eq!(groups[0].prefix, 19);
        assert!(groups[0].pays_off(&requests));
        assert_eq!(groups[1].members, vec![3, 4]);
        assert_eq!(groups[1].prefix, 1);
        assert!(!groups[1].pays_off(&requests));
    }
}
