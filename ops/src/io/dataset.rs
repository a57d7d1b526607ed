//! The tokenized dataset artifact: token ids in fixed-length rows, split
//! into train and held-out by document, plus an index.
//!
//! A dataset folder holds:
//! - `train.bin`, `heldout.bin`: little-endian `u32` token ids, rows of
//!   `seq_len` tokens back to back (no header);
//! - `train.mask.bin`, `heldout.mask.bin`, only in a dataset with a loss mask
//!   (see below): one byte per token of the rows, in the same order;
//! - `index.json`: [`DatasetIndex`], what the rows are and how they were made;
//! - `documents.jsonl`: one [`DocumentRecord`] per document, in input order
//!   (kept out of the index so that opening a large dataset stays cheap).
//!
//! # Loss mask
//!
//! Supervised fine-tuning trains on some tokens only (the assistant's
//! replies of a chat). Such a dataset records [`LossMaskInfo`] in its index
//! and holds a mask file per split: byte `j` of a row is 1 when token `j`
//! of that row is a training target and 0 when it is context only. The mask
//! is indexed by the predicted token, not by the position that predicts it:
//! the logits at position `j - 1` are scored against token `j` when
//! `mask[j] == 1`, so `mask[0]` of a row (whose predictor lies in the row
//! before, out of reach) is never used by a loss over one row. A dataset
//! without a mask trains on every token. Documents cut across rows keep
//! their mask, byte for byte with their tokens.
//!
//! [`DatasetArtifact::open`] memory-maps the row (and mask) files and hands
//! out rows as `&[u32]` (masks as `&[u8]`) without copying. It reads the
//! current layout and version 1, which had no masks. [`SplitWriter`] packs
//! documents into rows, for the ops that build datasets.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

/// File names inside a dataset folder.
pub const INDEX_FILE: &str = "index.json";
pub const DOCUMENTS_FILE: &str = "documents.jsonl";

/// Version of the folder layout written in `index.json`. Version 2 added
/// the optional loss mask; it is bumped so that a reader of version 1, which
/// would ignore the mask and train on every token, refuses the folder.
pub const DATASET_FORMAT_VERSION: u32 = 2;

/// The layout versions [`DatasetArtifact::open`] reads.
pub const SUPPORTED_FORMAT_VERSIONS: [u32; 2] = [1, 2];

/// One side of the train / held-out split.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The rows training and importance read.
    Train,
    /// The documents held out of training, for evaluation.
    Heldout,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Heldout];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }

    /// The file holding this split's rows.
    pub fn file_name(self) -> &'static str {
        match self {
            Split::Train => "train.bin",
            Split::Heldout => "heldout.bin",
        }
    }

    /// The file holding this split's loss mask, in a dataset that has one.
    pub fn mask_file_name(self) -> &'static str {
        match self {
            Split::Train => "train.mask.bin",
            Split::Heldout => "heldout.mask.bin",
        }
    }

    /// 0 for train, 1 for held-out.
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Heldout => 1,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The key a document is split by: `source/doc_id` when the record has a
/// `source`, else the document id.
pub fn split_key(source: Option<&str>, id: &str) -> String {
    match source {
        Some(source) => format!("{source}/{id}"),
        None => id.to_string(),
    }
}

/// The side of a document, from the blake3 hash of its split key: the first
/// 8 bytes of the digest (little-endian) as a fraction of 2^64, held out when
/// below `heldout_percent` / 100. Deterministic and independent of the seed.
pub fn split_of(key: &str, heldout_percent: f64) -> Split {
    let digest = blake3::hash(key.as_bytes());
    let h = u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"));
    // 53 significant bits: exact in f64.
    let fraction = (h >> 11) as f64 / (1u64 << 53) as f64;
    if fraction * 100.0 < heldout_percent {
        Split::Heldout
    } else {
        Split::Train
    }
}

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    /// The rows file, relative to the dataset folder.
    pub file: String,
    pub rows: u64,
    /// Tokens in the rows: `rows * seq_len`.
    pub tokens: u64,
    pub documents: u64,
    /// Tokens of the documents' text, separators not included.
    pub text_tokens: u64,
    /// Separator tokens appended after the documents.
    pub separator_tokens: u64,
    /// Tokens of the last, partial row, which is not written.
    pub dropped_tail_tokens: u64,
    /// UTF-8 bytes of the documents' text (chat conversations as rendered).
    pub text_bytes: u64,
    /// The loss mask, relative to the dataset folder: one byte per token of
    /// `file`. Absent when the dataset has no loss mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_file: Option<String>,
    /// Tokens of the rows whose mask byte is 1. Absent without a loss mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tokens: Option<u64>,
}

