//! Pruning the real SmolLM2-135M-Instruct (9 query heads in 3 kv groups,
//! tied embeddings, 30 layers): a consistent re-ordering of every width axis
//! leaves its logits unchanged, and a width-and-depth prune builds a model
//! that runs. Skipped when the shared asset is absent (fails under CI=true).

mod model_support;

use distillery_ops::io::gguf_llama::load_llama;
use distillery_ops::model::LlamaConfig;
use distillery_ops::prune::{DepthTarget, Rankings, Targets, prune};
use model_support::{Rng, build, model_logits};

const GGUF: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A random permutation of `0..n` (Fisher-Yates on the test RNG).
fn permutation(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

#[test]
fn smollm2_permuted_and_pruned() {
    let Some(path) = testkit::require_asset(GGUF) else {
        return;
    };
    let gguf = load_llama(&path).unwrap();
    let c = LlamaConfig::from_json(&gguf.config).unwrap();
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (9, 3));
    let sd = gguf.tensors;
    let mut rng = Rng::new(2024);
    let tokens = rng.tokens(16, c.vocab_size);
    let reference = model_logits(&build(&c, &sd), &[&tokens]);

    // Every width axis re-ordered at full size: the same function.
    let l = c.num_hidden_layers;
    let full = Targets {
        hidden: Some(c.hidden_size),
        ffn: Some(c.intermediate_size),
        heads: Some(c.num_attention_heads),
        kv_groups: Some(c.num_key_value_heads),
        depth: None,
    };
    let rankings = Rankings {
        hidden: Some(permutation(c.hidden_size, &mut rng)),
        ffn: Some(
            (0..l)
                .map(|_| permutation(c.intermediate_size, &mut rng))
                .collect(),
        ),
        heads: Some(
            (0..l)
                .map(|_| permutation(c.num_attention_heads, &mut rng))
                .collect(),
        ),
        kv_groups: Some(
            (0..l)
                .map(|_| permutation(c.num_key_value_heads, &mut rng))
                .collect(),
        ),
        depth: None,
    };
    let out = prune(&c, sd.clone(), &rankings, &full).unwrap();
    assert_eq!(out.config, c);
    let got = model_logits(&build(&out.config, &out.tensors), &[&tokens]);
    let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&reference)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-5 * scale.max(1.0),
        "logits moved by {diff} (scale {scale})"
    );

    // Width and depth at once, by weight magnitude.
    let targets = Targets {
        hidden: Some(384),
        ffn: Some(1024),
        heads: Some(6),
        kv_groups: None,
        depth: Some(DepthTarget::Contiguous(l - 6)),
    };
    let rankings = Rankings::magnitude(&c, &sd, &targets).unwrap();
    let out = prune(&c, sd, &rankings, &targets).unwrap();
    let p = &out.config;
    assert_eq!(
        (
            p.hidden_size,
            p.intermediate_size,
            p.num_attention_heads,
            p.num_key_value_heads,
            p.num_hidden_layers,
            p.head_dim
        ),
        (384, 1024, 6, 3, l - 6, c.head_dim)
    );
    assert!(p.tie_word_embeddings);
    let dropped = out.keep.dropped_layers(&c);
    assert_eq!(dropped.len(), 6);
    assert!(dropped.windows(2).all(|w| w[1] == w[0] + 1), "{dropped:?}");
    let got = model_logits(&build(p, &out.tensors), &[&tokens]);
    assert_eq!(got.len(), 16 * c.vocab_size);
    assert!(got.iter().all(|v| v.is_finite()));
    eprintln!(
        "SmolLM2: {:.1}M -> {:.1}M parameters; permuted logits within {diff:.2e} of {scale:.1}",
        c.num_parameters() as f64 / 1e6,
        p.num_parameters() as f64 / 1e6
    );
}
