//! Stopping a run cleanly on SIGINT or SIGTERM.
//!
//! The first signal sets a flag: the scheduler starts no new stage, and a
//! long stage polls [`requested`] at its safe points (a training stage
//! writes a checkpoint there) and returns [`Interrupted`]. Nothing half
//! written is published, so a rerun resumes. A second signal exits at once
//! with status 130, for a stage that does not poll.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// The exit status of a run stopped by a signal (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Installs the SIGINT/SIGTERM handler (once per process).
pub fn install_handler() -> anyhow::Result<()> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if REQUESTED.swap(true, Ordering::SeqCst) {
                    std::process::exit(EXIT_INTERRUPTED);
                }
                eprintln!(
                    "interrupt: stopping at the next safe point (checkpointing); \
                     signal again to exit at once"
                );
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot install the interrupt handler: {e}"))
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Asks running stages to stop, as a signal would (for embedding and tests).
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The error a stage returns when it stopped because of [`requested`].
#[derive(Debug, thiserror::Error)]
#[error("interrupted{}; rerun to resume", .0.as_deref().map(|at| format!(" {at}")).unwrap_or_default())]
pub struct Interrupted(pub Option<String>);
