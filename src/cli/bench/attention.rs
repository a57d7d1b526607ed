//! `bench attention`: the causal grouped-query attention op alone, forward
//! and forward with backward, as the model's layers call it, with the
//! throughput its useful FLOPs give. Beside PyTorch's
//! `scaled_dot_product_attention` on the same shapes
//! (scripts/bench_attention_torch.py), it says how far the attention
//! kernels are from a flash attention, and with a profile of the training
//! step, whether attention is what holds the step back.

use super::{DeviceArg, is_cpu, on_bench_device, time_steps};
use clap::Args;
use distillery_ops::backend::{ComputeBackend, OnBackend};
use std::time::Instant;

#[derive(Args)]
pub struct AttentionArgs {
    /// Sequences per call.
    #[arg(long, default_value_t = 32)]
    rows: usize,
    /// Positions per sequence (queries and keys alike).
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Query heads (SmolLM2-135M's 9 by default).
    #[arg(long, default_value_t = 9)]
    heads: usize,
    /// Key/value heads; the query heads share them evenly.
    #[arg(long, default_value_t = 3)]
    kv_heads: usize,
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Timed calls of each kind (after two untimed ones).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// `f32`, or `bf16`: 16-bit operands on the device's fast path where
    /// it has one for attention (tensor cores on CUDA); said in the output.
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: distillery_ops::kernels::Precision,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

/// The useful FLOPs of one causal attention forward: `q k^T` and `p v`
/// over the `seq (seq + 1) / 2` visible (query, key) pairs of each row and
/// head, two FLOPs per multiply-add. The backward does 2.5 times as much
/// (the scores recomputed, then `dp`, `dv`, `dq` and `dk`), the usual
/// accounting for flash attention.
pub fn forward_flops(rows: usize, seq: usize, heads: usize, head_dim: usize) -> f64 {
    let pairs = (seq * (seq + 1) / 2) as f64;
    2.0 * 2.0 * pairs * (rows * heads * head_dim) as f64
}

pub fn attention(args: AttentionArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.seq > 0 && args.head_dim > 0,
        "--rows, --seq and --head-dim must be positive"
    );
    anyhow::ensure!(
        args.kv_heads > 0 && args.heads.is_multiple_of(args.kv_heads),
        "--heads ({}) must be a positive multiple of --kv-heads ({})",
        args.heads,
        args.kv_heads
    );
    on_bench_device(args.device, AttentionBench { args: &args })
}

struct AttentionBench<'a> {
    args: &'a AttentionArgs,
}

impl OnBackend for AttentionBench<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        attention_on::<B>(device, self.args)
    }
}

fn attention_on<B: ComputeBackend>(device: B::Device, args: &AttentionArgs) -> anyhow::Result<()> {
    use burn::backend::Autodiff;
    use burn::tensor::{Tensor, TensorData};
    use distillery_ops::kernels::causal_attention_in;
    let (rows, seq, heads, kv, d) = (
        args.rows,
        args.seq,
        args.heads,
        args.kv_heads,
        args.head_dim,
    );
    let sync = |device: &B::Device| B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));

    // Uniform in [-1, 1), as scripts/bench_attention_torch.py draws them.
    let mut rng = distillery_ops::rng::SplitMix64::new(3);
    let mut draw = |h: usize| -> TensorData {
        let values: Vec<f32> = (0..rows * seq * h * d)
            .map(|_| (2.0 * rng.next_f64() - 1.0) as f32)
            .collect();
        TensorData::new(values, [rows, seq, h, d])
    };
    let (q, k, v, dout) = (draw(heads), draw(kv), draw(kv), draw(heads));

    // The forward alone, as the teacher and evaluation call it.
    let (qi, ki, vi) = (
        Tensor::<B, 4>::from_data(q.clone(), &device),
        Tensor::<B, 4>::from_data(k.clone(), &device),
        Tensor::<B, 4>::from_data(v.clone(), &device),
    );
    let forward = || -> anyhow::Result<f64> {
        sync(&device)?;
        let started = Instant::now();
        let out = causal_attention_in(qi.clone(), ki.clone(), vi.clone(), args.precision);
        sync(&device)?;
        let seconds = started.elapsed().as_secs_f64();
        drop(out);
        Ok(seconds)
    };
    let (forward_median, forward_min) = time_steps(args.repeats, forward)?;

    // Forward and backward, as a training step runs it: `sum(out * dout)`
    // makes `dout` the output's gradient.
    let q = Tensor::<Autodiff<B>, 4>::from_data(q, &device).require_grad();
    let k = Tensor::<Autodiff<B>, 4>::from_data(k, &device).require_grad();
    let v = Tensor::<Autodiff<B>, 4>::from_data(v, &device).require_grad();
    let dout = Tensor::<Autodiff<B>, 4>::from_data(dout, &device);
    let training = || -> anyhow::Result<f64> {
        sync(&device)?;
        let started = Instant::now();
        let out = causal_attention_in(q.clone(), k.clone(), v.clone(), args.precision);
        let grads = (out * dout.clone()).sum().backward();
        let gradients = [q.grad(&grads), k.grad(&grads), v.grad(&grads)];
        sync(&device)?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            gradients.iter().all(Option::is_some),
            "the backward gave no gradient to q, k or v"
        );
        Ok(seconds)
    };
    let (training_median, training_min) = time_steps(args.repeats, training)?;

    let flops = forward_flops(rows, seq, heads, d);
    let where_ = if is_cpu::<B>() {
        format!("{} threads", rayon::current_num_threads())
    } else {
        "GPU".to_string()
    };
    let arithmetic = B::attention_arithmetic(&device, [seq, seq, d], args.precision);
    println!(
        "causal attention, {rows} x {seq} positions, {heads} query heads on {kv} key/value heads of {d}, {arithmetic}, {where_}"
    );
    let line = |what: &str, median: f64, min: f64, flops: f64| {
        println!(
            "{what}: {:.3} ms (min {:.3} ms), {:.3} TFLOP/s of {:.3} GFLOP",
            median * 1e3,
            min * 1e3,
            flops / median / 1e12,
            flops / 1e9
        );
    };
    line("forward", forward_median, forward_min, flops);
    line(
        "forward + backward",
        training_median,
        training_min,
        3.5 * flops,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::forward_flops;

    #[test]
    fn the_forward_counts_two_products_over_the_visible_pairs() {
        // One row, one head, head size 1, three positions: 1 + 2 + 3 = 6
        // visible pairs, two products, two FLOPs each.
        assert_eq!(forward_flops(1, 3, 1, 1), 24.0);
        // Linear in rows, heads and head size.
        assert_eq!(forward_flops(2, 3, 3, 4), 24.0 * 24.0);
    }
}
