//! The two building blocks with weights: a linear map and RMSNorm.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use crate::kernels::{Precision, WeightLayout, linear_matmul, linear_matmul_shared, rms_norm};

/// `y = x W + b` with `W: [in, out]`.
///
/// Burn's layout, the transpose of Hugging Face's `[out, in]`: the gemm
/// kernels behind Flex run 10-40% faster (up to 1.7x at a few dozen rows)
/// on a row-major `[in, out]` right-hand side than on a transposed view, so
/// the weights are transposed once when loaded and back when exported
/// (see `weights.rs`).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in_features, out_features]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The arithmetic of the product (f32 unless a caller asks for bf16
    /// where the hardware has it, see [`Precision`]).
    pub precision: Precision,
}

impl<B: Backend> Linear<B> {
    /// `weight: [in, out]`, `bias: [out]`.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            precision: Precision::F32,
        }
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }
}

impl<B: ModelBackend> Linear<B> {
    /// `x: [batch, seq, in]` -> `[batch, seq, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        // One [batch*seq, in] x [in, out] gemm rather than `batch` small ones.
        let x = x.reshape([batch * seq, d_in]);
        let y = linear_matmul(x, self.weight.val(), WeightLayout::InOut, self.precision);
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze_dim::<2>(0),
            None => y,
        };
        y.reshape([batch, seq, self.out_features()])
    }

    /// Each layer's [`Linear::forward`] of the same `x` (a layer's q, k and
    /// v projections; gate and up), with `x` prepared once for all the
    /// products where their arithmetic prepares it
    /// ([`linear_matmul_shared`]). Layers of differing precisions run one
    /// at a time.
    pub fn forward_shared<const N: usize>(
        layers: [&Self; N],
        x: Tensor<B, 3>,
    ) -> [Tensor<B, 3>; N] {
        let precision = layers[0].precision;
        if layers.iter().any(|l| l.precision != precision) {
            return layers.map(|l| l.forward(x.clone()));
        }
        let [batch, seq, d_in] = x.dims();
        let x = x.reshape([batch * seq, d_in]);
        let weights = layers.map(|l| l.weight.val());
        let ys = linear_matmul_shared(x, weights, WeightLayout::InOut, precision);
        let mut ys = ys.into_iter();
        layers.map(|l| {
            let y = ys.next().expect("one product per layer");
            let y = match &l.bias {
                Some(bias) => y + bias.val().unsqueeze_dim::<2>(0),
                None => y,
            };
            y.reshape([batch, seq, l.out_features()])
        })
    }
}

/// `y = x / sqrt(mean(x^2) + eps) * weight` over the last axis, in f32 as
/// in transformers' LlamaRMSNorm.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }
}

impl<B: ModelBackend> RmsNorm<B> {
    /// `x: [batch, seq, hidden]` -> `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        rms_norm(x, self.weight.val(), self.eps as f32)
    }
}
