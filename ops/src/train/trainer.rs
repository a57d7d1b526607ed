//! The training loop every training op runs: global batches of rows in a
//! seeded order, one optimizer step ([`super::step`]) on each at the
//! warmup-cosine schedule's learning rate, held-out evaluations, metrics
//! ([`super::metrics`]), progress, and checkpoints that make an interrupted
//! stage resume where it stopped.
//!
//! Resuming is exact on the CPU: the checkpoint holds the f32 weights and
//! moments, and the data order is a function of the seed and the step, so a
//! resumed run computes the same steps on the same rows as an uninterrupted
//! one.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::ElementConversion;
use distillery_engine::RunContext;
use distillery_engine::interrupt::{self, Interrupted};

use super::adamw::{AdamW, AdamWConfig};
use super::checkpoint::{self, RunState};
use super::data::{DataOrder, MicroBatch, TrainRow};
use super::metrics::{
    EvalPoint, METRICS_FILE, MetricsKind, MetricsLine, TrainSummary, read_first_eval,
    truncate_metrics, write_eval, write_line,
};
use super::objective::{Objective, weighted_cross_entropy};
use super::params::{Resolved, TrainParams};
use super::schedule::Schedule;
use super::step::TrainStep;
use crate::backend::ComputeBackend;
use crate::io::dataset::{DatasetArtifact, Split};
use crate::model::Llama;

