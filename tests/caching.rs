//! What the cache decides: unchanged reruns run nothing, a changed parameter
//! reruns exactly its stage and descendants, `status --why` names the
//! change, selections and failures behave, `cache verify` and `gc` work.

mod common;

use common::{Workspace, text};

const RECIPE: &str = "\
name: caching
seed: 7
vars: { greeting: hello }
stages:
  a:
    op: emit
    with: { text: \"${vars.greeting} \", repeat: 2 }
  b:
    op: emit
    with: { text: world }
  joined:
    op: concat
    inputs: { parts: [a, b] }
    with: { separator: \"|\" }
  counted:
    op: count
    inputs: { source: joined }
    with: { steps: 3 }
  side:
    op: emit
    with: { text: unrelated }
";

fn setup() -> Workspace {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let out = ws.run(&["run", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    ws
}

#[test]
fn first_run_computes_every_stage_with_the_right_outputs() {
    let ws = setup();
    let mut started = ws.started();
    started.sort();
    assert_eq!(started, ["a", "b", "counted", "joined", "side"]);
    assert_eq!(ws.output_of("recipe.yaml", "joined"), "hello hello |world");
}

#[test]
fn unchanged_rerun_is_all_cache_hits_and_runs_no_op() {
    let ws = setup();
    ws.clear_log();
    let out = ws.run(&["run", "recipe.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for stage in report["stages"].as_array().unwrap() {
        assert_eq!(stage["outcome"], "cached", "{stage}");
    }
    assert!(ws.log().is_empty(), "ops ran: {:?}", ws.log());
}

#[test]
fn changing_one_parameter_reruns_that_stage_and_its_descendants_only() {
    let ws = setup();
    ws.write(
        "recipe.yaml",
        &RECIPE.replace("separator: \"|\"", "separator: \"+\""),
    );
    let status = ws.run(&["status", "recipe.yaml", "--why"]);
    let status_text = text(&status.stdout);
    assert!(
        status_text.contains("joined: out of date: changed: params.separator"),
        "{status_text}"
    );
    assert!(
        status_text.contains("params.separator: \"|\" -> \"+\""),
        "{status_text}"
    );
    assert!(
        status_text.contains("counted: out of date"),
        "{status_text}"
    );
    assert!(status_text.contains("a: up to date"), "{status_text}");
    ws.clear_log();
    let out = ws.run(&["run", "recipe.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let mut started = ws.started();
    started.sort();
    assert_eq!(started, ["counted", "joined"]);
    assert_eq!(ws.output_of("recipe.yaml", "joined"), "hello hello +world");
}

#[test]
fn a_changed_variable_is_a_changed_parameter() {
    let ws = setup();
    ws.write(
        "recipe.yaml",
        &RECIPE.replace("greeting: hello", "greeting: bye"),
    );
    let status = text(&ws.run(&["status", "recipe.yaml", "--why"]).stdout);
    assert!(
        status.contains("params.text: \"hello \" -> \"bye \""),
        "{status}"
    );
    assert!(status.contains("b: up to date"), "{status}");
}

#[test]
fn changing_the_seed_reruns_everything() {
    let ws = setup();
    ws.write("recipe.yaml", &RECIPE.replace("seed: 7", "seed: 8"));
    let status = text(&ws.run(&["status", "recipe.yaml", "--why"]).stdout);
    assert_eq!(status.matches("seed: 7 -> 8").count(), 5, "{status}");
}

#[test]
fn external_file_content_is_part_of_the_key() {
    let ws = Workspace::new();
    ws.write("data/in.txt", "first");
    ws.write(
        "r.yaml",
        "stages:\n  raw:\n    op: read_file\n    with: { path: data/in.txt }\n",
    );
    assert!(ws.run(&["run", "r.yaml"]).status.success());
    ws.write("data/in.txt", "second");
    let status = text(&ws.run(&["status", "r.yaml", "--why"]).stdout);
    assert!(status.contains("files.data/in.txt"), "{status}");
    assert!(ws.run(&["run", "r.yaml"]).status.success());
    assert_eq!(ws.output_of("r.yaml", "raw"), "second");
}

#[test]
fn until_only_from_and_force_select_stages() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    assert!(
        ws.run(&["run", "recipe.yaml", "--until", "joined"])
            .status
            .success()
    );
    let mut started = ws.started();
    started.sort();
    assert_eq!(started, ["a", "b", "joined"]);

    ws.clear_log();
    let only = ws.run(&["run", "recipe.yaml", "--only", "side"]);
    assert!(only.status.success());
    assert_eq!(ws.started(), ["side"]);

    ws.clear_log();
    assert!(
        ws.run(&["run", "recipe.yaml", "--force", "b"])
            .status
            .success()
    );
    let mut started = ws.started();
    started.sort();
    // b is forced; joined's key is unchanged (b's key did not change), counted is new.
    assert_eq!(started, ["b", "counted"]);

    ws.clear_log();
    assert!(
        ws.run(&["run", "recipe.yaml", "--from", "joined", "--force", "all"])
            .status
            .success()
    );
    let mut started = ws.started();
    started.sort();
    assert_eq!(started, ["a", "b", "counted", "joined"]);

    let unknown = ws.run(&["run", "recipe.yaml", "--until", "joind"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("did you mean `joined`?"));
}

#[test]
fn only_refuses_a_stage_whose_inputs_are_not_stored() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let out = ws.run(&["run", "recipe.yaml", "--only", "joined"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not in the store"),
        "{}",
        text(&out.stderr)
    );
    assert!(ws.started().is_empty());
}

#[test]
fn dry_run_runs_nothing() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let out = ws.run(&["run", "recipe.yaml", "--dry-run"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("5 of 5 selected stages to run"));
    assert!(ws.started().is_empty());
    assert!(
        !ws.store().join("store").exists()
            || std::fs::read_dir(ws.store().join("store")).unwrap().count() == 0
    );
}

#[test]
fn a_failed_stage_stops_its_descendants_not_its_siblings() {
    let ws = Workspace::new();
    ws.write(
        "r.yaml",
        "stages:\n  bad:\n    op: count\n    with: { steps: 3, fail_at: 1 }\n  after:\n    op: concat\n    inputs: { parts: [bad] }\n  later:\n    op: concat\n    inputs: { parts: [after] }\n  sibling:\n    op: emit\n    with: { text: ok }\n",
    );
    let out = ws.run(&["run", "r.yaml", "--json", "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcome = |name: &str| {
        report["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(outcome("bad")["outcome"], "failed");
    assert!(
        outcome("bad")["error"]
            .as_str()
            .unwrap()
            .contains("failing at step 1")
    );
    assert_eq!(outcome("after")["outcome"], "skipped");
    assert_eq!(outcome("later")["failed_upstream"], "bad");
    assert_eq!(outcome("sibling")["outcome"], "ran");
}

#[test]
fn independent_stages_run_concurrently_with_jobs() {
    let ws = Workspace::new();
    ws.write(
        "r.yaml",
        "stages:\n  x:\n    op: count\n    with: { steps: 10, step_ms: 50 }\n  y:\n    op: count\n    with: { steps: 11, step_ms: 50 }\n",
    );
    assert!(ws.run(&["run", "r.yaml", "--jobs", "2"]).status.success());
    // Both started before either finished.
    let log = ws.log();
    let first_finish = log.iter().position(|l| l.starts_with("finish")).unwrap();
    assert_eq!(
        log[..first_finish]
            .iter()
            .filter(|l| l.starts_with("start"))
            .count(),
        2,
        "{log:?}"
    );
}

#[test]
fn cache_verify_reports_a_flipped_byte() {
    let ws = setup();
    let ok = ws.run(&["cache", "verify", "--store", ".distillery"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let key = ws.key_of("recipe.yaml", "joined");
    let file = ws.store().join("store").join(&key).join("out/out.txt");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let bad = ws.run(&["cache", "verify", "recipe.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    let stdout = text(&bad.stdout);
    assert!(
        stdout.contains(&key[..12]) && stdout.contains("out.txt: content changed"),
        "{stdout}"
    );
}

#[test]
fn cache_gc_keeps_what_the_recipe_uses() {
    let ws = setup();
    ws.write(
        "recipe.yaml",
        &RECIPE.replace("separator: \"|\"", "separator: \"+\""),
    );
    assert!(ws.run(&["run", "recipe.yaml"]).status.success());
    let count = || std::fs::read_dir(ws.store().join("store")).unwrap().count();
    assert_eq!(count(), 7);
    let dry = ws.run(&["cache", "gc", "recipe.yaml", "--dry-run"]);
    assert!(text(&dry.stdout).contains("would remove"));
    assert_eq!(count(), 7);
    let gc = ws.run(&["cache", "gc", "recipe.yaml"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert_eq!(count(), 5);
    ws.clear_log();
    assert!(ws.run(&["run", "recipe.yaml"]).status.success());
    assert!(ws.started().is_empty());
    let ls = text(&ws.run(&["cache", "ls"]).stdout);
    assert_eq!(ls.lines().count(), 5, "{ls}");
    // Aligned columns: with names and ops padded to the longest, every line
    // has the same width.
    let widths: Vec<usize> = ls.lines().map(|l| l.chars().count()).collect();
    assert!(widths.iter().all(|&w| w == widths[0]), "{ls}");
    let all = ws.run(&["cache", "gc", "--older-than", "0d"]);
    assert!(all.status.success());
    assert_eq!(count(), 0);
}

#[test]
fn dag_prints_text_dot_and_mermaid() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let dot = text(&ws.run(&["dag", "recipe.yaml", "--format", "dot"]).stdout);
    assert!(
        dot.contains("\"a\" -> \"joined\" [label=\"parts\"]"),
        "{dot}"
    );
    let mermaid = text(
        &ws.run(&["dag", "recipe.yaml", "--format", "mermaid"])
            .stdout,
    );
    assert!(mermaid.contains("-->|source|"), "{mermaid}");
    let plain = text(&ws.run(&["dag", "recipe.yaml"]).stdout);
    assert!(plain.contains("joined (concat) <- parts: a, b"), "{plain}");
}

const EVAL_RECIPE: &str = "\
name: evaluation
stages:
  text:
    op: emit
    with: { text: some text }
  data:
    op: mock_dataset
    inputs: { source: text }
  small:
    op: mock_model
    with: { hidden: 4 }
  big:
    op: mock_model
    with: { hidden: 8 }
  compare:
    op: mock_eval
    inputs: { models: [small, big], data: data }
    with: { tasks: [piqa] }
";

#[test]
fn run_ends_with_the_evaluation_tables_also_when_cached() {
    let ws = Workspace::new();
    ws.write("eval.yaml", EVAL_RECIPE);
    let first = ws.run(&["run", "eval.yaml"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(stdout.contains("compare ("), "{stdout}");
    assert!(
        stdout.contains("| | small | big |\n|---|---:|---:|\n| tasks | piqa | piqa |"),
        "{stdout}"
    );
    // A full cache hit prints the same tables, read from the store.
    let again = ws.run(&["run", "eval.yaml"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again.stderr).contains("0 ran, 5 cached"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(text(&again.stdout), stdout);
    // With --json, stdout holds the JSON report alone.
    let json = ws.run(&["run", "eval.yaml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["stages"].as_array().unwrap().len(), 5);
}
