//! `distillery export RECIPE STAGE DEST`: write a stored Model artifact
//! outside the store, as a Hugging Face folder (for transformers) or a GGUF
//! file (for llama.cpp), in the dtype asked for.

use super::run::prepare;
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, OverrideArgs, StoreArgs};
use clap::Args;
use distillery_engine::ArtifactKind;
use distillery_engine::plan::{Selection, StageState};
use distillery_ops::export::{ExportDtype, ExportFormat, ExportOptions, export_model};
use distillery_ops::io::hf_architecture::ArchitectureChoice;
use distillery_ops::io::hf_folder::read_hf_folder;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    recipe: PathBuf,
    /// A stage that produces a Model.
    stage: String,
    /// Destination: a folder for `--format hf`, a file for `--format gguf`
    /// (must not exist unless --overwrite).
    dest: PathBuf,
    /// `hf`: a Hugging Face folder (transformers, vLLM); `gguf`: one file
    /// for llama.cpp, Ollama, LM Studio. Default: gguf when DEST ends in
    /// `.gguf`, hf otherwise.
    #[arg(long, value_parser = ["hf", "gguf"])]
    format: Option<String>,
    /// Weight type: f32, f16, bf16, and for GGUF also q8_0 and q4_0.
    #[arg(long, default_value = "bf16", value_parser = ExportDtype::ALL.map(ExportDtype::name))]
    dtype: String,
    /// `hf` only: the transformers class config.json declares. `auto`:
    /// Llama where transformers accepts the shape, otherwise Mistral
    /// without a sliding window (the same computation).
    #[arg(long, default_value = "auto", value_parser = ["auto", "llama", "mistral"])]
    architecture: String,
    /// `hf` only: split the weights into shards of at most this many MB.
    #[arg(long)]
    max_shard_mb: Option<u64>,
    /// Replace the destination if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    overrides: OverrideArgs,
}

/// A value clap already checked against the serde names.
fn parsed<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .expect("clap restricts the value to the serde names")
}

pub fn export(args: ExportArgs) -> u8 {
    let format = match &args.format {
        Some(f) => parsed::<ExportFormat>(f),
        None if args
            .dest
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf")) =>
        {
            ExportFormat::Gguf
        }
        None => ExportFormat::Hf,
    };
    let options = ExportOptions {
        format,
        dtype: parsed(&args.dtype),
        architecture: parsed::<ArchitectureChoice>(&args.architecture),
        max_shard_bytes: args.max_shard_mb.map(|mb| mb * 1_000_000),
        name: args.stage.clone(),
    };
    if let Some((option, message)) = options.problems().into_iter().next() {
        eprintln!("error: --{}: {message}", option.replace('_', "-"));
        return EXIT_INVALID;
    }
    let selection = Selection {
        until: vec![args.stage.clone()],
        ..Selection::default()
    };
    let (pipeline, store, plan) =
        match prepare(&args.recipe, &args.overrides, &args.store, &selection) {
            Ok(x) => x,
            Err(code) => return code,
        };
    let index = pipeline.stage_index(&args.stage).expect("selected");
    let stage = &pipeline.stages[index];
    if stage.op.output() != ArtifactKind::Model {
        eprintln!(
            "error: stage `{}` produces a {}, not a Model",
            args.stage,
            stage.op.output()
        );
        return EXIT_INVALID;
    }
    let planned = plan.stage(index);
    if planned.state != StageState::Cached {
        eprintln!(
            "error: stage `{}` is not in the store; run it first (`distillery run {} --until {}`)",
            args.stage,
            args.recipe.display(),
            args.stage
        );
        return EXIT_FAILED;
    }
    if args.dest.exists() && !args.overwrite {
        eprintln!(
            "error: {} exists; pass --overwrite to replace it",
            args.dest.display()
        );
        return EXIT_INVALID;
    }
    let result = read_hf_folder(&store.output_dir(&planned.key))
        .and_then(|folder| export_model(&folder, &args.dest, &options));
    match result {
        Ok(report) => {
            for note in &report.notes {
                eprintln!("{note}");
            }
            eprintln!(
                "wrote {} ({format}, {})",
                args.dest.display(),
                options.dtype
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}
