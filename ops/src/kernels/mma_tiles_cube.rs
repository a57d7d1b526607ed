//! 16 x 16 x 16 tile products for kernels written against the devices'
//! matrix-multiply units (CubeCL's `cmma`: tensor cores on CUDA), and an
//! emulation of them in shared memory for devices without such units
//! (Mesa's lavapipe, which runs the tests).
//!
//! The emulation takes the same arguments as the `cmma` calls it stands in
//! for: a fragment is loaded from a slice with a row stride, row- or
//! column-major; an accumulator is stored row-major with a stride. A kernel
//! written twice, once with each, with every offset and stride computed by
//! shared helpers, is then checked on lavapipe in everything but the `cmma`
//! instructions themselves.
//!
//! An emulated fragment is 256 values in shared memory, row-major in the
//! fragment's own shape (`A`: rows x inner, `B`: inner x columns, the
//! accumulator: rows x columns). One plane of [`PLANE_UNITS`] units works
//! on it, each unit on 8 of the 256 values; callers synchronize the cube
//! between steps, as the `cmma` path does.
//!
//! Above the single fragments, the steps the attention kernels are made of,
//! each on the `cmma` instructions and on their emulation with the same
//! arguments: a plane's 16 rows of `d` values as `d / 16` fragments
//! ([`load_rows`]), a tile of products of those rows with 16 to 64 rows of
//! another tensor into shared memory ([`product_tile`]), and a tile of
//! weights in shared memory times rows of a tensor added to accumulators
//! ([`accumulate_products`]).

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind, StorageType};
use cubecl::prelude::*;

/// The tile's side: the `m`, `n` and `k` of every product.
pub const TILE: usize = 16;
/// Values in one tile.
pub const TILE_VALUES: usize = TILE * TILE;
/// Units of a plane: a warp on CUDA, where the `cmma` path runs; the
/// emulation uses the same count so that both kernels have one geometry.
pub const PLANE_UNITS: u32 = 32;

/// Whether the device multiplies `dtype` tiles of 16 x 16 x 16 with f32
/// sums on matrix-multiply units (CUDA's tensor cores for bf16 and f16).
pub fn has_matrix_units<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    let kind = match dtype {
        DType::BF16 => FloatKind::BF16,
        DType::F16 => FloatKind::F16,
        _ => return false,
    };
    let operand = StorageType::Scalar(ElemType::Float(kind));
    let sum = StorageType::Scalar(ElemType::Float(FloatKind::F32));
    client
        .properties()
        .features
        .matmul
        .cmma
        .contains(&MmaConfig {
            a_type: operand,
            b_type: operand,
            cd_type: sum,
            m: TILE as u32,
            n: TILE as u32,
            k: TILE as u32,
        })
}

/// `frag[frag_at + r * 16 + c] = src[r * stride + c]` (`col_major`:
/// `src[c * stride + r]`): `cmma::load` of a fragment with that layout.
#[cube]
pub fn emulated_load<E: Float>(
    frag: &mut SharedMemory<E>,
    frag_at: usize,
    src: &Slice<E>,
    stride: usize,
    #[comptime] col_major: bool,
) {
    let mut e = UNIT_POS_X as usize;
    while e < TILE_VALUES {
        let r = e / TILE;
        let c = e % TILE;
        let at = if col_major {
            c * stride + r
        } else {
            r * stride + c
        };
        frag[frag_at + e] = src[at];
        e += PLANE_UNITS as usize;
    }
}

/// Every value of an accumulator set to `value`: `cmma::fill`.
#[cube]
pub fn emulated_fill(acc: &mut SharedMemory<f32>, acc_at: usize, value: f32) {
    let mut e = UNIT_POS_X as usize;
    while e < TILE_VALUES {
        acc[acc_at + e] = value;
        e += PLANE_UNITS as usize;
    }
}

