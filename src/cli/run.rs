//! `distillery plan` and `distillery run`.

use super::progress::Observer;
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, OverrideArgs, StoreArgs, output, pipeline};
use clap::Args;
use distillery_engine::config::Config;
use distillery_engine::files::FileHasher;
use distillery_engine::lock::{self, Lock};
use distillery_engine::plan::{self, Plan, Selection, StageState};
use distillery_engine::recipe::ExecutorKind;
use distillery_engine::remote::Remote;
use distillery_engine::run::{self, RunOptions};
use distillery_engine::slurm::executor::SlurmExecutor;
use distillery_engine::{ArtifactKind, Pipeline, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which stages to act on.
#[derive(Args, Clone)]
pub struct SelectionArgs {
    /// Run up to these stages (and what they need).
    #[arg(long, value_name = "STAGE")]
    until: Vec<String>,
    /// Run only these stages; their inputs must already be stored.
    #[arg(long, value_name = "STAGE", conflicts_with_all = ["until", "from"])]
    only: Vec<String>,
    /// Run these stages and everything downstream of them.
    #[arg(long, value_name = "STAGE")]
    from: Vec<String>,
    /// Recompute these stages even when stored (`all` for every selected stage).
    #[arg(long, value_name = "STAGE|all")]
    force: Vec<String>,
}

impl SelectionArgs {
    fn selection(&self) -> Selection {
        Selection {
            until: self.until.clone(),
            only: self.only.clone(),
            from: self.from.clone(),
            force: self.force.clone(),
            absent: Vec::new(),
        }
    }
}

#[derive(Args)]
pub struct PlanArgs {
    recipe: PathBuf,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Machine-readable output on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RunArgs {
    recipe: PathBuf,
    #[command(flatten)]
    selection: SelectionArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Stages to run at the same time when they are independent.
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Show what would run, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Leave the lock file (`<recipe>.lock` beside the recipe) as it is.
    #[arg(long)]
    no_lock: bool,
    /// Read through a remote cache (a directory, s3://, gs://, az://): a
    /// stage it has is pulled and verified instead of computed. Default: the
    /// config file's `remote:`, if any.
    #[arg(long, value_name = "URL", env = "DISTILLERY_REMOTE")]
    remote: Option<String>,
    /// Push every stage this run computes to the remote (`--remote`, or the
    /// config file's `remote:`).
    #[arg(long)]
    push: bool,
    /// Where stages run: `local` (threads of this process) or `slurm` (one
    /// `sbatch` job per stage; the store must be on a filesystem the nodes
    /// share). Default: the recipe's `executor:`, else the config file's,
    /// else local.
    #[arg(long, value_name = "local|slurm", env = "DISTILLERY_EXECUTOR", value_parser = ["local", "slurm"])]
    executor: Option<String>,
    /// Slurm: seconds between two looks at the queue.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    poll: f64,
    /// Machine-readable report on stdout.
    #[arg(long)]
    json: bool,
}

/// Loads the recipe, opens the store and plans; exit code on failure.
pub fn prepare(
    recipe: &Path,
    overrides: &OverrideArgs,
    store: &StoreArgs,
    selection: &Selection,
) -> Result<(Pipeline, Store, Plan), u8> {
    let registry = pipeline::registry();
    let pipeline = pipeline::load(recipe, &overrides.set, &registry)?;
    let store = pipeline::open_store(&pipeline::store_dir(&store.store, recipe))?;
    let hasher = FileHasher::with_cache(store.stat_cache_path());
    let plan = plan::plan(&pipeline, &store, &hasher, selection).map_err(|e| {
        eprintln!("error: {e}");
        match e {
            plan::PlanError::Hash(_) => EXIT_FAILED,
            _ => EXIT_INVALID,
        }
    })?;
    if let Err(e) = hasher.save() {
        tracing::warn!("cannot save the stat cache: {e}");
    }
    Ok((pipeline, store, plan))
}

/// Each selected stage's key and state, with the op's plan-time notes
/// under it.
pub fn print_plan(plan: &Plan, pipeline: &Pipeline) {
    print_overrides(plan);
    let width = plan.stages.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in plan.stages.iter().filter(|s| s.selected) {
        let state = match &s.state {
            StageState::Cached => "cached".to_string(),
            StageState::Run(reason) => format!("run    ({reason})"),
        };
        println!("{:width$}  {:<18}  {}  {state}", s.name, s.op, &s.key[..12]);
        for note in &pipeline.stages[s.index].notes {
            println!("{:width$}  note: {note}", "");
        }
    }
    let runs = plan.to_run().count();
    println!(
        "{runs} of {} selected stages to run",
        plan.stages.iter().filter(|s| s.selected).count()
    );
}

/// The `--set` flags a plan was made with, one per line, so that what is
/// shown is never mistaken for the recipe file alone.
pub fn print_overrides(plan: &Plan) {
    for flag in &plan.overrides {
        println!("override: --set {flag}");
    }
}

pub fn plan(args: PlanArgs) -> u8 {
    let (pipeline, _, plan) = match prepare(
        &args.recipe,
        &args.overrides,
        &args.store,
        &args.selection.selection(),
    ) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if args.json {
        output::print_json(&plan);
    } else {
        print_plan(&plan, &pipeline);
    }
    EXIT_OK
}

pub fn run(args: RunArgs) -> u8 {
    let (pipeline, store, plan) = match prepare(
        &args.recipe,
        &args.overrides,
        &args.store,
        &args.selection.selection(),
    ) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if args.dry_run {
        if args.json {
            output::print_json(&plan);
        } else {
            print_plan(&plan, &pipeline);
        }
        return EXIT_OK;
    }
    let device = match distillery_ops::device::resolve(pipeline.recipe.device) {
        Ok(d) => d,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_INVALID;
        }
    };
    let config = match pipeline::machine_config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let remote_url = args.remote.as_deref().or(config.remote.as_deref());
    let remote = match remote_url.map(Remote::open).transpose() {
        Ok(r) => r.map(Arc::new),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let executor = args
        .executor
        .as_deref()
        .and_then(ExecutorKind::parse)
        .or(pipeline.recipe.executor)
        .or(config.executor)
        .unwrap_or_default();
    let slurm = match executor {
        ExecutorKind::Local => None,
        ExecutorKind::Slurm => match slurm_executor(&args, &store, &config) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                eprintln!("error: {e:#}");
                return EXIT_INVALID;
            }
        },
    };
    if args.push && remote.is_none() {
        eprintln!(
            "error: --push needs a remote: --remote URL, DISTILLERY_REMOTE, or `remote:` in the config file"
        );
        return EXIT_INVALID;
    }
    let options = RunOptions {
        jobs: args.jobs as usize,
        device,
        remote,
        push: args.push,
        slurm,
    };
    if let Err(e) = distillery_engine::interrupt::install_handler() {
        eprintln!("warning: {e}; an interrupt will kill stages without a checkpoint");
    }
    let observer = Observer::new(args.json);
    let report = match run::execute(&pipeline, &plan, &store, &options, &observer) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: the store at {} failed: {e}", store.root().display());
            return EXIT_FAILED;
        }
    };
    if !args.no_lock {
        write_lock(&args.recipe, &pipeline, &plan, &store, &report);
    }
    if args.json {
        output::print_json(&report);
    } else {
        if report.succeeded() {
            print_metrics_tables(&pipeline, &store, &report);
        }
        let ran = report
            .stages
            .iter()
            .filter(|s| matches!(s.outcome, run::StageOutcome::Ran { .. }))
            .count();
        let pulled = report
            .stages
            .iter()
            .filter(|s| matches!(s.outcome, run::StageOutcome::Pulled { .. }))
            .count();
        let failed = report
            .stages
            .iter()
            .filter(|s| s.outcome.is_failure())
            .count();
        let pulled_text = if options.remote.is_some() {
            format!("{pulled} pulled, ")
        } else {
            String::new()
        };
        eprintln!(
            "{}: {} stages, {ran} ran, {pulled_text}{} cached, {failed} failed or skipped",
            report.recipe,
            report.stages.len(),
            report.stages.len() - ran - pulled - failed
        );
    }
    if report.succeeded() {
        EXIT_OK
    } else if distillery_engine::interrupt::requested() {
        distillery_engine::interrupt::EXIT_INTERRUPTED as u8
    } else {
        EXIT_FAILED
    }
}

