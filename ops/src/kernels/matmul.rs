//! The model's matrix products with a choice of arithmetic
//! ([`MatmulOps`]): f32 throughout, or bf16 operands with f32 accumulation
//! where the hardware has a fast path for them.
//!
//! The bf16 paths: Intel AMX tiles on the CPU (`kernels::amx`), and the
//! CubeCL backends on a device with bf16 arithmetic (`matmul_cube`: CUDA's
//! tensor cores); everywhere else the product is Burn's f32 `matmul`
//! ([`MatmulOps::product_precision`] says which runs). Under autodiff a
//! bf16 product is an op of its own, whose backward runs in bf16 too
//! (`dx = dy w^T`, `dw = x^T dy`, every operand rounded once, as
//! mixed-precision training does: the backward reads the operands the
//! forward rounded, [`MatmulOps::trained_operand`]); an f32 one stays
//! Burn's matmul and its backward.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use serde::{Deserialize, Serialize};

/// The arithmetic of matrix products.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 operands and accumulation.
    #[default]
    F32,
    /// bf16 operands with f32 sums, where the device has a fast path for
    /// them (AMX on the CPU, tensor cores on CUDA); f32 elsewhere. Weights
    /// are rounded to bf16; in inference the activations are carried as two
    /// bf16 parts (about 16 bits), so that SmolLM2-135M's logits stay within
    /// 0.8e-2 of the largest f32 logit; in a training step every operand
    /// (activations and gradients too) is rounded once, as mixed-precision
    /// training does. Where the activations are rounded once, CUDA also
    /// writes the MLP's gate and up projections in bf16, as PyTorch's
    /// autocast does (SwiGLU still computes in f32).
    Bf16,
}

impl Precision {
    /// For `skip_serializing_if`: stage keys of recipes that leave the
    /// precision at its default stay what they were before it existed.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// The arithmetic a product asked for in `self` actually runs in on
    /// this machine's CPU.
    pub fn on_cpu(self) -> Precision {
        match self {
            Precision::Bf16 if bf16_on_cpu() => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

/// Whether this CPU runs bf16 products on a fast path.
pub fn bf16_on_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How an inference product carries its activations into the operands of
/// [`Precision::Bf16`] (where the device rounds them; nothing else reads
/// it). A training step rounds them once whatever this says.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Activations {
    /// In two bf16 parts, `x = hi + lo` (about 16 bits), whose products
    /// are summed: logits close to f32's, at twice the product's work.
    #[default]
    TwoParts,
    /// Rounded to bf16 once, as a training step rounds them (PyTorch's
    /// autocast does the same): half the work of two parts.
    Rounded,
}

impl Activations {
    /// For `skip_serializing_if`: stage keys of recipes that leave it at
    /// its default stay what they were before it existed.
    pub fn is_two_parts(&self) -> bool {
        *self == Activations::TwoParts
    }
}

/// The dtype a layer's products write their results in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Results {
    /// f32 (the input's dtype where the products run in f32).
    #[default]
    F32,
    /// Rounded to the operands' 16-bit dtype where the products round
    /// their operands once (a training step, and inference with
    /// [`Activations::Rounded`]) on a device whose products can write it
    /// (the CubeCL backends: bf16 on CUDA), as PyTorch's autocast writes
    /// them; f32 elsewhere, and in inference's two parts, which keep
    /// f32's precision. For results that only an op computing in f32
    /// reads (gate and up, for SwiGLU): half the bytes written and read
    /// back, and, in a training step, half the memory kept for the
    /// backward, whose gradients come back in that dtype too.
    Rounded,
}

/// How a weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`: the product is `x w`.
    InOut,
    /// `[out, in]` (a tied embedding used as the head): the product is `x w^T`.
    OutIn,
}

pub trait MatmulOps: Backend {
    /// The arithmetic a product asked for in `precision` runs in on
    /// `device`: `precision` where the device has a fast path for it, f32
    /// otherwise.
    fn product_precision(device: &Self::Device, precision: Precision) -> Precision {
        let _ = (device, precision);
        Precision::F32
    }

