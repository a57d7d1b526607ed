//! Incremental decoding with the KV cache gives the logits of the full
//! forward, and greedy generation follows them.

mod model_support;

use distillery_ops::model::tokens_tensor;
use model_support::*;

#[test]
fn prefill_then_single_tokens_match_full_forward() {
    for (i, (name, c)) in all_configs().into_iter().enumerate() {
        let mut rng = Rng::new(300 + i as u64);
        let model = build(&c, &random_weights(&c, &mut rng));
        let tokens = rng.tokens(12, c.vocab_size);
        let full = model_logits(&model, &[&tokens]);
        let v = c.vocab_size;

        let mut cache = model.new_cache();
        // Prefill 5, then a chunk of 3 (a multi-token step on a non-empty
        // cache), then one at a time.
        let mut got = Vec::new();
        for chunk in [&tokens[..5], &tokens[5..8]] {
            got.extend(to_vec(
                model.forward_cached(tokens_tensor(&[chunk], &device()), &mut cache),
            ));
        }
        for t in 8..12 {
            let step =
                model.forward_cached(tokens_tensor(&[&tokens[t..t + 1]], &device()), &mut cache);
            assert_eq!(step.dims(), [1, 1, v]);
            got.extend(to_vec(step));
        }
        assert_eq!(cache.len(), 12);
        let err = rel_err_f32(&got, &full);
        assert!(err <= 1e-5, "{name}: cached vs full relative error {err:e}");
    }
}

#[test]
fn batched_cache_matches_full_forward() {
    let c = cfg_bias_llama3();
    let mut rng = Rng::new(5);
    let model = build(&c, &random_weights(&c, &mut rng));
    let a = rng.tokens(7, c.vocab_size);
    let b = rng.tokens(7, c.vocab_size);
    let full = to_vec(model.forward(tokens_tensor(&[&a, &b], &device())));

    let mut cache = model.new_cache();
    let prefill =
        to_vec(model.forward_cached(tokens_tensor(&[&a[..4], &b[..4]], &device()), &mut cache));
    let v = c.vocab_size;
    let mut rows = [prefill[..4 * v].to_vec(), prefill[4 * v..].to_vec()];
    for t in 4..7 {
        let step = to_vec(model.forward_cached(
            tokens_tensor(&[&a[t..t + 1], &b[t..t + 1]], &device()),
            &mut cache,
        ));
        rows[0].extend_from_slice(&step[..v]);
        rows[1].extend_from_slice(&step[v..]);
    }
    let got: Vec<f32> = rows.concat();
    let err = rel_err_f32(&got, &full);
    assert!(err <= 1e-5, "batched cache relative error {err:e}");
}

#[test]
fn greedy_generation_follows_full_forward_argmax() {
    let c = cfg_odd_tied();
    let mut rng = Rng::new(9);
    let model = build(&c, &random_weights(&c, &mut rng));
    let prompt = rng.tokens(4, c.vocab_size);
    let generated = model.generate_greedy(&prompt, 10, &[]);
    assert_eq!(generated.len(), 10);

    // The same continuation, recomputing the whole sequence every step.
    let mut seq = prompt.clone();
    for _ in 0..10 {
        let logits = model_logits(&model, &[&seq]);
        let last = &logits[(seq.len() - 1) * c.vocab_size..];
        let next = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        seq.push(next as u32);
    }
    assert_eq!(generated, seq[prompt.len()..]);

    // A stop token ends generation and is included.
    let stop = generated[3];
    let first = generated.iter().position(|&t| t == stop).unwrap();
    let stopped = model.generate_greedy(&prompt, 10, &[stop]);
    assert_eq!(stopped, generated[..=first]);
}