/// A pause before every step (and every batch of `teacher_logits`),
/// `DISTILLERY_TEST_STEP_DELAY_MS` long, so that tests can interrupt a tiny
/// model's run mid-way. Only in builds with the
/// feature `test-step-delay` (the root package's tests); none otherwise.
#[cfg(feature = "test-step-delay")]
pub(crate) fn test_step_delay() -> Option<Duration> {
    std::env::var("DISTILLERY_TEST_STEP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
}
#[cfg(not(feature = "test-step-delay"))]
pub(crate) fn test_step_delay() -> Option<Duration> {
    None
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
            index: i,
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
    let schedule = Schedule {
        peak: p.lr,
        min: p.min_lr,
        warmup: p.warmup_steps,
        total: steps,
    };
    let step_tokens = batch_rows * seq_len as u64;
    let scratch = &ctx.scratch_dir;
    let metrics_path = scratch.join(METRICS_FILE);
    let run_state = |step: u64, elapsed_s: f64| RunState {
        step,
        tokens: step * step_tokens,
        elapsed_s,
        seed: ctx.seed,
        total_steps: steps,
    };

    let Start {
        mut model,
        mut adam,
        step: start,
        elapsed_s: prior_elapsed,
        resumed_from,
    } = resume_or_start(student, adam_config(p), steps, &metrics_path, ctx, device)?;
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

    let order_rows = objective
        .rows_covered()
        .map_or(train_rows, |n| n.min(train_rows));
    if order_rows < train_rows {
        ctx.progress.log(&format!(
            "training on the first {order_rows} of the dataset's {train_rows} training rows: {} covers no more",
            job.objective
        ));
    }
    let mut order = DataOrder::new(order_rows, ctx.seed);
    let train_step = TrainStep {
        objective,
        micro_batch,
        device,
    };
    let mut final_train_loss = None;
    let mut last_saved = start;
    let mut throughput = Throughput::new();
    for step in start..steps {
        if interrupt::requested() {
            if step > last_saved {
                save(scratch, &model, &adam, run_state(step, elapsed()))?;
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
        let lr = schedule.lr(step);
        let (updated, outcome) = train_step.run(model, &mut adam, step, &batch, lr, None)?;
        model = updated;
        let done = step + 1;

        let tokens_per_s = throughput.add(step_tokens);
        let loss = outcome.loss;
        final_train_loss = Some(loss);
        write_line(
            &mut metrics,
            &MetricsLine {
                kind: MetricsKind::Train,
                step: done,
                tokens: done * step_tokens,
                loss: Some(loss),
                lr: Some(lr),
                grad_norm: Some(outcome.grad_norm),
                tokens_per_s: Some(tokens_per_s),
                elapsed_s: elapsed(),
                heldout_loss: None,
                heldout_ppl: None,
                heldout_tokens: None,
            },
        )?;
        ctx.progress.set_position(done);
        ctx.progress.set_message(&format!(
            "loss {loss:.4} · lr {lr:.2e} · {tokens_per_s:.0} tok/s"
        ));

        if done == steps || (p.eval_every > 0 && done % p.eval_every == 0) {
            let e = evaluate(&model.valid(), &eval_rows, micro_batch, done, device);
            write_eval(&mut metrics, &e, done * step_tokens, elapsed())?;
            if let Some(e) = e {
                ctx.progress.log(&format!(
                    "step {done}/{steps}: train loss {loss:.4}, held-out loss {:.4} (perplexity {:.2})",
                    e.loss, e.perplexity
                ));
            }
            first_eval = first_eval.or(e);
            last_eval = e.or(last_eval);
        }

        if p.checkpoint_every > 0 && done % p.checkpoint_every == 0 && done < steps {
            save(scratch, &model, &adam, run_state(done, elapsed()))?;
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

fn adam_config(p: &TrainParams) -> AdamWConfig {
    AdamWConfig {
        beta1: p.betas[0],
        beta2: p.betas[1],
        eps: p.eps,
        weight_decay: p.weight_decay,
        grad_clip: p.grad_clip,
    }
}

/// Where a run starts: from its checkpoint, or from the beginning.
struct Start<B: ComputeBackend> {
    model: Llama<Autodiff<B>>,
    adam: AdamW<B>,
    /// Steps already taken.
    step: u64,
    /// Training time already spent, over all earlier attempts.
    elapsed_s: f64,
    /// The step of the checkpoint resumed from.
    resumed_from: Option<u64>,
}

/// Resumes from the checkpoint in the scratch directory (which must be of
/// this run: same seed, same number of steps), cutting the metrics back to
/// its step; without one, starts fresh with `student` and no metrics.
fn resume_or_start<B: ComputeBackend>(
    student: Llama<Autodiff<B>>,
    adam_config: AdamWConfig,
    steps: u64,
    metrics_path: &Path,
    ctx: &RunContext,
    device: &B::Device,
) -> Result<Start<B>> {
    let scratch = &ctx.scratch_dir;
    let Some(ck) = checkpoint::load(scratch)? else {
        if metrics_path.exists() {
            fs::remove_file(metrics_path)?;
        }
        return Ok(Start {
            model: student,
            adam: AdamW::new(adam_config),
            step: 0,
            elapsed_s: 0.0,
            resumed_from: None,
        });
    };
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
    truncate_metrics(metrics_path, ck.state.step)?;
    ctx.progress.log(&format!(
        "resuming from the checkpoint at step {} of {steps}",
        ck.state.step
    ));
    Ok(Start {
        model,
        adam,
        step: ck.state.step,
        elapsed_s: ck.state.elapsed_s,
        resumed_from: Some(ck.state.step),
    })
}

/// Training tokens per second over a window of recent steps, restarted
/// every 10 s or so, for the metrics and the progress line.
struct Throughput {
    since: Instant,
    tokens: u64,
}

impl Throughput {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            tokens: 0,
        }
    }

    /// Counts a step of `tokens` and returns the window's rate.
    fn add(&mut self, tokens: u64) -> f64 {
        self.tokens += tokens;
        let seconds = self.since.elapsed().as_secs_f64();
        let rate = self.tokens as f64 / seconds.max(1e-9);
        if seconds > 10.0 {
            *self = Self::new();
        }
        rate
    }
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

/// Writes the run's checkpoint: the student, the optimizer's moments, and
/// where the run stands.
fn save<B: ComputeBackend>(
    scratch: &Path,
    model: &Llama<Autodiff<B>>,
    adam: &AdamW<B>,
    state: RunState,
) -> Result<()> {
    checkpoint::save(
        scratch,
        &state,
        &model.valid().to_state_dict(),
        &adam.to_state_dict(),
    )
}
