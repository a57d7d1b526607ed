//! `distillery status [--why]`: which stages are up to date, and for those
//! that are not, which field of their key changed since the last run.

use super::run::{prepare, print_overrides};
use super::{EXIT_OK, OverrideArgs, StoreArgs, output};
use clap::Args;
use distillery_engine::Pipeline;
use distillery_engine::key::KeyChange;
use distillery_engine::plan::{RunReason, Selection, StageState};
use distillery_engine::validate::Stage;
use std::path::PathBuf;

#[derive(Args)]
pub struct StatusArgs {
    recipe: PathBuf,
    /// Only these stages.
    stages: Vec<String>,
    /// Explain, field by field, what changed in each out-of-date stage.
    #[arg(long)]
    why: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Machine-readable output on stdout.
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> u8 {
    let selection = Selection {
        until: args.stages.clone(),
        ..Selection::default()
    };
    let (pipeline, _, plan) = match prepare(&args.recipe, &args.overrides, &args.store, &selection)
    {
        Ok(x) => x,
        Err(code) => return code,
    };
    let shown: Vec<_> = plan
        .stages
        .iter()
        .filter(|s| args.stages.is_empty() || args.stages.contains(&s.name))
        .collect();
    if args.json {
        output::print_json(&shown);
        return EXIT_OK;
    }
    print_overrides(&plan);
    for s in shown {
        match &s.state {
            StageState::Cached => println!("{}: up to date ({})", s.name, &s.key[..12]),
            StageState::Run(reason) => {
                println!("{}: out of date: {reason}", s.name);
                if args.why
                    && let RunReason::Changed { changes } = reason
                {
                    let stage = &pipeline.stages[s.index];
                    for change in changes {
                        println!("    {}", describe(change, stage, &pipeline));
                    }
                }
            }
        }
    }
    EXIT_OK
}

/// One change in words; an input's change names the upstream stages.
fn describe(change: &KeyChange, stage: &Stage, pipeline: &Pipeline) -> String {
    let Some(slot) = change.field.strip_prefix("inputs.") else {
        return change.to_string();
    };
    let short = |v: &Option<serde_json::Value>| match v {
        Some(serde_json::Value::Array(keys)) => keys
            .iter()
            .map(|k| {
                k.as_str()
                    .map_or("?", |k| &k[..k.len().min(12)])
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "(none)".to_string(),
    };
    let names: Vec<String> = stage
        .inputs
        .get(slot)
        .into_iter()
        .flatten()
        .map(|&j| format!("`{}`", pipeline.stages[j].name))
        .collect();
    format!(
        "{}: upstream {} changed ({} -> {})",
        change.field,
        names.join(", "),
        short(&change.before),
        short(&change.after)
    )
}
