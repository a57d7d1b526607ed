//! What the CPU KD kernels ([`super::kd_flex`], [`super::kd_sparse_flex`])
//! share: logits read as stored, a row's maximum, and the gradient's
//! buffer.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, bf16, f16};
use half::slice::HalfFloatSliceExt;

/// Vector width the hot loops are written for (AVX2 f32).
const LANES: usize = 8;

/// Logits as stored on the host: read in place when f32, converted a row at
/// a time otherwise, so that no f32 copy of a whole f16 input is made.
#[derive(Clone, Copy)]
pub(super) enum Logits<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> Logits<'a> {
    pub(super) fn of(t: &'a FlexTensor) -> Self {
        let data = "contiguous logits";
        match t.dtype() {
            DType::F32 => Logits::F32(t.as_slice::<f32>().expect(data)),
            DType::F16 => Logits::F16(t.as_slice::<f16>().expect(data)),
            DType::BF16 => Logits::Bf16(t.as_slice::<bf16>().expect(data)),
            other => unreachable!("logits of dtype {other:?} are cast to f32 first"),
        }
    }

    /// Where row `n` is stored, for prefetching: `(first byte, bytes)`.
    pub(super) fn row_bytes(&self, n: usize, vocab: usize) -> (*const u8, usize) {
        let range = n * vocab..(n + 1) * vocab;
        match *self {
            Logits::F32(x) => (x[range].as_ptr().cast(), vocab * 4),
            Logits::F16(x) => (x[range].as_ptr().cast(), vocab * 2),
            Logits::Bf16(x) => (x[range].as_ptr().cast(), vocab * 2),
        }
    }

    /// Row `n` of `vocab` values as f32: borrowed when stored as f32,
    /// converted into `buf` otherwise.
    pub(super) fn row<'b>(&self, n: usize, vocab: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        let range = n * vocab..(n + 1) * vocab;
        match *self {
            Logits::F32(x) => &x[range],
            Logits::F16(x) => {
                x[range].convert_to_f32_slice(buf);
                buf
            }
            Logits::Bf16(x) => {
                x[range].convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

/// The largest value of `x` (-inf when empty).
#[inline(always)]
pub(super) fn row_max(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    for &v in chunks.remainder() {
        m[0] = if v > m[0] { v } else { m[0] };
    }
    m.into_iter()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// The tensor as contiguous host data in f32, f16 or bf16 (other float
/// dtypes are cast to f32); a copy only when the dtype or layout asks.
pub(super) fn host_logits(t: FlexTensor) -> FlexTensor {
    let t = match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => t,
        _ => Flex::float_cast(t, FloatDType::F32),
    };
    // `to_contiguous` shares the buffer when it can; dropping the original
    // handle keeps it uniquely owned for the in-place gradient.
    let contiguous = t.to_contiguous();
    drop(t);
    contiguous
}

/// A zeroed f32 buffer for the gradient. Buffers this large are fresh
/// mappings from the system allocator (glibc maps anything above 32 MiB);
/// first writes to them fault in 4 KiB pages at about 2 GB/s on a VM, which
/// costs more than the whole kernel. Asking for transparent huge pages cuts
/// the faults 512-fold; the hint changes no contents and is ignored where
/// unsupported.
pub(super) fn zeroed_gradient(len: usize) -> Vec<f32> {
    let grad = vec![0.0f32; len];
    #[cfg(target_os = "linux")]
    advise_huge_pages(&grad);
    grad
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(buf: &[f32]) {
    const MIN_BYTES: usize = 32 << 20;
    const HUGE: usize = 2 << 20;
    const MADV_HUGEPAGE: std::ffi::c_int = 14;
    unsafe extern "C" {
        fn madvise(
            addr: *mut std::ffi::c_void,
            len: usize,
            advice: std::ffi::c_int,
        ) -> std::ffi::c_int;
    }
    let bytes = std::mem::size_of_val(buf);
    if bytes < MIN_BYTES {
        return;
    }
    let begin = (buf.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (buf.as_ptr() as usize + bytes) / HUGE * HUGE;
    if end > begin {
        // SAFETY: the range lies inside `buf`'s allocation, and
        // MADV_HUGEPAGE only changes how its pages are backed, not their
        // contents; the result is ignored (it is a hint).
        unsafe {
            madvise(begin as *mut std::ffi::c_void, end - begin, MADV_HUGEPAGE);
        }
    }
}
