//! Per-axis rankings, most important unit first, from the four ways the
//! `prune` op can judge importance: the Scores artifact (the Minitron method),
//! weight magnitude, a seeded shuffle, or the scores reversed.
//!
//! Only the axes a [`Targets`] asks for are ranked, so a Scores artifact that
//! lacks an axis the recipe does not prune is fine.

use super::targets::{DepthTarget, Targets};
use crate::io::scores::{Axis, DepthMetric, ScoreName, Scores, ranking};
use crate::io::{HostTensor, StateDict};
use crate::model::LlamaConfig;
use crate::rng::{SplitMix64, mix};
use anyhow::{Result, bail, ensure};

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

impl Rankings {
    /// Rankings from importance scores (higher is more important): hidden
    /// channels, neurons and heads by their scores; kv groups by the L2 norm
    /// of their heads' scores; layers by the per-layer scores of `metric`,
    /// contiguous blocks of `k` layers by its scores of blocks of `k`.
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
            let t = score_tensor(
                scores,
                ScoreName::Hidden,
                &[c.hidden_size],
                &axis_hint(Axis::Hidden),
            )?;
            out.hidden = Some(ranking(&t.data));
        }
        if targets.ffn.is_some() {
            let shape = [l, c.intermediate_size];
            let t = score_tensor(scores, ScoreName::Ffn, &shape, &axis_hint(Axis::Ffn))?;
            out.ffn = Some(per_row(t, ranking));
        }
        if targets.heads.is_some() || targets.kv_groups.is_some() {
            let shape = [l, c.num_attention_heads];
            let t = score_tensor(scores, ScoreName::Heads, &shape, &axis_hint(Axis::Heads))?;
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
                let name = ScoreName::layers(metric);
                let t = score_tensor(scores, name, &[l], &metric_hint(metric))?;
                out.depth = Some(DepthRanking::Layers(ranking(&t.data)));
            }
            Some(DepthTarget::Contiguous(n)) => {
                let size = l.saturating_sub(*n);
                if size > 0 {
                    let name = ScoreName::Depth {
                        metric,
                        block: size,
                    };
                    let hint = if size == 1 {
                        metric_hint(metric)
                    } else {
                        format!(
                            "{}, with blocks of {size} layers (`block_sizes: [{size}]`)",
                            metric_hint(metric)
                        )
                    };
                    let t = score_tensor(scores, name, &[l - size + 1], &hint)?;
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

    /// Rankings by weight magnitude, from the weights alone. A width unit's
    /// score is the L2 norm of every weight attached to it, i.e. every weight
    /// that pruning the unit removes: the usual group-norm magnitude criterion
    /// of structured pruning, fixed a priori rather than fitted to results.
    /// Every matrix counts in the same units, so no axis or tensor gets a
    /// hand-chosen weight; a sum of squares rather than a product of norms,
    /// which would bound a unit's output instead of measuring its weights.
    /// - MLP neuron `j` of a layer:
    ///   `sqrt(||gate[j, :]||^2 + ||up[j, :]||^2 + ||down[:, j]||^2)`;
    /// - query head `h` of a layer: `sqrt(||q[rows of h]||^2 + ||o[:, cols of h]||^2)`
    ///   (`k` and `v` are shared by the kv group, and no head prune removes
    ///   them);
    /// - kv group of a layer: the norm of its heads' weights and of its own
    ///   `k` and `v` rows, since dropping the group removes all of them;
    /// - hidden channel `c`, over all layers at once: column `c` of every
    ///   matrix that reads the normalized residual (`q`, `k`, `v` after
    ///   `input_layernorm`, `gate`, `up` after `post_attention_layernorm`,
    ///   `lm_head` after the final norm), each scaled by its RMSNorm gain at
    ///   `c`, because the matrix sees `g_c * x_c` and only `W[:, c] * g_c`
    ///   is its effective weight (a gain and a column can trade scale without
    ///   changing the function, so neither alone is a magnitude); row `c` of
    ///   every matrix that writes to the residual (`o_proj`, `down_proj`);
    ///   and embedding column `c`. A tied embedding counts once as the
    ///   embedding and once (with the final norm's gain) as the `lm_head`,
    ///   the two roles it plays, so tying does not change the score;
    /// - layer: Frobenius norm of all its projection weights (q, k, v, o,
    ///   gate, up, down; not the norms); a contiguous block: the Frobenius
    ///   norm over its layers.
    ///
    /// As for importance scores, neurons, heads and kv groups are ranked per
    /// layer and hidden channels once for the whole model. Biases are left
    /// out: most are attached to no unit, and weight-magnitude criteria rank
    /// by weights.
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
            let embed = get("model.embed_tokens.weight")?;
            let head = if c.tie_word_embeddings {
                embed
            } else {
                get("lm_head.weight")?
            };
            let mut sq = col_sq(embed);
            add_scaled(&mut sq, &col_sq(head), &get("model.norm.weight")?.data);
            for i in 0..l {
                let mut reads_attn = col_sq(layer(i, "self_attn.q_proj.weight")?);
                add(
                    &mut reads_attn,
                    &col_sq(layer(i, "self_attn.k_proj.weight")?),
                );
                add(
                    &mut reads_attn,
                    &col_sq(layer(i, "self_attn.v_proj.weight")?),
                );
                let gain = &layer(i, "input_layernorm.weight")?.data;
                add_scaled(&mut sq, &reads_attn, gain);
                let mut reads_mlp = col_sq(layer(i, "mlp.gate_proj.weight")?);
                add(&mut reads_mlp, &col_sq(layer(i, "mlp.up_proj.weight")?));
                let gain = &layer(i, "post_attention_layernorm.weight")?.data;
                add_scaled(&mut sq, &reads_mlp, gain);
                add(&mut sq, &row_sq(layer(i, "self_attn.o_proj.weight")?));
                add(&mut sq, &row_sq(layer(i, "mlp.down_proj.weight")?));
            }
            out.hidden = Some(ranking(&to_f32(sq.iter().map(|s| s.sqrt()))));
        }

        if targets.ffn.is_some() {
            let mut rows = Vec::with_capacity(l);
            for i in 0..l {
                let mut sq = row_sq(layer(i, "mlp.gate_proj.weight")?);
                add(&mut sq, &row_sq(layer(i, "mlp.up_proj.weight")?));
                add(&mut sq, &col_sq(layer(i, "mlp.down_proj.weight")?));
                rows.push(ranking(&to_f32(sq.iter().map(|s| s.sqrt()))));
            }
            out.ffn = Some(rows);
        }

        if targets.heads.is_some() || targets.kv_groups.is_some() {
            let (nh, d) = (c.num_attention_heads, c.head_dim);
            let groups = c.num_key_value_heads;
            let mut head_rows = Vec::with_capacity(l);
            let mut group_rows = Vec::with_capacity(l);
            for i in 0..l {
                let mut sq = row_sq(layer(i, "self_attn.q_proj.weight")?);
                add(&mut sq, &col_sq(layer(i, "self_attn.o_proj.weight")?));
                let heads: Vec<f64> = sq.chunks_exact(d).map(|h| h.iter().sum()).collect();
                debug_assert_eq!(heads.len(), nh);
                head_rows.push(ranking(&to_f32(heads.iter().map(|s| s.sqrt()))));
                if targets.kv_groups.is_some() {
                    let mut kv = row_sq(layer(i, "self_attn.k_proj.weight")?);
                    add(&mut kv, &row_sq(layer(i, "self_attn.v_proj.weight")?));
                    let per_group = nh / groups;
                    let score = (0..groups).map(|g| {
                        let own: f64 = heads[g * per_group..(g + 1) * per_group].iter().sum();
                        let shared: f64 = kv[g * d..(g + 1) * d].iter().sum();
                        (own + shared).sqrt()
                    });
                    group_rows.push(ranking(&to_f32(score)));
                }
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
    name: ScoreName,
    shape: &[usize],
    hint: &str,
) -> Result<&'a HostTensor> {
    let Some(t) = scores.get(name) else {
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
    format!("the importance stage must score the `depth` axis with the `{metric}` metric")
}

/// The hint for a missing axis.
fn axis_hint(axis: Axis) -> String {
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

/// Squared L2 norm of each row of a `[out, in]` matrix.
fn row_sq(t: &HostTensor) -> Vec<f64> {
    t.data
        .chunks_exact(t.shape[1])
        .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect()
}

/// Squared L2 norm of each column of a `[out, in]` matrix.
fn col_sq(t: &HostTensor) -> Vec<f64> {
    let mut sq = vec![0.0f64; t.shape[1]];
    for row in t.data.chunks_exact(t.shape[1]) {
        for (s, &v) in sq.iter_mut().zip(row) {
            *s += (v as f64) * (v as f64);
        }
    }
    sq
}

/// `acc += x`, elementwise.
fn add(acc: &mut [f64], x: &[f64]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// `acc += gain^2 * x`, elementwise: squared column norms of a matrix that
/// reads an RMSNorm's output, with the norm's gain folded in.
fn add_scaled(acc: &mut [f64], x: &[f64], gain: &[f32]) {
    for ((a, &v), &g) in acc.iter_mut().zip(x).zip(gain) {
        *a += (g as f64) * (g as f64) * v;
    }
}

fn to_f32(values: impl Iterator<Item = f64>) -> Vec<f32> {
    values.map(|v| v as f32).collect()
}
