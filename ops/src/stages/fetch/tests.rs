//! Parameter checks and stored names; downloads are tested end to end in
//! `ops/tests/fetch_op.rs` against a local server.

use super::*;
use serde_json::json;

const HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn params(value: serde_json::Value) -> FetchParams {
    serde_json::from_value(value).unwrap()
}

fn issues(value: serde_json::Value) -> Vec<(Vec<String>, String)> {
    check::params(&params(value))
        .into_iter()
        .map(|i| (i.path, i.message))
        .collect()
}

fn paths(value: serde_json::Value) -> Vec<Vec<String>> {
    issues(value).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn well_formed_sources_pass() {
    for ok in [
        json!({"url": "https://example.org/m.gguf", "sha256": HEX}),
        json!({"url": "http://127.0.0.1:1/get?id=3", "file": "m.gguf", "blake3": HEX}),
        json!({"url": "https://example.org/m.tar.zst", "sha256": HEX, "extract": true}),
        json!({"pip": "tinypkg==0.1.0", "file": "tinypkg/data/w.bin", "sha256": HEX}),
        json!({"hf": "owner/repo", "revision": "v1", "file": "config.json", "sha256": HEX}),
        json!({"hf": "owner/repo", "revision": "0123abc", "file": ["config.json", "sub/model.safetensors"],
               "sha256": {"config.json": HEX}, "blake3": {"sub/model.safetensors": HEX}}),
    ] {
        assert_eq!(issues(ok.clone()), [], "{ok}");
    }
}

#[test]
fn a_checksum_is_required() {
    let found = issues(json!({"url": "https://example.org/m.gguf"}));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Vec::<String>::new());
    assert!(found[0].1.contains("checksum is required"), "{found:?}");
}

#[test]
fn exactly_one_source() {
    assert_eq!(paths(json!({"sha256": HEX})), [Vec::<String>::new()]);
    let found = issues(json!({
        "url": "https://example.org/m.gguf", "pip": "a==1", "file": "a/b", "sha256": HEX
    }));
    assert!(
        found
            .iter()
            .any(|(p, m)| p == &["pip"] && m.contains("exactly one source")),
        "{found:?}"
    );
}

#[test]
fn pip_needs_a_pinned_spec_and_a_file() {
    assert_eq!(paths(json!({"pip": "a==1", "sha256": HEX})), [vec!["pip"]]);
    assert_eq!(
        paths(json!({"pip": "a>=1", "file": "a/b", "sha256": HEX})),
        [vec!["pip"]]
    );
    assert_eq!(
        paths(json!({"pip": "--index-url==x", "file": "a/b", "sha256": HEX})),
        [vec!["pip"]]
    );
    assert_eq!(
        paths(json!({"pip": "a==1", "file": ["a/b", "a/c"], "sha256": HEX})),
        [vec!["file"]]
    );
    assert_eq!(
        paths(json!({"pip": "a==1", "file": "a/../../b", "sha256": HEX})),
        [vec!["file"]]
    );
}

#[test]
fn hf_needs_a_revision_files_and_per_file_checksums() {
    assert_eq!(
        paths(json!({"hf": "owner/repo", "file": "c.json", "sha256": HEX})),
        [vec!["hf"]]
    );
    assert_eq!(
        paths(json!({"hf": "owner/repo", "revision": "v1", "sha256": HEX})),
        [vec!["hf"]]
    );
    assert_eq!(
        paths(json!({"hf": "just-a-name", "revision": "v1", "file": "c.json", "sha256": HEX})),
        [vec!["hf"]]
    );
    // One checksum for two files is ambiguous.
    assert_eq!(
        paths(json!({"hf": "o/r", "revision": "v1", "file": ["a", "b"], "sha256": HEX})),
        [vec!["sha256"]]
    );
    // A file without any checksum.
    let found =
        issues(json!({"hf": "o/r", "revision": "v1", "file": ["a", "b"], "sha256": {"a": HEX}}));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].1.contains("`b` has no checksum"), "{found:?}");
    // A key that is not a fetched file points at the key.
    assert_eq!(
        paths(json!({"hf": "o/r", "revision": "v1", "file": "a", "sha256": {"a": HEX, "z": HEX}})),
        [vec!["sha256", "z"]]
    );
    assert_eq!(
        paths(json!({"hf": "o/r", "revision": "v1", "file": ["a", "a"], "sha256": HEX})),
        [vec!["file", "1"]]
    );
}

#[test]
fn checksums_are_64_hex_digits() {
    assert_eq!(
        paths(json!({"url": "https://e.org/m.gguf", "sha256": "abc"})),
        [vec!["sha256"]]
    );
    assert_eq!(
        paths(json!({"url": "https://e.org/m.gguf", "blake3": {"m.gguf": "zz"}})),
        [vec!["blake3", "m.gguf"]]
    );
}

#[test]
fn url_rules() {
    assert_eq!(
        paths(json!({"url": "ftp://e.org/m.gguf", "sha256": HEX})),
        [vec!["url"]]
    );
    assert_eq!(
        paths(json!({"url": "https://e.org/", "sha256": HEX})),
        [vec!["url"]]
    );
    assert_eq!(
        paths(json!({"url": "https://e.org/m.gguf", "file": "../m", "sha256": HEX})),
        [vec!["file"]]
    );
    assert_eq!(
        paths(json!({"url": "https://e.org/m.gguf", "sha256": HEX, "extract": true})),
        [vec!["extract"]]
    );
    assert_eq!(
        paths(json!({"pip": "a==1", "file": "a/m.zip", "sha256": HEX, "extract": true})),
        [vec!["extract"]]
    );
    assert_eq!(
        paths(json!({"url": "https://e.org/m.gguf", "revision": "v1", "sha256": HEX})),
        [vec!["revision"]]
    );
}

#[test]
fn stored_names_come_from_the_url_or_the_file() {
    let names = |v| -> Vec<String> {
        targets(&params(v))
            .unwrap()
            .into_iter()
            .map(|t| t.stored)
            .collect()
    };
    assert_eq!(
        names(json!({"url": "https://e.org/a/My%20Model.gguf?x=1#y", "sha256": HEX})),
        ["My Model.gguf"]
    );
    assert_eq!(
        names(json!({"url": "https://e.org/get", "file": "m.gguf", "sha256": HEX})),
        ["m.gguf"]
    );
    assert_eq!(
        names(json!({"pip": "a==1", "file": "a/data/w.bin", "sha256": HEX})),
        ["w.bin"]
    );
    assert_eq!(url_file_name("https://e.org/%2e%2e"), None);
    assert_eq!(url_file_name("https://e.org/a%2Fb"), None);
    assert_eq!(url_file_name("https://e.org"), None);
}

#[test]
fn the_expected_checksums_follow_the_files() {
    let t = targets(&params(json!({
        "hf": "o/r", "revision": "v1", "file": ["a", "b"],
        "sha256": {"a": HEX.to_uppercase()}, "blake3": {"b": HEX}
    })))
    .unwrap();
    assert_eq!(t[0].expected.sha256.as_deref(), Some(HEX));
    assert_eq!(t[0].expected.blake3, None);
    assert_eq!(t[1].expected.blake3.as_deref(), Some(HEX));
}
