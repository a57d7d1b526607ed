//! The `dataset` op and its reader: exact token ids against the tokenizer
//! on small handmade JSONL, text, zstd and chat inputs; the packing into rows
//! (boundaries, separators, dropped tail); the split by document; errors;
//! plan-time checks; malformed artifacts; the loss mask of chat data; and the
//! whole distillation corpus.

mod assets_support;
use assets_support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use testkit::require_asset;

use distillery_engine::progress::{NoProgress, Progress};
use distillery_engine::{CheckContext, Device, OpRegistry, RunContext};
use distillery_ops::io::chat::ChatTemplate;
use distillery_ops::io::dataset::{DatasetArtifact, DatasetIndex, DocumentRecord, Split, split_of};
use distillery_ops::text::{DataFormat, DatasetParams, DocumentEncoder, LossOn};
use rayon::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

// ---------------------------------------------------------------- assets

/// The reference tokenizer folder (SmolLM2-135M-Instruct's tokenizer files).
fn tokenizer_dir() -> Option<PathBuf> {
    require_asset("reference/tokenizer.json")?;
    require_asset("reference/tokenizer_config.json")?;
    require_asset("reference")
}

/// The reference tokenizer; [`tokenizer_dir`] checks that it is there.
fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(testkit::assets_dir().join("reference/tokenizer.json")).unwrap()
}

fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

/// `<|im_end|>`, the reference tokenizer's eos token.
const EOS: u32 = 2;

// ---------------------------------------------------------------- harness

/// Records what the op reports.
#[derive(Default)]
struct Recorder {
    total: AtomicU64,
    position: AtomicU64,
    lines: Mutex<Vec<String>>,
}

impl Progress for Recorder {
    fn set_total(&self, total: u64, _unit: &str) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn set_position(&self, position: u64) {
        self.position.store(position, Ordering::Relaxed);
    }
    fn set_message(&self, _: &str) {}
    fn log(&self, line: &str) {
        self.lines.lock().unwrap().push(line.to_string());
    }
}

/// A recipe folder with input files, and an output folder.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn recipe_dir(&self) -> PathBuf {
        self.dir.path().join("recipe")
    }

    fn file(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.recipe_dir().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        PathBuf::from(rel)
    }

    /// Runs the op through the registry, as the engine does, into a fresh
    /// output folder `name`.
    fn run_named(
        &self,
        name: &str,
        tokenizer: &Path,
        params: DatasetParams,
        seed: u64,
        progress: &dyn Progress,
    ) -> anyhow::Result<PathBuf> {
        let out = self.dir.path().join(name);
        let scratch = self.dir.path().join(format!("{name}.scratch"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        let ctx = RunContext {
            stage: "corpus",
            inputs: BTreeMap::from([("tokenizer".to_string(), vec![tokenizer.to_path_buf()])]),
            input_stages: BTreeMap::from([("tokenizer".to_string(), vec!["teacher".to_string()])]),
            absent: BTreeMap::new(),
            output_dir: out.clone(),
            scratch_dir: scratch,
            recipe_dir: self.recipe_dir(),
            seed,
            device: Device::Cpu,
            progress,
        };
        let params = serde_json::to_value(&params)?;
        registry()
            .get("dataset")
            .expect("dataset is registered")
            .run(&params, &ctx)?;
        Ok(out)
    }

    fn run(&self, tokenizer: &Path, params: DatasetParams) -> anyhow::Result<DatasetArtifact> {
        let out = self.run_named("out", tokenizer, params, 0, &NoProgress)?;
        DatasetArtifact::open(out)
    }
}

fn params(files: &[PathBuf], seq_len: u32, heldout_percent: f64) -> DatasetParams {
    let mut p = DatasetParams::new(files.to_vec());
    p.seq_len = seq_len;
    p.heldout_percent = heldout_percent;
    p
}

fn jsonl(records: &[Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// Each document's ids followed by the separator, concatenated.
fn stream(tok: &Tokenizer, texts: &[&str], separator: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for text in texts {
        out.extend(encode(tok, text));
        out.extend_from_slice(separator);
    }
    out
}

/// Asserts that a split holds `stream` cut into rows, tail dropped.
fn assert_packed(data: &DatasetArtifact, split: Split, stream: &[u32]) {
    let n = data.seq_len();
    let rows = stream.len() / n;
    assert_eq!(data.rows(split), rows, "{split}: rows");
    for i in 0..rows {
        assert_eq!(
            data.row(split, i),
            &stream[i * n..(i + 1) * n],
            "{split}: row {i}"
        );
    }
    assert_eq!(data.tokens(split), &stream[..rows * n]);
    let stats = data.index().split(split);
    assert_eq!(stats.rows, rows as u64);
    assert_eq!(stats.tokens, (rows * n) as u64);
    assert_eq!(
        stats.dropped_tail_tokens,
        (stream.len() % n) as u64,
        "{split}: tail"
    );
    assert!(data.get_row(split, rows).is_none());
}

const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog. In the beginning,",
    "Numbers 12345 and 3.14 are split digit by digit.",
    "  spaces\n\nand\ttabs, and a line\nbreak  ",
    "Ünïcödé, emoji 🦀 and 中文 too.",
];

// ---------------------------------------------------------------- exact ids

#[test]
fn jsonl_documents_give_the_tokenizers_ids_with_eos_after_each() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    let records: Vec<Value> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"doc_id": format!("d{i}"), "text": t, "extra": [1, 2]}))
        .collect();
    let f = ws.file("data/small.jsonl", jsonl(&records));
    let data = ws.run(&tdir, params(&[f], 7, 0.0)).unwrap();

    let expected = stream(&tok, &TEXTS, &[EOS]);
    assert_packed(&data, Split::Train, &expected);
    assert_eq!(data.rows(Split::Heldout), 0);
    assert!(data.tokens(Split::Heldout).is_empty());

    let index = data.index();
    assert_eq!(index.seq_len, 7);
    assert_eq!(data.seq_len(), 7);
    assert_eq!(index.vocab_size, 49152);
    assert_eq!(index.tokenizer.name, "reference");
    assert_eq!(index.tokenizer.vocab_size, 49152);
    assert_eq!(index.tokenizer.digest.len(), 64);
    assert_eq!(index.separator.text, "<|im_end|>");
    assert_eq!(index.separator.ids, vec![EOS]);
    assert_eq!(index.documents, 4);
    assert_eq!(index.train.documents, 4);
    assert_eq!(index.heldout.documents, 0);
    let text_bytes: usize = TEXTS.iter().map(|t| t.len()).sum();
    assert_eq!(index.text_bytes, text_bytes as u64);
    assert_eq!(index.train.text_bytes, text_bytes as u64);
    assert_eq!(index.train.text_tokens, (expected.len() - 4) as u64);
    assert_eq!(index.train.separator_tokens, 4);
    assert_eq!(index.files.len(), 1);
    assert_eq!(index.files[0].path, "data/small.jsonl");
    assert_eq!(index.files[0].format, "jsonl");
    assert_eq!(index.files[0].documents, 4);
    data.check_token_ids().unwrap();
    // Text documents: every token is a target, no mask is written.
    assert!(!data.has_loss_mask());
    assert!(data.loss_mask(Split::Train).is_none());
    assert!(data.loss_mask_row(Split::Train, 0).is_none());
    assert!(index.loss_mask.is_none());
    assert_eq!(index.train.mask_file, None);
    assert_eq!(index.train.target_tokens, None);
    assert!(!data.dir().join("train.mask.bin").exists());
    let written = std::fs::read_to_string(data.dir().join("index.json")).unwrap();
    assert!(!written.contains("mask"), "{written}");

    let docs = data.documents().unwrap();
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d0", "d1", "d2", "d3"]);
    for (doc, text) in docs.iter().zip(TEXTS) {
        assert_eq!(doc.tokens, encode(&tok, text).len() as u64);
        assert_eq!(doc.split, Split::Train);
    }
}

#[test]
fn plain_text_documents_are_separated_by_blank_lines() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    // Line 1-2: first document; 3-4 blank (one with spaces); 5: second;
    // 6 blank; 7-8: third, CRLF endings and no final newline.
    let text = "First line of one.\n  second line, same document\n\n   \nAnother document.\n\nThird\r\ndocument";
    let f = ws.file("notes.txt", text);
    let data = ws.run(&tdir, params(&[f], 5, 0.0)).unwrap();

    let docs = [
        "First line of one.\n  second line, same document",
        "Another document.",
        "Third\ndocument",
    ];
    assert_packed(&data, Split::Train, &stream(&tok, &docs, &[EOS]));
    let ids: Vec<String> = data
        .documents()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["notes.txt:1", "notes.txt:5", "notes.txt:7"]);
    assert_eq!(data.index().files[0].format, "text");
}

