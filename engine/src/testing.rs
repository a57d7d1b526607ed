//! Small ops that exercise the engine without models: text in, text out,
//! slow checkpointed counting, kinds for every artifact. The engine's tests
//! register them directly; the command line offers them only in builds for
//! the workspace's tests (see [`IN_TEST_BUILD`]).
//!
//! When `DISTILLERY_TEST_LOG` names a file, each op appends a line per start
//! and finish to it, so a test can see what actually ran. When
//! `DISTILLERY_TEST_FAIL` lists a stage (comma-separated names), `emit` fails
//! there: a failure that a rerun without it does not repeat.

use crate::op::{ArtifactKind, CheckContext, OpRegistry, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

/// Whether this build may offer the test ops on the command line: true only
/// with the feature `test-ops`, which the root package's dev-dependency on
/// this crate turns on. Cargo builds the `distillery` binary for
/// `cargo test` with the features of the dev-dependencies and for
/// `cargo build --release` without them, so the tests in tests/ run the
/// binary with these ops and the shipped binary has none, whatever its
/// environment. (A feature of the root package itself could not be turned
/// on by `cargo test` alone: a package cannot dev-depend on itself.)
pub const IN_TEST_BUILD: bool = cfg!(feature = "test-ops");

/// Registers every test op.
pub fn register(registry: &mut OpRegistry) {
    registry
        .register(Emit)
        .register(Concat)
        .register(Gather)
        .register(Count)
        .register(ReadFile)
        .register(MockModel)
        .register(MockDataset)
        .register(MockTrain)
        .register(MockEval);
}

fn log(ctx: &RunContext, event: &str) {
    if let Some(path) = std::env::var_os("DISTILLERY_TEST_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        // One write per line: appends from concurrent stages and
        // processes then never interleave within a line.
        let line = format!("{event} {} {}\n", ctx.stage, std::process::id());
        let _ = f.write_all(line.as_bytes());
    }
}

fn read_inputs(ctx: &RunContext, slot: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    for dir in ctx.inputs.get(slot).into_iter().flatten() {
        text.push_str(&std::fs::read_to_string(dir.join("out.txt"))?);
    }
    Ok(text)
}

/// Writes `text` `repeat` times.
pub struct Emit;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitParams {
    pub text: String,
    /// How many times to write the text (1-1000).
    #[serde(default = "one")]
    pub repeat: u32,
}

fn one() -> u32 {
    1
}

impl TypedOp for Emit {
    type Params = EmitParams;
    const NAME: &'static str = "emit";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Writes a text (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        Vec::new()
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }
    fn check(&self, p: &EmitParams, _: &CheckContext) -> Vec<ParamIssue> {
        if !(1..=1000).contains(&p.repeat) {
            return vec![ParamIssue::at(
                &["repeat"],
                format!("`repeat` must be between 1 and 1000, found {}", p.repeat),
            )];
        }
        Vec::new()
    }
    fn run(&self, p: EmitParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        let told_to_fail = std::env::var("DISTILLERY_TEST_FAIL")
            .is_ok_and(|list| list.split(',').any(|name| name == ctx.stage));
        if told_to_fail {
            anyhow::bail!("failing as DISTILLERY_TEST_FAIL asks");
        }
        std::fs::write(
            ctx.output_dir.join("out.txt"),
            p.text.repeat(p.repeat as usize),
        )?;
        log(ctx, "finish");
        Ok(())
    }
}

/// Joins the texts of its inputs.
pub struct Concat;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatParams {
    #[serde(default)]
    pub separator: String,
}

impl TypedOp for Concat {
    type Params = ConcatParams;
    const NAME: &'static str = "concat";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Joins the texts of its inputs (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::list("parts", ArtifactKind::Files)]
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }
    fn run(&self, p: ConcatParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        let parts: Vec<String> = ctx.inputs["parts"]
            .iter()
            .map(|d| std::fs::read_to_string(d.join("out.txt")))
            .collect::<Result<_, _>>()?;
        std::fs::write(ctx.output_dir.join("out.txt"), parts.join(&p.separator))?;
        log(ctx, "finish");
        Ok(())
    }
}

/// Joins the texts of the inputs that finished, and names those that did
/// not: the engine's partial slot.
pub struct Gather;

