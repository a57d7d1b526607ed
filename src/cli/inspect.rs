//! `distillery inspect <model>`: architecture, parameter counts by kind,
//! storage types and per-layer shapes of a GGUF file or model folder.

use super::{EXIT_FAILED, EXIT_OK, output};
use clap::Args;
use distillery_ops::inspect::ModelSummary;
use distillery_ops::io::hf_architecture::{ArchitectureChoice, resolve};
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face model folder (a Model artifact is one),
    /// or a Scores artifact folder.
    model: PathBuf,
    /// Machine-readable output on stdout.
    #[arg(long)]
    json: bool,
}

pub fn inspect(args: InspectArgs) -> u8 {
    if args
        .model
        .join(distillery_ops::io::scores::SCORES_FILE)
        .is_file()
    {
        return inspect_scores(&args);
    }
    let summary = match ModelSummary::read(&args.model) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_FAILED;
        }
    };
    let counts = summary.parameter_counts();
    if args.json {
        output::print_json(&serde_json::json!({
            "format": summary.format,
            "config": summary.config.to_json(),
            "transformers_class": resolve(&summary.config, ArchitectureChoice::Auto)
                .ok()
                .map(|r| r.architecture.class()),
            "parameters": counts,
            "dtypes": summary.dtypes(),
            "tensors": summary.tensors,
        }));
        return EXIT_OK;
    }
    let c = &summary.config;
    println!("{} ({})", args.model.display(), summary.format);
    println!(
        "architecture: Llama, {} layers, hidden {}, {} query heads / {} kv heads of {} dims, ffn {}, vocab {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size
    );
    println!(
        "              rope theta {}{}, rms eps {}, {} embeddings{}{}",
        c.rope_theta,
        c.rope_scaling
            .as_ref()
            .map_or(String::new(), |r| format!(" ({} scaling)", r.kind())),
        c.rms_norm_eps,
        if c.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        },
        if c.attention_bias {
            ", attention bias"
        } else {
            ""
        },
        if c.mlp_bias { ", mlp bias" } else { "" },
    );
    match resolve(c, ArchitectureChoice::Auto) {
        Ok(resolved) => println!("transformers: exports as {resolved}"),
        Err(why) => println!("transformers: no export class ({why})"),
    }
    let dtypes: Vec<String> = summary
        .dtypes()
        .iter()
        .map(|(d, n)| format!("{d} x{n}"))
        .collect();
    println!("storage: {}", dtypes.join(", "));
    let pct = |n: usize| 100.0 * n as f64 / counts.total.max(1) as f64;
    println!("parameters: {} total", group(counts.total));
    for (kind, n) in [
        ("embedding", counts.embedding),
        ("attention", counts.attention),
        ("mlp", counts.mlp),
        ("norms", counts.norms),
        ("lm_head", counts.lm_head),
    ] {
        println!("  {kind:<10} {:>15}  {:5.1}%", group(n), pct(n));
    }
    // Layers with identical shapes are printed once, as a range.
    let mut i = 0;
    while i < c.num_hidden_layers {
        let shapes = summary.layer_shapes(i);
        let mut j = i + 1;
        while j < c.num_hidden_layers && summary.layer_shapes(j) == shapes {
            j += 1;
        }
        let range = if j - i == 1 {
            format!("layer {i}")
        } else {
            format!("layers {i}-{}", j - 1)
        };
        println!("{range}:");
        for (name, shape) in &shapes {
            println!("  {name:<36} {shape:?}");
        }
        i = j;
    }
    EXIT_OK
}

/// 134515008 -> "134,515,008"
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A Scores artifact: each axis's ranking, most important first.
fn inspect_scores(args: &InspectArgs) -> u8 {
    use distillery_ops::io::scores::{Scores, ranking};
    let scores = match Scores::load(&args.model) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_FAILED;
        }
    };
    if args.json {
        output::print_json(&serde_json::json!({
            "summary": scores.summary,
            "tensors": scores.tensors.iter().map(|(k, v)| (k.clone(), serde_json::json!({"shape": v.shape, "values": v.data}))).collect::<serde_json::Map<_, _>>(),
        }));
        return EXIT_OK;
    }
    let s = &scores.summary;
    println!(
        "{} (Scores): {} calibration rows of {} tokens, aggregation batch {} / sequence {}{}",
        args.model.display(),
        s.samples,
        s.seq_len,
        s.batch_aggregation,
        s.sequence_aggregation,
        s.baseline_loss
            .map_or(String::new(), |l| format!(", held-out loss {l:.4}"))
    );
    let show = |values: &[f32], limit: usize| -> String {
        let order = ranking(values);
        let shown: Vec<String> = order
            .iter()
            .take(limit)
            .map(|&i| format!("{i} ({:.4})", values[i]))
            .collect();
        let more = if order.len() > limit {
            format!(" ... {} more", order.len() - limit)
        } else {
            String::new()
        };
        format!("{}{more}", shown.join(", "))
    };
    for (name, t) in &scores.tensors {
        match t.shape.as_slice() {
            [_] => {
                println!("{name} [{}], most important first:", t.shape[0]);
                println!("  {}", show(&t.data, 12));
                if t.shape[0] > 12 {
                    let order = ranking(&t.data);
                    let least: Vec<String> =
                        order.iter().rev().take(6).map(|i| i.to_string()).collect();
                    println!("  least important: {}", least.join(", "));
                }
            }
            [layers, n] => {
                println!("{name} [{layers} layers x {n}], per layer, most important first:");
                for l in 0..*layers {
                    println!("  layer {l:>3}: {}", show(Scores::row(t, l), 8));
                }
            }
            _ => println!("{name} {:?}", t.shape),
        }
    }
    EXIT_OK
}