#[test]
fn zstd_inputs_read_like_plain_ones_and_files_concatenate_in_order() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    let records: Vec<Value> = TEXTS[..2]
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"doc_id": i, "text": t}))
        .collect();
    let body = jsonl(&records);
    let a = ws.file("a.jsonl.zst", zstd::encode_all(body.as_bytes(), 3).unwrap());
    let b = ws.file(
        "b.txt.zst",
        zstd::encode_all(
            format!("A text document\nwith two lines.\n\n{}\n", TEXTS[3]).as_bytes(),
            19,
        )
        .unwrap(),
    );
    let data = ws.run(&tdir, params(&[a, b], 3, 0.0)).unwrap();
    let texts = [
        TEXTS[0],
        TEXTS[1],
        "A text document\nwith two lines.",
        TEXTS[3],
    ];
    assert_packed(&data, Split::Train, &stream(&tok, &texts, &[EOS]));
    let ids: Vec<String> = data
        .documents()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["0", "1", "b.txt.zst:1", "b.txt.zst:4"]);
    let files = &data.index().files;
    assert_eq!((files[0].format.as_str(), files[0].documents), ("jsonl", 2));
    assert_eq!((files[1].format.as_str(), files[1].documents), ("text", 2));

    // The same records uncompressed give the same rows.
    let ws2 = Workspace::new();
    let plain = ws2.file("a.jsonl", body);
    let data2 = ws2.run(&tdir, params(&[plain], 3, 0.0)).unwrap();
    assert_eq!(
        data2.tokens(Split::Train),
        &data.tokens(Split::Train)[..data2.tokens(Split::Train).len()]
    );
}

#[test]
fn explicit_format_overrides_the_extension() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    let f = ws.file("corpus.data", "{\"text\": \"not json here\"}\n\nsecond");
    let mut p = params(std::slice::from_ref(&f), 2, 0.0);
    p.format = DataFormat::Text;
    let data = ws.run(&tdir, p).unwrap();
    let docs = ["{\"text\": \"not json here\"}", "second"];
    assert_packed(&data, Split::Train, &stream(&tok, &docs, &[EOS]));

    let ws = Workspace::new();
    let f = ws.file("corpus.data", "{\"text\": \"json after all\"}\n");
    let mut p = params(&[f], 2, 0.0);
    p.format = DataFormat::Jsonl;
    let data = ws.run(&tdir, p).unwrap();
    assert_packed(
        &data,
        Split::Train,
        &stream(&tok, &["json after all"], &[EOS]),
    );
}

#[test]
fn chat_conversations_are_rendered_with_the_chat_template() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    let records = [
        json!({"id": "c1", "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! How can I help?"}
        ]}),
        json!({"id": "c2", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}
        ]}),
        json!({"doc_id": "plain", "text": "A plain document between chats."}),
    ];
    let f = ws.file("chat.jsonl", jsonl(&records));
    let mut p = params(&[f], 16, 0.0);
    p.id_field = "id".into();
    let data = ws.run(&tdir, p).unwrap();

    let system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    let c1 = format!(
        "{system}<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    );
    let c2 = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n";
    let expected = stream(&tok, &[&c1, c2, "A plain document between chats."], &[EOS]);
    // The special tokens are single ids.
    assert_eq!(&expected[..1], &[1]);
    assert_packed(&data, Split::Train, &expected);
    // The loss mask: the replies with their <|im_end|>, nothing else of the
    // conversations, not the separator after them; all of the plain text.
    assert!(data.has_loss_mask());
    let mut mask = Vec::new();
    for (text, reply) in [
        (
            c1.strip_suffix("Hello! How can I help?<|im_end|>\n")
                .unwrap(),
            0,
        ),
        ("Hello! How can I help?<|im_end|>", 1),
        ("\n", 0),
        ("<|im_end|>", 0),
        (c2.strip_suffix("4<|im_end|>\n").unwrap(), 0),
        ("4<|im_end|>", 1),
        ("\n", 0),
        ("<|im_end|>", 0),
        ("A plain document between chats.<|im_end|>", 1),
    ] {
        mask.extend(std::iter::repeat_n(reply, encode(&tok, text).len()));
    }
    assert_eq!(mask.len(), expected.len());
    let n = data.rows(Split::Train) * 16;
    assert_eq!(data.loss_mask(Split::Train).unwrap(), &mask[..n]);
    let ids: Vec<String> = data
        .documents()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    // The third record has no `id`: file and line.
    assert_eq!(ids, ["c1", "c2", "chat.jsonl:3"]);
}

#[test]
fn chat_template_matches_the_transformers_reference() {
    let Some(tdir) = tokenizer_dir() else { return };
    let config = tdir.join("tokenizer_config.json");
    let Some(reference) = require_asset("reference/reference.json") else {
        return;
    };
    let config: Value = serde_json::from_slice(&std::fs::read(config).unwrap()).unwrap();
    let reference: Value = serde_json::from_slice(&std::fs::read(reference).unwrap()).unwrap();
    let chat = &reference["reference"]["chat"];
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    let messages = json!([{"role": "user", "content": "Explain photosynthesis in one sentence."}]);
    let text = template.render(&messages, true).unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    let ids: Vec<u64> = encode(&tokenizer(), &text)
        .into_iter()
        .map(u64::from)
        .collect();
    let expected: Vec<u64> = chat["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, expected);
}

#[test]
fn chat_templates_get_python_string_methods_and_raise_exception() {
    let template = ChatTemplate::new(
        "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}\n{{ m['role'].upper() }}: {{ m['content'].strip() }}{{ eos_token }}\n{% endfor %}".into(),
        serde_json::Map::from_iter([("eos_token".to_string(), json!("</s>"))]),
    )
    .unwrap();
    let ok = template
        .render(&json!([{"role": "user", "content": "  hi  "}]), false)
        .unwrap();
    // trim_blocks / lstrip_blocks as in transformers.
    assert_eq!(ok, "USER: hi</s>\n");
    let err = template
        .render(&json!([{"role": "tool", "content": "x"}]), false)
        .unwrap_err();
    assert!(format!("{err:#}").contains("bad role tool"), "{err:#}");
}

// ---------------------------------------------------------------- packing

#[test]
fn packing_cuts_rows_across_documents_and_drops_the_tail() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let texts = [
        "one two three",
        "four",
        "five six seven eight nine ten",
        "eleven twelve",
    ];
    for seq_len in [2u32, 3, 5, 8, 64] {
        for (separator, sep_ids) in [
            (None, vec![EOS]),
            (Some("<|endoftext|>"), vec![0]),
            (Some(""), vec![]),
            (Some("\n\n"), encode(&tok, "\n\n")),
        ] {
            let ws = Workspace::new();
            let records: Vec<Value> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"doc_id": i, "text": t}))
                .collect();
            let f = ws.file("p.jsonl", jsonl(&records));
            let mut p = params(&[f], seq_len, 0.0);
            p.separator = separator.map(str::to_string);
            let data = ws.run(&tdir, p).unwrap();
            let expected = stream(&tok, &texts, &sep_ids);
            assert_packed(&data, Split::Train, &expected);
            let stats = &data.index().train;
            assert_eq!(stats.separator_tokens, (4 * sep_ids.len()) as u64);
            assert_eq!(
                stats.tokens + stats.dropped_tail_tokens,
                stats.text_tokens + stats.separator_tokens
            );
            assert_eq!(data.index().separator.ids, sep_ids);
            // The files hold exactly the rows, little-endian.
            let bytes = std::fs::read(data.dir().join("train.bin")).unwrap();
            assert_eq!(bytes.len(), stats.rows as usize * seq_len as usize * 4);
            let words: Vec<u32> = bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(words, data.tokens(Split::Train));
        }
    }
    // Too short for one row: no rows, everything dropped.
    let ws = Workspace::new();
    let f = ws.file("short.jsonl", jsonl(&[json!({"text": "hi"})]));
    let data = ws.run(&tdir, params(&[f], 2048, 0.0)).unwrap();
    assert_eq!(data.rows(Split::Train), 0);
    assert_eq!(data.index().train.dropped_tail_tokens, 2);
    assert!(data.iter_rows(Split::Train).next().is_none());
}

