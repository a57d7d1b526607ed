//! `random_init`: a model of the same architecture as its input with fresh
//! random weights, the starting point of a from-scratch baseline (the
//! pruned student's shape, trained on the same tokens without the
//! teacher's weights).

use crate::io::hf_folder::CONFIG_FILE;
use crate::io::hf_folder::{HfWriteOptions, read_assets, read_json, write_hf_folder};
use crate::model::LlamaConfig;
use crate::model::init::{INIT_STD, random_state_dict};
use anyhow::Context;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub struct RandomInit;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomInitParams {
    /// Standard deviation of the normal draws for every matrix, the
    /// embedding included (transformers' `initializer_range` for Llama is
    /// 0.02). Norm weights start at one and biases at zero.
    #[serde(default = "default_std")]
    pub std: f64,
}

fn default_std() -> f64 {
    INIT_STD
}

impl TypedOp for RandomInit {
    type Params = RandomInitParams;
    const NAME: &'static str = "random_init";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "A model of its input's architecture (its config and tokenizer, the tensors the config implies) with random weights drawn from the recipe's seed.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("model", ArtifactKind::Model)]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &RandomInitParams, _: &CheckContext) -> Vec<ParamIssue> {
        if p.std.is_finite() && p.std > 0.0 && p.std <= 1.0 {
            Vec::new()
        } else {
            vec![ParamIssue::at(
                &["std"],
                format!("`std` must be in (0, 1], found {}", p.std),
            )]
        }
    }

    fn run(&self, p: RandomInitParams, ctx: &RunContext) -> anyhow::Result<()> {
        // Only the config and the tokenizer files are read: the shapes follow
        // from the config, and the input's weights are not needed.
        let source = ctx.input("model")?;
        let config_json = read_json(&source.join(CONFIG_FILE))?;
        let config = LlamaConfig::from_json(&config_json)
            .context("cannot read the model artifact's config.json")?;
        let assets = read_assets(source).context("cannot read the model's tokenizer files")?;
        let shapes = config.expected_tensors();
        let count: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let tensors = random_state_dict(shapes, ctx.seed, p.std);
        write_hf_folder(
            &ctx.output_dir,
            &config_json,
            &tensors,
            &assets,
            &HfWriteOptions::default(),
        )?;
        ctx.progress.log(&format!(
            "{} tensors, {:.1}M parameters drawn with std {} from seed {}",
            tensors.len(),
            count as f64 / 1e6,
            p.std,
            ctx.seed
        ));
        Ok(())
    }
}
