//! Every op's results, pinned: a change in what an op computes fails here
//! until its `VERSION` is bumped and the pins are recorded again.
//!
//! The store reuses a stage's result for as long as its key is unchanged,
//! and an op's code is in the key only through its `VERSION`; an op whose
//! numbers change without a bump serves stale results from every existing
//! store. So one small recipe runs every registered op, in-process, on tiny
//! inputs made here (a byte-level BPE tokenizer, a few lines of text and
//! chat, a 4-layer teacher served over HTTP on 127.0.0.1 for `fetch`, a
//! 2-layer student in a folder); each
//! op's stored output is reduced to a fingerprint that is the same on every
//! machine (`fingerprint_support`) and compared with `op_pins.json`, which
//! records the op's version with it.
//!
//! Recording the pins again:
//! `DISTILLERY_UPDATE_PINS=1 cargo test -p distillery-ops --test op_pins`.
//! Measuring how far rounding moves the floats (see
//! [`fingerprint_support::FLOAT_TOLERANCE`]):
//! `DISTILLERY_PINS_NUDGE=1 cargo test -p distillery-ops --test op_pins -- --nocapture`.

mod engine_support;
mod fingerprint_support;
mod http_support;
mod model_support;

use distillery_engine::Store;
use fingerprint_support::{FLOAT_TOLERANCE, compare, fingerprint_dir};
use http_support::{Server, sha256};
use model_support::{Rng, config, random_weights};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const PINS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/op_pins.json");
const UPDATE_ENV: &str = "DISTILLERY_UPDATE_PINS";
const UPDATE_COMMAND: &str = "DISTILLERY_UPDATE_PINS=1 cargo test -p distillery-ops --test op_pins";
/// Moves every weight of both models by one unit in the last place before
/// the recipe runs: the floats then differ from the pins by about as much
/// as another order of summation would make them differ, and the test
/// prints the largest such difference.
const NUDGE_ENV: &str = "DISTILLERY_PINS_NUDGE";

/// Where the `export` stage writes, relative to the recipe: its model
/// folder is the op's result as much as the record in the store.
const EXPORT_PATH: &str = "exported";
const EXPORT_GGUF_DIR: &str = "exported-gguf";
/// The student's folder, which `load_model` reads from the recipe's folder.
const STUDENT_PATH: &str = "student";

/// One op's pin: the version it was recorded at and the fingerprint of what
/// its stages stored, by stage name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pin {
    version: u32,
    fingerprint: Value,
}

// ---------------------------------------------------------------- inputs

