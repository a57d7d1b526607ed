//! `distillery search-space MODEL --params 84M`: the architectures a
//! `prune` stage can make from MODEL within a tolerance of a parameter
//! target, largest first, as a table, JSON, or a `matrix:` list to paste
//! into a recipe.

use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, output};
use clap::Args;
use distillery_ops::inspect::ModelSummary;
use distillery_ops::search::{Candidate, SearchSpace};
use std::path::PathBuf;

#[derive(Args)]
pub struct SearchSpaceArgs {
    /// A GGUF file or a Hugging Face model folder (a Model artifact is one).
    model: PathBuf,
    /// The parameter target: a count, or with a suffix K, M or B (`84M`).
    #[arg(long, value_parser = parse_count)]
    params: usize,
    /// Largest relative distance from the target kept.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Hidden sizes to try (default: steps of 64 down to --min-width).
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// FFN sizes to try (default: steps of 256, or 64 below 1024, down to
    /// --min-width).
    #[arg(long, value_delimiter = ',')]
    ffn: Vec<usize>,
    /// Query heads to try, multiples of the kv groups (default: down to
    /// --min-width).
    #[arg(long, value_delimiter = ',')]
    heads: Vec<usize>,
    /// Layer counts to try (default: down to --min-depth).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Smallest fraction of each width axis the defaults go down to.
    #[arg(long, default_value_t = 0.5)]
    min_width: f64,
    /// Smallest fraction of the layers the defaults go down to.
    #[arg(long, default_value_t = 0.5)]
    min_depth: f64,
    /// Machine-readable output on stdout.
    #[arg(long, conflicts_with = "matrix")]
    json: bool,
    /// Print the candidates as a recipe's `matrix:` list.
    #[arg(long)]
    matrix: bool,
}

/// `84M` -> 84,000,000; `1.5B`, `500K`, or a plain count.
fn parse_count(text: &str) -> Result<usize, String> {
    let (number, scale) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 1e3),
        Some('M') => (&text[..text.len() - 1], 1e6),
        Some('B') => (&text[..text.len() - 1], 1e9),
        _ => (text, 1.0),
    };
    let value: f64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a count (e.g. 84M, 1.5B, 84000000)"))?;
    if !(value > 0.0 && value.is_finite()) {
        return Err(format!("`{text}` must be positive"));
    }
    Ok((value * scale).round() as usize)
}

pub fn search_space(args: SearchSpaceArgs) -> u8 {
    let summary = match ModelSummary::read(&args.model) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_FAILED;
        }
    };
    let space = SearchSpace {
        target_params: args.params,
        tolerance: args.tolerance,
        hidden: args.hidden,
        ffn: args.ffn,
        heads: args.heads,
        layers: args.layers,
        min_width: args.min_width,
        min_depth: args.min_depth,
    };
    let found = match space.enumerate(&summary.config) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    if args.json {
        output::print_json(&serde_json::json!({
            "source_parameters": summary.config.num_parameters(),
            "target": args.params,
            "tolerance": args.tolerance,
            "candidates": found,
        }));
        return EXIT_OK;
    }
    if args.matrix {
        println!("matrix:");
        for c in &found {
            println!(
                "  - {{ hidden: {}, ffn: {}, heads: {}, layers: {} }}",
                c.hidden, c.ffn, c.heads, c.layers
            );
        }
    } else {
        print_table(&found);
    }
    eprintln!(
        "{} architectures within {:.1}% of {:.1}M parameters (the source has {:.1}M)",
        found.len(),
        100.0 * args.tolerance,
        args.params as f64 / 1e6,
        summary.config.num_parameters() as f64 / 1e6
    );
    EXIT_OK
}

fn print_table(found: &[Candidate]) {
    println!("| hidden | ffn | heads | layers | parameters | vs target | transformers |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for c in found {
        println!(
            "| {} | {} | {} | {} | {:.2}M | {:+.1}% | {} |",
            c.hidden,
            c.ffn,
            c.heads,
            c.layers,
            c.parameters as f64 / 1e6,
            100.0 * c.distance,
            match (&c.transformers_class, &c.transformers_problem) {
                (Some(class), _) => class.clone(),
                (None, why) => format!("none: {}", why.as_deref().unwrap_or("")),
            }
        );
    }
}
