//! `distillery validate`: check many recipes at once, for CI.

use super::{EXIT_INVALID, EXIT_OK, OverrideArgs, output, pipeline};
use clap::Args;
use distillery_engine::overrides::Sources;
use std::path::PathBuf;

#[derive(Args)]
pub struct ValidateArgs {
    /// Recipe files.
    #[arg(required = true)]
    recipes: Vec<PathBuf>,
    /// Print the problems as JSON (with line and column) on stdout.
    #[arg(long)]
    json: bool,
    /// Overrides applied to every recipe checked.
    #[command(flatten)]
    overrides: OverrideArgs,
}

pub fn validate(args: ValidateArgs) -> u8 {
    let registry = pipeline::registry();
    let mut invalid = 0;
    let mut reports = Vec::new();
    for path in &args.recipes {
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(e) => {
                invalid += 1;
                eprintln!("error: cannot read recipe {}: {e}", path.display());
                reports.push(
                    serde_json::json!({"recipe": path, "valid": false, "error": e.to_string()}),
                );
                continue;
            }
        };
        let (overrides, validated) = distillery_engine::validate::validate_with_flags(
            path,
            &source,
            &args.overrides.set,
            &registry,
        );
        let name = path.display().to_string();
        let sources = Sources {
            recipe_name: &name,
            recipe: &source,
            overrides: &overrides,
        };
        match validated {
            Ok(p) => {
                let notes: serde_json::Map<String, serde_json::Value> = p
                    .stages
                    .iter()
                    .filter(|s| !s.notes.is_empty())
                    .map(|s| (s.name.clone(), serde_json::json!(s.notes)))
                    .collect();
                if !args.json {
                    eprintln!("{}: ok ({} stages)", path.display(), p.stages.len());
                    for stage in &p.stages {
                        for note in &stage.notes {
                            eprintln!("  note: stage `{}`: {note}", stage.name);
                        }
                    }
                }
                reports.push(serde_json::json!({
                    "recipe": path, "valid": true, "problems": [], "notes": notes,
                }));
            }
            Err(diagnostics) => {
                invalid += 1;
                if !args.json {
                    output::print_diagnostics(path, &sources, &diagnostics);
                }
                let problems: Vec<_> = diagnostics
                    .iter()
                    .map(|d| output::diagnostic_json(&sources, d))
                    .collect();
                reports.push(
                    serde_json::json!({"recipe": path, "valid": false, "problems": problems}),
                );
            }
        }
    }
    if args.json {
        output::print_json(&reports);
    }
    if invalid > 0 { EXIT_INVALID } else { EXIT_OK }
}
