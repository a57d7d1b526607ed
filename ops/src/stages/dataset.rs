//! `dataset`: tokenizes text and chat files into rows of `seq_len` tokens,
//! split into train and held-out by document.
//!
//! The files are streamed (a reader thread decompresses and parses them),
//! tokenized in parallel on a rayon pool of its own, chunk by chunk, and
//! reassembled in input order, so the output does not depend on the number
//! of threads. Each document is encoded on its own (never with the batch
//! APIs of `tokenizers`, whose internal parallelism would compete with the
//! pool), through [`DocumentEncoder`]'s fast path for byte-level BPE
//! tokenizers where it applies. Each document's tokens are followed by the
//! separator (by default the tokenizer's eos token) and appended to its
//! split; each split is cut into rows of `seq_len` tokens and its last
//! partial row is dropped.
//!
//! Chat conversations are rendered with the tokenizer's chat template. With
//! `loss_on: assistant` (the default) the dataset gets a loss mask that
//! marks the assistant replies: each conversation is cut into its replies
//! and the text between them ([`ChatTemplate::render_with_replies`]), each
//! piece is tokenized on its own and the ids are concatenated, so every
//! token belongs to exactly one piece and the mask is exact. The ids then
//! equal those of the whole rendered text except where a tokenizer would
//! have merged characters across a piece's bound (with SmolLM2's, only when
//! a reply starts with whitespace that the newline of the role header could
//! join); they decode to the same text either way.
//! The folder layout and its reader are in [`crate::io::dataset`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use crate::io::chat::{ChatTemplate, RenderedChat, special_token};
use anyhow::{Context, Result, anyhow, bail};
use distillery_engine::progress::Progress;
use distillery_engine::{ArtifactKind, CheckContext, ParamIssue, RunContext, Slot, TypedOp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::io::dataset::{
    DATASET_FORMAT_VERSION, DOCUMENTS_FILE, DatasetIndex, DocumentRecord, FileStats, INDEX_FILE,
    LossMaskInfo, SeparatorInfo, Split, SplitStats, SplitWriter, TokenizerInfo, split_key,
    split_of,
};

/// The `dataset` op.
pub struct Dataset;

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

/// Which tokens of a chat conversation are training targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// The assistant replies, each with its end-of-turn token: the dataset
    /// gets a loss mask (`train.mask.bin`, `heldout.mask.bin`).
    #[default]
    Assistant,
    /// Every token, as for plain text: no loss mask.
    All,
}

impl LossOn {
    pub fn name(self) -> &'static str {
        match self {
            LossOn::Assistant => "assistant",
            LossOn::All => "all",
        }
    }
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

/// Parameters of `dataset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetParams {
    /// Input files, relative to the recipe's folder: JSONL (one JSON object
    /// per line) or plain text (documents separated by a blank line), each
    /// optionally zstd-compressed (`.zst`). Read in this order.
    pub files: Vec<PathBuf>,
    /// Tokens per row (at least 2).
    #[serde(default = "default_seq_len")]
    #[schemars(range(min = 2))]
    pub seq_len: u32,
    /// Share of documents held out, in percent (0 to 50). A document's side
    /// is chosen by the blake3 hash of `source/doc_id` (or of its id when it
    /// has no `source`): deterministic and independent of the seed.
    #[serde(default = "default_heldout_percent")]
    #[schemars(range(min = 0.0, max = 50.0))]
    pub heldout_percent: f64,
    /// JSONL field holding a document's text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// JSONL field holding a document's id; a record without it is named by
    /// its file and line (`data/train.jsonl:17`). Plain-text documents are
    /// always named by file and first line.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// How to read the files: `auto` (by extension), `jsonl` or `text`.
    #[serde(default)]
    pub format: DataFormat,
    /// Stop after this many documents (over all files, both splits).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_documents: Option<u64>,
    /// Text appended after every document; by default the tokenizer's eos
    /// token. A single token's text maps to that token; `""` appends nothing.
    #[serde(default)]
    pub separator: Option<String>,
    /// Which tokens of chat conversations (`messages` in JSONL) are
    /// training targets, for supervised fine-tuning. `assistant` (the
    /// default) writes a loss mask next to the rows: 1 on each assistant
    /// reply and its end-of-turn token, 0 on role headers, system and user
    /// turns and the separator after a conversation (plain-text documents in
    /// the same dataset stay targets throughout). `all` trains on every
    /// token and writes no mask. A dataset without conversations has no
    /// mask; setting it with plain-text files (`.txt`, `format: text`) is an
    /// error.
    #[serde(default)]
    pub loss_on: Option<LossOn>,
}

