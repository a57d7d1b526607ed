//! The global gradient norm's square as CubeCL kernels
//! ([`super::AdamWOps::sum_of_squares`] on every `CubeBackend<R, ..>`).
//!
//! The composition of tensor ops squares each gradient into a new buffer,
//! sums it (one or two launches) and adds the sum to a running total: about
//! four launches and three passes over memory per parameter. Here one
//! launch per tensor reads it once and writes one partial sum per cube into
//! a shared buffer, at the tensor's offset, and one more launch sums the
//! partials: one pass over the gradients and one launch per parameter plus
//! one.

use super::cube_common::{
    empty_f32, f32_contiguous, lane_sum, strided_grid, sum_to_first, tree_sum_scalars,
    units_per_cube, vector_width,
};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Units per cube (a power of two).
const UNITS: u32 = 256;
/// Most cubes per tensor; their units loop over the rest.
const MAX_CUBES: u32 = 1024;
/// Units of the cube that sums the partials (a power of two).
const TOTAL_UNITS: u32 = 256;

/// `partials[offset + cube] = sum of x^2` over the vectors this cube's
/// units visit (a grid-strided loop).
#[cube(launch)]
fn square_partials<N: Size>(
    x: &Tensor<Vector<f32, N>>,
    partials: &mut Tensor<f32>,
    vectors: u32,
    offset: u32,
    #[comptime] levels: u32,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    while i < vectors {
        let v = x[i as usize];
        acc += v * v;
        i += stride;
    }
    let mut smem = SharedMemory::<f32>::new(comptime!((1u32 << levels) as usize));
    smem[UNIT_POS_X as usize] = lane_sum(acc);
    sync_cube();
    tree_sum_scalars(&mut smem, UNIT_POS_X, 0, 1, true, levels);
    if UNIT_POS_X == 0 {
        partials[(offset + CUBE_POS_X) as usize] = smem[0];
    }
}

/// See [`super::AdamWOps::sum_of_squares`].
pub(super) fn sum_of_squares<R: CubeRuntime>(tensors: Vec<CubeTensor<R>>) -> CubeTensor<R> {
    let first = tensors
        .first()
        .expect("the sum of squares of no tensor")
        .clone();
    let client = first.client.clone();
    // Each tensor's vector width and grid, and its partials' offset.
    let tensors: Vec<_> = tensors
        .into_iter()
        .map(f32_contiguous)
        .filter(|t| t.shape().num_elements() > 0)
        .collect();
    let plans: Vec<(usize, u32, u32)> = tensors
        .iter()
        .map(|t| {
            let n = t.shape().num_elements();
            let width = vector_width(&client, DType::F32, n);
            let (cubes, cube) = strided_grid(&client, n / width, UNITS, MAX_CUBES);
            (width, cubes, cube)
        })
        .collect();
    let count: u32 = plans.iter().map(|&(_, cubes, _)| cubes).sum();
    let total = empty_f32(&first, Shape::new([1]));
    let partials = empty_f32(&first, Shape::new([count.max(1) as usize]));
    let mut offset = 0u32;
    for (t, (width, cubes, cube)) in tensors.into_iter().zip(plans) {
        let vectors = t.shape().num_elements() / width;
        square_partials::launch::<R>(
            &client,
            CubeCount::new_1d(cubes),
            CubeDim::new_1d(cube),
            width,
            t.into_tensor_arg(),
            partials.clone().into_tensor_arg(),
            u32::try_from(vectors).expect("a tensor of over 2^32 vectors"),
            offset,
            cube.trailing_zeros(),
        );
        offset += cubes;
    }
    let cube = units_per_cube(&client, TOTAL_UNITS);
    sum_to_first::launch::<R>(
        &client,
        CubeCount::new_1d(1),
        CubeDim::new_1d(cube),
        partials.into_tensor_arg(),
        total.clone().into_tensor_arg(),
        count,
        false,
        cube.trailing_zeros(),
    );
    total
}
