//! The tokenizer rebuilt from GGUF metadata against the Hugging Face
//! reference tokenizer.json: structure, ids on the whole held-out corpus,
//! the reference prompts, special tokens, and the other pre-tokenizers.

mod assets_support;
use assets_support::*;
use std::sync::OnceLock;
use testkit::require_asset;

use distillery_ops::io::gguf::GgufFile;
use distillery_ops::io::gguf_tokenizer::{
    GgufTokenizerError, tokenizer_config, tokenizer_from_gguf,
};
use rayon::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

// ---------------------------------------------------------------- assets

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// (tokenizer from the GGUF, reference tokenizer.json), built once.
fn tokenizers_pair() -> Option<&'static (Tokenizer, Tokenizer)> {
    static PAIR: OnceLock<(Tokenizer, Tokenizer)> = OnceLock::new();
    let gguf = require_asset(MODEL)?;
    let reference = require_asset("reference/tokenizer.json")?;
    Some(PAIR.get_or_init(|| {
        let g = GgufFile::open(&gguf).unwrap();
        let ours = tokenizer_from_gguf(&g).unwrap();
        (ours, Tokenizer::from_file(reference).unwrap())
    }))
}

fn reference_json() -> Option<Value> {
    let p = require_asset("reference/reference.json")?;
    Some(serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
}

/// A 1-D little-endian int64 .npy array.
fn read_npy_i64(rel: &str) -> Option<Vec<i64>> {
    let npy = read_npy(&require_asset(rel)?);
    assert_eq!(npy.shape.len(), 1, "{rel}: not 1-D");
    Some(npy.i64s)
}

fn ids(tk: &Tokenizer, text: &str, special: bool) -> Vec<u32> {
    tk.encode(text, special).unwrap().get_ids().to_vec()
}

// ---------------------------------------------------------------- real tokenizer

#[test]
fn structure_matches_reference_tokenizer_json() {
    let Some((ours, _)) = tokenizers_pair() else {
        return;
    };
    let Some(path) = require_asset("reference/tokenizer.json") else {
        return;
    };
    let reference: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mine: Value = serde_json::from_str(&ours.to_string(false).unwrap()).unwrap();
    for key in [
        "version",
        "truncation",
        "padding",
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
    ] {
        assert_eq!(mine[key], reference[key], "{key}");
    }
    for (k, v) in reference["model"].as_object().unwrap() {
        assert_eq!(&mine["model"][k], v, "model.{k}");
    }
    assert_eq!(mine, reference);
    assert_eq!(ours.get_vocab_size(true), 49152);
}

#[test]
fn tokenizer_config_matches_reference() {
    let Some(path) = require_asset(MODEL) else {
        return;
    };
    let Some(tc) = require_asset("reference/tokenizer_config.json") else {
        return;
    };
    let reference: Value = serde_json::from_slice(&std::fs::read(tc).unwrap()).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(tokenizer_config(&g).unwrap(), reference);
}

#[test]
fn same_ids_as_reference_on_every_heldout_document() {
    let Some((ours, reference)) = tokenizers_pair() else {
        return;
    };
    let Some(docs) = heldout_documents() else {
        return;
    };
    let n_tokens: usize = docs
        .par_iter()
        .enumerate()
        .map(|(i, doc)| {
            let a = ids(ours, doc, false);
            assert_eq!(
                a,
                ids(reference, doc, false),
                "document {i}, add_special_tokens=false"
            );
            assert_eq!(
                ids(ours, doc, true),
                ids(reference, doc, true),
                "document {i}, add_special_tokens=true"
            );
            assert_eq!(
                &ours.decode(&a, false).unwrap(),
                doc,
                "document {i}: decode(encode(x)) != x"
            );
            a.len()
        })
        .sum();
    eprintln!("{} documents, {n_tokens} tokens, identical ids", docs.len());
}

#[test]
fn reference_prompts_give_reference_ids() {
    let Some((ours, _)) = tokenizers_pair() else {
        return;
    };
    let Some(r) = reference_json() else { return };
    let as_ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };

    let plain = &r["reference"]["plain"];
    let plain_npy = read_npy_i64("reference/plain_input_ids.npy").unwrap();
    let got = ids(ours, plain["text"].as_str().unwrap(), true);
    assert_eq!(got.len(), 14);
    assert_eq!(got, as_ids(&plain["input_ids"]));
    assert_eq!(got.iter().map(|&x| x as i64).collect::<Vec<_>>(), plain_npy);

    // The chat prompt is the ChatML template with its default system turn.
    let chat = &r["reference"]["chat"];
    let system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
    let templated = format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nExplain photosynthesis in one sentence.<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(chat["text"].as_str().unwrap(), templated);
    let chat_npy = read_npy_i64("reference/chat_input_ids.npy").unwrap();
    let got = ids(ours, &templated, true);
    assert_eq!(got.len(), 36);
    assert_eq!(got, as_ids(&chat["input_ids"]));
    assert_eq!(got.iter().map(|&x| x as i64).collect::<Vec<_>>(), chat_npy);
    assert_eq!(ours.decode(&got, false).unwrap(), templated);

    // The generation prompts too.
    for g in r["generations"].as_array().unwrap() {
        let text = match g["mode"].as_str().unwrap() {
            "chat" => g["templated"].as_str().unwrap(),
            _ => g["prompt"].as_str().unwrap(),
        };
        assert_eq!(ids(ours, text, true), as_ids(&g["prompt_ids"]), "{text:?}");
    }
}

