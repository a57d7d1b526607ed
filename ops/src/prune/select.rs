//! Which units survive: from per-axis rankings (most important first) and
//! the target sizes to the kept indices of every axis, with the GQA rules of
//! METHOD.md section 4 (query heads are pruned inside their kv group; whole
//! groups are dropped only on request).

use super::rank::{DepthRanking, Rankings};
use super::targets::{DepthTarget, Targets};
use crate::model::LlamaConfig;
use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// The kept indices of every axis, in source-model indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    /// Hidden channels, one set for every layer, most important first.
    pub hidden: Vec<usize>,
    /// The surviving layers in model order; the position in this list is the
    /// layer's new index.
    pub layers: Vec<KeepLayer>,
}

/// The kept units of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepLayer {
    /// The layer's index in the source model.
    pub source: usize,
    /// MLP neurons, most important first.
    pub ffn: Vec<usize>,
    /// Key/value heads (groups); new kv head `j` is source kv head
    /// `kv_groups[j]`.
    pub kv_groups: Vec<usize>,
    /// Query heads, group by group: the first `heads.len() / kv_groups.len()`
    /// read `kv_groups[0]`, the next ones `kv_groups[1]`, and so on; within a
    /// group, most important first. Source query head `h` belongs to group
    /// `h / (H / G)`.
    pub heads: Vec<usize>,
}

impl Keep {
    /// Keeps everything in its original order.
    pub fn identity(config: &LlamaConfig) -> Self {
        let c = config;
        Self {
            hidden: (0..c.hidden_size).collect(),
            layers: (0..c.num_hidden_layers)
                .map(|source| KeepLayer {
                    source,
                    ffn: (0..c.intermediate_size).collect(),
                    kv_groups: (0..c.num_key_value_heads).collect(),
                    heads: (0..c.num_attention_heads).collect(),
                })
                .collect(),
        }
    }

    /// The kept units for `targets`, taking the top of each ranking.
    /// Targets are checked against the model's sizes first
    /// ([`Targets::problems`]), with messages that name the field as a
    /// recipe spells it.
    pub fn select(config: &LlamaConfig, rankings: &Rankings, targets: &Targets) -> Result<Self> {
        let c = config;
        let (h, f, nh, g) = (
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
        );
        let per_group = nh / g;
        let problems = targets.problems(config);
        if !problems.is_empty() {
            let lines: Vec<String> = problems.into_iter().map(|p| p.message).collect();
            bail!("{}", lines.join("; "));
        }
        let groups_kept = targets.kv_groups.unwrap_or(g);
        let heads_per_group = targets.heads.map_or(per_group, |n| n / groups_kept);

        let hidden = match targets.hidden {
            None => (0..h).collect(),
            Some(n) => top("hidden", rankings.hidden.as_deref(), h, n)?,
        };
        let sources = select_layers(
            c.num_hidden_layers,
            rankings.depth.as_ref(),
            targets.depth.as_ref(),
        )?;

        let mut layers = Vec::with_capacity(sources.len());
        for source in sources {
            let ffn = match targets.ffn {
                None => (0..f).collect(),
                Some(n) => top(
                    "ffn",
                    Some(layer_ranking(&rankings.ffn, source, "ffn")?),
                    f,
                    n,
                )?,
            };
            let kv_groups: Vec<usize> = match targets.kv_groups {
                None => (0..g).collect(),
                Some(n) => top(
                    "kv_groups",
                    Some(layer_ranking(&rankings.kv_groups, source, "kv_groups")?),
                    g,
                    n,
                )?,
            };
            let heads = match targets.heads {
                // Whole groups: their heads in the original order.
                None => kv_groups
                    .iter()
                    .flat_map(|&grp| grp * per_group..(grp + 1) * per_group)
                    .collect(),
                Some(_) => {
                    let ranking = layer_ranking(&rankings.heads, source, "heads")?;
                    check_permutation("heads", ranking, nh)?;
                    // Each group keeps its top heads, ranked within the group.
                    kv_groups
                        .iter()
                        .flat_map(|&grp| {
                            ranking
                                .iter()
                                .copied()
                                .filter(move |&head| head / per_group == grp)
                                .take(heads_per_group)
                        })
                        .collect()
                }
            };
            layers.push(KeepLayer {
                source,
                ffn,
                kv_groups,
                heads,
            });
        }
        let keep = Self { hidden, layers };
        keep.check(config)?;
        Ok(keep)
    }

