//! Crashes and concurrency: a run killed with SIGKILL in the middle of a
//! stage leaves no half entry and resumes from the stage's checkpoint; two
//! runs on one store compute a shared stage once.

mod common;

use common::{Workspace, text};
use std::time::{Duration, Instant};

const SLOW: &str = "\
stages:
  source:
    op: emit
    with: { text: seed-text }
  slow:
    op: count
    inputs: { source: source }
    with: { steps: 40, step_ms: 50 }
  after:
    op: concat
    inputs: { parts: [slow, source] }
";

fn checkpoint_step(ws: &Workspace) -> Option<u32> {
    let scratch = ws.store().join("scratch");
    for entry in std::fs::read_dir(scratch).ok()? {
        let path = entry.ok()?.path().join("checkpoint.json");
        if let Ok(bytes) = std::fs::read(&path) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            return v["step"].as_u64().map(|s| s as u32);
        }
    }
    None
}

/// Every directory under store/ is a complete entry (has its manifest).
fn assert_no_half_entries(ws: &Workspace) {
    for entry in std::fs::read_dir(ws.store().join("store")).unwrap() {
        let dir = entry.unwrap().path();
        assert!(
            dir.join("manifest.json").is_file(),
            "half entry {}",
            dir.display()
        );
    }
}

#[test]
fn an_interrupt_stops_the_run_with_130_and_starts_nothing_new() {
    let ws = Workspace::new();
    // `other` needs nothing but waits for the one job slot `slow` holds.
    ws.write(
        "r.yaml",
        &format!("{SLOW}  other:\n    op: emit\n    with: {{ text: other }}\n"),
    );
    let child = ws
        .cmd(&["run", "r.yaml", "--jobs", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint_step(&ws).is_none_or(|s| s < 3) {
        assert!(
            Instant::now() < deadline,
            "the slow stage never checkpointed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted at step"), "{stderr}");
    assert!(
        stderr.contains("not started: the run was interrupted"),
        "{stderr}"
    );
    assert!(!ws.started().contains(&"after".to_string()));
    assert_no_half_entries(&ws);

    let rerun = ws.run(&["run", "r.yaml"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    assert!(ws.started().contains(&"other".to_string()));
    assert!(
        ws.log()
            .iter()
            .any(|l| l.starts_with("start-at-") && !l.starts_with("start-at-0"))
    );
}

#[test]
fn killed_run_leaves_no_half_entry_and_resumes_from_the_checkpoint() {
    let ws = Workspace::new();
    ws.write("r.yaml", SLOW);
    let mut child = ws.cmd(&["run", "r.yaml"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint_step(&ws).is_none_or(|s| s < 5) {
        assert!(
            Instant::now() < deadline,
            "the slow stage never checkpointed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = checkpoint_step(&ws).unwrap();
    assert!(killed_at < 40);

    assert_no_half_entries(&ws);
    let slow_key = ws.key_of("r.yaml", "slow");
    assert!(!ws.store().join("store").join(&slow_key).exists());
    let status = text(&ws.run(&["status", "r.yaml"]).stdout);
    assert!(status.contains("source: up to date"), "{status}");
    assert!(status.contains("slow: out of date"), "{status}");

    ws.clear_log();
    let rerun = ws.run(&["run", "r.yaml"]);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let log = ws.log();
    let resumed: u32 = log
        .iter()
        .find_map(|l| l.strip_prefix("start-at-"))
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed >= killed_at && resumed > 0,
        "resumed at {resumed}, killed at {killed_at}"
    );
    assert!(!ws.started().contains(&"source".to_string()), "{log:?}");
    assert!(
        !ws.store().join("scratch").join(&slow_key).exists(),
        "scratch kept after success"
    );

    // The result equals an uninterrupted run's.
    let clean = Workspace::new();
    clean.write("r.yaml", SLOW);
    assert!(clean.run(&["run", "r.yaml"]).status.success());
    assert_eq!(
        ws.output_of("r.yaml", "slow"),
        clean.output_of("r.yaml", "slow")
    );
    assert_eq!(
        ws.output_of("r.yaml", "after"),
        clean.output_of("r.yaml", "after")
    );
}

#[test]
fn two_concurrent_runs_compute_the_shared_stage_once() {
    let ws = Workspace::new();
    ws.write("r.yaml", SLOW);
    // A second recipe sharing `source` and `slow` (same keys), with its own tail.
    ws.write(
        "other.yaml",
        &SLOW.replace("after:\n    op: concat\n    inputs: { parts: [slow, source] }", "tail:\n    op: concat\n    inputs: { parts: [source, slow] }\n    with: { separator: \"-\" }"),
    );
    let first = ws.cmd(&["run", "r.yaml"]).spawn().unwrap();
    let second = ws
        .cmd(&["run", "other.yaml", "--store", ".distillery"])
        .spawn()
        .unwrap();
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(second.status.success(), "{}", text(&second.stderr));
    let started = ws.started();
    assert_eq!(
        started.iter().filter(|s| *s == "slow").count(),
        1,
        "{:?}",
        ws.log()
    );
    assert_eq!(
        started.iter().filter(|s| *s == "source").count(),
        1,
        "{:?}",
        ws.log()
    );
    assert_no_half_entries(&ws);
    let slow = ws.output_of("r.yaml", "slow");
    let tail = ws.output_of("other.yaml", "tail");
    assert_eq!(tail, format!("seed-text-{slow}"));
    let verify = ws.run(&["cache", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}
