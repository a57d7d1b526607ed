//! The pruning library on tiny random models: consistent permutations leave
//! the logits unchanged, full-size identity pruning is the identity, a small
//! prune equals a hand-computed slice, GQA heads are chosen inside their kv
//! group, kv groups go whole, layers are dropped and renumbered, tied
//! embeddings stay tied, and the pruned model builds and runs.

mod model_support;

use distillery_ops::io::scores::{DepthMetric, Scores, ScoresSummary};
use distillery_ops::io::{HostTensor, StateDict};
use distillery_ops::kernels::importance::Aggregation;
use distillery_ops::model::LlamaConfig;
use distillery_ops::prune::{DepthRanking, DepthTarget, Keep, Rankings, Targets, apply, prune};
use model_support::{
    Rng, build, cfg_bias_llama3, cfg_gqa, cfg_odd_tied, config, model_logits, random_weights,
};
use serde_json::json;

// ---------------------------------------------------------------- helpers

/// A random permutation of `0..n` (Fisher-Yates on the test RNG), never
/// the identity when `n > 1`.
fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    if v == identity(n) {
        v.reverse();
    }
    v
}

fn identity(n: usize) -> Vec<usize> {
    (0..n).collect()
}

fn per_layer(c: &LlamaConfig, mut f: impl FnMut() -> Vec<usize>) -> Vec<Vec<usize>> {
    (0..c.num_hidden_layers).map(|_| f()).collect()
}

/// Full-size targets on every width axis.
fn full_targets(c: &LlamaConfig) -> Targets {
    Targets {
        hidden: Some(c.hidden_size),
        ffn: Some(c.intermediate_size),
        heads: Some(c.num_attention_heads),
        kv_groups: Some(c.num_key_value_heads),
        depth: None,
    }
}

fn tokens(rng: &mut Rng, c: &LlamaConfig) -> Vec<Vec<u32>> {
    vec![rng.tokens(9, c.vocab_size), rng.tokens(9, c.vocab_size)]
}

fn logits(c: &LlamaConfig, sd: &StateDict, rows: &[Vec<u32>]) -> Vec<f32> {
    let model = build(c, sd);
    let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    model_logits(&model, &rows)
}

/// Largest |a - b|, and the largest |b|.
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    let scale = b.iter().fold(0.0f32, |m, y| m.max(y.abs()));
    (diff, scale)
}

fn scores_with(tensors: Vec<(&str, Vec<usize>, Vec<f32>)>) -> Scores {
    Scores {
        tensors: tensors
            .into_iter()
            .map(|(name, shape, data)| (name.to_string(), HostTensor::new(shape, data)))
            .collect(),
        summary: ScoresSummary {
            model_config: json!({}),
            samples: 1,
            seq_len: 1,
            batch_aggregation: Aggregation::L2,
            sequence_aggregation: Aggregation::Mean,
            baseline_loss: None,
            rankings: Default::default(),
        },
    }
}

/// Every value encodes its position: `row * 100 + col` (`i` for vectors).
fn positional_weights(c: &LlamaConfig) -> StateDict {
    c.expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let data = match shape.as_slice() {
                [n] => (0..*n).map(|i| i as f32).collect(),
                [r, k] => (0..r * k).map(|i| ((i / k) * 100 + i % k) as f32).collect(),
                _ => unreachable!(),
            };
            (name, HostTensor::new(shape, data))
        })
        .collect()
}

fn at(sd: &StateDict, name: &str, r: usize, col: usize) -> f32 {
    let t = &sd[name];
    t.data[r * t.shape[1] + col]
}

// ---------------------------------------------------------------- identities

#[test]
fn full_size_identity_ranking_is_exactly_the_identity() {
    for (i, c) in [cfg_gqa(), cfg_odd_tied(), cfg_bias_llama3()]
        .into_iter()
        .enumerate()
    {
        let sd = random_weights(&c, &mut Rng::new(10 + i as u64));
        let l = c.num_hidden_layers;
        let rankings = Rankings {
            hidden: Some(identity(c.hidden_size)),
            ffn: Some(per_layer(&c, || identity(c.intermediate_size))),
            heads: Some(per_layer(&c, || identity(c.num_attention_heads))),
            kv_groups: Some(per_layer(&c, || identity(c.num_key_value_heads))),
            depth: Some(DepthRanking::Layers(identity(l))),
        };
        let mut targets = full_targets(&c);
        targets.depth = Some(DepthTarget::Layers(l));
        let out = prune(&c, sd.clone(), &rankings, &targets).unwrap();
        assert_eq!(out.tensors, sd, "config {i}");
        assert_eq!(out.config, c);
        assert_eq!(out.keep, Keep::identity(&c));

        // The identity `Keep` applied directly, too.
        let (c2, sd2) = apply(&c, sd.clone(), &Keep::identity(&c)).unwrap();
        assert_eq!((c2, sd2), (c.clone(), sd));
    }
}

