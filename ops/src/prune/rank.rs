//! Per-axis rankings, most important unit first, from the four ways the
//! `prune` op can judge importance: the Scores artifact (the Minitron method),
//! weight magnitude, a seeded shuffle, or the scores reversed.
//!
//! Only the axes a [`Targets`] asks for are ranked, so a Scores artifact that
//! lacks an axis the recipe does not prune is fine.

use super::select::{DepthTarget, Targets};
use crate::io::scores::{Scores, ranking};
use crate::io::{HostTensor, StateDict};
use crate::model::LlamaConfig;
use crate::rng::{SplitMix64, mix};
use anyhow::{Result, bail, ensure};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every ranking is a permutation of the axis' indices, most important first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rankings {
    /// `[hidden_size]`
    pub hidden: Option<Vec<usize>>,
    /// `[layers][intermediate_size]`
    pub ffn: Option<Vec<Vec<usize>>>,
    /// `[layers][num_attention_heads]`, global query-head indices; the order
    /// inside each kv group is what counts.
    pub heads: Option<Vec<Vec<usize>>>,
    /// `[layers][num_key_value_heads]`
    pub kv_groups: Option<Vec<Vec<usize>>>,
    pub depth: Option<DepthRanking>,
}

/// A ranking of layers, or of contiguous blocks of layers.
#[derive(Debug, Clone, PartialEq)]
pub enum DepthRanking {
    /// Layer indices, most important first.
    Layers(Vec<usize>),
    /// Start indices of the blocks of `size` consecutive layers, most
    /// important first; the last one is the block to drop.
    Blocks { size: usize, starts: Vec<usize> },
}

/// Which depth score of the Scores artifact ranks the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DepthMetric {
    /// Block importance: 1 - cosine similarity of a layer's (block's) input
    /// and output (`depth.block_importance`).
    #[default]
    BlockImportance,
    /// Increase of the held-out loss when the layer (block) is removed
    /// (`depth.perplexity`).
    Perplexity,
}

impl DepthMetric {
    /// The per-layer tensor's name in the Scores artifact.
    pub fn tensor_name(self) -> &'static str {
        match self {
            Self::BlockImportance => "depth.block_importance",
            Self::Perplexity => "depth.perplexity",
        }
    }
}

