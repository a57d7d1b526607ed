//! `teacher_correction`: a light cross-entropy fine-tune of the teacher on
//! the distillation data (METHOD.md 6), so that it guides the student on
//! the data the student will see.

use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::training::train_and_publish;
use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::io::dataset::DatasetArtifact;
use crate::io::safetensors_io::DiskDtype;
use crate::train::{CrossEntropy, TrainParams};

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
    const VERSION: u32 = 1;
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

    fn run(&self, params: TeacherCorrectionParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Task { params, ctx })?
    }
}

struct Task<'a, 'c> {
    params: TeacherCorrectionParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Task<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let data = DatasetArtifact::open(ctx.input("data")?)?;
        train_and_publish::<B>(
            ctx.input("model")?,
            &CrossEntropy,
            "teacher correction (cross-entropy)",
            &p.train,
            &data,
            p.dtype,
            serde_json::json!({}),
            ctx,
            &device,
        )?;
        Ok(())
    }
}
