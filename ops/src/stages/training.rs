//! What the training ops share around the loop: loading the model to train
//! from its artifact, running [`crate::train::train`], and publishing the
//! trained model with its metrics and summary.

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use distillery_engine::RunContext;
use serde::Serialize;

use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::io::dataset::DatasetArtifact;
use crate::io::hf_folder::{HfWriteOptions, read_hf_folder, write_hf_folder};
use crate::io::safetensors_io::DiskDtype;
use crate::kernels::Precision;
use crate::model::{Llama, LlamaConfig};
use crate::train::metrics::{METRICS_FILE, TRAINING_FILE};
use crate::train::{CrossEntropy, Objective, TrainJob, TrainParams, TrainSummary, train};

/// Trains the model in `model_dir` under `objective` and writes the result
/// to the stage's output: the model folder (config, weights in `dtype`,
/// tokenizer), `metrics.jsonl`, and `training.json` (the run's summary
/// plus `details`, what the op wants to record about itself).
#[allow(clippy::too_many_arguments)]
pub fn train_and_publish<B: ComputeBackend>(
    model_dir: &std::path::Path,
    objective: &impl Objective<B>,
    objective_name: &str,
    params: &TrainParams,
    data: &DatasetArtifact,
    dtype: DiskDtype,
    details: impl Serialize,
    ctx: &RunContext,
    device: &B::Device,
) -> Result<TrainSummary> {
    let folder = read_hf_folder(model_dir)?;
    let config = LlamaConfig::from_json(&folder.config).context("invalid model config")?;
    let student = Llama::<Autodiff<B>>::from_state_dict(config, folder.tensors, device)
        .with_context(|| format!("building the model of {}", model_dir.display()))?
        .with_precision(params.precision);
    if params.precision == Precision::Bf16 {
        let arithmetic = crate::kernels::matmul::arithmetic::<B>(device, params.precision);
        ctx.progress
            .log(&format!("matrix products in {arithmetic}"));
    }
    let job = TrainJob {
        params,
        data,
        ctx,
        objective: objective_name,
    };
    let (trained, summary) = train(student, objective, &job, device)?;

    let mut config_json = folder.config;
    if let (Some(obj), serde_json::Value::Object(normal)) =
        (config_json.as_object_mut(), trained.config.to_json())
    {
        obj.extend(normal);
    }
    let options = HfWriteOptions {
        dtype,
        ..HfWriteOptions::default()
    };
    write_hf_folder(
        &ctx.output_dir,
        &config_json,
        &trained.to_state_dict(),
        &folder.assets,
        &options,
    )?;
    std::fs::copy(
        ctx.scratch_dir.join(METRICS_FILE),
        ctx.output_dir.join(METRICS_FILE),
    )
    .context("publishing the metrics")?;
    let mut record = serde_json::to_value(&summary)?;
    if let (Some(obj), serde_json::Value::Object(extra)) =
        (record.as_object_mut(), serde_json::to_value(details)?)
    {
        obj.extend(extra);
    }
    std::fs::write(
        ctx.output_dir.join(TRAINING_FILE),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    if let (Some(a), Some(b)) = (summary.first_eval, summary.last_eval) {
        ctx.progress.log(&format!(
            "held-out loss {:.4} -> {:.4} (perplexity {:.2} -> {:.2}) over {} tokens in {:.0} s ({:.0} tokens/s)",
            a.loss, b.loss, a.perplexity, b.perplexity, summary.tokens, summary.elapsed_s, summary.tokens_per_s
        ));
    }
    Ok(summary)
}

/// Cross-entropy training of the `model` slot on the `data` slot: what
/// `teacher_correction` and `align` run. `masked_only` refuses a dataset
/// without a loss mask (unless it is false).
pub fn run_cross_entropy(
    ctx: &RunContext,
    params: &TrainParams,
    dtype: DiskDtype,
    objective_name: &str,
    masked_only: bool,
) -> Result<()> {
    struct Task<'a, 'c> {
        ctx: &'a RunContext<'c>,
        params: &'a TrainParams,
        dtype: DiskDtype,
        objective_name: &'a str,
        masked_only: bool,
    }
    impl OnBackend for Task<'_, '_> {
        type Output = Result<()>;
        fn run<B: ComputeBackend>(self, device: B::Device) -> Result<()> {
            let data = DatasetArtifact::open(self.ctx.input("data")?)?;
            if self.masked_only && !data.has_loss_mask() {
                anyhow::bail!(
                    "the dataset at {} has no loss mask, so every token would be trained on; \
                     build it from chat conversations (`messages` in JSONL) to train on \
                     assistant turns only, or set `allow_unmasked: true`",
                    data.dir().display()
                );
            }
            train_and_publish::<B>(
                self.ctx.input("model")?,
                &CrossEntropy,
                self.objective_name,
                self.params,
                &data,
                self.dtype,
                serde_json::json!({ "masked": data.has_loss_mask() }),
                self.ctx,
                &device,
            )?;
            Ok(())
        }
    }
    on_device(
        ctx.device,
        Task {
            ctx,
            params,
            dtype,
            objective_name,
            masked_only,
        },
    )?
}