#[test]
fn special_tokens_encode_to_their_ids() {
    let Some((ours, reference)) = tokenizers_pair() else {
        return;
    };
    assert_eq!(ids(ours, "<|im_start|>", false), vec![1]);
    assert_eq!(ids(ours, "<|im_start|>", true), vec![1]);
    assert_eq!(ids(ours, "<|endoftext|>", false), vec![0]);
    assert_eq!(ids(ours, "<|im_end|>", false), vec![2]);
    let added = ours.get_added_tokens_decoder();
    assert_eq!(added.len(), 17);
    for (id, tok) in &added {
        assert!(tok.special, "{}", tok.content);
        assert_eq!(ids(ours, &tok.content, false), vec![*id], "{}", tok.content);
        assert_eq!(ours.token_to_id(&tok.content), Some(*id));
    }
    let text = "<|im_start|>user\nHi<|im_end|>";
    let ids_ = ids(ours, text, false);
    assert_eq!(ids_, ids(reference, text, false));
    assert_eq!(ours.decode(&ids_, true).unwrap(), "user\nHi");
    assert_eq!(ours.decode(&ids_, false).unwrap(), text);
    // Digits are split one by one, as SmolLM's pre-tokenizer does.
    let digits = ids(ours, "12345", false);
    assert_eq!(digits.len(), 5);
    assert_eq!(digits, ids(reference, "12345", false));
}