/// The recipe: every op once (`dataset` twice: plain text and chat with a
/// loss mask). Ops read the loaded models, which are exact on every
/// machine, rather than each other's results where they can: rounding
/// differences do not build up along a chain, and a changed op changes
/// no other op's outputs but through `fetch`, `load_model`, `dataset` (read
/// by all), `importance` (read by `prune`) and `random_init` (read by
/// `export`, which records digests of what it wrote: its input must be
/// exact, and random weights drawn from the seed are).
///
/// Training takes Adam's `eps` far above its default of 1e-8: with a tiny
/// `eps` every weight moves by about `lr` in the direction of its
/// gradient's sign, and a weight whose gradient is within rounding of zero
/// moves one way on one machine and the other way on another (measured
/// with one-ulp nudged weights, `DISTILLERY_PINS_NUDGE=1`: 6e-5 relative on
/// one tensor's sums with the default `eps`, 1e-7 with `eps: 1e-3`).
fn recipe(url: &str, sha256: &str) -> String {
    let train = "{ steps: 2, batch_rows: 4, micro_batch: 2, lr: 1e-2, eps: 1e-3, warmup_steps: 1, \
                 eval_every: 2, eval_rows: 4 }";
    format!(
        r#"name: op-pins
seed: 7
device: cpu
stages:
  download:
    op: fetch
    with: {{ url: "{url}", sha256: {sha256}, extract: true }}
  teacher:
    op: load_model
    inputs: {{ files: download }}
    with: {{ source: hf }}
  student:
    op: load_model
    with: {{ source: hf, path: {STUDENT_PATH} }}
  corpus:
    op: dataset
    inputs: {{ tokenizer: teacher }}
    with: {{ files: [corpus.jsonl], seq_len: 16, heldout_percent: 25 }}
  chat:
    op: dataset
    inputs: {{ tokenizer: teacher }}
    with: {{ files: [chat.jsonl], seq_len: 16, heldout_percent: 25 }}
  corrected:
    op: teacher_correction
    inputs: {{ model: teacher, data: corpus }}
    with: {{ train: {train} }}
  scores:
    op: importance
    inputs: {{ model: teacher, data: corpus }}
    with:
      samples: 8
      batch: 4
      depth_metrics: [block_importance, perplexity]
      block_sizes: [2]
      perplexity_samples: 4
  pruned:
    op: prune
    inputs: {{ model: teacher, scores: scores }}
    with: {{ hidden: 24, ffn: 48, heads: 2, layers: 3 }}
  distilled:
    op: distill
    inputs: {{ teacher: teacher, student: student, data: corpus }}
    with: {{ train: {train} }}
  top_logits:
    op: teacher_logits
    inputs: {{ teacher: teacher, data: corpus }}
    with: {{ top_k: 16, batch: 2 }}
  distilled_sparse:
    op: distill
    inputs: {{ teacher_logits: top_logits, student: student, data: corpus }}
    with: {{ train: {train} }}
  aligned:
    op: align
    inputs: {{ model: student, data: chat }}
    with: {{ train: {train} }}
  chosen:
    op: select
    inputs: {{ models: [distilled, aligned] }}
  runner_up:
    op: select
    inputs: {{ models: [distilled, aligned], continue_from: [teacher, student] }}
    with: {{ rank: 2 }}
  scratch:
    op: random_init
    inputs: {{ model: student }}
  report:
    op: evaluate
    inputs: {{ models: [teacher, student], data: corpus }}
    with:
      rows: 4
      tasks: [{{ path: choices.jsonl }}]
      texts: [{{ path: story.txt, seq_len: 16, windows: 2 }}]
  exported:
    op: export
    inputs: {{ model: scratch }}
    with: {{ path: {EXPORT_PATH}, dtype: bf16 }}
  exported_gguf:
    op: export
    inputs: {{ model: scratch }}
    with: {{ path: {EXPORT_GGUF_DIR}/student.gguf, format: gguf, dtype: f16 }}
"#
    )
}

const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges on top of the 256 byte tokens, enough to give words of the texts
/// below tokens of their own.
const MERGES: [(&str, &str); 12] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "a"),
    ("Ġ", "s"),
    ("a", "t"),
    ("o", "n"),
    ("Ġs", "at"),
    ("Ġ", "c"),
    ("Ġc", "at"),
    ("Ġ", "d"),
    ("Ġd", "o"),
];

/// A byte-level BPE tokenizer (the kind the dataset op's fast path takes):
/// the special tokens, the 256 bytes, then [`MERGES`].
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for token in SPECIAL_TOKENS {
        vocab.insert(token.into(), vocab.len().into());
    }
    let chars = model_support::byte_level_chars();
    for c in chars {
        vocab.insert(c.to_string(), vocab.len().into());
    }
    for (a, b) in MERGES {
        vocab.insert(format!("{a}{b}"), vocab.len().into());
    }
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                          "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false,
                    "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab,
                  "merges": MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    })
}

/// The teacher's folder, as a tar archive: 4 layers, grouped-query
/// attention, a vocabulary a little larger than the tokenizer's.
///
/// The weights' seed is one whose importance scores have no near ties
/// (adjacent scores of an axis differ by 3e-4 relative and more): the
/// rankings and the kept units are pinned exactly, so a tie within
/// rounding would make them differ between machines.
fn teacher_archive(dir: &Path) -> Vec<u8> {
    let folder = dir.join("teacher-source");
    let sizes = json!({
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2
    });
    write_model(&folder, sizes, 12);
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all("teacher", &folder).unwrap();
    tar.into_inner().unwrap()
}