#[test]
fn iter_rows_walks_the_rows_in_order() {
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let f = ws.file("r.txt", TEXTS.join("\n\n"));
    let data = ws.run(&tdir, params(&[f], 4, 0.0)).unwrap();
    let rows: Vec<&[u32]> = data.iter_rows(Split::Train).collect();
    assert_eq!(rows.len(), data.rows(Split::Train));
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(*row, data.row(Split::Train, i));
    }
}

// ---------------------------------------------------------------- split

/// 300 documents from three sources; some share a doc_id across sources.
fn split_corpus(ws: &Workspace) -> (PathBuf, Vec<(String, String)>) {
    let mut records = Vec::new();
    let mut docs = Vec::new();
    for i in 0..300 {
        let source = ["alpha", "beta", "gamma"][i % 3];
        let doc_id = format!("doc{}", i / 2);
        let text = format!(
            "Document {i} from {source}: {}",
            "lorem ipsum ".repeat(i % 7 + 1)
        );
        docs.push((format!("{source}/{doc_id}"), text.clone()));
        records.push(json!({"source": source, "doc_id": doc_id, "text": text}));
    }
    (ws.file("split.jsonl", jsonl(&records)), docs)
}

#[test]
fn split_is_by_document_hash_and_independent_of_the_seed() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    let (f, docs) = split_corpus(&ws);
    let p = params(&[f], 8, 20.0);
    let a = ws.run_named("a", &tdir, p.clone(), 1, &NoProgress).unwrap();
    let b = ws
        .run_named("b", &tdir, p.clone(), 999, &NoProgress)
        .unwrap();
    for name in ["train.bin", "heldout.bin", "index.json", "documents.jsonl"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name} differs between runs with different seeds"
        );
    }
    let data = DatasetArtifact::open(&a).unwrap();
    let records = data.documents().unwrap();
    assert_eq!(records.len(), docs.len());

    let mut sides: BTreeMap<Split, Vec<&str>> = BTreeMap::new();
    for ((key, text), record) in docs.iter().zip(&records) {
        assert_eq!(&record.id, key);
        assert_eq!(record.split, split_of(key, 20.0), "{key}");
        sides.entry(record.split).or_default().push(text);
    }
    let heldout = sides[&Split::Heldout].len();
    assert!(
        (30..=90).contains(&heldout),
        "{heldout} of 300 held out at 20%"
    );
    assert_eq!(data.index().heldout.documents, heldout as u64);
    assert_eq!(data.index().train.documents, (300 - heldout) as u64);
    // Each split holds exactly its own documents, in input order.
    for split in Split::ALL {
        assert_packed(&data, split, &stream(&tok, &sides[&split], &[EOS]));
    }
    // The same document id under two sources is two documents.
    let train: BTreeSet<&str> = ids_of(&records, Split::Train);
    let held: BTreeSet<&str> = ids_of(&records, Split::Heldout);
    assert!(train.is_disjoint(&held));
}

fn ids_of(records: &[DocumentRecord], split: Split) -> BTreeSet<&str> {
    records
        .iter()
        .filter(|r| r.split == split)
        .map(|r| r.id.as_str())
        .collect()
}

#[test]
fn split_key_without_source_is_the_id_and_thresholds_are_monotone() {
    // Without `source` the id alone is hashed.
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let records: Vec<Value> = (0..50)
        .map(|i| json!({"doc_id": format!("x{i}"), "text": "t"}))
        .collect();
    let f = ws.file("nosrc.jsonl", jsonl(&records));
    let data = ws.run(&tdir, params(&[f], 2, 50.0)).unwrap();
    for (i, r) in data.documents().unwrap().iter().enumerate() {
        assert_eq!(r.id, format!("x{i}"));
        assert_eq!(r.split, split_of(&r.id, 50.0));
    }
    // A document held out at p% stays held out at any larger percentage.
    for i in 0..2000 {
        let key = format!("k{i}");
        assert_eq!(split_of(&key, 0.0), Split::Train);
        if split_of(&key, 5.0) == Split::Heldout {
            assert_eq!(split_of(&key, 10.0), Split::Heldout);
        }
    }
    let held = (0..20000)
        .filter(|i| split_of(&format!("k{i}"), 5.0) == Split::Heldout)
        .count();
    assert!((800..1200).contains(&held), "{held} of 20000 at 5%");
}

#[test]
fn max_documents_stops_reading() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let ws = Workspace::new();
    let records: Vec<Value> = TEXTS.iter().map(|t| json!({"text": t})).collect();
    let a = ws.file("a.jsonl", jsonl(&records[..2]));
    // The malformed line after the limit is never read.
    let b = ws.file("b.jsonl", format!("{}{{broken\n", jsonl(&records[2..3])));
    let mut p = params(&[a, b], 4, 0.0);
    p.max_documents = Some(3);
    let data = ws.run(&tdir, p).unwrap();
    assert_eq!(data.index().documents, 3);
    assert_packed(&data, Split::Train, &stream(&tok, &TEXTS[..3], &[EOS]));
    let ids: Vec<String> = data
        .documents()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["a.jsonl:1", "a.jsonl:2", "b.jsonl:1"]);
}

// ---------------------------------------------------------------- errors

fn run_err(ws: &Workspace, tdir: &Path, p: DatasetParams) -> String {
    let err = ws.run(tdir, p).expect_err("the op should fail");
    format!("{err:#}")
}

#[test]
fn malformed_jsonl_line_names_the_file_and_line() {
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let f = ws.file(
        "data/bad.jsonl",
        "{\"text\": \"fine\"}\n\n{\"text\": \"also fine\"}\n{\"text\": \"cut off\n{\"text\": \"never read\"}\n",
    );
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(msg.contains("data/bad.jsonl:4"), "{msg}");
    assert!(msg.contains("invalid JSON"), "{msg}");

    let ws = Workspace::new();
    let f = ws.file("arr.jsonl", "[1, 2]\n");
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(
        msg.contains("arr.jsonl:1") && msg.contains("expected a JSON object"),
        "{msg}"
    );

    // Malformed inside a compressed file, past the first chunk.
    let ws = Workspace::new();
    let mut body = jsonl(
        &(0..2000)
            .map(|i| json!({"text": format!("doc {i}")}))
            .collect::<Vec<_>>(),
    );
    body.push_str("{oops}\n");
    let f = ws.file(
        "big.jsonl.zst",
        zstd::encode_all(body.as_bytes(), 3).unwrap(),
    );
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(msg.contains("big.jsonl.zst:2001"), "{msg}");
}

#[test]
fn missing_or_mistyped_text_field_is_an_error() {
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let f = ws.file("m.jsonl", "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n");
    let msg = run_err(&ws, &tdir, params(std::slice::from_ref(&f), 4, 0.0));
    assert!(
        msg.contains("m.jsonl:2") && msg.contains("no `text` field"),
        "{msg}"
    );

    // A custom text field.
    let mut p = params(&[f], 4, 0.0);
    p.text_field = "body".into();
    let msg = run_err(&ws, &tdir, p);
    assert!(
        msg.contains("m.jsonl:1") && msg.contains("no `body` field"),
        "{msg}"
    );

    let ws = Workspace::new();
    let f = ws.file("n.jsonl", "{\"text\": 42}\n");
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(
        msg.contains("n.jsonl:1") && msg.contains("must be a string"),
        "{msg}"
    );

    let ws = Workspace::new();
    let f = ws.file("i.jsonl", "{\"text\": \"x\", \"doc_id\": [1]}\n");
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(
        msg.contains("i.jsonl:1") && msg.contains("`doc_id`"),
        "{msg}"
    );
}

