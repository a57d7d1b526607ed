//! Matrix products on Intel AMX tiles: bf16 operands, f32 accumulation.
//!
//! `C [m, n] = A [m, k] B [k, n]` with f32 `A` (activations) and `B`
//! (weights) of any strides, and f32 `C`. Each product of 16 x 32 by 32 x 16
//! bf16 tiles is one `tdpbf16ps`, which sums its 32 products per output in
//! f32.
//!
//! `B` is rounded to bf16 (nearest even). `A` is carried as two bf16 parts
//! `A = hi + lo` (`hi` its rounding, `lo` what that left out), both
//! multiplied by `B`: about 16 bits of mantissa for the activations, for
//! twice the tile products (the `B` tiles are loaded once for both parts).
//! On SmolLM2-135M, rounding the activations once moved the logits by
//! 1.3e-2 of the largest (over the 1e-2 tolerance), and carrying only the
//! inputs of some products wide (`down_proj`; `down_proj` and `o_proj`)
//! 1.0e-2 and 1.4e-2; with every product's wide, 0.8e-2.
//!
//! Packing: `A` row-major as `[hi | lo]` rows of `2 k_pad` (`k` padded to
//! a multiple of 32, `m` to a multiple of 32, zeros); `B` in panels of 16 columns, each the rows-of-pairs layout
//! `tdpbf16ps` reads (row `r` holds `B[2r, j]`, `B[2r + 1, j]` for the
//! panel's 16 `j`), zeros past `k` and `n`.
//!
//! Work: rayon tasks over blocks of 32 columns; in each, every block of 32
//! rows keeps its four 16 x 16 accumulator tiles in `tmm0-3` while the
//! reduction walks `k_pad` 32 at a time (`tmm4-5` rows of `A`, `tmm6-7`
//! panels of `B`). Tiles that lie wholly inside `C` are stored to it
//! directly, edge tiles through a scratch tile.
//!
//! AMX needs the CPU (`amx-tile`, `amx-bf16`) and the kernel's permission
//! for the process's tile data (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`);
//! [`available`] checks both once. The tile instructions are written as
//! inline assembly, since their intrinsics are not stable Rust.

use rayon::prelude::*;
use std::arch::asm;

/// Rows and columns of one accumulator tile (f32).
const TILE: usize = 16;
/// bf16 values a tile row holds: the reduction step.
const K_STEP: usize = 32;
/// Rows and columns of `C` one block of four tiles covers.
const BLOCK: usize = 2 * TILE;

/// An f32 matrix in memory: element `(i, j)` at `data[i * row + j * col]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub col: usize,
}

impl MatRef<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row + j * self.col]
    }
}

/// Whether this CPU and kernel run AMX bf16 tiles (checked once; the first
/// call asks the kernel for the tile-data permission).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_amx_bf16() && request_tile_permission())
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN); branch-free, so
/// that the packing loops vectorize.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if x.is_nan() { quiet_nan } else { rounded }
}

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

/// `A` packed: `[m_pad, 2 k_pad]` bf16, rows of the values rounded to
/// bf16 followed by what the rounding left out (also in bf16).
fn pack_a(a: MatRef, m: usize, k: usize, m_pad: usize, k_pad: usize) -> Vec<u16> {
    let mut packed = vec![0u16; m_pad * 2 * k_pad];
    packed
        .par_chunks_mut(2 * k_pad)
        .take(m)
        .enumerate()
        .for_each(|(i, row)| {
            let (hi, lo) = row.split_at_mut(k_pad);
            if a.col == 1 {
                simd::split_row(&a.data[i * a.row..][..k], &mut hi[..k], &mut lo[..k]);
            } else {
                for j in 0..k {
                    let x = a.at(i, j);
                    hi[j] = bf16(x);
                    lo[j] = bf16(x - widen(hi[j]));
                }
            }
        });
    packed
}

