//! What the store holds about each stage of a planned recipe, for the
//! report: its manifest when published, else the progress in its scratch
//! folder, read through the artifact types the ops write.

use super::format::format_unix;
use super::{Report, StageStatus, StageView};
use crate::eval::TABLE_FILE;
use crate::io::hf_folder::CONFIG_FILE;
use crate::model::LlamaConfig;
use crate::prune::report::{PRUNING_FILE, PruningReport};
use crate::train::metrics::{METRICS_FILE, TRAINING_FILE, TrainSummary, read_metrics};
use distillery_engine::plan::{Plan, StageState};
use distillery_engine::{Pipeline, Store};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A run whose metrics changed this recently is shown as running rather
/// than interrupted.
const RECENT: Duration = Duration::from_secs(15 * 60);

/// The report of `plan` (a plan of `pipeline` against `store`), stages in
/// the plan's topological order. Reads the store, never writes it.
///
/// Files are read through the types their ops write; one that is missing
/// or does not parse as that type (a config that is not a Llama config, a
/// metrics line of an unknown kind) is left out of the page.
pub fn collect(pipeline: &Pipeline, plan: &Plan, store: &Store, recipe_path: &str) -> Report {
    let mut edges = Vec::new();
    for s in &plan.stages {
        for producers in pipeline.stages[s.index].inputs.values() {
            for &j in producers {
                let edge = (plan.position(j), plan.position(s.index));
                if !edges.contains(&edge) {
                    edges.push(edge);
                }
            }
        }
    }
    Report {
        recipe: pipeline.recipe.name.clone(),
        recipe_path: recipe_path.to_string(),
        store: store.root().display().to_string(),
        generated: format_unix(unix(SystemTime::now())),
        stages: plan
            .stages
            .iter()
            .map(|s| stage_report(store, &s.name, &s.op, &s.key, &s.state))
            .collect(),
        edges,
    }
}

/// What the store holds about one stage: its entry when published, else
/// the progress in its scratch folder.
fn stage_report(store: &Store, name: &str, op: &str, key: &str, state: &StageState) -> StageView {
    let status = match state {
        StageState::Cached => StageStatus::Stored,
        StageState::Run(reason) => match latest_change(&store.scratch_dir(key)) {
            Some(modified) => StageStatus::Partial {
                recent: SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|age| age < RECENT),
            },
            None => StageStatus::NotRun(reason.to_string()),
        },
    };
    let mut r = StageView::new(name, op, key, status);
    let dir = match r.status {
        StageStatus::Stored => {
            if let Some(m) = store.manifest(key) {
                r.duration_secs = Some(m.duration_secs);
                r.created = Some(format_unix(m.created_unix));
                r.output_bytes = Some(m.outputs.values().map(|o| o.size).sum());
            }
            store.output_dir(key)
        }
        StageStatus::Partial { .. } => store.scratch_dir(key),
        StageStatus::NotRun(_) => return r,
    };
    // A file that is missing or does not parse is left out of the page: a
    // stage in progress may not have written it yet.
    let read = |file: &str| std::fs::read(dir.join(file)).ok();
    r.model = read(CONFIG_FILE)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .and_then(|json| LlamaConfig::from_json(&json).ok());
    r.pruning =
        read(PRUNING_FILE).and_then(|bytes| serde_json::from_slice::<PruningReport>(&bytes).ok());
    r.metrics = read_metrics(&dir.join(METRICS_FILE)).unwrap_or_default();
    r.training =
        read(TRAINING_FILE).and_then(|bytes| serde_json::from_slice::<TrainSummary>(&bytes).ok());
    r.eval_table = std::fs::read_to_string(dir.join(TABLE_FILE)).ok();
    r
}

/// The newest modification time among a folder's files; None when the
/// folder is missing or empty (a stage that never started).
fn latest_change(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
