//! Takes a stored model out of the store for other tools: a Hugging Face
//! folder transformers loads (declared as the architecture that accepts its
//! shape), or a GGUF file llama.cpp loads. Shared by the `export` op and the
//! `distillery export` command.
//!
//! The result is written beside its destination and renamed into place, so a
//! failed export never leaves half a model there.

mod gguf;
mod gguf_vocab;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::io::hf_architecture::{self, ArchitectureChoice, HfArchitecture};
use crate::io::hf_folder::{HfFolder, HfWriteOptions, write_hf_folder};
use crate::io::safetensors_io::DiskDtype;
use crate::model::LlamaConfig;

pub use gguf::gguf_writer;

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    // A Hugging Face folder: config.json, safetensors, tokenizer files.
    #[default]
    Hf,
    // One llama.cpp GGUF file, tokenizer and chat template included.
    Gguf,
}

/// Element type of the written weights.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExportDtype {
    #[serde(rename = "f32")]
    F32,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "bf16")]
    BF16,
    // GGUF only: 8-bit blocks of 32 with an f16 scale.
    #[serde(rename = "q8_0")]
    Q8_0,
    // GGUF only: 4-bit blocks of 32 with an f16 scale; the embedding and
    // output matrices stay Q8_0.
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl ExportDtype {
    pub const ALL: [ExportDtype; 5] = [
        ExportDtype::F32,
        ExportDtype::F16,
        ExportDtype::BF16,
        ExportDtype::Q8_0,
        ExportDtype::Q4_0,
    ];

    /// The safetensors dtype, for the types a Hugging Face folder can hold.
    pub fn disk_dtype(self) -> Option<DiskDtype> {
        match self {
            ExportDtype::F32 => Some(DiskDtype::F32),
            ExportDtype::F16 => Some(DiskDtype::F16),
            ExportDtype::BF16 => Some(DiskDtype::BF16),
            ExportDtype::Q8_0 | ExportDtype::Q4_0 => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "f32",
            ExportDtype::F16 => "f16",
            ExportDtype::BF16 => "bf16",
            ExportDtype::Q8_0 => "q8_0",
            ExportDtype::Q4_0 => "q4_0",
        }
    }
}

impl fmt::Display for ExportDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Hf => "hf",
            ExportFormat::Gguf => "gguf",
        })
    }
}

/// Everything about an export but its source and destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    pub format: ExportFormat,
    pub dtype: ExportDtype,
    /// Hugging Face only: the declared transformers class.
    pub architecture: ArchitectureChoice,
    /// Hugging Face only: split the weights above this many bytes.
    pub max_shard_bytes: Option<u64>,
    /// GGUF only: `general.name`.
    pub name: String,
}

impl ExportOptions {
    /// What cannot be combined, as (option, message) pairs, before anything
    /// is read.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        match self.format {
            ExportFormat::Hf => {
                if self.dtype.disk_dtype().is_none() {
                    problems.push((
                        "dtype",
                        format!(
                            "{} is a GGUF type; a Hugging Face folder holds f32, f16 or bf16",
                            self.dtype
                        ),
                    ));
                }
            }
            ExportFormat::Gguf => {
                if self.architecture != ArchitectureChoice::Auto {
                    problems.push((
                        "architecture",
                        "`architecture` applies to Hugging Face folders; a GGUF file is always \
                         llama.cpp's `llama`"
                            .to_string(),
                    ));
                }
                if self.max_shard_bytes.is_some() {
                    problems.push((
                        "max_shard_mb",
                        "`max_shard_mb` applies to Hugging Face folders; a GGUF is one file"
                            .to_string(),
                    ));
                }
            }
        }
        if self.max_shard_bytes == Some(0) {
            problems.push((
                "max_shard_mb",
                "`max_shard_mb` must be at least 1".to_string(),
            ));
        }
        problems
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The class a Hugging Face folder declares.
    pub architecture: Option<HfArchitecture>,
    /// Facts worth a line in the log (why not Llama, which tensors were not
    /// quantized).
    pub notes: Vec<String>,
    /// The written files, by path relative to the destination's parent
    /// folder, with their digests.
    pub files: std::collections::BTreeMap<String, distillery_engine::store::OutputFile>,
}

/// Writes `folder` to `destination` (a folder for `hf`, a file for `gguf`),
/// replacing whatever is there once the new export is complete. Callers
/// decide whether an existing destination may be replaced.
pub fn export_model(
    folder: &HfFolder,
    destination: &Path,
    options: &ExportOptions,
) -> Result<ExportReport> {
    if let Some((option, message)) = options.problems().into_iter().next() {
        bail!("{option}: {message}");
    }
    let config = LlamaConfig::from_json(&folder.config).context("invalid model config")?;
    let parent = destination
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".distillery-export-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    let file_name = destination
        .file_name()
        .with_context(|| format!("{} does not name a file or folder", destination.display()))?;
    let staged: PathBuf = staging.path().join(file_name);
    let mut report = ExportReport {
        architecture: None,
        notes: Vec::new(),
        files: Default::default(),
    };
    match options.format {
        ExportFormat::Hf => {
            let resolved = hf_architecture::resolve(&config, options.architecture)
                .map_err(anyhow::Error::msg)?;
            let declared = hf_architecture::declare(&folder.config, resolved.architecture);
            let write = HfWriteOptions {
                dtype: options.dtype.disk_dtype().expect("checked above"),
                max_shard_bytes: options.max_shard_bytes,
            };
            write_hf_folder(&staged, &declared, &folder.tensors, &folder.assets, &write)?;
            report.notes.push(format!("transformers class: {resolved}"));
            report.architecture = Some(resolved.architecture);
        }
        ExportFormat::Gguf => {
            let (writer, notes) = gguf_writer(folder, &config, options.dtype, &options.name)?;
            let file = std::fs::File::create(&staged)
                .with_context(|| format!("cannot create {}", staged.display()))?;
            let mut out = std::io::BufWriter::new(file);
            writer.write(&mut out)?;
            out.flush()
                .with_context(|| format!("cannot write {}", staged.display()))?;
            report.notes.extend(notes);
        }
    }
    report.files = distillery_engine::store::hash_tree(staging.path())?;
    if destination.is_dir() {
        std::fs::remove_dir_all(destination)
    } else if destination.exists() {
        std::fs::remove_file(destination)
    } else {
        Ok(())
    }
    .with_context(|| format!("cannot replace {}", destination.display()))?;
    std::fs::rename(&staged, destination)
        .with_context(|| format!("cannot move the export to {}", destination.display()))?;
    Ok(report)
}
