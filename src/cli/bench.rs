//! `distillery bench`: measurements that print figures (for
//! docs/BENCHMARKS.md), run on the machine at hand.

use super::{EXIT_FAILED, EXIT_OK};
use clap::{Args, Subcommand};
use distillery_engine::files::FileHasher;
use distillery_engine::plan::{self, Selection};
use distillery_engine::{OpRegistry, Store};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Content hashing of external files, and a second `plan` over them.
    Hash(HashArgs),
    /// Model forward (tokens/s by sequence length) and greedy decoding.
    Forward(ForwardArgs),
    /// The CPU importance reduction against the machine's memory bandwidth.
    Importance(ImportanceArgs),
    /// The importance pass (all width axes and block importance) against a
    /// plain forward over the same rows, tokens/s of each.
    ImportancePass(ImportancePassArgs),
    /// Evaluation throughput: benchmark items/s and perplexity tokens/s.
    Eval(EvalArgs),
    /// The fused KD loss, forward and backward, against the memory bandwidth.
    Kd(KdArgs),
    /// Distillation training steps: teacher forward, student forward and
    /// backward, optimizer; tokens/s of each part.
    Distill(DistillArgs),
}

#[derive(Args)]
pub struct DistillArgs {
    /// The teacher: a GGUF file, a Hugging Face model folder, or a
    /// `config.json` (random weights: speed does not depend on them).
    teacher: PathBuf,
    /// The student: a Hugging Face model folder or a `config.json` (random
    /// weights); default: a copy of the teacher.
    #[arg(long)]
    student: Option<PathBuf>,
    /// Rows per optimizer step (one micro-batch).
    #[arg(long, default_value_t = 4)]
    rows: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed steps (after one untimed).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The device's peak rate in TFLOP/s, to print the model FLOPs
    /// utilization against (e.g. its dense bf16 figure).
    #[arg(long)]
    peak_tflops: Option<f64>,
}

#[derive(Args)]
pub struct KdArgs {
    /// Token positions (rows of logits).
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    #[arg(long, default_value_t = 49_152)]
    vocab: usize,
    #[arg(long, value_enum, default_value = "forward_kl")]
    loss: KdLossArg,
    /// JSD's mixture weight of the teacher.
    #[arg(long, default_value_t = 0.5)]
    beta: f32,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Multiply the loss by the temperature squared.
    #[arg(long)]
    tau_squared: bool,
    /// Timed forward+backward steps (after two untimed ones).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The logits' dtype (the kernel accumulates in f32 whatever it is).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Also compare the op's loss and gradient on 64 rows with the float64
    /// oracle, and fail when they are off.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DtypeArg {
    F32,
    Bf16,
    F16,
}

impl DtypeArg {
    fn float(self) -> burn::tensor::FloatDType {
        use burn::tensor::FloatDType;
        match self {
            DtypeArg::F32 => FloatDType::F32,
            DtypeArg::Bf16 => FloatDType::BF16,
            DtypeArg::F16 => FloatDType::F16,
        }
    }

