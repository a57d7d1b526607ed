//! `load_model`: a model from a GGUF file, a Hugging Face folder, or another
//! stage's Model artifact, stored as a Hugging Face folder (config.json with
//! an explicit head_dim, safetensors, tokenizer files) that later stages and
//! `transformers` read.
//!
//! The GGUF file or Hugging Face folder is either a path in the recipe or
//! found inside a Files artifact bound to the `files` input (what a `fetch`
//! stage produces), so a recipe can download its teacher and load it.

use crate::io::gguf_llama::load_llama;
use crate::io::hf_folder::CONFIG_FILE;
use crate::io::hf_folder::{HfAssets, HfWriteOptions, read_hf_folder, write_hf_folder};
use crate::io::safetensors_io::DiskDtype;
use crate::model::LlamaConfig;
use anyhow::{Context, bail};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub struct LoadModel;

/// Where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A llama.cpp GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors).
    Gguf,
    /// A Hugging Face folder: config.json, safetensors (sharded or not), tokenizer files.
    Hf,
    /// The Model artifact bound to the `model` input (to change its dtype).
    Artifact,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadModelParams {
    /// Where the weights come from.
    pub source: ModelSource,
    /// The GGUF file or Hugging Face folder, relative to the recipe's folder
    /// (not used with `source: artifact`, nor with the `files` input, where
    /// the model is found inside the bound artifact).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Element type of the stored weights. `f32` (the default) keeps
    /// dequantized weights exact.
    #[serde(default)]
    pub dtype: DiskDtype,
}

impl TypedOp for LoadModel {
    type Params = LoadModelParams;
    const NAME: &'static str = "load_model";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Reads a Llama-architecture model (GGUF, Hugging Face folder or Model artifact) into the store as a Hugging Face folder. The GGUF file or folder is a `path`, or is found in the `files` input (a `fetch` stage's output).";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("model", ArtifactKind::Model).optional(),
            Slot::one("files", ArtifactKind::Files).optional(),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &LoadModelParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let bound = ctx.inputs.contains_key("model");
        let files = ctx.inputs.contains_key("files");
        let mut issues = Vec::new();
        match (p.source, &p.path, bound) {
            (ModelSource::Artifact, _, false) => issues.push(
                ParamIssue::at(&["source"], "`source: artifact` needs the `model` input")
                    .help("add `inputs: { model: <stage> }`"),
            ),
            (ModelSource::Artifact, Some(_), _) => issues.push(ParamIssue::at(
                &["path"],
                "`path` is not used with `source: artifact`; remove it",
            )),
            (ModelSource::Gguf | ModelSource::Hf, None, _) if !files => issues.push(
                ParamIssue::at(
                    &[],
                    "`path` is required with `source: gguf` or `source: hf`",
                )
                .help(
                    "add `path: <file or folder>` under `with`, or bind the `files` input \
                     to a `fetch` stage",
                ),
            ),
            (ModelSource::Gguf | ModelSource::Hf, Some(_), _) if files => issues.push(
                ParamIssue::at(
                    &["path"],
                    "`path` is not used with the `files` input: the model is found inside it",
                )
                .help("remove `path`, or the `files` input"),
            ),
            (ModelSource::Gguf | ModelSource::Hf, _, true) => issues.push(ParamIssue::at(
                &["source"],
                "the `model` input is only used with `source: artifact`",
            )),
            _ => {}
        }
        if files && p.source == ModelSource::Artifact {
            issues.push(ParamIssue::at(
                &["source"],
                "the `files` input is only used with `source: gguf` or `source: hf`",
            ));
        }
        issues
    }

    fn external_files(&self, p: &LoadModelParams) -> Vec<PathBuf> {
        match p.source {
            ModelSource::Artifact => Vec::new(),
            _ => p.path.iter().cloned().collect(),
        }
    }

    fn run(&self, p: LoadModelParams, ctx: &RunContext) -> anyhow::Result<()> {
        let fetched = ctx.inputs.contains_key("files");
        let (config, tensors, assets) = match p.source {
            ModelSource::Gguf => {
                let path = if fetched {
                    gguf_in_files(ctx.input("files")?)?
                } else {
                    ctx.resolve(p.path.as_ref().expect("checked at plan time"))
                };
                ctx.progress.log(&format!("reading {}", path.display()));
                let gguf =
                    load_llama(&path).with_context(|| format!("cannot load {}", path.display()))?;
                let assets = HfAssets {
                    tokenizer: Some(gguf.tokenizer),
                    tokenizer_config: Some(gguf.tokenizer_config),
                    other_json: Default::default(),
                };
                (gguf.config, gguf.tensors, assets)
            }
            ModelSource::Hf | ModelSource::Artifact => {
                let dir = match p.source {
                    ModelSource::Hf if fetched => hf_folder_in_files(ctx.input("files")?)?,
                    ModelSource::Hf => ctx.resolve(p.path.as_ref().expect("checked at plan time")),
                    _ => ctx.input("model")?.to_path_buf(),
                };
                ctx.progress.log(&format!("reading {}", dir.display()));
                let folder = read_hf_folder(&dir)
                    .with_context(|| format!("cannot load the model folder {}", dir.display()))?;
                (folder.config, folder.tensors, folder.assets)
            }
        };
        // Normalize the config (explicit head_dim, validated sizes) and check
        // every tensor against it before storing anything.
        let llama = LlamaConfig::from_json(&config).context("invalid model config")?;
        let problems = llama.tensor_problems(&tensors);
        if !problems.is_empty() {
            bail!(
                "the weights do not match the config:\n  {}",
                problems.join("\n  ")
            );
        }
        if assets.tokenizer.is_none() {
            bail!("the model has no tokenizer.json; every stage after this one needs it");
        }
        let mut config_json = config;
        if let (Some(obj), serde_json::Value::Object(normal)) =
            (config_json.as_object_mut(), llama.to_json())
        {
            // transformers 5's `rope_parameters` is now in rope_theta and
            // rope_scaling; one source of truth.
            obj.remove("rope_parameters");
            obj.extend(normal);
        }
        let options = HfWriteOptions {
            dtype: p.dtype,
            ..HfWriteOptions::default()
        };
        write_hf_folder(&ctx.output_dir, &config_json, &tensors, &assets, &options)?;
        ctx.progress.log(&format!(
            "{} layers, hidden {}, {:.1}M parameters",
            llama.num_hidden_layers,
            llama.hidden_size,
            llama.num_parameters() as f64 / 1e6
        ));
        Ok(())
    }
}

