//! The operands of the inference product in 16-bit parts, laid out so that
//! one matrix product sums both parts ([`super::matmul_cube`]).
//!
//! Inference carries the activations in two parts, `x = hi + lo` with
//! `hi = E(x)` and `lo = E(x - hi)` (`E` bf16 on CUDA), and
//! `x w = hi w + lo w`. Side by side along the inner dimension,
//! `[hi | lo]` (`[rows, 2k]`) times `[w; w]` (`[2k, n]`) is that sum in one
//! product with f32 accumulation, where the composition of tensor ops took
//! four launches to make the parts (a cast, a cast back, a difference, a
//! cast), two products and their sum.
//!
//! One kernel writes both: each row of its f32 input, `len` long, goes out
//! twice side by side in `E`, the second copy either the first again (the
//! weight) or what the first left out (the activations' `lo`).

use super::cube_common::{cube_grid, f32_contiguous, strided_grid, vector_width};
use super::matmul::WeightLayout;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::ops::{permute, reshape};
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Units per cube, and most cubes per launch (the units loop over the rest).
const UNITS: u32 = 256;
const MAX_CUBES: u32 = 8192;

/// `out[r, c] = E(x[r, c])` and `out[r, len + c]` = the same again, or with
/// `split`, `E(x[r, c] - f32(out[r, c]))`, for `x: [rows, len]` read as
/// `vectors` vectors of `N` (`row_vectors` per row) and `out: [rows, 2 len]`.
#[cube(launch)]
fn side_by_side<E: Float, N: Size>(
    x: &Tensor<Vector<f32, N>>,
    out: &mut Tensor<Vector<E, N>>,
    vectors: u32,
    row_vectors: u32,
    #[comptime] split: bool,
    #[define(E)] _dtype: StorageType,
) {
    let stride = CUBE_COUNT_Y * CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X;
    while i < vectors {
        let r = i / row_vectors;
        let c = i % row_vectors;
        let v = x[i as usize];
        let first = Vector::<E, N>::cast_from(v);
        let at = (r * 2 * row_vectors + c) as usize;
        out[at] = first;
        if comptime!(split) {
            out[at + row_vectors as usize] =
                Vector::<E, N>::cast_from(v - Vector::<f32, N>::cast_from(first));
        } else {
            out[at + row_vectors as usize] = first;
        }
        i += stride;
    }
}

/// `x: [rows, len]` (any float dtype) twice side by side in `dtype`:
/// `[rows, 2 len]`, the second copy `lo` when `split`.
fn twice<R: CubeRuntime>(
    x: CubeTensor<R>,
    rows: usize,
    len: usize,
    split: bool,
    dtype: DType,
) -> CubeTensor<R> {
    let x = f32_contiguous(x);
    let client = x.client.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([rows, 2 * len]),
        dtype,
    );
    let width = vector_width(&client, DType::F32, len);
    let vectors = rows * len / width;
    if vectors == 0 {
        return out;
    }
    let (cubes, cube) = strided_grid(&client, vectors, UNITS, MAX_CUBES);
    side_by_side::launch::<R>(
        &client,
        cube_grid(&client, cubes as usize, "the product's parts"),
        CubeDim::new_1d(cube),
        width,
        x.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        u32::try_from(vectors).expect("an operand of over 2^32 vectors"),
        (len / width) as u32,
        split,
        dtype.into(),
    );
    out
}

/// `x [rows, k]` times the weight (stored as `layout` says) with the
/// activations in two parts of `dtype` (bf16 in use; any 16-bit float
/// dtype the device computes in) and the weight rounded to it once, summed
/// in f32: the f32 result `[rows, n]`.
pub fn two_part_product<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    layout: WeightLayout,
    dtype: DType,
) -> CubeTensor<R> {
    parts_product(activation_parts(x, dtype), weight, layout, dtype)
}

/// The activations `x [rows, k]` as the two parts `[hi | lo]` of `dtype`
/// (`[rows, 2k]`), for one or more [`parts_product`]s.
pub fn activation_parts<R: CubeRuntime>(x: CubeTensor<R>, dtype: DType) -> CubeTensor<R> {
    let [rows, k]: [usize; 2] = x.shape().dims();
    twice(x, rows, k, true, dtype)
}

/// [`two_part_product`] from the activations' parts ([`activation_parts`],
/// in the same `dtype`).
pub fn parts_product<R: CubeRuntime>(
    parts: CubeTensor<R>,
    weight: CubeTensor<R>,
    layout: WeightLayout,
    dtype: DType,
) -> CubeTensor<R> {
    let [rows, two_k]: [usize; 2] = parts.shape().dims();
    let k = two_k / 2;
    let [w_rows, w_cols]: [usize; 2] = weight.shape().dims();
    let inner = match layout {
        WeightLayout::InOut => w_rows,
        WeightLayout::OutIn => w_cols,
    };
    assert_eq!(
        inner, k,
        "two-part product: inputs [{rows}, {k}] for a weight [{w_rows}, {w_cols}] stored {layout:?}"
    );
    assert_eq!(
        parts.dtype, dtype,
        "two-part product: parts in another dtype"
    );
    // `[w; w]` as the right operand: stacked along the inner dimension in
    // the weight's own storage order (both copies of a stored row side by
    // side), so the kernel reads and writes in order; for `[out, in]`
    // storage the product reads the stack's transpose in place.
    let right = match layout {
        // One stored "row" of k n elements: `[w | w]` is `[w; w]`.
        WeightLayout::InOut => reshape(
            twice(weight, 1, k * w_cols, false, dtype),
            Shape::new([2 * k, w_cols]),
        ),
        WeightLayout::OutIn => permute(twice(weight, w_rows, k, false, dtype), &[1, 0]),
    };
    matmul(parts, right, None, MatmulStrategy::default(), DType::F32)
        .unwrap_or_else(|e| panic!("a {dtype:?} product with an f32 result cannot run here: {e:?}"))
}

/// [`side_by_side`] writing `dtype` with vectors of `width`, as CUDA C++
/// for `arch` (`kernels::cuda_source`): on CUDA it runs in bf16, which
/// lavapipe cannot.
#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub(super) fn side_by_side_cuda_source(
    dtype: DType,
    width: usize,
    split: bool,
    arch: super::cuda_capture::CudaArch,
) -> Result<super::cuda_capture::CudaKernelSource, String> {
    use super::cuda_capture::{Capture, compile_for_cuda};
    use side_by_side::{_E, _N, E, N, SideBySide};
    let part: StorageType = dtype.into();
    let mut at = Capture::new(CubeDim::new_1d(UNITS), |scope| {
        scope.register_type::<DynamicScalar<_E>>(part);
        scope.register_size::<DynamicSize<_N>>(width);
    });
    let (rows, len) = (4usize, 64usize);
    let x = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, len]);
    let out = at.tensor::<Tensor<Vector<E, N>>>(&[rows, 2 * len]);
    let kernel = SideBySide::<cubecl::wgpu::WgpuRuntime>::new(
        at.settings.clone(),
        at.client.clone(),
        x,
        out,
        // vectors, row_vectors: scalars have no compilation argument.
        (),
        (),
        width,
        split,
        part,
    );
    let label = format!("side_by_side {dtype:?} width{width} split{split}");
    compile_for_cuda(label, kernel, arch)
}
