//! The `tokenizer.ggml.*` metadata of a byte-level BPE tokenizer, written
//! as llama.cpp's `convert_hf_to_gguf.py` writes it: every id up to the
//! model's vocabulary size (unused ids as `[PAD<id>]`), token types from the
//! added tokens, the merges, the special ids and the chat template.
//! `io::gguf_tokenizer` reads it back.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::io::gguf::{GgufArray, GgufValue};
use crate::io::gguf_tokenizer::{LLAMA3_REGEX, token_type};
use crate::model::LlamaConfig;

/// Metadata entries, in the order llama.cpp's converter writes them.
pub fn tokenizer_metadata(
    tokenizer: &Tokenizer,
    tokenizer_config: Option<&Value>,
    config: &LlamaConfig,
) -> Result<Vec<(String, GgufValue)>> {
    let json: Value = serde_json::from_str(
        &tokenizer
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialize the tokenizer: {e}"))?,
    )?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        bail!(
            "GGUF export needs a byte-level BPE tokenizer; this one is {}",
            model["type"]
        );
    }
    if !json["normalizer"].is_null() {
        bail!(
            "the tokenizer has a normalizer ({}); llama.cpp's byte-level BPE has none",
            json["normalizer"]["type"]
        );
    }
    let (pre, add_space_prefix) = pre_tokenizer_name(&json["pre_tokenizer"])?;
    let (tokens, types) = tokens_and_types(&json, config.vocab_size)?;
    let merges = merges(&model["merges"])?;

    let id_of = |name: &str| -> Option<u64> {
        let token = tokenizer_config?.get(name)?;
        // Either a string or an AddedToken object with `content`.
        let text = token.as_str().or_else(|| token.get("content")?.as_str())?;
        tokenizer.token_to_id(text).map(u64::from)
    };
    let first_eos = config.eos_ids().first().map(|&id| u64::from(id));
    let special_ids = [
        (
            "bos_token_id",
            id_of("bos_token").or(config.bos_token_id.map(u64::from)),
        ),
        ("eos_token_id", id_of("eos_token").or(first_eos)),
        ("unknown_token_id", id_of("unk_token")),
        (
            "padding_token_id",
            id_of("pad_token").or(config.pad_token_id.map(u64::from)),
        ),
    ];
    let flag = |name: &str| {
        tokenizer_config
            .and_then(|c| c.get(name))
            .and_then(Value::as_bool)
    };

    let mut out: Vec<(String, GgufValue)> = vec![
        ("tokenizer.ggml.model".into(), text("gpt2")),
        ("tokenizer.ggml.pre".into(), text(pre)),
        (
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(GgufArray::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(GgufArray::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(GgufArray::String(merges)),
        ),
    ];
    for (key, id) in special_ids {
        if let Some(id) = id {
            let id = u32::try_from(id).context("a special token id exceeds 32 bits")?;
            out.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
        }
    }
    // Both said either way, as llama.cpp's conversion does.
    for key in ["add_bos_token", "add_eos_token"] {
        out.push((
            format!("tokenizer.ggml.{key}"),
            GgufValue::Bool(flag(key).unwrap_or(false)),
        ));
    }
    // Absent means false to llama.cpp, whose conversion writes it only when set.
    if add_space_prefix {
        out.push((
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(true),
        ));
    }
    if let Some(template) = tokenizer_config
        .and_then(|c| c.get("chat_template"))
        .and_then(Value::as_str)
    {
        out.push(("tokenizer.chat_template".into(), text(template)));
    }
    Ok(out)
}

fn text(s: &str) -> GgufValue {
    GgufValue::String(s.to_string())
}

/// llama.cpp's name for the pre-tokenizer (`tokenizer.ggml.pre`), and
/// whether it adds a prefix space. Only the splits llama.cpp and
/// `io::gguf_tokenizer` both implement are named; anything else would
/// tokenize differently there, so it is an error.
fn pre_tokenizer_name(pre: &Value) -> Result<(&'static str, bool)> {
    let byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel" && v["use_regex"].as_bool().unwrap_or(true) == regex
    };
    let prefix = |v: &Value| v["add_prefix_space"].as_bool().unwrap_or(false);
    let parts: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    match parts[..] {
        [b] if byte_level(b, true) => Ok(("gpt-2", prefix(b))),
        [d, b]
            if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) =>
        {
            Ok(("smollm", prefix(b)))
        }
        [s, b]
            if s["type"] == "Split"
                && s["pattern"]["Regex"] == LLAMA3_REGEX
                && s["behavior"] == "Isolated"
                && byte_level(b, false) =>
        {
            Ok(("llama-bpe", prefix(b)))
        }
        _ => bail!(
            "GGUF export cannot name this pre-tokenizer for llama.cpp ({pre}); supported: \
             byte-level GPT-2, individual digits then byte-level (SmolLM), the Llama-3 split"
        ),
    }
}

/// One string and one llama.cpp token type per id, for `vocab_size` ids.
fn tokens_and_types(json: &Value, vocab_size: usize) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = json["model"]["vocab"]
        .as_object()
        .ok_or_else(|| anyhow!("the tokenizer's BPE model has no vocab"))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![token_type::UNUSED as i32; vocab_size];
    let mut place = |id: u64, text: &str, ty: i64| -> Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| {
                anyhow!(
                    "token {text:?} has id {id}, outside the model's vocabulary of {vocab_size}"
                )
            })?;
        tokens[slot] = Some(text.to_string());
        types[slot] = ty as i32;
        Ok(())
    };
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| anyhow!("vocab entry {text:?} has no integer id"))?;
        place(id, text, token_type::NORMAL)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            bail!("an added token lacks its id or content: {added}");
        };
        let ty = if added["special"] == true {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        place(id, text, ty)?;
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    Ok((tokens, types))
}

/// Merges as `"left right"` strings (tokenizer.json has them as strings or
/// as pairs, depending on its version).
fn merges(merges: &Value) -> Result<Vec<String>> {
    let Some(list) = merges.as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match &pair[..] {
                [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                _ => bail!("merge #{i} is not a pair of strings: {m}"),
            },
            _ => bail!("merge #{i} is not a string or a pair: {m}"),
        })
        .collect()
}
