//! `distill`: retrains a (pruned) student from a frozen teacher's logits
//! (METHOD.md 7): forward KL at temperature 1 on the logits only, as the
//! paper found best, with reverse KL, JSD, a temperature and a
//! cross-entropy term available for ablations. The teacher is either a
//! model run live at every step, or its top-K logits stored once by a
//! `teacher_logits` stage (sparse KD, [`crate::kernels::kd::kd_loss_sparse`]).

use crate::io::hf_folder::CONFIG_FILE;
use anyhow::bail;
use std::collections::BTreeMap;

use distillery_engine::op::UpstreamInfo;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::teacher_logits::TeacherLogits as TeacherLogitsOp;
use super::training::train_and_publish;
use super::upstream::model_vocab;
use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::io::dataset::{DatasetArtifact, Split};
use crate::io::safetensors_io::DiskDtype;
use crate::kernels::Activations;
use crate::kernels::kd::{KdLoss, KdSpec};
use crate::model::{Llama, LlamaConfig};
use crate::teacher_logits::{TeacherLogitsStore, tokens_digest};
use crate::train::{Distillation, StoredDistillation, TrainParams};

pub struct Distill;

/// The divergence between teacher and student distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DistillLoss {
    /// `KL(teacher || student)`, the paper's choice.
    #[default]
    ForwardKl,
    /// `KL(student || teacher)`.
    ReverseKl,
    /// Generalized Jensen-Shannon with mixture weight `jsd_beta` on the
    /// teacher.
    Jsd,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DistillParams {
    /// Budget, batch, optimizer and schedule. The paper: lr 1e-4 decaying
    /// to 1e-5, 40 warmup steps.
    pub train: TrainParams,
    /// The divergence on the logits.
    #[serde(default)]
    pub loss: DistillLoss,
    /// The JSD mixture weight on the teacher, in (0, 1); 0.5 is the
    /// symmetric JSD. Only with `loss: jsd`.
    #[serde(default)]
    pub jsd_beta: Option<f32>,
    /// Softmax temperature applied to both models' logits (the paper found
    /// 1.0 best).
    #[serde(default = "one")]
    pub temperature: f32,
    /// Multiply the KD loss by `temperature^2` (Hinton's scaling); off as
    /// in the paper's released code.
    #[serde(default)]
    pub tau_squared: bool,
    /// Weight of the student's own next-token cross-entropy added to the KD
    /// loss; 0 (logits only) as in the paper.
    #[serde(default)]
    pub ce_weight: f64,
    /// When teacher and student vocabularies differ in size (a padded
    /// vocabulary), compare only the first `min` logits instead of
    /// refusing. The dataset's tokens must lie in that shared range.
    #[serde(default)]
    pub truncate_vocab: bool,
    /// The dtype the student is written in.
    #[serde(default)]
    pub dtype: DiskDtype,
    /// Run the student's head, the teacher's and the loss this many token
    /// positions at a time, so that the `[positions, vocabulary]` logits
    /// (both models' and their gradient) are never held whole: for large
    /// vocabularies, where they are a step's largest tensors (128k columns
    /// at 8 x 1024 positions: 4 GiB each in f32). Unset: all at once. The
    /// loss is the same up to the order of the head gradient's sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub head_chunk_rows: Option<usize>,
    /// How the live teacher's forward carries its activations into its
    /// products under `train.precision: bf16`, where the device rounds
    /// them (AMX, CUDA): `two_parts` (the default: two bf16 parts, logits
    /// close to f32's, at twice the products' work) or `rounded` (once, as
    /// the student's are in training and as PyTorch's autocast does: half
    /// the teacher's product work). f32 products read neither.
    #[serde(default, skip_serializing_if = "Activations::is_two_parts")]
    pub teacher_activations: Activations,
}

fn one() -> f32 {
    1.0
}

