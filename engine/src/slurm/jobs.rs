//! A stage's Slurm job as the store records it, and what the scheduler
//! says about it (`squeue`, `scontrol`; without accounting storage `sacct`
//! has no history, so the store keeps what must outlive the queue).
//!
//! Under `<store>/jobs/<stage>-<key prefix>/`: `job.sh` (the batch script),
//! `job.json` (the last job id and state seen), `slurm-<id>.log` (the job's
//! output).

use crate::fsutil::write_atomically;
use crate::store::{Store, safe_file_name};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub stage: String,
    pub key: String,
    /// The last state seen: `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, ...
    pub state: String,
}

/// The folder of a stage's job files.
pub fn job_dir(store: &Store, stage: &str, key: &str) -> PathBuf {
    store
        .root()
        .join("jobs")
        .join(format!("{}-{}", safe_file_name(stage), &key[..16]))
}

pub fn log_path(store: &Store, stage: &str, key: &str, job_id: &str) -> PathBuf {
    job_dir(store, stage, key).join(format!("slurm-{job_id}.log"))
}

pub fn read_record(store: &Store, stage: &str, key: &str) -> Option<JobRecord> {
    let bytes = std::fs::read(job_dir(store, stage, key).join("job.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn write_record(store: &Store, record: &JobRecord) -> std::io::Result<()> {
    let dir = job_dir(store, &record.stage, &record.key);
    std::fs::create_dir_all(&dir)?;
    write_atomically(
        &dir.join("job.json"),
        &serde_json::to_vec_pretty(record).expect("a job record is JSON"),
    )
}

/// The job's state while the queue has it (`PENDING`, `RUNNING`,
/// `COMPLETING`, ...); None once it has left the queue. An error is squeue
/// failing for another reason (the controller busy or down): the job's
/// fate is unknown, not settled.
pub fn queue_state(job_id: &str) -> std::io::Result<Option<String>> {
    let out = Command::new("squeue")
        .args(["--noheader", "--jobs", job_id, "--format=%T"])
        .output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A job id the controller has forgotten is a job that left.
        if stderr.contains("Invalid job id") {
            return Ok(None);
        }
        return Err(std::io::Error::other(format!(
            "squeue failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!state.is_empty()).then_some(state))
}

/// The final state and exit code `scontrol` still knows for a job that
/// left the queue (for `MinJobAge` seconds); None once it forgot it.
pub fn final_state(job_id: &str) -> Option<(String, String)> {
    let out = Command::new("scontrol")
        .args(["show", "job", job_id, "--oneliner"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    Some((field("JobState")?, field("ExitCode").unwrap_or_default()))
}

/// Asks Slurm to cancel the job (SIGTERM to the stage, which checkpoints).
pub fn cancel(job_id: &str) -> std::io::Result<()> {
    let status = Command::new("scancel").arg(job_id).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "scancel {job_id} failed ({status})"
        )))
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}
