//! `--set PATH=VALUE`: a command-line override means exactly what the same
//! edit in the file means (same keys, same outputs), shows in `plan` and
//! `status`, and its mistakes are reported at the flag.

mod common;

use common::{Workspace, stage_fields, text};

const RECIPE: &str = "\
name: overrides
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
";

fn keys(ws: &Workspace, args: &[&str]) -> Vec<(String, String)> {
    let out = ws.run(args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    stage_fields(&serde_json::from_slice(&out.stdout).unwrap(), "key")
}

#[test]
fn an_override_keys_stages_exactly_like_the_same_edit_in_the_file() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    ws.write(
        "edited.yaml",
        &RECIPE
            .replace("greeting: hello", "greeting: bye")
            .replace("separator: \"|\"", "separator: \"+\"")
            .replace("name: overrides", "name: edited"),
    );
    let flags = [
        "--set",
        "vars.greeting=bye",
        "--set",
        "stages.joined.with.separator=+",
    ];
    let mut args = vec!["plan", "recipe.yaml", "--json"];
    args.extend(flags);
    let overridden = keys(&ws, &args);
    let edited = keys(&ws, &["plan", "edited.yaml", "--json"]);
    let plain = keys(&ws, &["plan", "recipe.yaml", "--json"]);
    assert_eq!(overridden, edited);
    for ((name, with_flags), (_, without)) in overridden.iter().zip(&plain) {
        // `b` reads neither the var nor the separator.
        assert_eq!(with_flags == without, name == "b", "{name}");
    }

    let mut args = vec!["run", "recipe.yaml"];
    args.extend(flags);
    let out = ws.run(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ws.output_of("edited.yaml", "joined"), "bye bye +world");
}

#[test]
fn plan_and_status_show_the_overrides_and_status_explains_the_difference() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let set = ["--set", "stages.joined.with.separator=+"];
    let plan = ws.run(&["plan", "recipe.yaml", set[0], set[1]]);
    assert!(
        text(&plan.stdout).contains("override: --set stages.joined.with.separator=+"),
        "{}",
        text(&plan.stdout)
    );
    let plan_json = ws.run(&["plan", "recipe.yaml", "--json", set[0], set[1]]);
    let plan_json: serde_json::Value = serde_json::from_slice(&plan_json.stdout).unwrap();
    assert_eq!(
        plan_json["overrides"],
        serde_json::json!(["stages.joined.with.separator=+"])
    );

    let out = ws.run(&["run", "recipe.yaml", set[0], set[1]]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = ws.run(&["status", "recipe.yaml", set[0], set[1]]);
    let again = text(&again.stdout);
    assert!(again.contains("override: --set"), "{again}");
    assert!(again.contains("joined: up to date"), "{again}");
    // Without the flag the file's separator is back, and `--why` says so.
    let why = ws.run(&["status", "recipe.yaml", "--why"]);
    let why = text(&why.stdout);
    assert!(why.contains("params.separator: \"+\" -> \"|\""), "{why}");
    assert!(!why.contains("override:"), "{why}");
}

#[test]
fn mistakes_are_reported_at_the_flag_all_at_once() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let out = ws.run(&[
        "plan",
        "recipe.yaml",
        "--set",
        "stages.joined.with.separater=+",
        "--set",
        "stages.joind.with.separator=+",
        "--set",
        "vars.greting=x",
        "--set",
        "seed",
        "--set",
        "stages.a.with.repeat=two",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    for expected in [
        "op `concat` has no parameter `separater`",
        "did you mean `separator`?",
        "the recipe has no stage `joind`",
        "did you mean `joined`?",
        "the recipe declares no var `greting`",
        "`--set` takes PATH=VALUE, found `seed`",
        "invalid `repeat`",
        "[command line:5:",
        "5 problems found",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Nothing ran and nothing was stored.
    assert!(ws.log().is_empty());
}

#[test]
fn validate_reports_override_problems_with_their_place_as_json() {
    let ws = Workspace::new();
    ws.write("recipe.yaml", RECIPE);
    let out = ws.run(&[
        "validate",
        "recipe.yaml",
        "--json",
        "--set",
        "seed=7",
        "--set",
        "stages.b.with.txt=x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = reports[0]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["code"], "recipe::unknown-parameter");
    assert_eq!(problems[0]["source"], "command line");
    assert_eq!(problems[0]["line"], 2);
    // `--set stages.b.with.` is 20 characters: the key starts at column 21.
    assert_eq!(problems[0]["column"], 21);

    let fine = ws.run(&["validate", "recipe.yaml", "--set", "seed=8"]);
    assert!(fine.status.success(), "{}", text(&fine.stderr));
}