impl TypedOp for Gather {
    type Params = ConcatParams;
    const NAME: &'static str = "gather";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str =
        "Joins the texts of the inputs that finished, naming the others (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::list("parts", ArtifactKind::Files).partial()]
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }
    fn run(&self, p: ConcatParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        let mut parts = Vec::new();
        for (at, (dir, stage)) in ctx.inputs["parts"]
            .iter()
            .zip(&ctx.input_stages["parts"])
            .enumerate()
        {
            parts.push(if ctx.is_absent("parts", at) {
                format!("<no {stage}>")
            } else {
                std::fs::read_to_string(dir.join("out.txt"))?
            });
        }
        std::fs::write(ctx.output_dir.join("out.txt"), parts.join(&p.separator))?;
        log(ctx, "finish");
        Ok(())
    }
}

/// Counts to `steps`, sleeping `step_ms` per step and checkpointing each
/// step in scratch; resumes from the checkpoint, and stops between steps
/// when interrupted. `fail_at` fails on a step.
pub struct Count;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountParams {
    pub steps: u32,
    #[serde(default)]
    pub step_ms: u64,
    #[serde(default)]
    pub fail_at: Option<u32>,
    /// Holds the accelerator while running, when the recipe has one.
    #[serde(default)]
    pub accelerator: bool,
}

#[derive(Serialize, Deserialize)]
struct CountCheckpoint {
    step: u32,
    digest: String,
}

impl TypedOp for Count {
    type Params = CountParams;
    const NAME: &'static str = "count";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Counts slowly with checkpoints (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("source", ArtifactKind::Files).optional()]
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }
    fn check(&self, p: &CountParams, _: &CheckContext) -> Vec<ParamIssue> {
        if p.steps == 0 || p.steps > 100_000 {
            return vec![ParamIssue::at(
                &["steps"],
                format!("`steps` must be between 1 and 100000, found {}", p.steps),
            )];
        }
        Vec::new()
    }
    fn uses_accelerator(&self, p: &CountParams) -> bool {
        p.accelerator
    }
    fn run(&self, p: CountParams, ctx: &RunContext) -> anyhow::Result<()> {
        let checkpoint_path = ctx.scratch_dir.join("checkpoint.json");
        let (mut step, mut digest) = match std::fs::read(&checkpoint_path) {
            Ok(bytes) => {
                let c: CountCheckpoint = serde_json::from_slice(&bytes)?;
                (c.step, c.digest)
            }
            Err(_) => (
                0,
                blake3::hash(read_inputs(ctx, "source")?.as_bytes())
                    .to_hex()
                    .to_string(),
            ),
        };
        log(ctx, &format!("start-at-{step}"));
        ctx.progress.set_total(p.steps as u64, "steps");
        while step < p.steps {
            if crate::interrupt::requested() {
                return Err(crate::interrupt::Interrupted(Some(format!("at step {step}"))).into());
            }
            if p.fail_at == Some(step) {
                anyhow::bail!("failing at step {step} as asked");
            }
            std::thread::sleep(std::time::Duration::from_millis(p.step_ms));
            digest = blake3::hash(format!("{digest}{step}").as_bytes())
                .to_hex()
                .to_string();
            step += 1;
            crate::fsutil::write_atomically(
                &checkpoint_path,
                &serde_json::to_vec(&CountCheckpoint {
                    step,
                    digest: digest.clone(),
                })?,
            )?;
            ctx.progress.set_position(step as u64);
        }
        std::fs::write(ctx.output_dir.join("out.txt"), format!("{digest}\n"))?;
        log(ctx, "finish");
        Ok(())
    }
}

/// Copies an external file.
pub struct ReadFile;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileParams {
    pub path: PathBuf,
}

impl TypedOp for ReadFile {
    type Params = ReadFileParams;
    const NAME: &'static str = "read_file";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "Copies a file into the store (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        Vec::new()
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Files
    }
    fn external_files(&self, p: &ReadFileParams) -> Vec<PathBuf> {
        vec![p.path.clone()]
    }
    fn run(&self, p: ReadFileParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        std::fs::copy(ctx.resolve(&p.path), ctx.output_dir.join("out.txt"))?;
        log(ctx, "finish");
        Ok(())
    }
}

/// A stand-in model: a JSON file with its sizes.
pub struct MockModel;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockModelParams {
    pub hidden: u32,
    #[serde(default = "one")]
    pub layers: u32,
}