/// The one GGUF file in a Files artifact (searched at any depth, since an
/// extracted archive may hold it in a folder).
fn gguf_in_files(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    collect_files(dir, &mut |path| {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            found.push(path.to_path_buf());
        }
    })?;
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "the `files` input holds no .gguf file; with `source: gguf` it must hold exactly one"
        ),
        many => bail!(
            "the `files` input holds {} .gguf files ({}); with `source: gguf` it must hold exactly one",
            many.len(),
            many.iter()
                .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The Hugging Face folder in a Files artifact: the artifact itself when it
/// has a config.json, or its one subfolder that does (an extracted archive
/// usually wraps the model in a folder).
fn hf_folder_in_files(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join(CONFIG_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(CONFIG_FILE).is_file())
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "the `files` input holds no Hugging Face model folder (no config.json at its top or in a folder of it)"
        ),
        many => bail!(
            "the `files` input holds {} model folders ({}); with `source: hf` it must hold one",
            many.len(),
            many.iter()
                .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Calls `found` for every regular file below `dir` (links are not followed).
fn collect_files(dir: &Path, found: &mut dyn FnMut(&Path)) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), found)?;
        } else if kind.is_file() {
            found(&entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn finds_the_one_gguf_in_a_fetched_folder() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("README.md"));
        touch(&dir.path().join("sub/model.Q4_1.gguf"));
        assert_eq!(
            gguf_in_files(dir.path()).unwrap(),
            dir.path().join("sub/model.Q4_1.gguf")
        );
        touch(&dir.path().join("other.GGUF"));
        let err = gguf_in_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("holds 2 .gguf files (other.GGUF, sub/model.Q4_1.gguf)"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = gguf_in_files(empty.path()).unwrap_err().to_string();
        assert!(err.contains("holds no .gguf file"), "{err}");
    }

    #[test]
    fn finds_the_hf_folder_at_the_top_or_one_level_down() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("model/config.json"));
        assert_eq!(
            hf_folder_in_files(dir.path()).unwrap(),
            dir.path().join("model")
        );
        touch(&dir.path().join("other/config.json"));
        let err = hf_folder_in_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("holds 2 model folders (model, other)"),
            "{err}"
        );
        touch(&dir.path().join(CONFIG_FILE));
        assert_eq!(hf_folder_in_files(dir.path()).unwrap(), dir.path());
        let empty = tempfile::tempdir().unwrap();
        let err = hf_folder_in_files(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no Hugging Face model folder"), "{err}");
    }
}
