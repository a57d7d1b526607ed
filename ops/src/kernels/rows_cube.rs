//! RMSNorm, rotary embedding and SwiGLU as CubeCL kernels: [`RowOps`] for
//! every `CubeBackend<R, ..>` (Burn's `Wgpu` and `Cuda` without `fusion`).
//!
//! Composed of tensor ops (`rows::composite`), each is several launches,
//! each a pass over memory with a buffer of its own (with the gradient
//! norm's kernel, they took a distillation step from 7,682 launches to
//! 2,906; docs/BENCHMARKS.md). Here each is one pass:
//!
//! - `rms_norm_rows`: one cube per row holds the row in registers, sums its
//!   squares across the cube, and writes `x r w`; or of `x + delta` (a
//!   residual add, for the products after it), writing the sum as well.
//! - the backward, three launches: `rms_norm_backward_rows` (a cube per row:
//!   both row sums, `dx`, and the row's `r` for the next pass),
//!   `weighted_column_partials` (a unit per column vector and chunk of rows:
//!   the chunk's `sum g x r`) and `sum_partials` (a unit per column vector:
//!   the chunks' sum, `dw`). `dw` is a sum over rows, which no cube holds
//!   whole; the chunks keep the work parallel without float atomics, which
//!   wgpu lacks.
//! - `rope_vectors`, `swiglu_vectors`, `swiglu_backward_vectors`:
//!   elementwise over vectors, in a grid-strided loop.
//!
//! Inputs of any float dtype are cast to f32 (statistics and arithmetic in
//! f32, as the composition and transformers do), results cast back to the
//! input's dtype; SwiGLU reads its inputs in their own dtype (the
//! products' rounded results under bf16, `kernels::product_inputs`) and
//! writes its gradients in it.
//!
//! Portability (DESIGN.md, Compute): the barriers of the row sums sit in
//! straight-line code (the tree sum is unrolled at compile time) that
//! every unit of a cube reaches; no plane ops.

use super::cube_common::{
    cube_grid, empty_f32, f32_contiguous, lane_sum, strided_grid, to_dtype, tree_sum_scalars,
    units_per_cube, vector_width,
};
use super::rows::RowOps;
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;

/// Fewest and most units per cube of the row kernels: a row of `v` vectors
/// gets the power of two in between nearest above `v`, so short rows do not
/// leave most of a cube idle and long ones loop a few times per unit.
const ROW_CUBE_MIN: u32 = 32;
const ROW_CUBE_MAX: u32 = 256;
/// Rows per chunk of RMSNorm's weight gradient.
const DW_CHUNK_ROWS: u32 = 64;
/// Units per cube, and most cubes per launch, of the elementwise kernels
/// (their units loop over the rest).
const ELEMENT_UNITS: u32 = 256;
const MAX_CUBES: u32 = 4096;

/// This cube's index in a [`cube_grid`].
#[cube]
fn cube_index() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

/// `y[row] = x[row] r w`, `r = 1 / sqrt(mean(x[row]^2) + eps)`, a cube per
/// row of `row_vectors` vectors, each unit holding `per_unit` of them;
/// written in `E` ([`write_as`]: f32 as computed, a product's rounded
/// operand, or its two parts). With `summed`, the row is `x + delta`
/// (a residual add), which is also written to `sum`; without, `delta` and
/// `sum` are not read or written.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_rows<E: Float, N: Size>(
    x: &Tensor<Vector<f32, N>>,
    delta: &Tensor<Vector<f32, N>>,
    w: &Tensor<Vector<f32, N>>,
    sum: &mut Tensor<Vector<f32, N>>,
    y: &mut Tensor<Vector<E, N>>,
    rows: u32,
    hidden: f32,
    eps: f32,
    #[comptime] row_vectors: u32,
    #[comptime] per_unit: usize,
    #[comptime] levels: u32,
    #[comptime] parts: bool,
    #[comptime] summed: bool,
    #[define(E)] _dtype: StorageType,
) {
    let row = cube_index();
    // Every unit reaches the barriers; only a live cube's units load and
    // store.
    let live = row < rows;
    let base = row * row_vectors;
    let zero = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut values = Array::<Vector<f32, N>>::new(per_unit);
    let mut squares = zero;
    #[unroll]
    for k in 0..per_unit {
        let i = UNIT_POS_X + (k as u32) * CUBE_DIM_X;
        values[k] = zero;
        if live && i < row_vectors {
            let at = (base + i) as usize;
            let mut v = x[at];
            if comptime!(summed) {
                v += delta[at];
                sum[at] = v;
            }
            values[k] = v;
            squares += v * v;
        }
    }
    let mut smem = SharedMemory::<f32>::new(comptime!((1u32 << levels) as usize));
    smem[UNIT_POS_X as usize] = lane_sum(squares);
    sync_cube();
    tree_sum_scalars(&mut smem, UNIT_POS_X, 0, 1, true, levels);
    let r = f32::new(1.0) / f32::sqrt(smem[0] / hidden + eps);
    let r_v = Vector::<f32, N>::empty().fill(r);
    let out_row = comptime!(if parts { 2 * row_vectors } else { row_vectors });
    #[unroll]
    for k in 0..per_unit {
        let i = UNIT_POS_X + (k as u32) * CUBE_DIM_X;
        if live && i < row_vectors {
            let at = row * out_row + i;
            write_as::<E, N>(y, at, row_vectors, values[k] * r_v * w[i as usize], parts);
        }
    }
}

