//! `pruning.json`, written beside a pruned model's weights: how the units
//! were ranked, the shapes before and after, and the kept indices of every
//! axis. The `prune` op writes it; reports and analysis scripts read it.

use super::select::Keep;
use crate::io::scores::DepthMetric;
use crate::model::LlamaConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The file beside the weights that lists what was kept.
pub const PRUNING_FILE: &str = "pruning.json";

/// How units are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PruneMethod {
    /// Keep what the `scores` input ranks highest (the Minitron method).
    #[default]
    Importance,
    /// Rank by weight magnitude, without scores: a hidden channel, neuron,
    /// head or kv group by the L2 norm of all the weights attached to it
    /// (RMSNorm gains folded into the columns that read them); a layer (or
    /// contiguous block) by the norm of its projection weights.
    Magnitude,
    /// A uniformly random choice, seeded by the recipe's `seed` (mixed with
    /// `random_seed` when given): a baseline.
    Random,
    /// Keep what the `scores` input ranks lowest: a sanity baseline that
    /// should do worst.
    Reverse,
}

impl PruneMethod {
    pub fn name(self) -> &'static str {
        match self {
            Self::Importance => "importance",
            Self::Magnitude => "magnitude",
            Self::Random => "random",
            Self::Reverse => "reverse",
        }
    }

    /// True for the methods that read the `scores` input.
    pub fn needs_scores(self) -> bool {
        matches!(self, Self::Importance | Self::Reverse)
    }
}

/// What `pruning.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruningReport {
    pub method: PruneMethod,
    /// The depth score used, when layers were ranked by scores.
    pub depth_metric: Option<DepthMetric>,
    pub source: ModelSizes,
    pub result: ModelSizes,
    /// Source indices of the dropped layers.
    pub dropped_layers: Vec<usize>,
    /// Kept indices per axis, in source indices; hidden channels, neurons
    /// and heads most important first.
    pub kept: Keep,
}

/// A model's sizes and parameter count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSizes {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub parameters: usize,
}

impl ModelSizes {
    pub fn of(c: &LlamaConfig) -> Self {
        Self {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            parameters: c.num_parameters(),
        }
    }
}