#[test]
fn other_run_time_errors_are_clear() {
    let Some(tdir) = tokenizer_dir() else { return };
    // Invalid UTF-8 in a text file.
    let ws = Workspace::new();
    let f = ws.file("u.txt", b"fine\n\xff\xfe broken\n".as_slice());
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(msg.contains("u.txt:2") && msg.contains("UTF-8"), "{msg}");

    // No documents at all.
    let ws = Workspace::new();
    let f = ws.file("empty.txt", "\n\n  \n");
    let msg = run_err(&ws, &tdir, params(&[f], 4, 0.0));
    assert!(msg.contains("no documents"), "{msg}");

    // A tokenizer folder without tokenizer.json.
    let ws = Workspace::new();
    let f = ws.file("t.txt", "text");
    let empty = ws.dir.path().join("no-tokenizer");
    std::fs::create_dir_all(&empty).unwrap();
    let msg = run_err(&ws, &empty, params(std::slice::from_ref(&f), 4, 0.0));
    assert!(msg.contains("tokenizer.json"), "{msg}");

    // Chat records with a tokenizer that has no chat template.
    let ws = Workspace::new();
    let tk = ws.dir.path().join("plain-tokenizer");
    std::fs::create_dir_all(&tk).unwrap();
    std::fs::copy(tdir.join("tokenizer.json"), tk.join("tokenizer.json")).unwrap();
    std::fs::write(
        tk.join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    let f = ws.file(
        "c.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    );
    let msg = run_err(&ws, &tk, params(&[f], 4, 0.0));
    assert!(
        msg.contains("c.jsonl:1") && msg.contains("chat_template"),
        "{msg}"
    );
    // ... whose eos token is used as the separator.
    let f = ws.file("d.jsonl", "{\"text\": \"hi\"}\n");
    let out = ws
        .run_named("d", &tk, params(&[f], 2, 0.0), 0, &NoProgress)
        .unwrap();
    let data = DatasetArtifact::open(out).unwrap();
    assert_eq!(data.index().separator.ids, vec![0]);

    // Without any eos token the separator must be given.
    std::fs::write(tk.join("tokenizer_config.json"), "{}").unwrap();
    let f = ws.file("e.jsonl", "{\"text\": \"hi\"}\n");
    let msg = run_err(&ws, &tk, params(std::slice::from_ref(&f), 4, 0.0));
    assert!(msg.contains("separator"), "{msg}");
}

// ---------------------------------------------------------------- plan time

fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    distillery_ops::register(&mut r);
    r
}

fn issues(with: Value) -> Vec<(Vec<String>, String)> {
    let registry = registry();
    let op = registry.get("dataset").expect("dataset is registered");
    let inputs = BTreeMap::new();
    let ctx = CheckContext {
        inputs: &inputs,
        recipe_dir: Path::new("."),
    };
    op.check(&with, &ctx)
        .into_iter()
        .map(|i| (i.path, i.message))
        .collect()
}

#[test]
fn plan_time_checks_and_defaults() {
    let registry = registry();
    let op = registry.get("dataset").unwrap();
    assert_eq!(op.output(), distillery_engine::ArtifactKind::Dataset);
    let slots = op.slots();
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].name, "tokenizer");
    assert_eq!(slots[0].kind, distillery_engine::ArtifactKind::Model);

    let normalized = op
        .normalize(json!({"files": ["data/train.jsonl"]}))
        .unwrap();
    assert_eq!(
        normalized,
        json!({
            "files": ["data/train.jsonl"],
            "seq_len": 2048,
            "heldout_percent": 5.0,
            "text_field": "text",
            "id_field": "doc_id",
            "format": "auto",
            "max_documents": null,
            "separator": null,
            "loss_on": null
        })
    );
    assert_eq!(
        op.external_files(&normalized),
        vec![PathBuf::from("data/train.jsonl")]
    );
    assert!(issues(normalized.clone()).is_empty());

    let unknown = op
        .normalize(json!({"files": ["a.jsonl"], "seqlen": 5}))
        .unwrap_err();
    assert!(unknown.message.contains("seqlen"), "{}", unknown.message);
    assert!(
        op.normalize(json!({"seq_len": 5})).is_err(),
        "files is required"
    );

    let found = issues(json!({
        "files": ["ok.jsonl", "what.bin", "ok.txt.zst"],
        "seq_len": 1,
        "heldout_percent": 50.5,
        "max_documents": 0
    }));
    let paths: Vec<Vec<String>> = found.iter().map(|(p, _)| p.clone()).collect();
    assert!(paths.contains(&vec!["seq_len".to_string()]), "{found:?}");
    assert!(
        paths.contains(&vec!["heldout_percent".to_string()]),
        "{found:?}"
    );
    assert!(
        paths.contains(&vec!["files".to_string(), "1".to_string()]),
        "{found:?}"
    );
    assert!(
        paths.contains(&vec!["max_documents".to_string()]),
        "{found:?}"
    );
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.iter().any(|(_, m)| m.contains("what.bin")));

    let found = issues(json!({"files": [], "heldout_percent": -1}));
    let paths: Vec<Vec<String>> = found.iter().map(|(p, _)| p.clone()).collect();
    assert!(paths.contains(&vec!["files".to_string()]), "{found:?}");
    assert!(
        paths.contains(&vec!["heldout_percent".to_string()]),
        "{found:?}"
    );

    // An explicit format accepts any extension; 0 and 50 are the bounds.
    assert!(
        issues(
            json!({"files": ["what.bin"], "format": "text", "seq_len": 2, "heldout_percent": 50})
        )
        .is_empty()
    );
    assert!(issues(json!({"files": ["a.jsonl"], "heldout_percent": 0})).is_empty());

    // The schema documents the parameters.
    let mut generator = schemars::SchemaGenerator::default();
    let schema = serde_json::to_string(&op.params_schema(&mut generator)).unwrap()
        + &serde_json::to_string(&generator.definitions()).unwrap();
    for word in [
        "seq_len",
        "heldout_percent",
        "blank line",
        "eos",
        "zstd",
        "\"minimum\":2,",
        "\"maximum\":50.0",
    ] {
        assert!(schema.contains(word), "schema lacks {word:?}: {schema}");
    }
}

// ---------------------------------------------------------------- reader

#[test]
fn reader_rejects_malformed_artifacts() {
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let f = ws.file("r.txt", TEXTS.join("\n\n"));
    let out = ws
        .run_named("r", &tdir, params(&[f], 4, 0.0), 0, &NoProgress)
        .unwrap();
    let ok = DatasetArtifact::open(&out).unwrap();
    let rows = ok.rows(Split::Train);
    assert!(rows >= 3);
    drop(ok);

    let copy = |name: &str| {
        let dir = ws.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["train.bin", "heldout.bin", "index.json", "documents.jsonl"] {
            std::fs::copy(out.join(f), dir.join(f)).unwrap();
        }
        dir
    };

    let err = |dir: &Path| format!("{:#}", DatasetArtifact::open(dir).unwrap_err());

    let dir = copy("no-index");
    std::fs::remove_file(dir.join("index.json")).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("no index.json"), "{msg}");

    let dir = copy("ragged");
    let bytes = std::fs::read(dir.join("train.bin")).unwrap();
    std::fs::write(dir.join("train.bin"), &bytes[..bytes.len() - 4]).unwrap();
    let msg = err(&dir);
    assert!(
        msg.contains("train.bin") && msg.contains("not a whole number of rows"),
        "{msg}"
    );

    let dir = copy("short");
    std::fs::write(dir.join("train.bin"), &bytes[..bytes.len() - 16]).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("index.json says"), "{msg}");

    let dir = copy("missing-rows");
    std::fs::remove_file(dir.join("heldout.bin")).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("heldout.bin"), "{msg}");

    let dir = copy("garbage-index");
    std::fs::write(dir.join("index.json"), "{\"seq_len\": 4}").unwrap();
    let msg = err(&dir);
    assert!(msg.contains("not a valid dataset index"), "{msg}");

    let dir = copy("big-token");
    let mut bad = bytes.clone();
    bad[..4].copy_from_slice(&60000u32.to_le_bytes());
    std::fs::write(dir.join("train.bin"), bad).unwrap();
    let data = DatasetArtifact::open(&dir).unwrap();
    let msg = format!("{:#}", data.check_token_ids().unwrap_err());
    assert!(msg.contains("60000"), "{msg}");

    let result = std::panic::catch_unwind(|| {
        let data = DatasetArtifact::open(&out).unwrap();
        data.row(Split::Train, rows).len()
    });
    assert!(result.is_err(), "an out-of-range row panics");
}

// ---------------------------------------------------------------- fast path

/// Strings where pre-tokenization details matter.
const TRICKY: [&str; 24] = [
    "",
    " ",
    "   ",
    "\n",
    "a\n\nb",
    "word \n next",
    "  leading and trailing  ",
    "tabs\t\tand\r\nCRLF\r\n",
    "don't I'LL we've they'RE it's 'S 'd",
    "1234567890 12.5% 3,000,000 0x1F",
    "٣٤٥ ½ ² ³ ⅷ 〇 五 digits in other scripts",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "half a token <|im_ and <|endoftext|> inside<|endoftext|>text",
    "emoji 👩‍👩‍👧 flags 🇫🇷 skin 👍🏽",
    "combining e\u{301} and nbsp\u{a0}here and zero\u{200b}width",
    "control \u{0} \u{1} \u{7f} chars",
    "中文文本，没有空格。日本語のテキスト。한국어 텍스트.",
    "ΑΒΓ Ελληνικά кириллица עברית العربية",
    "snake_case_identifier = some.func(arg1, arg2) # comment",
    "<repo_name>code<file_sep>more",
    "!!!???...---___===+++",
    "$ ls -la /usr/lib | grep -v '^d' > out.txt 2>&1",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "                                                                                                                                                                                                                                                                    x",
];