/// `v` into `y[at]` in `E`; with `parts`, also what that rounding left out
/// into `y[at + offset]`, `E(v - E(v))`: the two-part operand of the
/// inference product (`matmul_parts_cube`), whose first part alone is the
/// training product's rounded operand. With `E` f32 and no parts, `v` as
/// it is.
#[cube]
fn write_as<E: Float, N: Size>(
    y: &mut Tensor<Vector<E, N>>,
    at: u32,
    offset: u32,
    v: Vector<f32, N>,
    #[comptime] parts: bool,
) {
    let first = Vector::<E, N>::cast_from(v);
    y[at as usize] = first;
    if comptime!(parts) {
        y[(at + offset) as usize] =
            Vector::<E, N>::cast_from(v - Vector::<f32, N>::cast_from(first));
    }
}

/// RMSNorm's `dx` for a row, a cube per row as in the forward:
/// `dx = r w g - x r^3 / n sum(x w g)`, plus `residual`'s row where
/// `summed` (the gradient `x` has from elsewhere; not read otherwise);
/// writes the row's `r` to `inv_rms` for the weight gradient's pass.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_backward_rows<N: Size>(
    x: &Tensor<Vector<f32, N>>,
    w: &Tensor<Vector<f32, N>>,
    g: &Tensor<Vector<f32, N>>,
    residual: &Tensor<Vector<f32, N>>,
    dx: &mut Tensor<Vector<f32, N>>,
    inv_rms: &mut Tensor<f32>,
    rows: u32,
    hidden: f32,
    eps: f32,
    #[comptime] row_vectors: u32,
    #[comptime] per_unit: usize,
    #[comptime] levels: u32,
    #[comptime] summed: bool,
) {
    let row = cube_index();
    let live = row < rows;
    let base = row * row_vectors;
    let zero = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut xs = Array::<Vector<f32, N>>::new(per_unit);
    let mut gws = Array::<Vector<f32, N>>::new(per_unit);
    let mut squares = zero;
    let mut dots = zero;
    #[unroll]
    for k in 0..per_unit {
        let i = UNIT_POS_X + (k as u32) * CUBE_DIM_X;
        xs[k] = zero;
        gws[k] = zero;
        if live && i < row_vectors {
            let v = x[(base + i) as usize];
            let gw = g[(base + i) as usize] * w[i as usize];
            xs[k] = v;
            gws[k] = gw;
            squares += v * v;
            dots += v * gw;
        }
    }
    let cube = comptime!(1u32 << levels);
    let mut smem = SharedMemory::<f32>::new(comptime!((2 * cube) as usize));
    smem[UNIT_POS_X as usize] = lane_sum(squares);
    smem[(cube + UNIT_POS_X) as usize] = lane_sum(dots);
    sync_cube();
    tree_sum_scalars(&mut smem, UNIT_POS_X, 0, 1, true, levels);
    tree_sum_scalars(&mut smem, UNIT_POS_X, cube, 1, true, levels);
    let r = f32::new(1.0) / f32::sqrt(smem[0] / hidden + eps);
    let c = r * r * r / hidden * smem[cube as usize];
    let r_v = Vector::<f32, N>::empty().fill(r);
    let c_v = Vector::<f32, N>::empty().fill(c);
    #[unroll]
    for k in 0..per_unit {
        let i = UNIT_POS_X + (k as u32) * CUBE_DIM_X;
        if live && i < row_vectors {
            let at = (base + i) as usize;
            let d = gws[k] * r_v - xs[k] * c_v;
            if comptime!(summed) {
                dx[at] = d + residual[at];
            } else {
                dx[at] = d;
            }
        }
    }
    if live && UNIT_POS_X == 0 {
        inv_rms[row as usize] = r;
    }
}

/// `partials[chunk, cv] = sum over the chunk's rows of g x r`: a unit per
/// (column vector, chunk), consecutive units on consecutive columns.
#[cube(launch)]
fn weighted_column_partials<N: Size>(
    x: &Tensor<Vector<f32, N>>,
    g: &Tensor<Vector<f32, N>>,
    inv_rms: &Tensor<f32>,
    partials: &mut Tensor<Vector<f32, N>>,
    rows: u32,
    row_vectors: u32,
    chunk_rows: u32,
) {
    let cv = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    let chunk = CUBE_POS_Y;
    if cv >= row_vectors {
        terminate!();
    }
    let begin = chunk * chunk_rows;
    let end = min(begin + chunk_rows, rows);
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    let mut row = begin;
    while row < end {
        let at = (row * row_vectors + cv) as usize;
        let r = Vector::<f32, N>::empty().fill(inv_rms[row as usize]);
        acc += g[at] * x[at] * r;
        row += 1;
    }
    partials[(chunk * row_vectors + cv) as usize] = acc;
}

/// `out[cv] = sum_k partials[k, cv]`: a unit per column vector.
#[cube(launch)]
fn sum_partials<N: Size>(
    partials: &Tensor<Vector<f32, N>>,
    out: &mut Tensor<Vector<f32, N>>,
    chunks: u32,
    row_vectors: u32,
) {
    let cv = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    if cv >= row_vectors {
        terminate!();
    }
    let mut acc = Vector::<f32, N>::empty().fill(f32::new(0.0));
    for k in 0..chunks {
        acc += partials[(k * row_vectors + cv) as usize];
    }
    out[cv as usize] = acc;
}