/// How a dataset's loss mask was made (see the module documentation for
/// what the bytes mean).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossMaskInfo {
    /// Which tokens of a chat conversation are targets: `assistant`.
    pub loss_on: String,
    /// Which tokens are targets, in words.
    pub rule: String,
}

/// The tokenizer a dataset was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `name_or_path` from the tokenizer's configuration when it has one,
    /// else the name of the folder it came from.
    pub name: String,
    /// blake3 of `tokenizer.json`.
    pub digest: String,
    /// Vocabulary size, added tokens included.
    pub vocab_size: u64,
}

/// What is appended after every document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeparatorInfo {
    pub text: String,
    pub ids: Vec<u32>,
}

/// Per input file counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStats {
    /// As written in the recipe.
    pub path: String,
    /// `jsonl` or `text`.
    pub format: String,
    pub documents: u64,
    pub text_bytes: u64,
    /// Size of the file on disk (compressed size for `.zst`).
    pub file_bytes: u64,
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetIndex {
    pub format_version: u32,
    pub seq_len: u64,
    pub vocab_size: u64,
    pub tokenizer: TokenizerInfo,
    pub separator: SeparatorInfo,
    pub heldout_percent: f64,
    /// How documents were assigned to a split, in words.
    pub split_rule: String,
    pub documents: u64,
    /// UTF-8 bytes of text read, both splits.
    pub text_bytes: u64,
    pub files: Vec<FileStats>,
    pub train: SplitStats,
    pub heldout: SplitStats,
    /// Present when the dataset has a loss mask; absent (as in every index
    /// of version 1) when every token is a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_mask: Option<LossMaskInfo>,
}

impl DatasetIndex {
    pub fn split(&self, split: Split) -> &SplitStats {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }

    /// Tokens of the documents' text over both splits, separators excluded.
    pub fn text_tokens(&self) -> u64 {
        self.train.text_tokens + self.heldout.text_tokens
    }
}

/// A line of `documents.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// The split key: `source/doc_id`, or the document id.
    pub id: String,
    pub split: Split,
    /// Tokens of the text, separator excluded.
    pub tokens: u64,
    /// Of those, the training targets, for a document that has targets and
    /// context (a masked conversation); absent when all of them are targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tokens: Option<u64>,
}

/// A dataset folder, its rows memory-mapped.
#[derive(Debug)]
pub struct DatasetArtifact {
    dir: PathBuf,
    index: DatasetIndex,
    /// Per split; `None` for an empty file (nothing to map).
    maps: [Option<Mmap>; 2],
    /// The mask files, per split, like `maps`; all `None` without a mask.
    mask_maps: [Option<Mmap>; 2],
}

/// Maps `path` after checking that it holds `expected` bytes; `None` when
/// it is empty.
fn map_checked(
    dir: &Path,
    path: &Path,
    what: &str,
    expected: impl FnOnce(u64) -> Result<()>,
) -> Result<Option<Mmap>> {
    let file = File::open(path).with_context(|| {
        format!(
            "dataset {}: cannot open the {what} {}",
            dir.display(),
            path.display()
        )
    })?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    expected(len)?;
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the store never rewrites a published artifact.
    let map =
        unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    Ok(Some(map))
}

