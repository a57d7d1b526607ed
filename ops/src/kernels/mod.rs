//! Custom kernels. Each is a backend extension with a CubeCL kernel for the
//! CubeCL backends (features `wgpu`, `cuda`) and a rayon twin for the CPU
//! backend, both checked against the float64 oracles in [`reference`].
//!
//! - [`importance`]: the width statistics and block importance reductions.
//! - [`kd`]: the fused knowledge-distillation loss and its gradient.
//! - [`bandwidth`]: timings of the CPU twin against the machine's memory
//!   bandwidth, for `distillery bench importance`.

pub mod bandwidth;
mod cpu_dispatch;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube_common;
pub mod importance;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod importance_cube;
mod importance_flex;
pub mod kd;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod kd_cube;
mod kd_flex;
pub mod reference;

pub use importance::{
    Aggregation, BlockDistance, ChannelStats, ImportanceOps, batch_aggregate,
    channel_stats_accumulate, cosine_distance_accumulate,
};
pub use importance_flex::{channel_sums_host, cosine_distance_sum_host};
pub use kd::{KdLoss, KdOps, KdSpec, kd_loss};
pub use kd_flex::scratch_rows as kd_cpu_scratch_rows;
