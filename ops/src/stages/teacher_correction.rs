//! `teacher_correction`: a light cross-entropy fine-tune of the teacher on
//! the distillation data (METHOD.md 6), so that it guides the student on
//! the data the student will see.

use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::training::run_cross_entropy;
use crate::io::safetensors_io::DiskDtype;
use crate::train::TrainParams;

pub struct TeacherCorrection;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeacherCorrectionParams {
    /// Budget, batch, optimizer and schedule. The paper uses a peak
    /// learning rate of 1/5 of the teacher's pretraining peak and a short
    /// warmup.
    pub train: TrainParams,
    /// The dtype the corrected teacher is written in.
    #[serde(default)]
    pub dtype: DiskDtype,
}

impl TypedOp for TeacherCorrection {
    type Params = TeacherCorrectionParams;
    const NAME: &'static str = "teacher_correction";
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
        "Fine-tunes the teacher with cross-entropy on the distillation data before it teaches.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("model", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &TeacherCorrectionParams, _: &CheckContext) -> Vec<ParamIssue> {
        p.train.check(&["train"])
    }

    fn uses_accelerator(&self, _: &TeacherCorrectionParams) -> bool {
        true
    }

    fn run(&self, p: TeacherCorrectionParams, ctx: &RunContext) -> anyhow::Result<()> {
        run_cross_entropy(
            ctx,
            &p.train,
            p.dtype,
            "teacher correction (cross-entropy)",
            false,
        )
    }
}