    /// Checks that these indices describe a valid pruning of `config`: in
    /// range, no repeats, the same count in every layer (the config has one
    /// size per axis), layers in model order, and every kept query head in
    /// the kv group it is placed with.
    pub fn check(&self, config: &LlamaConfig) -> Result<()> {
        let c = config;
        let per_group = c.num_attention_heads / c.num_key_value_heads;
        check_indices("hidden channels", &self.hidden, c.hidden_size)?;
        ensure!(!self.layers.is_empty(), "every layer would be dropped");
        for pair in self.layers.windows(2) {
            ensure!(
                pair[0].source < pair[1].source && pair[1].source < c.num_hidden_layers,
                "kept layers must be distinct, in model order and below {}: {:?}",
                c.num_hidden_layers,
                self.layers.iter().map(|l| l.source).collect::<Vec<_>>()
            );
        }
        let first = &self.layers[0];
        ensure!(
            first.source < c.num_hidden_layers,
            "layer {} is out of range (the model has {})",
            first.source,
            c.num_hidden_layers
        );
        for layer in &self.layers {
            let l = layer.source;
            check_indices(
                &format!("layer {l} MLP neurons"),
                &layer.ffn,
                c.intermediate_size,
            )?;
            check_indices(
                &format!("layer {l} kv groups"),
                &layer.kv_groups,
                c.num_key_value_heads,
            )?;
            check_indices(
                &format!("layer {l} query heads"),
                &layer.heads,
                c.num_attention_heads,
            )?;
            ensure!(
                layer.ffn.len() == first.ffn.len()
                    && layer.kv_groups.len() == first.kv_groups.len()
                    && layer.heads.len() == first.heads.len(),
                "layer {l} keeps {} neurons, {} kv groups and {} heads, layer {} keeps {}, {} and {}: \
                 every layer must keep the same sizes",
                layer.ffn.len(),
                layer.kv_groups.len(),
                layer.heads.len(),
                first.source,
                first.ffn.len(),
                first.kv_groups.len(),
                first.heads.len()
            );
            ensure!(
                layer.heads.len().is_multiple_of(layer.kv_groups.len()),
                "layer {l} keeps {} query heads over {} kv groups: not a multiple",
                layer.heads.len(),
                layer.kv_groups.len()
            );
            let kept_per_group = layer.heads.len() / layer.kv_groups.len();
            for (i, &head) in layer.heads.iter().enumerate() {
                let group = layer.kv_groups[i / kept_per_group];
                ensure!(
                    head / per_group == group,
                    "layer {l}: query head {head} belongs to kv group {} but is placed with \
                     kv group {group}",
                    head / per_group
                );
            }
        }
        Ok(())
    }

    /// The config of the pruned model: the new sizes, `head_dim` unchanged
    /// (and written explicitly, since it no longer follows from the others).
    pub fn pruned_config(&self, config: &LlamaConfig) -> LlamaConfig {
        let mut out = config.clone();
        let first = &self.layers[0];
        out.hidden_size = self.hidden.len();
        out.intermediate_size = first.ffn.len();
        out.num_attention_heads = first.heads.len();
        out.num_key_value_heads = first.kv_groups.len();
        out.num_hidden_layers = self.layers.len();
        out
    }

    /// Source indices of the layers that were dropped, ascending.
    pub fn dropped_layers(&self, config: &LlamaConfig) -> Vec<usize> {
        (0..config.num_hidden_layers)
            .filter(|l| !self.layers.iter().any(|k| k.source == *l))
            .collect()
    }
}

/// The first `n` entries of an axis ranking.
fn top(axis: &str, ranking: Option<&[usize]>, size: usize, n: usize) -> Result<Vec<usize>> {
    let Some(ranking) = ranking else {
        bail!("no ranking for the `{axis}` axis")
    };
    check_permutation(axis, ranking, size)?;
    Ok(ranking[..n].to_vec())
}

/// Row `layer` of a per-layer ranking.
fn layer_ranking<'a>(
    rankings: &'a Option<Vec<Vec<usize>>>,
    layer: usize,
    axis: &str,
) -> Result<&'a [usize]> {
    match rankings {
        None => bail!("no ranking for the `{axis}` axis"),
        Some(rows) => match rows.get(layer) {
            Some(row) => Ok(row.as_slice()),
            None => bail!(
                "the `{axis}` ranking covers {} layers; layer {layer} has none",
                rows.len()
            ),
        },
    }
}

fn check_permutation(axis: &str, ranking: &[usize], size: usize) -> Result<()> {
    ensure!(
        ranking.len() == size,
        "the `{axis}` ranking has {} entries, the model has {size}",
        ranking.len()
    );
    check_indices(&format!("`{axis}` ranking"), ranking, size)
}

/// Indices below `size`, none twice, at least one.
fn check_indices(what: &str, indices: &[usize], size: usize) -> Result<()> {
    ensure!(!indices.is_empty(), "no {what} would be kept");
    let mut seen = vec![false; size];
    for &i in indices {
        ensure!(i < size, "{what}: index {i} is out of range (size {size})");
        ensure!(!seen[i], "{what}: index {i} appears twice");
        seen[i] = true;
    }
    Ok(())
}

/// The surviving layers, ascending.
fn select_layers(
    layers: usize,
    ranking: Option<&DepthRanking>,
    target: Option<&DepthTarget>,
) -> Result<Vec<usize>> {
    let all = || (0..layers).collect::<Vec<_>>();
    match target {
        None => Ok(all()),
        Some(DepthTarget::Layers(n)) => {
            let n = *n;
            let Some(DepthRanking::Layers(ranking)) = ranking else {
                bail!("no per-layer depth ranking for `layers: {n}`")
            };
            check_permutation("layers", ranking, layers)?;
            let mut kept = ranking[..n].to_vec();
            kept.sort_unstable();
            Ok(kept)
        }
        Some(DepthTarget::Contiguous(n)) => {
            let n = *n;
            let size = layers - n;
            if size == 0 {
                return Ok(all());
            }
            let Some(DepthRanking::Blocks {
                size: ranked_size,
                starts,
            }) = ranking
            else {
                bail!("no ranking of contiguous blocks of {size} layers for `layers: {n}`")
            };
            ensure!(
                *ranked_size == size,
                "the block ranking is for blocks of {ranked_size} layers, `layers: {n}` drops {size}"
            );
            check_permutation("layer blocks", starts, layers - size + 1)?;
            let start = *starts.last().expect("at least one block");
            Ok((0..layers)
                .filter(|l| !(start..start + size).contains(l))
                .collect())
        }
        Some(DepthTarget::Drop(drop)) => Ok((0..layers).filter(|l| !drop.contains(l)).collect()),
    }
}
