//! Next-token loss equals a float64 oracle built on the reference forward,
//! and dropping layers gives the loss of the model built without them.

mod model_support;

use distillery_ops::eval::loss::next_token_nll;
use model_support::*;
use std::collections::BTreeSet;

/// Mean next-token NLL in f64 from the reference logits.
fn reference_nll(
    c: &distillery_ops::model::LlamaConfig,
    sd: &distillery_ops::io::StateDict,
    rows: &[Vec<u32>],
) -> f64 {
    let mut total = 0.0;
    let mut count = 0;
    for row in rows {
        let out = reference_forward(c, sd, &row[..row.len() - 1]);
        let vocab = c.vocab_size;
        for (t, target) in row[1..].iter().enumerate() {
            let logits = &out.logits[t * vocab..(t + 1) * vocab];
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            total += lse - logits[*target as usize];
            count += 1;
        }
    }
    total / count as f64
}

#[test]
fn loss_matches_the_float64_oracle() {
    for (name, c) in all_configs() {
        let mut rng = Rng::new(11);
        let sd = random_weights(&c, &mut rng);
        let model = build(&c, &sd);
        let rows: Vec<Vec<u32>> = (0..3).map(|_| rng.tokens(9, c.vocab_size)).collect();
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let got = next_token_nll(&model, &refs, 2);
        assert_eq!(got.tokens, 3 * 8);
        let want = reference_nll(&c, &sd, &rows);
        assert!(
            (got.mean() - want).abs() < 1e-4 * want.abs().max(1.0),
            "{name}: {} vs {want}",
            got.mean()
        );
    }
}

#[test]
fn without_layers_equals_a_model_built_without_them() {
    let c = cfg_gqa();
    let mut rng = Rng::new(5);
    let sd = random_weights(&c, &mut rng);
    let model = build(&c, &sd);
    let drop = BTreeSet::from([1usize]);
    let smaller = model.without_layers(&drop);
    // The same model from a state dict with layer 1 removed and renumbered.
    let mut pruned_sd = distillery_ops::io::StateDict::new();
    for (name, t) in &sd {
        let renamed = match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (index, tail) = rest.split_once('.').unwrap();
                let index: usize = index.parse().unwrap();
                if drop.contains(&index) {
                    continue;
                }
                let new_index = index - drop.iter().filter(|&&d| d < index).count();
                format!("model.layers.{new_index}.{tail}")
            }
            None => name.clone(),
        };
        pruned_sd.insert(renamed, t.clone());
    }
    let mut pruned_config = c.clone();
    pruned_config.num_hidden_layers -= 1;
    let rebuilt = build(&pruned_config, &pruned_sd);
    let tokens = rng.tokens(7, c.vocab_size);
    let a = model_logits(&smaller, &[&tokens]);
    let b = model_logits(&rebuilt, &[&tokens]);
    assert_eq!(a, b);
    assert_eq!(smaller.config.num_hidden_layers, c.num_hidden_layers - 1);
    assert_ne!(model_logits(&model, &[&tokens]), a);
}
