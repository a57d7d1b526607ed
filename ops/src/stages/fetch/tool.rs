//! Running the package clients (`python3 -m pip`, `hf`) as child processes:
//! their configuration and environment (indexes, proxies, tokens) are the
//! machine's, and their output is kept for error messages. The child is
//! killed when an interrupt is requested, so a stop does not wait for a
//! multi-GB download to finish.

use distillery_engine::interrupt::{self, Interrupted};
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// What a finished client printed.
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Why a client did not finish.
pub enum ToolError {
    /// The program could not be started (not installed, not on PATH).
    NotFound(std::io::Error),
    Interrupted,
    Io(std::io::Error),
}

impl From<ToolError> for anyhow::Error {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::NotFound(e) | ToolError::Io(e) => e.into(),
            ToolError::Interrupted => Interrupted(Some("while fetching".into())).into(),
        }
    }
}

/// Runs `command` to completion (stdin closed, output captured), polling
/// for an interrupt.
pub fn run(command: &mut Command) -> Result<ToolOutput, ToolError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A program file another thread just wrote may still be open in a child
    // forked meanwhile ("text file busy"); that passes within moments.
    let mut attempts = 0;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        ToolError::NotFound(e)
                    }
                    _ => ToolError::Io(e),
                });
            }
        }
    };
    // Both pipes are drained on their own threads: a child that fills one
    // pipe while nobody reads it would block forever.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        if let Some(status) = child.try_wait().map_err(ToolError::Io)? {
            break status;
        }
        if interrupt::requested() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ToolError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(ToolOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

impl ToolOutput {
    /// The end of what the client said: its error output, or its standard
    /// output when it wrote its complaint there.
    pub fn complaint(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        tail(text, 15)
    }
}

/// The last `lines` lines of a client's output, for an error message.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = match run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"])) {
            Ok(out) => out,
            Err(_) => panic!("sh runs"),
        };
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.trim(), "out");
        assert_eq!(out.stderr.trim(), "err");
    }

    #[test]
    fn a_missing_program_is_not_found() {
        assert!(matches!(
            run(&mut Command::new("/nonexistent/distillery-no-such-tool")),
            Err(ToolError::NotFound(_))
        ));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
