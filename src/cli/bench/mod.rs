//! `distillery bench`: measurements that print figures (for
//! docs/BENCHMARKS.md), run on the machine at hand. One module per bench;
//! this one holds the command, the device choice and the timing helpers
//! they share.

mod attention;
mod check;
mod distill;
mod eval;
mod forward;
mod hash;
mod importance;
mod importance_pass;
mod kd;
mod remote;

use super::{EXIT_FAILED, EXIT_OK};
use clap::Subcommand;
use distillery_engine::Device;
use distillery_ops::backend::{self, OnBackend};
use distillery_ops::kernels::Precision;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Content hashing of external files, and a second `plan` over them.
    Hash(hash::HashArgs),
    /// Model forward (tokens/s by sequence length) and greedy decoding.
    Forward(forward::ForwardArgs),
    /// The CPU importance reduction against the machine's memory bandwidth.
    Importance(importance::ImportanceArgs),
    /// The importance pass (all width axes and block importance) against a
    /// plain forward over the same rows, tokens/s of each.
    ImportancePass(importance_pass::ImportancePassArgs),
    /// Evaluation throughput: benchmark items/s and perplexity tokens/s.
    Eval(eval::EvalArgs),
    /// The fused KD loss, forward and backward, against the memory bandwidth.
    Kd(kd::KdArgs),
    /// The causal grouped-query attention op alone, forward and forward
    /// with backward, in TFLOP/s of its useful work.
    Attention(attention::AttentionArgs),
    /// Distillation training steps: teacher forward, student forward and
    /// backward, optimizer; tokens/s of each part.
    Distill(distill::DistillArgs),
    /// Pushing and pulling a large stage output against a copy of the same
    /// file on the same disk.
    Remote(remote::RemoteArgs),
}

pub fn bench(command: BenchCommand) -> u8 {
    match command {
        BenchCommand::Hash(args) => report(hash::hash(args)),
        BenchCommand::Forward(args) => report(forward::forward(args)),
        BenchCommand::Importance(args) => report(importance::importance(args)),
        BenchCommand::ImportancePass(args) => report(importance_pass::importance_pass(args)),
        BenchCommand::Eval(args) => report(eval::eval(args)),
        BenchCommand::Kd(args) => report(kd::kd(args)),
        BenchCommand::Attention(args) => report(attention::attention(args)),
        BenchCommand::Distill(args) => report(distill::distill(args)),
        BenchCommand::Remote(args) => report(remote::remote(args)),
    }
}

fn report(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

/// The `--device` of the benches that run on a GPU too.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
    /// The CubeCL kernels on wgpu (builds with `--features wgpu`; on a
    /// machine without a GPU, Mesa's software Vulkan): the CubeCL code
    /// paths, checked where no CUDA device is at hand.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

/// Runs a bench on the backend `device` names: `cpu`, `cuda` and `auto`
/// resolve as a recipe's `device:` does; `wgpu` is taken as named.
fn on_bench_device<T: OnBackend<Output = anyhow::Result<()>>>(
    device: DeviceArg,
    bench: T,
) -> anyhow::Result<()> {
    let requested = match device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::Cuda,
        DeviceArg::Auto => Device::Auto,
        #[cfg(feature = "wgpu")]
        DeviceArg::Wgpu => return backend::on_wgpu(bench),
    };
    let resolved = distillery_ops::device::resolve(requested).map_err(anyhow::Error::msg)?;
    backend::on_device(resolved, bench)?
}

/// The model at `path` (a GGUF file or a model folder) on the CPU, with its
/// tokenizer files; prints how long loading took and the thread count, the
/// first line of the CPU benches' output.
fn load_cpu_model(
    path: &std::path::Path,
    device: &burn::tensor::Device<backend::Cpu>,
    precision: Precision,
) -> anyhow::Result<(
    distillery_ops::model::Llama<backend::Cpu>,
    distillery_ops::io::hf_folder::HfAssets,
)> {
    let started = Instant::now();
    let (model, assets) = distillery_ops::loader::load_model::<backend::Cpu>(path, device)?;
    let model = model.with_precision(precision);
    println!(
        "load {}: {:.2} s ({:.1}M parameters), {} threads, matrix products in {}",
        path.display(),
        started.elapsed().as_secs_f64(),
        model.config.num_parameters() as f64 / 1e6,
        rayon::current_num_threads(),
        match precision.on_cpu() {
            Precision::F32 if precision == Precision::Bf16 =>
                "f32 (this CPU has no bf16 fast path)",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 (AMX tiles, f32 accumulation)",
        }
    );
    Ok((model, assets))
}

/// `--precision`: `f32` or `bf16`.
fn parse_precision(s: &str) -> Result<Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("unknown precision {s:?} (expected f32 or bf16)"))
}

/// Whether the bench runs on the CPU backend (which reports threads and
/// memory bandwidth rather than a device's copy bandwidth).
fn is_cpu<B: 'static>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<backend::Cpu>()
}

/// `rows` rows of `seq` token ids below `vocab`, deterministic and varied
/// (a multiplicative hash of the position): inputs whose values do not
/// matter to the speed, the same on every run.
fn deterministic_tokens(rows: usize, seq: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|r| {
            (0..seq)
                .map(|i| (((r * seq + i) as u64 * 2_654_435_761 + 17) % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

/// Median wall time of `runs` calls, after one warm-up call.
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Median and minimum seconds of `repeats` (at least one) timed calls of
/// `step`, after two untimed ones.
fn time_steps(
    repeats: usize,
    mut step: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    for _ in 0..2 {
        step()?;
    }
    let mut times = (0..repeats.max(1))
        .map(|_| step())
        .collect::<anyhow::Result<Vec<_>>>()?;
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

#[cfg(test)]
mod tests {
    use super::deterministic_tokens;

    #[test]
    fn bench_tokens_are_below_the_vocabulary_and_differ_by_row() {
        let rows = deterministic_tokens(3, 50, 97);
        assert_eq!(rows.len(), 3);
        assert!(
            rows.iter()
                .all(|r| r.len() == 50 && r.iter().all(|&t| t < 97))
        );
        assert_ne!(rows[0], rows[1]);
        // Row `r` continues where row `r - 1` stopped: one stream cut in rows.
        let one = deterministic_tokens(1, 150, 97).remove(0);
        assert_eq!(rows.concat(), one);
    }
}
