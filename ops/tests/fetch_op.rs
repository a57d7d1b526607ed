//! The `fetch` op through the engine, against an HTTP server on 127.0.0.1
//! started by the test (no internet): the checksum check, a mismatch and a
//! 404 that publish nothing, a rerun that is a cache hit without a request,
//! an archive extracted and loaded by `load_model`, and the plan-time
//! errors with their places in the recipe.

mod engine_support;
mod http_support;
mod model_support;

use distillery_engine::Store;
use distillery_engine::run::{RunReport, StageOutcome};
use distillery_ops::io::hf_folder::{HfAssets, HfWriteOptions, read_hf_folder, write_hf_folder};
use engine_support::registry;
use http_support::{Server, sha256};
use model_support::{Rng, config, random_weights};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------- engine

struct Workspace {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        Self { _tmp: tmp, dir }
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.join(".distillery")).unwrap()
    }

    /// Validates, plans and runs the recipe as `distillery run` does.
    fn run(&self, recipe: &str) -> RunReport {
        engine_support::run_recipe(&self.dir, recipe)
    }

    fn outcome(report: &RunReport, stage: &str) -> StageOutcome {
        report
            .stages
            .iter()
            .find(|s| s.name == stage)
            .unwrap_or_else(|| panic!("no stage {stage}"))
            .outcome
            .clone()
    }

    fn output(&self, report: &RunReport, stage: &str) -> PathBuf {
        let key = &report.stages.iter().find(|s| s.name == stage).unwrap().key;
        self.store().output_dir(key)
    }

    /// Nothing was published under any key, and no staging folder is left.
    fn assert_store_empty(&self) {
        let root = self.dir.join(".distillery");
        let entries = std::fs::read_dir(root.join("store")).unwrap().count();
        assert_eq!(entries, 0, "an entry was published");
        let staging = std::fs::read_dir(root.join("tmp")).unwrap().count();
        assert_eq!(staging, 0, "a staging folder was left");
    }
}

