//! What a stage operation is to the engine: a name and version, typed
//! parameters with a JSON Schema, input slots with artifact kinds, an output
//! kind, plan-time checks, and a `run` that fills an output directory.
//!
//! Ops implement [`TypedOp`] (typed parameters); the registry stores them
//! behind the object-safe [`Op`], which speaks JSON.

use crate::progress::Progress;
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a stage produces and what a slot accepts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    Model,
    Dataset,
    Scores,
    Metrics,
    Files,
    /// A teacher's sparse logits over a dataset's training rows.
    TeacherLogits,
}

impl std::fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Model => "Model",
            Self::Dataset => "Dataset",
            Self::Scores => "Scores",
            Self::Metrics => "Metrics",
            Self::Files => "Files",
            Self::TeacherLogits => "TeacherLogits",
        })
    }
}

/// An input slot of an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: &'static str,
    pub kind: ArtifactKind,
    /// A list slot takes one or more stages (`models: [a, b]`).
    pub list: bool,
    pub optional: bool,
    /// A list slot whose stages may fail without stopping this one: it runs
    /// on those that finished ([`RunContext::absent`] names the others), and
    /// its key records which were absent (`KeyMaterial::absent_inputs`), so
    /// a rerun in which they finish computes it again.
    pub partial: bool,
}

impl Slot {
    pub const fn one(name: &'static str, kind: ArtifactKind) -> Self {
        Self {
            name,
            kind,
            list: false,
            optional: false,
            partial: false,
        }
    }

    pub const fn list(name: &'static str, kind: ArtifactKind) -> Self {
        Self {
            name,
            kind,
            list: true,
            optional: false,
            partial: false,
        }
    }

    pub const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// See [`Slot::partial`]; for list slots.
    pub const fn partial(mut self) -> Self {
        assert!(self.list, "only a list slot can be partial");
        self.partial = true;
        self
    }
}

/// The device a recipe asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Cpu,
    Cuda,
    Auto,
}

/// A problem found by an op's plan-time check, at a path inside `with`
/// (`["targets", "hidden"]`); an empty path points at `with` itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamIssue {
    pub path: Vec<String>,
    pub message: String,
    pub help: Option<String>,
}

impl ParamIssue {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// What an op's plan-time check may know about a stage that feeds it.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub stage: String,
    pub op: String,
    /// The upstream stage's parameters, defaults filled in.
    pub params: serde_json::Value,
    /// Its own inputs, by slot, all the way up (for checks that follow a
    /// model back to where it was loaded).
    pub inputs: BTreeMap<String, Vec<UpstreamInfo>>,
}

impl UpstreamInfo {
    /// The stage's parameters as op `T` reads them, when the stage runs `T`:
    /// checks that look upstream read typed fields, never JSON by key.
    pub fn params_of<T: TypedOp>(&self) -> Option<T::Params> {
        if self.op != T::NAME {
            return None;
        }
        serde_json::from_value(self.params.clone()).ok()
    }
}

/// The context of a plan-time check.
#[derive(Debug, Clone)]
pub struct CheckContext<'a> {
    /// Stages bound to each slot.
    pub inputs: &'a BTreeMap<String, Vec<UpstreamInfo>>,
    /// Folder that relative paths in the recipe are relative to.
    pub recipe_dir: &'a Path,
}

/// Everything a running op gets from the engine.
pub struct RunContext<'a> {
    pub stage: &'a str,
    /// Artifact directories of the stages bound to each slot, in recipe order.
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Names of those stages, in the same order (for reports and tables).
    pub input_stages: BTreeMap<String, Vec<String>>,
    /// Positions in a partial slot's lists whose stage failed or was
    /// skipped in this run: their directories hold nothing.
    pub absent: BTreeMap<String, Vec<usize>>,
    /// A fresh, empty directory; published atomically when `run` returns Ok.
    pub output_dir: PathBuf,
    /// Survives interruptions of this stage (same key): checkpoints go here.
    pub scratch_dir: PathBuf,
    pub recipe_dir: PathBuf,
    pub seed: u64,
    pub device: Device,
    pub progress: &'a dyn Progress,
}

impl RunContext<'_> {
    /// The single artifact directory bound to a (non-list) slot.
    pub fn input(&self, slot: &str) -> anyhow::Result<&Path> {
        self.inputs
            .get(slot)
            .and_then(|dirs| dirs.first())
            .map(PathBuf::as_path)
            .ok_or_else(|| anyhow::anyhow!("stage `{}` has no input on slot `{slot}`", self.stage))
    }

    /// Whether position `at` of list slot `slot` has no artifact (its stage
    /// failed; see [`Slot::partial`]).
    pub fn is_absent(&self, slot: &str, at: usize) -> bool {
        self.absent.get(slot).is_some_and(|a| a.contains(&at))
    }

    /// A path from the recipe, resolved against the recipe's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.recipe_dir.join(path)
    }
}