fn reference_tokenizer_json() -> Value {
    serde_json::from_slice(
        &std::fs::read(testkit::assets_dir().join("reference/tokenizer.json")).unwrap(),
    )
    .unwrap()
}

/// Asserts that the encoder's ids are `encode`'s on every text, twice (the
/// second time from the word cache), from the rayon pool.
fn assert_same_ids(encoder: &DocumentEncoder, tok: &Tokenizer, texts: &[String], what: &str) {
    texts.par_iter().enumerate().for_each(|(i, text)| {
        let expected = encode(tok, text);
        for round in 0..2 {
            let ids = encoder.encode(text).unwrap();
            assert_eq!(
                ids,
                expected,
                "{what} #{i} (round {round}): {:?}",
                &text[..text.len().min(200)]
            );
        }
    });
}

#[test]
fn fast_path_gives_the_tokenizers_ids_on_real_text() {
    let Some(_) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let json = reference_tokenizer_json();
    let encoder = DocumentEncoder::new(&tok, &json, rayon::current_num_threads());
    assert!(encoder.is_fast(), "SmolLM2's tokenizer takes the fast path");

    let tricky: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    assert_same_ids(&encoder, &tok, &tricky, "tricky");

    let Some(docs) = heldout_documents() else {
        return;
    };
    assert_same_ids(&encoder, &tok, &docs, "heldout_ppl");

    for rel in [
        "corpus/heldout_mobydick.txt.zst",
        "corpus/heldout_wiki_boolq.txt.zst",
    ] {
        let Some(text) = read_zst(rel) else { return };
        // Paragraphs, and the whole book as one document.
        let mut docs: Vec<String> = text.split("\n\n").map(str::to_string).collect();
        docs.push(text);
        assert_same_ids(&encoder, &tok, &docs, rel);
    }

    // Chat conversations, special tokens included.
    let Some(chats) = read_zst("instruct/sharegpt_en_heldout.jsonl.zst") else {
        return;
    };
    let config: Value = serde_json::from_slice(
        &std::fs::read(testkit::assets_dir().join("reference/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    let rendered: Vec<String> = chats
        .lines()
        .map(|l| {
            let record: Value = serde_json::from_str(l).unwrap();
            template.render(&record["messages"], false).unwrap()
        })
        .collect();
    assert!(rendered.iter().all(|r| r.starts_with("<|im_start|>")));
    assert_same_ids(&encoder, &tok, &rendered, "sharegpt");
}

/// The reference tokenizer with its pre-tokenizer (or normalizer) replaced.
fn variant(edit: impl FnOnce(&mut Value)) -> (Tokenizer, Value) {
    let mut json = reference_tokenizer_json();
    edit(&mut json);
    let tok: Tokenizer = serde_json::to_string(&json).unwrap().parse().unwrap();
    (tok, json)
}

fn sample_texts() -> Vec<String> {
    let mut texts: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    if let Some(ppl) = read_zst("corpus/heldout_ppl.jsonl.zst") {
        texts.extend(ppl.lines().step_by(10).map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    texts
}

#[test]
fn fast_path_covers_other_byte_level_pre_tokenizers() {
    let Some(_) = tokenizer_dir() else { return };
    let texts = sample_texts();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let cases = [
        // GPT-2: ByteLevel alone.
        ("gpt2", byte_level.clone()),
        // Digits in runs.
        (
            "digit runs",
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": false}, byte_level
            ]}),
        ),
        // Llama 3 / Qwen 2: a Split regex, then ByteLevel without its regex.
        (
            "llama3",
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
                 "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]}),
        ),
    ];
    for (what, pre) in cases {
        let (tok, json) = variant(|j| j["pre_tokenizer"] = pre);
        let encoder = DocumentEncoder::new(&tok, &json, rayon::current_num_threads());
        assert!(encoder.is_fast(), "{what}");
        assert_same_ids(&encoder, &tok, &texts, what);
    }

    // Pipelines the fast path does not reproduce go through `encode`.
    let slow = [
        variant(|j| j["normalizer"] = json!({"type": "NFC"})),
        variant(|j| j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = json!(true)),
        variant(|j| j["pre_tokenizer"] = json!({"type": "Whitespace"})),
        variant(|j| j["model"]["dropout"] = json!(0.5)),
    ];
    for (i, (tok, json)) in slow.iter().enumerate() {
        let encoder = DocumentEncoder::new(tok, json, 2);
        assert!(!encoder.is_fast(), "variant {i}");
        if i < 3 {
            assert_same_ids(&encoder, tok, &texts[..TRICKY.len()], "slow variant");
        }
    }
}

#[test]
fn the_op_falls_back_to_encode_for_other_tokenizers() {
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let tk = ws.dir.path().join("nfc-tokenizer");
    std::fs::create_dir_all(&tk).unwrap();
    let (tok, json) = variant(|j| j["normalizer"] = json!({"type": "NFKC"}));
    std::fs::write(
        tk.join("tokenizer.json"),
        serde_json::to_string(&json).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        tdir.join("tokenizer_config.json"),
        tk.join("tokenizer_config.json"),
    )
    .unwrap();
    let f = ws.file("n.txt", "ﬁne ligatures ① and ｆｕｌｌｗｉｄｔｈ\n\nsecond");
    let progress = Recorder::default();
    let out = ws
        .run_named("n", &tk, params(&[f], 3, 0.0), 0, &progress)
        .unwrap();
    let data = DatasetArtifact::open(out).unwrap();
    let expected = stream(
        &tok,
        &["ﬁne ligatures ① and ｆｕｌｌｗｉｄｔｈ", "second"],
        &[EOS],
    );
    assert_packed(&data, Split::Train, &expected);
    let lines = progress.lines.lock().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("`tokenizers`' encode")),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------- the corpus

#[test]
fn whole_distillation_corpus() {
    let Some(tdir) = tokenizer_dir() else { return };
    let Some(corpus) = require_asset("corpus/distill_train.jsonl.zst") else {
        return;
    };
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.recipe_dir()).unwrap();
    let p = params(std::slice::from_ref(&corpus), 2048, 5.0);
    let progress = Recorder::default();
    let started = std::time::Instant::now();
    let out = ws.run_named("corpus", &tdir, p, 1234, &progress).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let data = DatasetArtifact::open(&out).unwrap();
    let index: &DatasetIndex = data.index();

    let mb = index.text_bytes as f64 / 1e6;
    println!(
        "distill_train.jsonl.zst: {mb:.1} MB of text, {} documents, {} text tokens, in {seconds:.1} s: {:.2} MB/s on {} threads",
        index.documents,
        index.text_tokens(),
        mb / seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!(
        "train: {} rows, {} docs, {} tail tokens dropped; heldout: {} rows, {} docs, {} tail tokens dropped",
        index.train.rows,
        index.train.documents,
        index.train.dropped_tail_tokens,
        index.heldout.rows,
        index.heldout.documents,
        index.heldout.dropped_tail_tokens
    );
    for line in progress.lines.lock().unwrap().iter() {
        println!("log: {line}");
    }
    for split in Split::ALL {
        let bytes = std::fs::read(out.join(split.file_name())).unwrap();
        println!(
            "{}: blake3 {}",
            split.file_name(),
            blake3::hash(&bytes).to_hex()
        );
    }

    let tokens = index.text_tokens() as f64;
    assert!(
        (tokens - 15.9e6).abs() <= 0.01 * 15.9e6,
        "{tokens} tokens, expected 15.9M +-1%"
    );
    assert!((60.0..62.0).contains(&mb), "{mb} MB of text");
    assert_eq!(index.files[0].documents, index.documents);
    assert_eq!(
        index.train.documents + index.heldout.documents,
        index.documents
    );
    for split in Split::ALL {
        let s = index.split(split);
        assert_eq!(s.separator_tokens, s.documents);
        assert_eq!(
            s.tokens + s.dropped_tail_tokens,
            s.text_tokens + s.separator_tokens
        );
        assert!(s.dropped_tail_tokens < 2048);
        assert_eq!(data.rows(split) as u64 * 2048, s.tokens);
    }
    let held = index.heldout.documents as f64 / index.documents as f64;
    assert!((0.03..0.07).contains(&held), "held out {held}");

    // No document on both sides; every document where its hash says.
    let records = data.documents().unwrap();
    assert_eq!(records.len() as u64, index.documents);
    let train = ids_of(&records, Split::Train);
    let heldout = ids_of(&records, Split::Heldout);
    assert_eq!(train.len() + heldout.len(), records.len(), "duplicate ids");
    assert!(train.is_disjoint(&heldout));
    for r in &records {
        assert_eq!(r.split, split_of(&r.id, 5.0));
    }

    // Progress went to the end of the file.
    assert_eq!(
        progress.total.load(Ordering::Relaxed),
        std::fs::metadata(&corpus).unwrap().len()
    );
    assert_eq!(
        progress.position.load(Ordering::Relaxed),
        progress.total.load(Ordering::Relaxed)
    );
    data.check_token_ids().unwrap();

    // The first document starts the first row.
    let first: Value = {
        use std::io::BufRead;
        let f = std::fs::File::open(&corpus).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(zstd::Decoder::new(f).unwrap())
            .read_line(&mut line)
            .unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let key = format!(
        "{}/{}",
        first["source"].as_str().unwrap(),
        first["doc_id"].as_str().unwrap()
    );
    let split = split_of(&key, 5.0);
    let ids = encode(&tokenizer(), first["text"].as_str().unwrap());
    let n = ids.len().min(2048);
    assert_eq!(&data.row(split, 0)[..n], &ids[..n]);
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- loss mask

/// A tokenizer folder built from the teacher GGUF's metadata, as
/// `load_model` writes it: `tokenizer.json` and `tokenizer_config.json`.
fn gguf_tokenizer_dir(ws: &Workspace) -> Option<PathBuf> {
    use distillery_ops::io::gguf::GgufFile;
    use distillery_ops::io::gguf_tokenizer::{tokenizer_config, tokenizer_from_gguf};
    let gguf = require_asset("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let g = GgufFile::open(&gguf).unwrap();
    let dir = ws.dir.path().join("teacher-tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    tokenizer_from_gguf(&g)
        .unwrap()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config(&g).unwrap()).unwrap(),
    )
    .unwrap();
    Some(dir)
}

fn chat_template(tokenizer_dir: &Path) -> ChatTemplate {
    let config: Value = serde_json::from_slice(
        &std::fs::read(tokenizer_dir.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap()
}

/// A split's tokens and mask cut back into documents (text ids and mask,
/// without the separator), following `documents.jsonl`; documents that run
/// into the dropped tail are left out. Also checks the separators' ids, and
/// their mask: `separator_mask` of the document's id.
fn split_documents(
    data: &DatasetArtifact,
    split: Split,
    separator: &[u32],
    separator_mask: impl Fn(&str) -> u8,
) -> Vec<(DocumentRecord, Vec<u32>, Vec<u8>)> {
    let tokens = data.tokens(split);
    let mask = data.loss_mask(split).expect("a loss mask");
    assert_eq!(mask.len(), tokens.len());
    let mut at = 0;
    let mut out = Vec::new();
    for record in data.documents().unwrap() {
        if record.split != split {
            continue;
        }
        let end = at + record.tokens as usize;
        if end + separator.len() > tokens.len() {
            break;
        }
        assert_eq!(&tokens[end..end + separator.len()], separator);
        assert!(
            mask[end..end + separator.len()]
                .iter()
                .all(|&m| m == separator_mask(&record.id)),
            "separator mask after {}",
            record.id
        );
        out.push((record, tokens[at..end].to_vec(), mask[at..end].to_vec()));
        at = end + separator.len();
    }
    out
}

/// The maximal runs of tokens whose mask is 1.
fn target_runs(ids: &[u32], mask: &[u8]) -> Vec<Vec<u32>> {
    let mut runs: Vec<Vec<u32>> = Vec::new();
    let mut open = false;
    for (&id, &m) in ids.iter().zip(mask) {
        match (m, open) {
            (1, true) => runs.last_mut().unwrap().push(id),
            (1, false) => runs.push(vec![id]),
            (0, _) => {}
            (other, _) => panic!("mask byte {other}"),
        }
        open = m == 1;
    }
    runs
}

#[test]
fn loss_mask_marks_exactly_the_assistant_replies_of_sharegpt() {
    let ws = Workspace::new();
    let Some(tdir) = gguf_tokenizer_dir(&ws) else {
        return;
    };
    let Some(chats) = require_asset("instruct/sharegpt_en_heldout.jsonl.zst") else {
        return;
    };
    let tok = Tokenizer::from_file(tdir.join("tokenizer.json")).unwrap();
    let template = chat_template(&tdir);
    std::fs::create_dir_all(ws.recipe_dir()).unwrap();
    // Short rows, so that most conversations are cut across rows.
    let mut p = params(&[chats], 257, 10.0);
    p.id_field = "id".into();
    let progress = Recorder::default();
    let out = ws.run_named("sft", &tdir, p, 0, &progress).unwrap();
    let data = DatasetArtifact::open(&out).unwrap();
    let index = data.index();
    assert!(data.has_loss_mask());
    assert_eq!(index.format_version, 2);
    assert_eq!(index.loss_mask.as_ref().unwrap().loss_on, "assistant");
    data.check_token_ids().unwrap();
    data.check_loss_mask().unwrap();
    let lines = progress.lines.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.contains("loss mask")), "{lines:?}");

    let records: BTreeMap<String, Value> = read_zst("instruct/sharegpt_en_heldout.jsonl.zst")
        .unwrap()
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (r["id"].as_str().unwrap().to_string(), r)
        })
        .collect();
    let mut conversations = 0;
    let mut replies = 0;
    for split in Split::ALL {
        let stats = index.split(split);
        assert_eq!(
            stats.mask_file.as_deref(),
            Some(split.mask_file_name()),
            "{split}"
        );
        let mask = data.loss_mask(split).unwrap();
        assert_eq!(mask.len(), data.tokens(split).len());
        let targets = mask.iter().filter(|&&m| m == 1).count() as u64;
        assert_eq!(stats.target_tokens, Some(targets));
        assert!(targets > 0 && targets < stats.tokens, "{split}: {targets}");
        // Rows and their masks line up, documents cut across rows included.
        for i in 0..data.rows(split) {
            let row = data.loss_mask_row(split, i).unwrap();
            assert_eq!(row.len(), 257);
            assert_eq!(row, &mask[i * 257..(i + 1) * 257]);
        }
        // The separator after a conversation is not a target.
        for (record, ids, doc_mask) in split_documents(&data, split, &[EOS], |_| 0) {
            let messages = &records[&record.id]["messages"];
            // The pieces concatenate to the tokens of the whole rendered
            // text: no assistant reply here starts with whitespace, the only
            // place where cutting could change SmolLM2's tokens.
            let text = template.render(messages, false).unwrap();
            assert_eq!(ids, encode(&tok, &text), "{}", record.id);
            assert_eq!(
                record.target_tokens,
                Some(doc_mask.iter().map(|&m| m as u64).sum())
            );
            // Each run of targets decodes to one reply and its end of turn.
            let expected: Vec<String> = messages
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["role"] == "assistant")
                .map(|m| format!("{}<|im_end|>", m["content"].as_str().unwrap()))
                .collect();
            let runs: Vec<String> = target_runs(&ids, &doc_mask)
                .iter()
                .map(|run| tok.decode(run, false).unwrap())
                .collect();
            assert_eq!(runs, expected, "{}", record.id);
            // Everything else, system and user turns and role headers, is
            // context: the unmasked tokens decode to the text less the
            // replies.
            let context: Vec<u32> = ids
                .iter()
                .zip(&doc_mask)
                .filter(|&(_, &m)| m == 0)
                .map(|(&id, _)| id)
                .collect();
            let mut rest = text.clone();
            for reply in &expected {
                rest = rest.replacen(&format!("\n{reply}"), "\n", 1);
            }
            assert_eq!(tok.decode(&context, false).unwrap(), rest, "{}", record.id);
            assert!(rest.contains("<|im_start|>assistant\n"));
            conversations += 1;
            replies += expected.len();
        }
    }
    println!("{conversations} conversations, {replies} replies checked");
    assert!(conversations > 250, "{conversations}");
}

#[test]
fn loss_mask_pieces_differ_from_the_whole_text_only_at_their_bounds() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let template = chat_template(&tdir);
    // A reply that starts with spaces: the header's newline and the first
    // spaces would be one pre-token in the whole text.
    let messages = json!([
        {"role": "user", "content": "Indent this."},
        {"role": "assistant", "content": "   indented\n\n  code"},
        {"role": "user", "content": "  and mine?"},
        {"role": "assistant", "content": "Done."}
    ]);
    let rendered = template.render_with_replies(&messages).unwrap();
    assert_eq!(rendered.text, template.render(&messages, false).unwrap());
    let pieces = rendered.segments();
    assert_eq!(
        pieces.iter().map(|(t, _)| *t).collect::<String>(),
        rendered.text
    );
    let replies: Vec<&str> = pieces
        .iter()
        .filter(|(_, reply)| *reply)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        replies,
        ["   indented\n\n  code<|im_end|>", "Done.<|im_end|>"]
    );
    let ids: Vec<u32> = pieces.iter().flat_map(|(t, _)| encode(&tok, t)).collect();
    let whole = encode(&tok, &rendered.text);
    assert_ne!(ids, whole, "the bound changes the tokens here");
    assert_eq!(tok.decode(&ids, false).unwrap(), rendered.text);
    // They agree up to the bound, and again from the reply's first word.
    let header = encode(&tok, pieces[0].0);
    assert_eq!(&whole[..header.len() - 1], &header[..header.len() - 1]);
    let tail = encode(
        &tok,
        &rendered.text[rendered.text.find("\n\n  code").unwrap()..],
    );
    assert!(whole.ends_with(&tail) && ids.ends_with(&tail));

    // Through the op, the mask is exact on the cut tokens.
    let ws = Workspace::new();
    let f = ws.file("c.jsonl", jsonl(&[json!({"messages": messages})]));
    let data = ws.run(&tdir, params(&[f], 2, 0.0)).unwrap();
    let n = data.tokens(Split::Train).len();
    assert_eq!(
        data.tokens(Split::Train),
        &[ids.clone(), vec![EOS]].concat()[..n]
    );
    let mask = data.loss_mask(Split::Train).unwrap();
    let runs: Vec<String> = target_runs(&ids[..n.min(ids.len())], &mask[..n.min(ids.len())])
        .iter()
        .map(|r| tok.decode(r, false).unwrap())
        .collect();
    assert_eq!(runs, replies);
}