    /// The 16-bit dtype the operands of [`Precision::Bf16`] products are
    /// rounded to on `device`, where they run reduced: bf16 (f16 only as
    /// the CubeCL backends' test stand-in, see `matmul_cube`).
    fn reduced_dtype(device: &Self::Device) -> Option<DType> {
        (Self::product_precision(device, Precision::Bf16) == Precision::Bf16).then_some(DType::BF16)
    }

    /// `x: [rows, in]` times the weight, `[rows, out]`.
    fn linear_matmul(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        layout: WeightLayout,
        precision: Precision,
    ) -> FloatTensor<Self> {
        let _ = precision;
        f32_product::<Self>(x, weight, layout)
    }

    /// `x` times each of `weights` (all stored as `layout`): one input's
    /// products with several weights (a layer's q, k and v projections;
    /// gate and up), each what [`MatmulOps::linear_matmul`] gives. Where
    /// the products prepare their input (CUDA in bf16: its two parts in
    /// inference, its rounding in training), it is prepared once for all
    /// of them.
    ///
    /// The results are written as `results` says where a training step's
    /// products run (under autodiff); inference's, which carry `x` in two
    /// parts, write f32.
    fn linear_matmul_shared(
        x: FloatTensor<Self>,
        weights: Vec<FloatTensor<Self>>,
        layout: WeightLayout,
        precision: Precision,
        results: Results,
    ) -> Vec<FloatTensor<Self>> {
        let _ = results;
        weights
            .into_iter()
            .map(|w| Self::linear_matmul(x.clone(), w, layout, precision))
            .collect()
    }

    /// An operand of training products in `precision`, rounded once, so
    /// that every product that reads it (a forward and its backward, or
    /// each chunk of rows against one head) reads it without rounding it
    /// again: a bf16 copy where the device's products round to bf16
    /// (CUDA), the tensor itself elsewhere (AMX packs its operands for
    /// each product, rounding as it packs).
    fn trained_operand(t: FloatTensor<Self>, precision: Precision) -> FloatTensor<Self> {
        let _ = precision;
        t
    }

    /// The dtype a training product in `precision` rounds its result's
    /// gradient to in its backward, where it rounds it to one of its own
    /// (bf16 on CUDA): an op that writes that gradient may write it so,
    /// in place of the cast the product would make of it. `None` where
    /// the backward reads the gradient as it comes (AMX rounds as it
    /// packs).
    fn trained_gradient(device: &Self::Device, precision: Precision) -> Option<DType> {
        let _ = (device, precision);
        None
    }

    /// The same product in a training step, whose arithmetic may differ
    /// from inference's: bf16 on AMX rounds `x` once, as mixed-precision
    /// training does, where inference carries it in two parts. `x` and the
    /// weight may come from [`MatmulOps::trained_operand`]; the result is
    /// in f32 where the product rounds its operands (rounded as
    /// [`Results`] says, where this backend writes it so), else in `x`'s
    /// dtype.
    fn linear_matmul_trained(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        layout: WeightLayout,
        precision: Precision,
        results: Results,
    ) -> FloatTensor<Self> {
        let _ = results;
        Self::linear_matmul(x, weight, layout, precision)
    }

    /// The gradients of [`MatmulOps::linear_matmul_trained`] given the
    /// output's, `dy: [rows, out]`: `(dx, dweight)` (the latter in the
    /// weight's own layout), each computed only when `want` says so. `x`
    /// and the weight are the forward's (rounded ones included); the
    /// gradients are in f32 where the products round their operands, else
    /// each in its operand's dtype.
    fn linear_matmul_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        layout: WeightLayout,
        precision: Precision,
        dy: FloatTensor<Self>,
        want: Wanted,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let _ = precision;
        f32_backward::<Self>(x, weight, layout, dy, want)
    }
}

/// How products asked for in `precision` run on `device`, in words for
/// logs and benches (said, so that nobody mistakes an f32 run for bf16).
pub fn arithmetic<B: MatmulOps>(device: &B::Device, precision: Precision) -> &'static str {
    match (precision, B::product_precision(device, precision)) {
        (Precision::F32, _) => "f32",
        (_, Precision::Bf16) if B::reduced_dtype(device) == Some(DType::F16) => {
            "f16 operands with f32 sums (DISTILLERY_BF16_AS_F16: a test stand-in for bf16)"
        }
        (_, Precision::Bf16) => "bf16 operands with f32 sums",
        (_, Precision::F32) => "f32 (this device has no bf16 fast path)",
    }
}

