//! One optimizer step, the unit the training loop repeats and `distillery
//! bench distill` times: for each micro-batch of a global batch the forward
//! pass and the loss, then its backward pass, the gradients summed over the
//! micro-batches; then global-norm clipping and the AdamW update.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::backend::Autodiff;
use burn::tensor::ElementConversion;

use super::adamw::{AdamW, GradientSum};
use super::data::{MicroBatch, TrainRow};
use super::objective::Objective;
use crate::backend::ComputeBackend;
use crate::model::Llama;

/// What stays the same from one step of a run to the next.
pub struct TrainStep<'a, B: ComputeBackend, O> {
    pub objective: &'a O,
    /// Rows per forward and backward pass.
    pub micro_batch: usize,
    pub device: &'a B::Device,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The loss over the global batch: the sum of the micro-batches' losses,
    /// whose weights make it the mean over the batch's target tokens.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Wall time of a step's phases, summed over its micro-batches, for
/// benchmarks. A step given a `StepTimings` waits for the device at the end
/// of each phase, so that the time of each is its own (which a GPU pays for
/// in lost overlap); without one it never waits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// Forward passes and the loss (a distillation teacher's forward
    /// included), up to reading the loss back.
    pub forward_s: f64,
    /// Backward passes and adding up the gradients.
    pub backward_s: f64,
    /// Clipping and the AdamW update.
    pub optimizer_s: f64,
}

#[derive(Clone, Copy)]
enum Phase {
    Forward,
    Backward,
    Optimizer,
}

/// Attributes the time since the last mark to a phase, when timing.
struct PhaseClock<'t, 'd, B: ComputeBackend> {
    timings: Option<&'t mut StepTimings>,
    device: &'d B::Device,
    since: Option<Instant>,
}

impl<'t, 'd, B: ComputeBackend> PhaseClock<'t, 'd, B> {
    fn new(timings: Option<&'t mut StepTimings>, device: &'d B::Device) -> Self {
        Self {
            timings,
            device,
            since: None,
        }
    }

    /// Starts a phase now, without waiting for the device: what was queued
    /// before counts toward it.
    fn start(&mut self) {
        if self.timings.is_some() {
            self.since = Some(Instant::now());
        }
    }

    /// Waits for the device and ends `phase`; the next one starts now.
    fn end(&mut self, phase: Phase) -> Result<()> {
        let (Some(timings), Some(since)) = (self.timings.as_deref_mut(), self.since) else {
            return Ok(());
        };
        B::sync(self.device).map_err(|e| anyhow::anyhow!("the device failed: {e:?}"))?;
        let now = Instant::now();
        let seconds = (now - since).as_secs_f64();
        *match phase {
            Phase::Forward => &mut timings.forward_s,
            Phase::Backward => &mut timings.backward_s,
            Phase::Optimizer => &mut timings.optimizer_s,
        } += seconds;
        self.since = Some(now);
        Ok(())
    }
}

impl<B: ComputeBackend, O: Objective<B>> TrainStep<'_, B, O> {
    /// Trains `model` on `batch`, the global batch of step `index` (from 0,
    /// for the error a diverged loss gives), at learning rate `lr`; adds
    /// the time of each phase to `timings` when given.
    pub fn run(
        &self,
        model: Llama<Autodiff<B>>,
        adam: &mut AdamW<B>,
        index: u64,
        batch: &[TrainRow],
        lr: f64,
        timings: Option<&mut StepTimings>,
    ) -> Result<(Llama<Autodiff<B>>, StepOutcome)> {
        let mut clock = PhaseClock::<B>::new(timings, self.device);
        let targets: usize = batch.iter().map(TrainRow::targets).sum();
        let weight = 1.0 / targets.max(1) as f32;
        let mut grads = GradientSum::<B>::default();
        let mut loss_sum = 0.0f64;
        for chunk in batch.chunks(self.micro_batch) {
            let mb = MicroBatch::<B>::new(chunk, weight, self.device);
            clock.start();
            let loss = self.objective.loss(&model, &mb)?;
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                bail!(
                    "the loss is {value} at step {}: training diverged",
                    index + 1
                );
            }
            loss_sum += value;
            clock.end(Phase::Forward)?;
            let g = loss.backward();
            grads.add::<Autodiff<B>, _>(&model, &g);
            clock.end(Phase::Backward)?;
        }
        let (model, report) = adam.step::<Autodiff<B>, _>(model, &mut grads, lr);
        clock.end(Phase::Optimizer)?;
        Ok((
            model,
            StepOutcome {
                loss: loss_sum,
                grad_norm: report.grad_norm,
            },
        ))
    }
}
