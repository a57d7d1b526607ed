//! `align`: supervised fine-tuning on chat conversations (METHOD.md 9), with
//! the loss on assistant tokens only. The dataset carries the mask: build it
//! with the `dataset` op's chat format.

use anyhow::bail;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::training::train_and_publish;
use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::io::dataset::DatasetArtifact;
use crate::io::safetensors_io::DiskDtype;
use crate::train::{CrossEntropy, TrainParams};

pub struct Align;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlignParams {
    /// Budget, batch, optimizer and schedule.
    pub train: TrainParams,
    /// Train on every token when the dataset has no loss mask, instead of
    /// refusing (the mask comes from a chat dataset's assistant turns).
    #[serde(default)]
    pub allow_unmasked: bool,
    /// The dtype the aligned model is written in.
    #[serde(default)]
    pub dtype: DiskDtype,
}

impl TypedOp for Align {
    type Params = AlignParams;
    const NAME: &'static str = "align";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Supervised fine-tuning on chat data, with the loss on assistant tokens only.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("model", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &AlignParams, _: &CheckContext) -> Vec<ParamIssue> {
        p.train.check(&["train"])
    }

    fn uses_accelerator(&self, _: &AlignParams) -> bool {
        true
    }

    fn run(&self, params: AlignParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Task { params, ctx })?
    }
}

struct Task<'a, 'c> {
    params: AlignParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Task<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let data = DatasetArtifact::open(ctx.input("data")?)?;
        if !data.has_loss_mask() && !p.allow_unmasked {
            bail!(
                "the dataset at {} has no loss mask, so every token would be trained on; \
                 build it from chat conversations (`messages` in JSONL) to train on assistant turns only, \
                 or set `allow_unmasked: true`",
                data.dir().display()
            );
        }
        train_and_publish::<B>(
            ctx.input("model")?,
            &CrossEntropy,
            "alignment (cross-entropy on assistant tokens)",
            &p.train,
            &data,
            p.dtype,
            serde_json::json!({ "masked": data.has_loss_mask() }),
            ctx,
            &device,
        )?;
        Ok(())
    }
}
