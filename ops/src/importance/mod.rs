//! Minitron importance estimation (METHOD.md sections 2-3): one pass of
//! forwards over calibration rows, with the reductions on the device.
//!
//! - hidden channels: every layer's two norm outputs, one statistic per
//!   hook, summed over hooks;
//! - FFN neurons: the `down_proj` input of each layer;
//! - attention heads: the `o_proj` input of each layer, then the L2 norm over
//!   each head's `head_dim` channels;
//! - depth: block importance, `1 - mean cos(layer input, layer output)` per
//!   layer and per contiguous block; optionally the held-out loss increase
//!   when a layer (block) is removed.
//!
//! Width statistics aggregate over the sequence (`mean` of |x| by default)
//! and then over samples (`l2` by default), as the paper and ModelOpt do.

use crate::eval::loss::next_token_nll;
use crate::io::scores::{DepthMetric, ScoreName, Scores, ScoresSummary};
use crate::io::{HostTensor, StateDict};
use crate::kernels::importance::{Aggregation, BlockDistance, ChannelStats, ImportanceOps};
use crate::model::{Capture, Llama, ModelBackend, tokens_tensor};
use distillery_engine::Progress;
use std::collections::BTreeSet;

/// Width axes and depth metrics to compute, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportanceSpec {
    pub hidden: Option<AggregationPair>,
    pub ffn: Option<AggregationPair>,
    pub heads: Option<AggregationPair>,
    pub block_importance: bool,
    pub perplexity: bool,
    /// Contiguous block sizes to score besides single layers.
    pub block_sizes: Vec<usize>,
    /// Rows per forward.
    pub batch: usize,
}

/// Aggregation over samples (`batch`) and over the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregationPair {
    pub batch: Aggregation,
    pub sequence: Aggregation,
}

/// Accumulators of the width axes and block distances.
struct Accumulators<B: ImportanceOps> {
    /// Two per layer: input_layernorm, post_attention_layernorm.
    hidden: Vec<ChannelStats<B>>,
    ffn: Vec<ChannelStats<B>>,
    heads: Vec<ChannelStats<B>>,
    /// Per layer.
    layers: Vec<BlockDistance<B>>,
    /// `(size, start) -> distance`, for sizes > 1.
    blocks: Vec<(usize, usize, BlockDistance<B>)>,
}