#[test]
fn loss_on_all_writes_no_mask_and_keeps_the_whole_text_ids() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let template = chat_template(&tdir);
    let messages = json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "  Hello."}
    ]);
    let ws = Workspace::new();
    let f = ws.file("c.jsonl", jsonl(&[json!({"messages": messages})]));
    let mut p = params(&[f], 2, 0.0);
    p.loss_on = Some(LossOn::All);
    let data = ws.run(&tdir, p).unwrap();
    assert!(!data.has_loss_mask());
    assert!(data.loss_mask_row(Split::Train, 0).is_none());
    assert!(!data.dir().join("train.mask.bin").exists());
    let text = template.render(&messages, false).unwrap();
    assert_packed(&data, Split::Train, &stream(&tok, &[&text], &[EOS]));
    assert_eq!(data.documents().unwrap()[0].target_tokens, None);
}

#[test]
fn loss_mask_covers_text_read_before_the_first_conversation() {
    let Some(tdir) = tokenizer_dir() else { return };
    let tok = tokenizer();
    let template = chat_template(&tdir);
    let ws = Workspace::new();
    // Text documents fill rows before the first conversation turns the mask
    // on; the held-out split gets text only and still a mask of ones.
    let mut records: Vec<Value> = (0..40)
        .map(|i| json!({"doc_id": format!("t{i}"), "text": TEXTS[i % 4]}))
        .collect();
    let conversation = json!([
        {"role": "system", "content": "Terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Red."}
    ]);
    // Chat ids whose side is train at 20%.
    let chat_ids: Vec<String> = (0..)
        .map(|i| format!("chat{i}"))
        .filter(|id| split_of(id, 20.0) == Split::Train)
        .take(3)
        .collect();
    for id in &chat_ids {
        records.push(json!({"doc_id": id, "messages": conversation}));
    }
    let f = ws.file("mixed.jsonl", jsonl(&records));
    let data = ws.run(&tdir, params(&[f], 5, 20.0)).unwrap();
    assert!(data.has_loss_mask());
    data.check_loss_mask().unwrap();
    let docs = data.documents().unwrap();
    assert!(docs.iter().any(|d| d.split == Split::Heldout));

    let text = template.render(&conversation, false).unwrap();
    let chat_ids_tok = encode(&tok, &text);
    for split in Split::ALL {
        // Not a target after a conversation, a target after plain text.
        let pieces = split_documents(&data, split, &[EOS], |id| u8::from(!id.starts_with("chat")));
        let mut separators_checked = 0;
        for (record, ids, mask) in &pieces {
            if record.id.starts_with("chat") {
                assert_eq!(ids, &chat_ids_tok);
                let runs: Vec<String> = target_runs(ids, mask)
                    .iter()
                    .map(|r| tok.decode(r, false).unwrap())
                    .collect();
                assert_eq!(runs, ["Blue.<|im_end|>", "Red.<|im_end|>"]);
                assert_eq!(record.target_tokens, Some(6));
            } else {
                assert!(mask.iter().all(|&m| m == 1), "{}", record.id);
                assert_eq!(record.target_tokens, None);
                separators_checked += 1;
            }
        }
        assert!(separators_checked > 0, "{split}");
    }
    // The text before the first conversation: every token a target, its
    // separators too.
    let first_chat = docs.iter().position(|d| d.id.starts_with("chat")).unwrap();
    let before: usize = docs[..first_chat]
        .iter()
        .filter(|d| d.split == Split::Train)
        .map(|d| d.tokens as usize + 1)
        .sum();
    assert!(before > 10, "{before}");
    let mask = data.loss_mask(Split::Train).unwrap();
    assert!(mask[..before].iter().all(|&m| m == 1));
    assert!(
        data.loss_mask(Split::Heldout)
            .unwrap()
            .iter()
            .all(|&m| m == 1)
    );
}

