//! A model from random weights: the from-scratch baseline's starting point,
//! and a stand-in of a real model's shapes where only speed is measured.

use burn::tensor::backend::Backend;

use super::config::LlamaConfig;
use super::error::ModelError;
use super::llama::Llama;
use crate::io::{HostTensor, StateDict};
use crate::rng::{SplitMix64, mix};

/// Standard deviation of the weights, transformers' `initializer_range`
/// default for Llama.
pub const INIT_STD: f64 = 0.02;

impl<B: Backend> Llama<B> {
    /// The model `config` describes with weights as transformers initializes
    /// a Llama: every matrix (embedding included) normal with standard
    /// deviation [`INIT_STD`], biases zero, norm weights one. The same
    /// `seed` gives the same weights; each tensor draws from its own
    /// stream, seeded by the seed and its name.
    pub fn random_init(
        config: LlamaConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let tensors = random_state_dict(config.expected_tensors(), seed, INIT_STD);
        Llama::from_state_dict(config, tensors, device)
    }
}

/// Random tensors of the given names and shapes, by the rule of
/// [`Llama::random_init`]: names ending in `norm.weight` are ones, in
/// `.bias` zeros, the rest normal with standard deviation `std`, each from a
/// stream seeded by `seed` and its name (so a tensor's values do not depend
/// on which other tensors are drawn).
pub fn random_state_dict(
    shapes: impl IntoIterator<Item = (String, Vec<usize>)>,
    seed: u64,
    std: f64,
) -> StateDict {
    let mut tensors = StateDict::new();
    for (name, shape) in shapes {
        let len: usize = shape.iter().product();
        let data = if name.ends_with("norm.weight") {
            vec![1.0; len]
        } else if name.ends_with(".bias") {
            vec![0.0; len]
        } else {
            normal(len, std, mix(seed, name_hash(&name)))
        };
        tensors.insert(name, HostTensor::new(shape, data));
    }
    tensors
}

/// FNV-1a of a tensor's name: its stream's share of the seed.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `len` normal draws of standard deviation `std` (Box-Muller).
fn normal(len: usize, std: f64, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        // 1 - u keeps the logarithm's argument in (0, 1].
        let (u1, u2) = (1.0 - rng.next_f64(), rng.next_f64());
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let angle = std::f64::consts::TAU * u2;
        out.push((r * angle.cos()) as f32);
        out.push((r * angle.sin()) as f32);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    fn tiny() -> LlamaConfig {
        // hidden, ffn, layers, heads, kv heads, vocab; untied.
        LlamaConfig::new(32, 64, 2, 4, 2, 97)
    }

    #[test]
    fn draws_have_the_initializer_moments() {
        let v = normal(200_001, INIT_STD, 5);
        assert_eq!(v.len(), 200_001);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        // Sampling error of the mean is std/sqrt(n) = 4.5e-5.
        assert!(mean.abs() < 3e-4, "mean {mean}");
        assert!(
            (var.sqrt() / INIT_STD - 1.0).abs() < 0.01,
            "std {}",
            var.sqrt()
        );
    }

    #[test]
    fn a_seed_gives_the_same_model_and_another_seed_another() {
        let device = Default::default();
        let a = Llama::<Cpu>::random_init(tiny(), 1, &device)
            .unwrap()
            .to_state_dict();
        let b = Llama::<Cpu>::random_init(tiny(), 1, &device)
            .unwrap()
            .to_state_dict();
        let c = Llama::<Cpu>::random_init(tiny(), 2, &device)
            .unwrap()
            .to_state_dict();
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, t) in &a {
            assert_eq!(t.data, b[name].data, "{name}");
            if name.ends_with("norm.weight") {
                assert!(t.data.iter().all(|&v| v == 1.0), "{name}");
            } else {
                assert_ne!(t.data, c[name].data, "{name}");
            }
        }
        assert!(a.contains_key("lm_head.weight"));
        // Tensors draw from separate streams: no two share their values.
        let q = &a["model.layers.0.self_attn.q_proj.weight"].data;
        let k = &a["model.layers.1.self_attn.q_proj.weight"].data;
        assert_ne!(q[..8], k[..8]);
    }
}