impl DistillParams {
    fn spec(&self) -> KdSpec {
        KdSpec {
            loss: match self.loss {
                DistillLoss::ForwardKl => KdLoss::ForwardKl,
                DistillLoss::ReverseKl => KdLoss::ReverseKl,
                DistillLoss::Jsd => KdLoss::Jsd {
                    beta: self.jsd_beta.unwrap_or(0.5),
                },
            },
            temperature: self.temperature,
            tau_squared: self.tau_squared,
        }
    }
}

impl TypedOp for Distill {
    type Params = DistillParams;
    const NAME: &'static str = "distill";
    // 2: under `precision: bf16` on CUDA, gate and up are written in bf16,
    // as autocast writes them (`kernels::matmul::Results`), in the
    // student's training step and a live teacher's with
    // `teacher_activations: rounded`.
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
    const DESCRIPTION: &'static str = "Trains a student on a frozen teacher's logits (knowledge distillation): a teacher model run at every step, or the top-K logits a `teacher_logits` stage stored.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("teacher", ArtifactKind::Model).optional(),
            Slot::one("teacher_logits", ArtifactKind::TeacherLogits).optional(),
            Slot::one("student", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }

    fn check(&self, p: &DistillParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = p.train.check(&["train"]);
        if !(p.temperature.is_finite() && p.temperature > 0.0) {
            issues.push(ParamIssue::at(
                &["temperature"],
                format!("`temperature` must be positive, got {}", p.temperature),
            ));
        }
        match (p.loss, p.jsd_beta) {
            (DistillLoss::Jsd, Some(b)) if !(b > 0.0 && b < 1.0) => issues.push(ParamIssue::at(
                &["jsd_beta"],
                format!("`jsd_beta` must be in (0, 1), got {b}"),
            )),
            (DistillLoss::ForwardKl | DistillLoss::ReverseKl, Some(_)) => issues.push(
                ParamIssue::at(&["jsd_beta"], "`jsd_beta` applies only to `loss: jsd`"),
            ),
            _ => {}
        }
        if !(p.ce_weight.is_finite() && p.ce_weight >= 0.0) {
            issues.push(ParamIssue::at(
                &["ce_weight"],
                "`ce_weight` must be 0 or more",
            ));
        }
        if !p.teacher_activations.is_two_parts()
            && ctx
                .inputs
                .get("teacher_logits")
                .is_some_and(|v| !v.is_empty())
        {
            issues.push(ParamIssue::at(
                &["teacher_activations"],
                "`teacher_activations` applies to a live teacher; the logits of `teacher_logits` were stored already",
            ));
        }
        if p.head_chunk_rows == Some(0) {
            issues.push(ParamIssue::at(
                &["head_chunk_rows"],
                "`head_chunk_rows` must be at least 1 (leave it out to run all positions at once)",
            ));
        }
        let vocab = |slot: &str| bound_vocab(ctx.inputs, slot, ctx.recipe_dir);
        let stored = ctx.inputs.get("teacher_logits").and_then(|v| v.first());
        let live = ctx.inputs.get("teacher").is_some_and(|v| !v.is_empty());
        match (live, stored) {
            (false, None) => issues.push(
                ParamIssue::at(&[], "distillation needs a teacher")
                    .help("add `teacher: <model stage>` or `teacher_logits: <teacher_logits stage>` to `inputs`"),
            ),
            (true, Some(_)) => issues.push(ParamIssue::at(
                &[],
                "`teacher` and `teacher_logits` are both given; distil from one of them",
            )),
            _ => {}
        }
        if let Some(up) = stored {
            issues.extend(stored_teacher_issues(p, up, ctx));
        }
        if let (Some(t), Some(s)) = (vocab("teacher"), vocab("student"))
            && t != s
            && !p.truncate_vocab
        {
            issues.push(ParamIssue::at(
                &[],
                format!(
                    "the teacher's vocabulary has {t} tokens and the student's {s}; \
                     distillation compares logits token by token"
                ),
            ).help("if one vocabulary is the other padded, set `truncate_vocab: true` to compare the shared first tokens"));
        }
        issues
    }

