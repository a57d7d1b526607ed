//! `bench forward`: the model's forward pass in tokens/s at a few sequence
//! lengths, and greedy decoding in ms per new token, on the CPU.

use super::{deterministic_tokens, load_cpu_model, median_secs};
use clap::Args;
use std::path::PathBuf;

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

pub fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    use distillery_ops::model::tokens_tensor;
    let device = Default::default();
    let (model, _) = load_cpu_model(&args.model, &device)?;
    let longest = args.seq.iter().copied().max().unwrap_or(1);
    let tokens = deterministic_tokens(1, longest, model.config.vocab_size).remove(0);
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
