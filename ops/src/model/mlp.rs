//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use super::layers::{Linear, ProductInput};
use crate::kernels::{Results, swiglu};
use burn::tensor::DType;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// hidden -> intermediate
    pub gate_proj: Linear<B>,
    /// hidden -> intermediate
    pub up_proj: Linear<B>,
    /// intermediate -> hidden
    pub down_proj: Linear<B>,
}

impl<B: ModelBackend> Mlp<B> {
    /// The block: `x: [batch, seq, hidden]` -> `[batch, seq, hidden]`, the
    /// SwiGLU written as `down_proj` reads it ([`Linear::forward_swiglu`]),
    /// for a caller that does not want the activation itself.
    pub fn forward(&self, x: ProductInput<'_, B>) -> Tensor<B, 3> {
        let [gate, up] = self.gate_and_up(x);
        self.down_proj.forward_swiglu(gate, up)
    }

    /// The `down_proj` input: `x: [batch, seq, hidden]` -> `[batch, seq, intermediate]`,
    /// in f32: where gate and up were rounded, the values `down_proj`
    /// reads (SwiGLU's result rounded as its product rounds it), so that
    /// the block gives what [`Mlp::forward`] gives.
    pub fn activation(&self, x: ProductInput<'_, B>) -> Tensor<B, 3> {
        let [gate, up] = self.gate_and_up(x);
        let act = swiglu(gate, up);
        if act.dtype() == DType::F32 {
            act
        } else {
            act.cast(DType::F32)
        }
    }

    /// Gate and up of one input, rounded where their products round their
    /// operands once ([`Results::Rounded`]): SwiGLU reads them only to
    /// compute in f32, so half the bytes are written and read back.
    fn gate_and_up(&self, x: ProductInput<'_, B>) -> [Tensor<B, 3>; 2] {
        Linear::forward_shared([&self.gate_proj, &self.up_proj], x, Results::Rounded)
    }

    /// `down_proj`: `[batch, seq, intermediate]` -> `[batch, seq, hidden]`.
    pub fn output(&self, act: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(act)
    }
}
