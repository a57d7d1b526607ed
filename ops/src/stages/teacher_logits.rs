//! `teacher_logits`: the teacher's forward over a dataset's training rows,
//! once, stored sparse (top-K per position with the log-sum-exp and the
//! tail's mass; [`crate::teacher_logits`]). `distill` reads it in place of
//! a live teacher, so a search that distils many candidates runs the
//! teacher once for all of them.

use anyhow::{Context, bail};
use distillery_engine::interrupt::{self, Interrupted};
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::upstream::model_vocab;
use crate::backend::{ComputeBackend, OnBackend, on_device};
use crate::io::dataset::{DatasetArtifact, Split};
use crate::kernels::Precision;
use crate::model::{Llama, tokens_tensor};
use crate::teacher_logits::store::{self, FORMAT, Header, Writer};
use crate::teacher_logits::{Selector, TopK, tokens_digest};

pub struct TeacherLogits;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeacherLogitsParams {
    /// Tokens kept per position: the teacher's `top_k` largest logits.
    /// The rest are kept as their total probability only (see `distill`'s
    /// sparse loss); `top_k` equal to the vocabulary keeps everything.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 1))]
    pub top_k: usize,
    /// The softmax temperature of the stored log-sum-exps; `distill` must
    /// use the same.
    #[serde(default = "one")]
    pub temperature: f32,
    /// Cover only the first `rows` training rows (default: all). A `distill`
    /// reading the result trains on those rows only.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub rows: Option<usize>,
    /// Rows per forward pass.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch: usize,
    /// The teacher's matrix products: `f32`, or `bf16` on CPUs with AMX
    /// (faster, logits within about 1e-2 of the largest).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_top_k() -> usize {
    64
}

fn one() -> f32 {
    1.0
}

fn default_batch() -> usize {
    4
}

impl TypedOp for TeacherLogits {
    type Params = TeacherLogitsParams;
    const NAME: &'static str = "teacher_logits";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Runs a teacher over a dataset's training rows once and stores its top-K logits per position, with each position's log-sum-exp and tail mass, for distillation without a live teacher.";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("teacher", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::TeacherLogits
    }

    fn check(&self, p: &TeacherLogitsParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.top_k == 0 {
            issues.push(ParamIssue::at(&["top_k"], "`top_k` must be at least 1"));
        }
        let vocab = ctx
            .inputs
            .get("teacher")
            .and_then(|v| v.first())
            .and_then(|up| model_vocab(up, ctx.recipe_dir));
        if let Some(vocab) = vocab
            && p.top_k > vocab
        {
            issues.push(
                ParamIssue::at(
                    &["top_k"],
                    format!(
                        "`top_k` is {} but the teacher's vocabulary has {vocab} tokens",
                        p.top_k
                    ),
                )
                .help(format!("`top_k: {vocab}` keeps the whole distribution")),
            );
        }
        if !(p.temperature.is_finite() && p.temperature > 0.0) {
            issues.push(ParamIssue::at(
                &["temperature"],
                format!("`temperature` must be positive, got {}", p.temperature),
            ));
        }
        if p.rows == Some(0) {
            issues.push(ParamIssue::at(
                &["rows"],
                "`rows` must be at least 1 (leave it out for every training row)",
            ));
        }
        if p.batch == 0 {
            issues.push(ParamIssue::at(&["batch"], "`batch` must be at least 1"));
        }
        issues
    }

    fn uses_accelerator(&self, _: &TeacherLogitsParams) -> bool {
        true
    }

    fn run(&self, params: TeacherLogitsParams, ctx: &RunContext) -> anyhow::Result<()> {
        on_device(ctx.device, Task { params, ctx })?
    }
}

struct Task<'a, 'c> {
    params: TeacherLogitsParams,
    ctx: &'a RunContext<'c>,
}

impl OnBackend for Task<'_, '_> {
    type Output = anyhow::Result<()>;

