//! The recipe parser and validator never panic: not on arbitrary bytes, not
//! on arbitrary YAML trees built from recipe-like keys and values. Bounded
//! so that it runs in every `cargo test`; raise PROPTEST_CASES to search longer.

use distillery_engine::{OpRegistry, validate};
use proptest::prelude::*;
use std::path::Path;

fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    distillery_engine::testing::register(&mut r);
    r
}

fn check(source: &str) {
    let registry = registry();
    match validate(Path::new("fuzz.yaml"), source, &registry) {
        Ok(_) => {}
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            for d in diagnostics {
                // Every span lies inside the source and renders.
                assert!(d.primary.span.end <= source.len(), "{d:?}");
                let _ = d.primary.span.line_col(source);
                for l in &d.secondary {
                    assert!(l.span.end <= source.len(), "{d:?}");
                }
            }
        }
    }
}

/// Words that make the validator take its interesting paths.
const WORDS: &[&str] = &[
    "name",
    "seed",
    "device",
    "vars",
    "stages",
    "op",
    "inputs",
    "with",
    "emit",
    "concat",
    "count",
    "read_file",
    "mock_model",
    "mock_train",
    "mock_eval",
    "mock_dataset",
    "text",
    "repeat",
    "parts",
    "source",
    "model",
    "data",
    "models",
    "lr",
    "steps",
    "hidden",
    "a",
    "b",
    "c",
    "${vars.a}",
    "x${vars.b}y",
    "$${",
    "cpu",
    "cuda",
    "-1",
    "1e-3",
    "~",
    "[]",
    "{}",
    "é☃",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(WORDS).prop_map(String::from),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        "[a-z_${}.\\-]{0,8}",
    ]
}

#[derive(Debug, Clone)]
enum Tree {
    Scalar(String),
    List(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    scalar()
        .prop_map(Tree::Scalar)
        .prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Tree::List),
                proptest::collection::vec((scalar(), inner), 0..6).prop_map(Tree::Map),
            ]
        })
}

/// Flow-style YAML; scalars are quoted or plain at random by their content.
fn render(t: &Tree, out: &mut String) {
    match t {
        Tree::Scalar(s) => {
            if s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
                && !s.is_empty()
            {
                out.push_str(s)
            } else {
                out.push_str(&serde_json::to_string(s).unwrap())
            }
        }
        Tree::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(item, out);
            }
            out.push(']');
        }
        Tree::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(&Tree::Scalar(k.clone()), out);
                out.push_str(": ");
                render(v, out);
            }
            out.push('}');
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_yaml_trees_never_panic(t in tree()) {
        let mut source = String::new();
        render(&t, &mut source);
        check(&source);
    }

    #[test]
    fn recipe_shaped_trees_never_panic(stages in proptest::collection::vec((scalar(), tree()), 0..5), seed in scalar()) {
        let mut source = format!("seed: {seed}\nvars: {{ a: 1, b: [x] }}\nstages:\n");
        for (name, body) in &stages {
            let mut text = String::new();
            render(body, &mut text);
            source.push_str(&format!("  {}: {text}\n", serde_json::to_string(name).unwrap()));
        }
        check(&source);
    }
}

#[test]
fn block_style_mutations_never_panic() {
    let base = "name: demo\nseed: 3\nvars: { n: 2 }\nstages:\n  a:\n    op: emit\n    with: { text: hi, repeat: ${vars.n} }\n  b:\n    op: concat\n    inputs: { parts: [a] }\n";
    // Delete, duplicate or replace every single byte.
    let bytes = base.as_bytes();
    for i in 0..bytes.len() {
        let mut deleted = bytes.to_vec();
        deleted.remove(i);
        check(&String::from_utf8_lossy(&deleted));
        for replacement in [b' ', b':', b'-', b'{', b'[', b'&', b'*', b'\t', b'\n', b'"'] {
            let mut replaced = bytes.to_vec();
            replaced[i] = replacement;
            check(&String::from_utf8_lossy(&replaced));
        }
    }
}
