//! Text generation with a KV cache: greedy, or sampling with temperature and
//! nucleus (top-p) filtering from a seeded generator, so a seed reproduces
//! the same text.

use crate::model::{Llama, ModelBackend, tokens_tensor};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    pub seed: u64,
}

/// Generates after `prompt` until `max_new_tokens` or a token of `stop`
/// (included). Calls `on_token` for each new token as it comes.
pub fn generate<B: ModelBackend>(
    model: &Llama<B>,
    prompt: &[u32],
    sampling: &Sampling,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    let device = model.device();
    let mut cache = model.new_cache();
    let mut rng = SplitMix64(sampling.seed);
    let mut out = Vec::with_capacity(sampling.max_new_tokens);
    let mut next_input = prompt.to_vec();
    while out.len() < sampling.max_new_tokens && !next_input.is_empty() {
        let logits =
            model.forward_cached(tokens_tensor(&[next_input.as_slice()], &device), &mut cache);
        let seq = logits.dims()[1];
        let logits = logits
            .narrow(1, seq - 1, 1)
            .into_data()
            .to_vec::<f32>()
            .expect("f32 logits");
        let token = if sampling.temperature <= 0.0 {
            argmax(&logits)
        } else {
            sample(&logits, sampling.temperature, sampling.top_p, &mut rng)
        };
        out.push(token);
        on_token(token);
        if stop.contains(&token) {
            break;
        }
        next_input = vec![token];
    }
    out
}

pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from softmax(logits / temperature) restricted to the top-p nucleus.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut SplitMix64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= top_p as f64 {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let nucleus_total: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut draw = rng.next_f64() * nucleus_total;
    for p in nucleus {
        draw -= p.1;
        if draw <= 0.0 {
            return p.0;
        }
    }
    nucleus[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps two tokens.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut rng = SplitMix64(7);
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, 1.0, 0.7, &mut rng) as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0);
        assert_eq!(seen[2] + seen[3], 0);
        // Within the nucleus the ratio follows the renormalized probabilities (e ~ 2.72).
        let ratio = seen[0] as f64 / seen[1] as f64;
        assert!((2.3..3.2).contains(&ratio), "{ratio}");
    }

    #[test]
    fn low_temperature_approaches_greedy() {
        let logits = [0.5f32, 2.0, 1.9];
        let mut rng = SplitMix64(1);
        for _ in 0..100 {
            assert_eq!(sample(&logits, 0.01, 1.0, &mut rng), 1);
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draws = |seed| {
            let mut rng = SplitMix64(seed);
            (0..20)
                .map(|_| sample(&logits, 1.0, 0.9, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(5), draws(5));
        assert_ne!(draws(5), draws(6));
    }
}