/// Which gradients of a product a backward pass needs.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub x: bool,
    pub weight: bool,
}

/// `x w` (or `x w^T`) with the backend's own f32 matmul.
pub(super) fn f32_product<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    layout: WeightLayout,
) -> FloatTensor<B> {
    let weight = match layout {
        WeightLayout::InOut => weight,
        WeightLayout::OutIn => B::float_transpose(weight),
    };
    B::float_matmul(x, weight)
}

/// The gradients of [`f32_product`]: for `y = x w`, `dx = dy w^T` and
/// `dw = x^T dy`; for `y = x w^T`, `dx = dy w` and `dw = dy^T x`.
pub(super) fn f32_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    layout: WeightLayout,
    dy: FloatTensor<B>,
    want: Wanted,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let t = B::float_transpose;
    let dx = want.x.then(|| match layout {
        WeightLayout::InOut => B::float_matmul(dy.clone(), t(weight.clone())),
        WeightLayout::OutIn => B::float_matmul(dy.clone(), weight.clone()),
    });
    let dw = want.weight.then(|| match layout {
        WeightLayout::InOut => B::float_matmul(t(x), dy),
        WeightLayout::OutIn => B::float_matmul(t(dy), x),
    });
    (dx, dw)
}

/// Panics unless rows of `width` fit the weight's input size.
pub(super) fn assert_fits<B: Backend>(width: usize, weight: &Tensor<B, 2>, layout: WeightLayout) {
    let inner = match layout {
        WeightLayout::InOut => weight.dims()[0],
        WeightLayout::OutIn => weight.dims()[1],
    };
    assert_eq!(
        width,
        inner,
        "matmul: inputs of width {width} for a weight {:?} stored {layout:?}",
        weight.dims()
    );
}

/// `x [rows, in]` times `weight` (stored as `layout` says) in `precision`.
pub fn linear_matmul<B: MatmulOps>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    layout: WeightLayout,
    precision: Precision,
) -> Tensor<B, 2> {
    assert_fits(x.dims()[1], &weight, layout);
    Tensor::from_primitive(TensorPrimitive::Float(B::linear_matmul(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        layout,
        precision,
    )))
}

/// `x [rows, in]` times each of `weights` (all stored as `layout`), in
/// `precision`: one [`linear_matmul`] per weight, with `x` prepared once
/// for all of them ([`MatmulOps::linear_matmul_shared`]).
pub fn linear_matmul_shared<B: MatmulOps, const N: usize>(
    x: Tensor<B, 2>,
    weights: [Tensor<B, 2>; N],
    layout: WeightLayout,
    precision: Precision,
) -> [Tensor<B, 2>; N] {
    for w in &weights {
        assert_fits(x.dims()[1], w, layout);
    }
    let weights = weights.map(|w| w.into_primitive().tensor()).into();
    let products = B::linear_matmul_shared(
        x.into_primitive().tensor(),
        weights,
        layout,
        precision,
        Results::F32,
    );
    let products: Vec<Tensor<B, 2>> = products
        .into_iter()
        .map(|y| Tensor::from_primitive(TensorPrimitive::Float(y)))
        .collect();
    products
        .try_into()
        .unwrap_or_else(|p: Vec<_>| panic!("{N} products asked for, {} made", p.len()))
}

/// [`linear_matmul`] in inference with the activations carried as
/// `activations` says: in two parts (that function), or rounded once
/// ([`MatmulOps::trained_operand`], then the product a training step runs,
/// [`MatmulOps::linear_matmul_trained`], without a graph on a backend
/// without autodiff).
pub fn linear_matmul_as<B: MatmulOps>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
) -> Tensor<B, 2> {
    let [y] = linear_matmul_shared_as(x, [weight], layout, precision, activations, Results::F32);
    y
}

