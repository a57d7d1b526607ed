//! The Scores artifact: importance of every prunable unit of a model, as
//! the `importance` op writes it and `prune` reads it.
//!
//! A Scores folder holds `scores.safetensors` (f32) and `summary.json`:
//! - `hidden` `[hidden_size]`: embedding channels, summed over both norm
//!   outputs of every layer;
//! - `ffn` `[layers, intermediate_size]`: MLP neurons (down_proj input), per layer;
//! - `heads` `[layers, num_attention_heads]`: query heads (L2 over each head's
//!   dims of the o_proj input), per layer;
//! - `depth.block_importance` `[layers]`: 1 - mean cosine(layer input, output);
//! - `depth.block_importance.size{n}` `[layers - n + 1]`: the same for the
//!   contiguous block of `n` layers starting at each index;
//! - `depth.perplexity` `[layers]`, `depth.perplexity.size{n}`: held-out loss
//!   with that layer (block) removed, minus the full model's loss.
//!
//! Axes that were not computed are absent. Higher is more important for
//! every tensor (for depth: removing it hurts more). Layer indices are 0-based.

use crate::io::safetensors_io::{DiskDtype, read_safetensors, write_safetensors};
use crate::io::{HostTensor, StateDict};
use crate::kernels::importance::Aggregation;
use anyhow::{Context, Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub const SCORES_FILE: &str = "scores.safetensors";
pub const SCORES_SUMMARY_FILE: &str = "summary.json";

/// What an `importance` stage scores, and what a `prune` target needs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    /// Embedding channels (hidden_size).
    Hidden,
    /// MLP neurons (intermediate_size), per layer.
    Ffn,
    /// Query heads, per layer.
    Heads,
    /// Layers and contiguous blocks of layers.
    Depth,
}

impl Axis {
    /// The name recipes use.
    pub fn name(self) -> &'static str {
        match self {
            Axis::Hidden => "hidden",
            Axis::Ffn => "ffn",
            Axis::Heads => "heads",
            Axis::Depth => "depth",
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How depth is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DepthMetric {
    /// Block importance: 1 - mean cosine similarity of a layer's (block's)
    /// input and output.
    #[default]
    BlockImportance,
    /// Increase of the held-out loss when the layer (block) is removed; one
    /// evaluation per layer and block, so it costs far more to compute.
    Perplexity,
}

impl DepthMetric {
    /// The name recipes use.
    pub fn name(self) -> &'static str {
        match self {
            DepthMetric::BlockImportance => "block_importance",
            DepthMetric::Perplexity => "perplexity",
        }
    }
}

impl fmt::Display for DepthMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of one tensor in `scores.safetensors`: the importance op writes
/// it, `prune` reads it, both through this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreName {
    /// `hidden` `[hidden_size]`.
    Hidden,
    /// `ffn` `[layers, intermediate_size]`.
    Ffn,
    /// `heads` `[layers, num_attention_heads]`.
    Heads,
    /// `depth.{metric}` `[layers]` for single layers (`block: 1`);
    /// `depth.{metric}.size{block}` `[layers - block + 1]` for contiguous
    /// blocks of `block` layers.
    Depth { metric: DepthMetric, block: usize },
}

impl ScoreName {
    /// The per-layer depth scores of `metric`.
    pub fn layers(metric: DepthMetric) -> Self {
        ScoreName::Depth { metric, block: 1 }
    }
}

impl fmt::Display for ScoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScoreName::Hidden => f.write_str("hidden"),
            ScoreName::Ffn => f.write_str("ffn"),
            ScoreName::Heads => f.write_str("heads"),
            ScoreName::Depth { metric, block: 1 } => write!(f, "depth.{metric}"),
            ScoreName::Depth { metric, block } => write!(f, "depth.{metric}.size{block}"),
        }
    }
}

impl FromStr for ScoreName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || format!("`{s}` is not a score tensor name");
        match s {
            "hidden" => return Ok(ScoreName::Hidden),
            "ffn" => return Ok(ScoreName::Ffn),
            "heads" => return Ok(ScoreName::Heads),
            _ => {}
        }
        let rest = s.strip_prefix("depth.").ok_or_else(unknown)?;
        // A block of one layer is the per-layer tensor, which has no suffix.
        let (metric, block) = match rest.split_once(".size") {
            Some((metric, n)) => match n.parse::<usize>() {
                Ok(n) if n >= 2 => (metric, n),
                _ => return Err(unknown()),
            },
            None => (rest, 1),
        };
        let metric = [DepthMetric::BlockImportance, DepthMetric::Perplexity]
            .into_iter()
            .find(|m| m.name() == metric)
            .ok_or_else(unknown)?;
        Ok(ScoreName::Depth { metric, block })
    }
}

