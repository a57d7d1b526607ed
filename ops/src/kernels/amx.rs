//! Matrix products on Intel AMX tiles: bf16 operands, f32 accumulation.
//!
//! `C [m, n] = A [m, k] B [k, n]` with f32 `A`, `B` of any strides (packed
//! to bf16 by `amx_pack`, which says how each is rounded) and f32 `C`. Each
//! product of 16 x 32 by 32 x 16 bf16 tiles is one `tdpbf16ps`, which sums
//! its 32 products per output in f32.
//!
//! `A` is rounded once (mixed-precision training's arithmetic) or carried
//! as two bf16 parts `hi + lo`, both multiplied by the same `B` tiles:
//! about 16 bits of mantissa for twice the tile products. On SmolLM2-135M,
//! rounding the activations once moved the logits by 1.3e-2 of the largest
//! (over inference's 1e-2 tolerance), and carrying only the inputs of some
//! products wide (`down_proj`; `down_proj` and `o_proj`) 1.0e-2 and 1.4e-2;
//! with every product's wide, 0.8e-2: inference splits every `A`.
//!
//! Work: each block of 32 x 32 outputs keeps its four 16 x 16 accumulator
//! tiles in `tmm0-3` while the reduction walks one chunk of `k` (`tmm4-5`
//! rows of `A`, `tmm6-7` panels of `B`), then adds them to `C`. Rayon tasks
//! take the blocks of the larger operand (32 rows of `A`, or 32 columns of
//! `B`), so that it streams through once, chunk by chunk, while the chunk
//! of the smaller one stays in cache for every block of the task. Tiles
//! that lie wholly inside `C` are loaded and stored in place, edge tiles
//! through a scratch tile.
//!
//! AMX needs the CPU (`amx-tile`, `amx-bf16`, and AVX-512 with BF16 for
//! the packing) and the kernel's permission for the process's tile data
//! (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] checks both
//! once. The tile instructions are written as inline assembly, since their
//! intrinsics are not stable Rust.

pub use super::amx_cpu::available;
use super::amx_pack::{BLOCK, K_STEP, TILE};
pub use super::amx_pack::{MatRef, PackedA, PackedB, Rounding};
use rayon::prelude::*;
use std::arch::asm;

/// Reduction steps per chunk: 16 (512 of `k`), so that a block's chunk of
/// `A` or `B` (32 x 512 bf16, 32 KiB) stays in the first-level cache.
const CHUNK_STEPS: usize = 16;

/// The tile configuration: palette 1, tiles 0-7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// A pointer that rayon tasks share; each writes its own blocks.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the tasks write disjoint elements.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the `Sync` wrapper
    /// and not the bare pointer).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `a b`, a new row-major `[a.m, b.n]` buffer.
///
/// Panics unless [`available`] and the shapes agree.
pub fn product(a: &PackedA, b: &PackedB) -> Vec<f32> {
    let len = a.m * b.n;
    let mut c = Vec::with_capacity(len);
    // SAFETY: `gemm` writes every element before anything reads one (and
    // f32 has no invalid bit patterns either way), so no pass zeroes it.
    #[allow(clippy::uninit_vec)]
    unsafe {
        c.set_len(len)
    };
    gemm(a, b, &mut c);
    c
}

