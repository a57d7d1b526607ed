//! One pre-norm decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use super::attention::Attention;
use super::cache::LayerKv;
use super::capture::{Capture, LayerActivations, keep};
use super::layers::{ProductInput, RmsNorm};
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

        let input = normed(
            &self.input_layernorm,
            &x,
            capture.input_layernorm,
            &mut acts.input_layernorm,
        );
        let context = self.self_attn.context(input, rope, cache);
        acts.o_proj_input = keep(capture.o_proj_input, &context);
        let h = x + self.self_attn.output(context);

        let input = normed(
            &self.post_attention_layernorm,
            &h,
            capture.post_attention_layernorm,
            &mut acts.post_attention_layernorm,
        );
        let mlp = if capture.down_proj_input {
            let act = self.mlp.activation(input);
            acts.down_proj_input = Some(act.clone());
            self.mlp.output(act)
        } else {
            self.mlp.forward(input)
        };
        let out = h + mlp;

        acts.layer_output = keep(capture.layer_output, &out);
        out
    }
}

/// The products' input `norm(x)`: computed here and kept in `kept` when
/// `wanted`, else left for the products' op to write as they read it.
fn normed<'a, B: ModelBackend>(
    norm: &'a RmsNorm<B>,
    x: &Tensor<B, 3>,
    wanted: bool,
    kept: &mut Option<Tensor<B, 3>>,
) -> ProductInput<'a, B> {
    if wanted {
        let y = norm.forward(x.clone());
        *kept = Some(y.clone());
        ProductInput::Tensor(y)
    } else {
        ProductInput::Normalized(norm, x.clone())
    }
}
