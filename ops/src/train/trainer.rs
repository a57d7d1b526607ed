//! The training loop every training op runs: global batches of rows in a
//! seeded order, gradient accumulation over micro-batches, AdamW with the
//! warmup-cosine schedule, held-out evaluations, metrics JSONL, progress,
//! and checkpoints that make an interrupted stage resume where it stopped.
//!
//! Resuming is exact on the CPU: the checkpoint holds the f32 weights and
//! moments, and the data order is a function of the seed and the step, so a
//! resumed run computes the same steps on the same rows as an uninterrupted
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use distillery_engine::RunContext;
use distillery_engine::interrupt::{self, Interrupted};
use serde::{Deserialize, Serialize};

use super::adamw::{AdamW, AdamWConfig, GradientSum};
use super::checkpoint::{self, RunState};
use super::data::{DataOrder, MicroBatch, TrainRow};
use super::objective::{Objective, weighted_cross_entropy};
use super::params::{Resolved, TrainParams};
use super::schedule::Schedule;
use crate::backend::ComputeBackend;
use crate::io::dataset::{DatasetArtifact, Split};
use crate::model::Llama;

/// The metrics file, in the scratch directory while training and in the
/// output when done.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's summary in the output.
pub const SUMMARY_FILE: &str = "training.json";

/// A pause before every step, `DISTILLERY_TEST_STEP_DELAY_MS` long, so that
/// tests can interrupt a tiny model's run mid-way. Only in builds with the
/// feature `test-step-delay` (the root package's tests); none otherwise.
#[cfg(feature = "test-step-delay")]
fn test_step_delay() -> Option<Duration> {
    std::env::var("DISTILLERY_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}
#[cfg(not(feature = "test-step-delay"))]
fn test_step_delay() -> Option<Duration> {
    None
}

/// One line of `metrics.jsonl`: a training step (`kind: train`) or a
/// held-out evaluation (`kind: eval`, after `step` steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub kind: String,
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

/// Everything the loop needs besides the student and the objective.
pub struct TrainJob<'a, 'c> {
    pub params: &'a TrainParams,
    pub data: &'a DatasetArtifact,
    pub ctx: &'a RunContext<'c>,
    /// Name of the objective for logs and the summary.
    pub objective: &'a str,
}

/// The rows of one split as the loop reads them, masks included.
struct Rows<'a> {
    data: &'a DatasetArtifact,
    seq_len: usize,
}

impl<'a> Rows<'a> {
    fn get(&self, split: Split, i: usize) -> TrainRow<'a> {
        TrainRow {
            tokens: &self.data.row(split, i)[..self.seq_len],
            mask: self
                .data
                .loss_mask_row(split, i)
                .map(|m| &m[..self.seq_len]),
        }
    }
}