impl DatasetArtifact {
    /// Opens a dataset folder: reads `index.json` and maps the row files,
    /// checking that their sizes agree with the index.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        ensure!(
            cfg!(target_endian = "little"),
            "dataset rows are little-endian u32; this machine is big-endian"
        );
        let index_path = dir.join(INDEX_FILE);
        let text = match std::fs::read_to_string(&index_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("{} is not a dataset: it has no {INDEX_FILE}", dir.display())
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", index_path.display()));
            }
        };
        let index: DatasetIndex = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid dataset index", index_path.display()))?;
        ensure!(
            SUPPORTED_FORMAT_VERSIONS.contains(&index.format_version),
            "{}: dataset format version {} is not supported (expected one of {SUPPORTED_FORMAT_VERSIONS:?})",
            index_path.display(),
            index.format_version
        );
        ensure!(
            index.seq_len >= 1,
            "{}: seq_len must be at least 1",
            index_path.display()
        );
        let row_bytes = index.seq_len * 4;
        let mut maps = [None, None];
        for split in Split::ALL {
            let stats = index.split(split);
            let path = dir.join(&stats.file);
            maps[split.index()] = map_checked(&dir, &path, &format!("{split} rows"), |len| {
                ensure!(
                    len % row_bytes == 0,
                    "{}: {len} bytes is not a whole number of rows of seq_len {} ({row_bytes} bytes each)",
                    path.display(),
                    index.seq_len
                );
                ensure!(
                    len / row_bytes == stats.rows,
                    "{}: holds {} rows but {INDEX_FILE} says {}",
                    path.display(),
                    len / row_bytes,
                    stats.rows
                );
                Ok(())
            })?;
        }
        let mut mask_maps = [None, None];
        if index.loss_mask.is_some() {
            ensure!(
                index.format_version >= 2,
                "{}: a loss mask in a dataset of format version {}, which has none",
                index_path.display(),
                index.format_version
            );
            for split in Split::ALL {
                let stats = index.split(split);
                let Some(file) = &stats.mask_file else {
                    bail!(
                        "{}: the dataset has a loss mask but the {split} split names no mask_file",
                        index_path.display()
                    );
                };
                let path = dir.join(file);
                let expected = stats.rows * index.seq_len;
                mask_maps[split.index()] = map_checked(
                    &dir,
                    &path,
                    &format!("{split} loss mask"),
                    |len| {
                        ensure!(
                            len == expected,
                            "{}: {len} bytes, but the loss mask of {} rows of seq_len {} has {expected} (one per token)",
                            path.display(),
                            stats.rows,
                            index.seq_len
                        );
                        Ok(())
                    },
                )?;
            }
        } else if let Some(split) = Split::ALL
            .into_iter()
            .find(|&s| index.split(s).mask_file.is_some())
        {
            bail!(
                "{}: the {split} split names a mask_file but the index has no loss_mask",
                index_path.display()
            );
        }
        Ok(Self {
            dir,
            index,
            maps,
            mask_maps,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> &DatasetIndex {
        &self.index
    }

    pub fn seq_len(&self) -> usize {
        self.index.seq_len as usize
    }

    pub fn vocab_size(&self) -> usize {
        self.index.vocab_size as usize
    }

    pub fn rows(&self, split: Split) -> usize {
        self.index.split(split).rows as usize
    }

    /// All tokens of a split, rows back to back.
    pub fn tokens(&self, split: Split) -> &[u32] {
        match &self.maps[split.index()] {
            None => &[],
            Some(map) => {
                // SAFETY: any bit pattern is a valid u32; the map is page
                // aligned, which `align_to` checks.
                let (head, words, tail) = unsafe { map.align_to::<u32>() };
                assert!(
                    head.is_empty() && tail.is_empty(),
                    "mapping is not u32-aligned"
                );
                words
            }
        }
    }

    /// Row `i` of a split, `seq_len` tokens. Panics when `i` is out of range.
    pub fn row(&self, split: Split, i: usize) -> &[u32] {
        self.get_row(split, i).unwrap_or_else(|| {
            panic!(
                "row {i} is out of range: the {split} split has {} rows",
                self.rows(split)
            )
        })
    }

    /// Row `i` of a split, or `None` when out of range.
    pub fn get_row(&self, split: Split, i: usize) -> Option<&[u32]> {
        let n = self.seq_len();
        self.tokens(split).get(i * n..(i + 1) * n)
    }

    /// The rows of a split, in order.
    pub fn iter_rows(&self, split: Split) -> std::slice::ChunksExact<'_, u32> {
        self.tokens(split).chunks_exact(self.seq_len())
    }

    /// Checks that every token id is below the vocabulary size (reads all rows).
    pub fn check_token_ids(&self) -> Result<()> {
        let vocab = self.index.vocab_size;
        for split in Split::ALL {
            if let Some(pos) = self.tokens(split).iter().position(|&t| t as u64 >= vocab) {
                bail!(
                    "{}: token {} at position {pos} of the {split} split is not below the vocabulary size {vocab}",
                    self.dir.display(),
                    self.tokens(split)[pos]
                );
            }
        }
        Ok(())
    }

    /// Whether the dataset has a loss mask. Without one every token is a
    /// training target.
    pub fn has_loss_mask(&self) -> bool {
        self.index.loss_mask.is_some()
    }

    /// The loss mask of a split, one byte per token of [`Self::tokens`]
    /// (1: a training target), or `None` when the dataset has no mask.
    pub fn loss_mask(&self, split: Split) -> Option<&[u8]> {
        self.index.loss_mask.as_ref()?;
        Some(match &self.mask_maps[split.index()] {
            None => &[],
            Some(map) => map,
        })
    }

    /// The loss mask of row `i` of a split, `seq_len` bytes: `mask[j] == 1`
    /// when token `j` of the row is a training target (predicted from
    /// position `j - 1`). `None` when the dataset has no mask. Panics when
    /// `i` is out of range, like [`Self::row`], rather than answering as if
    /// there were no mask.
    pub fn loss_mask_row(&self, split: Split, i: usize) -> Option<&[u8]> {
        let mask = self.loss_mask(split)?;
        let n = self.seq_len();
        Some(mask.get(i * n..(i + 1) * n).unwrap_or_else(|| {
            panic!(
                "row {i} is out of range: the {split} split has {} rows",
                self.rows(split)
            )
        }))
    }

    /// Checks that every loss mask byte is 0 or 1 and that the targets add
    /// up to the index's counts (reads all masks); nothing to check without
    /// a mask.
    pub fn check_loss_mask(&self) -> Result<()> {
        for split in Split::ALL {
            let Some(mask) = self.loss_mask(split) else {
                return Ok(());
            };
            if let Some(pos) = mask.iter().position(|&m| m > 1) {
                bail!(
                    "{}: loss mask byte {} at position {pos} of the {split} split is neither 0 nor 1",
                    self.dir.display(),
                    mask[pos]
                );
            }
            let targets = mask.iter().filter(|&&m| m == 1).count() as u64;
            let expected = self.index.split(split).target_tokens;
            ensure!(
                expected.is_none_or(|e| e == targets),
                "{}: the {split} loss mask marks {targets} targets but {INDEX_FILE} says {}",
                self.dir.display(),
                expected.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Reads `documents.jsonl`: every document, its split and token count.
    pub fn documents(&self) -> Result<Vec<DocumentRecord>> {
        let path = self.dir.join(DOCUMENTS_FILE);
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut out = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(
                serde_json::from_str(&line).with_context(|| {
                    format!("{}:{}: not a document record", path.display(), i + 1)
                })?,
            );
        }
        Ok(out)
    }
}

/// Packs one split's documents into rows of `seq_len` tokens and writes
/// them; the last partial row is dropped by [`SplitWriter::finish`]. The
/// loss mask is written alongside once it is enabled (by
/// [`SplitWriter::enable_loss_mask`] or the first masked document).
pub struct SplitWriter {
    out: BufWriter<File>,
    path: PathBuf,
    dir: PathBuf,
    split: Split,
    seq_len: usize,
    row: Vec<u32>,
    bytes: Vec<u8>,
    mask: Option<MaskWriter>,
    stats: SplitStats,
}

/// The loss mask half of a [`SplitWriter`].
struct MaskWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// The mask of the partial row: as long as `SplitWriter::row`.
    row: Vec<u8>,
    /// Mask bytes equal to 1 in the rows written.
    targets: u64,
}

/// The mask of tokens being appended.
#[derive(Clone, Copy)]
enum MaskBytes<'a> {
    Same(u8),
    Each(&'a [u8]),
}

impl SplitWriter {
    pub fn create(dir: &Path, split: Split, seq_len: usize) -> Result<Self> {
        ensure!(seq_len >= 1, "seq_len must be at least 1");
        let path = dir.join(split.file_name());
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            path,
            dir: dir.to_path_buf(),
            split,
            seq_len,
            row: Vec::with_capacity(seq_len),
            bytes: Vec::with_capacity(seq_len * 4),
            mask: None,
            stats: SplitStats {
                file: split.file_name().to_string(),
                ..SplitStats::default()
            },
        })
    }

    /// Starts writing the loss mask. What was pushed before, written rows
    /// and partial row alike, came through [`Self::push_document`] and so is
    /// all targets: its mask is 1 throughout. Does nothing when the mask is
    /// already on.
    pub fn enable_loss_mask(&mut self) -> Result<()> {
        if self.mask.is_some() {
            return Ok(());
        }
        let path = self.dir.join(self.split.mask_file_name());
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let ones = vec![1u8; self.seq_len];
        for _ in 0..self.stats.rows {
            out.write_all(&ones)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        self.mask = Some(MaskWriter {
            out,
            path,
            row: vec![1; self.row.len()],
            targets: self.stats.tokens,
        });
        Ok(())
    }

    /// Whether the loss mask is being written.
    pub fn has_loss_mask(&self) -> bool {
        self.mask.is_some()
    }

    /// Appends a document's tokens and then the separator, all of them
    /// training targets.
    pub fn push_document(
        &mut self,
        text: &[u32],
        separator: &[u32],
        text_bytes: u64,
    ) -> Result<()> {
        self.count(text, separator, text_bytes);
        self.push_tokens(text, MaskBytes::Same(1))?;
        self.push_tokens(separator, MaskBytes::Same(1))
    }

    /// Appends a document of which only some tokens are training targets:
    /// `mask[j]` (0 or 1) is the mask of `text[j]`, and `separator_mask`
    /// that of every separator token. Enables the loss mask.
    pub fn push_masked_document(
        &mut self,
        text: &[u32],
        mask: &[u8],
        separator: &[u32],
        separator_mask: u8,
        text_bytes: u64,
    ) -> Result<()> {
        ensure!(
            mask.len() == text.len(),
            "a document of {} tokens with a mask of {} bytes",
            text.len(),
            mask.len()
        );
        ensure!(
            separator_mask <= 1 && mask.iter().all(|&m| m <= 1),
            "loss mask bytes must be 0 or 1"
        );
        self.enable_loss_mask()?;
        self.count(text, separator, text_bytes);
        self.push_tokens(text, MaskBytes::Each(mask))?;
        self.push_tokens(separator, MaskBytes::Same(separator_mask))
    }

    fn count(&mut self, text: &[u32], separator: &[u32], text_bytes: u64) {
        self.stats.documents += 1;
        self.stats.text_tokens += text.len() as u64;
        self.stats.separator_tokens += separator.len() as u64;
        self.stats.text_bytes += text_bytes;
    }

    fn push_tokens(&mut self, mut tokens: &[u32], mut mask: MaskBytes) -> Result<()> {
        while !tokens.is_empty() {
            let take = (self.seq_len - self.row.len()).min(tokens.len());
            self.row.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if let Some(m) = &mut self.mask {
                match mask {
                    MaskBytes::Same(b) => m.row.resize(m.row.len() + take, b),
                    MaskBytes::Each(bytes) => {
                        m.row.extend_from_slice(&bytes[..take]);
                        mask = MaskBytes::Each(&bytes[take..]);
                    }
                }
            }
            if self.row.len() == self.seq_len {
                self.bytes.clear();
                for t in &self.row {
                    self.bytes.extend_from_slice(&t.to_le_bytes());
                }
                self.out
                    .write_all(&self.bytes)
                    .with_context(|| format!("cannot write {}", self.path.display()))?;
                self.row.clear();
                self.stats.rows += 1;
                self.stats.tokens += self.seq_len as u64;
                if let Some(m) = &mut self.mask {
                    m.out
                        .write_all(&m.row)
                        .with_context(|| format!("cannot write {}", m.path.display()))?;
                    m.targets += m.row.iter().map(|&b| b as u64).sum::<u64>();
                    m.row.clear();
                }
            }
        }
        Ok(())
    }

    /// Drops the partial row, flushes, and returns the counts.
    pub fn finish(mut self) -> Result<SplitStats> {
        self.stats.dropped_tail_tokens = self.row.len() as u64;
        flush_and_sync(&mut self.out, &self.path)?;
        if let Some(mut m) = self.mask.take() {
            flush_and_sync(&mut m.out, &m.path)?;
            self.stats.mask_file = Some(self.split.mask_file_name().to_string());
            self.stats.target_tokens = Some(m.targets);
        }
        Ok(self.stats)
    }
}

fn flush_and_sync(out: &mut BufWriter<File>, path: &Path) -> Result<()> {
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    out.get_ref()
        .sync_all()
        .with_context(|| format!("cannot sync {}", path.display()))
}