/// The student's folder: 2 layers, narrower, the teacher's tokenizer.
fn write_student(dir: &Path) {
    let sizes = json!({
        "hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2
    });
    write_model(&dir.join(STUDENT_PATH), sizes, 5);
}

/// A model folder of these sizes with random weights from `seed` and the
/// tokenizer of [`tokenizer_json`].
fn write_model(folder: &Path, sizes: Value, seed: u64) {
    use distillery_ops::io::hf_folder::{HfAssets, HfWriteOptions, write_hf_folder};
    let mut fields = json!({
        "head_dim": 8, "vocab_size": 280, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "max_position_embeddings": 64,
        "bos_token_id": 1, "eos_token_id": 2
    });
    fields
        .as_object_mut()
        .unwrap()
        .extend(sizes.as_object().unwrap().clone());
    let c = config(fields);
    let mut config_json = c.to_json();
    config_json["architectures"] = json!(["LlamaForCausalLM"]);
    config_json["model_type"] = json!("llama");
    let assets = HfAssets {
        tokenizer: Some(
            tokenizer_json()
                .to_string()
                .parse()
                .expect("tokenizer json"),
        ),
        tokenizer_config: Some(json!({
            "name_or_path": "op-pins-tiny",
            "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
            "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        })),
        other_json: BTreeMap::new(),
    };
    let mut weights = random_weights(&c, &mut Rng::new(seed));
    if std::env::var(NUDGE_ENV).is_ok_and(|v| v == "1") {
        nudge(&mut weights);
    }
    write_hf_folder(
        folder,
        &config_json,
        &weights,
        &assets,
        &HfWriteOptions::default(),
    )
    .unwrap();
}

/// Moves each weight one unit in the last place up or down (see
/// [`NUDGE_ENV`]).
fn nudge(weights: &mut distillery_ops::io::StateDict) {
    let mut rng = Rng::new(99);
    for tensor in weights.values_mut() {
        for v in tensor.data.iter_mut().filter(|v| **v != 0.0) {
            let bits = v.to_bits();
            *v = f32::from_bits(if rng.below(2) == 0 {
                bits + 1
            } else {
                bits - 1
            });
        }
    }
}

/// Short sentences from a few words, drawn by a fixed seed.
fn sentences(rng: &mut Rng, count: usize) -> String {
    const WORDS: [&str; 14] = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "the", "house", "red",
        "blue",
    ];
    (0..count)
        .map(|_| {
            let n = 3 + rng.below(5);
            let words: Vec<&str> = (0..n).map(|_| WORDS[rng.below(WORDS.len())]).collect();
            words.join(" ") + "."
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The text, chat, benchmark and story files the recipe reads.
fn write_inputs(dir: &Path) {
    let mut rng = Rng::new(3);
    let jsonl = |lines: Vec<Value>| {
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>()
    };
    let corpus = (0..24)
        .map(|i| json!({"doc_id": format!("doc-{i}"), "text": sentences(&mut rng, 4)}))
        .collect();
    std::fs::write(dir.join("corpus.jsonl"), jsonl(corpus)).unwrap();
    let chat = (0..16)
        .map(|i| {
            json!({"doc_id": format!("chat-{i}"), "messages": [
                {"role": "user", "content": sentences(&mut rng, 1)},
                {"role": "assistant", "content": sentences(&mut rng, 2)},
            ]})
        })
        .collect();
    std::fs::write(dir.join("chat.jsonl"), jsonl(chat)).unwrap();
    let choices = (0..4)
        .map(|i| {
            json!({"context": sentences(&mut rng, 1),
                   "choices": [" the cat sat.", " a dog ran.", " red and blue."],
                   "gold": i % 3})
        })
        .collect();
    std::fs::write(dir.join("choices.jsonl"), jsonl(choices)).unwrap();
    std::fs::write(dir.join("story.txt"), sentences(&mut rng, 12)).unwrap();
}

// ---------------------------------------------------------------- fingerprints

/// What the recipe gave: each op's pin as it would be recorded now, and
/// the other ops whose stages feed its stages.
struct RecipeRun {
    pins: BTreeMap<String, Pin>,
    upstream: BTreeMap<String, BTreeSet<String>>,
}

/// Runs the recipe and fingerprints each stage's output, by op and stage.
fn run_recipe() -> RecipeRun {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_inputs(dir);
    write_student(dir);
    let archive = teacher_archive(dir);
    let server = Server::start(vec![("/teacher.tar", archive.clone())]);
    let report =
        engine_support::run_recipe(dir, &recipe(&server.url("/teacher.tar"), &sha256(&archive)));
    assert!(report.succeeded(), "the pin recipe failed: {report:#?}");

    let store = Store::open(&dir.join(".distillery")).unwrap();
    let manifests: BTreeMap<&str, _> = report
        .stages
        .iter()
        .map(|s| {
            (
                s.key.as_str(),
                store.manifest(&s.key).expect("a published stage"),
            )
        })
        .collect();
    let mut run = RecipeRun {
        pins: BTreeMap::new(),
        upstream: BTreeMap::new(),
    };
    for stage in &report.stages {
        let material = &manifests[stage.key.as_str()].material;
        let op = &material.op;
        let mut print = fingerprint_dir(&store.output_dir(&stage.key), dir);
        if stage.name == "exported" {
            let exported = fingerprint_dir(&dir.join(EXPORT_PATH), dir);
            for (file, file_print) in exported.as_object().unwrap() {
                print[format!("{EXPORT_PATH}/{file}")] = file_print.clone();
            }
        }
        if stage.name == "exported_gguf" {
            let exported = fingerprint_dir(&dir.join(EXPORT_GGUF_DIR), dir);
            for (file, file_print) in exported.as_object().unwrap() {
                print[format!("{EXPORT_GGUF_DIR}/{file}")] = file_print.clone();
            }
        }
        let pin = run.pins.entry(op.clone()).or_insert_with(|| Pin {
            version: material.op_version,
            fingerprint: json!({}),
        });
        pin.fingerprint[stage.name.as_str()] = print;
        let feeding = material.inputs.values().flatten();
        run.upstream
            .entry(op.clone())
            .or_default()
            .extend(feeding.map(|key| manifests[key.as_str()].material.op.clone()));
    }
    run
}

fn read_pins() -> BTreeMap<String, Pin> {
    match std::fs::read_to_string(PINS_FILE) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{PINS_FILE} is malformed ({e}); record it again with `{UPDATE_COMMAND}`")
        }),
        Err(_) => BTreeMap::new(),
    }
}

/// The file that defines `op` (`const NAME: &'static str = "op"`), for the
/// messages, found by its text so that it survives moves.
fn op_source_file(op: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let needle = format!("const NAME: &'static str = \"{op}\";");
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&needle)) {
                let rel = path.strip_prefix(root.parent().unwrap()).unwrap();
                return rel.display().to_string();
            }
        }
    }
    format!("the file that defines op `{op}`")
}