#[test]
fn consistent_permutations_leave_the_logits_unchanged() {
    for (i, c) in [cfg_gqa(), cfg_odd_tied(), cfg_bias_llama3()]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(100 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let rows = tokens(&mut rng, &c);
        let reference = logits(&c, &sd, &rows);

        // One axis at a time, then all together.
        let axes: [(&str, Targets); 5] = [
            (
                "hidden",
                Targets {
                    hidden: Some(c.hidden_size),
                    ..Default::default()
                },
            ),
            (
                "ffn",
                Targets {
                    ffn: Some(c.intermediate_size),
                    ..Default::default()
                },
            ),
            (
                "heads",
                Targets {
                    heads: Some(c.num_attention_heads),
                    ..Default::default()
                },
            ),
            (
                "kv_groups",
                Targets {
                    kv_groups: Some(c.num_key_value_heads),
                    ..Default::default()
                },
            ),
            ("all", full_targets(&c)),
        ];
        for (axis, targets) in axes {
            let rankings = Rankings {
                hidden: Some(permutation(c.hidden_size, &mut rng)),
                ffn: Some(per_layer(&c, || permutation(c.intermediate_size, &mut rng))),
                heads: Some(per_layer(&c, || {
                    permutation(c.num_attention_heads, &mut rng)
                })),
                kv_groups: Some(per_layer(&c, || {
                    permutation(c.num_key_value_heads, &mut rng)
                })),
                depth: None,
            };
            let out = prune(&c, sd.clone(), &rankings, &targets).unwrap();
            assert_eq!(out.config, c, "{axis}: the sizes must not change");
            if axis != "kv_groups" || c.num_key_value_heads > 1 {
                assert_ne!(out.tensors, sd, "{axis}: the weights should be permuted");
            }
            let got = logits(&out.config, &out.tensors, &rows);
            let (diff, scale) = max_diff(&got, &reference);
            assert!(
                diff <= 1e-5 * scale.max(1.0),
                "config {i}, {axis}: logits moved by {diff} (scale {scale})"
            );
        }
    }
}

// ---------------------------------------------------------------- hand slices

/// hidden 4, ffn 6, 4 heads in 2 kv groups, head_dim 2, biases everywhere.
fn toy_config() -> LlamaConfig {
    config(json!({
        "hidden_size": 4, "intermediate_size": 6, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 2,
        "vocab_size": 5, "attention_bias": true, "mlp_bias": true,
        "tie_word_embeddings": false
    }))
}

fn toy_scores() -> Scores {
    scores_with(vec![
        ("hidden", vec![4], vec![0.5, 0.1, 0.9, 0.3]),
        (
            "ffn",
            vec![2, 6],
            vec![
                0.3, 0.9, 0.1, 0.8, 0.5, 0.2, // layer 0: ranking 1 3 4 0 5 2
                0.0, 1.0, 2.0, 3.0, 4.0, 5.0, // layer 1: ranking 5 4 3 2 1 0
            ],
        ),
        (
            "heads",
            vec![2, 4],
            vec![
                0.1, 0.7, 0.9, 0.2, // layer 0: group 0 keeps 1, group 1 keeps 2
                0.9, 0.1, 0.1, 0.9, // layer 1: group 0 keeps 0, group 1 keeps 3
            ],
        ),
    ])
}

