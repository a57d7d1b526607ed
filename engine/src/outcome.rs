//! What running a stage came to, and how a run reports it as it goes:
//! shared by the local executor (`run`) and the Slurm one.

use crate::progress::Progress;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StageOutcome {
    /// Found in the store; nothing ran.
    Cached,
    /// Another run published it while this one waited for the stage lock.
    Reused,
    /// Received from the remote (`run --remote`) instead of computed.
    Pulled {
        seconds: f64,
        bytes: u64,
    },
    Ran {
        seconds: f64,
    },
    Failed {
        error: String,
    },
    /// Not run because a stage it needs failed.
    Skipped {
        failed_upstream: String,
    },
}

impl StageOutcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failed { .. } | Self::Skipped { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub name: String,
    pub key: String,
    #[serde(flatten)]
    pub outcome: StageOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub recipe: String,
    pub stages: Vec<StageReport>,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        !self.stages.iter().any(|s| s.outcome.is_failure())
    }
}

/// What the command line shows while a run proceeds.
pub trait RunObserver: Sync {
    /// A stage starts computing; returns where its progress goes.
    fn started(&self, stage: &str, key: &str) -> Box<dyn Progress>;
    fn finished(&self, report: &StageReport);
    /// Something went wrong that did not fail the stage (a pull that fell
    /// back to computing, a push that did not happen).
    fn warning(&self, stage: &str, message: &str) {
        tracing::warn!("{stage}: {message}");
    }
}

/// Observes nothing; for library use and tests.
pub struct Quiet;

impl RunObserver for Quiet {
    fn started(&self, _: &str, _: &str) -> Box<dyn Progress> {
        Box::new(crate::progress::NoProgress)
    }
    fn finished(&self, _: &StageReport) {}
}