// ---------------------------------------------------------------- the test

/// The largest relative difference of a float from its pin that was taken
/// for rounding (in the ops that match their pins), and where.
#[derive(Default)]
struct Largest {
    deviation: f64,
    at: String,
}

/// Why `op`'s outputs do not match its pin, if they do not.
fn mismatch(
    op: &str,
    current: &Pin,
    pinned: Option<&Pin>,
    largest: &mut Largest,
) -> Option<String> {
    let Some(pin) = pinned else {
        return Some(format!(
            "op `{op}` has no pin in ops/tests/op_pins.json: record one with `{UPDATE_COMMAND}`"
        ));
    };
    if pin.version != current.version {
        return Some(format!(
            "op `{op}` is at version {} but its pin was recorded at version {}: \
             record its new outputs with `{UPDATE_COMMAND}`",
            current.version, pin.version
        ));
    }
    let comparison = compare(&pin.fingerprint, &current.fingerprint);
    if comparison.differences.is_empty() {
        if comparison.largest_deviation > largest.deviation {
            largest.deviation = comparison.largest_deviation;
            largest.at = format!("{op}: {}", comparison.largest_deviation_at);
        }
        return None;
    }
    const SHOWN: usize = 12;
    let mut message = format!(
        "op `{op}` (version {}) produces different outputs than its pin: bump `VERSION` in {} \
         and run `{UPDATE_COMMAND}` to record the new fingerprint. What changed:",
        current.version,
        op_source_file(op)
    );
    for difference in comparison.differences.iter().take(SHOWN) {
        message.push_str(&format!("\n    {difference}"));
    }
    if comparison.differences.len() > SHOWN {
        let more = comparison.differences.len() - SHOWN;
        message.push_str(&format!("\n    ... and {more} more"));
    }
    Some(message)
}

