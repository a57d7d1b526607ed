//! `bench distill`: the distillation stage's optimizer step
//! ([`TrainStep`], the code the training loop runs) timed by phase:
//! teacher forward, student forward and KD loss, backward, optimizer;
//! tokens/s and the model FLOPs utilization.

use super::{DeviceArg, deterministic_tokens, is_cpu, on_bench_device};
use burn::backend::Autodiff;
use clap::Args;
use distillery_ops::backend::{ComputeBackend, OnBackend};
use distillery_ops::kernels::Precision;
use distillery_ops::kernels::kd::{KdLoss, KdSpec};
use distillery_ops::model::Llama;
use distillery_ops::model::config::LlamaConfig;
use distillery_ops::train::data::{MicroBatch, TrainRow};
use distillery_ops::train::{AdamW, AdamWConfig, Distillation, StepTimings, TrainStep};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// The matrix products' arithmetic, teacher and student: `f32`, or
    /// `bf16` where the device has a fast path (AMX tiles, CUDA).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: Precision,
    /// The device's peak rate in TFLOP/s, to print the model FLOPs
    /// utilization against (e.g. its dense bf16 figure).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Run the heads and the loss this many positions at a time (the
    /// `distill` op's `head_chunk_rows`); default: all at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    head_chunk_rows: Option<u64>,
    /// How the teacher's forward carries its activations into bf16
    /// products (the `distill` op's `teacher_activations`): `two-parts`,
    /// or `rounded` once, as PyTorch's autocast does.
    #[arg(long, value_enum, default_value = "two-parts")]
    teacher_activations: TeacherActivations,
}

/// [`distillery_ops::kernels::Activations`] as the command line names it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TeacherActivations {
    TwoParts,
    Rounded,
}

impl From<TeacherActivations> for distillery_ops::kernels::Activations {
    fn from(a: TeacherActivations) -> Self {
        match a {
            TeacherActivations::TwoParts => Self::TwoParts,
            TeacherActivations::Rounded => Self::Rounded,
        }
    }
}

/// The learning rate of the timed steps (its value does not change their
/// cost).
const LEARNING_RATE: f64 = 1e-5;

pub fn distill(args: DistillArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.seq > 1,
        "--rows must be positive and --seq at least 2"
    );
    on_bench_device(args.device, DistillBench { args: &args })
}

struct DistillBench<'a> {
    args: &'a DistillArgs,
}

impl OnBackend for DistillBench<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        distill_on::<B>(device, self.args)
    }
}

/// A model for the bench: a `config.json` gets random weights, anything
/// else is loaded.
fn bench_model<B: burn::tensor::backend::Backend>(
    path: &Path,
    device: &B::Device,
) -> anyhow::Result<Llama<B>> {
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
fn forward_flops_per_token(config: &LlamaConfig, seq: usize) -> f64 {
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

fn distill_on<B: ComputeBackend>(device: B::Device, args: &DistillArgs) -> anyhow::Result<()> {
    let sync = |device: &B::Device| B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));
    anyhow::ensure!(
        matches!(args.teacher_activations, TeacherActivations::TwoParts)
            || args.precision == Precision::Bf16,
        "--teacher-activations applies only to bf16 products: add --precision bf16"
    );
    let teacher = bench_model::<B>(&args.teacher, &device)?
        .with_precision(args.precision)
        .with_activations(args.teacher_activations.into());
    let student: Llama<Autodiff<B>> = match &args.student {
        Some(path) => bench_model(path, &device)?,
        None => Llama::from_state_dict(teacher.config.clone(), teacher.to_state_dict(), &device)?,
    }
    .with_precision(args.precision);
    // After the student, which may start from the teacher's f32 weights.
    let teacher = teacher.with_inference_weights();
    let vocab = teacher.config.vocab_size;
    anyhow::ensure!(
        student.config.vocab_size == vocab,
        "the student's vocabulary ({}) differs from the teacher's ({vocab})",
        student.config.vocab_size
    );
    let cpu = is_cpu::<B>();
    println!(
        "teacher {:.1}M, student {:.1}M parameters; {} rows x {} tokens per step; products in {}{}; attention in {}; {}",
        teacher.config.num_parameters() as f64 / 1e6,
        student.config.num_parameters() as f64 / 1e6,
        args.rows,
        args.seq,
        distillery_ops::kernels::matmul::arithmetic::<B>(&device, args.precision),
        match (
            <B as distillery_ops::kernels::MatmulOps>::product_precision(&device, args.precision),
            args.teacher_activations,
        ) {
            (Precision::Bf16, TeacherActivations::Rounded) =>
                ", the teacher's activations rounded once",
            (Precision::Bf16, TeacherActivations::TwoParts) =>
                ", the teacher's activations in two parts",
            _ => "",
        },
        <B as distillery_ops::kernels::AttentionOps>::attention_arithmetic(
            &device,
            [args.seq, args.seq, student.config.head_dim],
            args.precision
        ),
        if cpu {
            format!("{} threads", rayon::current_num_threads())
        } else if distillery_ops::kernels::AUTOTUNED {
            "GPU, kernels autotuned".to_string()
        } else {
            "GPU, untuned kernels".to_string()
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
        head_chunk_rows: args.head_chunk_rows.map(|n| n as usize),
    };
    let tokens = deterministic_tokens(args.rows, args.seq, vocab);
    let rows: Vec<TrainRow> = tokens
        .iter()
        .enumerate()
        .map(|(index, t)| TrainRow {
            index,
            tokens: t,
            mask: None,
        })
        .collect();
    let train_step = TrainStep {
        objective: &objective,
        micro_batch: args.rows,
        device: &device,
    };
    let mut adam = AdamW::<B>::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        grad_clip: 1.0,
    });
    // The step's forward phase runs the teacher and the student together;
    // the teacher's share is timed on its own, on the same inputs.
    let teacher_inputs = MicroBatch::<B>::new(&rows, 1.0, &device).inputs;
    let mut model = student;
    let step_tokens = (args.rows * args.seq) as f64;
    let mut parts = Vec::new();
    for step in 0..=args.steps {
        sync(&device)?;
        let t = Instant::now();
        let logits = objective.teacher.forward(teacher_inputs.clone());
        sync(&device)?;
        drop(logits);
        let teacher_s = t.elapsed().as_secs_f64();

        let mut phases = StepTimings::default();
        let t = Instant::now();
        let (trained, _) = train_step.run(
            model,
            &mut adam,
            step as u64,
            &rows,
            LEARNING_RATE,
            Some(&mut phases),
        )?;
        model = trained;
        let total = t.elapsed().as_secs_f64();
        if step > 0 {
            parts.push([
                teacher_s,
                phases.forward_s - teacher_s,
                phases.backward_s,
                phases.optimizer_s,
                total,
            ]);
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
    if let Some(memory) = B::memory_figure(&device) {
        println!("memory: {memory}");
    }
    Ok(())
}
