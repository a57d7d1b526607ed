//! `distillery schema`: the recipe JSON Schema.

use super::{EXIT_FAILED, EXIT_OK};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct SchemaArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// The schema of the public ops (the engine's test ops never appear in it).
pub fn schema_text() -> String {
    let mut registry = distillery_engine::OpRegistry::new();
    distillery_ops::register(&mut registry);
    let schema = distillery_engine::schema::recipe_schema(&registry);
    format!("{}\n", serde_json::to_string_pretty(&schema).unwrap())
}

pub fn schema(args: SchemaArgs) -> u8 {
    let text = schema_text();
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