#[test]
fn unknown_pre_tokenizer_in_the_real_file_is_an_error() {
    let Some(path) = require_asset(MODEL) else {
        return;
    };
    let mut bytes = std::fs::read(path).unwrap();
    // Same-length replacement keeps every offset valid.
    let key = b"tokenizer.ggml.pre";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
    assert_eq!(&bytes[at..at + 6], b"smollm");
    bytes[at..at + 6].copy_from_slice(b"qwen99");
    let g = GgufFile::from_bytes(bytes).unwrap();
    let err = tokenizer_from_gguf(&g).err().unwrap();
    assert!(
        matches!(err, GgufTokenizerError::UnsupportedPre { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("qwen99") && msg.contains("smollm") && msg.contains("llama-bpe"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- handwritten vocabularies

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

enum V<'a> {
    Str(&'a str),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// A GGUF image holding only metadata (no tensors).
fn gguf_with(kv: &[(&str, V<'_>)]) -> GgufFile {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut b, k);
        match v {
            V::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            V::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::Bool(x) => {
                b.extend(7u32.to_le_bytes());
                b.push(*x as u8);
            }
            V::Strs(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| put_str(&mut b, s));
            }
            V::I32s(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
        }
    }
    GgufFile::from_bytes(b).unwrap()
}

const MERGES: [&str; 5] = ["1 2", "12 3", "123 4", "1234 5", "4 5"];

/// Ids: 0 `<s>` (control), 1 `</s>` (control), 2 `<tool>` (user defined),
/// 3..259 the bytes, then the merge results.
fn small_vocab(pre: &str, model: &str, add_bos: bool, merges: &[&str]) -> GgufFile {
    let mut tokens: Vec<String> = ["<s>", "</s>", "<tool>"].map(String::from).to_vec();
    tokens.extend(byte_level_chars().into_iter().map(String::from));
    tokens.extend(["12", "123", "1234", "12345", "45"].map(String::from));
    let mut types = vec![3, 3, 4];
    types.resize(tokens.len(), 1);
    gguf_with(&[
        ("general.architecture", V::Str("llama")),
        ("llama.context_length", V::U32(4096)),
        ("tokenizer.ggml.model", V::Str(model)),
        ("tokenizer.ggml.pre", V::Str(pre)),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(types)),
        (
            "tokenizer.ggml.merges",
            V::Strs(merges.iter().map(|s| s.to_string()).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ("tokenizer.ggml.eos_token_id", V::U32(1)),
        ("tokenizer.ggml.add_bos_token", V::Bool(add_bos)),
    ])
}

fn byte_id(c: u8) -> u32 {
    3 + c as u32
}

#[test]
fn pre_tokenizer_is_chosen_by_tokenizer_ggml_pre() {
    let (t12345, t123, t45) = (262, 260, 263);
    let digits: Vec<u32> = b"12345".iter().map(|&c| byte_id(c)).collect();
    for (pre, want) in [
        ("smollm", digits.clone()),
        ("gpt2", vec![t12345]),
        ("default", vec![t12345]),
        ("llama-bpe", vec![t123, t45]),
    ] {
        let tk = tokenizer_from_gguf(&small_vocab(pre, "gpt2", false, &MERGES)).unwrap();
        assert_eq!(ids(&tk, "12345", false), want, "pre {pre}");
        assert_eq!(tk.decode(&want, false).unwrap(), "12345");
        // Spaces and punctuation survive the byte-level round trip.
        let text = "  a, b!\n\tc’é 7";
        let enc = ids(&tk, text, false);
        assert_eq!(tk.decode(&enc, false).unwrap(), text, "pre {pre}");
    }
}

#[test]
fn token_types_and_bos_policy() {
    let tk = tokenizer_from_gguf(&small_vocab("smollm", "gpt2", true, &MERGES)).unwrap();
    // Control tokens are special, user-defined ones are added but not special.
    let added = tk.get_added_tokens_decoder();
    assert!(added[&0].special && added[&1].special);
    assert!(!added[&2].special, "<tool> is user-defined");
    let e = ids(&tk, "a<tool>b</s>", false);
    assert_eq!(e, vec![byte_id(b'a'), 2, byte_id(b'b'), 1]);
    assert_eq!(tk.decode(&e, true).unwrap(), "a<tool>b");
    // add_bos_token puts BOS first only when special tokens are requested.
    assert_eq!(ids(&tk, "a", true), vec![0, byte_id(b'a')]);
    assert_eq!(ids(&tk, "a", false), vec![byte_id(b'a')]);
    let cfg = tokenizer_config(&small_vocab("smollm", "gpt2", true, &MERGES)).unwrap();
    assert_eq!(cfg["bos_token"], json!("<s>"));
    assert_eq!(cfg["eos_token"], json!("</s>"));
    assert_eq!(cfg["pad_token"], Value::Null);
    assert_eq!(cfg["add_bos_token"], json!(true));
    assert_eq!(cfg["model_max_length"], json!(4096));
    assert_eq!(cfg["additional_special_tokens"], json!([]));
    assert_eq!(cfg["chat_template"], Value::Null);

    let tk = tokenizer_from_gguf(&small_vocab("smollm", "gpt2", false, &MERGES)).unwrap();
    assert_eq!(ids(&tk, "a", true), vec![byte_id(b'a')]);
}

#[test]
fn bad_tokenizer_metadata_is_an_error_not_a_panic() {
    let err = tokenizer_from_gguf(&small_vocab("smollm", "llama", false, &MERGES))
        .err()
        .unwrap();
    assert!(
        matches!(err, GgufTokenizerError::UnsupportedModel(_)),
        "{err}"
    );
    let err = tokenizer_from_gguf(&small_vocab("whatever", "gpt2", false, &MERGES))
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("unsupported pre-tokenizer \"whatever\""),
        "{err}"
    );
    // Merges whose parts or result are missing from the vocabulary; the
    // last one concatenates the two longest tokens.
    for bad in [&["1 9x"][..], &["12345 12345"], &["nospace"], &["4 1"]] {
        let err = tokenizer_from_gguf(&small_vocab("smollm", "gpt2", false, bad))
            .err()
            .unwrap();
        assert!(
            matches!(err, GgufTokenizerError::Invalid(_)),
            "{bad:?}: {err}"
        );
    }
    // Special token ids outside the vocabulary.
    let g = gguf_with(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(vec!["a".into()])),
        ("tokenizer.ggml.bos_token_id", V::U32(5)),
    ]);
    let err = tokenizer_from_gguf(&g).err().unwrap();
    assert!(err.to_string().contains("bos_token_id"), "{err}");
    // Token types of the wrong length.
    let g = gguf_with(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(vec!["a".into()])),
        ("tokenizer.ggml.token_type", V::I32s(vec![1, 1])),
    ]);
    assert!(tokenizer_from_gguf(&g).is_err());
    // Missing vocabulary.
    let g = gguf_with(&[("tokenizer.ggml.model", V::Str("gpt2"))]);
    assert!(
        tokenizer_from_gguf(&g)
            .err()
            .unwrap()
            .to_string()
            .contains("tokenizer.ggml.tokens")
    );
}
