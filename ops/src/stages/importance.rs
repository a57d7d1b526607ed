//! `importance`: scores hidden channels, FFN neurons, attention heads and
//! layers of a model on calibration rows, into a Scores artifact that any
//! number of `prune` stages reuse.

use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::importance::{AggregationPair, ImportanceSpec, estimate};
use crate::io::dataset::{DatasetArtifact, Split};
use crate::io::scores::{Axis, DepthMetric};
use crate::kernels::importance::Aggregation;
use crate::model::Llama;
use anyhow::{Context, bail};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub struct Importance;

/// How activations are reduced to one score per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregationSpec {
    /// Over samples (the paper's best: `l2`).
    #[serde(default = "l2")]
    pub batch: Aggregation,
    /// Over the tokens of a sample (the paper's best: `mean`).
    #[serde(default = "mean")]
    pub sequence: Aggregation,
}

impl Default for AggregationSpec {
    fn default() -> Self {
        Self {
            batch: Aggregation::L2,
            sequence: Aggregation::Mean,
        }
    }
}

fn l2() -> Aggregation {
    Aggregation::L2
}
fn mean() -> Aggregation {
    Aggregation::Mean
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportanceParams {
    /// Calibration rows, drawn by the seed from the dataset's train split
    /// (the paper uses 1024). All rows are used when the split has fewer.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Tokens per calibration row: dataset rows are cut to this length
    /// (default: the dataset's row length).
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Rows per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// What to score.
    #[serde(default = "default_axes")]
    pub axes: Vec<Axis>,
    /// Reduction of width activations, for every width axis.
    #[serde(default)]
    pub aggregation: AggregationSpec,
    /// Per-axis reductions that replace `aggregation` (keys `hidden`, `ffn`, `heads`).
    #[serde(default)]
    pub axis_aggregation: std::collections::BTreeMap<Axis, AggregationSpec>,
    /// Depth metrics, when `depth` is among the axes.
    #[serde(default = "default_depth_metrics")]
    pub depth_metrics: Vec<DepthMetric>,
    /// Sizes of contiguous blocks to score besides single layers (for
    /// `prune` with `contiguous: true`).
    #[serde(default)]
    pub block_sizes: Vec<usize>,
    /// Held-out rows for the perplexity depth metric.
    #[serde(default = "default_perplexity_samples")]
    pub perplexity_samples: usize,
}

fn default_samples() -> usize {
    1024
}
fn default_batch() -> usize {
    4
}
fn default_axes() -> Vec<Axis> {
    vec![Axis::Hidden, Axis::Ffn, Axis::Heads, Axis::Depth]
}
fn default_depth_metrics() -> Vec<DepthMetric> {
    vec![DepthMetric::BlockImportance]
}
fn default_perplexity_samples() -> usize {
    32
}

impl ImportanceParams {
    fn spec(&self) -> ImportanceSpec {
        let pair = |axis: Axis| {
            self.axes.contains(&axis).then(|| {
                let a = self
                    .axis_aggregation
                    .get(&axis)
                    .copied()
                    .unwrap_or(self.aggregation);
                AggregationPair {
                    batch: a.batch,
                    sequence: a.sequence,
                }
            })
        };
        let depth = self.axes.contains(&Axis::Depth);
        ImportanceSpec {
            hidden: pair(Axis::Hidden),
            ffn: pair(Axis::Ffn),
            heads: pair(Axis::Heads),
            block_importance: depth && self.depth_metrics.contains(&DepthMetric::BlockImportance),
            perplexity: depth && self.depth_metrics.contains(&DepthMetric::Perplexity),
            block_sizes: self.block_sizes.clone(),
            batch: self.batch,
        }
    }
}

impl TypedOp for Importance {
    type Params = ImportanceParams;
    const NAME: &'static str = "importance";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Scores hidden channels, FFN neurons, attention heads and layers on calibration data (Minitron importance).";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("model", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Scores
    }

    fn check(&self, p: &ImportanceParams, _: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.samples == 0 {
            issues.push(ParamIssue::at(&["samples"], "`samples` must be at least 1"));
        }
        if p.batch == 0 {
            issues.push(ParamIssue::at(&["batch"], "`batch` must be at least 1"));
        }
        if p.seq_len.is_some_and(|s| s < 2) {
            issues.push(ParamIssue::at(&["seq_len"], "`seq_len` must be at least 2"));
        }
        if p.axes.is_empty() {
            issues.push(ParamIssue::at(
                &["axes"],
                "`axes` is empty: nothing to score",
            ));
        }
        if p.axis_aggregation.contains_key(&Axis::Depth) {
            issues.push(ParamIssue::at(
                &["axis_aggregation", "depth"],
                "depth is not aggregated like width axes; use `depth_metrics`",
            ));
        }
        if p.axes.contains(&Axis::Depth) && p.depth_metrics.is_empty() {
            issues.push(ParamIssue::at(
                &["depth_metrics"],
                "scoring depth needs at least one depth metric",
            ));
        }
        for (i, &n) in p.block_sizes.iter().enumerate() {
            if n < 2 {
                issues.push(ParamIssue::at(
                    &["block_sizes", &i.to_string()],
                    format!("block sizes start at 2 (single layers are always scored), found {n}"),
                ));
            }
        }
        if p.depth_metrics.contains(&DepthMetric::Perplexity) && p.perplexity_samples == 0 {
            issues.push(ParamIssue::at(
                &["perplexity_samples"],
                "`perplexity_samples` must be at least 1",
            ));
        }
        issues
    }

    fn uses_accelerator(&self, _: &ImportanceParams) -> bool {
        true
    }

    fn run(&self, p: ImportanceParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Task { params: p, ctx })?
    }
}

