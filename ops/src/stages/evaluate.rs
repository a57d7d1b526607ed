//! `evaluate`: held-out loss and perplexity of one or more models on a
//! Dataset's rows, as a Metrics artifact with a side-by-side table.
//! (Benchmarks and bits per byte are later work.)

use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::eval::loss::next_token_nll;
use crate::io::dataset::{DatasetArtifact, Split};
use crate::model::Llama;
use anyhow::bail;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub struct Evaluate;

/// Which rows of the dataset to measure on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitName {
    Train,
    Heldout,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The split whose rows are measured.
    #[serde(default = "heldout")]
    pub split: SplitName,
    /// The first this many rows of the split (all when it has fewer).
    #[serde(default = "default_rows")]
    pub rows: usize,
    /// Tokens per row: rows are cut to this length (default: the dataset's).
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Rows per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn heldout() -> SplitName {
    SplitName::Heldout
}
fn default_rows() -> usize {
    32
}
fn default_batch() -> usize {
    4
}

/// One model's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub stage: String,
    pub parameters: usize,
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

impl TypedOp for Evaluate {
    type Params = EvaluateParams;
    const NAME: &'static str = "evaluate";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Measures held-out loss and perplexity of one or more models on a dataset.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::list("models", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Metrics
    }

    fn check(&self, p: &EvaluateParams, _: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.rows == 0 {
            issues.push(ParamIssue::at(&["rows"], "`rows` must be at least 1"));
        }
        if p.batch == 0 {
            issues.push(ParamIssue::at(&["batch"], "`batch` must be at least 1"));
        }
        if p.seq_len.is_some_and(|s| s < 2) {
            issues.push(ParamIssue::at(&["seq_len"], "`seq_len` must be at least 2"));
        }
        issues
    }

    fn uses_accelerator(&self, _: &EvaluateParams) -> bool {
        true
    }

    fn run(&self, p: EvaluateParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Task { params: p, ctx })?
    }
}

struct Task<'a, 'c> {
    params: EvaluateParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Task<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let data = DatasetArtifact::open(ctx.input("data")?)?;
        let split = match p.split {
            SplitName::Train => Split::Train,
            SplitName::Heldout => Split::Heldout,
        };
        let seq_len = p.seq_len.unwrap_or(data.seq_len());
        if seq_len > data.seq_len() {
            bail!(
                "`seq_len` {seq_len} is longer than the dataset's rows ({})",
                data.seq_len()
            );
        }
        let count = p.rows.min(data.rows(split));
        if count == 0 {
            bail!("the dataset's {} split has no rows", split.name());
        }
        let rows: Vec<&[u32]> = (0..count).map(|i| &data.row(split, i)[..seq_len]).collect();
        let names = ctx.input_stages.get("models").cloned().unwrap_or_default();
        let mut results = Vec::new();
        ctx.progress
            .set_total(ctx.inputs["models"].len() as u64, "models");
        for (i, dir) in ctx.inputs["models"].iter().enumerate() {
            let (model, _) = Llama::<B>::load_hf(dir, &device)?;
            if data.vocab_size() > model.config.vocab_size {
                bail!(
                    "the dataset's vocabulary ({}) is larger than model {}'s ({})",
                    data.vocab_size(),
                    i,
                    model.config.vocab_size
                );
            }
            let nll = next_token_nll(&model, &rows, p.batch);
            let stage = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("model {i}"));
            ctx.progress.log(&format!(
                "{stage}: loss {:.4}, perplexity {:.2} on {} tokens",
                nll.mean(),
                nll.perplexity(),
                nll.tokens
            ));
            results.push(ModelMetrics {
                stage,
                parameters: model.config.num_parameters(),
                loss: nll.mean(),
                perplexity: nll.perplexity(),
                tokens: nll.tokens,
            });
            ctx.progress.set_position(i as u64 + 1);
        }
        let mut table =
            String::from("| model | parameters | loss | perplexity |\n|---|---:|---:|---:|\n");
        for r in &results {
            table.push_str(&format!(
                "| {} | {:.1}M | {:.4} | {:.2} |\n",
                r.stage,
                r.parameters as f64 / 1e6,
                r.loss,
                r.perplexity
            ));
        }
        ctx.progress.log(&format!("\n{table}"));
        std::fs::write(
            ctx.output_dir.join("metrics.json"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "split": split.name(),
                "rows": count,
                "seq_len": seq_len,
                "models": results,
            }))?,
        )?;
        std::fs::write(ctx.output_dir.join("table.md"), table)?;
        Ok(())
    }
}
