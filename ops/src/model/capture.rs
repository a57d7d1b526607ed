//! Which intermediate activations a forward pass hands back, for importance
//! scoring and distillation, without a second forward implementation.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Flags naming the per-layer tensors to keep (every layer alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capture {
    /// Residual stream entering the layer.
    pub layer_input: bool,
    /// Output of `input_layernorm` (the attention input).
    pub input_layernorm: bool,
    /// Concatenated attention heads, the `o_proj` input.
    pub o_proj_input: bool,
    /// Output of `post_attention_layernorm` (the MLP input).
    pub post_attention_layernorm: bool,
    /// `silu(gate) * up`, the `down_proj` input.
    pub down_proj_input: bool,
    /// Residual stream leaving the layer.
    pub layer_output: bool,
    /// Output of the final norm (the `lm_head` input).
    pub final_norm: bool,
}

impl Capture {
    /// Keep nothing: a plain forward.
    pub const NONE: Capture = Capture {
        layer_input: false,
        input_layernorm: false,
        o_proj_input: false,
        post_attention_layernorm: false,
        down_proj_input: false,
        layer_output: false,
        final_norm: false,
    };

    /// Keep everything.
    pub const ALL: Capture = Capture {
        layer_input: true,
        input_layernorm: true,
        o_proj_input: true,
        post_attention_layernorm: true,
        down_proj_input: true,
        layer_output: true,
        final_norm: true,
    };

    /// Whether per-layer records are needed at all.
    pub(crate) fn wants_layers(&self) -> bool {
        self.layer_input
            || self.input_layernorm
            || self.o_proj_input
            || self.post_attention_layernorm
            || self.down_proj_input
            || self.layer_output
    }
}

/// The tensors of one decoder layer that [`Capture`] asked for.
#[derive(Debug, Clone)]
pub struct LayerActivations<B: Backend> {
    /// `[batch, seq, hidden]`
    pub layer_input: Option<Tensor<B, 3>>,
    /// `[batch, seq, hidden]`
    pub input_layernorm: Option<Tensor<B, 3>>,
    /// `[batch, seq, heads * head_dim]`
    pub o_proj_input: Option<Tensor<B, 3>>,
    /// `[batch, seq, hidden]`
    pub post_attention_layernorm: Option<Tensor<B, 3>>,
    /// `[batch, seq, intermediate]`
    pub down_proj_input: Option<Tensor<B, 3>>,
    /// `[batch, seq, hidden]`
    pub layer_output: Option<Tensor<B, 3>>,
}

impl<B: Backend> LayerActivations<B> {
    pub(crate) fn empty() -> Self {
        Self {
            layer_input: None,
            input_layernorm: None,
            o_proj_input: None,
            post_attention_layernorm: None,
            down_proj_input: None,
            layer_output: None,
        }
    }
}

/// Keeps `x` (a cheap handle clone) when `wanted`.
pub(crate) fn keep<B: Backend>(wanted: bool, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    wanted.then(|| x.clone())
}

/// Logits and whatever [`Capture`] asked for.
#[derive(Debug, Clone)]
pub struct ForwardOutput<B: Backend> {
    /// `[batch, seq, vocab]`
    pub logits: Tensor<B, 3>,
    /// One entry per layer when any per-layer flag was set, else empty.
    pub layers: Vec<LayerActivations<B>>,
    /// `[batch, seq, hidden]`, when `final_norm` was asked for.
    pub final_norm: Option<Tensor<B, 3>>,
}
