//! Cheap structural variants of a loaded model, for scoring: the same
//! weights (shared, not copied) with some layers left out.

use super::llama::Llama;
use burn::tensor::backend::Backend;
use std::collections::BTreeSet;

impl<B: Backend> Llama<B> {
    /// The model without the layers in `drop` (0-based); the rest keep their
    /// order. Tensors are shared with `self`.
    pub fn without_layers(&self, drop: &BTreeSet<usize>) -> Self {
        let layers: Vec<_> = self
            .layers
            .iter()
            .enumerate()
            .filter(|(i, _)| !drop.contains(i))
            .map(|(_, l)| l.clone())
            .collect();
        let mut config = self.config.clone();
        config.num_hidden_layers = layers.len();
        Self {
            embed_tokens: self.embed_tokens.clone(),
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            rope: self.rope.clone(),
            config,
            precision: self.precision,
            activations: self.activations,
        }
    }
}
