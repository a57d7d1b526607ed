//! Computing a stage as a Slurm job. The engine keeps the graph and submits
//! a stage once its inputs are stored; the job runs this program's
//! `run-stage` command, which computes that one stage into the shared store
//! exactly as a local run would (under the stage's lock, published by one
//! rename, a checkpoint on SIGTERM). The engine follows the job in the
//! queue, and when it leaves the queue the store says whether it succeeded.

use super::jobs::{self, JobRecord};
use super::resources::SlurmSettings;
use crate::outcome::{RunObserver, StageOutcome};
use crate::plan::Plan;
use crate::store::Store;
use crate::validate::Pipeline;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How stages become jobs.
#[derive(Debug, Clone)]
pub struct SlurmExecutor {
    /// The program a job runs (this binary, on the shared filesystem).
    pub program: PathBuf,
    /// Its arguments before `--stage NAME --key KEY`: the `run-stage`
    /// command, the recipe, the store and the overrides.
    pub args: Vec<String>,
    /// How often the queue is asked about a job.
    pub poll: Duration,
    /// The machine's config file's `slurm:` settings, under the recipe's.
    pub machine: SlurmSettings,
}

/// Log lines shown when a job fails.
const TAIL_LINES: usize = 20;
/// squeue failures in a row (the controller busy or restarting) before the
/// job is given up on.
const SQUEUE_RETRIES: u32 = 30;
/// How long the entry of a job that completed may take to show on this
/// machine: NFS clients cache a file's absence for a few seconds.
const PUBLISH_GRACE: Duration = Duration::from_secs(10);

impl SlurmExecutor {
    /// Submits stage `index` and waits for its job to leave the queue.
    pub fn compute(
        &self,
        pipeline: &Pipeline,
        plan: &Plan,
        store: &Store,
        index: usize,
        observer: &dyn RunObserver,
    ) -> StageOutcome {
        let planned = plan.stage(index);
        let forced = planned.is_forced();
        if !forced && store.contains(&planned.key) {
            return StageOutcome::Reused;
        }
        let progress = observer.started(&planned.name, &planned.key);
        // A forced stage is stored already: its job succeeded when the
        // manifest is another one afterwards.
        let before = store.manifest(&planned.key);
        let job_id = match self.submit(pipeline, plan, store, index, forced) {
            Ok(id) => id,
            Err(e) => {
                return StageOutcome::Failed {
                    error: format!("cannot submit the Slurm job: {e:#}"),
                };
            }
        };
        let mut record = JobRecord {
            job_id: job_id.clone(),
            stage: planned.name.clone(),
            key: planned.key.clone(),
            state: "SUBMITTED".into(),
        };
        let _ = jobs::write_record(store, &record);
        progress.log(&format!("slurm job {job_id} submitted"));
        progress.set_message(&format!("slurm job {job_id}"));
        let mut cancelled = false;
        let mut squeue_failures = 0;
        loop {
            if crate::interrupt::requested() && !cancelled {
                // The job gets SIGTERM and checkpoints; nothing half
                // written is published, and a rerun resumes.
                if let Err(e) = jobs::cancel(&job_id) {
                    progress.log(&format!("{e}"));
                }
                cancelled = true;
            }
            let state = match jobs::queue_state(&job_id) {
                Ok(state) => {
                    squeue_failures = 0;
                    state
                }
                Err(e) if squeue_failures < SQUEUE_RETRIES => {
                    squeue_failures += 1;
                    progress.log(&format!("{e}; asking again"));
                    std::thread::sleep(self.poll);
                    continue;
                }
                Err(e) => {
                    return StageOutcome::Failed {
                        error: format!(
                            "cannot follow slurm job {job_id} ({e}); it may still run: see `squeue -j {job_id}`"
                        ),
                    };
                }
            };
            let Some(state) = state else { break };
            if state != record.state {
                progress.log(&format!("slurm job {job_id} {state}"));
                progress.set_message(&format!("slurm job {job_id} {state}"));
                record.state = state;
                let _ = jobs::write_record(store, &record);
            }
            std::thread::sleep(self.poll);
        }
        let (state, exit_code) =
            jobs::final_state(&job_id).unwrap_or_else(|| ("UNKNOWN".into(), String::new()));
        record.state = state.clone();
        let _ = jobs::write_record(store, &record);
        drop(progress);
        let published = || {
            store
                .manifest(&planned.key)
                .filter(|m| Some(m) != before.as_ref())
        };
        let mut manifest = published();
        let waited = std::time::Instant::now();
        // Only a job that says it completed is worth waiting for.
        while manifest.is_none() && state == "COMPLETED" && waited.elapsed() < PUBLISH_GRACE {
            std::thread::sleep(Duration::from_millis(500));
            manifest = published();
        }
        if let Some(manifest) = manifest {
            return StageOutcome::Ran {
                seconds: manifest.duration_secs,
            };
        }
        let log = jobs::log_path(store, &planned.name, &planned.key, &job_id);
        let why = if cancelled {
            "cancelled: the run was interrupted; rerun to resume".to_string()
        } else {
            format!("{state}, exit code {exit_code}")
        };
        StageOutcome::Failed {
            error: format!(
                "slurm job {job_id} ended without storing the stage ({why}); log {}:\n{}",
                log.display(),
                jobs::tail(&log, TAIL_LINES)
            ),
        }
    }

