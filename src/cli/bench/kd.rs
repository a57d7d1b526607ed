//! `bench kd`: the fused KD loss, forward and backward, as a training step
//! runs it, against the memory bandwidth measured in the same run.

use super::{DeviceArg, is_cpu, on_bench_device, time_steps};
use clap::Args;
use distillery_ops::backend::{ComputeBackend, OnBackend};
use distillery_ops::kernels::KdSpec;
use std::time::Instant;

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
    /// Also time the loss against the teacher kept sparse, its `K` largest
    /// logits per row (as `teacher_logits` stores them), in the same run.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
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

/// Times the fused KD loss as a training step runs it: `kd_loss` on
/// `Autodiff<B>` with the student's logits tracked, then `backward()` and the
/// student's gradient, synchronized with the device. The figure to compare
/// with PyTorch's `kl_div(log_softmax(s), log_softmax(t))` forward and
/// backward (scripts/bench_kd_torch.py).
pub fn kd(args: KdArgs) -> anyhow::Result<()> {
    use distillery_ops::kernels::KdLoss;
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
    if let Some(k) = args.top_k {
        anyhow::ensure!(
            (1..=args.vocab).contains(&k),
            "--top-k must be between 1 and --vocab ({}), got {k}",
            args.vocab
        );
    }
    on_bench_device(args.device, KdBench { args: &args, spec })
}

struct KdBench<'a> {
    args: &'a KdArgs,
    spec: KdSpec,
}

impl OnBackend for KdBench<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        kd_on::<B>(device, self.args, self.spec)
    }
}

fn kd_on<B: ComputeBackend>(device: B::Device, args: &KdArgs, spec: KdSpec) -> anyhow::Result<()> {
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
            distillery_ops::kernels::bandwidth::measure_device_copy_bandwidth::<B>(&device)
                .map_err(anyhow::Error::msg)?,
            "device copy bandwidth (read + write)".to_string(),
        )
    };
    if args.check {
        super::check::kd_against_oracle::<B>(
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
    let teacher = Tensor::<B, 2>::from_data(teacher_data.clone(), &device).cast(dtype);
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
    if let Some(k) = args.top_k {
        let (median, min) = time_sparse::<B>(&device, &student_data, &teacher_data, args, spec, k)?;
        println!(
            "sparse teacher (top {k} of {vocab}), the same way: {:.2} ms median, {:.2} ms min ({:.2}x the dense op's time)",
            median * 1e3,
            min * 1e3,
            median / owned_median
        );
    }
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

/// The sparse op and the backward's scaling as [`kd_on`] times the dense
/// one, the teacher cut to its `k` largest logits per row on the host
/// first: `(median, min)` seconds.
fn time_sparse<B: ComputeBackend>(
    device: &B::Device,
    student: &burn::tensor::TensorData,
    teacher: &burn::tensor::TensorData,
    args: &KdArgs,
    spec: KdSpec,
    k: usize,
) -> anyhow::Result<(f64, f64)> {
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};
    use distillery_ops::teacher_logits::Selector;
    let (rows, vocab) = (args.rows, args.vocab);
    let logits: Vec<f32> = teacher
        .clone()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut selector = Selector::default();
    let (mut ids, mut log_q, mut log_tail) = (Vec::new(), Vec::new(), Vec::new());
    for row in logits.chunks(vocab) {
        let top = selector.top_k(row, k, spec.temperature);
        let inv_tau = 1.0 / spec.temperature as f64;
        ids.extend(top.ids.iter().map(|&id| id as i64));
        log_q.extend(
            top.logits
                .iter()
                .map(|&x| (x as f64 * inv_tau - top.lse as f64) as f32),
        );
        log_tail.push(top.log_tail);
    }
    let ids = Tensor::<B, 2, burn::tensor::Int>::from_data(TensorData::new(ids, [rows, k]), device);
    let log_q = Tensor::<B, 2>::from_data(TensorData::new(log_q, [rows, k]), device);
    let log_tail = Tensor::<B, 1>::from_data(TensorData::new(log_tail, [rows]), device);
    let weights = Tensor::<B, 1>::from_data(
        TensorData::new(vec![1.0f32 / rows as f32; rows], [rows]),
        device,
    );
    let upstream = Tensor::<B, 1>::ones([1], device);
    let dtype = args.dtype.float();
    let step = || -> anyhow::Result<f64> {
        let s = Tensor::<B, 2>::from_data(student.clone(), device).cast(dtype);
        B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let started = Instant::now();
        let (loss, grad) = B::kd_loss_sparse_fused(
            s.into_primitive().tensor(),
            ids.clone().into_primitive(),
            log_q.clone().into_primitive().tensor(),
            log_tail.clone().into_primitive().tensor(),
            weights.clone().into_primitive().tensor(),
            spec,
        );
        let grad = B::kd_scale_grad(grad, upstream.clone().into_primitive().tensor());
        B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let seconds = started.elapsed().as_secs_f64();
        drop((
            Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(loss)),
            grad,
        ));
        Ok(seconds)
    };
    time_steps(args.repeats, step)
}
