//! One pre-norm decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use super::attention::Attention;
use super::cache::LayerKv;
use super::capture::{Capture, LayerActivations, keep};
use super::layers::RmsNorm;
use super::mlp::Mlp;
use super::rope::RopeTables;

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: ModelBackend> DecoderLayer<B> {
    /// `x: [batch, seq, hidden]` -> `[batch, seq, hidden]`, recording in
    /// `acts` what `capture` asks for.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        cache: Option<&mut LayerKv<B>>,
        capture: &Capture,
        acts: &mut LayerActivations<B>,
    ) -> Tensor<B, 3> {
        acts.layer_input = keep(capture.layer_input, &x);

        let normed = self.input_layernorm.forward(x.clone());
        acts.input_layernorm = keep(capture.input_layernorm, &normed);
        let context = self.self_attn.context(normed, rope, cache);
        acts.o_proj_input = keep(capture.o_proj_input, &context);
        let h = x + self.self_attn.output(context);

        let normed = self.post_attention_layernorm.forward(h.clone());
        acts.post_attention_layernorm = keep(capture.post_attention_layernorm, &normed);
        let act = self.mlp.activation(normed);
        acts.down_proj_input = keep(capture.down_proj_input, &act);
        let out = h + self.mlp.output(act);

        acts.layer_output = keep(capture.layer_output, &out);
        out
    }
}