/// An operation with typed parameters. `Params` must reject unknown fields
/// (`#[serde(deny_unknown_fields)]`) and fill defaults when deserialized.
pub trait TypedOp: Send + Sync + 'static {
    type Params: Serialize + DeserializeOwned + JsonSchema;
    const NAME: &'static str;
    /// Bumped when the op's meaning changes, so cached results rerun.
    const VERSION: u32;
    const DESCRIPTION: &'static str;

    fn slots(&self) -> Vec<Slot>;
    fn output(&self) -> ArtifactKind;

    /// Semantic checks at plan time, beyond what the types say.
    fn check(&self, _params: &Self::Params, _ctx: &CheckContext) -> Vec<ParamIssue> {
        Vec::new()
    }

    /// Facts worth knowing before the stage runs that are not problems
    /// (`validate` and `plan` print them under the stage).
    fn notes(&self, _params: &Self::Params, _ctx: &CheckContext) -> Vec<String> {
        Vec::new()
    }

    /// Files outside the store that the result depends on, relative to the
    /// recipe's folder; they are hashed by content into the stage key.
    fn external_files(&self, _params: &Self::Params) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Whether the stage occupies an accelerator when the recipe runs on one
    /// (the scheduler runs one such stage per device at a time).
    fn uses_accelerator(&self, _params: &Self::Params) -> bool {
        false
    }

    fn run(&self, params: Self::Params, ctx: &RunContext) -> anyhow::Result<()>;
}

/// Why a `with` block does not deserialize into an op's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    /// Path inside `with` where deserialization failed.
    pub path: Vec<String>,
    pub message: String,
}

/// The object-safe face of an op, as the registry stores it.
pub trait Op: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn description(&self) -> &'static str;
    fn slots(&self) -> Vec<Slot>;
    fn output(&self) -> ArtifactKind;
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    /// Deserializes `with` and returns it normalized: defaults filled in.
    fn normalize(&self, with: serde_json::Value) -> Result<serde_json::Value, ParamError>;
    fn check(&self, params: &serde_json::Value, ctx: &CheckContext) -> Vec<ParamIssue>;
    fn notes(&self, params: &serde_json::Value, ctx: &CheckContext) -> Vec<String>;
    fn external_files(&self, params: &serde_json::Value) -> Vec<PathBuf>;
    fn uses_accelerator(&self, params: &serde_json::Value) -> bool;
    fn run(&self, params: &serde_json::Value, ctx: &RunContext) -> anyhow::Result<()>;
}

struct Typed<T>(T);

impl<T: TypedOp> Typed<T> {
    fn params(value: &serde_json::Value) -> Result<T::Params, ParamError> {
        let mut tracker = serde_path_to_error::Track::new();
        let deserializer = serde_path_to_error::Deserializer::new(value, &mut tracker);
        T::Params::deserialize(deserializer).map_err(|e| ParamError {
            path: path_segments(&tracker.path()),
            message: e.to_string(),
        })
    }
}

use serde::Deserialize as _;

fn path_segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

impl<T: TypedOp> Op for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn version(&self) -> u32 {
        T::VERSION
    }
    fn description(&self) -> &'static str {
        T::DESCRIPTION
    }
    fn slots(&self) -> Vec<Slot> {
        self.0.slots()
    }
    fn output(&self) -> ArtifactKind {
        self.0.output()
    }
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T::Params>()
    }
    fn normalize(&self, with: serde_json::Value) -> Result<serde_json::Value, ParamError> {
        let params = Self::params(&with)?;
        serde_json::to_value(params).map_err(|e| ParamError {
            path: Vec::new(),
            message: e.to_string(),
        })
    }
    fn check(&self, params: &serde_json::Value, ctx: &CheckContext) -> Vec<ParamIssue> {
        match Self::params(params) {
            Ok(p) => self.0.check(&p, ctx),
            Err(e) => vec![ParamIssue {
                path: e.path,
                message: e.message,
                help: None,
            }],
        }
    }
    fn notes(&self, params: &serde_json::Value, ctx: &CheckContext) -> Vec<String> {
        Self::params(params)
            .map(|p| self.0.notes(&p, ctx))
            .unwrap_or_default()
    }
    fn external_files(&self, params: &serde_json::Value) -> Vec<PathBuf> {
        Self::params(params)
            .map(|p| self.0.external_files(&p))
            .unwrap_or_default()
    }
    fn uses_accelerator(&self, params: &serde_json::Value) -> bool {
        Self::params(params).is_ok_and(|p| self.0.uses_accelerator(&p))
    }
    fn run(&self, params: &serde_json::Value, ctx: &RunContext) -> anyhow::Result<()> {
        let params = Self::params(params).map_err(|e| anyhow::anyhow!(e.message))?;
        self.0.run(params, ctx)
    }
}

/// The ops a recipe may use, by name.
#[derive(Default, Clone)]
pub struct OpRegistry {
    ops: BTreeMap<&'static str, Arc<dyn Op>>,
}

impl OpRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an op; a second op with the same name replaces the first.
    pub fn register<T: TypedOp>(&mut self, op: T) -> &mut Self {
        self.ops.insert(T::NAME, Arc::new(Typed(op)));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Op>> {
        self.ops.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.ops.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Op>> {
        self.ops.values()
    }
}
