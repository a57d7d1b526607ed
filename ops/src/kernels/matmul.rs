//! The model's matrix products with a choice of arithmetic
//! ([`MatmulOps`]): f32 throughout, or bf16 operands with f32 accumulation
//! where the hardware has a fast path for them.
//!
//! Only the CPU backend has a bf16 path so far: Intel AMX tiles
//! (`kernels::amx`), taken when [`Precision::Bf16`] is asked for and the CPU
//! and kernel offer AMX; everywhere else, and under autodiff (training
//! computes its products in f32), the product is Burn's f32 `matmul`.

use burn::tensor::Tensor;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
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
    /// bf16 tiles with f32 sums, where the device has a fast path for them
    /// (AMX on the CPU); f32 elsewhere. Weights are rounded to bf16,
    /// activations carried as two bf16 parts (about 16 bits): SmolLM2-135M's
    /// logits then stay within 0.8e-2 of the largest f32 logit.
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

/// How a weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`: the product is `x w`.
    InOut,
    /// `[out, in]` (a tied embedding used as the head): the product is `x w^T`.
    OutIn,
}

pub trait MatmulOps: Backend {
    /// `x: [rows, in]` times the weight, `[rows, out]`.
    fn linear_matmul(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        layout: WeightLayout,
        precision: Precision,
    ) -> FloatTensor<Self> {
        let _ = precision;
        let weight = match layout {
            WeightLayout::InOut => weight,
            WeightLayout::OutIn => Self::float_transpose(weight),
        };
        Self::float_matmul(x, weight)
    }
}

/// `x [rows, in]` times `weight` (stored as `layout` says) in `precision`.
pub fn linear_matmul<B: MatmulOps>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    layout: WeightLayout,
    precision: Precision,
) -> Tensor<B, 2> {
    let inner = match layout {
        WeightLayout::InOut => weight.dims()[0],
        WeightLayout::OutIn => weight.dims()[1],
    };
    assert_eq!(
        x.dims()[1],
        inner,
        "matmul: inputs {:?} for a weight {:?} stored {layout:?}",
        x.dims(),
        weight.dims()
    );
    Tensor::from_primitive(TensorPrimitive::Float(B::linear_matmul(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        layout,
        precision,
    )))
}

/// Training runs its products in f32 (Burn's matmul and its backward).
impl<B: MatmulOps, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> MatmulOps
    for burn::backend::Autodiff<B, C>
{
}

/// The CubeCL backends compute in f32 for now.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<R, F, I, BT> MatmulOps for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
}

mod flex {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{DType, TensorData};

    impl MatmulOps for Flex {
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
            let weight = match layout {
                WeightLayout::InOut => weight,
                WeightLayout::OutIn => Flex::float_transpose(weight),
            };
            Flex::float_matmul(x, weight)
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

    #[cfg(target_arch = "x86_64")]
    fn amx_linear(x: FlexTensor, weight: FlexTensor, layout: WeightLayout) -> FlexTensor {
        use super::super::amx::gemm_bf16_packed;
        let dtype = x.dtype();
        let x = f32_matrix(x);
        let ((m, _), a) = view(&x);
        let packed = packed_weights::get(weight, layout);
        let mut out = vec![0.0f32; m * packed.n()];
        gemm_bf16_packed(m, a, &packed, &mut out);
        let out = FlexTensor::from_data(TensorData::new(out, [m, packed.n()]));
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
