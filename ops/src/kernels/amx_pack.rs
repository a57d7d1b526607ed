//! f32 operands packed into the bf16 tiles the AMX product loads, with
//! AVX-512 (every CPU with AMX has it, and its BF16 conversions).
//!
//! Both layouts put each tile the kernel loads, 16 rows of 64 bytes, in one
//! contiguous KiB, in the order the reduction walks them:
//!
//! - `A [m, k]`: `[m_pad / 16][k_steps][parts][16 rows][32 k]`, `parts` 1
//!   (`A` rounded to bf16) or 2 (the rounding `hi`, then `lo`, the bf16 of
//!   what `hi` left out: about 16 bits of mantissa in all).
//! - `B [k, n]`: panels of 16 columns, `[n_pad / 16][k_steps][16 pairs][16
//!   columns][2]`: row `r` of a step's tile holds `B[2r, j]` and `B[2r + 1,
//!   j]` for the panel's 16 `j`, the pairs `tdpbf16ps` multiplies.
//!
//! Zeros fill the padding (`m` and `n` up to blocks of 32, `k` up to steps
//! of 32). Each operand may have any strides: a row of 16 values is one
//! vector load where the values are adjacent, a gather where they are not
//! (a transposed operand: `x^T` and `dy^T` in the backward), so no operand
//! is ever transposed in memory first.
//!
//! The rounding is the conversion instruction's: to nearest even, with
//! denormal inputs taken as zero (values below 1.2e-38, far under bf16's
//! own precision at any scale a model reaches).

use rayon::prelude::*;
use std::arch::x86_64::*;

/// Rows and columns of one accumulator tile (f32).
pub(super) const TILE: usize = 16;
/// bf16 values a tile row holds: the reduction step.
pub(super) const K_STEP: usize = 32;
/// Rows and columns of `C` one block of four tiles covers.
pub(super) const BLOCK: usize = 2 * TILE;

/// An f32 matrix in memory: element `(i, j)` at `data[i * row + j * col]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub col: usize,
}

/// How `A` is rounded to bf16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Once: 8 bits of mantissa, as mixed-precision training rounds.
    Once,
    /// Two parts, `hi + lo`: about 16 bits, for twice the tile products.
    Split,
}

impl Rounding {
    pub(super) fn parts(self) -> usize {
        match self {
            Rounding::Once => 1,
            Rounding::Split => 2,
        }
    }
}

/// bf16 values in one tile.
pub(super) const TILE_ELEMS: usize = TILE * K_STEP;

/// `A`, packed (see the module docs).
pub struct PackedA {
    pub(super) data: Vec<u16>,
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) k_steps: usize,
    pub(super) parts: usize,
}

impl PackedA {
    /// Packs `a: [m, k]`, rounded as `rounding` says.
    ///
    /// Panics unless [`super::amx_cpu::available`].
    pub fn new(a: MatRef, m: usize, k: usize, rounding: Rounding) -> Self {
        assert_packing_runs();
        check_extent(a, m, k, "A");
        let parts = rounding.parts();
        let k_steps = k.div_ceil(K_STEP);
        let row_tiles = m.next_multiple_of(BLOCK) / TILE;
        let per_row_tile = k_steps * parts * TILE_ELEMS;
        let mut data = unfilled(row_tiles * per_row_tile);
        data.par_chunks_mut(per_row_tile)
            .enumerate()
            .for_each(|(t, out)| {
                let rows = (t * TILE).min(m)..((t + 1) * TILE).min(m);
                // SAFETY: `super::amx_cpu::available` (asserted above) found
                // AVX-512 with BF16 on this CPU; `check_extent` bounds every
                // element read.
                unsafe { pack_a_tile_row(a, rows, k, k_steps, rounding, out) };
            });
        Self {
            data,
            m,
            k,
            k_steps,
            parts,
        }
    }