/// `acc += a b` with f32 sums of the operands' values: `cmma::execute`.
#[cube]
pub fn emulated_execute<E: Float>(
    a: &SharedMemory<E>,
    a_at: usize,
    b: &SharedMemory<E>,
    b_at: usize,
    acc: &mut SharedMemory<f32>,
    acc_at: usize,
) {
    let mut e = UNIT_POS_X as usize;
    while e < TILE_VALUES {
        let r = e / TILE;
        let c = e % TILE;
        let mut sum = acc[acc_at + e];
        #[unroll]
        for i in 0..TILE {
            sum += f32::cast_from(a[a_at + r * TILE + i]) * f32::cast_from(b[b_at + i * TILE + c]);
        }
        acc[acc_at + e] = sum;
        e += PLANE_UNITS as usize;
    }
}

/// `dst[r * stride + c] = acc[r * 16 + c]`: `cmma::cast` to `dst`'s type
/// then `cmma::store`, row-major, each f32 sum rounded as it is stored.
#[cube]
pub fn emulated_store<O: Float>(
    dst: &mut Slice<O, ReadWrite>,
    acc: &SharedMemory<f32>,
    acc_at: usize,
    stride: usize,
) {
    let mut e = UNIT_POS_X as usize;
    while e < TILE_VALUES {
        let r = e / TILE;
        let c = e % TILE;
        dst[r * stride + c] = O::cast_from(acc[acc_at + e]);
        e += PLANE_UNITS as usize;
    }
}

/// One past the last element of 16 rows of 16 values from `start`, rows
/// `stride` apart: the end of the slice a fragment loads or stores.
#[cube]
pub fn rows_end(start: usize, stride: usize) -> usize {
    start + (TILE - 1) * stride + TILE
}

/// The 16 rows at `src[at..]` (rows `stride` apart), `d` wide, as `d / 16`
/// A fragments, row-major.
#[cube]
pub fn load_rows<E: Float>(
    src: &Tensor<E>,
    at: usize,
    stride: usize,
    #[comptime] d: usize,
) -> Sequence<cmma::Matrix<E>> {
    let mut rows = Sequence::<cmma::Matrix<E>>::new();
    #[unroll]
    for f in 0..d / TILE {
        let start = at + f * TILE;
        rows.push(cmma::Matrix::<E>::from_slice(
            cmma::MatrixIdent::A,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::RowMajor,
            &src.slice(start, rows_end(start, stride)),
            stride as u32,
        ));
    }
    rows
}

/// `d / 16` accumulators of zeros.
#[cube]
pub fn zero_accumulators(#[comptime] d: usize) -> Sequence<cmma::Matrix<f32>> {
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..d / TILE {
        acc.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::Undefined,
            f32::new(0.0),
        ));
    }
    acc
}