fn default_seq_len() -> u32 {
    2048
}
fn default_heldout_percent() -> f64 {
    5.0
}
fn default_text_field() -> String {
    "text".into()
}
fn default_id_field() -> String {
    "doc_id".into()
}

impl DatasetParams {
    /// Parameters with their defaults for these files.
    pub fn new(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            seq_len: default_seq_len(),
            heldout_percent: default_heldout_percent(),
            text_field: default_text_field(),
            id_field: default_id_field(),
            format: DataFormat::Auto,
            max_documents: None,
            separator: None,
            loss_on: None,
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

fn is_zst(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zst"))
}

impl TypedOp for Dataset {
    type Params = DatasetParams;
    const NAME: &'static str = "dataset";
    // 2: chat conversations get a loss mask on the assistant replies.
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str = "Tokenizes JSONL, text or chat files into fixed-length rows of token ids, split into train and held-out by document; chat conversations get a loss mask on the assistant replies.";

    fn slots(&self) -> Vec<Slot> {
        vec![Slot::one("tokenizer", ArtifactKind::Model)]
    }

    fn output(&self) -> ArtifactKind {
        ArtifactKind::Dataset
    }

    fn check(&self, p: &DatasetParams, _ctx: &CheckContext) -> Vec<ParamIssue> {
        let mut issues = Vec::new();
        if p.seq_len < 2 {
            issues.push(ParamIssue::at(
                &["seq_len"],
                format!("`seq_len` must be at least 2, found {}", p.seq_len),
            ));
        }
        if !(p.heldout_percent.is_finite() && (0.0..=50.0).contains(&p.heldout_percent)) {
            issues.push(ParamIssue::at(
                &["heldout_percent"],
                format!(
                    "`heldout_percent` must be between 0 and 50, found {}",
                    p.heldout_percent
                ),
            ));
        }
        if p.files.is_empty() {
            issues.push(
                ParamIssue::at(&["files"], "`files` must name at least one file")
                    .help("e.g. `files: [data/train.jsonl.zst]`"),
            );
        }
        for (i, file) in p.files.iter().enumerate() {
            let index = i.to_string();
            if let Err(message) = file_format(file, p.format) {
                issues.push(
                    ParamIssue::at(&["files", &index], message)
                        .help("set `format: jsonl` or `format: text`"),
                );
            }
        }
        if p.max_documents == Some(0) {
            issues.push(ParamIssue::at(
                &["max_documents"],
                "`max_documents` must be at least 1 (leave it out for no limit)",
            ));
        }
        if p.text_field.is_empty() {
            issues.push(ParamIssue::at(&["text_field"], "`text_field` is empty"));
        }
        if p.id_field.is_empty() {
            issues.push(ParamIssue::at(&["id_field"], "`id_field` is empty"));
        }
        if let Some(message) = loss_on_conflict(p) {
            issues.push(
                ParamIssue::at(&["loss_on"], message)
                    .help("leave `loss_on` out: plain text has no turns, every token is trained"),
            );
        }
        issues
    }

    fn external_files(&self, p: &DatasetParams) -> Vec<PathBuf> {
        p.files.clone()
    }

    fn run(&self, p: DatasetParams, ctx: &RunContext) -> Result<()> {
        build_dataset(
            &p,
            ctx.input("tokenizer")?,
            &ctx.recipe_dir,
            &ctx.output_dir,
            ctx.progress,
        )
        .map(|_| ())
    }
}

/// Why `loss_on` cannot be set for these files: it is about chat
/// conversations, which only JSONL files hold.
fn loss_on_conflict(p: &DatasetParams) -> Option<String> {
    let loss_on = p.loss_on?;
    let text = p
        .files
        .iter()
        .find(|f| file_format(f, p.format) == Ok(FileFormat::Text))?;
    Some(format!(
        "`loss_on: {}` applies to chat conversations (`messages` in JSONL), but `{}` is plain text",
        loss_on.name(),
        text.display()
    ))
}

/// The tokenizer folder's pieces the op needs.
struct TokenizerAssets {
    tokenizer: Tokenizer,
    /// `tokenizer.json`, parsed.
    json: Value,
    info: TokenizerInfo,
    config: Option<Value>,
}

fn load_tokenizer(dir: &Path) -> Result<TokenizerAssets> {
    let path = dir.join("tokenizer.json");
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the tokenizer input {} has no readable tokenizer.json",
            dir.display()
        )
    })?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes)
        .map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
    let json: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    // Documents are packed whole: no truncation, no padding.
    tokenizer
        .with_truncation(None)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    tokenizer.with_padding(None);

    let config_path = dir.join("tokenizer_config.json");
    let config: Option<Value> = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        Some(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", config_path.display()))?,
        )
    } else {
        None
    };
    let model_config: Option<Value> = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let name = [config.as_ref(), model_config.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|c| ["name_or_path", "_name_or_path"].map(|k| c.get(k)))
        .flatten()
        .filter_map(Value::as_str)
        .find(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let info = TokenizerInfo {
        name,
        digest: blake3::hash(&bytes).to_hex().to_string(),
        vocab_size: tokenizer.get_vocab_size(true) as u64,
    };
    Ok(TokenizerAssets {
        tokenizer,
        json,
        info,
        config,
    })
}

