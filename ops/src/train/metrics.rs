//! What a training run records about itself: `metrics.jsonl`, one line per
//! step and per held-out evaluation, written as the run goes (and cut back
//! to a checkpoint's step when a run resumes), and `training.json`, the
//! run's summary.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The metrics file, in the scratch directory while training and in the
/// output when done.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's summary in the output.
pub const TRAINING_FILE: &str = "training.json";

/// What a line of `metrics.jsonl` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsKind {
    /// A training step: its loss, learning rate, gradient norm, speed.
    Train,
    /// A held-out evaluation after `step` steps.
    Eval,
}

/// One line of `metrics.jsonl`: a training step (`kind: train`) or a
/// held-out evaluation (`kind: eval`, after `step` steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub kind: MetricsKind,
    pub step: u64,
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_ppl: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_tokens: Option<usize>,
}

/// Held-out cross-entropy at one point of the run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: u64,
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// `training.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub objective: String,
    pub steps: u64,
    pub tokens: u64,
    pub seq_len: usize,
    pub batch_rows: u64,
    pub micro_batch: usize,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    /// The step a checkpoint resumed from, if the run was interrupted.
    pub resumed_from: Option<u64>,
    pub first_eval: Option<EvalPoint>,
    pub last_eval: Option<EvalPoint>,
    pub final_train_loss: Option<f64>,
}

/// Appends `line` to the metrics file.
pub fn write_line(file: &mut File, line: &MetricsLine) -> Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    // One write per line: a kill never leaves half a line behind a whole one.
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Appends the line of a held-out evaluation, if there was one (a dataset
/// without held-out rows has none).
pub fn write_eval(
    file: &mut File,
    e: &Option<EvalPoint>,
    tokens: u64,
    elapsed_s: f64,
) -> Result<()> {
    let Some(e) = e else { return Ok(()) };
    write_line(
        file,
        &MetricsLine {
            kind: MetricsKind::Eval,
            step: e.step,
            tokens,
            loss: None,
            lr: None,
            grad_norm: None,
            tokens_per_s: None,
            elapsed_s,
            heldout_loss: Some(e.loss),
            heldout_ppl: Some(e.perplexity),
            heldout_tokens: Some(e.tokens),
        },
    )
}

/// Reads `metrics.jsonl` (skipping a torn last line).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if let Ok(m) = serde_json::from_str::<MetricsLine>(&line) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Drops the lines after `step` (written after the checkpoint a resumed run
/// restarts from) and any torn line.
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<MetricsLine> = read_metrics(path)?
        .into_iter()
        .filter(|m| m.step <= step)
        .collect();
    let mut text = String::new();
    for m in &kept {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The first held-out evaluation the metrics file holds: a resumed run's
/// came before the interruption.
pub fn read_first_eval(path: &Path) -> Result<Option<EvalPoint>> {
    Ok(read_metrics(path)?.into_iter().find_map(|m| {
        Some(EvalPoint {
            step: m.step,
            loss: m.heldout_loss?,
            perplexity: m.heldout_ppl?,
            tokens: m.heldout_tokens?,
        })
    }))
}
