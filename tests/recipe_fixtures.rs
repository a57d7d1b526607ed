//! Every invalid recipe under tests/fixtures/invalid gives exit code 2 and
//! its diagnostic: the code, the message, and the line:column of the
//! primary label, both in `--json` and in the rendered report.

mod common;

use common::{distillery, repo_root, text};

/// (file, diagnostic code, line, column, text the message contains)
const CASES: &[(&str, &str, usize, usize, &str)] = &[
    (
        "yaml_syntax.yaml",
        "recipe::yaml-syntax",
        5,
        33,
        "invalid YAML",
    ),
    (
        "unknown_top_level_key.yaml",
        "recipe::unknown-key",
        2,
        1,
        "unknown top-level key `sed`",
    ),
    ("empty.yaml", "recipe::empty", 1, 1, "the recipe is empty"),
    (
        "empty_stages.yaml",
        "recipe::empty",
        2,
        1,
        "the recipe has no stages",
    ),
    (
        "missing_stages.yaml",
        "recipe::missing-stages",
        1,
        1,
        "has no `stages`",
    ),
    (
        "unknown_op.yaml",
        "recipe::unknown-op",
        3,
        9,
        "unknown op `emitt`",
    ),
    (
        "unknown_parameter.yaml",
        "recipe::unknown-parameter",
        6,
        7,
        "has no parameter `repaet`",
    ),
    (
        "wrong_type.yaml",
        "recipe::invalid-parameter",
        6,
        15,
        "invalid type: string \"many\"",
    ),
    (
        "out_of_range.yaml",
        "recipe::invalid-parameter",
        4,
        31,
        "`repeat` must be between 1 and 1000",
    ),
    (
        "negative_count.yaml",
        "recipe::invalid-parameter",
        4,
        20,
        "integer `-3`",
    ),
    (
        "missing_parameter.yaml",
        "recipe::missing-parameter",
        2,
        3,
        "missing parameter `text`",
    ),
    (
        "missing_parameter_in_with.yaml",
        "recipe::missing-parameter",
        5,
        7,
        "missing parameter `text`",
    ),
    (
        "unknown_input_stage.yaml",
        "recipe::unknown-stage",
        6,
        26,
        "reads from `bb`, which is not a stage",
    ),
    ("cycle.yaml", "recipe::cycle", 4, 23, "a -> b -> c -> a"),
    ("self_cycle.yaml", "recipe::cycle", 4, 23, "a -> a"),
    (
        "wrong_artifact_kind.yaml",
        "recipe::wrong-artifact-kind",
        6,
        22,
        "expects a Model, but stage `text` (emit) produces a Files",
    ),
    (
        "missing_input.yaml",
        "recipe::missing-input",
        3,
        3,
        "missing input `data`",
    ),
    (
        "unknown_slot.yaml",
        "recipe::unknown-slot",
        5,
        15,
        "has no input slot `source`",
    ),
    (
        "list_on_single_slot.yaml",
        "recipe::not-a-list-slot",
        8,
        22,
        "takes one stage, not a list",
    ),
    (
        "duplicate_stage.yaml",
        "recipe::duplicate-key",
        4,
        3,
        "duplicate key `a`",
    ),
    (
        "duplicate_parameter.yaml",
        "recipe::duplicate-key",
        6,
        7,
        "duplicate key `text`",
    ),
    (
        "undefined_var.yaml",
        "recipe::undefined-var",
        6,
        19,
        "undefined variable `txt`",
    ),
    (
        "unknown_placeholder.yaml",
        "recipe::invalid-placeholder",
        4,
        19,
        "unknown placeholder `${env.HOME}`",
    ),
    (
        "invalid_seed.yaml",
        "recipe::invalid-seed",
        1,
        7,
        "non-negative integer, found -1",
    ),
    (
        "invalid_device.yaml",
        "recipe::invalid-device",
        1,
        9,
        "found \"gpu\"",
    ),
    (
        "stage_not_a_mapping.yaml",
        "recipe::invalid-stage",
        2,
        6,
        "stage `a` must be a mapping",
    ),
    (
        "unknown_stage_key.yaml",
        "recipe::unknown-stage-key",
        4,
        5,
        "unknown key `params` in stage `a`",
    ),
    (
        "with_not_a_mapping.yaml",
        "recipe::invalid-with",
        4,
        11,
        "`with` must be a mapping",
    ),
    (
        "missing_op.yaml",
        "recipe::missing-op",
        2,
        3,
        "stage `a` has no `op`",
    ),
    (
        "invalid_stage_name.yaml",
        "recipe::invalid-stage-name",
        2,
        3,
        "invalid stage name `my stage`",
    ),
    (
        "missing_file.yaml",
        "recipe::missing-file",
        4,
        19,
        "`data/does-not-exist.txt`, which does not exist",
    ),
    (
        "upstream_check.yaml",
        "recipe::invalid-parameter",
        8,
        11,
        "stage `base` has hidden 13",
    ),
    (
        "root_is_a_list.yaml",
        "recipe::not-a-mapping",
        1,
        1,
        "found a list",
    ),
    (
        "two_documents.yaml",
        "recipe::multiple-documents",
        3,
        1,
        "a single YAML document",
    ),
    (
        "inputs_not_a_mapping.yaml",
        "recipe::invalid-inputs",
        5,
        13,
        "must map slots to stages",
    ),
    (
        "lr_out_of_range.yaml",
        "recipe::invalid-parameter",
        8,
        17,
        "`lr` must be in (0, 1), found 2",
    ),
];

