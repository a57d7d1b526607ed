//! The global gradient norm's square as CubeCL kernels
//! ([`super::AdamWOps::sum_of_squares`] on every `CubeBackend<R, ..>`).
//!
//! The composition of tensor ops squares each gradient into a new buffer,
//! sums it (one or two launches) and adds the sum to a running total: about
//! four launches and three passes over memory per parameter. Here one
//! launch takes up to [`TENSORS_PER_LAUNCH`] tensors of one vector width
//! (a cube row per tensor), reads each once and writes one partial sum per
//! cube into a shared buffer; one more launch sums the partials. A model's
//! 272 gradients take about five launches and one pass over memory.

use super::cube_common::{
    empty_f32, f32_contiguous, group_by_width, items_per_launch, lane_sum, strided_grid,
    sum_to_first, tree_sum_scalars, units_per_cube,
};
use burn::tensor::{Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Units per cube (a power of two).
const UNITS: u32 = 256;
/// Most cubes per tensor; their units loop over the rest.
const MAX_CUBES: u32 = 1024;
/// Units of the cube that sums the partials (a power of two).
const TOTAL_UNITS: u32 = 256;
/// Most tensors one launch reads (one binding each), fewer where the device
/// binds fewer buffers. Each distinct count compiles its own kernel, so the
/// launches of one model reuse two or three.
const TENSORS_PER_LAUNCH: usize = 64;

/// `partials[offset + y * CUBE_COUNT_X + x] = sum of v^2` over the vectors
/// of tensor `y` that cube `x`'s units visit (a grid-strided loop;
/// `vectors[y]` is tensor `y`'s length in vectors).
#[cube(launch)]
fn square_partials<N: Size>(
    xs: &Sequence<Tensor<Vector<f32, N>>>,
    vectors: Sequence<u32>,
    partials: &mut Tensor<f32>,
    offset: u32,
    #[comptime] levels: u32,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    // The sequence is indexed at compile time: each tensor is a branch,
    // and every unit of a cube takes the same one.
    #[unroll]
    for t in 0..xs.len() {
        if CUBE_POS_Y == comptime!(t as u32) {
            let x = xs.index(t);
            let count = *vectors.index(t);
            let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
            while i < count {
                let v = x[i as usize];
                acc += v * v;
                i += stride;
            }
        }
    }
    let mut smem = SharedMemory::<f32>::new(comptime!((1u32 << levels) as usize));
    smem[UNIT_POS_X as usize] = lane_sum(acc);
    sync_cube();
    tree_sum_scalars(&mut smem, UNIT_POS_X, 0, 1, true, levels);
    if UNIT_POS_X == 0 {
        partials[(offset + CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize] = smem[0];
    }
}

/// One launch of [`square_partials`]: its tensors, vector width and grid.
struct Launch<R: CubeRuntime> {
    tensors: Vec<CubeTensor<R>>,
    width: usize,
    cubes: u32,
    cube: u32,
}

/// See [`super::AdamWOps::sum_of_squares`].
pub(super) fn sum_of_squares<R: CubeRuntime>(tensors: Vec<CubeTensor<R>>) -> CubeTensor<R> {
    let first = tensors
        .first()
        .expect("the sum of squares of no tensor")
        .clone();
    let client = first.client.clone();
    let tensors: Vec<_> = tensors
        .into_iter()
        .map(f32_contiguous)
        .filter(|t| t.shape().num_elements() > 0)
        .collect();
    // One binding per tensor, and the partials'.
    let per_launch = items_per_launch(&client, TENSORS_PER_LAUNCH, 1, 1);
    let launches: Vec<Launch<R>> =
        group_by_width(&client, tensors, |t| t.shape().num_elements(), per_launch)
            .into_iter()
            .map(|(width, tensors)| {
                let longest = tensors
                    .iter()
                    .map(|t| t.shape().num_elements() / width)
                    .max()
                    .unwrap_or(0);
                let (cubes, cube) = strided_grid(&client, longest, UNITS, MAX_CUBES);
                Launch {
                    tensors,
                    width,
                    cubes,
                    cube,
                }
            })
            .collect();
    let count: u32 = launches
        .iter()
        .map(|l| l.cubes * l.tensors.len() as u32)
        .sum();
    let total = empty_f32(&first, Shape::new([1]));
    let partials = empty_f32(&first, Shape::new([count.max(1) as usize]));
    let mut offset = 0u32;
    for launch in launches {
        let rows = launch.tensors.len() as u32;
        let mut xs = SequenceArg::new();
        let mut vectors = SequenceArg::new();
        for t in launch.tensors {
            let n = t.shape().num_elements() / launch.width;
            vectors.push(u32::try_from(n).expect("a tensor of over 2^32 vectors"));
            xs.push(t.into_tensor_arg());
        }
        square_partials::launch::<R>(
            &client,
            CubeCount::new_2d(launch.cubes, rows),
            CubeDim::new_1d(launch.cube),
            launch.width,
            xs,
            vectors,
            partials.clone().into_tensor_arg(),
            offset,
            launch.cube.trailing_zeros(),
        );
        offset += launch.cubes * rows;
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
