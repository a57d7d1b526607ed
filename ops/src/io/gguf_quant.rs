//! f32 to GGUF tensor data: the plain float types and the Q8_0 and Q4_0
//! blocks, rounded exactly as ggml's reference quantizers
//! (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`) round them, so a file
//! we write holds the bytes llama.cpp's own conversion would.

use anyhow::{Result, bail};
use half::{bf16, f16};
use rayon::prelude::*;

use super::gguf::GgmlType;

/// Blocks per parallel task (a few thousand elements each).
const BLOCKS_PER_TASK: usize = 256;

/// The tensor data of `values` (a whole number of blocks) as `ty`.
pub fn encode(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let kernel: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => |x, o| o.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, o| o.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        GgmlType::BF16 => |x, o| o.copy_from_slice(&bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q4_0 => block_q4_0,
        other => bail!("writing {other} tensors is not supported"),
    };
    let (bs, tb) = (ty.block_size(), ty.block_bytes());
    if !values.len().is_multiple_of(bs) {
        bail!(
            "{} values are not a whole number of {ty} blocks of {bs}",
            values.len()
        );
    }
    let mut out = vec![0u8; values.len() / bs * tb];
    out.par_chunks_mut(BLOCKS_PER_TASK * tb)
        .zip(values.par_chunks(BLOCKS_PER_TASK * bs))
        .for_each(|(o, x)| {
            for (ob, xb) in o.chunks_exact_mut(tb).zip(x.chunks_exact(bs)) {
                kernel(xb, ob);
            }
        });
    Ok(out)
}

/// The scale and its reciprocal (0 for an all-zero block, as in ggml).
fn scale(d: f32) -> (f16, f32) {
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    (f16::from_f32(d), inverse)
}

/// Q8_0: d = max|x| / 127, q = round(x / d), stored as f16 d and 32 bytes.
fn block_q8_0(x: &[f32], o: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, id) = scale(amax / 127.0);
    o[..2].copy_from_slice(&d.to_le_bytes());
    for (q, &v) in o[2..].iter_mut().zip(x) {
        // `round` rounds halves away from zero, as C's roundf.
        *q = ((v * id).round() as i8) as u8;
    }
}

/// Q4_0: d = (the value of largest magnitude) / -8, nibble = min(15,
/// trunc(x / d + 8.5)); low nibbles hold elements 0..16, high ones 16..32.
fn block_q4_0(x: &[f32], o: &mut [u8]) {
    let extreme = x
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let (d, id) = scale(extreme / -8.0);
    o[..2].copy_from_slice(&d.to_le_bytes());
    let nibble = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        o[2 + j] = nibble(x[j]) | (nibble(x[16 + j]) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequantize_blocks;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::new(seed);
        (0..n)
            .map(|_| (rng.next_f64() as f32 - 0.5) * 0.1)
            .collect()
    }

    #[test]
    fn plain_types_round_trip_through_the_reader() {
        let x = random(96, 1);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let back = dequantize_blocks(ty, &encode(ty, &x).unwrap()).unwrap();
            for (a, b) in x.iter().zip(&back) {
                let tol = if ty == GgmlType::F32 {
                    0.0
                } else {
                    4e-3 * a.abs()
                };
                assert!((a - b).abs() <= tol, "{ty}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn quantized_blocks_decode_within_their_step() {
        let x = random(32 * 40, 2);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
            let bytes = encode(ty, &x).unwrap();
            assert_eq!(bytes.len(), 40 * ty.block_bytes());
            let back = dequantize_blocks(ty, &bytes).unwrap();
            for (block, decoded) in x.chunks(32).zip(back.chunks(32)) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Q8_0 rounds to the nearest of +-127 steps: half a step.
                // Q4_0 spans -8 to +7 steps with the extreme at -8, so the
                // other end is clamped: up to a whole step there.
                let tol = match ty {
                    GgmlType::Q8_0 => 0.5 * amax / 127.0,
                    _ => amax / 8.0,
                };
                for (a, b) in block.iter().zip(decoded) {
                    // Plus the f16 rounding of the scale.
                    assert!((a - b).abs() <= tol + 2e-3 * amax, "{ty}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q4_0_maps_the_extreme_to_minus_eight_and_zero_blocks_to_zero() {
        let mut x = vec![0.0f32; 32];
        x[3] = -2.0;
        x[20] = 1.0;
        let bytes = encode(GgmlType::Q4_0, &x).unwrap();
        // d = -2 / -8 = 0.25; -2 -> -8 + 8.5 -> 0, 1 -> 4 + 8.5 -> 12, 0 -> 8.
        assert_eq!(f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(), 0.25);
        assert_eq!(bytes[2 + 3] & 0x0f, 0);
        assert_eq!(bytes[2 + 4] >> 4, 12);
        assert_eq!(bytes[2] & 0x0f, 8);
        let zeros = encode(GgmlType::Q8_0, &[0.0; 32]).unwrap();
        assert!(zeros.iter().all(|&b| b == 0));
    }

    #[test]
    fn partial_blocks_and_unwritable_types_are_refused() {
        let err = encode(GgmlType::Q8_0, &[0.0; 33]).unwrap_err();
        assert!(err.to_string().contains("33 values"), "{err}");
        let err = encode(GgmlType::Q4_K, &[0.0; 256]).unwrap_err();
        assert!(err.to_string().contains("Q4_K"), "{err}");
    }
}
