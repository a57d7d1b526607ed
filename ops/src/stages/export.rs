//! `export`: writes a Model artifact to a folder the user names, as a
//! Hugging Face folder in the dtype asked for, ready for transformers.
//!
//! The folder is written beside its destination and renamed into place, so
//! a failed export never leaves half a model there. The stage's own artifact
//! records what was written (paths and digests); rerun with `--force STAGE`
//! to write the folder again after deleting it.

use crate::io::hf_folder::{HfWriteOptions, read_hf_folder, write_hf_folder};
use crate::io::safetensors_io::DiskDtype;
use anyhow::{Context, bail};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub struct Export;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Destination folder, relative to the recipe's folder.
    pub path: PathBuf,
    /// Element type of the written weights.
    #[serde(default = "default_dtype")]
    pub dtype: DiskDtype,
    /// Split the weights into shards of at most this many MB (transformers'
    /// `max_shard_size`); one file when absent.
    #[serde(default)]
    pub max_shard_mb: Option<u64>,
    /// Replace the destination when it exists (otherwise that is an error).
    #[serde(default)]
    pub overwrite: bool,
}

fn default_dtype() -> DiskDtype {
    DiskDtype::BF16
}

impl TypedOp for Export {
    type Params = ExportParams;
    const NAME: &'static str = "export";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Writes a model to a folder outside the store, as a Hugging Face folder in the dtype asked for.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("model", ArtifactKind::Model)]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }

    fn check(&self, p: &ExportParams, _: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.path.as_os_str().is_empty() {
            issues.push(ParamIssue::at(&["path"], "`path` must name a folder"));
        }
        if p.max_shard_mb == Some(0) {
            issues.push(ParamIssue::at(
                &["max_shard_mb"],
                "`max_shard_mb` must be at least 1",
            ));
        }
        issues
    }

    fn run(&self, p: ExportParams, ctx: &RunContext) -> anyhow::Result<()> {
        let destination = ctx.resolve(&p.path);
        if destination.exists() && !p.overwrite {
            bail!(
                "{} exists; set `overwrite: true` to replace it",
                destination.display()
            );
        }
        let source = ctx.input("model")?;
        let folder = read_hf_folder(source).context("cannot read the model artifact")?;
        let parent = destination
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let staging = tempfile::Builder::new()
            .prefix(".distillery-export-")
            .tempdir_in(parent)
            .with_context(|| format!("cannot write in {}", parent.display()))?;
        let options = HfWriteOptions {
            dtype: p.dtype,
            max_shard_bytes: p.max_shard_mb.map(|mb| mb * 1_000_000),
        };
        write_hf_folder(
            staging.path(),
            &folder.config,
            &folder.tensors,
            &folder.assets,
            &options,
        )?;
        let written = distillery_engine::store::hash_tree(staging.path())?;
        if destination.exists() {
            std::fs::remove_dir_all(&destination)
                .with_context(|| format!("cannot replace {}", destination.display()))?;
        }
        std::fs::rename(staging.keep(), &destination)
            .with_context(|| format!("cannot move the export to {}", destination.display()))?;
        let record = serde_json::json!({
            "path": destination,
            "dtype": p.dtype,
            "files": written,
        });
        std::fs::write(
            ctx.output_dir.join("export.json"),
            serde_json::to_vec_pretty(&record)?,
        )?;
        ctx.progress
            .log(&format!("wrote {}", destination.display()));
        Ok(())
    }
}
