//! Input text files: which format a file is read in (JSONL or plain text,
//! by its extension once `.zst` is set aside), opening it through a zstd
//! decoder when compressed, and naming a JSON value's type in the errors
//! about JSONL records. The `dataset` op and the evaluation files share
//! these rules.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How to read an input file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// From the extension (after `.zst`): `.jsonl` / `.ndjson` are JSONL,
    /// `.txt` / `.text` / `.md` are plain text.
    #[default]
    Auto,
    /// One JSON object per line: a `text` field, or a chat conversation in
    /// `messages: [{role, content}]`.
    Jsonl,
    /// Plain text; documents are separated by a blank line.
    Text,
}

/// The format a file is read in, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Jsonl,
    Text,
}

impl FileFormat {
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Text => "text",
        }
    }
}

/// The format of `path`, given the `format` parameter.
pub fn file_format(path: &Path, format: DataFormat) -> Result<FileFormat, String> {
    match format {
        DataFormat::Jsonl => return Ok(FileFormat::Jsonl),
        DataFormat::Text => return Ok(FileFormat::Text),
        DataFormat::Auto => {}
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".zst").unwrap_or(&name);
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => Ok(FileFormat::Jsonl),
        "txt" | "text" | "md" => Ok(FileFormat::Text),
        _ => Err(format!(
            "cannot tell the format of `{}` from its extension (.jsonl, .ndjson, .txt, .text, .md, optionally .zst)",
            path.display()
        )),
    }
}

/// Whether `path` names a zstd-compressed file (`.zst`, in any case).
fn is_zstd(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zst"))
}

/// Opens a file, through a zstd decoder when its name ends in `.zst`.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    buffered(file, path, &path.display().to_string())
}

/// The bytes of `raw`, read from the file at `path`, buffered and through a
/// zstd decoder when `path` ends in `.zst`; `label` names the file in
/// errors.
pub(super) fn buffered<'r>(
    raw: impl Read + 'r,
    path: &Path,
    label: &str,
) -> Result<Box<dyn BufRead + 'r>> {
    Ok(if is_zstd(path) {
        let decoder =
            zstd::Decoder::new(raw).with_context(|| format!("cannot read {label} as zstd"))?;
        Box::new(BufReader::with_capacity(1 << 20, decoder))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, raw))
    })
}

/// A JSON value's type, as error messages name it ("a list", "null").
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