    /// Writes the batch script and hands it to `sbatch`; returns the job id.
    /// The options go to `sbatch` as arguments, one each, never into the
    /// script: a recipe's values cannot become shell lines or split into
    /// several options. The script only `exec`s the job's command, every
    /// argument single-quoted.
    fn submit(
        &self,
        pipeline: &Pipeline,
        plan: &Plan,
        store: &Store,
        index: usize,
        forced: bool,
    ) -> anyhow::Result<String> {
        let planned = plan.stage(index);
        let stage = &pipeline.stages[index];
        let dir = jobs::job_dir(store, &planned.name, &planned.key);
        std::fs::create_dir_all(&dir)?;
        let mut options = vec![
            "--parsable".to_string(),
            format!("--job-name=distillery:{}:{}", plan.recipe, planned.name),
            format!("--output={}", dir.join("slurm-%j.log").display()),
        ];
        let resources = stage.resources.over(&self.machine.for_op(stage.op.name()));
        options.extend(resources.sbatch_args());
        let mut command = vec![self.program.display().to_string()];
        command.extend(self.args.iter().cloned());
        command.extend([
            "--stage".into(),
            planned.name.clone(),
            "--key".into(),
            planned.key.clone(),
        ]);
        if forced {
            command.push("--force".into());
        }
        // Inputs that failed in this run: the job plans the stage without
        // them, as this run did, or its key would not match.
        for (slot, positions) in &planned.material.absent_inputs {
            for &at in positions {
                let producer = stage.inputs[slot][at];
                command.extend(["--absent".into(), pipeline.stages[producer].name.clone()]);
            }
        }
        if let Some(bad) = options
            .iter()
            .chain(&command)
            .find(|a| a.chars().any(char::is_control))
        {
            anyhow::bail!("a job argument holds a control character: {bad:?}");
        }
        // The options are repeated as comments, for whoever reads the
        // script; they are checked free of line breaks above.
        let mut script = String::from("#!/bin/sh\n");
        for option in &options {
            script.push_str(&format!("# sbatch {option}\n"));
        }
        script.push_str("exec");
        for arg in &command {
            script.push(' ');
            script.push_str(&shell_quote(arg));
        }
        script.push('\n');
        let path = dir.join("job.sh");
        std::fs::write(&path, script)?;
        let out = Command::new("sbatch")
            .args(&options)
            .arg(&path)
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run sbatch: {e}"))?;
        anyhow::ensure!(
            out.status.success(),
            "sbatch refused {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // `--parsable` prints `ID` or `ID;CLUSTER`.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
            "sbatch printed no job id: `{}`",
            text.trim()
        );
        Ok(id)
    }
}

/// `arg` in single quotes for `sh`.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
