//! Running a plan: independent stages run concurrently up to `jobs`, at most
//! one accelerator stage at a time, and a failed stage stops its descendants
//! but not its siblings, except where they bind it in a partial slot
//! ([`crate::Slot::partial`]): those run without it, under a key that says
//! so. Each stage is computed under its key's lock, so two processes sharing
//! a store never compute the same key twice: the second waits and then
//! finds the entry published.

use crate::op::{Device, RunContext};
pub use crate::outcome::{Quiet, RunObserver, RunReport, StageOutcome, StageReport};
use crate::plan::{Plan, StageState};
use crate::remote::{Remote, RemoteError, Transfer};
use crate::slurm::executor::SlurmExecutor;
use crate::store::Store;
use crate::validate::Pipeline;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, mpsc};
use std::time::Instant;

pub struct RunOptions {
    pub jobs: usize,
    /// The device the recipe resolved to (never `Auto` here).
    pub device: Device,
    /// Read through this remote: a stage it has is pulled, not computed.
    pub remote: Option<Arc<Remote>>,
    /// Push each stage computed to the remote (write-back).
    pub push: bool,
    /// Run each stage as a Slurm job instead of in this process.
    pub slurm: Option<Arc<SlurmExecutor>>,
}

impl RunOptions {
    /// Local execution only: no remote.
    pub fn local(jobs: usize, device: Device) -> Self {
        Self {
            jobs,
            device,
            remote: None,
            push: false,
            slurm: None,
        }
    }
}

