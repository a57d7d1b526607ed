//! The Llama decoder, top to bottom: token embedding, decoder layers, final
//! RMSNorm, and the language-model head (tied to the embedding or not).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData};

use super::ModelBackend;
use super::cache::KvCache;
use super::capture::{Capture, ForwardOutput, LayerActivations, keep};
use super::config::LlamaConfig;
use super::decoder::{DecoderLayer, Residual};
use super::layers::{Linear, RmsNorm};
use super::rope::Rope;
use crate::kernels::matmul::{Activations, inference_weight, linear_matmul_as};
use crate::kernels::{Precision, WeightLayout};

/// `LlamaForCausalLM`. Build it with [`Llama::from_state_dict`] or
/// [`Llama::load_hf`]; a change of shape (pruning) goes through the state
/// dict too, so that `config` and the weights cannot disagree.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `[vocab, hidden]`
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `[vocab, hidden]`; `None` when tied: the embedding is the head.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    pub rope: Rope,
    pub config: LlamaConfig,
    /// The arithmetic of the head's product; [`Llama::with_precision`]
    /// sets it and every layer's.
    pub precision: Precision,
    /// How inference carries the head's activations into bf16 operands;
    /// [`Llama::with_activations`] sets it and every layer's.
    pub activations: Activations,
}