/// Vector `i` of `x: [batch, seq, heads, d]` rotated: `x cos +
/// swap_halves(x) sin` (`x cos - swap_halves(x) sin` with `inverse`, the
/// backward), the tables `[seq, d]`; all read as vectors, `d_vectors` per
/// head, the vector width dividing `d / 2` so that a vector's partner is a
/// whole vector. Computed in f32, written in `E`; where `saturate`, values
/// past `E`'s finite range become its largest of their sign.
#[cube]
#[allow(clippy::too_many_arguments)]
fn rotated<E: Float, N: Size>(
    x: &Tensor<Vector<f32, N>>,
    cos: &Tensor<Vector<f32, N>>,
    sin: &Tensor<Vector<f32, N>>,
    i: u32,
    seq: u32,
    heads: u32,
    d_vectors: u32,
    #[comptime] inverse: bool,
    #[comptime] saturate: bool,
) -> Vector<E, N> {
    let half = d_vectors / 2;
    let j = i % d_vectors;
    let pos = (i / d_vectors / heads) % seq;
    let mut partner = i + half;
    if j >= half {
        partner = i - half;
    }
    let t = (pos * d_vectors + j) as usize;
    let mut y = x[i as usize] * cos[t];
    if comptime!(inverse) {
        y -= x[partner as usize] * sin[t];
    } else {
        y += x[partner as usize] * sin[t];
    }
    if comptime!(saturate) {
        // Bounds filled from scalars: CUDA C++ has no negation of a vector.
        let largest = f32::cast_from(E::max_value());
        let low = Vector::<f32, N>::empty().fill(-largest);
        let high = Vector::<f32, N>::empty().fill(largest);
        y = clamp(y, low, high);
    }
    Vector::<E, N>::cast_from(y)
}

/// [`rotated`] over all of `x` (`vectors` vectors) into `y`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_vectors<E: Float, N: Size>(
    x: &Tensor<Vector<f32, N>>,
    cos: &Tensor<Vector<f32, N>>,
    sin: &Tensor<Vector<f32, N>>,
    y: &mut Tensor<Vector<E, N>>,
    vectors: u32,
    seq: u32,
    heads: u32,
    d_vectors: u32,
    #[comptime] inverse: bool,
    #[comptime] saturate: bool,
    #[define(E)] _dtype: StorageType,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    while i < vectors {
        y[i as usize] = rotated::<E, N>(x, cos, sin, i, seq, heads, d_vectors, inverse, saturate);
        i += stride;
    }
}

/// [`rotated`] over the queries `q` (`q_vectors` vectors, `q_heads` per
/// position) and the keys `k` (the other `vectors - q_vectors`, `k_heads`
/// per position) of one attention in one launch, into `q_out` and `k_out`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_pair_vectors<E: Float, N: Size>(
    q: &Tensor<Vector<f32, N>>,
    k: &Tensor<Vector<f32, N>>,
    cos: &Tensor<Vector<f32, N>>,
    sin: &Tensor<Vector<f32, N>>,
    q_out: &mut Tensor<Vector<E, N>>,
    k_out: &mut Tensor<Vector<E, N>>,
    q_vectors: u32,
    vectors: u32,
    seq: u32,
    q_heads: u32,
    k_heads: u32,
    d_vectors: u32,
    #[comptime] saturate: bool,
    #[define(E)] _dtype: StorageType,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    while i < vectors {
        if i < q_vectors {
            q_out[i as usize] =
                rotated::<E, N>(q, cos, sin, i, seq, q_heads, d_vectors, false, saturate);
        } else {
            let j = i - q_vectors;
            k_out[j as usize] =
                rotated::<E, N>(k, cos, sin, j, seq, k_heads, d_vectors, false, saturate);
        }
        i += stride;
    }
}

#[cube]
fn sigmoid(x: f32) -> f32 {
    f32::new(1.0) / (f32::new(1.0) + f32::exp(-x))
}

/// `y = silu(gate) up`, `gate` and `up` read in `G` (f32, or the products'
/// rounded results, `kernels::product_inputs`) and computed in f32, written
/// in `E` as [`write_as`] writes; with `parts`, rows of `row_vectors`
/// vectors go out as `[hi | lo]`, rows of `2 row_vectors`.
#[cube(launch)]
fn swiglu_vectors<G: Float, E: Float, N: Size>(
    gate: &Tensor<Vector<G, N>>,
    up: &Tensor<Vector<G, N>>,
    y: &mut Tensor<Vector<E, N>>,
    vectors: u32,
    row_vectors: u32,
    #[comptime] parts: bool,
    #[define(G, E)] _types: [StorageType; 2],
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    while i < vectors {
        let at = i as usize;
        let g = Vector::<f32, N>::cast_from(gate[at]);
        let u = Vector::<f32, N>::cast_from(up[at]);
        let mut s = Vector::<f32, N>::empty();
        #[unroll]
        for l in 0..N::value() {
            s[l] = sigmoid(g[l]);
        }
        let mut out = i;
        if comptime!(parts) {
            out = i + (i / row_vectors) * row_vectors;
        }
        write_as::<E, N>(y, out, row_vectors, g * s * u, parts);
        i += stride;
    }
}