/// Runs every selected stage of the plan that is not cached.
pub fn execute(
    pipeline: &Pipeline,
    plan: &Plan,
    store: &Store,
    options: &RunOptions,
    observer: &dyn RunObserver,
) -> std::io::Result<RunReport> {
    let _store_lock = store.lock_shared()?;
    let selected: Vec<usize> = plan
        .stages
        .iter()
        .filter(|s| s.selected)
        .map(|s| s.index)
        .collect();

    let mut outcomes: BTreeMap<usize, StageOutcome> = BTreeMap::new();
    let mut pending: BTreeSet<usize> = BTreeSet::new();
    for &i in &selected {
        // An entry removed since planning (`cache gc`) is computed again.
        if is_stored(plan, store, i) {
            outcomes.insert(i, take_stored(plan, store, i, observer));
        } else {
            pending.insert(i);
        }
    }

    // Replaced by a re-keyed plan when a stage goes on without a failed
    // input; stages already started keep the one they started with.
    let mut plan: Arc<Plan> = Arc::new(plan.clone());
    let jobs = options.jobs.max(1);
    // In this process one accelerator is shared; Slurm gives each job its own.
    let accelerator = options.device != Device::Cpu && options.slurm.is_none();
    let (sender, receiver) = mpsc::channel::<(usize, StageOutcome)>();
    std::thread::scope(|scope| {
        let mut running: BTreeSet<usize> = BTreeSet::new();
        let mut accelerator_busy = false;
        loop {
            // Stages whose producers all finished are ready; those with a
            // failed producer are skipped, unless they can run without it.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for &i in pending.clone().iter() {
                    let producers = pipeline.graph.producers(i);
                    let failed: Vec<usize> = producers
                        .iter()
                        .copied()
                        .filter(|p| outcomes.get(p).is_some_and(StageOutcome::is_failure))
                        .collect();
                    if !failed.is_empty() && !goes_on_without(pipeline, &outcomes, i, &failed) {
                        let stage = &pipeline.stages[i];
                        let bad = failed
                            .iter()
                            .copied()
                            .find(|&p| !stage.can_run_without(p))
                            .unwrap_or(failed[0]);
                        let failed_upstream = match &outcomes[&bad] {
                            StageOutcome::Skipped { failed_upstream } => failed_upstream.clone(),
                            _ => pipeline.stages[bad].name.clone(),
                        };
                        let outcome = StageOutcome::Skipped { failed_upstream };
                        observer.finished(&StageReport {
                            name: plan.stage(i).name.clone(),
                            key: plan.stage(i).key.clone(),
                            outcome: outcome.clone(),
                        });
                        outcomes.insert(i, outcome);
                        pending.remove(&i);
                        progressed = true;
                    }
                }
            }
            let ready: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| {
                    pipeline.graph.producers(i).iter().all(|p| {
                        outcomes.contains_key(p)
                            || !plan.stage(*p).selected && store.contains(&plan.stage(*p).key)
                    })
                })
                .collect();
            if crate::interrupt::requested() {
                // Started stages finish or checkpoint; nothing new starts.
                for &i in &pending {
                    let outcome = StageOutcome::Failed {
                        error: "not started: the run was interrupted".into(),
                    };
                    observer.finished(&StageReport {
                        name: plan.stage(i).name.clone(),
                        key: plan.stage(i).key.clone(),
                        outcome: outcome.clone(),
                    });
                    outcomes.insert(i, outcome);
                }
                pending.clear();
            }
            let ready: Vec<usize> = ready.into_iter().filter(|i| pending.contains(i)).collect();
            // A stage found stored once re-keyed finishes without a thread:
            // then its consumers may be ready, so look again before waiting.
            let mut finished_here = false;
            for i in ready {
                if running.len() >= jobs {
                    break;
                }
                let failed: BTreeSet<usize> = pipeline
                    .graph
                    .producers(i)
                    .into_iter()
                    .filter(|p| outcomes.get(p).is_some_and(StageOutcome::is_failure))
                    .collect();
                if !failed.is_empty() {
                    plan = Arc::new(plan.without(pipeline, store, i, &failed));
                }
                // Re-keyed (above, or as a descendant of such a stage) onto
                // what an earlier run that lacked the same inputs stored.
                if is_stored(&plan, store, i) {
                    pending.remove(&i);
                    outcomes.insert(i, take_stored(&plan, store, i, observer));
                    finished_here = true;
                    continue;
                }
                let planned = plan.stage(i);
                let needs_device = accelerator && planned.uses_accelerator;
                if needs_device && accelerator_busy {
                    continue;
                }
                accelerator_busy |= needs_device;
                pending.remove(&i);
                running.insert(i);
                let sender = sender.clone();
                let plan = Arc::clone(&plan);
                scope.spawn(move || {
                    let plan = &*plan;
                    let outcome =
                        read_through(plan, store, i, options, observer).unwrap_or_else(|| {
                            match &options.slurm {
                                Some(slurm) => slurm.compute(pipeline, plan, store, i, observer),
                                None => compute_stage(pipeline, plan, store, i, options, observer),
                            }
                        });
                    write_back(plan, store, i, &outcome, options, observer);
                    let _ = sender.send((i, outcome));
                });
            }
            if finished_here {
                continue;
            }
            if running.is_empty() {
                // Nothing runs and nothing can start: what is left waits for
                // an input that is neither selected nor stored.
                for &i in &pending {
                    let outcome = StageOutcome::Failed {
                        error: "an input stage is neither selected nor in the store".into(),
                    };
                    observer.finished(&StageReport {
                        name: plan.stage(i).name.clone(),
                        key: plan.stage(i).key.clone(),
                        outcome: outcome.clone(),
                    });
                    outcomes.insert(i, outcome);
                }
                break;
            }
            let (i, outcome) = receiver.recv().expect("a stage thread reports");
            running.remove(&i);
            if accelerator && plan.stage(i).uses_accelerator {
                accelerator_busy = false;
            }
            observer.finished(&StageReport {
                name: plan.stage(i).name.clone(),
                key: plan.stage(i).key.clone(),
                outcome: outcome.clone(),
            });
            outcomes.insert(i, outcome);
        }
    });

    let stages = plan
        .stages
        .iter()
        .filter_map(|s| {
            outcomes.get(&s.index).map(|o| StageReport {
                name: s.name.clone(),
                key: s.key.clone(),
                outcome: o.clone(),
            })
        })
        .collect();
    Ok(RunReport {
        recipe: plan.recipe.clone(),
        stages,
    })
}

/// Whether the plan found stage `index` stored and it still is.
fn is_stored(plan: &Plan, store: &Store, index: usize) -> bool {
    let planned = plan.stage(index);
    planned.state == StageState::Cached && store.contains(&planned.key)
}

/// A stored stage as this run's: reported cached and recorded as the
/// recipe's last run of it.
fn take_stored(
    plan: &Plan,
    store: &Store,
    index: usize,
    observer: &dyn RunObserver,
) -> StageOutcome {
    let planned = plan.stage(index);
    observer.finished(&StageReport {
        name: planned.name.clone(),
        key: planned.key.clone(),
        outcome: StageOutcome::Cached,
    });
    store
        .record_stage(&plan.recipe, &planned.name, &planned.material)
        .ok();
    StageOutcome::Cached
}

/// Whether pending stage `index` runs although its producers `failed` did
/// not finish: it binds each only in partial slots, and none of its
/// descendants was taken from the store at the start of the run (those
/// hold what the complete inputs give, which this run would contradict).
fn goes_on_without(
    pipeline: &Pipeline,
    outcomes: &BTreeMap<usize, StageOutcome>,
    index: usize,
    failed: &[usize],
) -> bool {
    let stage = &pipeline.stages[index];
    failed.iter().all(|&p| stage.can_run_without(p))
        && !pipeline
            .graph
            .descendants_of(index)
            .iter()
            .any(|d| outcomes.contains_key(d))
}

