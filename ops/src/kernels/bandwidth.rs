//! Timings for `distillery bench importance` and `bench kd`: the channel
//! statistics on a given shape (the CPU twin or a device kernel), and the
//! memory bandwidth to compare them with. Not tests: figures depend on the
//! machine and its load.

use super::importance::{Aggregation, ChannelStats, ImportanceOps};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Instant;

/// Inputs the benches cycle through are at least this large together, so that
/// they are read from memory and not from the last-level cache.
const WORKING_SET_BYTES: usize = 256 << 20;

/// The tensor a device's copy bandwidth is measured on: larger than any
/// GPU's last-level cache (50 MB on an H100), and small enough for wgpu,
/// which fails to allocate one of 256 MiB.
pub const DEVICE_COPY_BYTES: usize = 128 << 20;

/// What one timing measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Wall time of all iterations.
    pub seconds: f64,
    /// Bytes of input read in that time.
    pub bytes_read: u64,
}

impl Throughput {
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes_read as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// Deterministic filler in [-1, 1) (xorshift), so benches need no RNG crate.
fn fill(buf: &mut [f32], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for v in buf {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *v = (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    }
}

/// Times `iters` hook calls of the channel statistics on backend `B`
/// (through the same [`ChannelStats::add`] the op uses) on `[b, s, c]` f32
/// inputs, cycling through enough distinct inputs to exceed the caches, and
/// reading the accumulators back once at the end (which waits for the
/// device). One untimed warm-up call first.
pub fn bench_channel_stats<B: ImportanceOps>(
    device: &B::Device,
    [b, s, c]: [usize; 3],
    seq_agg: Aggregation,
    iters: usize,
) -> Throughput {
    let len = b * s * c;
    let bytes = len * 4;
    let copies = WORKING_SET_BYTES.div_ceil(bytes.max(1)).clamp(1, 64);
    let inputs: Vec<Tensor<B, 3>> = (0..copies)
        .map(|i| {
            let mut x = vec![0.0f32; len];
            fill(&mut x, i as u64 + 1);
            Tensor::from_data(TensorData::new(x, [b, s, c]), device)
        })
        .collect();
    let mut stats = ChannelStats::<B>::new(c, seq_agg, device);
    stats.add(inputs[0].clone());
    black_box(stats.sums());
    let start = Instant::now();
    for i in 0..iters {
        stats.add(inputs[i % copies].clone());
    }
    black_box(stats.sums());
    Throughput {
        seconds: start.elapsed().as_secs_f64(),
        bytes_read: (bytes * iters) as u64,
    }
}

/// A device's copy bandwidth in bytes/s, counting the bytes read and
/// written: the best of 5 elementwise passes over a [`DEVICE_COPY_BYTES`]
/// f32 tensor (after one warm-up), each waited for. An error where the
/// passes did not run: a device that fails to allocate their tensors goes
/// on without them, and their times would be nothing.
pub fn measure_device_copy_bandwidth<B: Backend>(device: &B::Device) -> Result<f64, String> {
    const FACTOR: f32 = 1.0001;
    let len = DEVICE_COPY_BYTES / 4;
    let x = Tensor::<B, 1>::ones([len], device);
    let mut best = f64::INFINITY;
    let mut last = None;
    for pass in 0..6 {
        let _ = B::sync(device);
        let start = Instant::now();
        let y = x.clone().mul_scalar(FACTOR);
        let _ = B::sync(device);
        if pass > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
        last = Some(y);
    }
    let last = last.expect("six passes ran");
    let tail = last
        .narrow(0, len - 1, 1)
        .try_into_data()
        .map_err(|e| format!("the copy-bandwidth passes failed on the device: {e:?}"))?
        .to_vec::<f32>()
        .map_err(|e| format!("the copy-bandwidth result read back as {e:?}"))?;
    if tail != [FACTOR] {
        return Err(format!(
            "the copy-bandwidth passes wrote {tail:?} where they should have written {FACTOR}"
        ));
    }
    Ok(2.0 * DEVICE_COPY_BYTES as f64 / best)
}

/// The machine's memory read bandwidth in bytes/s: every thread sums its
/// share of a 256 MiB buffer (best of a few passes after a warm-up).
pub fn measure_copy_bandwidth() -> f64 {
    let len = WORKING_SET_BYTES / 8;
    let mut buf = vec![0u64; len];
    buf.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(i, chunk)| chunk.iter_mut().for_each(|v| *v = i as u64));
    let threads = rayon::current_num_threads().max(1);
    let part = len.div_ceil(threads * 8);
    let mut best = 0.0f64;
    for pass in 0..6 {
        let start = Instant::now();
        let sum: u64 = buf.par_chunks(part).map(read_sum).sum();
        let seconds = start.elapsed().as_secs_f64();
        black_box(sum);
        if pass > 0 {
            best = best.max(WORKING_SET_BYTES as f64 / seconds);
        }
    }
    best
}

/// Wrapping sum in 8 independent lanes (vectorizes; bound by memory).
fn read_sum(chunk: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = chunk.chunks_exact(8);
    for block in &mut blocks {
        for l in 0..8 {
            lanes[l] = lanes[l].wrapping_add(block[l]);
        }
    }
    let tail: u64 = blocks.remainder().iter().fold(0, |a, &v| a.wrapping_add(v));
    lanes.iter().fold(tail, |a, &v| a.wrapping_add(v))
}