/// The separator's text and ids.
fn separator(p: &DatasetParams, assets: &TokenizerAssets) -> Result<SeparatorInfo> {
    let text = match &p.separator {
        Some(text) => text.clone(),
        None => assets
            .config
            .as_ref()
            .and_then(|c| special_token(c, "eos_token"))
            .ok_or_else(|| {
                anyhow!(
                    "the tokenizer has no `eos_token` in tokenizer_config.json to separate documents; set `separator`"
                )
            })?,
    };
    let ids = if text.is_empty() {
        Vec::new()
    } else if let Some(id) = assets.tokenizer.token_to_id(&text) {
        vec![id]
    } else {
        assets
            .tokenizer
            .encode_fast(text.as_str(), false)
            .map_err(|e| anyhow!("cannot tokenize the separator {text:?}: {e}"))?
            .get_ids()
            .to_vec()
    };
    Ok(SeparatorInfo { text, ids })
}

/// A document as read.
struct Doc {
    key: String,
    body: Body,
    file: usize,
}

/// What a document holds.
enum Body {
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
    fn size(&self) -> usize {
        match &self.body {
            Body::Text(text) => text.len(),
            Body::Chat { line_bytes, .. } => *line_bytes,
        }
    }
}

/// A document's ids.
struct Encoded {
    ids: Vec<u32>,
    /// One byte per id (1: a target) for a masked conversation; `None`
    /// when all of them are targets.
    mask: Option<Vec<u8>>,
    /// Bytes of the text (a conversation as rendered).
    text_bytes: u64,
}

/// Documents handed to one tokenization task.
struct Chunk {
    seq: u64,
    docs: Vec<Doc>,
}

/// Bytes of text (or documents) after which a chunk is closed.
const CHUNK_BYTES: usize = 256 * 1024;
const CHUNK_DOCS: usize = 512;

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

/// An input file to read.
struct InputFile {
    /// As written in the recipe; names documents and errors.
    label: String,
    path: PathBuf,
    format: FileFormat,
    file_bytes: u64,
}

/// Reads every file in order and hands over each document; `emit` returns
/// false to stop (the document limit).
struct DocReader<'a> {
    params: &'a DatasetParams,
    chat: Option<&'a ChatTemplate>,
    bytes_read: &'a AtomicU64,
}

