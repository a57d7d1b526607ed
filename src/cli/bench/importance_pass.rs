//! `bench importance-pass`: the importance pass (every width axis and block
//! importance) against a plain forward over the same rows, on the CPU.

use super::deterministic_tokens;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

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

pub fn importance_pass(args: ImportancePassArgs) -> anyhow::Result<()> {
    use distillery_engine::progress::NoProgress;
    use distillery_ops::backend::Cpu;
    use distillery_ops::importance::{AggregationPair, ImportanceSpec, estimate};
    use distillery_ops::kernels::Aggregation;
    use distillery_ops::model::tokens_tensor;
    let device = Default::default();
    let (model, _) = distillery_ops::loader::load_model::<Cpu>(&args.model, &device)?;
    let tokens = deterministic_tokens(args.rows, args.seq, model.config.vocab_size);
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
