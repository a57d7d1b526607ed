//! The checked-in schema and the README's recipe reference match what the
//! code generates, and every recipe in recipes/ carries the schema modeline
//! and validates.

mod common;

use common::{repo_root, text};
use std::process::Command;

/// The command without the engine's test ops: what users get.
fn public_distillery() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distillery"));
    cmd.env_remove("DISTILLERY_TEST_OPS").env("NO_COLOR", "1");
    cmd
}

#[test]
fn checked_in_schema_is_current() {
    let out = public_distillery().arg("schema").output().unwrap();
    assert!(out.status.success());
    let generated = text(&out.stdout);
    let checked_in =
        std::fs::read_to_string(repo_root().join("schemas/recipe.schema.json")).unwrap();
    assert!(
        generated == checked_in,
        "schemas/recipe.schema.json is stale: run `cargo run -- schema -o schemas/recipe.schema.json`"
    );
}

#[test]
fn readme_recipe_reference_is_current() {
    let out = public_distillery()
        .args(["schema", "--format", "markdown"])
        .output()
        .unwrap();
    let generated = text(&out.stdout);
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = "<!-- recipe-reference:start -->\n";
    let end = "<!-- recipe-reference:end -->";
    let from = readme
        .find(start)
        .expect("README has the reference start marker")
        + start.len();
    let to = readme
        .find(end)
        .expect("README has the reference end marker");
    assert!(
        readme[from..to] == generated,
        "the README's recipe reference is stale: replace the text between the markers with \
         `cargo run -- schema --format markdown`"
    );
}

#[test]
fn every_recipe_has_the_modeline_and_validates() {
    let mut recipes: Vec<_> = std::fs::read_dir(repo_root().join("recipes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    recipes.sort();
    assert!(!recipes.is_empty(), "recipes/ has no recipe");
    for recipe in &recipes {
        let first = std::fs::read_to_string(recipe).unwrap();
        assert_eq!(
            first.lines().next(),
            Some("# yaml-language-server: $schema=../schemas/recipe.schema.json"),
            "{} lacks the schema modeline",
            recipe.display()
        );
    }
    let out = public_distillery()
        .arg("validate")
        .args(&recipes)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn schema_is_valid_json_with_one_branch_per_public_op() {
    let out = public_distillery().arg("schema").output().unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let branches = schema["$defs"]["stage"]["oneOf"].as_array().unwrap();
    for op in ["load_model", "dataset"] {
        assert!(
            branches
                .iter()
                .any(|b| b["$ref"] == format!("#/$defs/stage.{op}")),
            "no schema branch for `{op}`"
        );
    }
    for test_op in ["emit", "count", "mock_train"] {
        assert!(
            schema["$defs"].get(format!("stage.{test_op}")).is_none(),
            "test op `{test_op}` leaked into the schema"
        );
    }
}

/// The README's main command must work on a fresh clone: the quickstart
/// reads nothing outside the repository (its teacher comes from a `fetch`
/// stage) and plans without the network, since a fetch stage's key is its
/// parameters and its checksum.
#[test]
fn quickstart_plans_from_the_repository_alone() {
    let recipe = repo_root().join("recipes/quickstart.yaml");
    let source = std::fs::read_to_string(&recipe).unwrap();
    assert!(
        !source.contains("shared/assets"),
        "the quickstart must not read ../shared/assets"
    );
    let store = tempfile::tempdir().unwrap();
    let out = public_distillery()
        .arg("plan")
        .arg(&recipe)
        .arg("--store")
        .arg(store.path())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ops: Vec<&str> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["op"].as_str().unwrap())
        .collect();
    for op in [
        "fetch",
        "load_model",
        "dataset",
        "importance",
        "prune",
        "distill",
        "evaluate",
    ] {
        assert!(ops.contains(&op), "no `{op}` stage in {ops:?}");
    }
}
