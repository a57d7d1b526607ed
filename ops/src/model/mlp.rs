//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use super::layers::{Linear, ProductInput};
use crate::kernels::swiglu;

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
        let [gate, up] = Linear::forward_shared([&self.gate_proj, &self.up_proj], x);
        self.down_proj.forward_swiglu(gate, up)
    }

    /// The `down_proj` input: `x: [batch, seq, hidden]` -> `[batch, seq, intermediate]`.
    pub fn activation(&self, x: ProductInput<'_, B>) -> Tensor<B, 3> {
        let [gate, up] = Linear::forward_shared([&self.gate_proj, &self.up_proj], x);
        swiglu(gate, up)
    }

    /// `down_proj`: `[batch, seq, intermediate]` -> `[batch, seq, hidden]`.
    pub fn output(&self, act: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj.forward(act)
    }
}
