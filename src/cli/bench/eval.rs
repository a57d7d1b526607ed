//! `bench eval`: evaluation throughput as the `evaluate` stage scores, on
//! the CPU: benchmark items/s and perplexity tokens/s.

use super::load_cpu_model;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// A GGUF file or a Hugging Face model folder.
    model: PathBuf,
    /// The matrix products' arithmetic: f32, or bf16 operands with f32
    /// accumulation (on CPUs with AMX; f32 elsewhere).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: distillery_ops::kernels::Precision,
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
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    use distillery_ops::eval::multiple_choice::{ScoringSetup, run_task};
    use distillery_ops::eval::tasks::load_task_file;
    use distillery_ops::eval::text_perplexity::{read_text_file, run_text, text_windows};
    use distillery_ops::eval::tokenize::EvalTokenizer;
    let device = Default::default();
    let (model, assets) = load_cpu_model(&args.model, &device, args.precision)?;
    let tokenizer = assets
        .tokenizer
        .ok_or_else(|| anyhow::anyhow!("{} has no tokenizer", args.model.display()))?;
    let tok = EvalTokenizer::new(tokenizer)?;

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
