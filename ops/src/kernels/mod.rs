//! Custom kernels. Each is a backend extension with a CubeCL kernel for the
//! CubeCL backends (features `wgpu`, `cuda`) and a rayon twin for the CPU
//! backend, both checked against the float64 oracles in [`reference`].
//!
//! - [`adamw`]: the AdamW update of a parameter in one pass (on the CubeCL
//!   backends one launch for up to 16 parameters, `adamw_cube`), and the
//!   gradients' sum of squares for the global norm (`norm_cube`: one pass,
//!   one launch for up to 64 gradients).
//! - [`attention`]: causal grouped-query attention, forward and backward
//!   (`attention_flex` on the CPU; `attention_cube` and
//!   `attention_cube_backward` on the CubeCL backends; under bf16 on CUDA,
//!   `attention_tiles_cube` and `attention_tiles_cube_backward`, their
//!   products as tensor-core tiles from `mma_tiles_cube`, which also
//!   emulates the tiles for the tests on lavapipe; [`cuda_source`], in a
//!   build with `cuda` and `wgpu`, makes their CUDA C++ without a GPU).
//! - [`matmul`]: the model's matrix products in f32, or with bf16 operands
//!   (AMX tiles on the CPU, `matmul_cube` on the CubeCL backends, whose
//!   training products keep their rounded operands for the backward and
//!   whose inference product sums its two-part activations in one product,
//!   `matmul_parts_cube`).
//! - [`rows`]: RMSNorm, rotary embedding and SwiGLU, fused, forward and
//!   backward (`rows_flex` on the CPU, `rows_cube` on the CubeCL backends).
//! - [`product_inputs`]: RMSNorm, SwiGLU and attention writing their
//!   result as the products after them read it (on the CubeCL backends in
//!   bf16, `product_inputs_cube`: rounded, or in two parts), not in f32 to
//!   be rounded by a pass of its own.
//! - [`importance`]: the width statistics and block importance reductions.
//! - [`kd`]: the fused knowledge-distillation loss and its gradient, against
//!   a full teacher distribution or a sparse (top-K) one.
//! - [`linear_kd`]: the student's head and the KD loss in chunks of rows,
//!   never holding the whole `[rows, vocab]` logits (composed of the KD and
//!   matrix-product ops, so every backend has it).
//! - [`bandwidth`]: timings of the CPU twin against the machine's memory
//!   bandwidth, for `distillery bench importance`.

pub mod adamw;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod adamw_cube;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_cpu;
#[cfg(target_arch = "x86_64")]
mod amx_pack;
pub mod attention;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod attention_cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod attention_cube_backward;
mod attention_flex;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod attention_tiles_cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod attention_tiles_cube_backward;
pub mod bandwidth;
mod cpu_dispatch;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube_common;
#[cfg(all(feature = "cuda", feature = "wgpu"))]
mod cuda_capture;
#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub mod cuda_source;
mod fast_math;
pub mod importance;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod importance_cube;
mod importance_flex;
pub mod kd;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod kd_cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod kd_cube_common;
mod kd_flex;
mod kd_flex_common;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod kd_sparse_cube;
mod kd_sparse_flex;
pub mod linear_kd;
pub mod matmul;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod matmul_cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod matmul_parts_cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod mma_tiles_cube;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod norm_cube;
pub mod product_inputs;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod product_inputs_cube;
pub mod reference;
pub mod rows;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod rows_cube;
mod rows_flex;

pub use adamw::{AdamWOps, AdamWStep, ParamUpdate, Updated};
pub use attention::{AttentionOps, causal_attention, causal_attention_in};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use attention_cube::TENSOR_CORES;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use attention_tiles_cube::{TilePlan, causal_attention_tiles, tile_plan, tile_plan_within};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use attention_tiles_cube_backward::{
    BackwardTilePlan, causal_attention_tiles_backward, tile_plan_backward,
    tile_plan_backward_within,
};
pub use importance::{
    Aggregation, BlockDistance, ChannelStats, ImportanceOps, batch_aggregate,
    channel_stats_accumulate, cosine_distance_accumulate,
};
pub use importance_flex::{channel_sums_host, cosine_distance_sum_host};
pub use kd::{KdLoss, KdOps, KdSpec, SparseTeacher, kd_loss, kd_loss_sparse};
pub use kd_flex::scratch_rows as kd_cpu_scratch_rows;
pub use linear_kd::{LinearKd, LinearKdOps, TeacherRows, linear_kd_loss};
pub use matmul::{
    Activations, MatmulOps, Precision, Results, Wanted, WeightLayout, linear_matmul,
    linear_matmul_as, linear_matmul_shared, linear_matmul_shared_as,
};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use matmul_cube::{rounded_product, rounded_product_backward};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use matmul_parts_cube::{activation_parts, parts_product, two_part_product};
pub use product_inputs::{
    ProductInputOps, attention_product, rms_norm_products, sum_rms_norm_products, swiglu_product,
};
pub use rows::{RowOps, rms_norm, rope, rope_pair, swiglu};

/// Whether CubeCL autotunes the matrix products and reductions of the GPU
/// backends in this build: the `cuda` feature turns Burn's `autotune` on
/// (for every CubeCL backend compiled in), the wgpu-only build leaves it
/// off.
pub const AUTOTUNED: bool = cfg!(feature = "cuda");

/// A tensor's primitive, for a backend op's arguments.
fn float<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::Tensor<B, D>,
) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

/// A backend op's result as a tensor of rank `D`.
fn tensor<B: burn::tensor::backend::Backend, const D: usize>(
    t: burn::tensor::ops::FloatTensor<B>,
) -> burn::tensor::Tensor<B, D> {
    burn::tensor::Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t))
}
