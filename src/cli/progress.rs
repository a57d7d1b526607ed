//! Showing a run: progress bars on a terminal (indicatif), plain lines
//! otherwise (CI logs, pipes).

use distillery_engine::Progress;
use distillery_engine::run::{RunObserver, StageOutcome, StageReport};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Observer {
    bars: Option<MultiProgress>,
    /// Suppresses per-stage lines (for `--json`).
    quiet: bool,
}

impl Observer {
    pub fn new(quiet: bool) -> Self {
        let bars = (std::io::stderr().is_terminal() && !quiet)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { bars, quiet }
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl RunObserver for Observer {
    fn started(&self, stage: &str, key: &str) -> Box<dyn Progress> {
        self.line(&format!("{stage}: running ({})", &key[..12]));
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>16.bold} [{bar:30}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
                    )
                    .unwrap()
                    .progress_chars("=> "),
                );
                bar.set_prefix(stage.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
                Box::new(BarProgress { bar })
            }
            None => Box::new(LineProgress {
                stage: stage.to_string(),
                quiet: self.quiet,
                state: Mutex::new(LineState {
                    total: 0,
                    unit: String::new(),
                    message: String::new(),
                    last_print: Instant::now(),
                }),
            }),
        }
    }

    fn warning(&self, stage: &str, message: &str) {
        let text = format!("{stage}: warning: {message}");
        // A warning reaches stderr even when `--json` quiets the progress.
        if self.quiet {
            eprintln!("{text}");
        } else {
            self.line(&text);
        }
    }

    fn finished(&self, report: &StageReport) {
        let text = match &report.outcome {
            StageOutcome::Cached => format!("{}: cached ({})", report.name, &report.key[..12]),
            StageOutcome::Reused => format!(
                "{}: computed by another run, reused ({})",
                report.name,
                &report.key[..12]
            ),
            StageOutcome::Pulled { seconds, bytes } => format!(
                "{}: pulled from the remote, {} in {seconds:.1}s ({})",
                report.name,
                distillery_ops::report::format::format_bytes(*bytes),
                &report.key[..12]
            ),
            StageOutcome::Ran { seconds } => {
                format!(
                    "{}: done in {seconds:.1}s ({})",
                    report.name,
                    &report.key[..12]
                )
            }
            StageOutcome::Failed { error } => format!("{}: FAILED: {error}", report.name),
            StageOutcome::Skipped { failed_upstream } => {
                format!("{}: skipped, `{failed_upstream}` failed", report.name)
            }
        };
        self.line(&text);
    }
}

struct BarProgress {
    bar: ProgressBar,
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for BarProgress {
    fn set_total(&self, total: u64, _unit: &str) {
        self.bar.set_length(total);
    }
    fn set_position(&self, position: u64) {
        self.bar.set_position(position);
    }
    fn set_message(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
    fn log(&self, line: &str) {
        self.bar.println(line);
    }
}

struct LineState {
    total: u64,
    unit: String,
    message: String,
    last_print: Instant,
}

/// Plain progress lines, at most one every ten seconds.
struct LineProgress {
    stage: String,
    quiet: bool,
    state: Mutex<LineState>,
}

impl Progress for LineProgress {
    fn set_total(&self, total: u64, unit: &str) {
        let mut s = self.state.lock().unwrap();
        s.total = total;
        s.unit = unit.to_string();
    }
    fn set_position(&self, position: u64) {
        let mut s = self.state.lock().unwrap();
        if self.quiet || s.last_print.elapsed() < Duration::from_secs(10) {
            return;
        }
        s.last_print = Instant::now();
        eprintln!(
            "{}: {position}/{} {} {}",
            self.stage, s.total, s.unit, s.message
        );
    }
    fn set_message(&self, message: &str) {
        self.state.lock().unwrap().message = message.to_string();
    }
    fn log(&self, line: &str) {
        if !self.quiet {
            eprintln!("{}: {line}", self.stage);
        }
    }
}
