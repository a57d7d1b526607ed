//! `distillery cache push|pull RECIPE [STAGE...] --remote URL`: share stored
//! entries through a remote (a directory, an S3-compatible store, GCS or
//! Azure). Entries travel whole and are verified on arrival; see
//! `distillery_engine::remote`.

use super::run::prepare;
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, OverrideArgs, StoreArgs, output, pipeline};
use clap::Args;
use distillery_engine::Store;
use distillery_engine::plan::{self, PlannedStage, Selection};
use distillery_engine::remote::{Remote, RemoteError, Transfer};
use distillery_ops::report::format::format_bytes;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub struct TransferArgs {
    /// The recipe whose stages to send or receive.
    recipe: PathBuf,
    /// Only these stages (default: every stage of the recipe).
    stages: Vec<String>,
    /// The remote: a directory, `file://`, `s3://BUCKET/PREFIX`, `gs://...`,
    /// `az://...`. Default: the config file's `remote:`.
    #[arg(long, value_name = "URL", env = "DISTILLERY_REMOTE")]
    remote: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Direction {
    Push,
    Pull,
}

/// One stage's result, as printed and in `--json`.
#[derive(Serialize)]
struct StageTransfer {
    stage: String,
    key: String,
    /// `pushed`, `pulled`, `present` (nothing to move), `unavailable`
    /// (not stored for a push, not in the remote for a pull) or `failed`.
    outcome: &'static str,
    #[serde(flatten)]
    transfer: Transfer,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn transfer(args: TransferArgs, direction: Direction) -> u8 {
    let selection = Selection {
        until: args.stages.clone(),
        ..Selection::default()
    };
    let (_, store, plan) = match prepare(&args.recipe, &args.overrides, &args.store, &selection) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let config = match pipeline::machine_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(url) = args.remote.clone().or(config.remote) else {
        eprintln!(
            "error: no remote: give --remote URL, set DISTILLERY_REMOTE, or put `remote:` in the config file"
        );
        return EXIT_INVALID;
    };
    let remote = match Remote::open(&url) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let chosen: Vec<&PlannedStage> = plan
        .stages
        .iter()
        .filter(|s| plan::selects_any(&args.stages, &s.name))
        .collect();
    let mut results = Vec::new();
    for stage in chosen {
        let result = match direction {
            Direction::Push => push_one(&remote, &store, stage),
            Direction::Pull => pull_one(&remote, &store, &plan.recipe, stage),
        };
        if !args.json {
            print_line(&result, direction);
        }
        results.push(result);
    }
    // Stages named on the command line must move (or be there already);
    // with none named, what is unavailable is only reported.
    let failed = results
        .iter()
        .any(|r| r.outcome == "failed" || (!args.stages.is_empty() && r.outcome == "unavailable"));
    let moved: Transfer = results.iter().fold(Transfer::default(), |mut sum, r| {
        sum.files += r.transfer.files;
        sum.bytes += r.transfer.bytes;
        sum.seconds += r.transfer.seconds;
        sum
    });
    if args.json {
        output::print_json(&serde_json::json!({
            "remote": remote.name(),
            "stages": results,
        }));
    } else {
        eprintln!(
            "{}: {} stages, {} files, {} {} {}",
            plan.recipe,
            results.len(),
            moved.files,
            format_bytes(moved.bytes),
            match direction {
                Direction::Push => "sent to",
                Direction::Pull => "received from",
            },
            remote.name()
        );
    }
    if failed { EXIT_FAILED } else { EXIT_OK }
}

fn push_one(remote: &Remote, store: &Store, stage: &PlannedStage) -> StageTransfer {
    if !store.contains(&stage.key) {
        return outcome(stage, "unavailable", Transfer::default(), None);
    }
    match remote.push(store, &stage.key) {
        Ok(t) if t.entry_present => outcome(stage, "present", t, None),
        Ok(t) => outcome(stage, "pushed", t, None),
        Err(e) => failed(stage, e),
    }
}

fn pull_one(remote: &Remote, store: &Store, recipe: &str, stage: &PlannedStage) -> StageTransfer {
    if store.contains(&stage.key) {
        return outcome(stage, "present", Transfer::default(), None);
    }
    // Both locks: the store may be shared with Slurm jobs on other machines
    // (see `shared_lock`), where the flock alone does not hold.
    let _across_machines = match store.lock_stage_across_machines(&stage.key) {
        Ok(l) => l,
        Err(e) => return failed(stage, e.into()),
    };
    let lock = match store.lock_stage(&stage.key) {
        Ok(l) => l,
        Err(e) => return failed(stage, e.into()),
    };
    match remote.pull(store, &stage.key, &lock) {
        Ok(t) if t.entry_present => outcome(stage, "present", t, None),
        Ok(t) => {
            // Recorded like a run's stage, so that `status` knows it.
            if let Err(e) = store.record_stage(recipe, &stage.name, &stage.material) {
                tracing::warn!("cannot record stage {}: {e}", stage.name);
            }
            outcome(stage, "pulled", t, None)
        }
        Err(RemoteError::NotInRemote { .. }) => {
            outcome(stage, "unavailable", Transfer::default(), None)
        }
        Err(e) => failed(stage, e),
    }
}

fn outcome(
    stage: &PlannedStage,
    outcome: &'static str,
    transfer: Transfer,
    error: Option<String>,
) -> StageTransfer {
    StageTransfer {
        stage: stage.name.clone(),
        key: stage.key.clone(),
        outcome,
        transfer,
        error,
    }
}

fn failed(stage: &PlannedStage, e: RemoteError) -> StageTransfer {
    outcome(stage, "failed", Transfer::default(), Some(e.to_string()))
}

fn print_line(r: &StageTransfer, direction: Direction) {
    let key = &r.key[..12];
    let t = &r.transfer;
    let rate = if t.seconds > 0.0 {
        format!(", {}/s", format_bytes((t.bytes as f64 / t.seconds) as u64))
    } else {
        String::new()
    };
    let text = match r.outcome {
        "pushed" | "pulled" => format!(
            "{}: {} {} files, {} in {:.1}s{rate}{} ({key})",
            r.stage,
            r.outcome,
            t.files,
            format_bytes(t.bytes),
            t.seconds,
            if t.skipped > 0 {
                format!("; {} already there", t.skipped)
            } else {
                String::new()
            }
        ),
        "present" => format!("{}: already there ({key})", r.stage),
        "unavailable" => format!(
            "{}: {} ({key})",
            r.stage,
            match direction {
                Direction::Push => "not stored here, nothing to push",
                Direction::Pull => "not in the remote",
            }
        ),
        _ => format!(
            "{}: FAILED: {}",
            r.stage,
            r.error.as_deref().unwrap_or("unknown error")
        ),
    };
    eprintln!("{text}");
}
