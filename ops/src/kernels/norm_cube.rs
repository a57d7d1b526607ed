//! The global gradient norm's square as CubeCL kernels
//! ([`super::AdamWOps::sum_of_squares`] on every `CubeBackend<R, ..>`).
//!
//! The composition of tensor ops squares each gradient into a new buffer,
//! sums it (one or two launches) and adds the sum to a running total: about
//! four launches and three passes over memory per parameter. Here one
//! launch takes up to [`TENSORS_PER_LAUNCH`] tensors of one vector width
//! (each its own run of cubes, as many as its length needs), reads each
//! once and writes one partial sum per cube into a shared buffer; one more
//! launch sums the partials: on CUDA, a model's 272 gradients take five
//! launches and the sum, and one pass over memory.

use super::cube_common::{
    CubeRuns, cube_grid, cube_runs, empty_f32, f32_contiguous, group_by_width, items_per_launch,
    lane_sum, sum_to_first, tree_sum_scalars, units_per_cube,
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

/// `partials[offset + c] = sum of v^2` over the vectors that cube `c`'s
/// units visit: cube `c` belongs to the tensor `t` whose cubes
/// `first_cube[t] .. first_cube[t] + cubes[t]` hold it, and its units walk
/// that tensor's `vectors[t]` vectors in a grid-strided loop.
#[cube(launch)]
fn square_partials<N: Size>(
    xs: &Sequence<Tensor<Vector<f32, N>>>,
    vectors: Sequence<u32>,
    first_cube: Sequence<u32>,
    cubes: Sequence<u32>,
    partials: &mut Tensor<f32>,
    offset: u32,
    total_cubes: u32,
    #[comptime] levels: u32,
) {
    let c = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    // The sequences are indexed at compile time: each tensor is a branch,
    // and every unit of a cube takes the same one.
    #[unroll]
    for t in 0..xs.len() {
        let first = *first_cube.index(t);
        let own = *cubes.index(t);
        if c >= first && c < first + own {
            let x = xs.index(t);
            let count = *vectors.index(t);
            let stride = own * CUBE_DIM_X;
            let mut i = (c - first) * CUBE_DIM_X + UNIT_POS_X;
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
    // The grid may round up past the launch's cubes.
    if UNIT_POS_X == 0 && c < total_cubes {
        partials[(offset + c) as usize] = smem[0];
    }
}

/// One launch of [`square_partials`]: its tensors, their lengths in
/// vectors of `width`, their cubes, and the units per cube.
struct Launch<R: CubeRuntime> {
    tensors: Vec<CubeTensor<R>>,
    vectors: Vec<u32>,
    width: usize,
    runs: CubeRuns,
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
                let cube = units_per_cube(&client, UNITS);
                let vectors: Vec<u32> = tensors
                    .iter()
                    .map(|t| {
                        let n = t.shape().num_elements() / width;
                        u32::try_from(n).expect("a tensor of over 2^32 vectors")
                    })
                    .collect();
                let runs = cube_runs(&client, &vectors, cube, MAX_CUBES);
                Launch {
                    tensors,
                    vectors,
                    width,
                    runs,
                    cube,
                }
            })
            .collect();
    let count: u32 = launches.iter().map(|l| l.runs.total).sum();
    let total = empty_f32(&first, Shape::new([1]));
    let partials = empty_f32(&first, Shape::new([count.max(1) as usize]));
    let mut offset = 0u32;
    for launch in launches {
        let total_cubes = launch.runs.total;
        square_partials::launch::<R>(
            &client,
            cube_grid(&client, total_cubes as usize, "the sum of squares"),
            CubeDim::new_1d(launch.cube),
            launch.width,
            launch
                .tensors
                .into_iter()
                .map(|t| t.into_tensor_arg())
                .collect(),
            launch.vectors.into_iter().collect(),
            launch.runs.first.into_iter().collect(),
            launch.runs.cubes.into_iter().collect(),
            partials.clone().into_tensor_arg(),
            offset,
            total_cubes,
            launch.cube.trailing_zeros(),
        );
        offset += total_cubes;
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