/// [`linear_matmul_shared`] in inference with the activations carried as
/// `activations` says (see [`linear_matmul_as`]); rounded once for all the
/// products, which then write their results as `results` says (in a
/// training step too).
pub fn linear_matmul_shared_as<B: MatmulOps, const N: usize>(
    x: Tensor<B, 2>,
    weights: [Tensor<B, 2>; N],
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
    results: Results,
) -> [Tensor<B, 2>; N] {
    for w in &weights {
        assert_fits(x.dims()[1], w, layout);
    }
    let dtype = x.dtype();
    let weights = weights.map(|w| w.into_primitive().tensor()).into();
    let ys = shared_products_as::<B>(
        x.into_primitive().tensor(),
        weights,
        layout,
        precision,
        activations,
        results,
    );
    let ys: Vec<Tensor<B, 2>> = ys
        .into_iter()
        .map(|y| {
            let y = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y));
            match results {
                // Rounded where they were written so, else in x's dtype.
                Results::Rounded if y.dtype() != DType::F32 => y,
                _ => y.cast(dtype),
            }
        })
        .collect();
    ys.try_into()
        .unwrap_or_else(|p: Vec<_>| panic!("{N} products asked for, {} made", p.len()))
}

/// `weight` as inference products in `precision` with `activations` read
/// it, for a model that only runs inference and may hold it so (a
/// distillation's teacher): rounded once where those products round it
/// ([`Activations::Rounded`]: [`MatmulOps::trained_operand`], a bf16 copy
/// on CUDA, which each product then reads as it is), else itself (the two
/// parts' products stack the weight from f32; f32 products read it as it
/// is). The products' results are the same either way, bit for bit.
pub fn inference_weight<B: MatmulOps>(
    weight: Tensor<B, 2>,
    precision: Precision,
    activations: Activations,
) -> Tensor<B, 2> {
    match activations {
        Activations::TwoParts => weight,
        Activations::Rounded => Tensor::from_primitive(TensorPrimitive::Float(B::trained_operand(
            weight.into_primitive().tensor(),
            precision,
        ))),
    }
}

/// One input's inference products with `weights`, the activations carried
/// as `activations` says: [`MatmulOps::linear_matmul_shared`] (two parts),
/// or rounded once for all of them and each product a training step's
/// ([`MatmulOps::linear_matmul_trained`]); their results written as
/// `results` says where the products round once (under autodiff, always).
pub(super) fn shared_products_as<B: MatmulOps>(
    x: FloatTensor<B>,
    weights: Vec<FloatTensor<B>>,
    layout: WeightLayout,
    precision: Precision,
    activations: Activations,
    results: Results,
) -> Vec<FloatTensor<B>> {
    match activations {
        Activations::TwoParts => B::linear_matmul_shared(x, weights, layout, precision, results),
        Activations::Rounded => {
            let x = B::trained_operand(x, precision);
            weights
                .into_iter()
                .map(|w| B::linear_matmul_trained(x.clone(), w, layout, precision, results))
                .collect()
        }
    }
}

/// Under autodiff, an f32 product is Burn's own matmul and its backward
/// (as it always was); any other precision is one op whose forward and
/// backward are the inner backend's [`MatmulOps::linear_matmul_trained`]
/// and [`MatmulOps::linear_matmul_backward`].
pub(super) mod on_autodiff {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::tensor::TensorMetadata;

    #[derive(Debug)]
    struct LinearBackward {
        layout: WeightLayout,
        precision: Precision,
        /// The dtypes of `x` and the weight as the caller gave them, which
        /// their gradients take: the inner backend's are in f32 where its
        /// products round their operands.
        x_dtype: DType,
        weight_dtype: DType,
    }

