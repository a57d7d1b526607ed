//! Perplexity and bits per byte of a raw text file, by the method of the
//! reference figures (`scripts/ppl.py` of the development assets): the text
//! is tokenized whole, with no BOS unless the tokenizer adds one, and cut
//! into non-overlapping windows of `seq_len` tokens (the last, partial one
//! dropped); each window is scored on its own, so every window's first token
//! is context only. Perplexity is `exp` of the mean NLL over the predicted
//! tokens; bits per byte divide the NLL in bits by the UTF-8 bytes of the
//! predicted tokens' decoded text.

use super::loss::{NllSum, nll_per_position};
use super::tokenize::EvalTokenizer;
use crate::model::{Llama, ModelBackend, tokens_tensor};
use crate::text::open_text;
use anyhow::{Context, Result, bail};
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::time::Instant;

/// A text cut into windows of token ids.
#[derive(Debug, Clone)]
pub struct TextWindows {
    pub windows: Vec<Vec<u32>>,
    /// UTF-8 bytes of the predicted tokens (all but each window's first).
    pub bytes: usize,
}

/// Reads a text file, zstd-compressed when its name ends in `.zst`.
pub fn read_text_file(path: &Path, label: &str) -> Result<String> {
    let mut text = String::new();
    open_text(path)
        .with_context(|| format!("cannot read {label}"))?
        .read_to_string(&mut text)
        .with_context(|| format!("{label} is not readable UTF-8 text"))?;
    Ok(text)
}

/// At most `max_windows` (all when `None`) windows of `seq_len` tokens
/// from the start of `text`.
pub fn text_windows(
    tok: &EvalTokenizer,
    text: &str,
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<TextWindows> {
    if seq_len < 2 {
        bail!("windows need at least 2 tokens, `seq_len` is {seq_len}");
    }
    let encode = |text: &str| -> Result<Vec<u32>> {
        let mut ids = tok.prefix().to_vec();
        ids.extend(tok.encode(text)?);
        Ok(ids)
    };
    // Only the start of a long text is needed. The reference tokenizes the
    // first `seq_len * windows * 8` characters (8 is above any tokenizer's
    // characters per token on prose), which also fixes how the token at the
    // cut is split; when the cut holds too few windows, the whole text is used.
    let mut ids = match max_windows {
        Some(w) => {
            let limit = seq_len.saturating_mul(w).saturating_mul(8);
            match text.char_indices().nth(limit) {
                Some((cut, _)) => {
                    let ids = encode(&text[..cut])?;
                    if ids.len() / seq_len >= w {
                        ids
                    } else {
                        encode(text)?
                    }
                }
                None => encode(text)?,
            }
        }
        None => encode(text)?,
    };
    let count = (ids.len() / seq_len).min(max_windows.unwrap_or(usize::MAX));
    ids.truncate(count * seq_len);
    let windows: Vec<Vec<u32>> = ids.chunks(seq_len).map(<[u32]>::to_vec).collect();
    let mut bytes = 0;
    for w in &windows {
        bytes += tok.decode(&w[1..])?.len();
    }
    Ok(TextWindows { windows, bytes })
}

/// Positions whose logits are formed at once. The whole batch's logits
/// (`windows x seq_len x vocab`, 400 MB for 4 windows of 512 tokens with
/// SmolLM2's vocabulary) would be written and read several times by the
/// log-softmax; slices of this many rows stay small while keeping the
/// head's matrix product efficient.
const HEAD_ROWS: usize = 128;

/// Each row's summed NLL of `rows[t + 1]` given `rows[..=t]`, rows of one
/// length (positions' NLLs read back and summed in f64).
fn windows_nll<B: ModelBackend>(model: &Llama<B>, rows: &[&[u32]]) -> Vec<NllSum> {
    let device = model.device();
    let seq = rows[0].len();
    let inputs: Vec<&[u32]> = rows.iter().map(|r| &r[..seq - 1]).collect();
    let hidden = model.hidden_states(tokens_tensor(&inputs, &device));
    let [b, s, d] = hidden.dims();
    let flat = hidden.reshape([b * s, d]);
    let targets: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[1..].iter().map(|&t| t as i64))
        .collect();
    let mut per_row = vec![NllSum::default(); b];
    for start in (0..b * s).step_by(HEAD_ROWS) {
        let n = HEAD_ROWS.min(b * s - start);
        let logits = model.logits(flat.clone().narrow(0, start, n).reshape([1, n, d]));
        let target = Tensor::<B, 2, Int>::from_data(
            TensorData::new(targets[start..start + n].to_vec(), [1, n]),
            &device,
        );
        // A slice of positions may span rows: each goes to its own.
        for (i, nll) in nll_per_position(logits, target).into_iter().enumerate() {
            let row = &mut per_row[(start + i) / s];
            row.nll += nll;
            row.tokens += 1;
        }
    }
    per_row
}

/// A text's scores and what scoring it cost.
#[derive(Debug, Clone, Serialize)]
pub struct TextRun {
    pub windows: usize,
    pub seq_len: usize,
    /// Tokens predicted (scored).
    pub tokens: usize,
    pub bytes: usize,
    /// Mean NLL per predicted token, in nats.
    pub loss: f64,
    pub ppl: f64,
    pub bits_per_byte: f64,
    pub seconds: f64,
    /// Tokens through the model per second.
    pub tokens_per_s: f64,
    /// Each window's NLL, in order (for paired comparisons; stored in
    /// `items.json`, not in the metrics).
    #[serde(skip)]
    pub per_window: Vec<NllSum>,
}

/// Scores the windows, `batch` per forward pass; `done` hears how many
/// windows each pass finished.
pub fn run_text<B: ModelBackend>(
    model: &Llama<B>,
    text: &TextWindows,
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Result<TextRun> {
    if text.windows.is_empty() {
        bail!("the text is shorter than one window");
    }
    let started = Instant::now();
    let mut per_window = Vec::with_capacity(text.windows.len());
    for chunk in text.windows.chunks(batch.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        per_window.extend(windows_nll(model, &rows));
        done(chunk.len());
    }
    let mut total = NllSum::default();
    for w in &per_window {
        total.add(*w);
    }
    let seconds = started.elapsed().as_secs_f64();
    let seq_len = text.windows[0].len();
    Ok(TextRun {
        windows: text.windows.len(),
        seq_len,
        tokens: total.tokens,
        bytes: text.bytes,
        loss: total.mean(),
        ppl: total.perplexity(),
        bits_per_byte: total.nll / std::f64::consts::LN_2 / text.bytes.max(1) as f64,
        seconds,
        tokens_per_s: (text.windows.len() * (seq_len - 1)) as f64 / seconds.max(1e-9),
        per_window,
    })
}
