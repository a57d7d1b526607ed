//! The lock file: `<recipe>.lock` beside the recipe, meant to be committed
//! (as `dvc.lock` is). For each stage a run left stored it records the key,
//! what the key is made of (op and version, parameters with defaults, the
//! upstream keys by slot, the digests of the files read, the seed) and the
//! digest of every output file. `status --locked` recomputes the keys and
//! fails when the recipe, a parameter or an input file no longer matches, so
//! that CI can tell a recipe that changed from one that did not without
//! running anything.
//!
//! The file is JSON with stages sorted by name and nothing that changes
//! between identical runs (no times, no paths of the store), so two branches
//! that touch different stages merge without conflict.

use crate::key::{self, KeyChange, KeyMaterial};
use crate::outcome::{RunReport, StageOutcome};
use crate::plan::{Plan, selects_any};
use crate::store::{OutputFile, Store};
use crate::validate::Pipeline;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bumped when the lock file's layout changes.
pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    pub lock_version: u32,
    pub recipe: String,
    pub stages: BTreeMap<String, LockedStage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockedStage {
    pub key: String,
    /// The `--set` flags of the run that locked this stage, if any (per
    /// stage: a run with `--until` refreshes only some stages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    /// The stages each input slot reads, by name (their keys are in
    /// `material.inputs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reads: BTreeMap<String, Vec<String>>,
    pub material: KeyMaterial,
    /// Output files by path relative to the artifact folder.
    pub outputs: BTreeMap<String, OutputFile>,
}

/// Where a recipe's lock lives: beside it, the recipe's extension replaced
/// by `.lock` (`recipes/quickstart.yaml` -> `recipes/quickstart.lock`).
pub fn path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read the lock file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the lock file {path} is not a valid lock: {error}")]
    Invalid {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error(
        "the lock file {path} has version {found}; this build reads version {LOCK_VERSION}: run the recipe to rewrite it"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write the lock file {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Lock {
    /// Reads a lock file; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, LockError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(LockError::Read {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        // The version first, so that a future layout gets its own message.
        #[derive(Deserialize)]
        struct Version {
            lock_version: u32,
        }
        let invalid = |error| LockError::Invalid {
            path: path.to_path_buf(),
            error,
        };
        let version: Version = serde_json::from_slice(&bytes).map_err(invalid)?;
        if version.lock_version != LOCK_VERSION {
            return Err(LockError::Version {
                path: path.to_path_buf(),
                found: version.lock_version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(invalid)
    }

    /// Writes the lock so that a reader sees the old file or the new one.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a lock is JSON");
        bytes.push(b'\n');
        crate::fsutil::write_atomically(path, &bytes).map_err(|error| LockError::Write {
            path: path.to_path_buf(),
            error,
        })
    }

    /// The lock after a run: every stage the run found or left stored gets
    /// its entry (replacing the previous one); the other stages of the
    /// recipe keep theirs; stages the recipe no longer has are dropped.
    pub fn updated(
        previous: Option<Lock>,
        pipeline: &Pipeline,
        plan: &Plan,
        store: &Store,
        report: &RunReport,
    ) -> Lock {
        let mut stages = previous.map(|l| l.stages).unwrap_or_default();
        stages.retain(|name, _| pipeline.stage_index(name).is_some());
        for stage in &report.stages {
            let stored = matches!(
                stage.outcome,
                StageOutcome::Cached
                    | StageOutcome::Reused
                    | StageOutcome::Pulled { .. }
                    | StageOutcome::Ran { .. }
            );
            let index = pipeline.stage_index(&stage.name);
            let manifest = store.manifest(&stage.key);
            let (true, Some(index), Some(manifest)) = (stored, index, manifest) else {
                continue;
            };
            let reads = pipeline.input_names(index);
            stages.insert(
                stage.name.clone(),
                LockedStage {
                    key: stage.key.clone(),
                    overrides: plan.overrides.clone(),
                    reads,
                    material: plan.stage(index).material.clone(),
                    outputs: manifest.outputs,
                },
            );
        }
        Lock {
            lock_version: LOCK_VERSION,
            recipe: plan.recipe.clone(),
            stages,
        }
    }
}

/// `--set` flags as a check's message shows them.
fn show_overrides(flags: &[String]) -> String {
    if flags.is_empty() {
        "no overrides".to_string()
    } else {
        flags
            .iter()
            .map(|f| format!("`--set {f}`"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One way the recipe (or the store) no longer matches its lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockProblem {
    pub stage: String,
    pub problem: String,
    /// For a changed key: the fields that differ, lock first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<KeyChange>,
}

/// Compares the planned stages (`stages`: names; all when empty) with the
/// lock. A stage whose key is stored must also have the lock's output
/// digests. With no stage named, stages only the lock has are problems too.
pub fn check(lock: &Lock, plan: &Plan, store: &Store, stages: &[String]) -> Vec<LockProblem> {
    let mut problems = Vec::new();
    let checked = plan.stages.iter().filter(|s| selects_any(stages, &s.name));
    for planned in checked {
        let problem = |problem: String, changes: Vec<KeyChange>| LockProblem {
            stage: planned.name.clone(),
            problem,
            changes,
        };
        let Some(locked) = lock.stages.get(&planned.name) else {
            problems.push(problem(
                "not in the lock: run the recipe to add it".into(),
                Vec::new(),
            ));
            continue;
        };
        if locked.overrides != plan.overrides {
            problems.push(problem(
                format!(
                    "locked with {}, checked with {}",
                    show_overrides(&locked.overrides),
                    show_overrides(&plan.overrides)
                ),
                Vec::new(),
            ));
            continue;
        }
        if locked.key != planned.key {
            let changes = key::diff(&locked.material, &planned.material);
            let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
            problems.push(problem(
                format!("changed since the lock: {}", fields.join(", ")),
                changes,
            ));
            continue;
        }
        if let Some(manifest) = store.manifest(&planned.key)
            && manifest.outputs != locked.outputs
        {
            let differing: Vec<&str> = manifest
                .outputs
                .keys()
                .chain(locked.outputs.keys())
                .filter(|p| manifest.outputs.get(*p) != locked.outputs.get(*p))
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            problems.push(problem(
                format!(
                    "same key, but the stored outputs differ from the lock's: {} (a forced rerun that did not reproduce them?)",
                    differing.join(", ")
                ),
                Vec::new(),
            ));
        }
    }
    if stages.is_empty() {
        for name in lock.stages.keys() {
            if !plan.stages.iter().any(|s| &s.name == name) {
                problems.push(LockProblem {
                    stage: name.clone(),
                    problem: "in the lock, but the recipe no longer has this stage".into(),
                    changes: Vec::new(),
                });
            }
        }
    }
    problems
}
