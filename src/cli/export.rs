//! `distillery export RECIPE STAGE DIR`: write a stored Model artifact to a
//! folder, as a Hugging Face folder in the dtype asked for.

use super::run::prepare;
use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK, StoreArgs};
use clap::Args;
use distillery_engine::ArtifactKind;
use distillery_engine::plan::{Selection, StageState};
use distillery_ops::io::hf_folder::{HfWriteOptions, read_hf_folder, write_hf_folder};
use distillery_ops::io::safetensors_io::DiskDtype;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExportArgs {
    recipe: PathBuf,
    /// A stage that produces a Model.
    stage: String,
    /// Destination folder (must not exist unless --overwrite).
    dir: PathBuf,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: DtypeArg,
    /// Split the weights into shards of at most this many MB.
    #[arg(long)]
    max_shard_mb: Option<u64>,
    /// Replace the destination if it exists.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

pub fn export(args: ExportArgs) -> u8 {
    let selection = Selection {
        until: vec![args.stage.clone()],
        ..Selection::default()
    };
    let (pipeline, store, plan) = match prepare(&args.recipe, &args.store, &selection) {
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
    if args.dir.exists() && !args.overwrite {
        eprintln!(
            "error: {} exists; pass --overwrite to replace it",
            args.dir.display()
        );
        return EXIT_INVALID;
    }
    let options = HfWriteOptions {
        dtype: match args.dtype {
            DtypeArg::F32 => DiskDtype::F32,
            DtypeArg::F16 => DiskDtype::F16,
            DtypeArg::Bf16 => DiskDtype::BF16,
        },
        max_shard_bytes: args.max_shard_mb.map(|mb| mb * 1_000_000),
    };
    let result = read_hf_folder(&store.output_dir(&planned.key)).and_then(|folder| {
        if args.dir.exists() {
            std::fs::remove_dir_all(&args.dir)?;
        }
        write_hf_folder(
            &args.dir,
            &folder.config,
            &folder.tensors,
            &folder.assets,
            &options,
        )
    });
    match result {
        Ok(()) => {
            eprintln!("wrote {}", args.dir.display());
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}