#[test]
fn templates_that_cannot_be_masked_are_an_error() {
    // The last message is rendered differently: the render up to a reply
    // does not start with the render before it plus the generation prompt.
    let template = ChatTemplate::new(
        "{% for m in messages %}{% if loop.last and not add_generation_prompt %}[final] {% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}".into(),
        serde_json::Map::new(),
    )
    .unwrap();
    let messages = json!([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}
    ]);
    let err = format!("{:#}", template.render_with_replies(&messages).unwrap_err());
    assert!(err.contains("cannot be masked"), "{err}");
    assert!(err.contains("message 1"), "{err}");

    // Through the op: the file and line, and `loss_on: all` still works.
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let tk = ws.dir.path().join("odd-template");
    std::fs::create_dir_all(&tk).unwrap();
    std::fs::copy(tdir.join("tokenizer.json"), tk.join("tokenizer.json")).unwrap();
    std::fs::write(
        tk.join("tokenizer_config.json"),
        serde_json::to_string(&json!({
            "eos_token": "<|im_end|>",
            "chat_template": "{% for m in messages %}{% if loop.last and not add_generation_prompt %}[final] {% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
        }))
        .unwrap(),
    )
    .unwrap();
    let f = ws.file(
        "c.jsonl",
        format!(
            "{{\"text\": \"plain\"}}\n{}\n",
            json!({"messages": messages})
        ),
    );
    let msg = run_err(&ws, &tk, params(std::slice::from_ref(&f), 2, 0.0));
    assert!(
        msg.contains("c.jsonl:2") && msg.contains("cannot be masked"),
        "{msg}"
    );
    let mut p = params(&[f], 2, 0.0);
    p.loss_on = Some(LossOn::All);
    let out = ws.run_named("all", &tk, p, 0, &NoProgress).unwrap();
    assert!(!DatasetArtifact::open(out).unwrap().has_loss_mask());
}

