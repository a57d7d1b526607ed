//! `load_model`: a model from a GGUF file, a Hugging Face folder, or another
//! stage's Model artifact, stored as a Hugging Face folder (config.json with
//! an explicit head_dim, safetensors, tokenizer files) that later stages and
//! `transformers` read.

use crate::io::gguf_llama::load_llama;
use crate::io::hf_folder::{HfAssets, HfWriteOptions, read_hf_folder, write_hf_folder};
use crate::io::safetensors_io::DiskDtype;
use crate::model::LlamaConfig;
use anyhow::{Context, bail};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// (not used with `source: artifact`).
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
    const DESCRIPTION: &'static str = "Reads a Llama-architecture model (GGUF, Hugging Face folder or Model artifact) into the store as a Hugging Face folder.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("model", ArtifactKind::Model).optional()]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &LoadModelParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let bound = ctx.inputs.contains_key("model");
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
            (ModelSource::Gguf | ModelSource::Hf, None, _) => issues.push(
                ParamIssue::at(
                    &[],
                    "`path` is required with `source: gguf` or `source: hf`",
                )
                .help("add `path: <file or folder>` under `with`"),
            ),
            (ModelSource::Gguf | ModelSource::Hf, Some(_), true) => issues.push(ParamIssue::at(
                &["source"],
                "the `model` input is only used with `source: artifact`",
            )),
            _ => {}
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
        let (config, tensors, assets) = match p.source {
            ModelSource::Gguf => {
                let path = ctx.resolve(p.path.as_ref().expect("checked at plan time"));
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