    fn bytes(self) -> usize {
        match self {
            DtypeArg::F32 => 4,
            DtypeArg::Bf16 | DtypeArg::F16 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DtypeArg::F32 => "f32",
            DtypeArg::Bf16 => "bf16",
            DtypeArg::F16 => "f16",
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KdLossArg {
    #[value(name = "forward_kl")]
    ForwardKl,
    #[value(name = "reverse_kl")]
    ReverseKl,
    Jsd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
    /// The CubeCL kernels on wgpu (builds with `--features wgpu`; on a
    /// machine without a GPU, Mesa's software Vulkan): the CubeCL code
    /// paths, checked where no CUDA device is at hand.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

#[derive(Args)]
pub struct ImportancePassArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    #[arg(long, default_value_t = 8)]
    rows: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Rows per forward.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed repetitions of each (interleaved; medians printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

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

#[derive(Args)]
pub struct ForwardArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    /// Sequence lengths to time (one row each).
    #[arg(long, value_delimiter = ',', default_value = "36,512")]
    seq: Vec<usize>,
    /// Timed repetitions per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// New tokens for the decoding measurement (0 skips it).
    #[arg(long, default_value_t = 32)]
    decode: usize,
}

#[derive(Args)]
pub struct HashArgs {
    /// Total size of the files, in GiB.
    #[arg(long, default_value_t = 2.0)]
    gib: f64,
    /// Number of files.
    #[arg(long, default_value_t = 8)]
    files: usize,
    /// Where to write them (default: the system temp folder); removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn bench(command: BenchCommand) -> u8 {
    match command {
        BenchCommand::Hash(args) => report(hash(args)),
        BenchCommand::Forward(args) => report(forward(args)),
        BenchCommand::Importance(args) => report(importance(args)),
        BenchCommand::ImportancePass(args) => report(importance_pass(args)),
        BenchCommand::Eval(args) => report(eval(args)),
        BenchCommand::Kd(args) => report(kd(args)),
        BenchCommand::Distill(args) => report(distill(args)),
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

fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    use distillery_ops::backend::Cpu;
    use distillery_ops::model::tokens_tensor;
    let device = Default::default();
    let started = Instant::now();
    let (model, _) = distillery_ops::loader::load_model::<Cpu>(&args.model, &device)?;
    println!(
        "load {}: {:.2} s ({:.1}M parameters), {} threads",
        args.model.display(),
        started.elapsed().as_secs_f64(),
        model.config.num_parameters() as f64 / 1e6,
        rayon::current_num_threads()
    );
    // Deterministic, varied token ids.
    let vocab = model.config.vocab_size as u64;
    let tokens: Vec<u32> = (0..args.seq.iter().copied().max().unwrap_or(1) as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % vocab) as u32)
        .collect();
    for &seq in &args.seq {
        let input = &tokens[..seq.min(tokens.len())];
        let secs = median_secs(args.runs, || {
            let logits = model.forward(tokens_tensor(&[input], &device));
            let _ = logits.into_data();
        });
        println!(
            "forward, batch 1 x {seq} tokens: {:.1} ms median of {}, {:.0} tokens/s",
            secs * 1e3,
            args.runs,
            seq as f64 / secs
        );
    }
    if args.decode > 0 {
        let prompt = &tokens[..tokens.len().min(36)];
        let secs = median_secs(args.runs.min(3), || {
            let _ = model.generate_greedy(prompt, args.decode, &[]);
        });
        println!(
            "greedy decoding, {}-token prompt + {} new tokens: {:.2} s, {:.1} ms per new token (prefill included)",
            prompt.len(),
            args.decode,
            secs,
            secs * 1e3 / args.decode as f64
        );
    }
    Ok(())
}

fn hash(args: HashArgs) -> anyhow::Result<()> {
    let parent = args.dir.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::Builder::new()
        .prefix("distillery-bench-")
        .tempdir_in(&parent)?;
    let files = args.files.max(1);
    let per_file = ((args.gib * (1u64 << 30) as f64) / files as f64) as usize / 8 * 8;
    let total = per_file * files;
    eprintln!(
        "writing {files} files of {} MiB in {}",
        per_file >> 20,
        dir.path().display()
    );
    let mut paths = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buffer = vec![0u8; 8 << 20];
    for i in 0..files {
        let path = dir.path().join(format!("data-{i}.bin"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = per_file;
        while left > 0 {
            let n = left.min(buffer.len());
            for chunk in buffer[..n].chunks_exact_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            f.write_all(&buffer[..n])?;
            left -= n;
        }
        f.flush()?;
        paths.push(path);
    }
    // Files older than the racy window are cached by stat; age them.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for p in &paths {
        std::fs::File::options()
            .write(true)
            .open(p)?
            .set_modified(old)?;
    }

    let gib = total as f64 / (1u64 << 30) as f64;
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    FileHasher::uncached().digest_all(&paths)?;
    let raw = started.elapsed().as_secs_f64();
    println!(
        "hash: {gib:.2} GiB in {files} files, {threads} threads: {raw:.3} s = {:.2} GB/s (files in page cache)",
        total as f64 / raw / 1e9
    );

    // The same files as external inputs of a recipe: plan twice.
    let mut recipe = String::from("name: bench-hash\nstages:\n");
    for (i, p) in paths.iter().enumerate() {
        recipe.push_str(&format!(
            "  read{i}:\n    op: read_file\n    with: {{ path: {} }}\n",
            p.file_name().unwrap().to_string_lossy()
        ));
    }
    let recipe_path = dir.path().join("bench.yaml");
    std::fs::write(&recipe_path, &recipe)?;
    let mut registry = OpRegistry::new();
    distillery_engine::testing::register(&mut registry);
    let store = Store::open(&dir.path().join(".distillery"))?;
    let mut timings = Vec::new();
    for attempt in 0..2 {
        let started = Instant::now();
        let pipeline =
            distillery_engine::load(&recipe_path, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        let hasher = FileHasher::with_cache(store.stat_cache_path());
        plan::plan(&pipeline, &store, &hasher, &Selection::default())?;
        hasher.save()?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "plan #{}: {seconds:.4} s, {:.2} GiB read from the files",
            attempt + 1,
            hasher.bytes_read() as f64 / (1u64 << 30) as f64
        );
        timings.push(seconds);
    }
    println!("second plan / first plan = {:.4}", timings[1] / timings[0]);
    Ok(())
}

/// Runs a bench generic over the backend on the device `--device` names.
/// (A macro because the bench is a generic function to instantiate per
/// backend, which a closure cannot be.)
macro_rules! on_bench_device {
    ($arg:expr, $bench:ident ( $($rest:expr),* )) => {{
        use distillery_engine::Device;
        #[cfg(feature = "wgpu")]
        if matches!($arg, DeviceArg::Wgpu) {
            return $bench::<burn::backend::Wgpu>(Default::default(), $($rest),*);
        }
        let requested = match $arg {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
            _ => Device::Auto,
        };
        match distillery_ops::device::resolve(requested).map_err(anyhow::Error::msg)? {
            Device::Cpu => $bench::<distillery_ops::backend::Cpu>(Default::default(), $($rest),*),
            #[cfg(feature = "cuda")]
            Device::Cuda => {
                $bench::<burn::backend::Cuda>(burn::backend::cuda::CudaDevice::new(0), $($rest),*)
            }
            other => anyhow::bail!("no {} for device {other:?} in this build", stringify!($bench)),
        }
    }};
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
fn importance(args: ImportanceArgs) -> anyhow::Result<()> {
    on_bench_device!(args.device, importance_on(&args))
}

fn importance_on<B: distillery_ops::kernels::importance::ImportanceOps>(
    device: B::Device,
    args: &ImportanceArgs,
) -> anyhow::Result<()> {
    use distillery_ops::kernels::bandwidth::{
        bench_channel_stats, measure_copy_bandwidth, measure_device_copy_bandwidth,
    };
    use distillery_ops::kernels::importance::Aggregation;
    let cpu = is_cpu::<B>();
    if args.check {
        super::bench_check::importance_against_oracle::<B>(&device)?;
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
        let bw = measure_device_copy_bandwidth::<B>(&device);
        println!(
            "device copy bandwidth (read + write of 256 MiB, best of 5): {:.1} GB/s",
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

/// Times the fused KD loss as a training step runs it: `kd_loss` on
/// `Autodiff<B>` with the student's logits tracked, then `backward()` and the
/// student's gradient, synchronized with the device. The figure to compare
/// with PyTorch's `kl_div(log_softmax(s), log_softmax(t))` forward and
/// backward (scripts/bench_kd_torch.py).
fn kd(args: KdArgs) -> anyhow::Result<()> {
    use distillery_ops::kernels::{KdLoss, KdSpec};
    let spec = KdSpec {
        loss: match args.loss {
            KdLossArg::ForwardKl => KdLoss::ForwardKl,
            KdLossArg::ReverseKl => KdLoss::ReverseKl,
            KdLossArg::Jsd => KdLoss::Jsd { beta: args.beta },
        },
        temperature: args.temperature,
        tau_squared: args.tau_squared,
    };
    spec.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.rows > 0 && args.vocab > 0,
        "--rows and --vocab must be positive"
    );
    on_bench_device!(args.device, kd_on(&args, spec))
}

/// Whether the bench runs on the CPU backend (which reports threads and
/// memory bandwidth rather than a device's copy bandwidth).
fn is_cpu<B: 'static>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<distillery_ops::backend::Cpu>()
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

fn kd_on<B: distillery_ops::kernels::KdOps>(
    device: B::Device,
    args: &KdArgs,
    spec: distillery_ops::kernels::KdSpec,
) -> anyhow::Result<()> {
    use burn::backend::Autodiff;
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};
    use distillery_ops::kernels::kd_loss;
    let (rows, vocab) = (args.rows, args.vocab);
    let cpu = is_cpu::<B>();
    let sync = |device: &B::Device| B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));

    // Logits uniform in [-4, 4), as scripts/bench_kd_torch.py draws them.
    let mut rng = distillery_ops::rng::SplitMix64::new(1);
    let mut draw = || -> TensorData {
        let values: Vec<f32> = (0..rows * vocab)
            .map(|_| (8.0 * rng.next_f64() - 4.0) as f32)
            .collect();
        TensorData::new(values, [rows, vocab])
    };
    let (student_data, teacher_data) = (draw(), draw());
    let weights_data = TensorData::new(vec![1.0f32 / rows as f32; rows], [rows]);

    // The machine's bandwidth, measured in the same run.
    let (bandwidth, bandwidth_what) = if cpu {
        let bw = distillery_ops::kernels::bandwidth::measure_copy_bandwidth();
        (bw, "memory read bandwidth, all threads".to_string())
    } else {
        (
            distillery_ops::kernels::bandwidth::measure_device_copy_bandwidth::<B>(&device),
            "device copy bandwidth (read + write)".to_string(),
        )
    };
    if args.check {
        super::bench_check::kd_against_oracle::<B>(
            &device,
            &student_data,
            &teacher_data,
            vocab,
            spec,
            args.dtype.float(),
        )?;
    }

    let dtype = args.dtype.float();
    let student = Tensor::<Autodiff<B>, 2>::from_data(student_data.clone(), &device)
        .cast(dtype)
        .require_grad();
    let teacher = Tensor::<Autodiff<B>, 2>::from_data(teacher_data.clone(), &device).cast(dtype);
    let weights = Tensor::<Autodiff<B>, 1>::from_data(weights_data.clone(), &device);
    let mut loss_value = 0.0f32;
    let step = || -> anyhow::Result<f64> {
        sync(&device)?;
        let started = Instant::now();
        let loss = kd_loss(student.clone(), teacher.clone(), weights.clone(), spec);
        let grads = loss.clone().backward();
        let grad = student.grad(&grads).expect("a gradient for the student");
        sync(&device)?;
        let seconds = started.elapsed().as_secs_f64();
        drop(grad);
        loss_value = loss.into_data().convert::<f32>().into_vec::<f32>().unwrap()[0];
        Ok(seconds)
    };
    let (median, min) = time_steps(args.repeats, step)?;

    let bytes = 3.0 * (rows * vocab * args.dtype.bytes()) as f64;
    let threads = if cpu {
        format!("{} threads", rayon::current_num_threads())
    } else {
        "GPU".to_string()
    };
    println!(
        "KD {:?}, {rows} x {vocab} {} logits, tau {}{}, {threads}: loss {loss_value:.6}",
        spec.loss,
        args.dtype.name(),
        spec.temperature,
        if spec.tau_squared { " (x tau^2)" } else { "" }
    );
    println!("{bandwidth_what}: {:.1} GB/s", bandwidth / 1e9);
    println!(
        "forward + backward (Autodiff, student kept by the caller): {:.2} ms median, {:.2} ms min of {} (after 2 untimed)",
        median * 1e3,
        min * 1e3,
        args.repeats.max(1)
    );
    println!(
        "  effective {:.1} GB/s (3 x N x V x {} bytes: read s, read t, write the gradient) = {:.0}% of the measured bandwidth",
        bytes / median / 1e9,
        args.dtype.bytes(),
        100.0 * bytes / median / bandwidth
    );

    // The op and the backward's scaling on the inner backend, the logits
    // handed over as a fresh tensor as a model's forward produces them (on
    // the CPU the gradient then overwrites them: no N x V allocation).
    let teacher = Tensor::<B, 2>::from_data(teacher_data, &device).cast(dtype);
    let weights = Tensor::<B, 1>::from_data(weights_data, &device);
    let upstream = Tensor::<B, 1>::ones([1], &device);
    let owned_step = || -> anyhow::Result<f64> {
        let s = Tensor::<B, 2>::from_data(student_data.clone(), &device).cast(dtype);
        sync(&device)?;
        let started = Instant::now();
        let (loss, grad) = B::kd_loss_fused(
            s.into_primitive().tensor(),
            teacher.clone().into_primitive().tensor(),
            weights.clone().into_primitive().tensor(),
            spec,
        );
        let grad = B::kd_scale_grad(grad, upstream.clone().into_primitive().tensor());
        sync(&device)?;
        let seconds = started.elapsed().as_secs_f64();
        drop((
            Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(loss)),
            grad,
        ));
        Ok(seconds)
    };
    let (owned_median, owned_min) = time_steps(args.repeats, owned_step)?;
    println!(
        "fused op + backward scaling, logits owned by the op: {:.2} ms median, {:.2} ms min ({:.0}% of the measured bandwidth)",
        owned_median * 1e3,
        owned_min * 1e3,
        100.0 * bytes / owned_median / bandwidth
    );
    if cpu {
        let per_task = distillery_ops::kernels::kd_cpu_scratch_rows(
            burn::tensor::DType::F32,
            burn::tensor::DType::F32,
            false,
        );
        let in_place = distillery_ops::kernels::kd_cpu_scratch_rows(
            burn::tensor::DType::F32,
            burn::tensor::DType::F32,
            true,
        );
        println!(
            "extra memory (from the kernel's code, not measured): {per_task} row(s) of V f32 per rayon task \
             ({in_place} when the gradient overwrites the logits), at most one task per thread: \
             {:.0} KiB here; no N x V buffer besides the gradient",
            (in_place * vocab * 4 * rayon::current_num_threads()) as f64 / 1024.0
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    /// The multiple-choice benchmark timed in items/s.
    #[arg(
        long,
        default_value = "../shared/assets/benchmarks/hellaswag_validation.jsonl.zst"
    )]
    hellaswag: PathBuf,
    /// Its first this many items are scored.
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// The text timed in tokens/s (perplexity).
    #[arg(long, default_value = "../shared/assets/corpus/heldout_ppl.txt.zst")]
    text: PathBuf,
    /// Tokens per perplexity window.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Perplexity windows scored.
    #[arg(long, default_value_t = 4)]
    windows: usize,
    /// Sequences per forward pass (the `evaluate` stage's default).
    #[arg(long, default_value_t = 4)]
    batch: usize,
}

/// Evaluation throughput as the `evaluate` stage scores: benchmark items
/// (every choice a sequence) and perplexity windows.
fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use distillery_ops::backend::Cpu;
    use distillery_ops::eval::multiple_choice::{ScoringSetup, run_task};
    use distillery_ops::eval::tasks::load_task_file;
    use distillery_ops::eval::text_perplexity::{read_text_file, run_text, text_windows};
    use distillery_ops::eval::tokenize::EvalTokenizer;
    let device = Default::default();
    let started = Instant::now();
    let (model, assets) = distillery_ops::loader::load_model::<Cpu>(&args.model, &device)?;
    let tokenizer = assets
        .tokenizer
        .ok_or_else(|| anyhow::anyhow!("{} has no tokenizer", args.model.display()))?;
    let tok = EvalTokenizer::new(tokenizer)?;
    println!(
        "load {}: {:.2} s ({:.1}M parameters), {} threads",
        args.model.display(),
        started.elapsed().as_secs_f64(),
        model.config.num_parameters() as f64 / 1e6,
        rayon::current_num_threads()
    );

    let label = args.hellaswag.display().to_string();
    let mut file = load_task_file(&args.hellaswag, &label, None)?;
    file.items.truncate(args.items);
    let setup = ScoringSetup {
        tokenizer: &tok,
        delimiter: "",
        batch: args.batch,
        max_len: model.config.max_position_embeddings,
        empty_context: model.config.bos_token_id.unwrap_or(0),
    };
    let run = run_task(&model, file.kind, &file.items, &setup, &mut |_| {})?;
    println!(
        "{label}: {} items ({} sequences, {} tokens), batch {}: {:.1} s = {:.2} items/s, {:.0} tokens/s (acc {:.3}, acc_norm {})",
        run.scores.n,
        run.sequences,
        run.tokens,
        args.batch,
        run.seconds,
        run.items_per_s,
        run.tokens_per_s,
        run.scores.acc,
        run.scores
            .acc_norm
            .map_or("-".into(), |v| format!("{v:.3}"))
    );

    let label = args.text.display().to_string();
    let text = read_text_file(&args.text, &label)?;
    let windows = text_windows(&tok, &text, args.seq_len, Some(args.windows))?;
    let run = run_text(&model, &windows, args.batch, &mut |_| {})?;
    println!(
        "{label}: {} windows of {} tokens, batch {}: {:.1} s = {:.0} tokens/s (perplexity {:.3}, {:.4} bits per byte)",
        run.windows,
        run.seq_len,
        args.batch,
        run.seconds,
        run.tokens_per_s,
        run.ppl,
        run.bits_per_byte
    );
    Ok(())
}

fn distill(args: DistillArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.seq > 1,
        "--rows must be positive and --seq at least 2"
    );
    on_bench_device!(args.device, distill_on(&args))
}

/// A model for the bench: a `config.json` gets random weights, anything
/// else is loaded.
fn bench_model<B: burn::tensor::backend::Backend>(
    path: &std::path::Path,
    device: &B::Device,
) -> anyhow::Result<distillery_ops::model::Llama<B>> {
    use distillery_ops::model::Llama;
    use distillery_ops::model::config::LlamaConfig;
    if path.extension().is_some_and(|e| e == "json") {
        let config = LlamaConfig::from_file(path)?;
        Ok(Llama::random_init(config, 1, device)?)
    } else {
        Ok(distillery_ops::loader::load_model::<B>(path, device)?.0)
    }
}

/// Floating-point operations of one token through `config`'s matrices in
/// the forward pass, attention over `seq` positions included (the full
/// square, as computed): `2 x` the matrix parameters (lm_head included, the
/// embedding lookup not) plus `4 x layers x q_dim x seq` for scores and
/// values. Training costs 3 forwards (forward, and backward to inputs and
/// to weights).
fn forward_flops_per_token(config: &distillery_ops::model::config::LlamaConfig, seq: usize) -> f64 {
    let (h, f, q, kv) = (
        config.hidden_size,
        config.intermediate_size,
        config.q_dim(),
        config.kv_dim(),
    );
    let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f;
    let matrices = config.num_hidden_layers * per_layer + config.vocab_size * h;
    2.0 * matrices as f64 + 4.0 * (config.num_hidden_layers * q * seq) as f64
}

fn distill_on<B: distillery_ops::backend::ComputeBackend>(
    device: B::Device,
    args: &DistillArgs,
) -> anyhow::Result<()> {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use distillery_ops::kernels::kd::{KdLoss, KdSpec};
    use distillery_ops::model::Llama;
    use distillery_ops::train::data::{MicroBatch, TrainRow};
    use distillery_ops::train::{AdamW, AdamWConfig, Distillation, GradientSum, Objective};
    let sync = |device: &B::Device| B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));
    let teacher = bench_model::<B>(&args.teacher, &device)?;
    let student: Llama<Autodiff<B>> = match &args.student {
        Some(path) => bench_model(path, &device)?,
        None => Llama::from_state_dict(teacher.config.clone(), teacher.to_state_dict(), &device)?,
    };
    let vocab = teacher.config.vocab_size;
    anyhow::ensure!(
        student.config.vocab_size == vocab,
        "the student's vocabulary ({}) differs from the teacher's ({vocab})",
        student.config.vocab_size
    );
    let cpu = is_cpu::<B>();
    println!(
        "teacher {:.1}M, student {:.1}M parameters; {} rows x {} tokens per step; {}",
        teacher.config.num_parameters() as f64 / 1e6,
        student.config.num_parameters() as f64 / 1e6,
        args.rows,
        args.seq,
        if cpu {
            format!("{} threads", rayon::current_num_threads())
        } else {
            "GPU".to_string()
        }
    );
    let step_flops = (args.rows * args.seq) as f64
        * (forward_flops_per_token(&teacher.config, args.seq)
            + 3.0 * forward_flops_per_token(&student.config, args.seq));
    let objective = Distillation {
        teacher,
        spec: KdSpec {
            loss: KdLoss::ForwardKl,
            temperature: 1.0,
            tau_squared: false,
        },
        ce_weight: 0.0,
        vocab,
    };
    let tokens: Vec<Vec<u32>> = (0..args.rows)
        .map(|r| {
            (0..args.seq)
                .map(|i| (((r * args.seq + i) as u64 * 2_654_435_761 + 17) % vocab as u64) as u32)
                .collect()
        })
        .collect();
    let rows: Vec<TrainRow> = tokens
        .iter()
        .map(|t| TrainRow {
            tokens: t,
            mask: None,
        })
        .collect();
    let weight = 1.0 / (args.rows * (args.seq - 1)) as f32;
    let mut adam = AdamW::<B>::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
    });
    let mut model = student;
    let mut grads = GradientSum::<B>::default();
    let step_tokens = (args.rows * args.seq) as f64;
    let mut parts = Vec::new();
    for step in 0..=args.steps {
        sync(&device)?;
        let t0 = Instant::now();
        let mb = MicroBatch::<B>::new(&rows, weight, &device);
        // The teacher's share, timed on its own (the objective runs it again).
        let teacher_s = {
            let t = Instant::now();
            let logits = objective.teacher.forward(mb.inputs.clone());
            sync(&device)?;
            drop(logits);
            t.elapsed().as_secs_f64()
        };
        let t1 = Instant::now();
        let loss = objective.loss(&model, &mb);
        let _ = loss.clone().into_data();
        let forward_s = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let g = loss.backward();
        grads.add::<Autodiff<B>, _>(&model, &g);
        sync(&device)?;
        let backward_s = t2.elapsed().as_secs_f64();
        let t3 = Instant::now();
        let (m, _) = adam.step::<Autodiff<B>, _>(model, &mut grads, 1e-5);
        model = m;
        let _ = model.valid().norm.weight.val().into_data();
        let optim_s = t3.elapsed().as_secs_f64();
        let total = t0.elapsed().as_secs_f64() - teacher_s;
        if step > 0 {
            parts.push([teacher_s, forward_s - teacher_s, backward_s, optim_s, total]);
        }
    }
    let mean = |i: usize| parts.iter().map(|p| p[i]).sum::<f64>() / parts.len() as f64;
    let total = mean(4);
    println!(
        "step {:.3} s = teacher forward {:.3} s + student forward and KD loss {:.3} s + backward {:.3} s + optimizer {:.3} s",
        total,
        mean(0),
        mean(1),
        mean(2),
        mean(3)
    );
    println!(
        "distillation: {:.1} tokens/s (mean of {} steps)",
        step_tokens / total,
        parts.len()
    );
    let achieved = step_flops / total;
    print!(
        "model FLOPs: {:.2} TFLOP per step (teacher forward + 3 x student forward), {:.2} TFLOP/s achieved",
        step_flops / 1e12,
        achieved / 1e12
    );
    match args.peak_tflops {
        Some(peak) => println!(
            ", MFU {:.2}% of {peak} TFLOP/s",
            100.0 * achieved / (peak * 1e12)
        ),
        None => println!(),
    }
    Ok(())
}

