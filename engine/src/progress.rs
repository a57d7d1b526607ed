//! How a running stage reports progress. The command line shows it as a
//! progress bar on a terminal and as plain log lines otherwise.

/// Progress of one stage. Implementations must be cheap to call often.
pub trait Progress: Send + Sync {
    /// Sets the amount of work, in `unit`s (tokens, rows, steps).
    fn set_total(&self, total: u64, unit: &str);
    /// Sets how much of the total is done.
    fn set_position(&self, position: u64);
    /// A short status, e.g. `loss 2.31`.
    fn set_message(&self, message: &str);
    /// A line worth keeping in the log.
    fn log(&self, line: &str);
}

/// Discards all progress; for library use and tests.
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64, _: &str) {}
    fn set_position(&self, _: u64) {}
    fn set_message(&self, _: &str) {}
    fn log(&self, _: &str) {}
}