/// The text without the report's line wrapping and gutter.
fn squeeze(s: &str) -> String {
    s.replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn fixture_dir() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/invalid")
}

#[test]
fn every_fixture_gives_exit_2_and_its_diagnostic() {
    let mut failures = Vec::new();
    for &(file, code, line, column, message) in CASES {
        let path = fixture_dir().join(file);
        let out = distillery()
            .args(["validate", "--json"])
            .arg(&path)
            .output()
            .unwrap();
        if out.status.code() != Some(2) {
            failures.push(format!("{file}: exit {:?}, expected 2", out.status.code()));
            continue;
        }
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let problems = reports[0]["problems"].as_array().unwrap();
        let found = problems.iter().any(|p| {
            p["code"] == code
                && p["line"] == line
                && p["column"] == column
                && p["message"].as_str().unwrap().contains(message)
        });
        if !found {
            failures.push(format!(
                "{file}: expected {code} at {line}:{column} containing {message:?}, got {}",
                serde_json::to_string(problems).unwrap()
            ));
        }
        // The human report names the same place.
        let human = distillery().arg("validate").arg(&path).output().unwrap();
        let stderr = text(&human.stderr);
        let place = format!("{file}:{line}:{column}");
        if human.status.code() != Some(2)
            || !stderr.contains(&place)
            || !squeeze(&stderr).contains(&squeeze(message))
        {
            failures.push(format!(
                "{file}: rendered report lacks {place} or the message:\n{stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_fixture_file_has_an_expectation() {
    let mut files: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let covered: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    for f in &files {
        assert!(
            covered.contains(&f.as_str()),
            "fixture {f} has no expectation in CASES"
        );
    }
    assert!(CASES.len() >= 25);
}

#[test]
fn all_problems_are_reported_at_once() {
    let ws = common::Workspace::new();
    let path = ws.write(
        "many.yaml",
        "sed: 1\nstages:\n  a: { op: emitt }\n  b: { op: emit, with: { txt: x } }\n  c: { op: concat, inputs: { parts: [zz] } }\n",
    );
    let out = distillery()
        .args(["validate", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = reports[0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "recipe::unknown-key",
            "recipe::unknown-op",
            "recipe::unknown-parameter",
            "recipe::unknown-stage"
        ]
    );
}

#[test]
fn validate_takes_many_files_and_fails_if_any_is_invalid() {
    let ws = common::Workspace::new();
    let good = ws.write(
        "good.yaml",
        "stages:\n  a: { op: emit, with: { text: hi } }\n",
    );
    let bad = fixture_dir().join("unknown_op.yaml");
    let out = distillery().arg("validate").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = distillery()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let missing = distillery()
        .args(["validate", "no-such-recipe.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read recipe no-such-recipe.yaml"));
}