struct Task<'a, 'c> {
    params: ImportanceParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Task<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let (model, _) = Llama::<B>::load_hf(ctx.input("model")?, &device)?;
        let data = DatasetArtifact::open(ctx.input("data")?)?;
        if data.vocab_size() > model.config.vocab_size {
            bail!(
                "the dataset was tokenized with a vocabulary of {} tokens, the model has {}",
                data.vocab_size(),
                model.config.vocab_size
            );
        }
        let seq_len = p.seq_len.unwrap_or(data.seq_len());
        if seq_len > data.seq_len() {
            bail!(
                "`seq_len` {seq_len} is longer than the dataset's rows ({})",
                data.seq_len()
            );
        }
        let calibration = pick_rows(&data, Split::Train, p.samples, seq_len, ctx.seed)
            .context("choosing calibration rows")?;
        let spec = p.spec();
        let heldout = if spec.perplexity {
            pick_rows(
                &data,
                Split::Heldout,
                p.perplexity_samples,
                seq_len,
                ctx.seed,
            )
            .context("choosing held-out rows for the perplexity metric")?
        } else {
            Vec::new()
        };
        ctx.progress.log(&format!(
            "scoring on {} rows of {seq_len} tokens{}",
            calibration.len(),
            if spec.perplexity {
                format!(", perplexity on {} held-out rows", heldout.len())
            } else {
                String::new()
            }
        ));
        let scores = estimate(&model, &calibration, &heldout, &spec, ctx.progress);
        scores.save(&ctx.output_dir)?;
        Ok(())
    }
}

/// `count` rows of `split` chosen by the seed (all when there are fewer),
/// cut to `seq_len` tokens.
fn pick_rows(
    data: &DatasetArtifact,
    split: Split,
    count: usize,
    seq_len: usize,
    seed: u64,
) -> anyhow::Result<Vec<&[u32]>> {
    let available = data.rows(split);
    if available == 0 {
        bail!("the dataset's {} split has no rows", split.name());
    }
    // The same seed, the same rows.
    let mut order = crate::rng::SplitMix64::new(seed ^ 0x1A2B_3C4D).permutation(available);
    order.truncate(count.min(available));
    Ok(order
        .iter()
        .map(|&i| &data.row(split, i)[..seq_len])
        .collect())
}