/// `tile[tile_at + r * 16 frags + c] = sum_x a[r, x] b[first + c, x]`
/// for the plane's 16 rows `a` (fragments over `d`) and the `16 frags`
/// rows of `b` from `first` (row `j` at `b_at + j * b_stride`): the
/// products of two sets of rows, into shared memory.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn product_tile<E: Float>(
    a: &Sequence<cmma::Matrix<E>>,
    b: &Tensor<E>,
    b_at: usize,
    b_stride: usize,
    first: usize,
    tile: &mut SharedMemory<f32>,
    tile_at: usize,
    #[comptime] d: usize,
    #[comptime] frags: usize,
) {
    let width = frags * TILE;
    #[unroll]
    for n in 0..frags {
        let sum = cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::Undefined,
            f32::new(0.0),
        );
        #[unroll]
        for f in 0..d / TILE {
            // b's rows as the columns of a B fragment: column-major.
            let start = b_at + (first + n * TILE) * b_stride + f * TILE;
            let b_t = cmma::Matrix::<E>::from_slice(
                cmma::MatrixIdent::B,
                TILE,
                TILE,
                TILE,
                cmma::MatrixLayout::ColMajor,
                &b.slice(start, rows_end(start, b_stride)),
                b_stride as u32,
            );
            cmma::execute::<E, E, f32, f32>(a.index(f), &b_t, &sum, &sum);
        }
        let start = tile_at + n * TILE;
        cmma::store(
            &mut tile.slice_mut(start, rows_end(start, width)),
            &sum,
            width as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
}

/// `acc[f][r, x] += sum_c w[tile_at + r * 16 frags + c] b[first + c, 16 f
/// + x]`: the plane's `16 x 16 frags` tile of weights in shared memory
/// times the `16 frags` rows of `b` from `first` (as in [`product_tile`]),
/// added to the `d / 16` accumulators.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn accumulate_products<E: Float>(
    w: &SharedMemory<E>,
    tile_at: usize,
    b: &Tensor<E>,
    b_at: usize,
    b_stride: usize,
    first: usize,
    acc: &Sequence<cmma::Matrix<f32>>,
    #[comptime] d: usize,
    #[comptime] frags: usize,
) {
    let width = frags * TILE;
    #[unroll]
    for n in 0..frags {
        let w_start = tile_at + n * TILE;
        let weights = cmma::Matrix::<E>::from_slice(
            cmma::MatrixIdent::A,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::RowMajor,
            &w.slice(w_start, rows_end(w_start, width)),
            width as u32,
        );
        #[unroll]
        for f in 0..d / TILE {
            let start = b_at + (first + n * TILE) * b_stride + f * TILE;
            let rows = cmma::Matrix::<E>::from_slice(
                cmma::MatrixIdent::B,
                TILE,
                TILE,
                TILE,
                cmma::MatrixLayout::RowMajor,
                &b.slice(start, rows_end(start, b_stride)),
                b_stride as u32,
            );
            cmma::execute::<E, E, f32, f32>(&weights, &rows, acc.index(f), acc.index(f));
        }
    }
}

/// The accumulators to `dst`'s 16 rows at `at` (rows `stride` apart),
/// each f32 sum rounded to `dst`'s type as it is stored (`cmma::cast`,
/// which is no instruction where `dst` is f32 in the Rust type).
#[cube]
pub fn store_rows<O: Float>(
    acc: &Sequence<cmma::Matrix<f32>>,
    dst: &mut Tensor<O>,
    at: usize,
    stride: usize,
    #[comptime] d: usize,
) {
    #[unroll]
    for f in 0..d / TILE {
        let start = at + f * TILE;
        let rounded = cmma::cast::<f32, O>(acc.index(f));
        cmma::store(
            &mut dst.slice_mut(start, rows_end(start, stride)),
            &rounded,
            stride as u32,
            cmma::MatrixLayout::RowMajor,
        );
    }
}

/// What the emulation needs besides the accumulators a kernel keeps: per
/// plane, an A and a B operand fragment and one accumulator.
#[derive(CubeType)]
pub struct Scratch<E: Float> {
    operands: SharedMemory<E>,
    sums: SharedMemory<f32>,
}

#[cube]
pub fn scratch<E: Float>(#[comptime] planes: u32) -> Scratch<E> {
    Scratch::<E> {
        operands: SharedMemory::<E>::new(comptime!(planes as usize * 2 * TILE_VALUES)),
        sums: SharedMemory::<f32>::new(comptime!(planes as usize * TILE_VALUES)),
    }
}

/// Shared memory of [`scratch`], per plane, in bytes.
pub fn scratch_bytes(operand_bytes: usize) -> usize {
    TILE_VALUES * (2 * operand_bytes + 4)
}

/// [`zero_accumulators`] emulated, at `acc[acc_at..]`.
#[cube]
pub fn emulated_zero_accumulators(
    acc: &mut SharedMemory<f32>,
    acc_at: usize,
    #[comptime] d: usize,
) {
    #[unroll]
    for f in 0..d / TILE {
        emulated_fill(acc, acc_at + f * TILE_VALUES, f32::new(0.0));
    }
}

