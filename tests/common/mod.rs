//! Helpers shared by the command-line tests: the binary with the engine's
//! test ops enabled (a test build has them: see
//! `distillery_engine::testing::IN_TEST_BUILD`), temporary recipe folders,
//! and the op log.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn distillery() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distillery"));
    cmd.env("DISTILLERY_TEST_OPS", "1")
        .env("NO_COLOR", "1")
        .env_remove("DISTILLERY_STORE")
        .env_remove("DISTILLERY_REMOTE")
        .env_remove("DISTILLERY_EXECUTOR")
        .env_remove("DISTILLERY_CONFIG")
        // No config file of the machine's user (`distillery_engine::config`).
        .env("XDG_CONFIG_HOME", "/nonexistent/distillery-tests")
        .env_remove("RUST_LOG");
    cmd
}

/// A temporary folder with a recipe and an op log.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("ops.log")
    }

    /// Lines the test ops wrote: `start a 1234`, `finish a 1234`, `start-at-3 d 1234`.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Stages the ops log says started, in order.
    pub fn started(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|l| l.starts_with("start"))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect()
    }

    pub fn clear_log(&self) {
        let _ = std::fs::remove_file(self.log_path());
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = distillery();
        c.current_dir(self.dir.path())
            .env("DISTILLERY_TEST_LOG", self.log_path())
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn store(&self) -> PathBuf {
        self.path(".distillery")
    }

    /// The artifact text a stage produced (via `plan --json` for its key).
    pub fn output_of(&self, recipe: &str, stage: &str) -> String {
        let key = self.key_of(recipe, stage);
        std::fs::read_to_string(self.store().join("store").join(key).join("out/out.txt")).unwrap()
    }

    /// The planned stages (`plan --json`), in plan order.
    pub fn planned(&self, recipe: &str) -> Vec<serde_json::Value> {
        let out = self.run(&["plan", recipe, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["stages"].as_array().unwrap().clone()
    }

    pub fn key_of(&self, recipe: &str, stage: &str) -> String {
        self.planned(recipe)
            .iter()
            .find(|s| s["name"] == stage)
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `(name, field)` of each stage in a plan or run report (`--json`).
pub fn stage_fields(report: &serde_json::Value, field: &str) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no stages in {report}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s[field].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A TCP port of 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
