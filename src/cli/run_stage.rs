//! `distillery run-stage RECIPE --stage NAME --key KEY`: what a Slurm job
//! runs. It computes exactly one stage, whose inputs must be stored, into
//! the store, as a local run would; SIGTERM (scancel) checkpoints it. The
//! key the engine planned is checked first: a recipe or input file edited
//! after the submission fails the job instead of storing something else.
//! The stage is locked across machines (`shared_lock`) as well as by the
//! usual `flock`, which NFS does not honour between nodes.

use super::progress::Observer;
use super::run::prepare;
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, OverrideArgs, StoreArgs};
use clap::Args;
use distillery_engine::plan::Selection;
use distillery_engine::run::{self, RunOptions, StageOutcome};
use std::path::PathBuf;

#[derive(Args)]
pub struct RunStageArgs {
    recipe: PathBuf,
    /// The stage to compute.
    #[arg(long)]
    stage: String,
    /// The key the engine planned for it.
    #[arg(long)]
    key: String,
    /// Recompute it even when stored.
    #[arg(long)]
    force: bool,
    /// A stage that failed in the run that submitted this job, which this
    /// one goes without (in a partial slot); repeated for each.
    #[arg(long = "absent", value_name = "STAGE")]
    absent: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
}

pub fn run_stage(args: RunStageArgs) -> u8 {
    if let Err(e) = distillery_engine::interrupt::install_handler() {
        eprintln!("warning: {e}");
    }
    let selection = Selection {
        only: vec![args.stage.clone()],
        force: if args.force {
            vec![args.stage.clone()]
        } else {
            Vec::new()
        },
        absent: args.absent.clone(),
        ..Selection::default()
    };
    let (pipeline, store, plan) =
        match prepare(&args.recipe, &args.overrides, &args.store, &selection) {
            Ok(x) => x,
            Err(code) => return code,
        };
    let Some(index) = pipeline.stage_index(&args.stage) else {
        eprintln!("error: the recipe has no stage `{}`", args.stage);
        return EXIT_INVALID;
    };
    let planned = plan.stage(index);
    if planned.key != args.key {
        eprintln!(
            "error: stage `{}` has key {} now, but the job was submitted for {}: the recipe or its input files changed since; rerun the recipe",
            args.stage, planned.key, args.key
        );
        return EXIT_FAILED;
    }
    let device = match distillery_ops::device::resolve(pipeline.recipe.device) {
        Ok(d) => d,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_INVALID;
        }
    };
    // A run on another node may have submitted the same stage: one job
    // computes it, the other finds it stored.
    let _across_machines = match store.lock_stage_across_machines(&args.key) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!(
                "error: cannot lock stage `{}` in the store: {e}",
                args.stage
            );
            return EXIT_FAILED;
        }
    };
    let options = RunOptions::local(1, device);
    let observer = Observer::new(false);
    let outcome = run::compute_stage(&pipeline, &plan, &store, index, &options, &observer);
    match outcome {
        StageOutcome::Ran { seconds } => {
            eprintln!(
                "{}: done in {seconds:.1}s ({})",
                args.stage,
                &args.key[..12]
            );
            EXIT_OK
        }
        StageOutcome::Reused | StageOutcome::Cached | StageOutcome::Pulled { .. } => EXIT_OK,
        StageOutcome::Failed { error } => {
            eprintln!("{}: FAILED: {error}", args.stage);
            if distillery_engine::interrupt::requested() {
                distillery_engine::interrupt::EXIT_INTERRUPTED as u8
            } else {
                EXIT_FAILED
            }
        }
        StageOutcome::Skipped { failed_upstream } => {
            eprintln!("{}: skipped, `{failed_upstream}` failed", args.stage);
            EXIT_FAILED
        }
    }
}