fn error_of(outcome: StageOutcome) -> String {
    match outcome {
        StageOutcome::Failed { error } => error,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn blake3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn fetch_recipe(url: &str, checks: &str) -> String {
    format!(
        "name: fetching\nstages:\n  teacher_file:\n    op: fetch\n    with:\n      url: {url}\n{checks}"
    )
}

// ---------------------------------------------------------------- url

const BODY: &[u8] = b"pretend these are model weights\n";

#[test]
fn a_url_is_downloaded_verified_and_a_rerun_is_a_cache_hit_without_a_request() {
    let server = Server::start(vec![("/models/teacher.gguf", BODY.to_vec())]);
    let ws = Workspace::new();
    let recipe = fetch_recipe(
        &server.url("/models/teacher.gguf"),
        &format!(
            "      sha256: {}\n      blake3: {}\n",
            sha256(BODY),
            blake3(BODY)
        ),
    );
    let first = ws.run(&recipe);
    assert!(
        matches!(
            Workspace::outcome(&first, "teacher_file"),
            StageOutcome::Ran { .. }
        ),
        "{first:?}"
    );
    let out = ws.output(&first, "teacher_file");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["teacher.gguf"]);
    assert_eq!(std::fs::read(out.join("teacher.gguf")).unwrap(), BODY);
    assert_eq!(server.requests(), 1);

    let second = ws.run(&recipe);
    assert_eq!(
        Workspace::outcome(&second, "teacher_file"),
        StageOutcome::Cached
    );
    assert_eq!(server.requests(), 1, "the rerun went to the network");
    assert_eq!(first.stages[0].key, second.stages[0].key);
}

#[test]
fn a_checksum_mismatch_fails_naming_both_digests_and_stores_nothing() {
    let server = Server::start(vec![("/teacher.gguf", BODY.to_vec())]);
    let ws = Workspace::new();
    let wrong = sha256(b"something else");
    let report = ws.run(&fetch_recipe(
        &server.url("/teacher.gguf"),
        &format!("      sha256: {wrong}\n"),
    ));
    let error = error_of(Workspace::outcome(&report, "teacher_file"));
    assert!(
        error.contains("checksum mismatch for `teacher.gguf`"),
        "{error}"
    );
    assert!(error.contains(&format!("expected {wrong}")), "{error}");
    assert!(
        error.contains(&format!("actual {}", sha256(BODY))),
        "{error}"
    );
    ws.assert_store_empty();
}

#[test]
fn a_404_fails_naming_the_status_and_the_url() {
    let server = Server::start(vec![]);
    let ws = Workspace::new();
    let url = server.url("/missing.gguf");
    let report = ws.run(&fetch_recipe(
        &url,
        &format!("      sha256: {}\n", sha256(BODY)),
    ));
    let error = error_of(Workspace::outcome(&report, "teacher_file"));
    assert!(error.contains("HTTP status 404"), "{error}");
    assert!(error.contains(&url), "{error}");
    ws.assert_store_empty();
}

#[test]
fn a_refused_connection_is_a_network_error() {
    // A port that was just free: nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = Workspace::new();
    let url = format!("http://127.0.0.1:{port}/teacher.gguf");
    let report = ws.run(&fetch_recipe(
        &url,
        &format!("      sha256: {}\n", sha256(BODY)),
    ));
    let error = error_of(Workspace::outcome(&report, "teacher_file"));
    assert!(error.contains(&format!("cannot download {url}")), "{error}");
    ws.assert_store_empty();
}

// ---------------------------------------------------------------- load_model

/// A tiny Hugging Face model folder, packed as `model/...` in a .tar.gz.
fn model_archive() -> (Vec<u8>, distillery_ops::model::LlamaConfig) {
    let c = config(json!({
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 3,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true
    }));
    let weights = random_weights(&c, &mut Rng::new(5));
    let assets = HfAssets {
        tokenizer: Some(model_support::tiny_tokenizer()),
        tokenizer_config: Some(json!({"bos_token": "hello", "eos_token": "world"})),
        other_json: BTreeMap::new(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("model");
    write_hf_folder(
        &folder,
        &c.to_json(),
        &weights,
        &assets,
        &HfWriteOptions::default(),
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut tar = tar::Builder::new(&mut gz);
        tar.append_dir_all("model", &folder).unwrap();
        tar.finish().unwrap();
    }
    (gz.finish().unwrap(), c)
}

#[test]
fn an_extracted_archive_feeds_load_model_through_the_files_input() {
    let (archive, c) = model_archive();
    let server = Server::start(vec![("/tiny-model.tar.gz", archive.clone())]);
    let ws = Workspace::new();
    let recipe = format!(
        "name: fetch-and-load\n\
         stages:\n\
         \x20 download:\n\
         \x20   op: fetch\n\
         \x20   with: {{ url: \"{}\", sha256: {}, extract: true }}\n\
         \x20 teacher:\n\
         \x20   op: load_model\n\
         \x20   inputs: {{ files: download }}\n\
         \x20   with: {{ source: hf }}\n",
        server.url("/tiny-model.tar.gz"),
        sha256(&archive)
    );
    let report = ws.run(&recipe);
    for stage in ["download", "teacher"] {
        assert!(
            matches!(Workspace::outcome(&report, stage), StageOutcome::Ran { .. }),
            "{report:?}"
        );
    }
    // The archive's contents are stored, not the archive.
    let fetched = ws.output(&report, "download");
    assert!(fetched.join("model/config.json").is_file());
    assert!(!fetched.join("tiny-model.tar.gz").exists());
    let loaded = read_hf_folder(&ws.output(&report, "teacher")).unwrap();
    assert_eq!(loaded.config["hidden_size"], c.hidden_size);
    assert_eq!(loaded.config["num_hidden_layers"], c.num_hidden_layers);
}

#[test]
fn load_model_takes_the_one_gguf_of_a_fetched_folder() {
    // Not a real GGUF: the error shows that `load_model` found and read the
    // fetched file.
    let body = b"GGUF? no".to_vec();
    let server = Server::start(vec![("/teacher.gguf", body.clone())]);
    let ws = Workspace::new();
    let recipe = format!(
        "name: fetch-gguf\n\
         stages:\n\
         \x20 download:\n\
         \x20   op: fetch\n\
         \x20   with: {{ url: \"{}\", blake3: {} }}\n\
         \x20 teacher:\n\
         \x20   op: load_model\n\
         \x20   inputs: {{ files: download }}\n\
         \x20   with: {{ source: gguf }}\n",
        server.url("/teacher.gguf"),
        blake3(&body)
    );
    let report = ws.run(&recipe);
    assert!(matches!(
        Workspace::outcome(&report, "download"),
        StageOutcome::Ran { .. }
    ));
    let error = error_of(Workspace::outcome(&report, "teacher"));
    assert!(error.contains("cannot load"), "{error}");
    assert!(error.contains("teacher.gguf"), "{error}");
}

// ---------------------------------------------------------------- plan time

/// The diagnostics of a recipe that must not validate: (message, line, column).
fn invalid(recipe: &str) -> Vec<(String, usize, usize)> {
    let errors = distillery_engine::validate(Path::new("recipe.yaml"), recipe, &registry())
        .err()
        .expect("the recipe is invalid");
    errors
        .into_iter()
        .map(|d| {
            let (line, col) = d.primary.span.line_col(recipe);
            (d.message, line, col)
        })
        .collect()
}

const HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[test]
fn a_missing_checksum_is_a_plan_time_error_at_the_stage() {
    let recipe = "\
stages:
  teacher_file:
    op: fetch
    with:
      url: https://example.org/teacher.gguf
";
    let found = invalid(recipe);
    assert_eq!(found.len(), 1, "{found:?}");
    let (message, line, _) = &found[0];
    assert!(message.contains("stage `teacher_file`"), "{message}");
    assert!(message.contains("checksum is required"), "{message}");
    assert_eq!(*line, 5, "points into `with`");
}

#[test]
fn two_sources_point_at_the_second() {
    let recipe = format!(
        "\
stages:
  teacher_file:
    op: fetch
    with:
      url: https://example.org/teacher.gguf
      hf: owner/repo
      sha256: {HEX}
"
    );
    let found = invalid(&recipe);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].0.contains("exactly one source"), "{found:?}");
    assert_eq!((found[0].1, found[0].2), (6, 11), "{found:?}");
}

#[test]
fn pip_without_file_points_at_pip() {
    let recipe = format!(
        "\
stages:
  teacher_file:
    op: fetch
    with:
      sha256: {HEX}
      pip: tinypkg==0.1.0
"
    );
    let found = invalid(&recipe);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].0.contains("`pip` needs `file`"), "{found:?}");
    assert_eq!((found[0].1, found[0].2), (6, 12), "{found:?}");
}

#[test]
fn load_model_with_files_refuses_a_path() {
    let recipe = format!(
        "\
stages:
  download:
    op: fetch
    with: {{ url: https://example.org/t.gguf, sha256: {HEX} }}
  teacher:
    op: load_model
    inputs: {{ files: download }}
    with: {{ source: gguf, path: t.gguf }}
"
    );
    let found = invalid(&recipe);
    assert!(
        found.iter().any(
            |(m, line, _)| m.contains("`path` is not used with the `files` input") && *line == 8
        ),
        "{found:?}"
    );
}
