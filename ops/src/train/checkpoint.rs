//! Checkpoints in a training stage's scratch directory: the student's
//! weights (f32, exact), the optimizer's moments, and where the run was.
//!
//! A checkpoint is written to a temporary folder and renamed into place, the
//! previous one kept as `checkpoint.old` until the new one is complete, so a
//! kill at any moment leaves one whole checkpoint to resume from.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::io::StateDict;
use crate::io::safetensors_io::{DiskDtype, read_safetensors, write_safetensors};

const CURRENT: &str = "checkpoint";
const PREVIOUS: &str = "checkpoint.old";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// Where a run stood when it was checkpointed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Training tokens consumed (input positions).
    pub tokens: u64,
    /// Wall time spent training before this checkpoint, over all attempts.
    pub elapsed_s: f64,
    /// The seed of the data order (checked on resume).
    pub seed: u64,
    /// Steps the run will take in all (checked on resume).
    pub total_steps: u64,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub state: RunState,
    pub model: StateDict,
    pub optimizer: StateDict,
}

/// Writes a checkpoint under `scratch`, replacing the previous one.
pub fn save(
    scratch: &Path,
    state: &RunState,
    model: &StateDict,
    optimizer: &StateDict,
) -> Result<()> {
    let tmp = scratch.join(format!("checkpoint.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    write_safetensors(
        &tmp.join(MODEL),
        model.iter().map(|(k, v)| (k.as_str(), v)),
        DiskDtype::F32,
    )?;
    write_safetensors(
        &tmp.join(OPTIMIZER),
        optimizer.iter().map(|(k, v)| (k.as_str(), v)),
        DiskDtype::F32,
    )?;
    fs::write(tmp.join(STATE), serde_json::to_vec_pretty(state)?)?;
    sync_dir(&tmp);
    let (current, previous) = (scratch.join(CURRENT), scratch.join(PREVIOUS));
    if previous.exists() {
        fs::remove_dir_all(&previous)?;
    }
    if current.exists() {
        fs::rename(&current, &previous)?;
    }
    fs::rename(&tmp, &current).with_context(|| format!("cannot publish {}", current.display()))?;
    sync_dir(scratch);
    if previous.exists() {
        fs::remove_dir_all(&previous)?;
    }
    Ok(())
}

/// The latest whole checkpoint under `scratch`, if any.
pub fn load(scratch: &Path) -> Result<Option<Checkpoint>> {
    for dir in [scratch.join(CURRENT), scratch.join(PREVIOUS)] {
        if !dir.join(STATE).is_file() {
            continue;
        }
        let state: RunState = serde_json::from_slice(&fs::read(dir.join(STATE))?)
            .with_context(|| format!("reading {}", dir.join(STATE).display()))?;
        return Ok(Some(Checkpoint {
            state,
            model: read_safetensors(&dir.join(MODEL))?,
            optimizer: read_safetensors(&dir.join(OPTIMIZER))?,
        }));
    }
    Ok(None)
}

fn sync_dir(dir: &Path) {
    // Durability of the rename; best effort where directories cannot be
    // opened for syncing.
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
