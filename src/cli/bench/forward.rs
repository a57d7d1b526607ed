//! `bench forward`: the model's forward pass in tokens/s for a few batch
//! shapes, and greedy decoding in ms per new token, on the CPU.

use super::{deterministic_tokens, load_cpu_model, median_secs};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ForwardArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    /// The matrix products' arithmetic: f32, or bf16 operands with f32
    /// accumulation (on CPUs with AMX; f32 elsewhere).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: distillery_ops::kernels::Precision,
    /// Sequence lengths to time.
    #[arg(long, value_delimiter = ',', default_value = "36,512")]
    seq: Vec<usize>,
    /// Rows per batch, timed with every sequence length
    /// (`--rows 1,4 --seq 512,256` times 1 x 512, 1 x 256, 4 x 512, 4 x 256).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    rows: Vec<usize>,
    /// Timed repetitions per measurement (the median is printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// New tokens for the decoding measurement (0 skips it).
    #[arg(long, default_value_t = 32)]
    decode: usize,
}

pub fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    use distillery_ops::model::tokens_tensor;
    let device = Default::default();
    let (model, _) = load_cpu_model(&args.model, &device, args.precision)?;
    let longest = args.seq.iter().copied().max().unwrap_or(1);
    let most = args.rows.iter().copied().max().unwrap_or(1);
    let tokens = deterministic_tokens(most, longest, model.config.vocab_size);
    for &rows in &args.rows {
        for &seq in &args.seq {
            let batch: Vec<&[u32]> = tokens[..rows].iter().map(|r| &r[..seq]).collect();
            let secs = median_secs(args.runs, || {
                let logits = model.forward(tokens_tensor(&batch, &device));
                let _ = logits.into_data();
            });
            println!(
                "forward, batch {rows} x {seq} tokens: {:.1} ms median of {}, {:.0} tokens/s",
                secs * 1e3,
                args.runs,
                (rows * seq) as f64 / secs
            );
        }
    }
    if args.decode > 0 {
        let prompt = &tokens[0][..longest.min(36)];
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