/// Object keys sorted at every level, so that the pin file's layout does
/// not depend on the order things were recorded in.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[test]
fn every_op_matches_its_pinned_outputs_or_bumps_its_version() {
    let registered: Vec<&str> = engine_support::registry().names();
    let run = run_recipe();
    let pinned = read_pins();

    let mut failures: BTreeMap<&str, String> = BTreeMap::new();
    let mut recorded = BTreeMap::new();
    let mut largest = Largest::default();
    for op in &registered {
        let Some(current) = run.pins.get(*op) else {
            failures.insert(
                op,
                format!(
                    "op `{op}` is registered but the pin recipe has no stage that runs it: \
                 add one to `recipe` in ops/tests/op_pins.rs, then run `{UPDATE_COMMAND}`"
                ),
            );
            continue;
        };
        match mismatch(op, current, pinned.get(*op), &mut largest) {
            Some(failure) => {
                failures.insert(op, failure);
                recorded.insert(op.to_string(), current.clone());
            }
            // A pin within tolerance stays as it was, so that recording on
            // another machine rewrites only what changed.
            None => {
                recorded.insert(op.to_string(), pinned[*op].clone());
            }
        }
    }
    // An op whose inputs changed has other outputs too: say so, lest its
    // VERSION be bumped for nothing.
    let changed: BTreeSet<&str> = failures.keys().copied().collect();
    for (op, failure) in failures.iter_mut() {
        let feeding: Vec<String> = run.upstream[*op]
            .iter()
            .filter(|up| up.as_str() != *op && changed.contains(up.as_str()))
            .map(|up| format!("`{up}`"))
            .collect();
        if !feeding.is_empty() {
            failure.push_str(&format!(
                "\n  It reads the outputs of {}, which changed too: if this op's own code did \
                 not change, bump only the VERSION of what did and record the pins again.",
                feeding.join(", ")
            ));
        }
    }
    let mut failures: Vec<String> = failures.into_values().collect();
    for op in pinned
        .keys()
        .filter(|op| !registered.contains(&op.as_str()))
    {
        failures.push(format!(
            "ops/tests/op_pins.json pins `{op}`, which is not a registered op: \
             remove it with `{UPDATE_COMMAND}`"
        ));
    }
    println!(
        "largest relative difference of a float from its pin (tolerance {FLOAT_TOLERANCE:e}): \
         {:.1e} at {}",
        largest.deviation,
        if largest.at.is_empty() {
            "-"
        } else {
            &largest.at
        }
    );

    if std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1") {
        let pins = serde_json::to_value(&recorded).unwrap();
        let text = serde_json::to_string_pretty(&sorted(&pins)).unwrap() + "\n";
        std::fs::write(PINS_FILE, text).unwrap();
        for failure in &failures {
            println!("recorded again: {failure}");
        }
        return;
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n\n"));
}