/// Scores `model` on `calibration` rows (all of one length), and, for the
/// perplexity metric, on `heldout` rows.
pub fn estimate<B: ImportanceOps + ModelBackend>(
    model: &Llama<B>,
    calibration: &[&[u32]],
    heldout: &[&[u32]],
    spec: &ImportanceSpec,
    progress: &dyn Progress,
) -> Scores {
    let c = &model.config;
    let device = model.device();
    let layers = c.num_hidden_layers;
    let stats = |n: usize, count: usize, pair: Option<AggregationPair>| -> Vec<ChannelStats<B>> {
        pair.map_or_else(Vec::new, |p| {
            (0..count)
                .map(|_| ChannelStats::new(n, p.sequence, &device))
                .collect()
        })
    };
    let mut acc = Accumulators {
        hidden: stats(c.hidden_size, 2 * layers, spec.hidden),
        ffn: stats(c.intermediate_size, layers, spec.ffn),
        heads: stats(c.q_dim(), layers, spec.heads),
        layers: if spec.block_importance {
            (0..layers).map(|_| BlockDistance::new(&device)).collect()
        } else {
            Vec::new()
        },
        blocks: if spec.block_importance {
            spec.block_sizes
                .iter()
                .filter(|&&n| n > 1 && n <= layers)
                .flat_map(|&n| (0..=layers - n).map(move |start| (n, start)))
                .map(|(n, start)| (n, start, BlockDistance::new(&device)))
                .collect()
        } else {
            Vec::new()
        },
    };
    let capture = Capture {
        layer_input: spec.block_importance,
        input_layernorm: spec.hidden.is_some(),
        o_proj_input: spec.heads.is_some(),
        post_attention_layernorm: spec.hidden.is_some(),
        down_proj_input: spec.ffn.is_some(),
        layer_output: spec.block_importance,
        final_norm: false,
    };
    let seq = calibration.first().map_or(0, |r| r.len());
    progress.set_total((calibration.len() * seq) as u64, "tokens");
    let mut done = 0;
    for chunk in calibration.chunks(spec.batch.max(1)) {
        let (_, records) = model.forward_activations(tokens_tensor(chunk, &device), &capture);
        let outputs: Vec<_> = records.iter().map(|r| r.layer_output.clone()).collect();
        for (l, record) in records.into_iter().enumerate() {
            if let Some(x) = record.input_layernorm {
                acc.hidden[2 * l].add(x);
            }
            if let Some(x) = record.post_attention_layernorm {
                acc.hidden[2 * l + 1].add(x);
            }
            if let Some(x) = record.down_proj_input {
                acc.ffn[l].add(x);
            }
            if let Some(x) = record.o_proj_input {
                acc.heads[l].add(x);
            }
            if let (Some(h_in), Some(h_out)) = (&record.layer_input, &record.layer_output) {
                acc.layers[l].add(h_in.clone(), h_out.clone());
                for (n, start, distance) in acc.blocks.iter_mut().filter(|b| b.1 == l) {
                    if let Some(Some(block_out)) = outputs.get(*start + *n - 1) {
                        distance.add(h_in.clone(), block_out.clone());
                    }
                }
            }
        }
        done += chunk.len() * seq;
        progress.set_position(done as u64);
    }

    let pair = spec
        .hidden
        .or(spec.ffn)
        .or(spec.heads)
        .unwrap_or(AggregationPair {
            batch: Aggregation::L2,
            sequence: Aggregation::Mean,
        });
    let mut scores = Scores {
        tensors: StateDict::new(),
        summary: ScoresSummary {
            model_config: c.to_json(),
            samples: calibration.len(),
            seq_len: seq,
            batch_aggregation: pair.batch,
            sequence_aggregation: pair.sequence,
            baseline_loss: None,
            rankings: serde_json::Map::new(),
        },
    };
    if let Some(pair) = spec.hidden {
        let mut hidden = vec![0f32; c.hidden_size];
        for hook in &acc.hidden {
            for (h, s) in hidden.iter_mut().zip(hook.scores(pair.batch)) {
                *h += s;
            }
        }
        scores.insert(
            ScoreName::Hidden,
            HostTensor::new(vec![c.hidden_size], hidden),
        );
    }
    if let Some(pair) = spec.ffn {
        let rows: Vec<Vec<f32>> = acc.ffn.iter().map(|s| s.scores(pair.batch)).collect();
        scores.insert(
            ScoreName::Ffn,
            HostTensor::new(vec![layers, c.intermediate_size], rows.concat()),
        );
    }
    if let Some(pair) = spec.heads {
        let d = c.head_dim;
        let rows: Vec<Vec<f32>> = acc
            .heads
            .iter()
            .map(|s| {
                s.scores(pair.batch)
                    .chunks(d)
                    .map(|head| head.iter().map(|v| v * v).sum::<f32>().sqrt())
                    .collect()
            })
            .collect();
        scores.insert(
            ScoreName::Heads,
            HostTensor::new(vec![layers, c.num_attention_heads], rows.concat()),
        );
    }
    if spec.block_importance {
        let metric = DepthMetric::BlockImportance;
        let per_layer: Vec<f32> = acc.layers.iter().map(|d| d.mean() as f32).collect();
        scores.insert(
            ScoreName::layers(metric),
            HostTensor::new(vec![layers], per_layer),
        );
        for &block in spec.block_sizes.iter().filter(|&&n| n > 1 && n <= layers) {
            let per_block: Vec<f32> = acc
                .blocks
                .iter()
                .filter(|b| b.0 == block)
                .map(|b| b.2.mean() as f32)
                .collect();
            scores.insert(
                ScoreName::Depth { metric, block },
                HostTensor::new(vec![per_block.len()], per_block),
            );
        }
    }
    if spec.perplexity {
        let baseline = next_token_nll(model, heldout, spec.batch).mean();
        scores.summary.baseline_loss = Some(baseline);
        let mut sizes = vec![1];
        sizes.extend(
            spec.block_sizes
                .iter()
                .copied()
                .filter(|&n| n > 1 && n < layers),
        );
        let total: usize = sizes.iter().map(|n| layers - n + 1).sum();
        progress.set_total(total as u64, "layer removals");
        let mut done = 0;
        for n in sizes {
            let deltas: Vec<f32> = (0..=layers - n)
                .map(|start| {
                    let drop: BTreeSet<usize> = (start..start + n).collect();
                    let loss =
                        next_token_nll(&model.without_layers(&drop), heldout, spec.batch).mean();
                    done += 1;
                    progress.set_position(done);
                    (loss - baseline) as f32
                })
                .collect();
            let name = ScoreName::Depth {
                metric: DepthMetric::Perplexity,
                block: n,
            };
            scores.insert(name, HostTensor::new(vec![deltas.len()], deltas));
        }
    }
    scores
}