#[test]
fn pruning_equals_a_hand_computed_slice() {
    let c = toy_config();
    let sd = positional_weights(&c);
    let targets = Targets {
        hidden: Some(3),
        ffn: Some(3),
        heads: Some(2),
        ..Default::default()
    };
    let rankings =
        Rankings::from_scores(&toy_scores(), &c, &targets, DepthMetric::default()).unwrap();
    let out = prune(&c, sd, &rankings, &targets).unwrap();

    // Kept indices, most important first (not re-sorted).
    assert_eq!(out.keep.hidden, vec![2, 0, 3]);
    assert_eq!(out.keep.layers[0].ffn, vec![1, 3, 4]);
    assert_eq!(out.keep.layers[0].heads, vec![1, 2]);
    assert_eq!(out.keep.layers[0].kv_groups, vec![0, 1]);
    assert_eq!(out.keep.layers[1].ffn, vec![5, 4, 3]);
    assert_eq!(out.keep.layers[1].heads, vec![0, 3]);

    let c2 = &out.config;
    assert_eq!(
        (
            c2.hidden_size,
            c2.intermediate_size,
            c2.num_attention_heads,
            c2.num_key_value_heads,
            c2.head_dim
        ),
        (3, 3, 2, 2, 2)
    );
    let sd = &out.tensors;
    let l0 = "model.layers.0";
    // embed / lm_head [5, 4] -> columns 2 0 3.
    assert_eq!(sd["model.embed_tokens.weight"].shape, vec![5, 3]);
    assert_eq!(at(sd, "model.embed_tokens.weight", 1, 0), 102.0);
    assert_eq!(at(sd, "model.embed_tokens.weight", 4, 2), 403.0);
    assert_eq!(at(sd, "lm_head.weight", 4, 0), 402.0);
    assert_eq!(at(sd, "lm_head.weight", 0, 1), 0.0);
    // Norms.
    assert_eq!(sd["model.norm.weight"].data, vec![2.0, 0.0, 3.0]);
    assert_eq!(
        sd[&format!("{l0}.input_layernorm.weight")].data,
        vec![2.0, 0.0, 3.0]
    );
    assert_eq!(
        sd[&format!("{l0}.post_attention_layernorm.weight")].data,
        vec![2.0, 0.0, 3.0]
    );
    // q_proj [8, 4]: rows of heads 1 and 2 = 2 3 4 5; columns 2 0 3.
    let q = format!("{l0}.self_attn.q_proj.weight");
    assert_eq!(sd[&q].shape, vec![4, 3]);
    assert_eq!(at(sd, &q, 0, 0), 202.0);
    assert_eq!(at(sd, &q, 1, 1), 300.0);
    assert_eq!(at(sd, &q, 3, 2), 503.0);
    assert_eq!(
        sd[&format!("{l0}.self_attn.q_proj.bias")].data,
        vec![2.0, 3.0, 4.0, 5.0]
    );
    // k_proj / v_proj [4, 4]: every row (both groups kept), columns 2 0 3.
    let k = format!("{l0}.self_attn.k_proj.weight");
    assert_eq!(sd[&k].shape, vec![4, 3]);
    assert_eq!(at(sd, &k, 3, 1), 300.0);
    assert_eq!(
        at(sd, &format!("{l0}.self_attn.v_proj.weight"), 2, 2),
        203.0
    );
    assert_eq!(
        sd[&format!("{l0}.self_attn.k_proj.bias")].data,
        vec![0.0, 1.0, 2.0, 3.0]
    );
    // o_proj [4, 8]: rows 2 0 3; columns 2 3 4 5.
    let o = format!("{l0}.self_attn.o_proj.weight");
    assert_eq!(sd[&o].shape, vec![3, 4]);
    assert_eq!(at(sd, &o, 0, 0), 202.0);
    assert_eq!(at(sd, &o, 1, 3), 5.0);
    assert_eq!(at(sd, &o, 2, 1), 303.0);
    assert_eq!(
        sd[&format!("{l0}.self_attn.o_proj.bias")].data,
        vec![2.0, 0.0, 3.0]
    );
    // gate / up [6, 4]: rows 1 3 4; columns 2 0 3.
    let gate = format!("{l0}.mlp.gate_proj.weight");
    assert_eq!(sd[&gate].shape, vec![3, 3]);
    assert_eq!(at(sd, &gate, 0, 0), 102.0);
    assert_eq!(at(sd, &gate, 2, 2), 403.0);
    assert_eq!(at(sd, &format!("{l0}.mlp.up_proj.weight"), 1, 1), 300.0);
    assert_eq!(
        sd[&format!("{l0}.mlp.up_proj.bias")].data,
        vec![1.0, 3.0, 4.0]
    );
    // down [4, 6]: rows 2 0 3; columns 1 3 4.
    let down = format!("{l0}.mlp.down_proj.weight");
    assert_eq!(sd[&down].shape, vec![3, 3]);
    assert_eq!(at(sd, &down, 0, 2), 204.0);
    assert_eq!(at(sd, &down, 2, 0), 301.0);
    assert_eq!(
        sd[&format!("{l0}.mlp.down_proj.bias")].data,
        vec![2.0, 0.0, 3.0]
    );
    // Layer 1 has its own neurons and heads.
    let q1 = "model.layers.1.self_attn.q_proj.weight";
    assert_eq!(at(sd, q1, 2, 0), 602.0); // head 3's first row is 6
    assert_eq!(at(sd, q1, 1, 2), 103.0);
    assert_eq!(at(sd, "model.layers.1.mlp.down_proj.weight", 1, 0), 5.0);
    assert_eq!(
        sd["model.layers.1.mlp.gate_proj.bias"].data,
        vec![5.0, 4.0, 3.0]
    );

    // The result is a valid model that runs.
    assert!(c2.tensor_problems(sd).is_empty());
    let model = build(c2, sd);
    let got = model_logits(&model, &[&[1, 2, 3]]);
    assert_eq!(got.len(), 3 * 5);
}

// ---------------------------------------------------------------- GQA

fn gqa8() -> LlamaConfig {
    config(json!({
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 4,
        "vocab_size": 11
    }))
}

