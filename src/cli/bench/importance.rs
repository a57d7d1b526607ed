//! `bench importance`: the importance op's per-hook reduction (channel
//! statistics) against the memory bandwidth measured in the same run.

use super::{DeviceArg, is_cpu, on_bench_device};
use clap::Args;
use distillery_ops::backend::{ComputeBackend, OnBackend};

#[derive(Args)]
pub struct ImportanceArgs {
    /// Hook calls timed for the smallest default shape (fewer for larger
    /// inputs, in proportion to their size).
    #[arg(long, default_value_t = 40)]
    iters: usize,
    /// Activation shapes to time, as BATCHxSEQxCHANNELS (repeat the flag for
    /// several); default: 8x512x1536, 1x4096x4096 and 1x4096x14336.
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<[usize; 3]>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// First compare the kernels with the float64 oracle, and fail when
    /// they are off.
    #[arg(long)]
    check: bool,
}

/// The activations `bench importance` times by default: a SmolLM2-sized FFN
/// input for a batch of 8, and Llama-3.1-8B's hidden and FFN widths for one
/// long sequence.
const DEFAULT_IMPORTANCE_SHAPES: [[usize; 3]; 3] =
    [[8, 512, 1536], [1, 4096, 4096], [1, 4096, 14336]];

/// `BATCHxSEQxCHANNELS`, each at least 1.
fn parse_shape(text: &str) -> Result<[usize; 3], String> {
    let dims: Vec<usize> = text
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("`{text}` is not a shape like 8x512x1536"))?;
    match dims[..] {
        [b, s, c] if b > 0 && s > 0 && c > 0 => Ok([b, s, c]),
        [_, _, _] => Err(format!("`{text}`: every dimension must be at least 1")),
        _ => Err(format!(
            "`{text}` is not a shape like 8x512x1536 (batch x sequence x channels)"
        )),
    }
}

/// Times the channel statistics (the importance op's per-hook reduction)
/// on the chosen device and compares the bytes it reads per second with the
/// memory bandwidth measured in the same run: a plain read on all threads
/// on the CPU, an elementwise copy on a GPU.
pub fn importance(args: ImportanceArgs) -> anyhow::Result<()> {
    on_bench_device(args.device, ImportanceBench { args: &args })
}

struct ImportanceBench<'a> {
    args: &'a ImportanceArgs,
}

impl OnBackend for ImportanceBench<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        importance_on::<B>(device, self.args)
    }
}

fn importance_on<B: ComputeBackend>(
    device: B::Device,
    args: &ImportanceArgs,
) -> anyhow::Result<()> {
    use distillery_ops::kernels::bandwidth::{
        DEVICE_COPY_BYTES, bench_channel_stats, measure_copy_bandwidth,
        measure_device_copy_bandwidth,
    };
    use distillery_ops::kernels::importance::Aggregation;
    let cpu = is_cpu::<B>();
    if args.check {
        super::check::importance_against_oracle::<B>(&device)?;
    }
    let machine = if cpu {
        let bw = measure_copy_bandwidth();
        println!(
            "memory read bandwidth ({} threads, best of 5 passes over 256 MiB): {:.1} GB/s",
            rayon::current_num_threads(),
            bw / 1e9
        );
        bw
    } else {
        let bw = measure_device_copy_bandwidth::<B>(&device).map_err(anyhow::Error::msg)?;
        println!(
            "device copy bandwidth (read + write of {} MiB, best of 5): {:.1} GB/s",
            DEVICE_COPY_BYTES >> 20,
            bw / 1e9
        );
        bw
    };
    let shapes = if args.shapes.is_empty() {
        DEFAULT_IMPORTANCE_SHAPES.to_vec()
    } else {
        args.shapes.clone()
    };
    let smallest = DEFAULT_IMPORTANCE_SHAPES[0].iter().product::<usize>();
    for dims in shapes {
        let scale = dims.iter().product::<usize>().div_ceil(smallest).max(1);
        let iters = (args.iters / scale).max(1);
        for seq_agg in Aggregation::ALL {
            let t = bench_channel_stats::<B>(&device, dims, seq_agg, iters);
            println!(
                "channel stats {dims:?}, sequence {seq_agg}: {:.3} ms per call, {:.1} GB/s = {:.0}% of the measured bandwidth",
                1e3 * t.seconds / iters as f64,
                t.bytes_per_second() / 1e9,
                100.0 * t.bytes_per_second() / machine
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_shape;

    #[test]
    fn shapes_parse_as_batch_x_seq_x_channels() {
        assert_eq!(parse_shape("8x512x1536"), Ok([8, 512, 1536]));
        assert_eq!(parse_shape("1x4096x14336"), Ok([1, 4096, 14336]));
        for bad in ["8x512", "8x512x1536x2", "8x-1x3", "axbxc", ""] {
            let err = parse_shape(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains("8x512x1536"), "{err}");
        }
        let err = parse_shape("8x0x3").unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
    }
}