    /// The tile of rows `16 row_tile ..` at reduction step `step`, part
    /// `part`.
    #[inline(always)]
    pub(super) fn tile(&self, row_tile: usize, step: usize, part: usize) -> *const u16 {
        let index = ((row_tile * self.k_steps + step) * self.parts + part) * TILE_ELEMS;
        self.data[index..index + TILE_ELEMS].as_ptr()
    }
}

/// `B`, packed (see the module docs): the weights, packed once for any
/// number of products, or an activation packed for one.
pub struct PackedB {
    pub(super) data: Vec<u16>,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) k_steps: usize,
}

impl PackedB {
    /// Packs `b: [k, n]`.
    ///
    /// Panics unless [`super::amx_cpu::available`].
    pub fn new(b: MatRef, k: usize, n: usize) -> Self {
        assert_packing_runs();
        check_extent(b, k, n, "B");
        let k_steps = k.div_ceil(K_STEP);
        let panels = n.next_multiple_of(BLOCK) / TILE;
        let per_panel = k_steps * TILE_ELEMS;
        let mut data = unfilled(panels * per_panel);
        data.par_chunks_mut(per_panel)
            .enumerate()
            .for_each(|(p, out)| {
                let cols = (p * TILE).min(n)..((p + 1) * TILE).min(n);
                // SAFETY: as in `PackedA::new`.
                unsafe { pack_b_panel(b, k, cols, out) };
            });
        Self {
            data,
            k,
            n,
            k_steps,
        }
    }

    /// Rows of `B`: the product's reduction.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the product.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The tile of columns `16 panel ..` at reduction step `step`.
    #[inline(always)]
    pub(super) fn tile(&self, panel: usize, step: usize) -> *const u16 {
        let index = (panel * self.k_steps + step) * TILE_ELEMS;
        self.data[index..index + TILE_ELEMS].as_ptr()
    }
}

/// The packers' instructions (AVX-512 with BF16) exist on every CPU that
/// [`super::amx_cpu::available`] accepts, and only there.
fn assert_packing_runs() {
    assert!(
        super::amx_cpu::available(),
        "AMX bf16 tiles are not available on this machine"
    );
}

/// A buffer of `len` values the packers then write in full, padding
/// included: zeroing it first would cost a pass over it.
fn unfilled(len: usize) -> Vec<u16> {
    let mut data = Vec::with_capacity(len);
    // SAFETY: u16 has no invalid bit patterns, and every packer writes each
    // element of its span before the product reads any.
    #[allow(clippy::uninit_vec)]
    unsafe {
        data.set_len(len)
    };
    data
}

/// Panics unless every element of the `[rows, cols]` view lies in its data,
/// and the gathers' offsets (16 steps of a stride) fit their i32 indices.
fn check_extent(x: MatRef, rows: usize, cols: usize, name: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * x.row + (cols - 1) * x.col;
    assert!(
        last < x.data.len(),
        "AMX packing: {name} [{rows}, {cols}] with strides ({}, {}) reads past its {} values",
        x.row,
        x.col,
        x.data.len()
    );
    assert!(
        x.row.max(x.col) * TILE < i32::MAX as usize,
        "AMX packing: {name}'s strides ({}, {}) are too large to gather",
        x.row,
        x.col
    );
}

/// The first `count` (at most 16) of `x`'s elements `(i, j0 + t)`, zeros
/// after: one load where they are adjacent, a gather where not.
///
/// # Safety
/// AVX-512F; the elements exist (`check_extent`).
#[target_feature(enable = "avx512f")]
unsafe fn load_row16(x: MatRef, i: usize, j0: usize, count: usize) -> __m512 {
    let mask = lanes(count);
    // SAFETY: the masked-off lanes are not read; the others lie in `data`.
    unsafe {
        let base = x.data.as_ptr().add(i * x.row + j0 * x.col);
        if x.col == 1 {
            _mm512_maskz_loadu_ps(mask, base)
        } else {
            let index = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(x.col as i32),
            );
            _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, base)
        }
    }
}