    fn run<B: ComputeBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let (p, ctx) = (self.params, self.ctx);
        let data = DatasetArtifact::open(ctx.input("data")?)?;
        let (teacher, _) = Llama::<B>::load_hf(ctx.input("teacher")?, &device)?;
        let teacher = teacher.with_precision(p.precision);
        let vocab = teacher.config.vocab_size;
        if p.top_k > vocab {
            bail!(
                "`top_k` is {} but the teacher's vocabulary has {vocab} tokens",
                p.top_k
            );
        }
        if data.vocab_size() > vocab {
            bail!(
                "the dataset uses token ids up to {} but the teacher's vocabulary has {vocab}",
                data.vocab_size()
            );
        }
        let available = data.rows(Split::Train);
        if available == 0 {
            bail!("the dataset has no training rows");
        }
        let rows = p.rows.map_or(available, |r| r.min(available));
        if let Some(asked) = p.rows
            && asked > available
        {
            ctx.progress.log(&format!(
                "`rows` is {asked} but the dataset has {available} training rows: covering all of them"
            ));
        }
        if data.seq_len() < 2 {
            bail!(
                "the dataset's rows of {} tokens have no position to predict",
                data.seq_len()
            );
        }
        let positions = data.seq_len() - 1;
        let header = Header {
            format: FORMAT,
            top_k: p.top_k,
            vocab_size: vocab,
            temperature: p.temperature,
            rows,
            positions,
            tokens_blake3: tokens_digest((0..rows).map(|i| data.row(Split::Train, i))),
            stored_bytes: 0,
            raw_bytes: 0,
            mean_kept_mass: 0.0,
        };
        // Rows are written to the scratch folder, which survives an
        // interruption: a rerun continues after the last complete row.
        let mut writer = Writer::open(&ctx.scratch_dir, header)?;
        if writer.rows() > 0 {
            ctx.progress
                .log(&format!("resuming after row {} of {rows}", writer.rows()));
        }
        ctx.progress.log(&format!(
            "teacher logits over {rows} rows x {positions} positions, top {} of {vocab} tokens",
            p.top_k
        ));
        ctx.progress.set_total(rows as u64, "rows");
        ctx.progress.set_position(writer.rows() as u64);
        let delay = crate::train::trainer::test_step_delay();
        while writer.rows() < rows {
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            if interrupt::requested() {
                return Err(Interrupted(Some(format!(
                    "after row {} of {rows} (the rows done are kept)",
                    writer.rows()
                )))
                .into());
            }
            let batch: Vec<&[u32]> = (writer.rows()..(writer.rows() + p.batch).min(rows))
                .map(|i| &data.row(Split::Train, i)[..positions])
                .collect();
            let logits = teacher.forward(tokens_tensor(&batch, &device));
            let logits: Vec<f32> = logits
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading the teacher's logits: {e:?}"))?;
            let kept: Vec<TopK> = logits
                .par_chunks(vocab)
                .map_init(Selector::default, |s, row| {
                    s.top_k(row, p.top_k, p.temperature)
                })
                .collect();
            for row in kept.chunks(positions) {
                writer.push_row(row)?;
            }
            ctx.progress.set_position(writer.rows() as u64);
        }
        let header = writer.finish()?;
        for name in [store::HEADER_FILE, store::INDEX_FILE, store::DATA_FILE] {
            std::fs::rename(ctx.scratch_dir.join(name), ctx.output_dir.join(name))
                .with_context(|| format!("moving {name} into the stage's output"))?;
        }
        ctx.progress.log(&format!(
            "stored {:.1} MB, {:.0} bytes per position ({:.1}x compression); the kept tokens hold {:.1}% of the teacher's probability on average",
            header.stored_bytes as f64 / 1e6,
            header.bytes_per_position(),
            header.raw_bytes as f64 / header.stored_bytes.max(1) as f64,
            100.0 * header.mean_kept_mass
        ));
        Ok(())
    }
}