/// Computes the planned stage `index` in this process under its key lock,
/// as a local run does; the `run-stage` command of a Slurm job uses it too.
pub fn compute_stage(
    pipeline: &Pipeline,
    plan: &Plan,
    store: &Store,
    index: usize,
    options: &RunOptions,
    observer: &dyn RunObserver,
) -> StageOutcome {
    let device = options.device;
    let planned = plan.stage(index);
    let stage = &pipeline.stages[index];
    let forced = planned.is_forced();
    let result = (|| -> anyhow::Result<StageOutcome> {
        let lock = store.lock_stage(&planned.key)?;
        if !forced && store.contains(&planned.key) {
            store.record_stage(&plan.recipe, &planned.name, &planned.material)?;
            return Ok(StageOutcome::Reused);
        }
        let staging = store.begin(&planned.key, &lock)?;
        let inputs = stage
            .inputs
            .iter()
            .map(|(slot, producers)| {
                let dirs = producers
                    .iter()
                    .map(|&j| store.output_dir(&plan.stage(j).key))
                    .collect();
                (slot.clone(), dirs)
            })
            .collect();
        let input_stages = pipeline.input_names(index);
        let absent = planned.material.absent_inputs.clone();
        let progress = observer.started(&planned.name, &planned.key);
        let ctx = RunContext {
            stage: &planned.name,
            inputs,
            input_stages,
            absent,
            output_dir: staging.out_dir(),
            scratch_dir: store.scratch_dir(&planned.key),
            recipe_dir: pipeline.recipe.dir(),
            seed: pipeline.recipe.seed,
            device,
            progress: progress.as_ref(),
        };
        let started = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stage.op.run(&stage.params, &ctx)
        }));
        let ran = match ran {
            Ok(r) => r,
            Err(panic) => Err(anyhow::anyhow!(
                "op `{}` panicked: {}",
                stage.op.name(),
                panic_message(&panic)
            )),
        };
        if let Err(e) = ran {
            store.abandon(staging);
            return Err(e);
        }
        let seconds = started.elapsed().as_secs_f64();
        store.publish(
            staging,
            &plan.recipe,
            &planned.name,
            &planned.material,
            seconds,
        )?;
        store.record_stage(&plan.recipe, &planned.name, &planned.material)?;
        drop(lock);
        Ok(StageOutcome::Ran { seconds })
    })();
    result.unwrap_or_else(|e| StageOutcome::Failed {
        error: format!("{e:#}"),
    })
}

/// `run --remote`: the stage received from the remote when it has it (under
/// the stage lock, so a concurrent run computing it is waited for); None
/// when the stage is to be computed. A failed pull is a warning: the stage
/// is computed instead. A forced stage is never pulled.
fn read_through(
    plan: &Plan,
    store: &Store,
    index: usize,
    options: &RunOptions,
    observer: &dyn RunObserver,
) -> Option<StageOutcome> {
    let remote = options.remote.as_deref()?;
    let planned = plan.stage(index);
    if planned.is_forced() {
        return None;
    }
    let pulled = (|| -> Result<Option<Transfer>, RemoteError> {
        // Slurm jobs on other machines may be computing it into the same
        // store: their lock is the shared one.
        let _across_machines = match options.slurm {
            Some(_) => Some(store.lock_stage_across_machines(&planned.key)?),
            None => None,
        };
        let lock = store.lock_stage(&planned.key)?;
        if store.contains(&planned.key) {
            return Ok(None);
        }
        match remote.pull(store, &planned.key, &lock) {
            Ok(transfer) => Ok(Some(transfer)),
            Err(RemoteError::NotInRemote { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })();
    match pulled {
        Ok(Some(transfer)) => {
            if let Err(e) = store.record_stage(&plan.recipe, &planned.name, &planned.material) {
                observer.warning(&planned.name, &format!("cannot record the stage: {e}"));
            }
            Some(StageOutcome::Pulled {
                seconds: transfer.seconds,
                bytes: transfer.bytes,
            })
        }
        Ok(None) => None,
        Err(e) => {
            observer.warning(&planned.name, &format!("{e}; computing it instead"));
            None
        }
    }
}

/// `run --remote --push`: sends a stage this run computed. A failed push is
/// a warning: the stage is stored here either way.
fn write_back(
    plan: &Plan,
    store: &Store,
    index: usize,
    outcome: &StageOutcome,
    options: &RunOptions,
    observer: &dyn RunObserver,
) {
    let Some(remote) = options.remote.as_deref().filter(|_| options.push) else {
        return;
    };
    if !matches!(outcome, StageOutcome::Ran { .. }) {
        return;
    }
    let planned = plan.stage(index);
    if let Err(e) = remote.push(store, &planned.key) {
        observer.warning(&planned.name, &format!("not pushed: {e}"));
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
