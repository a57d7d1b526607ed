//! `random_init`: a model of the same architecture as its input with fresh
//! random weights, the starting point of a from-scratch baseline (the
//! pruned student's shape, trained on the same tokens without the
//! teacher's weights).

use crate::io::hf_folder::{HfWriteOptions, read_hf_folder, write_hf_folder};
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
    const DESCRIPTION: &'static str = "A model of its input's architecture (config, tokenizer, tensor names and shapes) with random weights drawn from the recipe's seed.";

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
        let folder =
            read_hf_folder(ctx.input("model")?).context("cannot read the model artifact")?;
        let shapes: Vec<(String, Vec<usize>)> = folder
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.clone()))
            .collect();
        drop(folder.tensors);
        let count: usize = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        let tensors = random_state_dict(shapes, ctx.seed, p.std);
        write_hf_folder(
            &ctx.output_dir,
            &folder.config,
            &tensors,
            &folder.assets,
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