impl DocReader<'_> {
    fn open(&self, file: &InputFile) -> Result<Box<dyn BufRead + '_>> {
        let f = File::open(&file.path).with_context(|| format!("cannot open {}", file.label))?;
        let counting = Counting {
            inner: f,
            count: self.bytes_read,
        };
        Ok(if is_zst(&file.path) {
            let decoder = zstd::Decoder::new(counting)
                .with_context(|| format!("cannot read {} as zstd", file.label))?;
            Box::new(BufReader::with_capacity(1 << 20, decoder))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, counting))
        })
    }

    /// Reads one file; returns false when `emit` asked to stop.
    fn read_file(
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
            bail!("{}: expected a JSON object, found {}", at(), kind(&value));
        };
        let p = self.params;
        let body = match record.remove(&p.text_field) {
            Some(Value::String(text)) => Body::Text(text),
            Some(other) => bail!(
                "{}: field `{}` must be a string, found {}",
                at(),
                p.text_field,
                kind(&other)
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
                    kind(&other)
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
                kind(other)
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

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Tokenizes the files of `p` with the tokenizer in `tokenizer_dir` and
/// writes the dataset into `output_dir` (which must exist). Paths in `p` are
/// relative to `recipe_dir`. Returns the index it wrote.
pub fn build_dataset(
    p: &DatasetParams,
    tokenizer_dir: &Path,
    recipe_dir: &Path,
    output_dir: &Path,
    progress: &dyn Progress,
) -> Result<DatasetIndex> {
    let started = Instant::now();
    if p.seq_len < 2 {
        bail!("`seq_len` must be at least 2, found {}", p.seq_len);
    }
    if !(0.0..=50.0).contains(&p.heldout_percent) {
        bail!(
            "`heldout_percent` must be between 0 and 50, found {}",
            p.heldout_percent
        );
    }
    if p.files.is_empty() {
        bail!("`files` must name at least one file");
    }
    if let Some(message) = loss_on_conflict(p) {
        bail!(message);
    }
    let loss_on = p.loss_on.unwrap_or_default();
    let seq_len = p.seq_len as usize;
    let assets = load_tokenizer(tokenizer_dir)?;
    let separator = separator(p, &assets)?;
    let chat = match &assets.config {
        Some(config) => {
            ChatTemplate::from_tokenizer_config(config).context("the tokenizer's chat_template")?
        }
        None => None,
    };

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
    let total_bytes: u64 = inputs.iter().map(|f| f.file_bytes).sum();
    progress.set_total(total_bytes, "bytes");

    let mut writers = [
        SplitWriter::create(output_dir, Split::Train, seq_len)?,
        SplitWriter::create(output_dir, Split::Heldout, seq_len)?,
    ];
    let documents_path = output_dir.join(DOCUMENTS_FILE);
    let mut documents_out = BufWriter::new(
        File::create(&documents_path)
            .with_context(|| format!("cannot create {}", documents_path.display()))?,
    );
    let mut file_stats: Vec<FileStats> = inputs
        .iter()
        .map(|f| FileStats {
            path: f.label.clone(),
            format: f.format.name().into(),
            documents: 0,
            text_bytes: 0,
            file_bytes: f.file_bytes,
        })
        .collect();

    let bytes_read = AtomicU64::new(0);
    let reader = DocReader {
        params: p,
        chat: chat.as_ref(),
        bytes_read: &bytes_read,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("dataset-tokenize-{i}"))
        .build()
        .context("cannot start the tokenizer threads")?;
    let max_in_flight = 4 * threads;
    let encoder = DocumentEncoder::new(&assets.tokenizer, &assets.json, threads);
    let encoder = &encoder;
    let chat_ref = chat.as_ref();
    progress.log(if encoder.is_fast() {
        "tokenizing with the byte-level BPE fast path (checked against `tokenizers` on a sample of documents)"
    } else {
        "tokenizing with `tokenizers`' encode"
    });

    let mut text_bytes_total = 0u64;
    let mut documents_total = 0u64;
    let mut tokens_total = 0u64;
    let mut write_chunk = |chunk: Chunk, encoded: Vec<Encoded>| -> Result<()> {
        for (doc, encoded) in chunk.docs.into_iter().zip(encoded) {
            let split = split_of(&doc.key, p.heldout_percent);
            let bytes = encoded.text_bytes;
            let ids = &encoded.ids;
            let writer = &mut writers[split.index()];
            let target_tokens = match &encoded.mask {
                // The conversation's own end-of-turn token teaches stopping;
                // what follows it is not the reply's.
                Some(mask) => {
                    writer.push_masked_document(ids, mask, &separator.ids, 0, bytes)?;
                    Some(mask.iter().map(|&m| m as u64).sum())
                }
                None => {
                    writer.push_document(ids, &separator.ids, bytes)?;
                    None
                }
            };
            let stats = &mut file_stats[doc.file];
            stats.documents += 1;
            stats.text_bytes += bytes;
            text_bytes_total += bytes;
            documents_total += 1;
            tokens_total += ids.len() as u64;
            serde_json::to_writer(
                &mut documents_out,
                &DocumentRecord {
                    id: doc.key,
                    split,
                    tokens: ids.len() as u64,
                    target_tokens,
                },
            )?;
            documents_out.write_all(b"\n")?;
        }
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        progress.set_position(bytes_read.load(Ordering::Relaxed));
        progress.set_message(&format!(
            "{documents_total} documents, {:.1} MB of text, {:.2}M tokens, {:.1} MB/s",
            text_bytes_total as f64 / 1e6,
            tokens_total as f64 / 1e6,
            text_bytes_total as f64 / 1e6 / elapsed
        ));
        Ok(())
    };

    std::thread::scope(|scope| -> Result<()> {
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Result<Chunk>>(max_in_flight);
        let reader = &reader;
        let inputs = &inputs;
        scope.spawn(move || {
            let mut seq = 0u64;
            let mut docs = Vec::new();
            let mut bytes = 0usize;
            let mut emitted = 0u64;
            let limit = p.max_documents.unwrap_or(u64::MAX);
            let mut emit = |doc: Doc| -> Result<bool> {
                if emitted >= limit {
                    return Ok(false);
                }
                emitted += 1;
                bytes += doc.size();
                docs.push(doc);
                if bytes >= CHUNK_BYTES || docs.len() >= CHUNK_DOCS {
                    let chunk = Chunk {
                        seq,
                        docs: std::mem::take(&mut docs),
                    };
                    seq += 1;
                    bytes = 0;
                    // The receiver is gone only when the build failed.
                    if chunk_tx.send(Ok(chunk)).is_err() {
                        return Ok(false);
                    }
                }
                Ok(emitted < limit)
            };
            for (i, file) in inputs.iter().enumerate() {
                match reader.read_file(i, file, &mut emit) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        let _ = chunk_tx.send(Err(e));
                        return;
                    }
                }
            }
            if !docs.is_empty() {
                let _ = chunk_tx.send(Ok(Chunk { seq, docs }));
            }
        });

        let (result_tx, result_rx) = mpsc::channel::<(Chunk, Result<Vec<Encoded>>)>();
        pool.in_place_scope(|tasks| -> Result<()> {
            let mut pending: BTreeMap<u64, (Chunk, Vec<Encoded>)> = BTreeMap::new();
            let mut next = 0u64;
            let mut in_flight = 0usize;
            let mut reader_done = false;
            loop {
                while !reader_done && in_flight < max_in_flight {
                    match chunk_rx.recv() {
                        Ok(Ok(chunk)) => {
                            let result_tx = result_tx.clone();
                            in_flight += 1;
                            tasks.spawn(move |_| {
                                let ids =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        tokenize_chunk(encoder, chat_ref, loss_on, &chunk)
                                    }))
                                    .unwrap_or_else(|_| Err(anyhow!("the tokenizer panicked")));
                                let _ = result_tx.send((chunk, ids));
                            });
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_) => reader_done = true,
                    }
                }
                if in_flight == 0 {
                    break;
                }
                let (chunk, ids) = result_rx.recv().expect("a tokenization task vanished");
                in_flight -= 1;
                pending.insert(chunk.seq, (chunk, ids?));
                while let Some((chunk, ids)) = pending.remove(&next) {
                    write_chunk(chunk, ids)?;
                    next += 1;
                }
            }
            debug_assert!(pending.is_empty());
            Ok(())
        })
        // Dropping `chunk_rx` here (on error) stops the reader thread.
    })?;

    if documents_total == 0 {
        bail!(
            "no documents in {}",
            inputs
                .iter()
                .map(|f| f.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    documents_out
        .flush()
        .with_context(|| format!("cannot write {}", documents_path.display()))?;
    drop(documents_out);
    // A mask is all or nothing: a split without conversations gets one too
    // (all targets) when the other has one.
    let masked = writers.iter().any(SplitWriter::has_loss_mask);
    if masked {
        for writer in &mut writers {
            writer.enable_loss_mask()?;
        }
    }
    let [train, heldout] = writers;
    let index = DatasetIndex {
        format_version: DATASET_FORMAT_VERSION,
        seq_len: seq_len as u64,
        vocab_size: assets.info.vocab_size,
        tokenizer: assets.info.clone(),
        separator,
        heldout_percent: p.heldout_percent,
        split_rule: "held out when the first 8 bytes (little-endian) of blake3(\"source/doc_id\", or the id without a source), as a fraction of 2^64, are below heldout_percent / 100".into(),
        documents: documents_total,
        text_bytes: text_bytes_total,
        files: file_stats,
        train: train.finish()?,
        heldout: heldout.finish()?,
        loss_mask: masked.then(|| LossMaskInfo {
            loss_on: loss_on.name().into(),
            rule: "1 on the tokens of each assistant reply of a chat conversation with its end-of-turn token (the text that rendering the conversation through that reply adds to rendering it before the reply with the generation prompt, trailing whitespace excluded) and on every token of plain-text documents and their separators; 0 on the rest of a conversation (system and user turns, role headers) and the separator after it".into(),
        }),
    };
    let index_path = output_dir.join(INDEX_FILE);
    std::fs::write(&index_path, serde_json::to_string_pretty(&index)? + "\n")
        .with_context(|| format!("cannot write {}", index_path.display()))?;

    let elapsed = started.elapsed().as_secs_f64();
    progress.set_position(total_bytes);
    if masked {
        let share =
            |s: &SplitStats| s.target_tokens.unwrap_or(0) as f64 / s.tokens.max(1) as f64 * 100.0;
        progress.log(&format!(
            "loss mask on the assistant replies: {:.1}% of the train tokens and {:.1}% of the heldout tokens are targets",
            share(&index.train),
            share(&index.heldout)
        ));
    }
    progress.log(&format!(
        "{} documents, {:.1} MB of text in {elapsed:.1} s ({:.2} MB/s), {} tokens; train {} rows ({} docs, {} tail tokens dropped), heldout {} rows ({} docs, {} tail tokens dropped)",
        index.documents,
        index.text_bytes as f64 / 1e6,
        index.text_bytes as f64 / 1e6 / elapsed.max(1e-9),
        index.text_tokens(),
        index.train.rows,
        index.train.documents,
        index.train.dropped_tail_tokens,
        index.heldout.rows,
        index.heldout.documents,
        index.heldout.dropped_tail_tokens,
    ));
    Ok(index)
}

/// Whether the `i`th document of a chunk is also tokenized by the exact
/// path, to check the fast one: all of the first chunk, and the first
/// document of every 16th chunk.
fn verified(chunk: &Chunk, i: usize) -> bool {
    chunk.seq == 0 || (i == 0 && chunk.seq.is_multiple_of(16))
}

fn tokenize_chunk(
    encoder: &DocumentEncoder,
    chat: Option<&ChatTemplate>,
    loss_on: LossOn,
    chunk: &Chunk,
) -> Result<Vec<Encoded>> {
    let mut out = Vec::with_capacity(chunk.docs.len());
    for (i, doc) in chunk.docs.iter().enumerate() {
        let check = encoder.is_fast() && verified(chunk, i);
        let encoded = match &doc.body {
            Body::Text(text) => Encoded {
                ids: encode_checked(encoder, text, check, &doc.key)?,
                mask: None,
                text_bytes: text.len() as u64,
            },
            Body::Chat { messages, at, .. } => {
                let chat = chat
                    .ok_or_else(|| anyhow!("{at}: a chat conversation without a chat template"))?;
                match loss_on {
                    LossOn::All => {
                        let text = chat
                            .render(messages, false)
                            .with_context(|| format!("{at}: cannot render the conversation"))?;
                        Encoded {
                            ids: encode_checked(encoder, &text, check, &doc.key)?,
                            mask: None,
                            text_bytes: text.len() as u64,
                        }
                    }
                    LossOn::Assistant => {
                        let rendered = chat.render_with_replies(messages).with_context(|| {
                            format!("{at}: cannot render the conversation with its loss mask")
                        })?;
                        encode_masked(encoder, &rendered, check, &doc.key)?
                    }
                }
            }
        };
        out.push(encoded);
    }
    Ok(out)
}

/// A conversation's ids, piece by piece, and its mask: 1 on the replies.
fn encode_masked(
    encoder: &DocumentEncoder,
    chat: &RenderedChat,
    check: bool,
    key: &str,
) -> Result<Encoded> {
    let mut ids = Vec::with_capacity(chat.text.len() / 3 + 8);
    let mut mask = Vec::with_capacity(ids.capacity());
    for (piece, reply) in chat.segments() {
        let piece_ids = encode_checked(encoder, piece, check, key)?;
        mask.resize(mask.len() + piece_ids.len(), reply as u8);
        ids.extend_from_slice(&piece_ids);
    }
    Ok(Encoded {
        ids,
        mask: Some(mask),
        text_bytes: chat.text.len() as u64,
    })
}

/// The ids of `text`; with `check`, also through the exact path, which must
/// agree.
fn encode_checked(
    encoder: &DocumentEncoder,
    text: &str,
    check: bool,
    key: &str,
) -> Result<Vec<u32>> {
    let ids = encoder
        .encode(text)
        .map_err(|e| anyhow!("cannot tokenize document `{key}`: {e:#}"))?;
    if check {
        let exact = encoder
            .encode_exact(text)
            .map_err(|e| anyhow!("cannot tokenize document `{key}`: {e:#}"))?;
        if exact != ids {
            bail!(
                "the fast tokenization path disagrees with `tokenizers` on document `{key}` ({} ids instead of {}); this is a bug: set {EXACT_ENV}=1 to tokenize through `tokenizers` alone",
                ids.len(),
                exact.len()
            );
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------- encoding

/// The GPT-2 pattern of `tokenizers`' ByteLevel pre-tokenizer (`use_regex`).
const BYTE_LEVEL_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Pieces longer than this are not cached (as in `tokenizers`' BPE cache).
const CACHE_MAX_PIECE: usize = 256;
/// A word cache is emptied when it grows past this many entries.
const CACHE_MAX_ENTRIES: usize = 1 << 20;

/// Set to `1` to tokenize through `Tokenizer::encode` only.
pub const EXACT_ENV: &str = "DISTILLERY_EXACT_TOKENIZER";

/// One splitting step of a pre-tokenizer, before the byte-level mapping.
enum Step {
    /// `Digits`: numeric characters isolated one by one, or in runs.
    Digits { individual: bool },
    /// A regex whose matches and gaps are both pieces (`Isolated`).
    Regex(tokenizers::utils::SysRegex),
}

/// Pre-tokenization of a byte-level BPE tokenizer, done on `&str` slices.
struct FastPath {
    steps: Vec<Step>,
    byte_chars: [char; 256],
}

/// The byte-to-character table of GPT-2's byte-level BPE.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable =
            (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("a valid char")
        };
    }
    table
}

impl FastPath {
    /// The fast path for a `tokenizer.json`, when its pipeline is one this
    /// path reproduces exactly: no normalizer; a BPE model without dropout;
    /// pre-tokenizers made of `Digits`, `Split` (regex, isolated) and a final
    /// `ByteLevel` without prefix space.
    fn for_tokenizer(json: &Value) -> Option<Self> {
        if !json.get("normalizer").is_none_or(Value::is_null) {
            return None;
        }
        let model = json.get("model")?;
        if model.get("type")?.as_str()? != "BPE" {
            return None;
        }
        if !model
            .get("dropout")
            .is_none_or(|d| d.is_null() || d.as_f64() == Some(0.0))
        {
            return None;
        }
        let pre = json.get("pre_tokenizer")?;
        let list: Vec<&Value> = match pre.get("type")?.as_str()? {
            "Sequence" => pre.get("pretokenizers")?.as_array()?.iter().collect(),
            _ => vec![pre],
        };
        let (last, rest) = list.split_last()?;
        let mut steps = Vec::new();
        for step in rest {
            match step.get("type")?.as_str()? {
                "Digits" => steps.push(Step::Digits {
                    individual: step
                        .get("individual_digits")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                }),
                "Split" => {
                    if step.get("behavior")?.as_str()? != "Isolated"
                        || step.get("invert").and_then(Value::as_bool) != Some(false)
                    {
                        return None;
                    }
                    let pattern = step.get("pattern")?.get("Regex")?.as_str()?;
                    steps.push(Step::Regex(tokenizers::utils::SysRegex::new(pattern).ok()?));
                }
                _ => return None,
            }
        }
        if last.get("type")?.as_str()? != "ByteLevel" || last.get("add_prefix_space")?.as_bool()? {
            return None;
        }
        if last
            .get("use_regex")
            .and_then(Value::as_bool)
            .unwrap_or(true)
        {
            steps.push(Step::Regex(
                tokenizers::utils::SysRegex::new(BYTE_LEVEL_PATTERN).ok()?,
            ));
        }
        Some(Self {
            steps,
            byte_chars: byte_chars(),
        })
    }

    /// Splits `text` into the pieces the model sees (before the byte-level
    /// mapping), appending them to `out`; `scratch` is reused.
    fn split<'t>(&self, text: &'t str, out: &mut Vec<&'t str>, scratch: &mut Vec<&'t str>) {
        out.clear();
        if !text.is_empty() {
            out.push(text);
        }
        for step in &self.steps {
            std::mem::swap(out, scratch);
            out.clear();
            for &piece in scratch.iter() {
                match step {
                    Step::Digits { individual } => split_digits(piece, *individual, out),
                    Step::Regex(re) => {
                        let mut prev = 0;
                        for (start, end) in re.find_iter(piece) {
                            if prev != start {
                                out.push(&piece[prev..start]);
                            }
                            if start != end {
                                out.push(&piece[start..end]);
                            }
                            prev = end;
                        }
                        if prev != piece.len() {
                            out.push(&piece[prev..]);
                        }
                    }
                }
            }
        }
    }
}

/// `Digits`: each numeric character alone (`individual`) or runs of them,
/// and the text between them, as pieces.
fn split_digits<'t>(piece: &'t str, individual: bool, out: &mut Vec<&'t str>) {
    let mut start = 0;
    let mut in_digits = false;
    for (i, c) in piece.char_indices() {
        let numeric = c.is_numeric();
        if numeric {
            if i > start && (!in_digits || individual) {
                out.push(&piece[start..i]);
                start = i;
            }
        } else if in_digits && i > start {
            out.push(&piece[start..i]);
            start = i;
        }
        in_digits = numeric;
    }
    if start < piece.len() {
        out.push(&piece[start..]);
    }
}

/// A small, fast hasher for the word caches (FxHash).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(26) ^ w).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.0 = (self.0.rotate_left(26) ^ b as u64).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type WordCache =
    std::collections::HashMap<Box<str>, Box<[u32]>, std::hash::BuildHasherDefault<FxHasher>>;

/// Encodes documents to ids exactly as `Tokenizer::encode(text, false)`.
///
/// For byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen style) it
/// takes a faster path: the added tokens are split out by `tokenizers`
/// itself, the pre-tokenization runs on string slices with the same regex
/// engine and patterns, and each piece's ids come from a per-thread word
/// cache filled by the tokenizer's own BPE model. This avoids the per-piece
/// allocations of the general pipeline (offsets, alignments, token strings),
/// which dominate its run time. Other tokenizers go through `encode`.
pub struct DocumentEncoder<'a> {
    tokenizer: &'a Tokenizer,
    fast: Option<FastPath>,
    /// One cache per worker thread, by rayon thread index; the last one
    /// serves threads outside a pool.
    caches: Vec<std::sync::Mutex<WordCache>>,
}

impl<'a> DocumentEncoder<'a> {
    /// `tokenizer_json` is the parsed `tokenizer.json` the tokenizer was
    /// loaded from; `threads` the size of the pool that will call `encode`.
    pub fn new(tokenizer: &'a Tokenizer, tokenizer_json: &Value, threads: usize) -> Self {
        let exact = std::env::var(EXACT_ENV).is_ok_and(|v| v == "1");
        let fast = if exact {
            None
        } else {
            FastPath::for_tokenizer(tokenizer_json)
        };
        Self {
            tokenizer,
            fast,
            caches: (0..=threads).map(|_| Default::default()).collect(),
        }
    }

    /// Whether the fast path is in use.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// The ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.fast {
            None => self.encode_exact(text),
            Some(fast) => self.encode_fast(fast, text),
        }
    }

    /// The ids through `Tokenizer::encode`.
    pub fn encode_exact(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow!("{e}"))?
            .get_ids()
            .to_vec())
    }

    fn encode_fast(&self, fast: &FastPath, text: &str) -> Result<Vec<u32>> {
        use tokenizers::{Model, OffsetReferential, OffsetType};
        let slot = rayon::current_thread_index()
            .filter(|&i| i + 1 < self.caches.len())
            .unwrap_or(self.caches.len() - 1);
        let mut cache = self.caches[slot]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let model = self.tokenizer.get_model();
        let extracted = self
            .tokenizer
            .get_added_vocabulary()
            .extract_and_normalize(None::<&tokenizers::NormalizerWrapper>, text);
        let mut ids = Vec::with_capacity(text.len() / 3 + 8);
        let mut pieces = Vec::new();
        let mut scratch = Vec::new();
        let mut mapped = String::new();
        for (split, _, tokens) in
            extracted.get_splits(OffsetReferential::Original, OffsetType::None)
        {
            if let Some(tokens) = tokens {
                ids.extend(tokens.iter().map(|t| t.id));
                continue;
            }
            fast.split(split, &mut pieces, &mut scratch);
            for &piece in &pieces {
                if let Some(hit) = cache.get(piece) {
                    ids.extend_from_slice(hit);
                    continue;
                }
                mapped.clear();
                mapped.extend(piece.bytes().map(|b| fast.byte_chars[b as usize]));
                let tokens = model.tokenize(&mapped).map_err(|e| anyhow!("{e}"))?;
                let start = ids.len();
                ids.extend(tokens.iter().map(|t| t.id));
                if piece.len() < CACHE_MAX_PIECE {
                    if cache.len() >= CACHE_MAX_ENTRIES {
                        cache.clear();
                    }
                    cache.insert(piece.into(), ids[start..].into());
                }
            }
        }
        Ok(ids)
    }
}
