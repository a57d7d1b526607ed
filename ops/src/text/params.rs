//! What a `dataset` build is asked to do: the op's parameters, which the
//! recipe writes and [`build_dataset`](super::build_dataset) reads.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::files::{DataFormat, FileFormat, file_format};

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

    /// Why `loss_on` cannot be set for these files: it is about chat
    /// conversations, which only JSONL files hold.
    pub(crate) fn loss_on_conflict(&self) -> Option<String> {
        let loss_on = self.loss_on?;
        let text = self
            .files
            .iter()
            .find(|f| file_format(f, self.format) == Ok(FileFormat::Text))?;
        Some(format!(
            "`loss_on: {}` applies to chat conversations (`messages` in JSONL), but `{}` is plain text",
            loss_on.name(),
            text.display()
        ))
    }
}
