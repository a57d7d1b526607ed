//! Partial slots: a stage that binds a failed stage only in a partial slot
//! (`select`'s candidates; the `gather` test op here) runs on the others,
//! under a key that records which were missing, and so do its descendants;
//! a rerun that fails the same way finds them stored, and one in which
//! everything finishes computes them again from all their inputs.

mod common;

use common::{Workspace, text};

const RECIPE: &str = "\
stages:
  a:
    op: emit
    with: { text: A }
  b:
    op: emit
    with: { text: B }
  c:
    op: emit
    with: { text: C }
  picked:
    op: gather
    inputs: { parts: [a, b, c] }
    with: { separator: \"|\" }
  after:
    op: concat
    inputs: { parts: [picked] }
  strict:
    op: concat
    inputs: { parts: [b] }
";

/// `run --json` with `fail` (stage names) failing; the exit code and the
/// report's (name, outcome) pairs.
fn run(ws: &Workspace, fail: &str) -> (Option<i32>, serde_json::Value) {
    let out = ws
        .cmd(&["run", "r.yaml", "--json"])
        .env("DISTILLERY_TEST_FAIL", fail)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stderr)));
    (out.status.code(), report)
}

fn stage<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

fn output_at(ws: &Workspace, key: &str) -> String {
    std::fs::read_to_string(ws.store().join("store").join(key).join("out/out.txt")).unwrap()
}

#[test]
fn a_partial_slot_goes_on_without_a_failed_stage_under_its_own_key() {
    let ws = Workspace::new();
    ws.write("r.yaml", RECIPE);
    let full_key = ws.key_of("r.yaml", "picked");

    let (code, report) = run(&ws, "b");
    // The run still fails: one of its stages did.
    assert_eq!(code, Some(1));
    assert_eq!(stage(&report, "b")["outcome"], "failed");
    assert_eq!(stage(&report, "strict")["outcome"], "skipped");
    assert_eq!(stage(&report, "picked")["outcome"], "ran");
    assert_eq!(stage(&report, "after")["outcome"], "ran");
    let partial_key = stage(&report, "picked")["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        partial_key, full_key,
        "the key must say that `b` was missing"
    );
    assert_eq!(output_at(&ws, &partial_key), "A|<no b>|C");
    let after_key = stage(&report, "after")["key"].as_str().unwrap().to_string();
    assert_eq!(output_at(&ws, &after_key), "A|<no b>|C");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            ws.store()
                .join("store")
                .join(&partial_key)
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["material"]["absent_inputs"],
        serde_json::json!({ "parts": [1] }),
        "{manifest}"
    );

    // The complete stage has not run: the plan says so, and why.
    let status = ws.run(&["status", "r.yaml", "--why"]);
    let why = text(&status.stdout);
    assert!(
        why.contains(
            "picked: out of date: changed: absent_inputs (its last run went without failed inputs)"
        ),
        "{why}"
    );

    // The same failure again: `b` is tried again, the rest is stored.
    ws.clear_log();
    let (code, report) = run(&ws, "b");
    assert_eq!(code, Some(1));
    assert_eq!(stage(&report, "picked")["outcome"], "cached");
    assert_eq!(stage(&report, "picked")["key"], partial_key.as_str());
    assert_eq!(stage(&report, "after")["outcome"], "cached");
    assert_eq!(ws.started(), ["b"]);

    // Nothing fails: everything downstream of `b` runs on all three.
    ws.clear_log();
    let (code, report) = run(&ws, "");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(stage(&report, "picked")["key"], full_key.as_str());
    assert_eq!(output_at(&ws, &full_key), "A|B|C");
    let mut started = ws.started();
    started.sort();
    assert_eq!(started, ["after", "b", "picked", "strict"]);
}

#[test]
fn a_partial_slot_with_every_input_failed_runs_and_the_op_decides() {
    let ws = Workspace::new();
    ws.write("r.yaml", RECIPE);
    let (code, report) = run(&ws, "a,b,c");
    assert_eq!(code, Some(1));
    // `gather` writes what it has (nothing); `select` would fail here,
    // listing why each candidate has no score.
    assert_eq!(stage(&report, "picked")["outcome"], "ran");
    let key = stage(&report, "picked")["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(output_at(&ws, &key), "<no a>|<no b>|<no c>");
}

#[test]
fn a_stage_skipped_upstream_is_absent_too() {
    let ws = Workspace::new();
    // `b` depends on `a0`: failing `a0` skips `b`, and `picked` goes
    // without `b`.
    ws.write(
        "r.yaml",
        &RECIPE.replace(
            "  b:\n    op: emit\n    with: { text: B }\n",
            "  a0:\n    op: emit\n    with: { text: X }\n  b:\n    op: concat\n    inputs: { parts: [a0] }\n",
        ),
    );
    let (code, report) = run(&ws, "a0");
    assert_eq!(code, Some(1));
    assert_eq!(stage(&report, "b")["outcome"], "skipped");
    assert_eq!(stage(&report, "picked")["outcome"], "ran");
    let key = stage(&report, "picked")["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(output_at(&ws, &key), "A|<no b>|C");
}
