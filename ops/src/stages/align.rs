//! `align`: supervised fine-tuning on chat conversations (METHOD.md 9), with
//! the loss on assistant tokens only. The dataset carries the mask: build it
//! with the `dataset` op's chat format.

use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::training::run_cross_entropy;
use crate::io::safetensors_io::DiskDtype;
use crate::train::TrainParams;

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
    // 2: under `precision: bf16` on CUDA, gate and up are written in bf16,
    // as autocast writes them (`kernels::matmul::Results`), in the
    // training step.
    // 3: under `precision: bf16` on CUDA, where attention runs on tensor
    // cores, the rotary embedding writes the queries and keys in f16, the
    // scores' operands (`RowOps::rope_pair`): the backward's bf16 operands
    // are rounded from those, not from f32.
    // 4: on the GPU, RMSNorm's backward sums the residual stream's
    // gradient as it writes its own (`RowOps::rms_norm_backward`), which a
    // kernel compiler may contract: the sum can differ in its last bit
    // from the separate add's. The CPU's is the add's, bit for bit.
    // 5: under `precision: bf16` on CUDA, attention writes its output in
    // bf16, as `o_proj` reads it (`ProductInputOps::attention_product`),
    // and its backward's row sums `dO . O` read that rounded output.
    const VERSION: u32 = 5;
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

    fn run(&self, p: AlignParams, ctx: &RunContext) -> anyhow::Result<()> {
        run_cross_entropy(
            ctx,
            &p.train,
            p.dtype,
            "alignment (cross-entropy on assistant tokens)",
            !p.allow_unmasked,
        )
    }
}