impl Rankings {
    /// Rankings from importance scores (higher is more important): hidden
    /// channels, neurons and heads by their scores; kv groups by the L2 norm
    /// of their heads' scores; layers by `depth.<metric>`, contiguous blocks
    /// of `k` layers by `depth.<metric>.size{k}` (the per-layer tensor when
    /// `k` is 1 and no `size1` tensor exists).
    pub fn from_scores(
        scores: &Scores,
        config: &LlamaConfig,
        targets: &Targets,
        metric: DepthMetric,
    ) -> Result<Self> {
        let c = config;
        let l = c.num_hidden_layers;
        let mut out = Self::default();
        if targets.hidden.is_some() {
            let t = score_tensor(scores, "hidden", &[c.hidden_size], &axis_hint("hidden"))?;
            out.hidden = Some(ranking(&t.data));
        }
        if targets.ffn.is_some() {
            let t = score_tensor(scores, "ffn", &[l, c.intermediate_size], &axis_hint("ffn"))?;
            out.ffn = Some(per_row(t, ranking));
        }
        if targets.heads.is_some() || targets.kv_groups.is_some() {
            let t = score_tensor(
                scores,
                "heads",
                &[l, c.num_attention_heads],
                &axis_hint("heads"),
            )?;
            if targets.heads.is_some() {
                out.heads = Some(per_row(t, ranking));
            }
            if targets.kv_groups.is_some() {
                let groups = c.num_key_value_heads;
                out.kv_groups = Some(per_row(t, |heads| ranking(&group_norms(heads, groups))));
            }
        }
        match &targets.depth {
            None | Some(DepthTarget::Drop(_)) => {}
            Some(DepthTarget::Layers(_)) => {
                let hint = metric_hint(metric);
                let t = score_tensor(scores, metric.tensor_name(), &[l], &hint)?;
                out.depth = Some(DepthRanking::Layers(ranking(&t.data)));
            }
            Some(DepthTarget::Contiguous(n)) => {
                let size = l.saturating_sub(*n);
                if size > 0 {
                    let name = format!("{}.size{size}", metric.tensor_name());
                    let t = match scores.depth(&name) {
                        None if size == 1 => {
                            score_tensor(scores, metric.tensor_name(), &[l], &metric_hint(metric))?
                        }
                        _ => {
                            let hint = format!(
                                "{}, with blocks of {size} layers (`block_sizes: [{size}]`)",
                                metric_hint(metric)
                            );
                            score_tensor(scores, &name, &[l - size + 1], &hint)?
                        }
                    };
                    out.depth = Some(DepthRanking::Blocks {
                        size,
                        starts: ranking(&t.data),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Every ranking turned around: the least important first. Kept units
    /// are then the least important ones, and a contiguous cut removes the
    /// block whose removal hurts most.
    pub fn reversed(mut self) -> Self {
        let rev = |v: &mut Vec<usize>| v.reverse();
        self.hidden.iter_mut().for_each(rev);
        for rows in [&mut self.ffn, &mut self.heads, &mut self.kv_groups] {
            rows.iter_mut().flatten().for_each(rev);
        }
        match &mut self.depth {
            Some(DepthRanking::Layers(v)) | Some(DepthRanking::Blocks { starts: v, .. }) => {
                v.reverse()
            }
            None => {}
        }
        self
    }

    /// Uniformly random rankings from `seed`: each axis (and each layer of
    /// a per-layer axis) draws from its own stream, so adding a target does
    /// not change the draws of the others.
    pub fn random(config: &LlamaConfig, targets: &Targets, seed: u64) -> Self {
        let c = config;
        let l = c.num_hidden_layers;
        let shuffle = |axis: u64, layer: usize, n: usize| {
            SplitMix64::new(mix(mix(seed, axis), layer as u64)).permutation(n)
        };
        let per_layer = |axis: u64, n: usize| -> Vec<Vec<usize>> {
            (0..l).map(|i| shuffle(axis, i, n)).collect()
        };
        let mut out = Self::default();
        if targets.hidden.is_some() {
            out.hidden = Some(shuffle(1, 0, c.hidden_size));
        }
        if targets.ffn.is_some() {
            out.ffn = Some(per_layer(2, c.intermediate_size));
        }
        if targets.heads.is_some() {
            out.heads = Some(per_layer(3, c.num_attention_heads));
        }
        if targets.kv_groups.is_some() {
            out.kv_groups = Some(per_layer(4, c.num_key_value_heads));
        }
        out.depth = match &targets.depth {
            None | Some(DepthTarget::Drop(_)) => None,
            Some(DepthTarget::Layers(_)) => Some(DepthRanking::Layers(shuffle(5, 0, l))),
            Some(DepthTarget::Contiguous(n)) => {
                let size = l.saturating_sub(*n);
                (size > 0).then(|| DepthRanking::Blocks {
                    size,
                    starts: shuffle(6, 0, l - size + 1),
                })
            }
        };
        out
    }

    /// Rankings by weight magnitude, from the weights alone:
    /// - hidden channel `c`: L2 norm of its embedding column together with
    ///   every RMSNorm weight at `c` (both norms of every layer and the final
    ///   norm), `sqrt(sum_v E[v,c]^2 + sum_norms w[c]^2)`;
    /// - MLP neuron `j`: `||down[:, j]|| * ||gate[j, :]|| * ||up[j, :]||`,
    ///   how large the neuron's output can get for an input of unit norm
    ///   (SiLU grows about linearly with its argument);
    /// - query head: Frobenius norm of its `o_proj` columns; kv group: L2 of
    ///   its heads' norms (as for scores);
    /// - layer: Frobenius norm of all its projection weights (q, k, v, o,
    ///   gate, up, down; not the norms); a contiguous block: the Frobenius
    ///   norm over its layers.
    ///
    /// `tensors` must fit `config` (see [`LlamaConfig::tensor_problems`]).
    pub fn magnitude(config: &LlamaConfig, tensors: &StateDict, targets: &Targets) -> Result<Self> {
        let c = config;
        let l = c.num_hidden_layers;
        let get = |name: &str| -> Result<&HostTensor> {
            match tensors.get(name) {
                Some(t) => Ok(t),
                None => bail!("the model has no tensor {name}"),
            }
        };
        let layer = |i: usize, name: &str| get(&format!("model.layers.{i}.{name}"));
        let mut out = Self::default();

        if targets.hidden.is_some() {
            let h = c.hidden_size;
            let mut sq = vec![0.0f64; h];
            let embed = get("model.embed_tokens.weight")?;
            for row in embed.data.chunks_exact(h) {
                for (s, &v) in sq.iter_mut().zip(row) {
                    *s += (v as f64) * (v as f64);
                }
            }
            let mut norms = vec![get("model.norm.weight")?];
            for i in 0..l {
                norms.push(layer(i, "input_layernorm.weight")?);
                norms.push(layer(i, "post_attention_layernorm.weight")?);
            }
            for norm in norms {
                for (s, &v) in sq.iter_mut().zip(&norm.data) {
                    *s += (v as f64) * (v as f64);
                }
            }
            out.hidden = Some(ranking(&to_f32(sq.iter().map(|s| s.sqrt()))));
        }

        if targets.ffn.is_some() {
            let mut rows = Vec::with_capacity(l);
            for i in 0..l {
                let gate = row_norms(layer(i, "mlp.gate_proj.weight")?);
                let up = row_norms(layer(i, "mlp.up_proj.weight")?);
                let down = col_norms(layer(i, "mlp.down_proj.weight")?);
                let score = (0..c.intermediate_size).map(|j| down[j] * gate[j] * up[j]);
                rows.push(ranking(&to_f32(score)));
            }
            out.ffn = Some(rows);
        }

        if targets.heads.is_some() || targets.kv_groups.is_some() {
            let (nh, d) = (c.num_attention_heads, c.head_dim);
            let mut head_rows = Vec::with_capacity(l);
            let mut group_rows = Vec::with_capacity(l);
            for i in 0..l {
                let cols = col_norms(layer(i, "self_attn.o_proj.weight")?);
                let heads: Vec<f32> = to_f32((0..nh).map(|hh| {
                    cols[hh * d..(hh + 1) * d]
                        .iter()
                        .map(|v| v * v)
                        .sum::<f64>()
                        .sqrt()
                }));
                group_rows.push(ranking(&group_norms(&heads, c.num_key_value_heads)));
                head_rows.push(ranking(&heads));
            }
            if targets.heads.is_some() {
                out.heads = Some(head_rows);
            }
            if targets.kv_groups.is_some() {
                out.kv_groups = Some(group_rows);
            }
        }

        let needs_depth = matches!(
            targets.depth,
            Some(DepthTarget::Layers(_)) | Some(DepthTarget::Contiguous(_))
        );
        if needs_depth {
            let mut sq = Vec::with_capacity(l);
            for i in 0..l {
                let mut s = 0.0f64;
                for name in [
                    "self_attn.q_proj.weight",
                    "self_attn.k_proj.weight",
                    "self_attn.v_proj.weight",
                    "self_attn.o_proj.weight",
                    "mlp.gate_proj.weight",
                    "mlp.up_proj.weight",
                    "mlp.down_proj.weight",
                ] {
                    s += layer(i, name)?
                        .data
                        .iter()
                        .map(|&v| (v as f64) * (v as f64))
                        .sum::<f64>();
                }
                sq.push(s);
            }
            out.depth = match &targets.depth {
                Some(DepthTarget::Layers(_)) => Some(DepthRanking::Layers(ranking(&to_f32(
                    sq.iter().map(|s| s.sqrt()),
                )))),
                Some(DepthTarget::Contiguous(n)) => {
                    let size = l.saturating_sub(*n);
                    (size > 0).then(|| DepthRanking::Blocks {
                        size,
                        starts: ranking(&to_f32(
                            sq.windows(size).map(|w| w.iter().sum::<f64>().sqrt()),
                        )),
                    })
                }
                _ => None,
            };
        }
        Ok(out)
    }
}

/// A score tensor with the shape the model implies; `hint` says what the
/// importance stage must compute when it is absent.
fn score_tensor<'a>(
    scores: &'a Scores,
    name: &str,
    shape: &[usize],
    hint: &str,
) -> Result<&'a HostTensor> {
    let Some(t) = scores.tensors.get(name) else {
        let present: Vec<&str> = scores.tensors.keys().map(String::as_str).collect();
        bail!("the scores have no `{name}` tensor (present: {present:?}); {hint}")
    };
    ensure!(
        t.shape == shape,
        "the scores' `{name}` tensor has shape {:?}, but this model needs {shape:?}: \
         were the scores computed for another model?",
        t.shape
    );
    Ok(t)
}

/// The hint for a missing depth metric.
fn metric_hint(metric: DepthMetric) -> String {
    let name = match metric {
        DepthMetric::BlockImportance => "block_importance",
        DepthMetric::Perplexity => "perplexity",
    };
    format!("the importance stage must score the `depth` axis with the `{name}` metric")
}

/// The hint for a missing axis.
fn axis_hint(axis: &str) -> String {
    format!("the importance stage must score the `{axis}` axis")
}

/// `f` applied to every row of a `[rows, n]` tensor.
fn per_row(t: &HostTensor, f: impl Fn(&[f32]) -> Vec<usize>) -> Vec<Vec<usize>> {
    t.data.chunks_exact(t.shape[1]).map(f).collect()
}

/// L2 norm of each group's head scores (`heads` in group-major order).
fn group_norms(heads: &[f32], groups: usize) -> Vec<f32> {
    heads
        .chunks_exact(heads.len() / groups)
        .map(|g| {
            g.iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

/// L2 norm of each row of a `[out, in]` matrix.
fn row_norms(t: &HostTensor) -> Vec<f64> {
    t.data
        .chunks_exact(t.shape[1])
        .map(|r| {
            r.iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// L2 norm of each column of a `[out, in]` matrix.
fn col_norms(t: &HostTensor) -> Vec<f64> {
    let mut sq = vec![0.0f64; t.shape[1]];
    for row in t.data.chunks_exact(t.shape[1]) {
        for (s, &v) in sq.iter_mut().zip(row) {
            *s += (v as f64) * (v as f64);
        }
    }
    sq.into_iter().map(f64::sqrt).collect()
}

fn to_f32(values: impl Iterator<Item = f64>) -> Vec<f32> {
    values.map(|v| v as f32).collect()
}
