//! `export`: writes a Model artifact outside the store for other tools: a
//! Hugging Face folder for transformers (declared as Llama, or as Mistral
//! where transformers' Llama refuses the shape) or a GGUF file for
//! llama.cpp, in the dtype asked for.
//!
//! The stage's own artifact records what was written (paths and digests);
//! rerun with `--force STAGE` to write the destination again after deleting
//! it.

use crate::export::{ExportDtype, ExportFormat, ExportOptions, export_model};
use crate::io::hf_architecture::ArchitectureChoice;
use crate::io::hf_folder::read_hf_folder;
use anyhow::{Context, bail};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub struct Export;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Destination, relative to the recipe's folder: a folder for `hf`, a
    /// file (conventionally `*.gguf`) for `gguf`.
    pub path: PathBuf,
    /// `hf` (a Hugging Face folder) or `gguf` (one llama.cpp file).
    #[serde(default)]
    pub format: ExportFormat,
    /// Element type of the written weights: f32, f16, bf16, or for GGUF
    /// also q8_0 and q4_0 (norms stay f32, q4_0 keeps the embedding and
    /// output matrices at q8_0, and rows that do not split into blocks of
    /// 32 stay f16).
    #[serde(default = "default_dtype")]
    pub dtype: ExportDtype,
    /// `hf` only: the transformers class config.json declares. `auto` is
    /// Llama where transformers accepts the shape, otherwise Mistral
    /// without a sliding window (the same computation).
    #[serde(default)]
    pub architecture: ArchitectureChoice,
    /// `hf` only: split the weights into shards of at most this many MB
    /// (transformers' `max_shard_size`); one file when absent.
    #[serde(default)]
    pub max_shard_mb: Option<u64>,
    /// Replace the destination when it exists (otherwise that is an error).
    #[serde(default)]
    pub overwrite: bool,
}

fn default_dtype() -> ExportDtype {
    ExportDtype::BF16
}

impl ExportParams {
    fn options(&self, name: &str) -> ExportOptions {
        ExportOptions {
            format: self.format,
            dtype: self.dtype,
            architecture: self.architecture,
            max_shard_bytes: self.max_shard_mb.map(|mb| mb * 1_000_000),
            name: name.to_string(),
        }
    }
}

impl TypedOp for Export {
    type Params = ExportParams;
    const NAME: &'static str = "export";
    // 2: Hugging Face folders declare Mistral for shapes Llama refuses; GGUF.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "Writes a model outside the store: a Hugging Face folder (Llama, or Mistral for shapes transformers' Llama refuses) or a llama.cpp GGUF file, in the dtype asked for.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("model", ArtifactKind::Model)]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }

    fn check(&self, p: &ExportParams, _: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.path.as_os_str().is_empty() {
            issues.push(ParamIssue::at(
                &["path"],
                "`path` must name a folder or file",
            ));
        }
        for (option, message) in p.options("").problems() {
            issues.push(ParamIssue::at(&[option], message));
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
        let report = export_model(&folder, &destination, &p.options(ctx.stage))?;
        for note in &report.notes {
            ctx.progress.log(note);
        }
        let record = serde_json::json!({
            "path": destination,
            "format": p.format,
            "dtype": p.dtype,
            "architecture": report.architecture.map(|a| a.class()),
            "files": report.files,
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
