//! `distillery status [--why]`: which stages are up to date, and for those
//! that are not, which field of their key changed since the last run.
//! `--locked` compares the recipe with its lock file instead, for CI.

use super::run::{prepare, print_overrides};
use super::{EXIT_FAILED, EXIT_OK, OverrideArgs, StoreArgs, output};
use clap::Args;
use distillery_engine::Pipeline;
use distillery_engine::Store;
use distillery_engine::key::KeyChange;
use distillery_engine::lock::{self, Lock};
use distillery_engine::plan::{self, Plan, RunReason, Selection, StageState};
use distillery_engine::slurm::jobs;
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
    /// Check the recipe against its lock file (`<recipe>.lock`): exit 1 when
    /// a stage's key no longer matches, is missing, or is no longer in the
    /// recipe. Runs nothing.
    #[arg(long, conflicts_with = "why")]
    locked: bool,
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
    let (pipeline, store, plan) =
        match prepare(&args.recipe, &args.overrides, &args.store, &selection) {
            Ok(x) => x,
            Err(code) => return code,
        };
    if args.locked {
        return check_lock(&args, &plan, &store);
    }
    let shown: Vec<_> = plan
        .stages
        .iter()
        .filter(|s| plan::selects_any(&args.stages, &s.name))
        .collect();
    if args.json {
        // Each stage as `plan --json` has it, with its Slurm job (id, last
        // state seen) when it is not stored and had one.
        let stages: Vec<serde_json::Value> = shown
            .iter()
            .map(|s| {
                let mut value = serde_json::to_value(s).expect("a planned stage is JSON");
                if matches!(s.state, StageState::Run(_))
                    && let Some(job) = jobs::read_record(&store, &s.name, &s.key)
                {
                    value["slurm_job"] = serde_json::to_value(job).expect("a job record is JSON");
                }
                value
            })
            .collect();
        output::print_json(&stages);
        return EXIT_OK;
    }
    print_overrides(&plan);
    for s in shown {
        match &s.state {
            StageState::Cached => println!("{}: up to date ({})", s.name, &s.key[..12]),
            StageState::Run(reason) => {
                println!("{}: out of date: {reason}", s.name);
                print_job(&store, &s.name, &s.key);
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

/// The Slurm job of a stage that is not stored, if it had one: its id and
/// state (from the queue while it is there, else the last state seen) and
/// its log.
fn print_job(store: &Store, stage: &str, key: &str) {
    let Some(record) = jobs::read_record(store, stage, key) else {
        return;
    };
    let live = jobs::queue_state(&record.job_id).ok().flatten();
    let state = live.as_deref().unwrap_or(&record.state);
    let log = jobs::log_path(store, stage, key, &record.job_id);
    let what = if live.is_some() {
        "is"
    } else {
        "was last seen"
    };
    println!(
        "    slurm job {} {what} {state} (log {})",
        record.job_id,
        log.display()
    );
}

/// `status --locked`: the recipe's keys against its lock file.
fn check_lock(args: &StatusArgs, plan: &Plan, store: &Store) -> u8 {
    let path = lock::path_for(&args.recipe);
    let found = match Lock::read(&path) {
        Ok(Some(found)) => found,
        Ok(None) => {
            eprintln!(
                "error: no lock file at {}: `distillery run` writes it",
                path.display()
            );
            return EXIT_FAILED;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let problems = lock::check(&found, plan, store, &args.stages);
    if args.json {
        output::print_json(&serde_json::json!({
            "lock": path,
            "matches": problems.is_empty(),
            "problems": problems,
        }));
    } else if problems.is_empty() {
        println!(
            "{}: the recipe matches its lock ({} stages)",
            path.display(),
            plan.stages
                .iter()
                .filter(|s| plan::selects_any(&args.stages, &s.name))
                .count()
        );
    } else {
        for p in &problems {
            println!("{}: {}", p.stage, p.problem);
            for change in &p.changes {
                println!("    {change}");
            }
        }
        println!(
            "{}: {} problem{}",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
    }
    if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
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
