//! The lock file: `run` writes `<recipe>.lock` beside the recipe, and
//! `status --locked` fails (exit 1) once the recipe, a parameter or an input
//! file no longer matches it, and passes again after a run.

mod common;

use common::{Workspace, text};

const RECIPE: &str = "\
name: locked
seed: 7
stages:
  a:
    op: emit
    with: { text: hello, repeat: 2 }
  data:
    op: read_file
    with: { path: input.txt }
  joined:
    op: concat
    inputs: { parts: [a, data] }
    with: { separator: \"|\" }
";

fn setup() -> Workspace {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    ws.write("input.txt", "first");
    let out = ws.run(&["run", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    ws
}

fn lock(ws: &Workspace) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ws.path("recipe.lock")).unwrap()).unwrap()
}

/// `status --locked`: exit code and stdout.
fn locked(ws: &Workspace, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["status", "recipe.yaml", "--locked"];
    args.extend(extra);
    let out = ws.run(&args);
    (out.status.code().unwrap(), text(&out.stdout))
}

#[test]
fn a_run_writes_a_lock_with_keys_inputs_and_output_digests() {
    let ws = setup();
    let lock = lock(&ws);
    assert_eq!(lock["lock_version"], 1);
    assert_eq!(lock["recipe"], "locked");
    let stages = lock["stages"].as_object().unwrap();
    let names: Vec<&String> = stages.keys().collect();
    assert_eq!(names, ["a", "data", "joined"]);
    for name in ["a", "data", "joined"] {
        let key = ws.key_of("recipe.yaml", name);
        let entry = &stages[name];
        assert_eq!(entry["key"], key.as_str());
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(ws.store().join("store").join(&key).join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(entry["outputs"], manifest["outputs"], "{name}");
        assert_eq!(entry["material"], manifest["material"], "{name}");
    }
    assert_eq!(
        stages["joined"]["reads"]["parts"],
        serde_json::json!(["a", "data"])
    );
    assert_eq!(
        stages["data"]["material"]["files"]["input.txt"],
        blake3::hash(b"first").to_hex().as_str()
    );
    assert_eq!(
        stages["joined"]["outputs"]["out.txt"]["blake3"],
        blake3::hash(b"hellohello|first").to_hex().as_str()
    );
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("the recipe matches its lock (3 stages)"),
        "{stdout}"
    );
}

#[test]
fn identical_runs_write_identical_locks_and_a_cached_rerun_leaves_it_alone() {
    let first = setup();
    let second = setup();
    let bytes = std::fs::read(first.path("recipe.lock")).unwrap();
    assert_eq!(bytes, std::fs::read(second.path("recipe.lock")).unwrap());
    let modified = std::fs::metadata(first.path("recipe.lock"))
        .unwrap()
        .modified()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = first.run(&["run", "recipe.yaml"]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(first.path("recipe.lock")).unwrap(), bytes);
    let after = std::fs::metadata(first.path("recipe.lock"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(modified, after, "an unchanged lock is not rewritten");
}

#[test]
fn a_parameter_edit_fails_the_check_until_the_recipe_is_run() {
    let ws = setup();
    ws.write(
        "recipe.yaml",
        &RECIPE.replace("separator: \"|\"", "separator: \"+\""),
    );
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("joined: changed since the lock: params.separator"),
        "{stdout}"
    );
    assert!(
        stdout.contains("params.separator: \"|\" -> \"+\""),
        "{stdout}"
    );
    assert!(stdout.contains("1 problem"), "{stdout}");
    // The check computed nothing.
    ws.clear_log();
    let (code, _) = locked(&ws, &[]);
    assert_eq!(code, 1);
    assert!(ws.log().is_empty());

    let out = ws.run(&["run", "recipe.yaml"]);
    assert!(out.status.success());
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn an_edited_input_file_fails_the_check_and_names_it() {
    let ws = setup();
    ws.write("input.txt", "second");
    let out = ws.run(&["status", "recipe.yaml", "--locked", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["matches"], false);
    let problems = report["problems"].as_array().unwrap();
    let stages: Vec<&str> = problems
        .iter()
        .map(|p| p["stage"].as_str().unwrap())
        .collect();
    // The file's stage, and the stage downstream of it through its key.
    assert_eq!(stages, ["data", "joined"], "{problems:?}");
    assert_eq!(problems[0]["changes"][0]["field"], "files.input.txt");
    assert_eq!(problems[1]["changes"][0]["field"], "inputs.parts");
    // Naming a stage checks only that stage.
    let (code, stdout) = locked(&ws, &["a"]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn stages_added_or_removed_and_overrides_are_mismatches() {
    let ws = setup();
    let with_extra = format!("{RECIPE}  extra:\n    op: emit\n    with: {{ text: x }}\n");
    ws.write("recipe.yaml", &with_extra);
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 1);
    assert!(stdout.contains("extra: not in the lock"), "{stdout}");

    let without_a = RECIPE.replace("parts: [a, data]", "parts: [data]");
    let without_a = without_a.replace(
        "  a:\n    op: emit\n    with: { text: hello, repeat: 2 }\n",
        "",
    );
    ws.write("recipe.yaml", &without_a);
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("a: in the lock, but the recipe no longer has this stage"),
        "{stdout}"
    );
    let out = ws.run(&["run", "recipe.yaml"]);
    assert!(out.status.success());
    assert!(lock(&ws)["stages"].get("a").is_none());
    assert_eq!(locked(&ws, &[]).0, 0);

    // A run with an override records it; a check without it fails.
    let out = ws.run(&[
        "run",
        "recipe.yaml",
        "--set",
        "stages.joined.with.separator=+",
    ]);
    assert!(out.status.success());
    assert_eq!(
        lock(&ws)["stages"]["joined"]["overrides"],
        serde_json::json!(["stages.joined.with.separator=+"])
    );
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(
            "joined: locked with `--set stages.joined.with.separator=+`, checked with no overrides"
        ),
        "{stdout}"
    );
    let (code, stdout) = locked(&ws, &["--set", "stages.joined.with.separator=+"]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn without_a_lock_the_check_fails_and_no_lock_writes_none() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    ws.write("input.txt", "first");
    let out = ws.run(&["status", "recipe.yaml", "--locked"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no lock file at"),
        "{}",
        text(&out.stderr)
    );
    let out = ws.run(&["run", "recipe.yaml", "--no-lock"]);
    assert!(out.status.success());
    assert!(!ws.path("recipe.lock").exists());

    ws.write("recipe.lock", "{ not json");
    let out = ws.run(&["status", "recipe.yaml", "--locked"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a valid lock"),
        "{}",
        text(&out.stderr)
    );
    // A run replaces a broken lock, with a warning.
    let out = ws.run(&["run", "recipe.yaml"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("writing a new lock"));
    assert_eq!(locked(&ws, &[]).0, 0);
}

#[test]
fn a_stored_entry_whose_outputs_differ_from_the_lock_is_reported() {
    let ws = setup();
    let mut edited = lock(&ws);
    edited["stages"]["a"]["outputs"]["out.txt"]["blake3"] = serde_json::json!("0".repeat(64));
    std::fs::write(
        ws.path("recipe.lock"),
        serde_json::to_vec_pretty(&edited).unwrap(),
    )
    .unwrap();
    let (code, stdout) = locked(&ws, &[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("a: same key, but the stored outputs differ from the lock's: out.txt"),
        "{stdout}"
    );
}