#[test]
fn replies_are_found_with_other_template_styles() {
    // Llama 3 style: header tokens before the reply, <|eot_id|> after, no
    // newline.
    let llama3 = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}".into(),
        serde_json::Map::from_iter([("bos_token".to_string(), json!("<|begin_of_text|>"))]),
    )
    .unwrap();
    let messages = json!([
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1 "},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"}
    ]);
    let r = llama3.render_with_replies(&messages).unwrap();
    let replies: Vec<&str> = r.replies.iter().map(|x| &r.text[x.clone()]).collect();
    assert_eq!(replies, ["A1<|eot_id|>", "A2<|eot_id|>"]);
    assert!(r.text.starts_with("<|begin_of_text|>"));

    // Mistral style: the reply follows `[/INST]` and ends with </s>; the
    // template rejects a conversation that does not alternate.
    let mistral = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}".into(),
        serde_json::Map::from_iter([
            ("bos_token".to_string(), json!("<s>")),
            ("eos_token".to_string(), json!("</s>")),
        ]),
    )
    .unwrap();
    let r = mistral
        .render_with_replies(&json!([
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"}
        ]))
        .unwrap();
    let replies: Vec<&str> = r.replies.iter().map(|x| &r.text[x.clone()]).collect();
    assert_eq!(replies, ["b</s>", "d</s>"]);
    assert_eq!(r.text, "<s>[INST] a [/INST]b</s>[INST] c [/INST]d</s>");
    let err = mistral
        .render_with_replies(&json!([{"role": "assistant", "content": "x"}]))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("roles must alternate"),
        "{err:#}"
    );

    // A conversation without a reply has no targets.
    let r = llama3
        .render_with_replies(&json!([{"role": "user", "content": "Q"}]))
        .unwrap();
    assert!(r.replies.is_empty());
    assert_eq!(r.segments(), [(r.text.as_str(), false)]);
}

#[test]
fn loss_on_is_checked_against_the_file_formats() {
    // Plan time: a plain-text file with `loss_on` is an error.
    let found = issues(json!({"files": ["a.jsonl", "b.txt"], "loss_on": "assistant"}));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, vec!["loss_on".to_string()]);
    assert!(
        found[0].1.contains("b.txt") && found[0].1.contains("plain text"),
        "{found:?}"
    );
    let found = issues(json!({"files": ["x.data"], "format": "text", "loss_on": "all"}));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(issues(json!({"files": ["a.jsonl.zst"], "loss_on": "all"})).is_empty());
    assert!(issues(json!({"files": ["b.txt"]})).is_empty());
    let registry = registry();
    let op = registry.get("dataset").unwrap();
    assert!(
        op.normalize(json!({"files": ["a.jsonl"], "loss_on": "user"}))
            .is_err()
    );
    let mut generator = schemars::SchemaGenerator::default();
    let schema = serde_json::to_string(&op.params_schema(&mut generator)).unwrap()
        + &serde_json::to_string(&generator.definitions()).unwrap();
    for word in ["loss_on", "assistant", "end-of-turn", "loss mask"] {
        assert!(schema.contains(word), "schema lacks {word:?}");
    }

    // Run time, for callers that skip the plan.
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let f = ws.file("t.txt", "text");
    let mut p = params(&[f], 2, 0.0);
    p.loss_on = Some(LossOn::Assistant);
    let msg = run_err(&ws, &tdir, p);
    assert!(msg.contains("loss_on") && msg.contains("t.txt"), "{msg}");
}

#[test]
fn reader_opens_version_1_folders_and_rejects_malformed_masks() {
    let Some(tdir) = tokenizer_dir() else { return };
    let ws = Workspace::new();
    let chat = json!({"messages": [
        {"role": "user", "content": "Say something long enough for a few rows."},
        {"role": "assistant", "content": "Here is something long enough for a few rows of four."}
    ]});
    let f = ws.file("c.jsonl", jsonl(&[chat.clone(), chat]));
    let out = ws
        .run_named("m", &tdir, params(&[f], 4, 0.0), 0, &NoProgress)
        .unwrap();
    let ok = DatasetArtifact::open(&out).unwrap();
    assert!(ok.has_loss_mask());
    let rows = ok.rows(Split::Train);
    assert!(rows >= 4);
    // Out of range is a panic, as for rows, not a silent "no mask".
    let result = std::panic::catch_unwind(|| ok.loss_mask_row(Split::Train, rows).map(<[u8]>::len));
    assert!(result.is_err());
    // An empty split with a mask has an empty one.
    assert_eq!(ok.loss_mask(Split::Heldout), Some(&[][..]));
    drop(ok);

    let copy = |name: &str| {
        let dir = ws.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&out).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        dir
    };
    let index = |dir: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap()
    };
    let set_index = |dir: &Path, v: &Value| {
        std::fs::write(dir.join("index.json"), serde_json::to_string(v).unwrap()).unwrap()
    };
    let err = |dir: &Path| format!("{:#}", DatasetArtifact::open(dir).unwrap_err());

    // An index as version 1 wrote it: no mask fields at all.
    let dir = copy("v1");
    let mut v = index(&dir);
    v["format_version"] = json!(1);
    v.as_object_mut().unwrap().remove("loss_mask");
    for split in ["train", "heldout"] {
        let s = v[split].as_object_mut().unwrap();
        s.remove("mask_file");
        s.remove("target_tokens");
    }
    std::fs::remove_file(dir.join("train.mask.bin")).unwrap();
    std::fs::remove_file(dir.join("heldout.mask.bin")).unwrap();
    set_index(&dir, &v);
    let documents: String = std::fs::read_to_string(dir.join("documents.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut d: Value = serde_json::from_str(l).unwrap();
            assert!(d.as_object_mut().unwrap().remove("target_tokens").is_some());
            format!("{d}\n")
        })
        .collect();
    std::fs::write(dir.join("documents.jsonl"), documents).unwrap();
    let old = DatasetArtifact::open(&dir).unwrap();
    assert!(!old.has_loss_mask());
    assert_eq!(old.rows(Split::Train), rows);
    assert!(old.loss_mask_row(Split::Train, 0).is_none());
    old.check_loss_mask().unwrap();
    assert!(
        old.documents()
            .unwrap()
            .iter()
            .all(|d| d.target_tokens.is_none())
    );

    // A version 1 index that claims a mask.
    let dir = copy("v1-mask");
    let mut v = index(&dir);
    v["format_version"] = json!(1);
    set_index(&dir, &v);
    assert!(err(&dir).contains("format version 1"), "{}", err(&dir));

    // Versions from the future.
    let dir = copy("v9");
    let mut v = index(&dir);
    v["format_version"] = json!(9);
    set_index(&dir, &v);
    assert!(err(&dir).contains("not supported"), "{}", err(&dir));

    let dir = copy("no-mask-file");
    std::fs::remove_file(dir.join("train.mask.bin")).unwrap();
    let msg = err(&dir);
    assert!(
        msg.contains("train.mask.bin") && msg.contains("loss mask"),
        "{msg}"
    );

    let dir = copy("short-mask");
    let bytes = std::fs::read(dir.join("train.mask.bin")).unwrap();
    std::fs::write(dir.join("train.mask.bin"), &bytes[..bytes.len() - 1]).unwrap();
    let msg = err(&dir);
    assert!(msg.contains("one per token"), "{msg}");

    let dir = copy("unnamed-mask");
    let mut v = index(&dir);
    v["heldout"].as_object_mut().unwrap().remove("mask_file");
    set_index(&dir, &v);
    let msg = err(&dir);
    assert!(msg.contains("heldout split names no mask_file"), "{msg}");

    let dir = copy("stray-mask");
    let mut v = index(&dir);
    v.as_object_mut().unwrap().remove("loss_mask");
    set_index(&dir, &v);
    let msg = err(&dir);
    assert!(msg.contains("no loss_mask"), "{msg}");

    let dir = copy("bad-byte");
    let mut bad = bytes.clone();
    bad[1] = 7;
    std::fs::write(dir.join("train.mask.bin"), &bad).unwrap();
    let data = DatasetArtifact::open(&dir).unwrap();
    let msg = format!("{:#}", data.check_loss_mask().unwrap_err());
    assert!(msg.contains("neither 0 nor 1"), "{msg}");

    let dir = copy("miscounted");
    let mut flipped = bytes.clone();
    let zero = flipped.iter().position(|&b| b == 0).unwrap();
    flipped[zero] = 1;
    std::fs::write(dir.join("train.mask.bin"), &flipped).unwrap();
    let data = DatasetArtifact::open(&dir).unwrap();
    let msg = format!("{:#}", data.check_loss_mask().unwrap_err());
    assert!(msg.contains("targets"), "{msg}");
}