fn importance_pass(args: ImportancePassArgs) -> anyhow::Result<()> {
    use distillery_engine::progress::NoProgress;
    use distillery_ops::backend::Cpu;
    use distillery_ops::importance::{AggregationPair, ImportanceSpec, estimate};
    use distillery_ops::kernels::Aggregation;
    use distillery_ops::model::tokens_tensor;
    let device = Default::default();
    let (model, _) = distillery_ops::loader::load_model::<Cpu>(&args.model, &device)?;
    let vocab = model.config.vocab_size as u64;
    let tokens: Vec<Vec<u32>> = (0..args.rows)
        .map(|r| {
            (0..args.seq)
                .map(|i| (((r * args.seq + i) as u64 * 2_654_435_761 + 17) % vocab) as u32)
                .collect()
        })
        .collect();
    let rows: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let pair = Some(AggregationPair {
        batch: Aggregation::L2,
        sequence: Aggregation::Mean,
    });
    let spec = ImportanceSpec {
        hidden: pair,
        ffn: pair,
        heads: pair,
        block_importance: true,
        perplexity: false,
        block_sizes: vec![],
        batch: args.batch,
    };
    let mut forward = Vec::new();
    let mut trunk = Vec::new();
    let mut pass = Vec::new();
    for run in 0..=args.runs {
        let t = Instant::now();
        for chunk in rows.chunks(args.batch.max(1)) {
            let _ = model.forward(tokens_tensor(chunk, &device)).into_data();
        }
        let f = t.elapsed().as_secs_f64();
        // The pass needs no logits: the forward without the lm_head is the
        // like-for-like figure.
        let t = Instant::now();
        for chunk in rows.chunks(args.batch.max(1)) {
            let _ = model
                .hidden_states(tokens_tensor(chunk, &device))
                .into_data();
        }
        let h = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = estimate(&model, &rows, &[], &spec, &NoProgress);
        let p = t.elapsed().as_secs_f64();
        if run > 0 {
            forward.push(f);
            trunk.push(h);
            pass.push(p);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let tokens = (args.rows * args.seq) as f64;
    let (f, h, p) = (median(&mut forward), median(&mut trunk), median(&mut pass));
    println!(
        "{} rows x {} tokens, batch {}, medians of {}: plain forward (with the lm_head) {:.1} tokens/s; \
         forward without the lm_head {:.1} tokens/s; importance pass (hidden, ffn, heads, block importance) \
         {:.1} tokens/s = {:.2}x the plain forward's, {:.2}x the headless forward's",
        args.rows,
        args.seq,
        args.batch,
        args.runs,
        tokens / f,
        tokens / h,
        tokens / p,
        f / p,
        h / p
    );
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