impl TypedOp for MockModel {
    type Params = MockModelParams;
    const NAME: &'static str = "mock_model";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "A stand-in model (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        Vec::new()
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }
    fn check(&self, p: &MockModelParams, _: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.hidden == 0 {
            issues.push(ParamIssue::at(&["hidden"], "`hidden` must be at least 1"));
        }
        if p.layers == 0 {
            issues.push(ParamIssue::at(&["layers"], "`layers` must be at least 1"));
        }
        issues
    }
    fn run(&self, p: MockModelParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        std::fs::write(ctx.output_dir.join("out.txt"), serde_json::to_string(&p)?)?;
        log(ctx, "finish");
        Ok(())
    }
}

/// A stand-in dataset built from texts.
pub struct MockDataset;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockDatasetParams {
    #[serde(default = "default_seq_len")]
    pub seq_len: u32,
}

fn default_seq_len() -> u32 {
    512
}

impl TypedOp for MockDataset {
    type Params = MockDatasetParams;
    const NAME: &'static str = "mock_dataset";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "A stand-in dataset (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("source", ArtifactKind::Files)]
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Dataset
    }
    fn run(&self, p: MockDatasetParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        let text = read_inputs(ctx, "source")?;
        std::fs::write(
            ctx.output_dir.join("out.txt"),
            format!("{} {}", p.seq_len, text.len()),
        )?;
        log(ctx, "finish");
        Ok(())
    }
}

/// A stand-in training stage: model + dataset -> model.
pub struct MockTrain;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockTrainParams {
    /// Learning rate, in (0, 1).
    pub lr: f64,
    #[serde(default = "one")]
    pub steps: u32,
}

impl TypedOp for MockTrain {
    type Params = MockTrainParams;
    const NAME: &'static str = "mock_train";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "A stand-in training stage (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::one("model", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Model
    }
    fn check(&self, p: &MockTrainParams, ctx: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if !(p.lr > 0.0 && p.lr < 1.0) {
            issues.push(
                ParamIssue::at(&["lr"], format!("`lr` must be in (0, 1), found {}", p.lr))
                    .help("typical values are 1e-5 to 1e-3"),
            );
        }
        // A plan-time check that reads an upstream stage's parameters.
        for model in ctx.inputs.get("model").into_iter().flatten() {
            if model.op == "mock_model" && model.params["hidden"].as_u64() == Some(13) {
                issues.push(ParamIssue::at(
                    &[],
                    format!(
                        "stage `{}` has hidden 13, which mock_train refuses",
                        model.stage
                    ),
                ));
            }
        }
        issues
    }
    fn run(&self, p: MockTrainParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        let model = std::fs::read_to_string(ctx.input("model")?.join("out.txt"))?;
        std::fs::write(
            ctx.output_dir.join("out.txt"),
            format!("{model} trained {} steps", p.steps),
        )?;
        log(ctx, "finish");
        Ok(())
    }
}

/// A stand-in evaluation over several models.
pub struct MockEval;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockEvalParams {
    #[serde(default)]
    pub tasks: Vec<String>,
}

impl TypedOp for MockEval {
    type Params = MockEvalParams;
    const NAME: &'static str = "mock_eval";
    const VERSION: u32 = 1;
    const DESCRIPTION: &'static str = "A stand-in evaluation (engine test op).";

    fn slots(&self) -> Vec<Slot> {
        vec![
            Slot::list("models", ArtifactKind::Model),
            Slot::one("data", ArtifactKind::Dataset),
        ]
    }
    fn output(&self) -> ArtifactKind {
        ArtifactKind::Metrics
    }
    fn run(&self, p: MockEvalParams, ctx: &RunContext) -> anyhow::Result<()> {
        log(ctx, "start");
        let n = ctx.inputs["models"].len();
        std::fs::write(
            ctx.output_dir.join("out.txt"),
            format!("{n} models, tasks {:?}", p.tasks),
        )?;
        // A table like `evaluate`'s, which `distillery run` prints at the end.
        let names = ctx.input_stages.get("models").cloned().unwrap_or_default();
        std::fs::write(
            ctx.output_dir.join("table.md"),
            format!(
                "| | {} |\n|---|{}\n| tasks | {} |\n",
                names.join(" | "),
                "---:|".repeat(n),
                vec![p.tasks.join(" "); n].join(" | ")
            ),
        )?;
        log(ctx, "finish");
        Ok(())
    }
}
