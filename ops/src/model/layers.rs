//! The two building blocks with weights: a linear map and RMSNorm.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::ModelBackend;
use crate::kernels::matmul::{
    Activations, Results, inference_weight, linear_matmul_as, linear_matmul_shared_as,
};
use crate::kernels::{
    Precision, WeightLayout, attention_product, rms_norm, rms_norm_products, sum_rms_norm_products,
    swiglu_product,
};

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
    /// How inference carries the activations into bf16 operands (a
    /// training step rounds them once whatever this says).
    pub activations: Activations,
}

impl<B: Backend> Linear<B> {
    /// `weight: [in, out]`, `bias: [out]`.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            precision: Precision::F32,
            activations: Activations::TwoParts,
        }
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }
}

impl<B: ModelBackend> Linear<B> {
    /// Holds the weight as this layer's inference products read it
    /// ([`inference_weight`]: rounded once where they round it), so that
    /// no forward rounds it again. For a layer that only runs inference.
    pub fn hold_inference_weight(&mut self) {
        let (precision, activations) = (self.precision, self.activations);
        self.weight = self
            .weight
            .clone()
            .map(|w| inference_weight(w, precision, activations));
    }

    /// `x: [batch, seq, in]` -> `[batch, seq, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        // One [batch*seq, in] x [in, out] gemm rather than `batch` small ones.
        let x = x.reshape([batch * seq, d_in]);
        let y = linear_matmul_as(
            x,
            self.weight.val(),
            WeightLayout::InOut,
            self.precision,
            self.activations,
        );
        self.finish(y, batch, seq)
    }

    /// Each layer's [`Linear::forward`] of the same input (a layer's q, k
    /// and v projections; gate and up), prepared once for all the products
    /// where their arithmetic prepares it ([`linear_matmul_shared`]), and
    /// written so by its RMSNorm where it has one still to apply
    /// ([`ProductInput::Normalized`]), which also sums a residual add still
    /// to take ([`ProductInput::SumNormalized`]). The results are written
    /// as `results` says: rounded ones (where the products round their
    /// operands once, see [`Results`]) are for a caller that reads them
    /// only to compute in f32, and take no bias. Layers of differing
    /// arithmetic run one at a time, with f32 results.
    pub fn forward_shared<const N: usize>(
        layers: [&Self; N],
        input: ProductInput<'_, B>,
        results: Results,
    ) -> [Tensor<B, 3>; N] {
        let (precision, activations) = (layers[0].precision, layers[0].activations);
        if layers
            .iter()
            .any(|l| l.precision != precision || l.activations != activations)
        {
            let x = input.into_tensor();
            return layers.map(|l| l.forward(x.clone()));
        }
        // A bias would be added in the result's dtype: Burn's add reads
        // its right operand as the left's dtype, unchecked.
        let results = if layers.iter().any(|l| l.bias.is_some()) {
            Results::F32
        } else {
            results
        };
        let [batch, seq, d_in] = input.dims();
        let weights = layers.map(|l| l.weight.val());
        let ys = match input {
            ProductInput::Tensor(x) => linear_matmul_shared_as(
                x.reshape([batch * seq, d_in]),
                weights,
                WeightLayout::InOut,
                precision,
                activations,
                results,
            ),
            ProductInput::Normalized(norm, x) => rms_norm_products(
                x.reshape([batch * seq, d_in]),
                norm.weight.val(),
                norm.eps as f32,
                weights,
                WeightLayout::InOut,
                precision,
                activations,
                results,
            ),
            ProductInput::SumNormalized {
                norm,
                x,
                delta,
                sum,
            } => {
                // The stream as it is, not its rows: under autodiff the
                // sum is then the norm's parent, whose backward sums the
                // stream's gradient (`kernels::product_inputs`).
                let (summed, ys) = sum_rms_norm_products(
                    x,
                    delta,
                    norm.weight.val(),
                    norm.eps as f32,
                    weights,
                    WeightLayout::InOut,
                    precision,
                    activations,
                    results,
                );
                *sum = Some(summed);
                ys
            }
        };
        let mut ys = ys.into_iter();
        layers.map(|l| l.finish(ys.next().expect("one product per layer"), batch, seq))
    }

    /// `forward(silu(gate) * up)`, the SwiGLU written as this layer's
    /// product reads it ([`swiglu_product`]): `gate`, `up`
    /// `[batch, seq, in]`.
    pub fn forward_swiglu(&self, gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, d_in] = gate.dims();
        let y = swiglu_product(
            gate.reshape([batch * seq, d_in]),
            up.reshape([batch * seq, d_in]),
            self.weight.val(),
            WeightLayout::InOut,
            self.precision,
            self.activations,
        );
        self.finish(y, batch, seq)
    }

    /// `forward` of the causal attention of `q`, `k` and `v` (in
    /// `attention`, see [`crate::kernels::attention`]) as `[batch, seq,
    /// heads * d]`, the attention's output written as this layer's product
    /// reads it ([`attention_product`]).
    pub fn forward_attention(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        attention: Precision,
    ) -> Tensor<B, 3> {
        let [batch, seq, _, _] = q.dims();
        let y = attention_product(
            q,
            k,
            v,
            attention,
            self.weight.val(),
            WeightLayout::InOut,
            self.precision,
            self.activations,
        );
        self.finish(y, batch, seq)
    }

    /// The product `y: [batch * seq, out]` plus the bias, as
    /// `[batch, seq, out]`.
    fn finish(&self, y: Tensor<B, 2>, batch: usize, seq: usize) -> Tensor<B, 3> {
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze_dim::<2>(0),
            None => y,
        };
        y.reshape([batch, seq, self.out_features()])
    }
}

/// What a layer's products read: a tensor, or one that an RMSNorm has
/// still to normalize, so that the norm writes its result as the products
/// read it ([`rms_norm_products`]: rounded, or in two parts, where they
/// round their operands) rather than in f32 for a pass of its own to
/// prepare. The norm's result is then never a tensor of its own: a caller
/// that wants it (a capture) passes [`ProductInput::Tensor`].
pub enum ProductInput<'a, B: Backend> {
    Tensor(Tensor<B, 3>),
    Normalized(&'a RmsNorm<B>, Tensor<B, 3>),
    /// The norm of a residual add `x + delta` still to sum: the norm sums
    /// it as it reads it ([`sum_rms_norm_products`]), and the sum, the
    /// residual stream's next value, lands in `sum` once the products ran.
    SumNormalized {
        norm: &'a RmsNorm<B>,
        x: Tensor<B, 3>,
        delta: Tensor<B, 3>,
        sum: &'a mut Option<Tensor<B, 3>>,
    },
}

impl<B: ModelBackend> ProductInput<'_, B> {
    /// `[batch, seq, width]` of what the products read.
    pub fn dims(&self) -> [usize; 3] {
        match self {
            ProductInput::Tensor(x)
            | ProductInput::Normalized(_, x)
            | ProductInput::SumNormalized { x, .. } => x.dims(),
        }
    }

    /// What the products read, as a tensor of its own (the sum, if any,
    /// put where it goes).
    pub fn into_tensor(self) -> Tensor<B, 3> {
        match self {
            ProductInput::Tensor(x) => x,
            ProductInput::Normalized(norm, x) => norm.forward(x),
            ProductInput::SumNormalized {
                norm,
                x,
                delta,
                sum,
            } => {
                let summed = x + delta;
                *sum = Some(summed.clone());
                norm.forward(summed)
            }
        }
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