/// Trains `student` (already on the autodiff backend) and returns it with
/// the run's summary. A checkpoint in the stage's scratch directory is
/// resumed from; `metrics.jsonl` and the summary are left in the scratch
/// directory for the caller to publish.
pub fn train<B: ComputeBackend>(
    student: Llama<Autodiff<B>>,
    objective: &impl Objective<B>,
    job: &TrainJob,
    device: &B::Device,
) -> Result<(Llama<B>, TrainSummary)> {
    let (p, ctx, data) = (job.params, job.ctx, job.data);
    let Resolved {
        seq_len,
        batch_rows,
        micro_batch,
        steps,
    } = p.resolve(data.seq_len())?;
    let train_rows = data.rows(Split::Train);
    if train_rows == 0 {
        bail!("the dataset has no training rows");
    }
    if data.vocab_size() > student.config.vocab_size {
        bail!(
            "the dataset's vocabulary ({}) is larger than the student's ({})",
            data.vocab_size(),
            student.config.vocab_size
        );
    }
    let rows = Rows { data, seq_len };
    let eval_rows: Vec<TrainRow> = (0..p.eval_rows.min(data.rows(Split::Heldout)))
        .map(|i| rows.get(Split::Heldout, i))
        .collect();
    let adam_config = AdamWConfig {
        beta1: p.betas[0],
        beta2: p.betas[1],
        eps: p.eps,
        weight_decay: p.weight_decay,
        grad_clip: p.grad_clip,
    };
    let schedule = Schedule {
        peak: p.lr,
        min: p.min_lr,
        warmup: p.warmup_steps,
        total: steps,
    };
    let step_tokens = batch_rows * seq_len as u64;
    let scratch = &ctx.scratch_dir;
    let metrics_path = scratch.join(METRICS_FILE);

    // Resume, or start fresh.
    let (mut model, mut adam, start, prior_elapsed, resumed_from) = match checkpoint::load(scratch)?
    {
        Some(ck) => {
            if ck.state.seed != ctx.seed || ck.state.total_steps != steps {
                bail!(
                    "the checkpoint in {} is of another run (seed {}, {} steps; this run: \
                         seed {}, {steps} steps); remove it to start over",
                    scratch.display(),
                    ck.state.seed,
                    ck.state.total_steps,
                    ctx.seed
                );
            }
            let config = student.config.clone();
            drop(student);
            let model = Llama::<Autodiff<B>>::from_state_dict(config, ck.model, device)
                .context("restoring the student from its checkpoint")?;
            let adam = AdamW::load_state_dict(adam_config, ck.state.step, ck.optimizer, device)?;
            truncate_metrics(&metrics_path, ck.state.step)?;
            ctx.progress.log(&format!(
                "resuming from the checkpoint at step {} of {steps}",
                ck.state.step
            ));
            (
                model,
                adam,
                ck.state.step,
                ck.state.elapsed_s,
                Some(ck.state.step),
            )
        }
        None => {
            if metrics_path.exists() {
                fs::remove_file(&metrics_path)?;
            }
            (student, AdamW::new(adam_config), 0, 0.0, None)
        }
    };
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("cannot open {}", metrics_path.display()))?;

    ctx.progress.set_total(steps, "steps");
    ctx.progress.set_position(start);
    ctx.progress.log(&format!(
        "{}: {steps} steps of {batch_rows} rows x {seq_len} tokens ({} tokens), micro-batch {micro_batch}",
        job.objective,
        steps * step_tokens
    ));
    let started = Instant::now();
    let elapsed = || prior_elapsed + started.elapsed().as_secs_f64();
    let step_delay = test_step_delay();

    let mut first_eval = None;
    let mut last_eval = None;
    if start == 0 {
        let e = evaluate(&model.valid(), &eval_rows, micro_batch, 0, device);
        write_eval(&mut metrics, &e, 0, elapsed())?;
        first_eval = e;
        last_eval = e;
    }

    let mut order = DataOrder::new(train_rows, ctx.seed);
    let mut grads = GradientSum::<B>::default();
    let mut final_train_loss = None;
    let mut last_saved = start;
    let mut window = (Instant::now(), 0u64);
    for step in start..steps {
        if interrupt::requested() {
            if step > last_saved {
                save(
                    scratch,
                    &model,
                    &adam,
                    step,
                    step_tokens,
                    elapsed(),
                    ctx.seed,
                    steps,
                )?;
            }
            return Err(Interrupted(Some(format!(
                "after step {step} of {steps} (checkpoint saved)"
            )))
            .into());
        }
        if let Some(d) = step_delay {
            std::thread::sleep(d);
        }
        let batch: Vec<TrainRow> = (0..batch_rows)
            .map(|k| rows.get(Split::Train, order.row(step * batch_rows + k)))
            .collect();
        let targets: usize = batch.iter().map(TrainRow::targets).sum();
        let weight = 1.0 / targets.max(1) as f32;
        let mut loss_sum = 0.0f64;
        for chunk in batch.chunks(micro_batch) {
            let mb = MicroBatch::<B>::new(chunk, weight, device);
            let loss = objective.loss(&model, &mb);
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                bail!(
                    "the loss is {value} at step {}: training diverged",
                    step + 1
                );
            }
            loss_sum += value;
            let g = loss.backward();
            grads.add::<Autodiff<B>, _>(&model, &g);
        }
        let lr = schedule.lr(step);
        let (updated, report) = adam.step::<Autodiff<B>, _>(model, &mut grads, lr);
        model = updated;
        let done = step + 1;
        window.1 += step_tokens;
        let window_s = window.0.elapsed().as_secs_f64();
        let tokens_per_s = window.1 as f64 / window_s.max(1e-9);
        if window_s > 10.0 {
            window = (Instant::now(), 0);
        }
        final_train_loss = Some(loss_sum);
        write_line(
            &mut metrics,
            &MetricsLine {
                kind: "train".into(),
                step: done,
                tokens: done * step_tokens,
                loss: Some(loss_sum),
                lr: Some(lr),
                grad_norm: Some(report.grad_norm),
                tokens_per_s: Some(tokens_per_s),
                elapsed_s: elapsed(),
                heldout_loss: None,
                heldout_ppl: None,
                heldout_tokens: None,
            },
        )?;
        ctx.progress.set_position(done);
        ctx.progress.set_message(&format!(
            "loss {loss_sum:.4} · lr {lr:.2e} · {tokens_per_s:.0} tok/s"
        ));
        let eval_now = done == steps || (p.eval_every > 0 && done % p.eval_every == 0);
        if eval_now {
            let e = evaluate(&model.valid(), &eval_rows, micro_batch, done, device);
            write_eval(&mut metrics, &e, done * step_tokens, elapsed())?;
            if let Some(e) = e {
                ctx.progress.log(&format!(
                    "step {done}/{steps}: train loss {loss_sum:.4}, held-out loss {:.4} (perplexity {:.2})",
                    e.loss, e.perplexity
                ));
            }
            first_eval = first_eval.or(e);
            last_eval = e.or(last_eval);
        }
        if p.checkpoint_every > 0 && done % p.checkpoint_every == 0 && done < steps {
            save(
                scratch,
                &model,
                &adam,
                done,
                step_tokens,
                elapsed(),
                ctx.seed,
                steps,
            )?;
            last_saved = done;
        }
    }
    if first_eval.is_none() {
        first_eval = read_first_eval(&metrics_path)?;
    }
    let total_elapsed = elapsed();
    let summary = TrainSummary {
        objective: job.objective.to_string(),
        steps,
        tokens: steps * step_tokens,
        seq_len,
        batch_rows,
        micro_batch,
        elapsed_s: total_elapsed,
        tokens_per_s: (steps * step_tokens) as f64 / total_elapsed.max(1e-9),
        resumed_from,
        first_eval,
        last_eval,
        final_train_loss,
    };
    Ok((model.valid(), summary))
}