/// What was scored and how; the rankings, for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoresSummary {
    /// The scored model's config.json.
    pub model_config: serde_json::Value,
    pub samples: usize,
    pub seq_len: usize,
    /// Aggregation over the batch and over the sequence.
    pub batch_aggregation: Aggregation,
    pub sequence_aggregation: Aggregation,
    /// Held-out loss of the full model (when depth perplexity was computed).
    pub baseline_loss: Option<f64>,
    /// Rankings for people: score name -> indices, most important first.
    pub rankings: serde_json::Map<String, serde_json::Value>,
}

/// Importance scores in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub tensors: StateDict,
    pub summary: ScoresSummary,
}

impl Scores {
    /// A score tensor, when it was computed.
    pub fn get(&self, name: ScoreName) -> Option<&HostTensor> {
        self.tensors.get(&name.to_string())
    }

    /// Adds a score tensor and its ranking (for `[n]` tensors; one ranking
    /// per row for `[rows, n]` tensors).
    pub fn insert(&mut self, name: ScoreName, tensor: HostTensor) {
        let ranked: serde_json::Value = match tensor.shape.len() {
            1 => ranking(&tensor.data).into(),
            _ => tensor
                .data
                .chunks(tensor.shape[1].max(1))
                .map(ranking)
                .collect::<Vec<_>>()
                .into(),
        };
        self.summary.rankings.insert(name.to_string(), ranked);
        self.tensors.insert(name.to_string(), tensor);
    }

    /// Row `layer` of a `[layers, n]` score tensor.
    pub fn row(tensor: &HostTensor, layer: usize) -> &[f32] {
        let n = tensor.shape[1];
        &tensor.data[layer * n..(layer + 1) * n]
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        write_safetensors(
            &dir.join(SCORES_FILE),
            self.tensors.iter().map(|(k, v)| (k.as_str(), v)),
            DiskDtype::F32,
        )?;
        std::fs::write(
            dir.join(SCORES_SUMMARY_FILE),
            serde_json::to_vec_pretty(&self.summary)?,
        )?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let tensors = read_safetensors(&dir.join(SCORES_FILE))
            .with_context(|| format!("{} is not a Scores artifact", dir.display()))?;
        let summary: ScoresSummary = serde_json::from_slice(
            &std::fs::read(dir.join(SCORES_SUMMARY_FILE))
                .with_context(|| format!("cannot read {}/{SCORES_SUMMARY_FILE}", dir.display()))?,
        )
        .with_context(|| format!("{}/{SCORES_SUMMARY_FILE} is malformed", dir.display()))?;
        let scores = Self { tensors, summary };
        for (name, t) in &scores.tensors {
            if let Err(e) = name.parse::<ScoreName>() {
                bail!("{}/{SCORES_FILE}: {e}", dir.display());
            }
            if t.data.iter().any(|v| !v.is_finite()) {
                bail!("score tensor {name} holds non-finite values");
            }
        }
        Ok(scores)
    }
}

/// Indices sorted by descending score (ties by index, so the order is
/// deterministic).
pub fn ranking(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_descending_and_stable_on_ties() {
        assert_eq!(ranking(&[0.5, 2.0, 0.5, 1.0]), vec![1, 3, 0, 2]);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = StateDict::new();
        tensors.insert(
            "hidden".into(),
            HostTensor::new(vec![3], vec![1.0, 3.0, 2.0]),
        );
        tensors.insert(
            "ffn".into(),
            HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
        );
        let scores = Scores {
            tensors,
            summary: ScoresSummary {
                model_config: serde_json::json!({"hidden_size": 3}),
                samples: 4,
                seq_len: 8,
                batch_aggregation: Aggregation::L2,
                sequence_aggregation: Aggregation::Mean,
                baseline_loss: Some(2.5),
                rankings: Default::default(),
            },
        };
        scores.save(dir.path()).unwrap();
        let loaded = Scores::load(dir.path()).unwrap();
        assert_eq!(loaded, scores);
        assert_eq!(
            Scores::row(loaded.get(ScoreName::Ffn).unwrap(), 1),
            &[3.0, 4.0]
        );
    }

    #[test]
    fn score_names_round_trip_through_their_text() {
        use DepthMetric::{BlockImportance, Perplexity};
        for (name, text) in [
            (ScoreName::Hidden, "hidden"),
            (ScoreName::Ffn, "ffn"),
            (ScoreName::Heads, "heads"),
            (ScoreName::layers(BlockImportance), "depth.block_importance"),
            (ScoreName::layers(Perplexity), "depth.perplexity"),
            (
                ScoreName::Depth {
                    metric: BlockImportance,
                    block: 4,
                },
                "depth.block_importance.size4",
            ),
            (
                ScoreName::Depth {
                    metric: Perplexity,
                    block: 2,
                },
                "depth.perplexity.size2",
            ),
        ] {
            assert_eq!(name.to_string(), text);
            assert_eq!(text.parse::<ScoreName>(), Ok(name));
        }
        for bad in [
            "",
            "depth",
            "depth.cosine",
            "depth.perplexity.size",
            "depth.perplexity.size0",
            "depth.perplexity.size1",
            "Hidden",
        ] {
            assert!(bad.parse::<ScoreName>().is_err(), "{bad} parsed");
        }
    }
}