#[test]
fn query_heads_are_chosen_inside_each_kv_group() {
    let c = gqa8();
    // The global top 4 all sit in group 0; each group must still keep 2.
    let scores = scores_with(vec![(
        "heads",
        vec![1, 8],
        vec![0.9, 0.8, 0.7, 0.6, 0.1, 0.3, 0.2, 0.05],
    )]);
    let select = |heads: usize| {
        let targets = Targets {
            heads: Some(heads),
            ..Default::default()
        };
        let r = Rankings::from_scores(&scores, &c, &targets, DepthMetric::default()).unwrap();
        Keep::select(&c, &r, &targets)
    };
    assert_eq!(select(4).unwrap().layers[0].heads, vec![0, 1, 5, 6]);
    assert_eq!(select(6).unwrap().layers[0].heads, vec![0, 1, 2, 5, 6, 4]);
    assert_eq!(select(2).unwrap().layers[0].heads, vec![0, 5]);
    assert_eq!(select(4).unwrap().layers[0].kv_groups, vec![0, 1]);
    let err = select(5).unwrap_err().to_string();
    assert!(
        err.contains("`heads: 5` is not a multiple of the 2 kv groups"),
        "{err}"
    );
    let err = select(9).unwrap_err().to_string();
    assert!(
        err.contains("more than the model's num_attention_heads 8"),
        "{err}"
    );

    // The pruned model keeps both kv heads: k and v untouched (hidden kept).
    let sd = random_weights(&c, &mut Rng::new(7));
    let targets = Targets {
        heads: Some(4),
        ..Default::default()
    };
    let r = Rankings::from_scores(&scores, &c, &targets, DepthMetric::default()).unwrap();
    let out = prune(&c, sd.clone(), &r, &targets).unwrap();
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(out.tensors[k], sd[k]);
    assert_eq!(out.config.num_attention_heads, 4);
    assert_eq!(out.config.num_key_value_heads, 2);
    assert_eq!(out.config.head_dim, 4);
    // q rows: heads 0 1 5 6, 4 rows each.
    let q = "model.layers.0.self_attn.q_proj.weight";
    for (new, old) in [0usize, 1, 5, 6].into_iter().enumerate() {
        assert_eq!(
            out.tensors[q].data[new * 4 * 16..(new + 1) * 4 * 16],
            sd[q].data[old * 4 * 16..(old + 1) * 4 * 16]
        );
    }
    let model = build(&out.config, &out.tensors);
    assert!(
        model_logits(&model, &[&[1, 2, 3, 4]])
            .iter()
            .all(|v| v.is_finite())
    );
}