/// Mean cross-entropy of `model` over the target tokens of `rows`.
pub fn evaluate<B: ComputeBackend>(
    model: &Llama<B>,
    rows: &[TrainRow],
    micro_batch: usize,
    step: u64,
    device: &B::Device,
) -> Option<EvalPoint> {
    let mut nll = 0.0f64;
    let mut tokens = 0usize;
    for chunk in rows.chunks(micro_batch.max(1)) {
        let mb = MicroBatch::<B>::new(chunk, 1.0, device);
        if mb.target_count == 0 {
            continue;
        }
        let logits = model.forward(mb.inputs.clone());
        let sum: f64 = weighted_cross_entropy(logits, mb.targets.clone(), mb.weights.clone())
            .into_scalar()
            .elem();
        nll += sum;
        tokens += mb.target_count;
    }
    (tokens > 0).then(|| {
        let loss = nll / tokens as f64;
        EvalPoint {
            step,
            loss,
            perplexity: loss.exp(),
            tokens,
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn save<B: ComputeBackend>(
    scratch: &Path,
    model: &Llama<Autodiff<B>>,
    adam: &AdamW<B>,
    step: u64,
    step_tokens: u64,
    elapsed_s: f64,
    seed: u64,
    total_steps: u64,
) -> Result<()> {
    let state = RunState {
        step,
        tokens: step * step_tokens,
        elapsed_s,
        seed,
        total_steps,
    };
    checkpoint::save(
        scratch,
        &state,
        &model.valid().to_state_dict(),
        &adam.to_state_dict(),
    )
}

fn write_line(file: &mut File, line: &MetricsLine) -> Result<()> {
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    // One write per line: a kill never leaves half a line behind a whole one.
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn write_eval(file: &mut File, e: &Option<EvalPoint>, tokens: u64, elapsed_s: f64) -> Result<()> {
    let Some(e) = e else { return Ok(()) };
    write_line(
        file,
        &MetricsLine {
            kind: "eval".into(),
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
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
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

fn read_first_eval(path: &Path) -> Result<Option<EvalPoint>> {
    Ok(read_metrics(path)?.into_iter().find_map(|m| {
        Some(EvalPoint {
            step: m.step,
            loss: m.heldout_loss?,
            perplexity: m.heldout_ppl?,
            tokens: m.heldout_tokens?,
        })
    }))
}
