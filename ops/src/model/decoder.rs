//! One pre-norm decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`,
//! each residual add summed by the RMSNorm that reads it ([`Residual`]).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use super::attention::Attention;
use super::cache::LayerKv;
use super::capture::{Capture, LayerActivations};
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

/// The residual stream between the layers' blocks: a tensor, or a sum
/// `x + delta` still to take, which the RMSNorm after it takes as it reads
/// it ([`ProductInput::SumNormalized`]) rather than a pass of its own
/// writing it for the norm to read back.
pub enum Residual<B: Backend> {
    Summed(Tensor<B, 3>),
    Pending(Tensor<B, 3>, Tensor<B, 3>),
}

impl<B: Backend> Residual<B> {
    /// The stream as a tensor of its own.
    pub fn sum(self) -> Tensor<B, 3> {
        match self {
            Residual::Summed(x) => x,
            Residual::Pending(x, delta) => x + delta,
        }
    }
}

impl<B: ModelBackend> DecoderLayer<B> {
    /// `x: [batch, seq, hidden]` -> `[batch, seq, hidden]`, recording in
    /// `acts` what `capture` asks for. What goes out is left unsummed
    /// unless the capture wants the layer's output.
    pub fn forward(
        &self,
        x: Residual<B>,
        rope: &RopeTables<B>,
        cache: Option<&mut LayerKv<B>>,
        capture: &Capture,
        acts: &mut LayerActivations<B>,
    ) -> Residual<B> {
        let x = if capture.layer_input {
            let x = x.sum();
            acts.layer_input = Some(x.clone());
            Residual::Summed(x)
        } else {
            x
        };

        let mut x_sum = None;
        let input = normed(
            &self.input_layernorm,
            x,
            capture.input_layernorm,
            &mut acts.input_layernorm,
            &mut x_sum,
        );
        let attn = if capture.o_proj_input {
            let context = self.self_attn.context(input, rope, cache);
            acts.o_proj_input = Some(context.clone());
            self.self_attn.output(context)
        } else {
            self.self_attn.forward(input, rope, cache)
        };
        let x = x_sum.expect("the layer's input summed for its products");

        let mut h = None;
        let input = normed(
            &self.post_attention_layernorm,
            Residual::Pending(x, attn),
            capture.post_attention_layernorm,
            &mut acts.post_attention_layernorm,
            &mut h,
        );
        let mlp = if capture.down_proj_input {
            let act = self.mlp.activation(input);
            acts.down_proj_input = Some(act.clone());
            self.mlp.output(act)
        } else {
            self.mlp.forward(input)
        };
        let h = h.expect("x + attn summed for the MLP's products");

        let out = Residual::Pending(h, mlp);
        if capture.layer_output {
            let out = out.sum();
            acts.layer_output = Some(out.clone());
            Residual::Summed(out)
        } else {
            out
        }
    }
}

/// The products' input `norm(x)`, `x` summed where it is a residual add
/// still to take, and the sum put in `sum` (by the products, when their op
/// sums it): computed here and kept in `kept` when `wanted`, else left for
/// the products' op to write as they read it.
fn normed<'a, B: ModelBackend>(
    norm: &'a RmsNorm<B>,
    x: Residual<B>,
    wanted: bool,
    kept: &mut Option<Tensor<B, 3>>,
    sum: &'a mut Option<Tensor<B, 3>>,
) -> ProductInput<'a, B> {
    match x {
        Residual::Pending(x, delta) if !wanted => ProductInput::SumNormalized {
            norm,
            x,
            delta,
            sum,
        },
        x => {
            let x = x.sum();
            *sum = Some(x.clone());
            if wanted {
                let y = norm.forward(x);
                *kept = Some(y.clone());
                ProductInput::Tensor(y)
            } else {
                ProductInput::Normalized(norm, x)
            }
        }
    }
}
