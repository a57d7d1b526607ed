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
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCORES_FILE: &str = "scores.safetensors";
pub const SUMMARY_FILE: &str = "summary.json";

/// What was scored and how; the rankings, for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoresSummary {
    /// The scored model's config.json.
    pub model_config: serde_json::Value,
    pub samples: usize,
    pub seq_len: usize,
    /// Aggregation over the batch and over the sequence (`l2`, `mean`, `var`).
    pub batch_aggregation: String,
    pub sequence_aggregation: String,
    /// Held-out loss of the full model (when depth perplexity was computed).
    pub baseline_loss: Option<f64>,
    /// Free-form rankings: axis -> indices, most important first.
    pub rankings: serde_json::Map<String, serde_json::Value>,
}

/// Importance scores in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub tensors: StateDict,
    pub summary: ScoresSummary,
}

impl Scores {
    pub fn hidden(&self) -> Option<&HostTensor> {
        self.tensors.get("hidden")
    }

    pub fn ffn(&self) -> Option<&HostTensor> {
        self.tensors.get("ffn")
    }

    pub fn heads(&self) -> Option<&HostTensor> {
        self.tensors.get("heads")
    }

    /// A depth score vector by name (`depth.block_importance.size4`).
    pub fn depth(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
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
            dir.join(SUMMARY_FILE),
            serde_json::to_vec_pretty(&self.summary)?,
        )?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let tensors = read_safetensors(&dir.join(SCORES_FILE))
            .with_context(|| format!("{} is not a Scores artifact", dir.display()))?;
        let summary: ScoresSummary = serde_json::from_slice(
            &std::fs::read(dir.join(SUMMARY_FILE))
                .with_context(|| format!("cannot read {}/{SUMMARY_FILE}", dir.display()))?,
        )
        .with_context(|| format!("{}/{SUMMARY_FILE} is malformed", dir.display()))?;
        let scores = Self { tensors, summary };
        for (name, t) in &scores.tensors {
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
                batch_aggregation: "l2".into(),
                sequence_aggregation: "mean".into(),
                baseline_loss: Some(2.5),
                rankings: Default::default(),
            },
        };
        scores.save(dir.path()).unwrap();
        let loaded = Scores::load(dir.path()).unwrap();
        assert_eq!(loaded, scores);
        assert_eq!(Scores::row(loaded.ffn().unwrap(), 1), &[3.0, 4.0]);
    }
}