#[test]
fn kv_groups_are_pruned_whole_by_the_l2_of_their_heads() {
    // 6 heads in 3 groups of 2.
    let c = config(json!({
        "hidden_size": 12, "intermediate_size": 20, "num_hidden_layers": 1,
        "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 4,
        "vocab_size": 13
    }));
    // Group norms: sqrt(2) = 1.41, sqrt(18) = 4.24, sqrt(4.01) = 2.002.
    let scores = scores_with(vec![(
        "heads",
        vec![1, 6],
        vec![1.0, 1.0, 3.0, 3.0, 2.0, 0.1],
    )]);
    let sd = random_weights(&c, &mut Rng::new(8));
    let run = |targets: &Targets| {
        let r = Rankings::from_scores(&scores, &c, targets, DepthMetric::default()).unwrap();
        prune(&c, sd.clone(), &r, targets)
    };

    // Groups only: each kept group keeps both its heads, in order.
    let out = run(&Targets {
        kv_groups: Some(2),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(out.keep.layers[0].kv_groups, vec![1, 2]);
    assert_eq!(out.keep.layers[0].heads, vec![2, 3, 4, 5]);
    assert_eq!(
        (
            out.config.num_attention_heads,
            out.config.num_key_value_heads
        ),
        (4, 2)
    );
    let k = "model.layers.0.self_attn.k_proj.weight";
    let v = "model.layers.0.self_attn.v_proj.weight";
    // K and V rows of groups 1 then 2 (4 rows of 12 each).
    for name in [k, v] {
        assert_eq!(out.tensors[name].shape, vec![8, 12]);
        assert_eq!(out.tensors[name].data[..48], sd[name].data[48..96]);
        assert_eq!(out.tensors[name].data[48..], sd[name].data[96..144]);
    }
    let model = build(&out.config, &out.tensors);
    assert!(
        model_logits(&model, &[&[1, 2, 3]])
            .iter()
            .all(|v| v.is_finite())
    );

    // Groups and heads: one head per kept group (a tie goes to the lower index).
    let out = run(&Targets {
        kv_groups: Some(2),
        heads: Some(2),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(out.keep.layers[0].heads, vec![2, 4]);
    assert_eq!(
        (
            out.config.num_attention_heads,
            out.config.num_key_value_heads
        ),
        (2, 2)
    );

    // More heads per group than a group has.
    let err = run(&Targets {
        kv_groups: Some(1),
        heads: Some(4),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("4 query heads per group, but each group of the model has 2"),
        "{err}"
    );
}

#[test]
fn a_misplaced_head_is_rejected() {
    let c = gqa8();
    let mut keep = Keep::identity(&c);
    keep.layers[0].heads.swap(0, 4); // head 4 (group 1) placed with group 0
    let err = keep.check(&c).unwrap_err().to_string();
    assert!(err.contains("query head 4 belongs to kv group 1"), "{err}");
}

// ---------------------------------------------------------------- depth

fn four_layers() -> LlamaConfig {
    config(json!({
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 11,
        "tie_word_embeddings": false
    }))
}

fn depth_scores() -> Scores {
    scores_with(vec![
        ("depth.block_importance", vec![4], vec![0.5, 0.1, 0.9, 0.3]),
        ("depth.perplexity", vec![4], vec![0.1, 0.9, 0.2, 0.8]),
        ("depth.block_importance.size2", vec![3], vec![0.8, 0.2, 0.5]),
        ("depth.perplexity.size2", vec![3], vec![0.1, 0.7, 0.9]),
    ])
}

fn kept_layers(
    depth: DepthTarget,
    metric: DepthMetric,
    reverse: bool,
) -> anyhow::Result<Vec<usize>> {
    let c = four_layers();
    let targets = Targets {
        depth: Some(depth),
        ..Default::default()
    };
    let mut r = Rankings::from_scores(&depth_scores(), &c, &targets, metric)?;
    if reverse {
        r = r.reversed();
    }
    let keep = Keep::select(&c, &r, &targets)?;
    Ok(keep.layers.iter().map(|l| l.source).collect())
}

#[test]
fn layers_are_chosen_by_the_depth_metric() {
    use DepthMetric::{BlockImportance, Perplexity};
    use DepthTarget::{Contiguous, Layers};
    // Highest-scoring, returned in model order.
    assert_eq!(
        kept_layers(Layers(2), BlockImportance, false).unwrap(),
        vec![0, 2]
    );
    assert_eq!(
        kept_layers(Layers(2), Perplexity, false).unwrap(),
        vec![1, 3]
    );
    assert_eq!(
        kept_layers(Layers(3), BlockImportance, false).unwrap(),
        vec![0, 2, 3]
    );
    // Reverse keeps the least important.
    assert_eq!(
        kept_layers(Layers(2), BlockImportance, true).unwrap(),
        vec![1, 3]
    );
    // Contiguous: drop the 2-layer block that scores lowest (start 1 / start 0).
    assert_eq!(
        kept_layers(Contiguous(2), BlockImportance, false).unwrap(),
        vec![0, 3]
    );
    assert_eq!(
        kept_layers(Contiguous(2), Perplexity, false).unwrap(),
        vec![2, 3]
    );
    // Reverse drops the block whose removal hurts most.
    assert_eq!(
        kept_layers(Contiguous(2), BlockImportance, true).unwrap(),
        vec![2, 3]
    );
    // Blocks of one layer fall back on the per-layer score: drop layer 1.
    assert_eq!(
        kept_layers(Contiguous(3), BlockImportance, false).unwrap(),
        vec![0, 2, 3]
    );
    // Keeping every layer needs no block score.
    assert_eq!(
        kept_layers(Contiguous(4), BlockImportance, false).unwrap(),
        vec![0, 1, 2, 3]
    );
    // A missing block size names the tensor.
    let err = kept_layers(Contiguous(1), BlockImportance, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no `depth.block_importance.size3` tensor"),
        "{err}"
    );
    let err = kept_layers(Layers(5), BlockImportance, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`layers: 5` is more than the model's num_hidden_layers 4"),
        "{err}"
    );
}

#[test]
fn dropped_layers_are_removed_and_the_rest_renumbered() {
    let c = four_layers();
    let sd = random_weights(&c, &mut Rng::new(21));
    let targets = Targets {
        depth: Some(DepthTarget::Drop(vec![2, 0])),
        ..Default::default()
    };
    let out = prune(&c, sd.clone(), &Rankings::default(), &targets).unwrap();
    assert_eq!(out.config.num_hidden_layers, 2);
    assert_eq!(out.keep.dropped_layers(&c), vec![0, 2]);
    for (new, old) in [(0, 1), (1, 3)] {
        for (name, t) in &sd {
            if let Some(rest) = name.strip_prefix(&format!("model.layers.{old}.")) {
                assert_eq!(&out.tensors[&format!("model.layers.{new}.{rest}")], t);
            }
        }
    }
    assert!(!out.tensors.keys().any(|k| k.starts_with("model.layers.2.")));
    assert_eq!(
        out.tensors["model.embed_tokens.weight"],
        sd["model.embed_tokens.weight"]
    );
    assert_eq!(out.tensors["lm_head.weight"], sd["lm_head.weight"]);
    let model = build(&out.config, &out.tensors);
    assert!(
        model_logits(&model, &[&[1, 2]])
            .iter()
            .all(|v| v.is_finite())
    );

    for (drop, message) in [
        (
            vec![4],
            "`drop` names layer 4, but the model has 4 layers, numbered from 0 to 3",
        ),
        (vec![1, 1], "`drop` names layer 1 twice"),
        (vec![0, 1, 2, 3], "`drop` would remove all 4 layers"),
    ] {
        let targets = Targets {
            depth: Some(DepthTarget::Drop(drop)),
            ..Default::default()
        };
        let err = Keep::select(&c, &Rankings::default(), &targets)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{err}");
    }
}

// ---------------------------------------------------------------- tied, biases, sizes

#[test]
fn tied_embeddings_stay_tied() {
    let c = cfg_odd_tied(); // 5 heads, 1 kv head, head_dim 12, tied
    let mut rng = Rng::new(31);
    let mut sd = random_weights(&c, &mut rng);
    let targets = Targets {
        hidden: Some(24),
        ffn: Some(40),
        heads: Some(3),
        depth: Some(DepthTarget::Drop(vec![1])),
        ..Default::default()
    };
    let rankings = Rankings::random(&c, &targets, 5);
    let out = prune(&c, sd.clone(), &rankings, &targets).unwrap();
    assert!(out.config.tie_word_embeddings);
    assert!(!out.tensors.contains_key("lm_head.weight"));
    assert_eq!(out.config.head_dim, 12);
    assert_eq!(
        (
            out.config.hidden_size,
            out.config.intermediate_size,
            out.config.num_attention_heads,
            out.config.num_key_value_heads,
            out.config.num_hidden_layers
        ),
        (24, 40, 3, 1, 2)
    );
    out.config.validate().unwrap();
    let model = build(&out.config, &out.tensors);
    assert!(model.lm_head.is_none());
    let got = model_logits(&model, &[&[1, 2, 3]]);
    assert!(got.iter().all(|v| v.is_finite()) && got.len() == 3 * c.vocab_size);

    // A tied checkpoint that still carries an lm_head copy: both are sliced
    // alike, so the copy stays equal to the embedding.
    sd.insert(
        "lm_head.weight".into(),
        sd["model.embed_tokens.weight"].clone(),
    );
    let out = prune(&c, sd, &rankings, &targets).unwrap();
    assert_eq!(
        out.tensors["lm_head.weight"],
        out.tensors["model.embed_tokens.weight"]
    );
}

#[test]
fn pruned_models_validate_and_run() {
    for (i, c) in [cfg_gqa(), cfg_bias_llama3(), cfg_odd_tied()]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(40 + i as u64);
        let sd = random_weights(&c, &mut rng);
        let g = c.num_key_value_heads;
        let targets = Targets {
            hidden: Some(c.hidden_size / 2),
            ffn: Some(c.intermediate_size / 3),
            heads: Some(g * (c.num_attention_heads / g - 1).max(1)),
            kv_groups: None,
            depth: Some(DepthTarget::Layers(c.num_hidden_layers - 1)),
        };
        let rankings = Rankings::magnitude(&c, &sd, &targets).unwrap();
        let out = prune(&c, sd, &rankings, &targets).unwrap();
        out.config.validate().unwrap();
        let json = out.config.to_json();
        assert_eq!(
            json["head_dim"],
            json!(c.head_dim),
            "head_dim stays explicit"
        );
        assert!(out.config.tensor_problems(&out.tensors).is_empty());
        assert!(out.config.num_parameters() < c.num_parameters());
        let model = build(&out.config, &out.tensors);
        let rows = tokens(&mut rng, &c);
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let got = model_logits(&model, &rows);
        assert_eq!(got.len(), 2 * 9 * c.vocab_size);
        assert!(got.iter().all(|v| v.is_finite()), "config {i}");
    }
}

#[test]
fn targets_beyond_the_model_are_rejected_with_the_field_name() {
    let c = cfg_gqa();
    for (targets, message) in [
        (
            Targets {
                hidden: Some(33),
                ..Default::default()
            },
            "`hidden: 33` is more than the model's hidden_size 32",
        ),
        (
            Targets {
                ffn: Some(49),
                ..Default::default()
            },
            "`ffn: 49` is more than the model's intermediate_size 48",
        ),
        (
            Targets {
                kv_groups: Some(3),
                ..Default::default()
            },
            "`kv_groups: 3` is more than the model's num_key_value_heads 2",
        ),
        (
            Targets {
                ffn: Some(0),
                ..Default::default()
            },
            "`ffn` must be at least 1",
        ),
    ] {
        let r = Rankings::random(&c, &targets, 1);
        let err = Keep::select(&c, &r, &targets).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}

#[test]
fn scores_of_another_model_are_rejected() {
    let c = cfg_gqa();
    let scores = scores_with(vec![("ffn", vec![2, 40], vec![0.0; 80])]);
    let targets = Targets {
        ffn: Some(8),
        ..Default::default()
    };
    let err = Rankings::from_scores(&scores, &c, &targets, DepthMetric::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shape [2, 40], but this model needs [2, 48]"),
        "{err}"
    );
    let targets = Targets {
        hidden: Some(8),
        ..Default::default()
    };
    let err = Rankings::from_scores(&scores, &c, &targets, DepthMetric::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `hidden` tensor"), "{err}");
}

// ---------------------------------------------------------------- methods

#[test]
fn magnitude_ranks_the_largest_weights_first() {
    let c = four_layers(); // hidden 16, ffn 24, 4 heads / 2 groups, head_dim 4
    let mut sd = random_weights(&c, &mut Rng::new(50));
    let scale = |sd: &mut StateDict, name: &str, pick: &dyn Fn(usize, usize) -> bool| {
        let t = sd.get_mut(name).unwrap();
        let cols = t.shape[1];
        for (i, v) in t.data.iter_mut().enumerate() {
            if pick(i / cols, i % cols) {
                *v *= 10.0;
            }
        }
    };
    // Hidden channel 5: embedding column. Neuron 7 of layer 1: its down column.
    // Head 3 of layer 0: its o_proj columns. Layer 2: every projection.
    scale(&mut sd, "model.embed_tokens.weight", &|_, col| col == 5);
    scale(&mut sd, "model.layers.1.mlp.down_proj.weight", &|_, col| {
        col == 7
    });
    scale(
        &mut sd,
        "model.layers.0.self_attn.o_proj.weight",
        &|_, col| col / 4 == 3,
    );
    for name in [
        "self_attn.q_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ] {
        scale(
            &mut sd,
            &format!("model.layers.2.{name}.weight"),
            &|_, _| true,
        );
    }
    let targets = Targets {
        hidden: Some(1),
        ffn: Some(1),
        heads: Some(2),
        kv_groups: Some(1),
        depth: Some(DepthTarget::Layers(1)),
    };
    let r = Rankings::magnitude(&c, &sd, &targets).unwrap();
    assert_eq!(r.hidden.as_ref().unwrap()[0], 5);
    assert_eq!(r.ffn.as_ref().unwrap()[1][0], 7);
    assert_eq!(r.heads.as_ref().unwrap()[0][0], 3);
    assert_eq!(r.kv_groups.as_ref().unwrap()[0][0], 1);
    assert_eq!(r_layers(&r)[0], 2);
    let keep = Keep::select(&c, &r, &targets).unwrap();
    assert_eq!(keep.layers.len(), 1);
    assert_eq!(keep.layers[0].source, 2);

    // Contiguous blocks by their weight norm: the block of 2 with layer 2 stays.
    let targets = Targets {
        depth: Some(DepthTarget::Contiguous(2)),
        ..Default::default()
    };
    let r = Rankings::magnitude(&c, &sd, &targets).unwrap();
    let keep = Keep::select(&c, &r, &targets).unwrap();
    let kept: Vec<usize> = keep.layers.iter().map(|l| l.source).collect();
    assert!(kept.contains(&2), "{kept:?}");
}

/// Indices by descending score.
fn order_desc(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx
}

/// Norm gains spread far from 1, so that folding them in (or not) changes
/// the hidden ranking.
fn spread_gains(c: &LlamaConfig, sd: &mut StateDict, rng: &mut Rng) {
    let mut names = vec!["model.norm.weight".to_string()];
    for i in 0..c.num_hidden_layers {
        names.push(format!("model.layers.{i}.input_layernorm.weight"));
        names.push(format!("model.layers.{i}.post_attention_layernorm.weight"));
    }
    for name in names {
        for v in &mut sd.get_mut(&name).unwrap().data {
            *v = 1.6 + 1.5 * rng.uniform();
        }
    }
}

/// The magnitude scores written out entry by entry, independently of the
/// library: every unit's score is the L2 norm of the weights attached to it,
/// a matrix that reads an RMSNorm's output counting as `W[:, c] * g[c]`.
/// Returns (hidden, ffn per layer, heads per layer, kv groups per layer).
#[allow(clippy::type_complexity)]
fn magnitude_by_hand(
    c: &LlamaConfig,
    sd: &StateDict,
) -> (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let w = |name: &str, r: usize, k: usize| -> f64 {
        let t = &sd[name];
        t.data[r * t.shape[1] + k] as f64
    };
    let (h, f, nh, g, d) = (
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    );
    let head = if c.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    let mut hidden = vec![0.0f64; h];
    for (ch, s) in hidden.iter_mut().enumerate() {
        let gf = sd["model.norm.weight"].data[ch] as f64;
        for v in 0..c.vocab_size {
            *s += w("model.embed_tokens.weight", v, ch).powi(2);
            *s += (gf * w(head, v, ch)).powi(2);
        }
        for i in 0..c.num_hidden_layers {
            let p = |n: &str| format!("model.layers.{i}.{n}");
            let ga = sd[&p("input_layernorm.weight")].data[ch] as f64;
            let gm = sd[&p("post_attention_layernorm.weight")].data[ch] as f64;
            for r in 0..nh * d {
                *s += (ga * w(&p("self_attn.q_proj.weight"), r, ch)).powi(2);
                *s += w(&p("self_attn.o_proj.weight"), ch, r).powi(2);
            }
            for r in 0..g * d {
                *s += (ga * w(&p("self_attn.k_proj.weight"), r, ch)).powi(2);
                *s += (ga * w(&p("self_attn.v_proj.weight"), r, ch)).powi(2);
            }
            for r in 0..f {
                *s += (gm * w(&p("mlp.gate_proj.weight"), r, ch)).powi(2);
                *s += (gm * w(&p("mlp.up_proj.weight"), r, ch)).powi(2);
                *s += w(&p("mlp.down_proj.weight"), ch, r).powi(2);
            }
        }
    }
    let (mut ffn, mut heads, mut groups) = (vec![], vec![], vec![]);
    for i in 0..c.num_hidden_layers {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        ffn.push(
            (0..f)
                .map(|j| {
                    (0..h)
                        .map(|k| {
                            w(&p("mlp.gate_proj.weight"), j, k).powi(2)
                                + w(&p("mlp.up_proj.weight"), j, k).powi(2)
                                + w(&p("mlp.down_proj.weight"), k, j).powi(2)
                        })
                        .sum::<f64>()
                        .sqrt()
                })
                .collect(),
        );
        let head_sq: Vec<f64> = (0..nh)
            .map(|hh| {
                let mut s = 0.0;
                for r in hh * d..(hh + 1) * d {
                    for k in 0..h {
                        s += w(&p("self_attn.q_proj.weight"), r, k).powi(2);
                        s += w(&p("self_attn.o_proj.weight"), k, r).powi(2);
                    }
                }
                s
            })
            .collect();
        heads.push(head_sq.iter().map(|s| s.sqrt()).collect());
        groups.push(
            (0..g)
                .map(|gg| {
                    let per = nh / g;
                    let mut s: f64 = head_sq[gg * per..(gg + 1) * per].iter().sum();
                    for r in gg * d..(gg + 1) * d {
                        for k in 0..h {
                            s += w(&p("self_attn.k_proj.weight"), r, k).powi(2);
                            s += w(&p("self_attn.v_proj.weight"), r, k).powi(2);
                        }
                    }
                    s.sqrt()
                })
                .collect(),
        );
    }
    (hidden, ffn, heads, groups)
}

#[test]
fn magnitude_is_the_norm_of_the_attached_weights() {
    for (i, c) in [cfg_gqa(), cfg_odd_tied(), cfg_bias_llama3(), four_layers()]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(60 + i as u64);
        let mut sd = random_weights(&c, &mut rng);
        spread_gains(&c, &mut sd, &mut rng);
        let r = Rankings::magnitude(&c, &sd, &full_targets(&c)).unwrap();
        let (hidden, ffn, heads, groups) = magnitude_by_hand(&c, &sd);
        assert_eq!(r.hidden.unwrap(), order_desc(&hidden), "config {i}: hidden");
        let per_layer = |v: &[Vec<f64>]| v.iter().map(|s| order_desc(s)).collect::<Vec<_>>();
        assert_eq!(r.ffn.unwrap(), per_layer(&ffn), "config {i}: ffn");
        assert_eq!(r.heads.unwrap(), per_layer(&heads), "config {i}: heads");
        assert_eq!(
            r.kv_groups.unwrap(),
            per_layer(&groups),
            "config {i}: kv groups"
        );
    }
}

#[test]
fn magnitude_sees_through_norm_gains_and_tying() {
    // Moving scale between an RMSNorm gain and the columns that read it
    // leaves the function, and so the hidden ranking, unchanged.
    let c = cfg_gqa();
    let mut rng = Rng::new(70);
    let mut sd = random_weights(&c, &mut rng);
    spread_gains(&c, &mut sd, &mut rng);
    let targets = Targets {
        hidden: Some(1),
        ..Default::default()
    };
    let before = Rankings::magnitude(&c, &sd, &targets).unwrap().hidden;
    let h = c.hidden_size;
    for ch in [0, 3, 7] {
        let k = 4.0 + ch as f32;
        sd.get_mut("model.layers.1.input_layernorm.weight")
            .unwrap()
            .data[ch] *= k;
        for m in ["q_proj", "k_proj", "v_proj"] {
            let t = sd
                .get_mut(&format!("model.layers.1.self_attn.{m}.weight"))
                .unwrap();
            for row in t.data.chunks_exact_mut(h) {
                row[ch] /= k;
            }
        }
    }
    assert_eq!(
        Rankings::magnitude(&c, &sd, &targets).unwrap().hidden,
        before
    );

    // A tied model scores as the same model with an untied copy of its head.
    let tied = cfg_odd_tied();
    let sd = random_weights(&tied, &mut rng);
    let mut untied_sd = sd.clone();
    untied_sd.insert(
        "lm_head.weight".into(),
        sd["model.embed_tokens.weight"].clone(),
    );
    let mut untied = tied.clone();
    untied.tie_word_embeddings = false;
    let targets = full_targets(&tied);
    assert_eq!(
        Rankings::magnitude(&tied, &sd, &targets).unwrap(),
        Rankings::magnitude(&untied, &untied_sd, &targets).unwrap()
    );
}

fn r_layers(r: &Rankings) -> Vec<usize> {
    match &r.depth {
        Some(DepthRanking::Layers(v)) => v.clone(),
        other => panic!("expected a layer ranking, got {other:?}"),
    }
}

#[test]
fn random_rankings_are_seeded_permutations() {
    let c = four_layers();
    let targets = Targets {
        hidden: Some(8),
        ffn: Some(12),
        heads: Some(2),
        kv_groups: Some(1),
        depth: Some(DepthTarget::Contiguous(2)),
    };
    let a = Rankings::random(&c, &targets, 42);
    assert_eq!(a, Rankings::random(&c, &targets, 42));
    assert_ne!(a, Rankings::random(&c, &targets, 43));
    let mut h = a.hidden.clone().unwrap();
    h.sort_unstable();
    assert_eq!(h, identity(16));
    assert_ne!(
        a.ffn.as_ref().unwrap()[0],
        a.ffn.as_ref().unwrap()[1],
        "layers draw apart"
    );
    assert!(matches!(
        a.depth,
        Some(DepthRanking::Blocks { size: 2, .. })
    ));
    let keep = Keep::select(&c, &a, &targets).unwrap();
    keep.check(&c).unwrap();
    // An axis added later does not change the others' draws.
    let fewer = Targets {
        hidden: Some(8),
        ..Default::default()
    };
    assert_eq!(Rankings::random(&c, &fewer, 42).hidden, a.hidden);
}

#[test]
fn reverse_keeps_the_least_important() {
    let c = toy_config();
    let targets = Targets {
        hidden: Some(2),
        ffn: Some(2),
        heads: Some(2),
        ..Default::default()
    };
    let r = Rankings::from_scores(&toy_scores(), &c, &targets, DepthMetric::default())
        .unwrap()
        .reversed();
    let keep = Keep::select(&c, &r, &targets).unwrap();
    assert_eq!(keep.hidden, vec![1, 3]);
    assert_eq!(keep.layers[0].ffn, vec![2, 5]);
    assert_eq!(keep.layers[0].heads, vec![0, 3]);
    assert_eq!(keep.layers[1].ffn, vec![0, 1]);
}