/// bf16 to f32 (exact).
#[inline(always)]
fn widen(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// `hi[j] = bf16(src[j])`, `lo[j] = bf16(src[j] - hi[j])`.
#[inline(always)]
fn split_row(src: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    for ((h, l), &x) in hi.iter_mut().zip(lo.iter_mut()).zip(src) {
        *h = bf16(x);
        *l = bf16(x - widen(*h));
    }
}

/// The packing loops compiled for the CPU's vector tier.
mod simd {
    use crate::kernels::cpu_dispatch::dispatch;

    dispatch! {
        /// [`super::split_row`].
        fn split_row(src: &[f32], hi: &mut [u16], lo: &mut [u16]) -> () = super::split_row;
    }
}

/// `B` packed in panels of 16 columns, each `[k_pad / 2, 16, 2]` bf16.
fn pack_b(b: MatRef, k: usize, n: usize, k_pad: usize, n_pad: usize) -> Vec<u16> {
    let panel = k_pad * TILE;
    let mut packed = vec![0u16; n_pad / TILE * panel];
    packed
        .par_chunks_mut(panel)
        .enumerate()
        .for_each(|(p, out)| {
            let cols = p * TILE..((p + 1) * TILE).min(n);
            for i in 0..k {
                let row = &mut out[(i / 2) * 2 * TILE + i % 2..];
                for (jj, j) in cols.clone().enumerate() {
                    row[jj * 2] = bf16(b.at(i, j));
                }
            }
        });
    packed
}

/// A pointer that rayon tasks share; each writes its own columns.
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

/// `B` packed once for any number of products: the weights.
pub struct PackedB {
    data: Vec<u16>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `b: [k, n]`.
    pub fn new(b: MatRef, k: usize, n: usize) -> Self {
        let data = pack_b(
            b,
            k,
            n,
            k.next_multiple_of(K_STEP),
            n.next_multiple_of(BLOCK),
        );
        Self { data, k, n }
    }

    /// Columns of the product.
    pub fn n(&self) -> usize {
        self.n
    }
}

/// `c = a b` with `b` packed; `a` is `[m, b.k]`, `c` `[m, b.n]` row-major.
///
/// Panics unless [`available`].
pub fn gemm_bf16_packed(m: usize, a: MatRef, b: &PackedB, c: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    assert!(
        available(),
        "AMX bf16 tiles are not available on this machine"
    );
    assert_eq!(
        c.len(),
        m * n,
        "AMX gemm: output of {} for [{m}, {n}]",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let (m_pad, k_pad, n_pad) = (
        m.next_multiple_of(BLOCK),
        k.next_multiple_of(K_STEP),
        n.next_multiple_of(BLOCK),
    );
    let a = pack_a(a, m, k, m_pad, k_pad);
    let out = Shared(c.as_mut_ptr());
    (0..n_pad / BLOCK).into_par_iter().for_each(|cb| {
        // SAFETY: AMX is available (asserted above); every tile load reads
        // inside the packed buffers, and the tile stores write only elements
        // of `c` in this task's columns.
        unsafe { column_block(&a, &b.data, k_pad, m_pad, cb, out.get(), m, n) };
    });
}

/// One block of 32 columns, every row block.
///
/// # Safety
/// AMX must be available; `out` is `[m, n]`.
#[allow(clippy::too_many_arguments)]
unsafe fn column_block(
    a: &[u16],
    b: &[u16],
    k_pad: usize,
    m_pad: usize,
    cb: usize,
    out: *mut f32,
    m: usize,
    n: usize,
) {
    let a_width = 2 * k_pad; // bf16 per packed row of A: [hi | lo]
    let a_stride = a_width * 2; // bytes
    let panel = k_pad * TILE; // bf16 per panel of B
    let b0 = b[2 * cb * panel..].as_ptr();
    let b1 = b[(2 * cb + 1) * panel..].as_ptr();
    let mut scratch = [0f32; TILE * TILE];
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
        for rb in 0..m_pad / BLOCK {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let a0 = a[rb * BLOCK * a_width..].as_ptr();
            let a1 = a[(rb * BLOCK + TILE) * a_width..].as_ptr();
            for kk in (0..k_pad).step_by(K_STEP) {
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kk),
                    a1 = in(reg) a1.add(kk),
                    b0 = in(reg) b0.add(kk * TILE),
                    b1 = in(reg) b1.add(kk * TILE),
                    sa = in(reg) a_stride,
                    sb = in(reg) 2 * TILE * 2,
                    options(nostack, readonly),
                );
                // The low parts against the same B tiles, still loaded.
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(k_pad + kk),
                    a1 = in(reg) a1.add(k_pad + kk),
                    sa = in(reg) a_stride,
                    options(nostack, readonly),
                );
            }
            let (row, col) = (rb * BLOCK, cb * BLOCK);
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
            store!("0", row, col);
            store!("1", row, col + TILE);
            store!("2", row + TILE, col);
            store!("3", row + TILE, col + TILE);
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