    fn uses_accelerator(&self, _: &DistillParams) -> bool {
        true
    }

    fn run(&self, params: DistillParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Task { params, ctx })?
    }
}

/// The vocabulary of the model bound to `slot`, where the recipe tells it.
fn bound_vocab(
    inputs: &BTreeMap<String, Vec<UpstreamInfo>>,
    slot: &str,
    recipe_dir: &std::path::Path,
) -> Option<usize> {
    model_vocab(inputs.get(slot)?.first()?, recipe_dir)
}

/// What a `teacher_logits` input must agree on with this distillation:
/// the temperature its log-sum-exps were taken at, the dataset stage whose
/// rows it covers, and the student's vocabulary.
fn stored_teacher_issues(
    p: &DistillParams,
    up: &UpstreamInfo,
    ctx: &CheckContext,
) -> Vec<ParamIssue> {
    let mut issues = Vec::new();
    if let Some(stored) = up.params_of::<TeacherLogitsOp>()
        && stored.temperature != p.temperature
    {
        issues.push(
            ParamIssue::at(
                &["temperature"],
                format!(
                    "stage `{}` stored the teacher's logits at temperature {}, this distillation uses {}",
                    up.stage, stored.temperature, p.temperature
                ),
            )
            .help("set the same `temperature` on both stages"),
        );
    }
    let first = |inputs: &BTreeMap<String, Vec<UpstreamInfo>>, slot: &str| {
        inputs
            .get(slot)
            .and_then(|v| v.first())
            .map(|u| u.stage.clone())
    };
    if let (Some(theirs), Some(ours)) = (first(&up.inputs, "data"), first(ctx.inputs, "data"))
        && theirs != ours
    {
        issues.push(ParamIssue::at(
            &[],
            format!(
                "stage `{}` stored the teacher's logits over the rows of `{theirs}`, but this distillation reads `{ours}`",
                up.stage
            ),
        ));
    }
    if p.truncate_vocab {
        issues.push(ParamIssue::at(
            &["truncate_vocab"],
            "`truncate_vocab` applies to a live teacher only: stored teacher logits need the student's vocabulary",
        ));
    }
    let teacher_vocab = bound_vocab(&up.inputs, "teacher", ctx.recipe_dir);
    let student_vocab = bound_vocab(ctx.inputs, "student", ctx.recipe_dir);
    if let (Some(t), Some(s)) = (teacher_vocab, student_vocab)
        && t != s
    {
        issues.push(ParamIssue::at(
            &[],
            format!(
                "the teacher behind `{}` has {t} tokens and the student {s}; sparse distillation compares them token by token",
                up.stage
            ),
        ));
    }
    issues
}

struct Task<'a, 'c> {
    params: DistillParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Task<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let data = DatasetArtifact::open(ctx.input("data")?)?;
        let student_config = LlamaConfig::from_file(&ctx.input("student")?.join(CONFIG_FILE))?;
        let spec = p.spec();
        let mut name = format!(
            "distillation ({}, temperature {}{})",
            serde_json::to_value(p.loss)?.as_str().unwrap_or("?"),
            p.temperature,
            if p.ce_weight > 0.0 {
                format!(", ce weight {}", p.ce_weight)
            } else {
                String::new()
            }
        );
        if let Some(rows) = p.head_chunk_rows {
            name = format!("{name}, heads and loss {rows} positions at a time");
        }
        let sv = student_config.vocab_size;
        if ctx
            .inputs
            .get("teacher_logits")
            .is_some_and(|v| !v.is_empty())
        {
            let store = open_store(ctx.input("teacher_logits")?, &p, &data, sv)?;
            let top_k = store.header.top_k;
            name = format!("{name} from the top {top_k} stored logits");
            let objective = StoredDistillation {
                store,
                spec,
                ce_weight: p.ce_weight,
                head_chunk_rows: p.head_chunk_rows,
            };
            return publish::<B>(&p, &objective, &name, &data, sv, Some(top_k), ctx, &device);
        }
        let (teacher, _) = Llama::<B>::load_hf(ctx.input("teacher")?, &device)?;
        let teacher = teacher
            .with_precision(p.train.precision)
            .with_activations(p.teacher_activations)
            .with_inference_weights();
        let tv = teacher.config.vocab_size;
        if tv != sv && !p.truncate_vocab {
            bail!(
                "the teacher's vocabulary has {tv} tokens and the student's {sv}; set \
                 `truncate_vocab: true` if one is the other padded"
            );
        }
        let vocab = tv.min(sv);
        if data.vocab_size() > vocab {
            bail!(
                "the dataset uses token ids up to {} but the shared vocabulary has {vocab}",
                data.vocab_size()
            );
        }
        let objective = Distillation {
            teacher,
            spec,
            ce_weight: p.ce_weight,
            vocab,
            head_chunk_rows: p.head_chunk_rows,
        };
        publish::<B>(&p, &objective, &name, &data, vocab, None, ctx, &device)
    }
}

