//! What the CubeCL KD kernels ([`super::kd_cube`], [`super::kd_sparse_cube`])
//! share: their constants, the losses' comptime codes, and how a kernel over
//! rows of logits is launched and its per-row losses summed.

use super::cube_common::{empty_f32, floor_pow2, sum_to_first, vector_width};
use super::kd::KdLoss;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::cast;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Most units per cube the kernel asks for.
pub(super) const MAX_UNITS: u32 = 256;
/// The running max before any element: finite, so that `exp(LOWEST - m)`
/// is 0 and `LOWEST - LOWEST` is 0 where `-inf - -inf` would be NaN.
pub(super) const LOWEST: f32 = -3.0e38;

// Losses, as comptime codes.
pub(super) const FORWARD: u32 = 0;
pub(super) const REVERSE: u32 = 1;
pub(super) const JSD: u32 = 2;

/// The loss's comptime code and its JSD beta (0.5, unused, otherwise).
pub(super) fn loss_code(loss: KdLoss) -> (u32, f32) {
    match loss {
        KdLoss::ForwardKl => (FORWARD, 0.5),
        KdLoss::ReverseKl => (REVERSE, 0.5),
        KdLoss::Jsd { beta } => (JSD, beta),
    }
}

/// How a row kernel over `[rows, vocab]` logits is launched: a cube's x
/// units across a row's vectors of `width` elements, its y units over rows
/// (several rows per cube only when the vocabulary is smaller than the
/// cube), the cubes on a 2-D grid.
pub(super) struct RowLayout {
    pub width: usize,
    pub vocab_vectors: usize,
    pub count: CubeCount,
    pub dim: CubeDim,
}

impl RowLayout {
    /// `None` when there is nothing to launch (no rows, or an empty
    /// vocabulary). Panics when the rows exceed the device's grid.
    pub(super) fn new<R: CubeRuntime>(
        client: &ComputeClient<R>,
        dtype: DType,
        rows: usize,
        vocab: usize,
        what: &str,
    ) -> Option<Self> {
        if rows == 0 || vocab == 0 {
            return None;
        }
        let hardware = &client.properties().hardware;
        let width = vector_width(client, dtype, vocab);
        let vocab_vectors = vocab / width;
        let cube_x = (vocab_vectors as u32)
            .next_power_of_two()
            .min(floor_pow2(hardware.max_cube_dim.0))
            .min(cube_units(client));
        let cube_y = floor_pow2((cube_units(client) / cube_x).min(hardware.max_cube_dim.1))
            .min((rows as u32).next_power_of_two());
        let cubes = rows.div_ceil(cube_y as usize) as u32;
        let grid_x = cubes.min(hardware.max_cube_count.0);
        let grid_y = cubes.div_ceil(grid_x);
        let max = hardware.max_cube_count;
        assert!(
            grid_y <= max.1,
            "{what} of [{rows}, {vocab}] exceeds the device's grid {max:?}"
        );
        Some(Self {
            width,
            vocab_vectors,
            count: CubeCount::Static(grid_x, grid_y, 1),
            dim: CubeDim::new_2d(cube_x, cube_y),
        })
    }

    /// log2 of the cube's x and y sizes, the kernels' comptime levels.
    pub(super) fn levels_x(&self) -> u32 {
        self.dim.x.trailing_zeros()
    }

    pub(super) fn levels_y(&self) -> u32 {
        self.dim.y.trailing_zeros()
    }
}

/// Units per cube the row kernels use: a power of two, at most
/// [`MAX_UNITS`].
fn cube_units<R: CubeRuntime>(client: &ComputeClient<R>) -> u32 {
    floor_pow2(
        client
            .properties()
            .hardware
            .max_units_per_cube
            .min(MAX_UNITS),
    )
}

/// The sum of the first `live_rows` per-row losses, as a `[1]` tensor.
pub(super) fn sum_row_losses<R: CubeRuntime>(
    client: &ComputeClient<R>,
    row_loss: CubeTensor<R>,
    live_rows: usize,
) -> CubeTensor<R> {
    let total = empty_f32(&row_loss, Shape::new([1]));
    let hardware = &client.properties().hardware;
    let cube = cube_units(client).min(floor_pow2(hardware.max_cube_dim.0));
    sum_to_first::launch::<R>(
        client,
        CubeCount::new_single(),
        CubeDim::new_1d(cube),
        row_loss.into_tensor_arg(),
        total.clone().into_tensor_arg(),
        live_rows as u32,
        false,
        cube.trailing_zeros(),
    );
    total
}

pub(super) fn to_f32<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.dtype == DType::F32 {
        t
    } else {
        cast(t, DType::F32)
    }
}
