//! Planning: the key of every stage, whether the store already has it, and
//! why a stage would run. Reads external files only when their stat changed.

use crate::files::FileHasher;
use crate::key::{self, ENGINE_FORMAT, KeyChange, KeyMaterial};
use crate::store::Store;
use crate::validate::Pipeline;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Which stages a command acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Stages to reach, with everything they need (`--until`).
    pub until: Vec<String>,
    /// Only these stages; their inputs must already be in the store (`--only`).
    pub only: Vec<String>,
    /// These stages and everything downstream of them (`--from`).
    pub from: Vec<String>,
    /// Stages to recompute even when stored (`--force`); `all` forces every
    /// selected stage.
    pub force: Vec<String>,
    /// Stages that failed in the run this plan continues (a Slurm job's
    /// `run-stage --absent`): the selected stages that bind them in partial
    /// slots go without them, as that run's plan did ([`Plan::without`]).
    pub absent: Vec<String>,
}

/// Why a stage will run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RunReason {
    /// No run of this stage in this recipe is recorded.
    New,
    /// The key changed since the last run; the fields that differ.
    Changed {
        changes: Vec<KeyChange>,
    },
    /// Same key as the last run, but the entry is gone (garbage-collected).
    Missing,
    Forced,
}

impl std::fmt::Display for RunReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::New => f.write_str("never run"),
            Self::Missing => {
                f.write_str("same key as the last run, but its entry is no longer stored")
            }
            Self::Forced => f.write_str("forced"),
            Self::Changed { changes } => {
                let fields: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        if c.field.starts_with("absent_inputs") {
                            format!("{} (its last run went without failed inputs)", c.field)
                        } else {
                            c.field.clone()
                        }
                    })
                    .collect();
                write!(f, "changed: {}", fields.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StageState {
    Cached,
    Run(RunReason),
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStage {
    pub index: usize,
    pub name: String,
    pub op: String,
    pub key: String,
    #[serde(skip)]
    pub material: KeyMaterial,
    pub state: StageState,
    /// Part of what the command will act on.
    pub selected: bool,
    pub uses_accelerator: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: String,
    /// The `--set PATH=VALUE` flags the recipe was read with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// In topological order.
    pub stages: Vec<PlannedStage>,
    /// Where each pipeline stage is in `stages`:
    /// `stages[position[i]].index == i`.
    #[serde(skip)]
    position: Vec<usize>,
}

impl PlannedStage {
    /// Whether `--force` named it: it runs even though it may be stored.
    pub fn is_forced(&self) -> bool {
        self.state == StageState::Run(RunReason::Forced)
    }
}

impl Plan {
    /// The plan of the pipeline's stage `index` (`Pipeline::stages[index]`).
    pub fn stage(&self, index: usize) -> &PlannedStage {
        &self.stages[self.position[index]]
    }

    /// Where the pipeline's stage `index` is in [`Plan::stages`].
    pub fn position(&self, index: usize) -> usize {
        self.position[index]
    }

    pub fn to_run(&self) -> impl Iterator<Item = &PlannedStage> {
        self.stages
            .iter()
            .filter(|s| s.selected && matches!(s.state, StageState::Run(_)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no stage named `{name}`{hint}")]
    UnknownStage { name: String, hint: String },
    #[error(
        "`--only {stage}` needs stage `{input}`, which is not in the store; run it first or drop --only"
    )]
    InputNotStored { stage: String, input: String },
    #[error("cannot hash an input file: {0}")]
    Hash(std::io::Error),
}

/// Computes keys and states for every stage and marks the selected ones.
pub fn plan(
    pipeline: &Pipeline,
    store: &Store,
    hasher: &FileHasher,
    selection: &Selection,
) -> Result<Plan, PlanError> {
    let order = pipeline.graph.topological_order();
    let recipe_dir = pipeline.recipe.dir();

    // Hash every external file of every stage at once, in parallel.
    let mut all_files: Vec<std::path::PathBuf> = pipeline
        .stages
        .iter()
        .flat_map(|s| s.external_files.iter().map(|f| recipe_dir.join(f)))
        .collect();
    all_files.sort();
    all_files.dedup();
    let digests: BTreeMap<std::path::PathBuf, String> = {
        let list = hasher.digest_all(&all_files).map_err(PlanError::Hash)?;
        all_files.into_iter().zip(list).collect()
    };

    let selected = select(pipeline, selection)?;
    let force_all = selection.force.iter().any(|f| f == "all");
    let mut keys: Vec<String> = vec![String::new(); pipeline.stages.len()];
    let mut stages = Vec::with_capacity(order.len());
    for i in order {
        let stage = &pipeline.stages[i];
        let material = KeyMaterial {
            engine_format: ENGINE_FORMAT,
            op: stage.op.name().to_string(),
            op_version: stage.op.version(),
            params: stage.params.clone(),
            inputs: input_keys(stage, |j| keys[j].clone()),
            absent_inputs: BTreeMap::new(),
            files: stage
                .external_files
                .iter()
                .map(|f| {
                    (
                        f.to_string_lossy().into_owned(),
                        digests[&recipe_dir.join(f)].clone(),
                    )
                })
                .collect(),
            seed: pipeline.recipe.seed,
        };
        let key = material.key();
        keys[i] = key.clone();
        let forced = selected.contains(&i)
            && (force_all || selection.force.iter().any(|f| selects(f, &stage.name)));
        let state = if forced {
            StageState::Run(RunReason::Forced)
        } else if store.contains(&key) {
            StageState::Cached
        } else {
            StageState::Run(reason(store, &pipeline.recipe.name, &stage.name, &material))
        };
        stages.push(PlannedStage {
            index: i,
            name: stage.name.clone(),
            op: stage.op.name().to_string(),
            key,
            material,
            state,
            selected: selected.contains(&i),
            uses_accelerator: stage.uses_accelerator,
        });
    }
    let mut position = vec![usize::MAX; pipeline.stages.len()];
    for (at, s) in stages.iter().enumerate() {
        position[s.index] = at;
    }
    let mut plan = Plan {
        recipe: pipeline.recipe.name.clone(),
        overrides: pipeline.recipe.overrides.flags(),
        stages,
        position,
    };
    let mut absent = BTreeSet::new();
    for name in &selection.absent {
        absent.extend(stage_indices(pipeline, name)?);
    }
    if !absent.is_empty() {
        for i in selected.iter().copied() {
            if pipeline
                .graph
                .producers(i)
                .iter()
                .any(|p| absent.contains(p))
            {
                plan = plan.without(pipeline, store, i, &absent);
            }
        }
    }
    if !selection.only.is_empty() {
        for s in plan.stages.iter().filter(|s| s.selected) {
            let stage = &pipeline.stages[s.index];
            for &j in &pipeline.graph.producers(s.index) {
                let producer = plan.stage(j);
                let gone = absent.contains(&j) && stage.can_run_without(j);
                if !gone && !producer.selected && !store.contains(&producer.key) {
                    return Err(PlanError::InputNotStored {
                        stage: s.name.clone(),
                        input: producer.name.clone(),
                    });
                }
            }
        }
    }
    Ok(plan)
}

impl Plan {
    /// This plan as a run goes on after the stages in `failed` failed or
    /// were skipped: stage `index` runs without those of them bound in its
    /// partial slots, so its key records their positions
    /// (`KeyMaterial::absent_inputs`), and the keys and states of every
    /// stage downstream of it follow. What the complete inputs give stays
    /// stored under the old key; a later run in which they all finish finds
    /// it there.
    pub fn without(
        &self,
        pipeline: &Pipeline,
        store: &Store,
        index: usize,
        failed: &BTreeSet<usize>,
    ) -> Plan {
        let spec = &pipeline.stages[index];
        let absent_inputs: BTreeMap<String, Vec<usize>> = spec
            .inputs
            .iter()
            .filter(|(slot, _)| spec.is_partial(slot))
            .map(|(slot, producers)| {
                let gone = (0..producers.len())
                    .filter(|&at| failed.contains(&producers[at]))
                    .collect();
                (slot.clone(), gone)
            })
            .filter(|(_, gone): &(String, Vec<usize>)| !gone.is_empty())
            .collect();
        let mut plan = self.clone();
        let mut rekeyed: BTreeSet<usize> = BTreeSet::new();
        for at in 0..plan.stages.len() {
            let i = plan.stages[at].index;
            let stage = &pipeline.stages[i];
            let upstream_rekeyed = pipeline
                .graph
                .producers(i)
                .iter()
                .any(|p| rekeyed.contains(p));
            if i != index && !upstream_rekeyed {
                continue;
            }
            let mut material = plan.stages[at].material.clone();
            material.inputs = input_keys(stage, |j| plan.stage(j).key.clone());
            if i == index {
                material.absent_inputs = absent_inputs.clone();
            }
            let key = material.key();
            let planned = &mut plan.stages[at];
            if key == planned.key {
                continue;
            }
            rekeyed.insert(i);
            if !planned.is_forced() {
                planned.state = if store.contains(&key) {
                    StageState::Cached
                } else {
                    StageState::Run(reason(store, &self.recipe, &planned.name, &material))
                };
            }
            planned.key = key;
            planned.material = material;
        }
        plan
    }
}

/// A stage's upstream keys by slot, in the order written.
fn input_keys(
    stage: &crate::validate::Stage,
    key_of: impl Fn(usize) -> String,
) -> BTreeMap<String, Vec<String>> {
    stage
        .inputs
        .iter()
        .map(|(slot, producers)| (slot.clone(), producers.iter().map(|&j| key_of(j)).collect()))
        .collect()
}

/// Whether stages named on a command line (none: every stage) include
/// `stage`, by [`selects`].
pub fn selects_any(selectors: &[String], stage: &str) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| selects(s, stage))
}

/// Whether `selector` (from `--until`, `--force`, a stage named on the
/// command line) names `stage`: its own name, or the written name of the
/// `matrix` stage it expands.
pub fn selects(selector: &str, stage: &str) -> bool {
    stage
        .strip_prefix(selector)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
}

fn reason(store: &Store, recipe: &str, stage: &str, material: &KeyMaterial) -> RunReason {
    match store.stage_record(recipe, stage) {
        None => RunReason::New,
        Some(record) if record.material == *material => RunReason::Missing,
        Some(record) => RunReason::Changed {
            changes: key::diff(&record.material, material),
        },
    }
}

/// The stages a name on a command line selects (by [`selects`]).
fn stage_indices(pipeline: &Pipeline, name: &str) -> Result<Vec<usize>, PlanError> {
    let named: Vec<usize> = (0..pipeline.stages.len())
        .filter(|&i| selects(name, &pipeline.stages[i].name))
        .collect();
    if !named.is_empty() {
        return Ok(named);
    }
    let names: Vec<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
    Err(PlanError::UnknownStage {
        name: name.to_string(),
        hint: crate::diagnostic::did_you_mean(name, &names)
            .map(|h| format!("; {h}"))
            .unwrap_or_default(),
    })
}

/// The stage indices a selection covers. Stages a selected stage needs are
/// included (they are cache hits when stored), except with `--only`. A
/// stage's name selects that stage; a `matrix` stage's name as written
/// selects all its expansions (`name[...]`).
fn select(pipeline: &Pipeline, selection: &Selection) -> Result<BTreeSet<usize>, PlanError> {
    let indices = |name: &String| stage_indices(pipeline, name);
    for name in &selection.force {
        if name != "all" {
            indices(name)?;
        }
    }
    let graph = &pipeline.graph;
    let mut chosen: BTreeSet<usize> =
        if selection.until.is_empty() && selection.only.is_empty() && selection.from.is_empty() {
            (0..pipeline.stages.len()).collect()
        } else {
            BTreeSet::new()
        };
    for name in &selection.until {
        for i in indices(name)? {
            chosen.extend(graph.ancestors_of(i));
        }
    }
    for name in &selection.from {
        for i in indices(name)? {
            for d in graph.descendants_of(i) {
                chosen.extend(graph.ancestors_of(d));
            }
        }
    }
    for name in &selection.only {
        chosen.extend(indices(name)?);
    }
    Ok(chosen)
}