/// `c = a b`, `c` `[a.m, b.n]` row-major (overwritten).
///
/// Panics unless [`available`] and the shapes agree.
fn gemm(a: &PackedA, b: &PackedB, c: &mut [f32]) {
    assert!(
        available(),
        "AMX bf16 tiles are not available on this machine"
    );
    assert_eq!(a.k, b.k, "AMX gemm: A has {} columns, B {} rows", a.k, b.k);
    let (m, n) = (a.m, b.n);
    assert_eq!(
        c.len(),
        m * n,
        "AMX gemm: output of {} for [{m}, {n}]",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if a.k == 0 {
        c.fill(0.0);
        return;
    }
    let chunks = a.k_steps.div_ceil(CHUNK_STEPS);
    let chunk_steps = a.k_steps.div_ceil(chunks);
    let (row_blocks, col_blocks) = (m.div_ceil(BLOCK), n.div_ceil(BLOCK));
    let by_rows = m >= n; // A is the larger operand: tasks take its blocks
    let (outer, inner) = if by_rows {
        (row_blocks, col_blocks)
    } else {
        (col_blocks, row_blocks)
    };
    let out = Shared(c.as_mut_ptr());
    let shape = Shape { m, n };
    let blocks = Blocks {
        by_rows,
        inner,
        chunks,
        chunk_steps,
    };
    (0..outer).into_par_iter().for_each(|o| {
        // SAFETY: AMX is available (asserted above); `out` is `[m, n]`, and
        // a task writes only its own blocks.
        unsafe { task(a, b, o, blocks, out.get(), shape) };
    });
}

/// How [`gemm`] splits the output among tasks.
#[derive(Clone, Copy)]
struct Blocks {
    /// Whether a task takes a block of rows (else of columns).
    by_rows: bool,
    /// Blocks of the other axis each task walks.
    inner: usize,
    chunks: usize,
    chunk_steps: usize,
}

/// One task of [`gemm`]: the output blocks in row (or column) block `o`.
///
/// # Safety
/// AMX is available; `out` is `[m, n]`.
#[inline(never)]
unsafe fn task(a: &PackedA, b: &PackedB, o: usize, blocks: Blocks, out: *mut f32, shape: Shape) {
    // SAFETY: every tile load reads inside the packed buffers
    // (`PackedA::tile`, `PackedB::tile` check their spans), and the stores
    // write only the elements of `c` in this task's blocks.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
        for chunk in 0..blocks.chunks {
            let steps =
                chunk * blocks.chunk_steps..((chunk + 1) * blocks.chunk_steps).min(a.k_steps);
            for i in 0..blocks.inner {
                let (rb, cb) = if blocks.by_rows { (o, i) } else { (i, o) };
                block(a, b, rb, cb, steps.clone(), chunk > 0, out, shape);
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The output's shape.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
}

/// The 32 x 32 block `(rb, cb)` of `c` over reduction steps `steps`, added
/// to what `c` holds when `accumulate`, else written.
///
/// # Safety
/// AMX is available and the tile configuration loaded; `out` is `[m, n]`.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    a: &PackedA,
    b: &PackedB,
    rb: usize,
    cb: usize,
    steps: std::ops::Range<usize>,
    accumulate: bool,
    out: *mut f32,
    Shape { m, n }: Shape,
) {
    let mut scratch = [0f32; TILE * TILE];
    let (row, col) = (rb * BLOCK, cb * BLOCK);
    // A tile of `c` at (r, c): in place when whole, else through `scratch`.
    macro_rules! load {
        ($tile:literal, $r:expr, $c:expr) => {{
            let (r, c) = ($r, $c);
            if !accumulate || r >= m || c >= n {
                asm!(concat!("tilezero tmm", $tile), options(nostack, nomem));
            } else if r + TILE <= m && c + TILE <= n {
                asm!(concat!("tileloadd tmm", $tile, ", [{p} + {s}*1]"), p = in(reg) out.add(r * n + c), s = in(reg) n * 4, options(nostack, readonly));
            } else {
                scratch.fill(0.0);
                for i in 0..TILE.min(m - r) {
                    for j in 0..TILE.min(n - c) {
                        scratch[i * TILE + j] = *out.add((r + i) * n + c + j);
                    }
                }
                asm!(concat!("tileloadd tmm", $tile, ", [{p} + {s}*1]"), p = in(reg) scratch.as_ptr(), s = in(reg) TILE * 4, options(nostack, readonly));
            }
        }};
    }
    macro_rules! store {
        ($tile:literal, $r:expr, $c:expr) => {{
            let (r, c) = ($r, $c);
            if r + TILE <= m && c + TILE <= n {
                asm!(concat!("tilestored [{p} + {s}*1], tmm", $tile), p = in(reg) out.add(r * n + c), s = in(reg) n * 4, options(nostack));
            } else if r < m && c < n {
                asm!(concat!("tilestored [{p} + {s}*1], tmm", $tile), p = in(reg) scratch.as_mut_ptr(), s = in(reg) TILE * 4, options(nostack));
                for i in 0..TILE.min(m - r) {
                    for j in 0..TILE.min(n - c) {
                        *out.add((r + i) * n + c + j) = scratch[i * TILE + j];
                    }
                }
            }
        }};
    }
    // SAFETY: the caller's contract; tile pointers come from the packed
    // operands' own bounds-checked accessors.
    unsafe {
        load!("0", row, col);
        load!("1", row, col + TILE);
        load!("2", row + TILE, col);
        load!("3", row + TILE, col + TILE);
        for step in steps {
            asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.tile(2 * rb, step, 0),
                a1 = in(reg) a.tile(2 * rb + 1, step, 0),
                b0 = in(reg) b.tile(2 * cb, step),
                b1 = in(reg) b.tile(2 * cb + 1, step),
                s = in(reg) 2 * K_STEP,
                options(nostack, readonly),
            );
            if a.parts == 2 {
                // The low parts against the same B tiles, still loaded.
                asm!(
                    "tileloadd tmm4, [{a0} + {s}*1]",
                    "tileloadd tmm5, [{a1} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.tile(2 * rb, step, 1),
                    a1 = in(reg) a.tile(2 * rb + 1, step, 1),
                    s = in(reg) 2 * K_STEP,
                    options(nostack, readonly),
                );
            }
        }
        store!("0", row, col);
        store!("1", row, col + TILE);
        store!("2", row + TILE, col);
        store!("3", row + TILE, col + TILE);
    }
}
