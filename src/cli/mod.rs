//! Argument parsing and dispatch. Each command lives in its own module as a
//! function from its options to an exit code.

mod bench;
mod cache;
mod cache_remote;
mod dag;
mod export;
mod generate;
mod inspect;
mod npy;
mod output;
mod pipeline;
mod progress;
mod report;
mod run;
mod run_stage;
mod schema;
mod search_space;
mod status;
mod validate;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes: 0 success, 1 a stage (or a check) failed, 2 the recipe or the
/// command line is invalid.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;

#[derive(Parser)]
#[command(
    name = "distillery",
    version,
    about = "Declarative pipelines that prune and distill Llama-architecture language models",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check recipes and report every problem (exit 2 if any recipe is invalid).
    Validate(validate::ValidateArgs),
    /// Show what `run` would do: each stage's key, cached or not, and why.
    Plan(run::PlanArgs),
    /// Run a recipe: compute every stage that is not in the store.
    Run(run::RunArgs),
    /// Compute one stage whose inputs are stored (what a Slurm job runs).
    #[command(hide = true)]
    RunStage(run_stage::RunStageArgs),
    /// Show which stages are up to date; `--why` explains each change.
    Status(status::StatusArgs),
    /// Print the stage graph as text, Graphviz dot or Mermaid.
    Dag(dag::DagArgs),
    /// Write an HTML report of a run: stage graph, timings, training curves, evaluations, model sizes.
    Report(report::ReportArgs),
    /// Inspect and maintain the artifact store.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Print the recipe JSON Schema (for editors and CI).
    Schema(schema::SchemaArgs),
    /// Write a stored model for other tools: a Hugging Face folder (transformers) or a GGUF file (llama.cpp).
    Export(export::ExportArgs),
    /// Describe a model: architecture, parameter counts, storage, per-layer shapes.
    Inspect(inspect::InspectArgs),
    /// List the architectures a prune can make within a tolerance of a parameter target.
    SearchSpace(search_space::SearchSpaceArgs),
    /// Generate text from a model (GGUF file or model folder).
    Generate(generate::GenerateArgs),
    /// Measure the engine's speed and print the figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Where the store is: `--store DIR`, or `.distillery` next to the recipe.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Artifact store folder (default: `.distillery` next to the recipe).
    #[arg(long, value_name = "DIR", env = "DISTILLERY_STORE")]
    pub store: Option<PathBuf>,
}

/// Changes to the recipe from the command line.
#[derive(Args, Clone, Default)]
pub struct OverrideArgs {
    /// Override one recipe value, typed like the YAML: `--set vars.lr=3e-4`,
    /// `--set stages.distilled.with.train.tokens=2_000_000` (repeatable).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

pub fn main() -> ExitCode {
    init_tracing();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = match cli.command {
        Command::Validate(args) => validate::validate(args),
        Command::Plan(args) => run::plan(args),
        Command::Run(args) => run::run(args),
        Command::RunStage(args) => run_stage::run_stage(args),
        Command::Status(args) => status::status(args),
        Command::Dag(args) => dag::dag(args),
        Command::Report(args) => report::report(args),
        Command::Cache(command) => cache::cache(command),
        Command::Schema(args) => schema::schema(args),
        Command::Export(args) => export::export(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::SearchSpace(args) => search_space::search_space(args),
        Command::Generate(args) => generate::generate_command(args),
        Command::Bench(command) => bench::bench(command),
    };
    ExitCode::from(code)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
