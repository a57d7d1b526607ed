//! Importance scores from the device reductions equal a float64 reference
//! computed from the reference forward's activations, on random tiny models.

mod model_support;

use distillery_engine::progress::NoProgress;
use distillery_ops::importance::{AggregationPair, ImportanceSpec, estimate};
use distillery_ops::io::scores::{DepthMetric, ScoreName};
use distillery_ops::kernels::importance::Aggregation;
use model_support::*;

/// score[c] = sqrt(sum over samples of (mean over tokens of |x|)^2), for one
/// hooked activation given per sample as `[seq][channels]`.
fn l2_of_means(samples: &[Vec<f64>], seq: usize, channels: usize) -> Vec<f64> {
    (0..channels)
        .map(|c| {
            samples
                .iter()
                .map(|x| {
                    let m = (0..seq).map(|s| x[s * channels + c].abs()).sum::<f64>() / seq as f64;
                    m * m
                })
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            ((*g as f64) - w).abs() <= 1e-4 * scale,
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn width_and_depth_scores_match_the_float64_reference() {
    for (name, c) in all_configs() {
        let mut rng = Rng::new(21);
        let sd = random_weights(&c, &mut rng);
        let model = build(&c, &sd);
        let seq = 7;
        let rows: Vec<Vec<u32>> = (0..5).map(|_| rng.tokens(seq, c.vocab_size)).collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let pair = AggregationPair {
            batch: Aggregation::L2,
            sequence: Aggregation::Mean,
        };
        let spec = ImportanceSpec {
            hidden: Some(pair),
            ffn: Some(pair),
            heads: Some(pair),
            block_importance: true,
            perplexity: false,
            block_sizes: vec![2],
            batch: 2,
        };
        let scores = estimate(&model, &refs, &[], &spec, &NoProgress);
        let outs: Vec<_> = rows.iter().map(|r| reference_forward(&c, &sd, r)).collect();
        let (h, f, q, layers) = (
            c.hidden_size,
            c.intermediate_size,
            c.q_dim(),
            c.num_hidden_layers,
        );

        let mut hidden = vec![0f64; h];
        for l in 0..layers {
            for hook in [0, 1] {
                let acts: Vec<Vec<f64>> = outs
                    .iter()
                    .map(|o| {
                        if hook == 0 {
                            o.layers[l].input_layernorm.clone()
                        } else {
                            o.layers[l].post_attention_layernorm.clone()
                        }
                    })
                    .collect();
                for (acc, s) in hidden.iter_mut().zip(l2_of_means(&acts, seq, h)) {
                    *acc += s;
                }
            }
        }
        close(
            &scores.get(ScoreName::Hidden).unwrap().data,
            &hidden,
            &format!("{name} hidden"),
        );

        let ffn: Vec<f64> = (0..layers)
            .flat_map(|l| {
                let acts: Vec<Vec<f64>> = outs
                    .iter()
                    .map(|o| o.layers[l].down_proj_input.clone())
                    .collect();
                l2_of_means(&acts, seq, f)
            })
            .collect();
        close(
            &scores.get(ScoreName::Ffn).unwrap().data,
            &ffn,
            &format!("{name} ffn"),
        );

        let heads: Vec<f64> = (0..layers)
            .flat_map(|l| {
                let acts: Vec<Vec<f64>> = outs
                    .iter()
                    .map(|o| o.layers[l].o_proj_input.clone())
                    .collect();
                let per_channel = l2_of_means(&acts, seq, q);
                per_channel
                    .chunks(c.head_dim)
                    .map(|d| d.iter().map(|v| v * v).sum::<f64>().sqrt())
                    .collect::<Vec<_>>()
            })
            .collect();
        close(
            &scores.get(ScoreName::Heads).unwrap().data,
            &heads,
            &format!("{name} heads"),
        );

        let distance = |l_in: usize, l_out: usize| -> f64 {
            let mut sum = 0.0;
            for o in &outs {
                for s in 0..seq {
                    let u = &o.layers[l_in].layer_input[s * h..(s + 1) * h];
                    let v = &o.layers[l_out].layer_output[s * h..(s + 1) * h];
                    let dot: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum();
                    let nu = u.iter().map(|a| a * a).sum::<f64>().sqrt();
                    let nv = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                    sum += 1.0 - dot / (nu * nv).max(1e-8);
                }
            }
            sum / (outs.len() * seq) as f64
        };
        let depth: Vec<f64> = (0..layers).map(|l| distance(l, l)).collect();
        close(
            &scores
                .get(ScoreName::layers(DepthMetric::BlockImportance))
                .unwrap()
                .data,
            &depth,
            &format!("{name} depth"),
        );
        if layers >= 2 {
            let blocks: Vec<f64> = (0..=layers - 2).map(|l| distance(l, l + 1)).collect();
            close(
                &scores
                    .get(ScoreName::Depth {
                        metric: DepthMetric::BlockImportance,
                        block: 2,
                    })
                    .unwrap()
                    .data,
                &blocks,
                &format!("{name} blocks"),
            );
        }
        assert_eq!(scores.summary.samples, 5);
    }
}