/// [`product_tile`] emulated, with the plane's 16 rows read from
/// `a[a_at..]` (rows `a_stride` apart) fragment by fragment, where the
/// `cmma` path keeps them in registers ([`load_rows`]). Starts and ends
/// with the cube synchronized.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn emulated_product_tile<E: Float>(
    a: &Tensor<E>,
    a_at: usize,
    a_stride: usize,
    b: &Tensor<E>,
    b_at: usize,
    b_stride: usize,
    first: usize,
    scratch: &mut Scratch<E>,
    tile: &mut SharedMemory<f32>,
    tile_at: usize,
    #[comptime] d: usize,
    #[comptime] frags: usize,
) {
    let width = frags * TILE;
    let a_frag = UNIT_POS_Y as usize * 2 * TILE_VALUES;
    let b_frag = a_frag + TILE_VALUES;
    let sum = UNIT_POS_Y as usize * TILE_VALUES;
    #[unroll]
    for n in 0..frags {
        emulated_fill(&mut scratch.sums, sum, f32::new(0.0));
        #[unroll]
        for f in 0..d / TILE {
            let a_start = a_at + f * TILE;
            emulated_load::<E>(
                &mut scratch.operands,
                a_frag,
                &a.slice(a_start, rows_end(a_start, a_stride)),
                a_stride,
                false,
            );
            // b's rows as the columns of a B fragment: column-major.
            let start = b_at + (first + n * TILE) * b_stride + f * TILE;
            emulated_load::<E>(
                &mut scratch.operands,
                b_frag,
                &b.slice(start, rows_end(start, b_stride)),
                b_stride,
                true,
            );
            sync_cube();
            emulated_execute::<E>(
                &scratch.operands,
                a_frag,
                &scratch.operands,
                b_frag,
                &mut scratch.sums,
                sum,
            );
            sync_cube();
        }
        let start = tile_at + n * TILE;
        emulated_store(
            &mut tile.slice_mut(start, rows_end(start, width)),
            &scratch.sums,
            sum,
            width,
        );
        sync_cube();
    }
}

/// [`accumulate_products`] emulated, the accumulators at `acc[acc_at..]`.
/// Starts and ends with the cube synchronized.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn emulated_accumulate_products<E: Float>(
    w: &SharedMemory<E>,
    tile_at: usize,
    b: &Tensor<E>,
    b_at: usize,
    b_stride: usize,
    first: usize,
    scratch: &mut Scratch<E>,
    acc: &mut SharedMemory<f32>,
    acc_at: usize,
    #[comptime] d: usize,
    #[comptime] frags: usize,
) {
    let width = frags * TILE;
    let a_frag = UNIT_POS_Y as usize * 2 * TILE_VALUES;
    let b_frag = a_frag + TILE_VALUES;
    #[unroll]
    for n in 0..frags {
        let w_start = tile_at + n * TILE;
        emulated_load::<E>(
            &mut scratch.operands,
            a_frag,
            &w.slice(w_start, rows_end(w_start, width)),
            width,
            false,
        );
        #[unroll]
        for f in 0..d / TILE {
            let start = b_at + (first + n * TILE) * b_stride + f * TILE;
            emulated_load::<E>(
                &mut scratch.operands,
                b_frag,
                &b.slice(start, rows_end(start, b_stride)),
                b_stride,
                false,
            );
            sync_cube();
            emulated_execute::<E>(
                &scratch.operands,
                a_frag,
                &scratch.operands,
                b_frag,
                acc,
                acc_at + f * TILE_VALUES,
            );
            sync_cube();
        }
    }
}

/// [`store_rows`] emulated, from `acc[acc_at..]`.
#[cube]
pub fn emulated_store_rows<O: Float>(
    acc: &SharedMemory<f32>,
    acc_at: usize,
    dst: &mut Tensor<O>,
    at: usize,
    stride: usize,
    #[comptime] d: usize,
) {
    #[unroll]
    for f in 0..d / TILE {
        let start = at + f * TILE;
        emulated_store(
            &mut dst.slice_mut(start, rows_end(start, stride)),
            acc,
            acc_at + f * TILE_VALUES,
            stride,
        );
    }
}