/// `dgate = dy up silu'(gate)`, `dup = dy silu(gate)`, with
/// `silu'(x) = s (1 + x (1 - s))`, `s = sigmoid(x)`: `gate` and `up` read
/// in `G` and both gradients written in it (a training step's products
/// round them to that dtype: `dy` of their backward), computed in f32.
#[cube(launch)]
fn swiglu_backward_vectors<G: Float, N: Size>(
    gate: &Tensor<Vector<G, N>>,
    up: &Tensor<Vector<G, N>>,
    dy: &Tensor<Vector<f32, N>>,
    dgate: &mut Tensor<Vector<G, N>>,
    dup: &mut Tensor<Vector<G, N>>,
    vectors: u32,
    #[define(G)] _dtype: StorageType,
) {
    let stride = CUBE_COUNT_X * CUBE_DIM_X;
    let mut i = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    while i < vectors {
        let at = i as usize;
        let g = Vector::<f32, N>::cast_from(gate[at]);
        let u = Vector::<f32, N>::cast_from(up[at]);
        let grad = dy[at];
        let mut s = Vector::<f32, N>::empty();
        let mut ds = Vector::<f32, N>::empty();
        #[unroll]
        for l in 0..N::value() {
            let sl = sigmoid(g[l]);
            s[l] = sl;
            ds[l] = sl * (f32::new(1.0) + g[l] * (f32::new(1.0) - sl));
        }
        dgate[at] = Vector::<G, N>::cast_from(grad * u * ds);
        dup[at] = Vector::<G, N>::cast_from(grad * g * s);
        i += stride;
    }
}

/// The cube size and per-unit count of a row kernel over rows of
/// `row_vectors` vectors: `(cube, per_unit, levels)`.
fn row_cube<R: CubeRuntime>(client: &ComputeClient<R>, row_vectors: usize) -> (u32, usize, u32) {
    let wanted = (row_vectors as u32)
        .next_power_of_two()
        .clamp(ROW_CUBE_MIN, ROW_CUBE_MAX);
    let cube = units_per_cube(client, wanted);
    (
        cube,
        row_vectors.div_ceil(cube as usize),
        cube.trailing_zeros(),
    )
}

/// Grid and cube of an elementwise kernel over `vectors` vectors.
fn element_grid<R: CubeRuntime>(client: &ComputeClient<R>, vectors: usize) -> (CubeCount, CubeDim) {
    let (cubes, cube) = strided_grid(client, vectors, ELEMENT_UNITS, MAX_CUBES);
    (CubeCount::new_1d(cubes), CubeDim::new_1d(cube))
}

/// The vector count of a launch as the kernels' `u32` index.
fn as_index(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("{what}: {n} elements exceed a u32 index"))
}

fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f32) -> CubeTensor<R> {
    let dtype = x.dtype;
    to_dtype(rms_norm_as(x, weight, eps, DType::F32, false), dtype)
}

/// RMSNorm of `x: [rows, hidden]` written in `dtype`: `[rows, hidden]`, or
/// with `parts` the two-part operand of the inference product,
/// `[rows, 2 hidden]` (`matmul_parts_cube`). Computed in f32 as
/// [`rms_norm`], then rounded as a cast of its result would round it.
pub(super) fn rms_norm_as<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f32,
    dtype: DType,
    parts: bool,
) -> CubeTensor<R> {
    norm_rows(x, None, weight, eps, dtype, parts).1
}

/// [`rms_norm_as`] of the sum `x + delta` (both `[rows, hidden]`, a
/// residual add), in the same pass: `(x + delta` in f32, its norm as
/// [`rms_norm_as`] writes it`)`. The sum is the f32 add's, bit for bit.
pub(super) fn sum_rms_norm_as<R: CubeRuntime>(
    x: CubeTensor<R>,
    delta: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f32,
    dtype: DType,
    parts: bool,
) -> (CubeTensor<R>, CubeTensor<R>) {
    assert_eq!(
        x.shape(),
        delta.shape(),
        "RMSNorm of a sum: x and delta differ in shape"
    );
    let (sum, y) = norm_rows(x, Some(delta), weight, eps, dtype, parts);
    (sum.expect("a sum asked for"), y)
}