impl<B: ModelBackend> Llama<B> {
    /// Logits for every position: `tokens: [batch, seq]` -> `[batch, seq, vocab]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with(tokens, &Capture::NONE).logits
    }

    /// Logits plus the activations `capture` names.
    pub fn forward_with(&self, tokens: Tensor<B, 2, Int>, capture: &Capture) -> ForwardOutput<B> {
        let (hidden, layers) = self.run(tokens, None, capture);
        ForwardOutput {
            final_norm: keep(capture.final_norm, &hidden),
            logits: self.logits(hidden),
            layers,
        }
    }

    /// Logits for new tokens, attending to (and extending) `cache`: prefill
    /// with the prompt, then feed one token at a time.
    /// `tokens: [batch, new]` -> `[batch, new, vocab]`.
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let (hidden, _) = self.run(tokens, Some(cache), &Capture::NONE);
        self.logits(hidden)
    }

    /// Final-norm hidden states of new tokens attending to (and extending)
    /// `cache`: [`Llama::forward_cached`] without the `lm_head`.
    pub fn hidden_states_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        self.run(tokens, Some(cache), &Capture::NONE).0
    }

    /// The activations `capture` names and the final-norm hidden states,
    /// without the `lm_head` (scoring needs no logits, and the head is a
    /// large share of the forward's work).
    pub fn forward_activations(
        &self,
        tokens: Tensor<B, 2, Int>,
        capture: &Capture,
    ) -> (Tensor<B, 3>, Vec<LayerActivations<B>>) {
        self.run(tokens, None, capture)
    }

    /// Final-norm hidden states, the `lm_head` input:
    /// `tokens: [batch, seq]` -> `[batch, seq, hidden]`.
    pub fn hidden_states(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.run(tokens, None, &Capture::NONE).0
    }

    /// The `lm_head`'s weights `[vocab, hidden]`: the embedding when tied.
    pub fn head_weight(&self) -> Tensor<B, 2> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).val()
    }

    /// The `lm_head`: `hidden: [batch, seq, hidden]` -> `[batch, seq, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d] = hidden.dims();
        let head = self.head_weight();
        let vocab = head.dims()[0];
        let rows = hidden.reshape([batch * seq, d]);
        linear_matmul_as(
            rows,
            head,
            WeightLayout::OutIn,
            self.precision,
            self.activations,
        )
        .reshape([batch, seq, vocab])
    }

    /// The model with every matrix product in `precision` (in training
    /// too: see [`crate::kernels::matmul`] for each one's arithmetic).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        for layer in &mut self.layers {
            layer.self_attn.precision = precision;
        }
        self.for_each_linear(|linear| linear.precision = precision);
        self
    }

    /// The model with its inference products' activations carried as
    /// `activations` says, where they run in bf16 ([`Activations`]: two
    /// parts by default; rounded once, as a training step rounds them, for
    /// a teacher whose forward must be fast more than close to f32's).
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.activations = activations;
        self.for_each_linear(|linear| linear.activations = activations);
        self
    }

    /// The model with its products' weights held as its inference
    /// products read them ([`Linear::hold_inference_weight`]): where they
    /// round their operands once (bf16 with [`Activations::Rounded`] on
    /// CUDA), a bf16 copy in place of each f32 weight, so that a forward
    /// rounds none of them and the weights take half the memory. The
    /// logits are the same, bit for bit. A tied head stays f32: it is the
    /// embedding, which the forward looks rows up in.
    ///
    /// For a model that only runs inference, such as a distillation's
    /// teacher: a model trained afterwards would update the rounded
    /// weights.
    pub fn with_inference_weights(mut self) -> Self {
        self.for_each_linear(Linear::hold_inference_weight);
        let (precision, activations) = (self.precision, self.activations);
        self.lm_head = self
            .lm_head
            .map(|head| head.map(|w| inference_weight(w, precision, activations)));
        self
    }

    /// `f` on every layer's linear maps (the head is the model's own).
    fn for_each_linear(&mut self, mut f: impl FnMut(&mut Linear<B>)) {
        for layer in &mut self.layers {
            let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
            for linear in [
                &mut attn.q_proj,
                &mut attn.k_proj,
                &mut attn.v_proj,
                &mut attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ] {
                f(linear);
            }
        }
    }

    /// The one forward path. Returns the final-norm hidden states and the
    /// per-layer records (empty unless asked for).
    fn run(
        &self,
        tokens: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
        capture: &Capture,
    ) -> (Tensor<B, 3>, Vec<LayerActivations<B>>) {
        let [_, seq] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len);
        let device = tokens.device();
        let rope = self.rope.tables::<B>(start, seq, &device);

        let mut x = Residual::Summed(embedding(self.embed_tokens.val(), tokens));
        let mut records = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut acts = LayerActivations::empty();
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &rope, layer_cache, capture, &mut acts);
            if capture.wants_layers() {
                records.push(acts);
            }
        }
        if let Some(cache) = cache {
            cache.len += seq;
        }
        (self.norm.forward(x.sum()), records)
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Greedy decoding from one prompt: prefill, then one token at a time
    /// until `max_new_tokens` or a token of `stop` (which is included).
    /// Returns the new tokens only.
    pub fn generate_greedy(&self, prompt: &[u32], max_new_tokens: usize, stop: &[u32]) -> Vec<u32> {
        let device = self.embed_tokens.device();
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(max_new_tokens);
        let mut next_input = prompt.to_vec();
        while out.len() < max_new_tokens && !next_input.is_empty() {
            let (hidden, _) = self.run(
                tokens_tensor(&[next_input.as_slice()], &device),
                Some(&mut cache),
                &Capture::NONE,
            );
            // Only the last position's logits are needed.
            let seq = hidden.dims()[1];
            let last = self.logits(hidden.narrow(1, seq - 1, 1));
            let token = argmax(&last.into_data().to_vec::<f32>().expect("f32 logits"));
            out.push(token);
            if stop.contains(&token) {
                break;
            }
            next_input = vec![token];
        }
        out
    }

    /// Where the weights live.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.device()
    }
}

/// Token ids `[batch][seq]` (rows of equal length) as an Int tensor `[batch, seq]`.
pub fn tokens_tensor<B: Backend>(rows: &[&[u32]], device: &B::Device) -> Tensor<B, 2, Int> {
    let seq = rows.first().map_or(0, |r| r.len());
    assert!(
        rows.iter().all(|r| r.len() == seq),
        "token rows must have equal length"
    );
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&t| t as i64))
        .collect();
    Tensor::from_data(TensorData::new(ids, [rows.len(), seq]), device)
}

/// Index of the largest value (the first one on ties).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}
