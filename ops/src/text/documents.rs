//! The input files, streamed: each file is read line by line (through zstd
//! when compressed, counting the bytes taken from disk for the progress
//! bar) and cut into documents, a JSONL record (a text or a chat
//! conversation) or a blank-line-separated block of plain text, named for
//! the split and for error messages.

use std::fs::File;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::files::{FileFormat, buffered, file_format, json_kind};
use super::params::DatasetParams;
use crate::io::chat::ChatTemplate;
use crate::io::dataset::split_key;

/// A document as read.
pub(super) struct Doc {
    /// Its id for the split (`source/doc_id`, or `file:line`).
    pub key: String,
    pub body: Body,
    /// Index of its file among the inputs.
    pub file: usize,
}

/// What a document holds.
pub(super) enum Body {
    Text(String),
    /// A conversation, rendered by the tokenization task (with the replies
    /// located, when masked: several renders, worth running in parallel).
    Chat {
        messages: Value,
        /// `file:line`, for errors.
        at: String,
        /// Bytes of its JSONL line, to size chunks.
        line_bytes: usize,
    },
}

impl Doc {
    /// Roughly the bytes of text it holds, to size chunks.
    pub fn size(&self) -> usize {
        match &self.body {
            Body::Text(text) => text.len(),
            Body::Chat { line_bytes, .. } => *line_bytes,
        }
    }
}

/// An input file to read.
pub(super) struct InputFile {
    /// As written in the recipe; names documents and errors.
    pub label: String,
    pub path: PathBuf,
    pub format: FileFormat,
    pub file_bytes: u64,
}

/// The files of `p`, whose paths are relative to `recipe_dir`, with their
/// formats and sizes.
pub(super) fn input_files(p: &DatasetParams, recipe_dir: &Path) -> Result<Vec<InputFile>> {
    let mut inputs = Vec::new();
    for path in &p.files {
        let full = recipe_dir.join(path);
        let format = file_format(path, p.format).map_err(|m| anyhow!(m))?;
        let file_bytes = std::fs::metadata(&full)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        inputs.push(InputFile {
            label: path.display().to_string(),
            path: full,
            format,
            file_bytes,
        });
    }
    Ok(inputs)
}

/// A reader that counts the bytes taken from the file.
struct Counting<'a, R> {
    inner: R,
    count: &'a AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads every file in order and hands over each document; `emit` returns
/// false to stop (the document limit).
pub(super) struct DocReader<'a> {
    pub params: &'a DatasetParams,
    /// The tokenizer's chat template; conversations are an error without one.
    pub chat: Option<&'a ChatTemplate>,
    /// Bytes taken from the files so far (compressed, for `.zst`).
    pub bytes_read: &'a AtomicU64,
}

impl DocReader<'_> {
    fn open(&self, file: &InputFile) -> Result<Box<dyn BufRead + '_>> {
        let f = File::open(&file.path).with_context(|| format!("cannot open {}", file.label))?;
        let counting = Counting {
            inner: f,
            count: self.bytes_read,
        };
        buffered(counting, &file.path, &file.label)
    }

    /// Reads one file; returns false when `emit` asked to stop.
    pub fn read_file(
        &self,
        index: usize,
        file: &InputFile,
        emit: &mut dyn FnMut(Doc) -> Result<bool>,
    ) -> Result<bool> {
        let mut reader = self.open(file)?;
        let mut line = Vec::new();
        let mut line_no = 0u64;
        // Plain text: the document being gathered and its first line.
        let mut text = String::new();
        let mut first_line = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .with_context(|| format!("{}:{}: read error", file.label, line_no + 1))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            match file.format {
                FileFormat::Jsonl => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let doc = self.jsonl_doc(index, file, line_no, &line)?;
                    if !emit(doc)? {
                        return Ok(false);
                    }
                }
                FileFormat::Text => {
                    let s = std::str::from_utf8(&line)
                        .map_err(|e| anyhow!("{}:{line_no}: not valid UTF-8 ({e})", file.label))?;
                    if s.trim().is_empty() {
                        if !text.is_empty() {
                            let doc = Doc {
                                key: format!("{}:{first_line}", file.label),
                                body: Body::Text(std::mem::take(&mut text)),
                                file: index,
                            };
                            if !emit(doc)? {
                                return Ok(false);
                            }
                        }
                    } else {
                        if text.is_empty() {
                            first_line = line_no;
                        } else {
                            text.push('\n');
                        }
                        text.push_str(s);
                    }
                }
            }
        }
        if !text.is_empty() {
            let doc = Doc {
                key: format!("{}:{first_line}", file.label),
                body: Body::Text(text),
                file: index,
            };
            return emit(doc);
        }
        Ok(true)
    }

    fn jsonl_doc(&self, index: usize, file: &InputFile, line_no: u64, line: &[u8]) -> Result<Doc> {
        let at = || format!("{}:{line_no}", file.label);
        let value: Value =
            serde_json::from_slice(line).map_err(|e| anyhow!("{}: invalid JSON: {e}", at()))?;
        let Value::Object(mut record) = value else {
            bail!(
                "{}: expected a JSON object, found {}",
                at(),
                json_kind(&value)
            );
        };
        let p = self.params;
        let body = match record.remove(&p.text_field) {
            Some(Value::String(text)) => Body::Text(text),
            Some(other) => bail!(
                "{}: field `{}` must be a string, found {}",
                at(),
                p.text_field,
                json_kind(&other)
            ),
            None => match record.remove("messages") {
                Some(messages @ Value::Array(_)) => {
                    if self.chat.is_none() {
                        bail!(
                            "{}: a chat conversation (`messages`), but the tokenizer has no chat_template",
                            at()
                        );
                    }
                    Body::Chat {
                        messages,
                        at: at(),
                        line_bytes: line.len(),
                    }
                }
                Some(other) => bail!(
                    "{}: `messages` must be a list, found {}",
                    at(),
                    json_kind(&other)
                ),
                None => bail!(
                    "{}: no `{}` field (nor a `messages` conversation)",
                    at(),
                    p.text_field
                ),
            },
        };
        let id = match record.get(&p.id_field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None | Some(Value::Null) => at(),
            Some(other) => bail!(
                "{}: field `{}` must be a string or a number, found {}",
                at(),
                p.id_field,
                json_kind(other)
            ),
        };
        let source = record.get("source").and_then(Value::as_str);
        Ok(Doc {
            key: split_key(source, &id),
            body,
            file: index,
        })
    }
}