/// [`rms_norm_rows`]' launch: the norm of `x` (or of `x + delta`, returned
/// too) in `dtype`, as [`rms_norm_as`] says.
fn norm_rows<R: CubeRuntime>(
    x: CubeTensor<R>,
    delta: Option<CubeTensor<R>>,
    weight: CubeTensor<R>,
    eps: f32,
    dtype: DType,
    parts: bool,
) -> (Option<CubeTensor<R>>, CubeTensor<R>) {
    let [rows, hidden]: [usize; 2] = x.shape().dims();
    let (x, weight) = (f32_contiguous(x), f32_contiguous(weight));
    let out_hidden = if parts { 2 * hidden } else { hidden };
    let y = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, out_hidden]),
        dtype,
    );
    let summed = delta.is_some();
    // Without a sum the kernel reads `delta` and writes `sum` nowhere: `x`
    // stands in for the one, a buffer of one row for the other.
    let delta = delta.map_or_else(|| x.clone(), f32_contiguous);
    let sum = empty_f32(&x, Shape::new([if summed { rows } else { 1 }, hidden]));
    if rows > 0 && hidden > 0 {
        as_index(rows * hidden, "RMSNorm");
        let client = x.client.clone();
        let width = vector_width(&client, DType::F32, hidden);
        let row_vectors = hidden / width;
        let (cube, per_unit, levels) = row_cube(&client, row_vectors);
        rms_norm_rows::launch::<R>(
            &client,
            cube_grid(&client, rows, "RMSNorm"),
            CubeDim::new_1d(cube),
            width,
            x.into_tensor_arg(),
            delta.into_tensor_arg(),
            weight.into_tensor_arg(),
            sum.clone().into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rows as u32,
            hidden as f32,
            eps,
            row_vectors as u32,
            per_unit,
            levels,
            parts,
            summed,
            dtype.into(),
        );
    }
    (summed.then_some(sum), y)
}

fn rms_norm_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    grad: CubeTensor<R>,
    eps: f32,
    residual: Option<CubeTensor<R>>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x_dtype, w_dtype) = (x.dtype, weight.dtype);
    let [rows, hidden]: [usize; 2] = x.shape().dims();
    assert_eq!(
        grad.shape().dims::<2>(),
        [rows, hidden],
        "RMSNorm backward: the gradient's shape differs from the input's"
    );
    if let Some(residual) = &residual {
        assert!(
            x_dtype == DType::F32
                && residual.dtype == DType::F32
                && residual.shape().dims::<2>() == [rows, hidden],
            "RMSNorm backward: a residual gradient is summed only into an f32 dx of its shape"
        );
    }
    let (x, weight, grad) = (
        f32_contiguous(x),
        f32_contiguous(weight),
        f32_contiguous(grad),
    );
    if hidden == 0 || rows == 0 {
        let dx = residual.unwrap_or_else(|| empty_f32(&x, Shape::new([rows, hidden])));
        let dw = super::cube_common::zeros_f32(&x, Shape::new([hidden]));
        return (to_dtype(dx, x_dtype), to_dtype(dw, w_dtype));
    }
    let dx = empty_f32(&x, Shape::new([rows, hidden]));
    let dw = empty_f32(&x, Shape::new([hidden]));
    let summed = residual.is_some();
    // Without a residual the kernel reads none: `grad` stands in.
    let residual = residual.map_or_else(|| grad.clone(), f32_contiguous);
    as_index(rows * hidden, "RMSNorm backward");
    let client = x.client.clone();
    let width = vector_width(&client, DType::F32, hidden);
    let row_vectors = hidden / width;
    let (cube, per_unit, levels) = row_cube(&client, row_vectors);
    let inv_rms = empty_f32(&x, Shape::new([rows]));
    rms_norm_backward_rows::launch::<R>(
        &client,
        cube_grid(&client, rows, "RMSNorm backward"),
        CubeDim::new_1d(cube),
        width,
        x.clone().into_tensor_arg(),
        weight.into_tensor_arg(),
        grad.clone().into_tensor_arg(),
        residual.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        inv_rms.clone().into_tensor_arg(),
        rows as u32,
        hidden as f32,
        eps,
        row_vectors as u32,
        per_unit,
        levels,
        summed,
    );
    let chunks = rows.div_ceil(DW_CHUNK_ROWS as usize);
    let partials = empty_f32(&x, Shape::new([chunks, hidden]));
    let column_dim = CubeDim::new_1d(units_per_cube(&client, ELEMENT_UNITS));
    let column_cubes = (row_vectors as u32).div_ceil(column_dim.x);
    let hardware = &client.properties().hardware;
    assert!(
        chunks as u32 <= hardware.max_cube_count.1,
        "RMSNorm backward over {rows} rows exceeds the device's grid"
    );
    weighted_column_partials::launch::<R>(
        &client,
        CubeCount::Static(column_cubes, chunks as u32, 1),
        column_dim,
        width,
        x.into_tensor_arg(),
        grad.into_tensor_arg(),
        inv_rms.into_tensor_arg(),
        partials.clone().into_tensor_arg(),
        rows as u32,
        row_vectors as u32,
        DW_CHUNK_ROWS,
    );
    sum_partials::launch::<R>(
        &client,
        CubeCount::new_1d(column_cubes),
        column_dim,
        width,
        partials.into_tensor_arg(),
        dw.clone().into_tensor_arg(),
        chunks as u32,
        row_vectors as u32,
    );
    (to_dtype(dx, x_dtype), to_dtype(dw, w_dtype))
}

/// The vector width of a rotation of heads of `d` values: a vector and
/// its partner half a head away must both be whole.
fn rope_width<R: CubeRuntime>(client: &ComputeClient<R>, d: usize) -> usize {
    vector_width(client, DType::F32, d / 2)
}