/// A mask of the first `count` of 16 lanes.
#[inline(always)]
fn lanes(count: usize) -> __mmask16 {
    if count >= 16 {
        0xffff
    } else {
        ((1u32 << count) - 1) as __mmask16
    }
}

/// 16 f32 rounded to bf16 (nearest even).
#[target_feature(enable = "avx512f,avx512bf16")]
fn round16(x: __m512) -> __m256i {
    // SAFETY: a register reinterpretation of the same 256 bits.
    unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(x)) }
}

/// 16 bf16 widened to f32 (exact).
#[target_feature(enable = "avx512f")]
fn widen16(x: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x)))
}

/// The 16-row tile row of `A` (rows `rows`, which may be fewer than 16 or
/// none) at every reduction step, zeros for the padding.
///
/// # Safety
/// AVX-512 with BF16; `a`'s elements exist; `out` is this tile row's span.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a_tile_row(
    a: MatRef,
    rows: std::ops::Range<usize>,
    k: usize,
    k_steps: usize,
    rounding: Rounding,
    out: &mut [u16],
) {
    let parts = rounding.parts();
    // Steps outermost: a transposed `A` gathers each row's values from the
    // same 32 cache lines of a step, which stay in the first-level cache
    // for the tile's 16 rows.
    for step in 0..k_steps {
        for r in 0..TILE {
            for half in 0..2 {
                let j0 = step * K_STEP + half * TILE;
                let at = (step * parts * TILE + r) * K_STEP + half * TILE;
                let i = rows.start + r;
                // The row's 16 values, or the padding's zeros.
                let x = if i < rows.end && j0 < k {
                    // SAFETY: row `i` and column `j0` exist.
                    unsafe { load_row16(a, i, j0, k - j0) }
                } else {
                    _mm512_setzero_ps()
                };
                let hi = round16(x);
                // SAFETY: 16 bf16 at `at` (and, for `lo`, one tile further)
                // lie inside this tile row's span.
                unsafe {
                    _mm256_storeu_si256(out[at..at + TILE].as_mut_ptr().cast(), hi);
                    if rounding == Rounding::Split {
                        let lo = round16(_mm512_sub_ps(x, widen16(hi)));
                        let at = at + TILE_ELEMS;
                        _mm256_storeu_si256(out[at..at + TILE].as_mut_ptr().cast(), lo);
                    }
                }
            }
        }
    }
}

/// The panel of `B`'s columns `cols` (which may be fewer than 16 or none)
/// at every reduction step, zeros for the padding.
///
/// # Safety
/// AVX-512 with BF16; `b`'s elements exist; `out` is this panel's span.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_panel(b: MatRef, k: usize, cols: std::ops::Range<usize>, out: &mut [u16]) {
    let count = cols.len();
    // Interleaves two rows' 16 bf16 (low and high halves) into pairs.
    let pairs = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    if count == 0 {
        out.fill(0); // a padding panel
        return;
    }
    for pair in 0..k.div_ceil(2) {
        let i = 2 * pair;
        // SAFETY: row `i < k` exists, row `i + 1` when `i + 1 < k`.
        let (even, odd) = unsafe {
            let even = load_row16(b, i, cols.start, count);
            let odd = if i + 1 < k {
                load_row16(b, i + 1, cols.start, count)
            } else {
                _mm512_setzero_ps()
            };
            (even, odd)
        };
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(round16(even)), round16(odd));
        let interleaved = _mm512_permutexvar_epi16(pairs, both);
        let at = pair * 2 * TILE; // steps are consecutive 16-pair tiles
        // SAFETY: 32 bf16 at `at` lie inside the panel's span.
        unsafe { _mm512_storeu_si512(out[at..at + 2 * TILE].as_mut_ptr().cast(), interleaved) };
    }
    out[k.div_ceil(2) * 2 * TILE..].fill(0); // `k` padded to whole steps
}
