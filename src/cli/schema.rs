//! `distillery schema`: the recipe JSON Schema.

use super::{EXIT_FAILED, EXIT_OK};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SchemaArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// `json`: the JSON Schema; `markdown`: the op reference for the README.
    #[arg(long, value_enum, default_value = "json")]
    format: SchemaFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaFormat {
    Json,
    Markdown,
}

pub fn schema(args: SchemaArgs) -> u8 {
    // Only the public ops: the engine's test ops never appear in the schema.
    let mut registry = distillery_engine::OpRegistry::new();
    distillery_ops::register(&mut registry);
    let text = match args.format {
        SchemaFormat::Json => {
            let schema = distillery_engine::schema::recipe_schema(&registry);
            format!("{}\n", serde_json::to_string_pretty(&schema).unwrap())
        }
        SchemaFormat::Markdown => distillery_engine::schema::reference_markdown(&registry),
    };
    match args.output {
        None => {
            print!("{text}");
            EXIT_OK
        }
        Some(path) => match std::fs::write(&path, text) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                EXIT_FAILED
            }
        },
    }
}