/// [`rope_vectors`]: `x` rotated (inversely where `inverse`) in f32,
/// written in `dtype` (a plain cast, as a cast of the f32 result makes).
fn rope<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    inverse: bool,
    dtype: DType,
) -> CubeTensor<R> {
    let shape = x.shape();
    let [_, seq, heads, d]: [usize; 4] = shape.dims();
    let (x, cos, sin) = (f32_contiguous(x), f32_contiguous(cos), f32_contiguous(sin));
    let n = shape.num_elements();
    let y = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, dtype);
    if n > 0 {
        let client = x.client.clone();
        let width = rope_width(&client, d);
        let vectors = as_index(n / width, "rope");
        let (count, dim) = element_grid(&client, vectors as usize);
        rope_vectors::launch::<R>(
            &client,
            count,
            dim,
            width,
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            vectors,
            seq as u32,
            heads as u32,
            (d / width) as u32,
            inverse,
            false,
            dtype.into(),
        );
    }
    y
}

/// [`rope_pair_vectors`]: `q` and `k` rotated in one launch, written in
/// `dtype` (clamped to a 16-bit one's range).
fn rope_pair<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    dtype: DType,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (q_shape, k_shape) = (q.shape(), k.shape());
    let [_, seq, q_heads, d]: [usize; 4] = q_shape.dims();
    let k_heads = k_shape.dims::<4>()[2];
    let (q, k) = (f32_contiguous(q), f32_contiguous(k));
    let (cos, sin) = (f32_contiguous(cos), f32_contiguous(sin));
    let client = q.client.clone();
    let out = |shape| empty_device_contiguous_dtype(client.clone(), q.device.clone(), shape, dtype);
    let (q_out, k_out) = (out(q_shape.clone()), out(k_shape.clone()));
    let n = q_shape.num_elements() + k_shape.num_elements();
    if n > 0 {
        let width = rope_width(&client, d);
        let vectors = as_index(n / width, "rope");
        let (count, dim) = element_grid(&client, vectors as usize);
        rope_pair_vectors::launch::<R>(
            &client,
            count,
            dim,
            width,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            q_out.clone().into_tensor_arg(),
            k_out.clone().into_tensor_arg(),
            as_index(q_shape.num_elements() / width, "rope"),
            vectors,
            seq as u32,
            q_heads as u32,
            k_heads as u32,
            (d / width) as u32,
            dtype != DType::F32,
            dtype.into(),
        );
    }
    (q_out, k_out)
}

fn swiglu<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let dtype = gate.dtype;
    swiglu_as(gate, up, dtype, false)
}

/// `gate` and `up` contiguous, in the one dtype the SwiGLU kernels read
/// them in: their own where they share it (f32, or the products' rounded
/// results), else f32.
fn swiglu_inputs<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    if gate.dtype == up.dtype {
        (into_contiguous(gate), into_contiguous(up))
    } else {
        (f32_contiguous(gate), f32_contiguous(up))
    }
}

/// `silu(gate) up` written in `dtype`: the inputs' shape, or with `parts`
/// the two-part operand of the inference product, each row (the last axis)
/// twice as long (`matmul_parts_cube`). Read in the inputs' dtype and
/// computed in f32 as [`swiglu`], then rounded as a cast of its result
/// would round it.
pub(super) fn swiglu_as<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    dtype: DType,
    parts: bool,
) -> CubeTensor<R> {
    let shape = gate.shape();
    let (gate, up) = swiglu_inputs(gate, up);
    let n = shape.num_elements();
    let row = shape.as_slice().last().copied().unwrap_or(1);
    let mut out_shape = shape.clone();
    if parts && let Some(last) = out_shape.as_mut_slice().last_mut() {
        *last *= 2;
    }
    let y =
        empty_device_contiguous_dtype(gate.client.clone(), gate.device.clone(), out_shape, dtype);
    if n > 0 {
        let client = gate.client.clone();
        let input_dtype = gate.dtype;
        // The parts are written row by row: a vector must not straddle two.
        let width = vector_width(&client, DType::F32, if parts { row } else { n });
        let vectors = as_index(n / width, "SwiGLU");
        let (count, dim) = element_grid(&client, vectors as usize);
        swiglu_vectors::launch::<R>(
            &client,
            count,
            dim,
            width,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            vectors,
            (row / width) as u32,
            parts,
            [input_dtype.into(), dtype.into()],
        );
    }
    y
}

/// SwiGLU's gradients, each in the dtype the kernel reads `gate` and `up`
/// in ([`swiglu_inputs`]): where those are the products' rounded results,
/// the rounded `dy` of their backward.
fn swiglu_backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let shape = gate.shape();
    let (gate, up) = swiglu_inputs(gate, up);
    let grad = f32_contiguous(grad);
    let dtype = gate.dtype;
    let n = shape.num_elements();
    let dgate = empty_device_contiguous_dtype(
        gate.client.clone(),
        gate.device.clone(),
        shape.clone(),
        dtype,
    );
    let dup = empty_device_contiguous_dtype(gate.client.clone(), gate.device.clone(), shape, dtype);
    if n > 0 {
        let client = gate.client.clone();
        let width = vector_width(&client, DType::F32, n);
        let vectors = as_index(n / width, "SwiGLU backward");
        let (count, dim) = element_grid(&client, vectors as usize);
        swiglu_backward_vectors::launch::<R>(
            &client,
            count,
            dim,
            width,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            grad.into_tensor_arg(),
            dgate.clone().into_tensor_arg(),
            dup.clone().into_tensor_arg(),
            vectors,
            dtype.into(),
        );
    }
    (dgate, dup)
}