/// How a Slurm job computes one stage: this binary's `run-stage` command,
/// with absolute paths (jobs start in another folder, maybe on another
/// node) and the same overrides.
fn slurm_executor(args: &RunArgs, store: &Store, config: &Config) -> anyhow::Result<SlurmExecutor> {
    anyhow::ensure!(
        args.poll > 0.0 && args.poll.is_finite(),
        "--poll must be a positive number of seconds"
    );
    let absolute = |p: &Path| -> anyhow::Result<PathBuf> {
        std::fs::canonicalize(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    let mut job_args = vec![
        "run-stage".to_string(),
        absolute(&args.recipe)?.display().to_string(),
        "--store".to_string(),
        absolute(store.root())?.display().to_string(),
    ];
    for flag in &args.overrides.set {
        job_args.extend(["--set".to_string(), flag.clone()]);
    }
    Ok(SlurmExecutor {
        program: std::env::current_exe()?,
        args: job_args,
        poll: std::time::Duration::from_secs_f64(args.poll),
        machine: config.slurm.clone(),
    })
}

/// Records what the run left stored in the recipe's lock file. A lock that
/// cannot be read or written is a warning: the run's results are stored
/// either way, and the next run writes the lock again.
fn write_lock(
    recipe: &Path,
    pipeline: &Pipeline,
    plan: &Plan,
    store: &Store,
    report: &run::RunReport,
) {
    let path = lock::path_for(recipe);
    let previous = match Lock::read(&path) {
        Ok(previous) => previous,
        Err(e) => {
            eprintln!("warning: {e}; writing a new lock");
            None
        }
    };
    let updated = Lock::updated(previous.clone(), pipeline, plan, store, report);
    if previous.as_ref() == Some(&updated) {
        return;
    }
    if let Err(e) = updated.write(&path) {
        eprintln!("warning: {e}");
    }
}

/// Prints the `table.md` of every Metrics stage (`evaluate`) the run
/// computed or found stored, so that a run ends with its results, a rerun
/// that is a cache hit included, instead of only a count of stages. The
/// tables go to stdout; progress and the summary line go to stderr.
fn print_metrics_tables(pipeline: &Pipeline, store: &Store, report: &run::RunReport) {
    for stage in &report.stages {
        let is_metrics = pipeline
            .stage_index(&stage.name)
            .is_some_and(|i| pipeline.stages[i].op.output() == ArtifactKind::Metrics);
        if !is_metrics || stage.outcome.is_failure() {
            continue;
        }
        let path = store
            .output_dir(&stage.key)
            .join(distillery_ops::eval::TABLE_FILE);
        // Metrics ops other than `evaluate` may write no table.
        if let Ok(table) = std::fs::read_to_string(&path) {
            println!(
                "\n{} ({}):\n\n{}",
                stage.name,
                path.display(),
                table.trim_end()
            );
        }
    }
}
