//! `matrix:` fan-out: one stage per combination of values, named
//! `stage[axis=value,...]`, each cached on its own; inputs bound to the
//! expansion with the same values, or to all of them in a list slot.

mod common;

use common::{Workspace, text};

fn recipe(texts: &str) -> String {
    format!(
        "\
stages:
  word:
    op: emit
    matrix: {{ text: [{texts}], repeat: [1, 2] }}
    with: {{ text: \"${{matrix.text}}-\", repeat: \"${{matrix.repeat}}\" }}
  counted:
    op: count
    matrix: {{ text: [{texts}], repeat: [1, 2] }}
    inputs: {{ source: word }}
    with: {{ steps: 1 }}
  joined:
    op: concat
    inputs: {{ parts: [word] }}
    with: {{ separator: \"|\" }}
"
    )
}

fn plan_names(ws: &Workspace, recipe: &str) -> Vec<String> {
    ws.planned(recipe)
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_combination_is_a_named_stage_with_its_values() {
    let ws = Workspace::new();
    ws.write("r.yaml", &recipe("a, b"));
    let mut names = plan_names(&ws, "r.yaml");
    names.sort();
    assert_eq!(
        names,
        [
            "counted[text=a,repeat=1]",
            "counted[text=a,repeat=2]",
            "counted[text=b,repeat=1]",
            "counted[text=b,repeat=2]",
            "joined",
            "word[text=a,repeat=1]",
            "word[text=a,repeat=2]",
            "word[text=b,repeat=1]",
            "word[text=b,repeat=2]",
        ]
    );
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `${matrix.repeat}` kept its type (a number) and `${matrix.text}` was
    // interpolated into a string.
    assert_eq!(ws.output_of("r.yaml", "word[text=b,repeat=2]"), "b-b-");
    // A list slot gets every expansion, in the order written.
    assert_eq!(ws.output_of("r.yaml", "joined"), "a-|a-a-|b-|b-b-");
    // A stage with the same matrix reads the matching expansion only: the
    // four counts differ, as their inputs do.
    let keys: std::collections::BTreeSet<String> = ["a", "b"]
        .iter()
        .flat_map(|t| [1, 2].map(|r| format!("counted[text={t},repeat={r}]")))
        .map(|name| ws.output_of("r.yaml", &name))
        .collect();
    assert_eq!(keys.len(), 4);
}

#[test]
fn adding_a_value_runs_only_the_new_expansions_and_what_reads_them() {
    let ws = Workspace::new();
    ws.write("r.yaml", &recipe("a, b"));
    assert!(ws.run(&["run", "r.yaml"]).status.success());
    ws.clear_log();
    ws.write("r.yaml", &recipe("a, b, c"));
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut started = ws.started();
    started.sort();
    assert_eq!(
        started,
        [
            "counted[text=c,repeat=1]",
            "counted[text=c,repeat=2]",
            "joined",
            "word[text=c,repeat=1]",
            "word[text=c,repeat=2]",
        ]
    );
    // `status --why` says what changed for the stage that reads them all.
    let status = text(&ws.run(&["status", "r.yaml", "--why"]).stdout);
    assert!(
        status.contains("word[text=c,repeat=2]: up to date"),
        "{status}"
    );
}

#[test]
fn a_written_name_selects_all_its_expansions() {
    let ws = Workspace::new();
    ws.write("r.yaml", &recipe("a, b"));
    let out = ws.run(&["run", "r.yaml", "--until", "word"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut started = ws.started();
    started.sort();
    assert_eq!(
        started,
        [
            "word[text=a,repeat=1]",
            "word[text=a,repeat=2]",
            "word[text=b,repeat=1]",
            "word[text=b,repeat=2]",
        ]
    );
    // One expansion by its full name.
    ws.clear_log();
    let out = ws.run(&["run", "r.yaml", "--only", "counted[text=a,repeat=2]"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ws.started(), ["counted[text=a,repeat=2]"]);
}

#[test]
fn matrix_mistakes_point_at_the_line_that_made_them() {
    let ws = Workspace::new();
    let cases = [
        (
            "stages:\n  w:\n    op: emit\n    matrix: { text: [] }\n    with: { text: x }\n",
            "matrix axis `text` must be a non-empty list",
            "4:",
        ),
        (
            "stages:\n  w:\n    op: emit\n    matrix: { text: [a, a] }\n    with: { text: x }\n",
            "lists `a` twice",
            "4:",
        ),
        (
            "stages:\n  w:\n    op: emit\n    matrix: { text: [a] }\n    with: { text: \"${matrix.txt}\" }\n",
            "has no axis `txt`",
            "5:",
        ),
        (
            "stages:\n  w:\n    op: emit\n    with: { text: \"${matrix.text}\" }\n",
            "in a stage without a `matrix`",
            "4:",
        ),
        (
            "stages:\n  w:\n    op: emit\n    matrix: { text: [a, b] }\n    with: { text: \"${matrix.text}\" }\n  \
             c:\n    op: count\n    inputs: { source: w }\n    with: { steps: 1 }\n",
            "takes one stage, and `w` expands to 2",
            "8:",
        ),
        (
            "stages:\n  w:\n    op: emit\n    matrix: { text: [a, b] }\n    with: { text: \"${matrix.text}\" }\n  \
             c:\n    op: count\n    matrix: { text: [a, z] }\n    inputs: { source: w }\n    with: { steps: 1 }\n",
            "no counterpart in `w` with the values [text=z]",
            "9:",
        ),
        // A parameter the op refuses, reported once per expansion that has it.
        (
            "stages:\n  w:\n    op: emit\n    matrix: { n: [1, 5000] }\n    with: { text: x, repeat: \"${matrix.n}\" }\n",
            "w[n=5000]",
            "5:",
        ),
    ];
    for (yaml, message, line) in cases {
        ws.write("bad.yaml", yaml);
        let out = ws.run(&["validate", "bad.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = text(&out.stderr);
        assert!(err.contains(message), "{message:?} not in\n{err}");
        assert!(
            err.contains(&format!("bad.yaml:{line}")),
            "line {line} not in\n{err}"
        );
    }
}

#[test]
fn expansions_whose_names_differ_only_in_punctuation_keep_their_own_history() {
    let ws = Workspace::new();
    let recipe = |repeat: u32| {
        format!(
            "stages:\n  w:\n    op: emit\n    matrix: {{ text: [\"x y\", \"x_y\"] }}\n    \
             with: {{ text: \"${{matrix.text}}\", repeat: {repeat} }}\n"
        )
    };
    ws.write("r.yaml", &recipe(1));
    assert!(ws.run(&["run", "r.yaml"]).status.success());
    ws.write("r.yaml", &recipe(2));
    let status = text(&ws.run(&["status", "r.yaml", "--why"]).stdout);
    // Each stage's last run is its own: only `repeat` changed for both.
    assert_eq!(
        status.matches("params.repeat: 1 -> 2").count(),
        2,
        "{status}"
    );
    assert!(!status.contains("params.text"), "{status}");
}

#[test]
fn a_list_of_combinations_expands_to_exactly_those() {
    let ws = Workspace::new();
    ws.write(
        "r.yaml",
        "stages:\n  w:\n    op: emit\n    \
         matrix: [{ text: a, repeat: 2 }, { repeat: 1, text: b }]\n    \
         with: { text: \"${matrix.text}\", repeat: \"${matrix.repeat}\" }\n  \
         c:\n    op: count\n    matrix: { text: [a, b] }\n    inputs: { source: w }\n    with: { steps: 1 }\n  \
         j:\n    op: concat\n    inputs: { parts: [w] }\n",
    );
    let out = ws.run(&["run", "r.yaml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut started = ws.started();
    started.sort();
    assert_eq!(
        started,
        [
            "c[text=a]",
            "c[text=b]",
            "j",
            "w[text=a,repeat=2]",
            "w[text=b,repeat=1]"
        ]
    );
    assert_eq!(ws.output_of("r.yaml", "j"), "aab");
}