impl<R, F, I, BT> RowOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn rms_norm(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f32) -> CubeTensor<R> {
        rms_norm(x, weight, eps)
    }

    fn rms_norm_backward(
        x: CubeTensor<R>,
        weight: CubeTensor<R>,
        grad: CubeTensor<R>,
        eps: f32,
        residual: Option<CubeTensor<R>>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        rms_norm_backward(x, weight, grad, eps, residual)
    }

    fn rope(x: CubeTensor<R>, cos: CubeTensor<R>, sin: CubeTensor<R>) -> CubeTensor<R> {
        let dtype = x.dtype;
        rope(x, cos, sin, false, dtype)
    }

    fn rope_inverse(
        grad: CubeTensor<R>,
        cos: CubeTensor<R>,
        sin: CubeTensor<R>,
        dtype: DType,
    ) -> CubeTensor<R> {
        rope(grad, cos, sin, true, dtype)
    }

    fn rope_pair(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        cos: CubeTensor<R>,
        sin: CubeTensor<R>,
        dtype: DType,
        _grads: Option<DType>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        rope_pair(q, k, cos, sin, dtype)
    }

    fn swiglu(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
        swiglu(gate, up)
    }

    fn swiglu_backward(
        gate: CubeTensor<R>,
        up: CubeTensor<R>,
        grad: CubeTensor<R>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        swiglu_backward(gate, up, grad)
    }
}