/// Opens stored teacher logits and checks them against this distillation:
/// the temperature, the student's vocabulary, the positions a row needs,
/// and the dataset rows they were computed on (by their tokens' digest).
fn open_store(
    dir: &std::path::Path,
    p: &DistillParams,
    data: &DatasetArtifact,
    student_vocab: usize,
) -> anyhow::Result<TeacherLogitsStore> {
    let store = TeacherLogitsStore::open(dir)?;
    let h = &store.header;
    if h.temperature != p.temperature {
        bail!(
            "the teacher logits were stored at temperature {}, this distillation uses {}",
            h.temperature,
            p.temperature
        );
    }
    if h.vocab_size != student_vocab {
        bail!(
            "the teacher logits are over {} tokens and the student's vocabulary has {student_vocab}",
            h.vocab_size
        );
    }
    let seq_len = p.train.resolve(data.seq_len())?.seq_len;
    if seq_len - 1 > h.positions {
        bail!(
            "training rows of {seq_len} tokens need {} positions, the teacher logits hold {}",
            seq_len - 1,
            h.positions
        );
    }
    let (rows, row_len) = (data.rows(Split::Train), data.seq_len());
    if rows < h.rows || row_len != h.positions + 1 {
        bail!(
            "the teacher logits cover {} training rows of {} tokens, but this dataset has {rows} rows of {row_len}",
            h.rows,
            h.positions + 1
        );
    }
    let digest = tokens_digest((0..h.rows).map(|i| data.row(Split::Train, i)));
    if digest != h.tokens_blake3 {
        bail!(
            "the teacher logits were computed on other rows than this dataset's first {} training rows",
            h.rows
        );
    }
    Ok(store)
}

/// Trains with `objective` and writes the student with the run's details
/// (`stored_top_k`: the tokens per position of stored teacher logits).
#[allow(clippy::too_many_arguments)]
fn publish<B: ComputeBackend>(
    p: &DistillParams,
    objective: &impl crate::train::Objective<B>,
    name: &str,
    data: &DatasetArtifact,
    vocab: usize,
    stored_top_k: Option<usize>,
    ctx: &RunContext,
    device: &B::Device,
) -> anyhow::Result<()> {
    let mut details = serde_json::json!({
        "loss": p.loss,
        "jsd_beta": p.jsd_beta,
        "temperature": p.temperature,
        "tau_squared": p.tau_squared,
        "ce_weight": p.ce_weight,
        "vocab": vocab,
    });
    // Only when set: a live teacher's summary stays what it was.
    if let Some(k) = stored_top_k {
        details["stored_top_k"] = k.into();
    }
    train_and_publish::<B>(
        ctx.input("student")?,
        objective,
        name,
        &p.train,
        data,
        p.dtype,
        details,
        ctx,
        device,
    )?;
    Ok(())
}
