//! Width and depth pruning of a Llama model held in host memory, as
//! METHOD.md sections 4 and 5 describe it: rank the units of every axis
//! ([`rank`]: importance scores, weight magnitude, a seeded shuffle), choose
//! which hidden channels, MLP neurons, query heads, kv groups and layers
//! survive ([`select`]), then slice every tensor of the state dict to them
//! ([`slice`]).
//!
//! Kept indices stay in descending importance order, as ModelOpt leaves them:
//! every tensor that reads an axis is sliced with the same index list, so the
//! pruned model computes the same function as with ascending indices, and an
//! axis kept whole under a permuted ranking is an exact re-ordering of the
//! model (a test checks that the logits do not move).
//!
//! What to keep of each axis is a [`Targets`] ([`targets`]).
//!
//! ```text
//! Rankings::from_scores / magnitude / random  ->  Keep::select  ->  apply
//!        (most important first, per axis)        (kept indices)    (config, tensors)
//! ```

pub mod rank;
pub mod report;
pub mod select;
pub mod slice;
pub mod targets;

pub use rank::{DepthRanking, Rankings};
pub use select::{Keep, KeepLayer};
pub use slice::apply;
pub use targets::{DepthTarget, TargetProblem, Targets};

use crate::io::StateDict;
use crate::model::LlamaConfig;

/// A pruned model and the indices that made it.
#[derive(Debug, Clone)]
pub struct Pruned {
    pub config: LlamaConfig,
    pub tensors: StateDict,
    pub keep: Keep,
}

/// Selects the units to keep from `rankings` and `targets`, then slices
/// `tensors` (a model of `config`) to them.
pub fn prune(
    config: &LlamaConfig,
    tensors: StateDict,
    rankings: &Rankings,
    targets: &Targets,
) -> anyhow::Result<Pruned> {
    let keep = Keep::select(config, rankings, targets)?;
    let (config, tensors) = apply(config, tensors, &keep)?;
    Ok(Pruned {
        config,
        tensors,
        keep,
    })
}