/// [`rms_norm_rows`] (of a row, and of a sum) and [`swiglu_vectors`]
/// writing bf16 (rounded, and in two parts) with vectors of `width`, as
/// CUDA C++ for `arch` (`kernels::cuda_source`): on CUDA they write bf16,
/// which lavapipe cannot.
#[cfg(all(feature = "cuda", feature = "wgpu"))]
pub(super) fn bf16_writers_cuda_source(
    width: usize,
    arch: super::cuda_capture::CudaArch,
) -> Result<Vec<super::cuda_capture::CudaKernelSource>, String> {
    use super::cuda_capture::{Capture, compile_for_cuda};
    let dtype: StorageType = DType::BF16.into();
    let mut sources = Vec::new();
    let (rows, hidden) = (4usize, 576usize);
    let row_vectors = hidden / width;
    let cube = 256u32;
    for parts in [false, true] {
        use rms_norm_rows::{_E, _N, E, N, RmsNormRows};
        for summed in [false, true] {
            let mut at = Capture::new(CubeDim::new_1d(cube), |scope| {
                scope.register_type::<DynamicScalar<_E>>(dtype);
                scope.register_size::<DynamicSize<_N>>(width);
            });
            let x = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
            let delta = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
            let w = at.tensor::<Tensor<Vector<f32, N>>>(&[hidden]);
            let sum = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
            let out_hidden = if parts { 2 * hidden } else { hidden };
            let y = at.tensor::<Tensor<Vector<E, N>>>(&[rows, out_hidden]);
            let kernel = RmsNormRows::<cubecl::wgpu::WgpuRuntime>::new(
                at.settings.clone(),
                at.client.clone(),
                x,
                delta,
                w,
                sum,
                y,
                // rows, hidden, eps: scalars have no compilation argument.
                (),
                (),
                (),
                width,
                row_vectors as u32,
                row_vectors.div_ceil(cube as usize),
                cube.trailing_zeros(),
                parts,
                summed,
                dtype,
            );
            let label = format!("rms_norm_rows bf16 width{width} parts{parts} summed{summed}");
            sources.push(compile_for_cuda(label, kernel, arch)?);
        }
    }
    // SwiGLU reads f32 inputs, or the products' rounded results (bf16).
    let f32_type: StorageType = DType::F32.into();
    for (input, input_name) in [(f32_type, "f32"), (dtype, "bf16")] {
        for parts in [false, true] {
            use swiglu_vectors::{_E, _G, _N, E, G, N, SwigluVectors};
            let mut at = Capture::new(CubeDim::new_1d(ELEMENT_UNITS), |scope| {
                scope.register_type::<DynamicScalar<_G>>(input);
                scope.register_type::<DynamicScalar<_E>>(dtype);
                scope.register_size::<DynamicSize<_N>>(width);
            });
            let gate = at.tensor::<Tensor<Vector<G, N>>>(&[rows, hidden]);
            let up = at.tensor::<Tensor<Vector<G, N>>>(&[rows, hidden]);
            let out_hidden = if parts { 2 * hidden } else { hidden };
            let y = at.tensor::<Tensor<Vector<E, N>>>(&[rows, out_hidden]);
            let kernel = SwigluVectors::<cubecl::wgpu::WgpuRuntime>::new(
                at.settings.clone(),
                at.client.clone(),
                gate,
                up,
                y,
                // vectors, row_vectors: scalars.
                (),
                (),
                width,
                parts,
                [input, dtype],
            );
            let label = format!("swiglu_vectors {input_name} to bf16 width{width} parts{parts}");
            sources.push(compile_for_cuda(label, kernel, arch)?);
        }
    }
    {
        use swiglu_backward_vectors::{_G, _N, G, N, SwigluBackwardVectors};
        let mut at = Capture::new(CubeDim::new_1d(ELEMENT_UNITS), |scope| {
            scope.register_type::<DynamicScalar<_G>>(dtype);
            scope.register_size::<DynamicSize<_N>>(width);
        });
        let gate = at.tensor::<Tensor<Vector<G, N>>>(&[rows, hidden]);
        let up = at.tensor::<Tensor<Vector<G, N>>>(&[rows, hidden]);
        let dy = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
        let dgate = at.tensor::<Tensor<Vector<G, N>>>(&[rows, hidden]);
        let dup = at.tensor::<Tensor<Vector<G, N>>>(&[rows, hidden]);
        let kernel = SwigluBackwardVectors::<cubecl::wgpu::WgpuRuntime>::new(
            at.settings.clone(),
            at.client.clone(),
            gate,
            up,
            dy,
            dgate,
            dup,
            // vectors: a scalar.
            (),
            width,
            dtype,
        );
        let label = format!("swiglu_backward_vectors bf16 width{width}");
        sources.push(compile_for_cuda(label, kernel, arch)?);
    }
    // The rotary embedding writing attention's operands: f16 (the scores'
    // on tensor cores), and bf16.
    for (out, out_name) in [(DType::F16.into(), "f16"), (dtype, "bf16")] {
        use rope_pair_vectors::{_E, _N, E, N, RopePairVectors};
        let mut at = Capture::new(CubeDim::new_1d(ELEMENT_UNITS), |scope| {
            scope.register_type::<DynamicScalar<_E>>(out);
            scope.register_size::<DynamicSize<_N>>(width);
        });
        let (seq, d) = (rows, 64usize);
        let q = at.tensor::<Tensor<Vector<f32, N>>>(&[1, seq, 9, d]);
        let k = at.tensor::<Tensor<Vector<f32, N>>>(&[1, seq, 3, d]);
        let cos = at.tensor::<Tensor<Vector<f32, N>>>(&[seq, d]);
        let sin = at.tensor::<Tensor<Vector<f32, N>>>(&[seq, d]);
        let q_out = at.tensor::<Tensor<Vector<E, N>>>(&[1, seq, 9, d]);
        let k_out = at.tensor::<Tensor<Vector<E, N>>>(&[1, seq, 3, d]);
        let kernel = RopePairVectors::<cubecl::wgpu::WgpuRuntime>::new(
            at.settings.clone(),
            at.client.clone(),
            q,
            k,
            cos,
            sin,
            q_out,
            k_out,
            // q_vectors, vectors, seq, q_heads, k_heads, d_vectors: scalars.
            (),
            (),
            (),
            (),
            (),
            (),
            width,
            true,
            out,
        );
        let label = format!("rope_pair_vectors f32 to {out_name} width{width}");
        sources.push(compile_for_cuda(label, kernel, arch)?);
    }
    // The inverse rotation writing q's and k's gradients as their
    // products read them (`MatmulOps::trained_gradient`): bf16, a plain
    // cast.
    {
        use rope_vectors::{_E, _N, E, N, RopeVectors};
        let mut at = Capture::new(CubeDim::new_1d(ELEMENT_UNITS), |scope| {
            scope.register_type::<DynamicScalar<_E>>(dtype);
            scope.register_size::<DynamicSize<_N>>(width);
        });
        let (seq, d) = (rows, 64usize);
        let x = at.tensor::<Tensor<Vector<f32, N>>>(&[1, seq, 9, d]);
        let cos = at.tensor::<Tensor<Vector<f32, N>>>(&[seq, d]);
        let sin = at.tensor::<Tensor<Vector<f32, N>>>(&[seq, d]);
        let y = at.tensor::<Tensor<Vector<E, N>>>(&[1, seq, 9, d]);
        let kernel = RopeVectors::<cubecl::wgpu::WgpuRuntime>::new(
            at.settings.clone(),
            at.client.clone(),
            x,
            cos,
            sin,
            y,
            // vectors, seq, heads, d_vectors: scalars.
            (),
            (),
            (),
            (),
            width,
            true,
            false,
            dtype,
        );
        let label = format!("rope_vectors inverse f32 to bf16 width{width}");
        sources.push(compile_for_cuda(label, kernel, arch)?);
    }
    // RMSNorm's backward summing the residual stream's gradient (f32).
    {
        use rms_norm_backward_rows::{_N, N, RmsNormBackwardRows};
        let mut at = Capture::new(CubeDim::new_1d(cube), |scope| {
            scope.register_size::<DynamicSize<_N>>(width);
        });
        let x = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
        let w = at.tensor::<Tensor<Vector<f32, N>>>(&[hidden]);
        let g = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
        let residual = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
        let dx = at.tensor::<Tensor<Vector<f32, N>>>(&[rows, hidden]);
        let inv_rms = at.tensor::<Tensor<f32>>(&[rows]);
        let kernel = RmsNormBackwardRows::<cubecl::wgpu::WgpuRuntime>::new(
            at.settings.clone(),
            at.client.clone(),
            x,
            w,
            g,
            residual,
            dx,
            inv_rms,
            // rows, hidden, eps: scalars.
            (),
            (),
            (),
            width,
            row_vectors as u32,
            row_vectors.div_ceil(cube as usize),
            cube.trailing_zeros(),
            true,
        );
        let label = format!("rms_norm_backward_rows summed width{width}");
        sources.push(compile_for_cuda(label, kernel, arch)?);
    }
    Ok(sources)
}
