//! What a test does when something it needs is not on the machine: the
//! shared assets (`../shared/assets` beside the repository: the real model
//! and data), an external tool, or a GPU.
//!
//! One policy for every test: on a developer's machine the test skips with
//! `skipped: <what> is missing` on stderr, so that a fresh checkout's
//! `cargo test` passes; under `CI=true` it fails instead, so that CI never
//! counts a test that did not run as passed. Each `require_*` function
//! returns `None` when the test is to skip:
//!
//! ```no_run
//! let Some(gguf) = testkit::require_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
//!     return;
//! };
//! ```

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the tests run under CI (`CI=true`), where nothing may skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips the test (`None`, and a note on stderr), or fails it under
/// `CI=true`. `what` names the missing thing, precisely enough that a
/// reader knows what to install or fetch.
pub fn missing<T>(what: impl Display) -> Option<T> {
    if under_ci() {
        panic!("{what} is missing, and under CI=true a test must not skip");
    }
    eprintln!("skipped: {what} is missing");
    None
}

/// The shared assets folder, `../shared/assets` relative to the repository
/// root. Use [`require_asset`] first: this only builds the path.
pub fn assets_dir() -> PathBuf {
    // This crate is the folder `testkit/` of the repository.
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    repo_root.parent().unwrap().join("shared/assets")
}

/// `../shared/assets/<rel>` (a file or a folder) when it exists.
pub fn require_asset(rel: &str) -> Option<PathBuf> {
    let path = assets_dir().join(rel);
    if path.exists() {
        return Some(path);
    }
    missing(format!("the shared asset {}", path.display()))
}

/// `Some(())` when the command line `probe` (a program and its arguments,
/// such as `["python3", "-m", "pip", "--version"]`) runs and succeeds.
/// `what` names the tool for the note, such as "python3 with pip".
pub fn require_tool(what: &str, probe: &[&str]) -> Option<()> {
    let (program, args) = probe.split_first().expect("a probe names a program");
    let runs = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        return Some(());
    }
    missing(format!("{what} (`{}` fails)", probe.join(" ")))
}

/// The device `probe` found, or the reason it gave for finding none (for
/// example `distillery_ops::device::resolve(Device::Cuda)` on a machine
/// without a GPU). `what` names the device, such as "a CUDA device".
pub fn require_device<T, E: Display>(what: &str, probe: Result<T, E>) -> Option<T> {
    match probe {
        Ok(device) => Some(device),
        Err(why) => missing(format!("{what} ({why})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `CI` is read from the process environment, which the tests leave
    // alone: each checks the half of the policy that applies to this run.

    #[test]
    fn a_missing_thing_skips_outside_ci_and_fails_under_it() {
        let result = std::panic::catch_unwind(|| missing::<()>("a thing no machine has"));
        if under_ci() {
            let panic = result.unwrap_err();
            let message = panic.downcast_ref::<String>().unwrap();
            assert!(
                message.contains("a thing no machine has is missing"),
                "{message}"
            );
        } else {
            assert_eq!(result.unwrap(), None);
        }
    }

    #[test]
    fn a_missing_asset_is_named_by_its_path() {
        let result = std::panic::catch_unwind(|| require_asset("no/such/asset"));
        match result {
            Ok(found) => assert!(!under_ci() && found.is_none()),
            Err(panic) => {
                let message = panic.downcast_ref::<String>().unwrap();
                assert!(under_ci(), "{message}");
                assert!(
                    message.contains("shared/assets/no/such/asset is missing"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn a_tool_whose_probe_succeeds_is_present() {
        assert_eq!(require_tool("a shell", &["sh", "-c", "exit 0"]), Some(()));
    }

    #[test]
    fn a_device_probe_passes_its_device_through() {
        assert_eq!(require_device::<_, String>("a device", Ok(3)), Some(3));
    }
}