    /// `t` in `dtype` (cast only where it is not).
    fn in_dtype<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
        if t.dtype() == dtype {
            t
        } else {
            B::float_cast(t, dtype.into())
        }
    }

    /// A training product's result `y` as its node holds it: rounded where
    /// `results` asked for that and the product wrote it so, else in
    /// `x_dtype`.
    fn result_in<B: Backend>(
        y: FloatTensor<B>,
        x_dtype: DType,
        results: Results,
    ) -> FloatTensor<B> {
        if results == Results::Rounded && y.dtype() != DType::F32 {
            y
        } else {
            in_dtype::<B>(y, x_dtype)
        }
    }

    impl<B: MatmulOps> Backward<B, 2> for LinearBackward {
        /// The product's operands as the forward read them
        /// ([`MatmulOps::trained_operand`]): `x` and the weight.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_w] = ops.parents;
            let dy = grads.consume::<B>(&ops.node);
            let (x, weight) = ops.state;
            let want = Wanted {
                x: node_x.is_some(),
                weight: node_w.is_some(),
            };
            let (dx, dw) =
                B::linear_matmul_backward(x, weight, self.layout, self.precision, dy, want);
            let dx = dx.map(|g| in_dtype::<B>(g, self.x_dtype));
            let dw = dw.map(|g| in_dtype::<B>(g, self.weight_dtype));
            for (node, grad) in [(node_x, dx), (node_w, dw)] {
                if let (Some(node), Some(grad)) = (node, grad) {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    impl<B: MatmulOps, C: CheckpointStrategy> MatmulOps for Autodiff<B, C> {
        fn product_precision(device: &Self::Device, precision: Precision) -> Precision {
            B::product_precision(device, precision)
        }

        fn reduced_dtype(device: &Self::Device) -> Option<DType> {
            B::reduced_dtype(device)
        }

        fn trained_gradient(device: &Self::Device, precision: Precision) -> Option<DType> {
            B::trained_gradient(device, precision)
        }

        fn linear_matmul(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            layout: WeightLayout,
            precision: Precision,
        ) -> FloatTensor<Self> {
            if precision == Precision::F32 {
                return f32_product::<Self>(x, weight, layout);
            }
            let rounded_x = B::trained_operand(x.primitive.clone(), precision);
            let x_dtype = x.primitive.dtype();
            product_node::<B, C>(
                &x,
                rounded_x,
                x_dtype,
                weight,
                layout,
                precision,
                Results::F32,
            )
        }

        fn linear_matmul_shared(
            x: FloatTensor<Self>,
            weights: Vec<FloatTensor<Self>>,
            layout: WeightLayout,
            precision: Precision,
            results: Results,
        ) -> Vec<FloatTensor<Self>> {
            if precision == Precision::F32 {
                return weights
                    .into_iter()
                    .map(|w| f32_product::<Self>(x.clone(), w, layout))
                    .collect();
            }
            // Rounded once for every product, and kept once (one buffer)
            // for all their backwards. Each product is its own node, so
            // `x`'s gradients from them are summed as any others, in
            // `x`'s dtype.
            let rounded_x = B::trained_operand(x.primitive.clone(), precision);
            let x_dtype = x.primitive.dtype();
            weights
                .into_iter()
                .map(|w| {
                    product_node::<B, C>(
                        &x,
                        rounded_x.clone(),
                        x_dtype,
                        w,
                        layout,
                        precision,
                        results,
                    )
                })
                .collect()
        }
    }

    /// One training product as a node of the graph, with `x` as the
    /// forward reads it (`rounded_x`, [`MatmulOps::trained_operand`]'s),
    /// whose gradient is in `x_dtype`: `x`'s own dtype, or f32 where `x`
    /// is the node of a row op that wrote its result rounded already
    /// (`kernels::product_inputs`). The result is in `x_dtype` too, or
    /// rounded where `results` asks for that and the inner backend writes
    /// it so; its gradient then comes back in that dtype.
    pub(in crate::kernels) fn product_node<B: MatmulOps, C: CheckpointStrategy>(
        x: &FloatTensor<Autodiff<B, C>>,
        rounded_x: FloatTensor<B>,
        x_dtype: DType,
        weight: FloatTensor<Autodiff<B, C>>,
        layout: WeightLayout,
        precision: Precision,
        results: Results,
    ) -> FloatTensor<Autodiff<B, C>> {
        let backward = LinearBackward {
            layout,
            precision,
            x_dtype,
            weight_dtype: weight.primitive.dtype(),
        };
        let prep = backward
            .prepare::<C>([x.node.clone(), weight.node.clone()])
            .compute_bound()
            .stateful();
        match prep {
            OpsKind::Tracked(prep) => {
                // Rounded once, for the forward and the backward.
                let weight = B::trained_operand(weight.primitive, precision);
                let y = B::linear_matmul_trained(
                    rounded_x.clone(),
                    weight.clone(),
                    layout,
                    precision,
                    results,
                );
                prep.finish((rounded_x, weight), result_in::<B>(y, x_dtype, results))
            }
            OpsKind::UnTracked(prep) => {
                let y = B::linear_matmul_trained(
                    rounded_x,
                    weight.primitive,
                    layout,
                    precision,
                    results,
                );
                prep.finish(result_in::<B>(y, x_dtype, results))
            }
        }
    }
}

mod flex {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{DType, TensorData};

    impl MatmulOps for Flex {
        fn product_precision(_: &Self::Device, precision: Precision) -> Precision {
            precision.on_cpu()
        }

        fn linear_matmul(
            x: FlexTensor,
            weight: FlexTensor,
            layout: WeightLayout,
            precision: Precision,
        ) -> FlexTensor {
            #[cfg(target_arch = "x86_64")]
            if precision.on_cpu() == Precision::Bf16 {
                return amx_linear(x, weight, layout);
            }
            f32_product::<Self>(x, weight, layout)
        }

        /// The result in f32 whatever `results` says: the CPU's products
        /// are not bound by the bytes of their results.
        fn linear_matmul_trained(
            x: FlexTensor,
            weight: FlexTensor,
            layout: WeightLayout,
            precision: Precision,
            _results: Results,
        ) -> FlexTensor {
            #[cfg(target_arch = "x86_64")]
            if precision.on_cpu() == Precision::Bf16 {
                return trained::forward(x, weight, layout);
            }
            f32_product::<Self>(x, weight, layout)
        }

        fn linear_matmul_backward(
            x: FlexTensor,
            weight: FlexTensor,
            layout: WeightLayout,
            precision: Precision,
            dy: FlexTensor,
            want: Wanted,
        ) -> (Option<FlexTensor>, Option<FlexTensor>) {
            #[cfg(target_arch = "x86_64")]
            if precision.on_cpu() == Precision::Bf16 {
                return trained::backward(x, weight, layout, dy, want);
            }
            f32_backward::<Self>(x, weight, layout, dy, want)
        }
    }

    /// A training step's products on AMX: every operand rounded once to
    /// bf16, f32 sums; packed afresh for each product (the weights change
    /// every step, and each is used once in each direction).
    #[cfg(target_arch = "x86_64")]
    mod trained {
        use super::super::super::amx::{self, MatRef, PackedA, PackedB, Rounding};
        use super::*;

        /// `a b` for strided views `a: [m, k]`, `b: [k, n]`.
        fn product(a: MatRef, b: MatRef, m: usize, k: usize, n: usize) -> FlexTensor {
            let a = PackedA::new(a, m, k, Rounding::Once);
            let b = PackedB::new(b, k, n);
            FlexTensor::from_data(TensorData::new(amx::product(&a, &b), [m, n]))
        }

        fn transposed(v: MatRef) -> MatRef {
            MatRef {
                data: v.data,
                row: v.col,
                col: v.row,
            }
        }

        /// See [`MatmulOps::linear_matmul_trained`].
        pub fn forward(x: FlexTensor, weight: FlexTensor, layout: WeightLayout) -> FlexTensor {
            let dtype = x.dtype();
            let (x, weight) = (f32_matrix(x), f32_matrix(weight));
            let ((m, k), xv) = view(&x);
            let ((rows, cols), wv) = view(&weight);
            let out = match layout {
                WeightLayout::InOut => product(xv, wv, m, k, cols),
                WeightLayout::OutIn => product(xv, transposed(wv), m, k, rows),
            };
            like(out, dtype)
        }

        /// See [`MatmulOps::linear_matmul_backward`] (and [`f32_backward`]
        /// for the formulas).
        pub fn backward(
            x: FlexTensor,
            weight: FlexTensor,
            layout: WeightLayout,
            dy: FlexTensor,
            want: Wanted,
        ) -> (Option<FlexTensor>, Option<FlexTensor>) {
            let (x_dtype, w_dtype) = (x.dtype(), weight.dtype());
            let (x, weight, dy) = (f32_matrix(x), f32_matrix(weight), f32_matrix(dy));
            let ((m, d_in), xv) = view(&x);
            let (_, wv) = view(&weight);
            let ((_, d_out), dyv) = view(&dy);
            let dx = want.x.then(|| {
                let w = match layout {
                    WeightLayout::InOut => transposed(wv),
                    WeightLayout::OutIn => wv,
                };
                like(product(dyv, w, m, d_out, d_in), x_dtype)
            });
            let dw = want.weight.then(|| {
                let dw = match layout {
                    WeightLayout::InOut => product(transposed(xv), dyv, d_in, m, d_out),
                    WeightLayout::OutIn => product(transposed(dyv), xv, d_out, m, d_in),
                };
                like(dw, w_dtype)
            });
            (dx, dw)
        }
    }

    /// The tensor's elements as a strided f32 matrix (a copy only when it is
    /// not f32 or its strides are negative).
    fn f32_matrix(t: FlexTensor) -> FlexTensor {
        let positive = t.layout().has_positive_strides();
        if t.dtype() == DType::F32 && positive {
            t
        } else {
            super::super::importance_flex::host_f32(t)
        }
    }

    /// The product in inference's arithmetic: the weights packed once,
    /// the activations split in two bf16 parts (see `kernels::amx`).
    #[cfg(target_arch = "x86_64")]
    fn amx_linear(x: FlexTensor, weight: FlexTensor, layout: WeightLayout) -> FlexTensor {
        use super::super::amx::{PackedA, Rounding, product};
        let dtype = x.dtype();
        let x = f32_matrix(x);
        let ((m, _), a) = view(&x);
        let packed = packed_weights::get(weight, layout);
        let a = PackedA::new(a, m, packed.k(), Rounding::Split);
        let out = TensorData::new(product(&a, &packed), [m, packed.n()]);
        like(FlexTensor::from_data(out), dtype)
    }

    /// A product's result in the dtype of the tensor it stands for.
    #[cfg(target_arch = "x86_64")]
    fn like(out: FlexTensor, dtype: DType) -> FlexTensor {
        if dtype == DType::F32 {
            out
        } else {
            Flex::float_cast(out, dtype.into())
        }
    }

    /// A matrix tensor as `((rows, cols), strided view)`.
    #[cfg(target_arch = "x86_64")]
    fn view(t: &FlexTensor) -> ((usize, usize), super::super::amx::MatRef<'_>) {
        let (rows, cols, row, col) = t.layout().as_2d_strides().expect("a matrix");
        let data = &t.storage::<f32>()[t.layout().start_offset()..];
        let view = super::super::amx::MatRef {
            data,
            row: row as usize,
            col: col as usize,
        };
        ((rows, cols), view)
    }

    /// Weights packed for the AMX tiles, once per weight tensor.
    ///
    /// An entry holds a reference to the weight's buffer, so the buffer
    /// cannot be freed (and its address reused by another tensor) while the
    /// entry lives, nor written in place (Flex copies a shared buffer before
    /// writing). Entries whose weight nobody else holds any more (its model
    /// was dropped) are removed at the next insertion.
    #[cfg(target_arch = "x86_64")]
    mod packed_weights {
        use super::super::super::amx::PackedB;
        use super::*;
        use std::sync::{Arc, Mutex};

        struct Entry {
            weight: FlexTensor,
            layout: WeightLayout,
            packed: Arc<PackedB>,
        }

        static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

        fn same(a: &FlexTensor, b: &FlexTensor) -> bool {
            std::ptr::eq(a.bytes().as_ptr(), b.bytes().as_ptr())
                && a.layout() == b.layout()
                && a.dtype() == b.dtype()
        }

        /// `weight` (stored as `layout`) packed as the product's `B`.
        pub fn get(weight: FlexTensor, layout: WeightLayout) -> Arc<PackedB> {
            {
                let cache = CACHE.lock().expect("the packed-weight cache");
                if let Some(e) = cache
                    .iter()
                    .find(|e| e.layout == layout && same(&e.weight, &weight))
                {
                    return e.packed.clone();
                }
            }
            let matrix = f32_matrix(weight.clone());
            let ((rows, cols), w) = view(&matrix);
            let packed = Arc::new(match layout {
                WeightLayout::InOut => PackedB::new(w, rows, cols),
                // B = w^T: swap the strides.
                WeightLayout::OutIn => PackedB::new(
                    super::super::super::amx::MatRef {
                        data: w.data,
                        row: w.col,
                        col: w.row,
                    },
                    cols,
                    rows,
                ),
            });
            let mut cache = CACHE.lock().expect("the packed-weight cache");
            cache.retain(|e| !e.weight.is_unique());
            cache.push(Entry {
                weight,
                layout,
                packed: packed.clone(),
            });
            packed
        }
    }
}
